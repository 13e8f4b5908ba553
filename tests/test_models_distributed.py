"""Shuffle-BN and the distributed queue with two CPU processes over gloo."""
import gc
import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

WORLD = 2
BATCH = 4


def _worker(rank, init_file):
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        from hpt_hpc.ssl import MoCo

        torch.manual_seed(0)  # identical models and queues on both ranks
        model = MoCo("resnet18", 0.25, True, dim=16, queue_size=24, shuffle_bn=True).train()
        gen = torch.Generator().manual_seed(100 + rank)  # different data per rank
        im_q = torch.randn(BATCH, 3, 32, 32, generator=gen)
        im_k = torch.randn(BATCH, 3, 32, 32, generator=gen)

        # 1. the cross-rank shuffle is a permutation of the global batch and is undone exactly
        ids = torch.arange(BATCH, dtype=torch.float32).add(rank * BATCH).view(BATCH, 1)
        shuffled, idx_unshuffle = model._batch_shuffle_ddp(ids)
        everything = sorted(torch.cat([t for t in _gather(shuffled)]).flatten().tolist())
        assert everything == list(range(WORLD * BATCH)), everything
        assert torch.equal(model._batch_unshuffle_ddp(shuffled, idx_unshuffle), ids)

        # 2. with eval-mode BN the unshuffled keys equal keys computed without any shuffle
        model.encoder_k.eval()
        with torch.no_grad():
            direct = F.normalize(model.encoder_k(im_k), dim=1)
        torch.testing.assert_close(model.compute_keys(im_k), direct)
        model.encoder_k.train()

        # 3. a training step runs; queues stay identical and receive both ranks' keys
        loss, logits, _ = model(im_q, im_k)
        assert torch.isfinite(loss) and logits.shape == (BATCH, 25)
        loss.backward()
        queues = _gather(model.queue.unsqueeze(0))
        assert torch.equal(queues[0], queues[1])
        assert int(model.queue_ptr) == WORLD * BATCH
        keys = model.queue[:, : WORLD * BATCH].T  # rank 0's keys first, then rank 1's
        mine = keys[rank * BATCH:(rank + 1) * BATCH]
        # this rank's positives are q . k / T with its own (unshuffled) keys
        with torch.no_grad():
            q = F.normalize(model.encoder_q(im_q), dim=1)
        torch.testing.assert_close(logits[:, 0] * model.temperature, (q * mine).sum(1))
        dist.barrier()  # both ranks done before either destroys the group
    finally:
        _leave()


def _leave():
    """Destroy the group with nothing left holding it (a DDP reducer in a reference cycle)
    for interpreter shutdown, where gloo's threads can abort the process (SIGABRT,
    "terminate called without an active exception")."""
    gc.collect()
    dist.destroy_process_group()


def _gather(t):
    out = [torch.empty_like(t) for _ in range(WORLD)]
    dist.all_gather(out, t.contiguous())
    return out


@pytest.mark.skipif(not dist.is_available() or sys.platform == "win32", reason="needs gloo")
def test_two_process_shuffle_bn_and_queue(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"),), nprocs=WORLD, join=True)


def _vit_worker(rank, init_file):
    """A timm ViT (LayerNorm, no BatchNorm) under DDP with shuffle-BN switched on."""
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        from hpt_hpc.ssl import MoCo

        torch.manual_seed(0)
        vit = MoCo("timm:vit_small_patch16_224", in_channels=3, dim=16, queue_size=24,
                   shuffle_bn=True, image_size=16,
                   timm_kwargs={"patch_size": 4, "depth": 1, "embed_dim": 48,
                                "num_heads": 3}).train()
        resnet = MoCo("resnet18", 0.25, True, dim=16, queue_size=24, shuffle_bn=True).train()
        gen = torch.Generator().manual_seed(100 + rank)
        im_q = torch.randn(BATCH, 3, 16, 16, generator=gen)
        im_k = torch.randn(BATCH, 3, 16, 16, generator=gen)

        # 1. without BatchNorm the cross-rank shuffle changes no key, even in train mode;
        #    with BatchNorm in train mode it does (what shuffle-BN is for)
        with torch.no_grad():
            direct = F.normalize(vit.encoder_k(im_k), dim=1)
            torch.testing.assert_close(vit.compute_keys(im_k), direct)
            bn_direct = F.normalize(resnet.encoder_k(im_k), dim=1)
            assert not torch.allclose(resnet.compute_keys(im_k), bn_direct, atol=1e-4)

        # 2. one DDP step as the engine takes it: the same weights on both ranks after it
        params = vit.trainable_parameters("full")
        before = [p.detach().clone() for p in params]
        net = torch.nn.parallel.DistributedDataParallel(vit)
        optimizer = torch.optim.SGD(params, lr=0.5)
        loss, _, _ = net(im_q, im_k, **vit.micro_batch(True, True))
        loss.backward()
        optimizer.step()
        assert any(not torch.equal(b, p) for b, p in zip(before, params))
        flat = torch.cat([p.detach().flatten() for p in params]).unsqueeze(0)
        ranks = _gather(flat)
        assert torch.equal(ranks[0], ranks[1])
        queues = _gather(vit.queue.unsqueeze(0))
        assert torch.equal(queues[0], queues[1]) and int(vit.queue_ptr) == WORLD * BATCH
        del net  # DDP's reducer holds the process group: free it before the group goes
        dist.barrier()  # both ranks done before either destroys the group
    finally:
        _leave()


def test_two_process_vit_step_without_batchnorm(tmp_path):
    mp.spawn(_vit_worker, args=(str(tmp_path / "init"),), nprocs=WORLD, join=True)

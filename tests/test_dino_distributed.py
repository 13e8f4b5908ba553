"""DINO on a 2-rank gloo group through the engine's DDP: every step equals the paper's
algorithm on the global batch (the centre is the all-rank mean of the teacher outputs,
gradients the mean of the ranks', BatchNorm statistics per rank)."""
import gc
import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from test_dino import Reference, compare, dino_config, run_engine

WORLD = 2


def _worker(rank, folder, model):
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/init", rank=rank,
                            world_size=WORLD)
    try:
        cfg = dino_config(folder, model, "sgd", world=WORLD)
        losses, states = run_engine(cfg, rank, WORLD)
        dist.barrier()  # both ranks done before either destroys the group
    finally:
        gc.collect()  # no DDP reducer left holding the group at shutdown
        dist.destroy_process_group()
    if rank == 0:
        # running BatchNorm statistics: the checkpoint holds rank 0's (DDP broadcasts
        # them), the reference none per rank; parameters and the centre are compared
        compare(losses, states, Reference(cfg, WORLD), WORLD, buffers=False)


@pytest.mark.skipif(not dist.is_available() or sys.platform == "win32", reason="needs gloo")
@pytest.mark.parametrize("model", ["resnet", "vit"])
def test_two_ranks_equal_the_papers_algorithm_on_the_global_batch(tmp_path, model):
    mp.spawn(_worker, args=(str(tmp_path), model), nprocs=WORLD, join=True)

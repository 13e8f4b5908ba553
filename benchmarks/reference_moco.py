"""A reference MoCo-v2 training loop, the way facebookresearch/moco's ``main_moco.py`` trains.

Written for the throughput benchmark (not copied): fp32; a torchvision ResNet whose ``fc``
becomes the MLP head; a per-parameter Python loop for the momentum update; shuffle-BN by
all-gather inside a DistributedDataParallel model (a one-process gloo/nccl group here); an
enqueue that reads the queue pointer back to the host; ``loss.item()`` and top-1/top-5
accuracy read back every step (the original's meters); plain ``torch.optim.SGD`` over all
parameters; ``cudnn.benchmark``; a PIL + torchvision v1 loader (``TwoCropsTransform``,
MoCo-v2 augmentation, ``DataLoader`` with workers, ``pin_memory``, ``DistributedSampler``).
"""
from __future__ import annotations

import os
import random
from typing import Callable, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image, ImageFilter
from torch import nn


class ReferenceMoCo(nn.Module):
    """MoCo-v2 as in the original builder: query/key encoders, queue, shuffle-BN via DDP."""

    def __init__(self, base_encoder: Callable[..., nn.Module], dim: int = 128, K: int = 65536,
                 m: float = 0.999, T: float = 0.2):
        super().__init__()
        self.K, self.m, self.T = K, m, T
        self.encoder_q, self.encoder_k = base_encoder(num_classes=dim), base_encoder(num_classes=dim)
        hidden = self.encoder_q.fc.weight.shape[1]
        self.encoder_q.fc = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), self.encoder_q.fc)
        self.encoder_k.fc = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), self.encoder_k.fc)
        for p_q, p_k in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            p_k.data.copy_(p_q.data)
            p_k.requires_grad = False
        self.register_buffer("queue", F.normalize(torch.randn(dim, K), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def _momentum_update_key_encoder(self):
        for p_q, p_k in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            p_k.data = p_k.data * self.m + p_q.data * (1.0 - self.m)

    @torch.no_grad()
    def _dequeue_and_enqueue(self, keys):
        keys = gather(keys)
        n = keys.shape[0]
        ptr = int(self.queue_ptr)  # host read-back, as in the original
        assert self.K % n == 0
        self.queue[:, ptr:ptr + n] = keys.T
        self.queue_ptr[0] = (ptr + n) % self.K

    @torch.no_grad()
    def _shuffle(self, x):
        x_all = gather(x)
        perm = torch.randperm(x_all.shape[0], device=x.device)
        dist.broadcast(perm, src=0)
        per_rank = x.shape[0]
        rank = dist.get_rank()
        return x_all[perm[rank * per_rank:(rank + 1) * per_rank]], torch.argsort(perm)

    @torch.no_grad()
    def _unshuffle(self, x, inverse):
        x_all = gather(x)
        per_rank, rank = x.shape[0], dist.get_rank()
        return x_all[inverse[rank * per_rank:(rank + 1) * per_rank]]

    def forward(self, im_q, im_k):
        q = F.normalize(self.encoder_q(im_q), dim=1)
        with torch.no_grad():
            self._momentum_update_key_encoder()
            im_k, inverse = self._shuffle(im_k)
            k = self._unshuffle(F.normalize(self.encoder_k(im_k), dim=1), inverse)
        l_pos = torch.einsum("nc,nc->n", q, k).unsqueeze(-1)
        l_neg = torch.einsum("nc,ck->nk", q, self.queue.clone().detach())
        logits = torch.cat([l_pos, l_neg], dim=1) / self.T
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        self._dequeue_and_enqueue(k)
        return logits, labels


@torch.no_grad()
def gather(tensor):
    out = [torch.ones_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(out, tensor, async_op=False)
    return torch.cat(out, dim=0)


def init_single_process_group(device: torch.device) -> None:
    """A world of one (the original always runs under DDP)."""
    if dist.is_initialized():
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)


class GaussianBlur:
    """PIL blur with sigma ~ U(0.1, 2.0) (MoCo-v2's ``--aug-plus``)."""

    def __call__(self, img):
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))


class TwoCropsTransform:
    def __init__(self, base):
        self.base = base

    def __call__(self, img):
        return [self.base(img), self.base(img)]


def moco_v2_augmentation(size: int = 224, grey: bool = False):
    from torchvision import transforms
    mean, std = ([0.5], [0.5]) if grey else ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    colour = [transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
              transforms.RandomGrayscale(p=0.2)]
    if grey:
        colour = [transforms.RandomApply([transforms.ColorJitter(0.4, 0.4)], p=0.8)]
    return transforms.Compose([transforms.RandomResizedCrop(size, scale=(0.2, 1.0)), *colour,
                               transforms.RandomApply([GaussianBlur()], p=0.5),
                               transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                               transforms.Normalize(mean, std)])


class FileDataset(torch.utils.data.Dataset):
    """ImageFolder's loading path: PIL open + convert, then the transform."""

    def __init__(self, paths: Sequence[str], transform, mode: str = "RGB"):
        self.paths, self.transform, self.mode = list(paths), transform, mode

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        with open(self.paths[index], "rb") as handle:
            img = Image.open(handle).convert(self.mode)
        return self.transform(img), 0


def reference_loader(paths, batch_size, workers, size=224, grey=False):
    dataset = FileDataset(paths, TwoCropsTransform(moco_v2_augmentation(size, grey)),
                          "L" if grey else "RGB")
    sampler = torch.utils.data.distributed.DistributedSampler(dataset)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                       num_workers=workers, pin_memory=True, sampler=sampler,
                                       drop_last=True, persistent_workers=workers > 0)


def accuracy(output, target, topk=(1, 5)):
    with torch.no_grad():
        _, pred = output.topk(max(topk), 1, True, True)
        correct = pred.t().eq(target.view(1, -1).expand_as(pred.t()))
        return [correct[:k].reshape(-1).float().sum(0) * 100.0 / target.shape[0] for k in topk]


class ReferenceTrainer:
    """``main_moco.train``'s step: DDP model, CrossEntropyLoss, SGD, meters read every step."""

    def __init__(self, base_encoder, device, dim=128, K=65536, m=0.999, T=0.2, lr=0.03):
        init_single_process_group(device)
        torch.backends.cudnn.benchmark = True
        model = ReferenceMoCo(base_encoder, dim, K, m, T).to(device)
        self.model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index or 0] if device.type == "cuda" else None)
        self.criterion = nn.CrossEntropyLoss().to(device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr, momentum=0.9,
                                         weight_decay=1e-4)
        self.device, self.loss_sum, self.top1_sum = device, 0.0, 0.0

    def step(self, images) -> float:
        cuda = self.device.type == "cuda"
        im_q = images[0].to(self.device, non_blocking=cuda)
        im_k = images[1].to(self.device, non_blocking=cuda)
        output, target = self.model(im_q=im_q, im_k=im_k)
        loss = self.criterion(output, target)
        acc1, acc5 = accuracy(output, target, topk=(1, 5))
        self.loss_sum += loss.item()
        self.top1_sum += float(acc1) + 0.0 * float(acc5)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return self.loss_sum

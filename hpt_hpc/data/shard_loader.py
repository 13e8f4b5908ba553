"""Torchvision loaders over tar shards (``format: shards``), read with ``webdataset``.

Pretraining (:class:`ShardPretrainLoader`): rank ``r`` of ``R`` reads shards ``r, r+R,
...``; its loader worker ``w`` of ``W`` reads every ``W``-th of those. Each epoch every
worker reads its shards in an order seeded by ``(seed, epoch, rank, worker)`` through a
shuffle buffer of ``data.shuffle_buffer`` samples drawn from the same generator and makes
whole batches of its readable samples; the loader takes one batch from each worker in
turn (PyTorch's order). Every rank makes the same ``steps_per_epoch``: the smallest rank's
whole batches by the manifest's counts, and each worker makes a fixed share of them (its
turns, :func:`round_robin_skips` of those counts). Bad samples never change a share: a
worker they leave short tops up from further passes over all of its rank's shards
(seeded by the pass too), so the stream is a function of ``seed`` and the epoch. A
worker's last batch also names the bad samples in the rest of its shards, so every
complete epoch names all of them.

``set_epoch(e, step)`` starts epoch ``e`` at batch ``step``: each worker passes over its
share of the first ``step`` batches, handing over an empty marker (with the bad samples
met) for each so that the workers keep their turns. A batch passed over is the next
``batch_size`` *readable* samples, as in the unbroken run, so every sample is decoded to
tell; in a worker the transform runs too, so that its generator (seeded by ``(seed,
rank, epoch)``) continues as in an unbroken run; in the main process it does not, as the
checkpoint restores that generator. A resumed stage thus sees the unbroken stream, and
names the bad samples before the resume point once, as the unbroken run did. The cost:
at most one epoch's decoding, once per resume (DALI's replay decodes too). Saving each
worker's sample position in the checkpoint instead would spare only the main process's
decoding (workers still decode to advance their generators) and would put one backend's
loader state into the stage checkpoint.

Evaluations need any image in any order: they read shards through the usual
:class:`~hpt_hpc.data.loader.EvalLoader`, one image at a time by its offset
(:meth:`~hpt_hpc.data.shard_set.ShardTable.read_bytes`).

Bad samples (a missing image or label member, a corrupt image) are skipped and named
like unreadable files; a damaged tar (truncated, not a tar) is named and the rest of it
skipped; no read blocks.
"""
from __future__ import annotations

import itertools
import logging
import random
from typing import Dict, Iterator, List, Optional, Sequence

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torch.utils.data._utils.collate import default_collate

from .bands import read_image
from .dataset import SkippedImages, SkippedItem, ignore_job_signals
from .images import UnreadableImage
from .shard_set import ShardTable, sample_key
from .sources import DatasetError
from .transforms import build_pretrain_transform

log = logging.getLogger(__name__)
META = ("cls", "path")  # the members of a sample that are not its image
LOST = "__lost__"  # marks a sample its damaged shard no longer holds (see ShardStream)
_WARNED: set = set()  # damaged shards named in this process


def read_shard(path: str) -> Iterator[dict]:
    """The samples of one tar, in order (``__key__`` and one entry per member); a damaged
    tar is named (one warning) after its last whole sample."""
    from webdataset.tariterators import group_by_keys, tar_file_iterator
    failures: List[Exception] = []

    def stop(exc: Exception) -> bool:
        failures.append(exc)
        return False
    try:
        with open(path, "rb") as handle:
            members = ({**f, "__url__": path} for f in tar_file_iterator(handle, handler=stop))
            yield from group_by_keys(members, handler=stop)
    except Exception as exc:  # noqa: BLE001 - tarfile reports damage in many ways
        failures.append(exc)
    if failures and path not in _WARNED:
        _WARNED.add(path)
        log.warning("shard %s is damaged (%s: %s); the rest of it is skipped; pack it "
                    "again with `hpt-hpc data shard`", path, type(failures[0]).__name__,
                    str(failures[0]).split(" @ ")[0])


def shuffled(samples, size: int, rng: random.Random) -> Iterator:
    """``samples`` through a buffer of ``size``: each new one replaces a random one."""
    if size <= 1:
        yield from samples
        return
    buffer: list = []
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        j = rng.randrange(size)
        buffer[j], sample = sample, buffer[j]
        yield sample
    rng.shuffle(buffer)
    yield from buffer


def round_robin_skips(counts: Sequence[int], total: int) -> List[int]:
    """How many of the first ``total`` items each worker gives when items are taken from
    the workers in turn, an exhausted worker left out (PyTorch's order)."""
    taken, left = [0] * len(counts), total
    while left > 0:
        live = [w for w, c in enumerate(counts) if taken[w] < c]
        if not live:
            break
        rounds = min(min(counts[w] - taken[w] for w in live), left // len(live))
        for w in live:
            taken[w] += rounds
        left -= rounds * len(live)
        if rounds == 0:
            for w in live[:left]:
                taken[w] += 1
            left = 0
    return taken


class ShardStream(IterableDataset):
    """One epoch of ``shards`` of ``table`` in batches of ``batch_size``: workers split the
    shards, each reads its own in a seeded order through a buffer of ``shuffle`` samples
    (see the module doc). Worker ``w`` hands over ``uses[w]`` items ``(collated batch or
    None, [(path, reason) skipped])``, batches made in the worker (one hand-over per
    batch, not per image); the first ``skips[w]`` are passed over (``None``)."""

    def __init__(self, table: ShardTable, shards: Sequence[int], transform, channels: int,
                 max_pixels: Optional[int], seed: int, rank: int, shuffle: int):
        self.table, self.shards = table, list(shards)
        self.transform, self.channels, self.max_pixels = transform, channels, max_pixels
        self.seed, self.rank, self.shuffle = seed, rank, shuffle
        self.epoch, self.skips, self.uses, self.batch_size = 0, [0], [0], 1

    def worker_shards(self, worker: int, workers: int) -> List[int]:
        return self.shards[worker::workers]

    def passes(self, worker: int, workers: int) -> Iterator[Iterator[dict]]:
        """This worker's own shards, then (top-ups) all of this rank's, each pass in an
        order seeded by seed, epoch, rank, worker and pass, through the shuffle buffer."""
        for n in itertools.count():
            mine = self.worker_shards(worker, workers) if n == 0 else list(self.shards)
            rng = random.Random(f"{self.seed}/{self.epoch}/{self.rank}/{worker}"
                                + (f"/{n}" if n else ""))
            rng.shuffle(mine)
            yield shuffled((s for i in mine for s in self.samples(i)), self.shuffle, rng)

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        uses = self.uses[worker] if worker < len(self.uses) else 0
        skip = self.skips[worker] if worker < len(self.skips) else 0
        # A batch passed over before a resume point is the next ``batch_size`` *readable*
        # samples, as in the unbroken run, so its bad samples are decided by decoding. In a
        # worker the transform runs too (its generator then advances as it did unbroken);
        # in the main process the checkpoint restores the generator: nothing is drawn.
        made, pending, skipped = 0, [], []
        for n, stream in enumerate(self.passes(worker, workers)):
            if made == uses:  # no batch of this epoch is this worker's: name its bad ones
                skipped += self._unreadable(stream)
                break
            readable = False
            for sample in stream:
                item = self.decode(sample, transform=made >= skip or info is not None)
                if isinstance(item, SkippedItem):
                    skipped.append((item.path, item.reason))
                    continue
                readable = True
                pending.append(item)
                if len(pending) == self.batch_size:
                    made += 1
                    if made == uses:  # its last batch: the rest of its shards is
                        skipped += self._unreadable(stream) if n == 0 else []  # checked
                    yield (default_collate(pending) if made > skip else None), skipped
                    pending, skipped = [], []
                    if made == uses:
                        return
            if n and not readable:  # nothing readable in the rank: the loader says so
                break
        if skipped:
            yield None, skipped

    def _unreadable(self, stream) -> List[tuple]:
        """The unreadable samples among the rest of ``stream`` (none is transformed)."""
        return [(item.path, item.reason) for item in
                (self.decode(s, transform=False) for s in stream)
                if isinstance(item, SkippedItem)]

    def samples(self, index: int) -> Iterator[dict]:
        """The samples of shard ``index``, then a :data:`LOST` marker for every row the
        manifest places in it that it did not give (a damaged tar ends early): each is
        skipped and counted like an unreadable image, by its name."""
        shard, seen = self.table.shards[index], set()
        for sample in read_shard(shard.path):
            seen.add(sample.get("__key__"))
            yield sample
        if len(seen) < shard.count:
            for row in range(shard.first, shard.first + shard.count):
                key = sample_key(row)
                if key not in seen:
                    yield {"__key__": key, "__url__": shard.path, LOST: b""}

    def decode(self, sample: Dict[str, bytes], transform: bool = True):
        """``(view(s), first label, row)``, or :class:`SkippedItem` for a bad sample;
        ``transform`` False: the decoded image, untransformed (nothing random drawn)."""
        key = sample.get("__key__", "?")
        try:
            row = int(key)
            name = self.table.path(row)
        except (ValueError, IndexError):
            return SkippedItem(f"{sample.get('__url__')}:{key}", "a sample key that is not "
                               "a row of the packed listing")
        where = f"in {sample.get('__url__')}, key {key}"
        if LOST in sample:
            return SkippedItem(name, f"{where}: not read, its shard is damaged (truncated)")
        images = [k for k in sample if not k.startswith("__") and k not in META]
        if len(images) != 1 or "cls" not in sample:
            missing = "its image" if not images else "its label (.cls)" \
                if "cls" not in sample else f"one image ({' '.join(images)})"
            return SkippedItem(name, f"{where}: the sample lacks {missing}")
        try:
            labels = tuple(int(v) for v in sample["cls"].split())
            image = read_image(f"{name}", self.channels, self.max_pixels,
                               data=sample[images[0]])
        except UnreadableImage as exc:
            return SkippedItem(name, f"{where}: {exc.reason}")
        except ValueError:
            return SkippedItem(name, f"{where}: labels {sample['cls'][:40]!r} are not "
                                     "integers")
        out = self.transform(image) if transform and self.transform is not None else image
        return out, labels[0] if labels else -1, row


def _as_is(item):
    return item


def _stream_loader(stream: ShardStream, workers: int, seed: int) -> DataLoader:
    """One pass of ``stream``; its own generator seeds the workers (the global one is
    never drawn from, so a resumed run's augmentations continue as they would have)."""
    return DataLoader(stream, batch_size=None, num_workers=workers, collate_fn=_as_is,
                      pin_memory=torch.cuda.is_available(), worker_init_fn=ignore_job_signals,
                      generator=torch.Generator().manual_seed(seed))


class ShardPretrainLoader:
    """The pretraining loader of :mod:`hpt_hpc.data.loader` (same interface) over shards.
    Each worker makes whole batches of its own samples (what is left over at its end is
    dropped); the loader takes a batch from each worker in turn."""

    def __init__(self, table: ShardTable, aug_cfg, data_cfg, batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1, workers: Optional[int] = None,
                 start_epoch: int = 0, start_step: int = 0, fill_skipped: bool = True):
        self.skipped, self.rows = SkippedImages(), []
        count = len(table.shards)
        if count < world_size:
            raise DatasetError(f"{count} shard(s) cannot feed {world_size} ranks: pack "
                               "smaller shards (`hpt-hpc data shard --shard-size`)")
        per_rank = [list(range(count))[r::world_size] for r in range(world_size)]
        workers = data_cfg.workers if workers is None else workers
        self.workers = max(0, min(workers, min(len(s) for s in per_rank)))  # same on all
        self.batch_size, self.num_images = batch_size, len(table)
        self.stream = ShardStream(table, per_rank[rank], build_pretrain_transform(
            aug_cfg, data_cfg), data_cfg.channels, data_cfg.max_pixels, seed, rank,
            data_cfg.shuffle_buffer)
        self.stream.batch_size = batch_size
        self.steps_per_epoch = min(sum(self.worker_batches(s)) for s in per_rank)
        if self.steps_per_epoch == 0:
            raise DatasetError(f"the shards of a rank hold too few images for batch size "
                               f"{batch_size} per loader worker ({max(1, self.workers)}); "
                               "lower the batch size or data.workers")
        self.set_epoch(start_epoch, start_step)

    def worker_batches(self, shards: Optional[Sequence[int]] = None) -> List[int]:
        """Whole batches each worker makes from ``shards`` (this rank's by default)."""
        shards, n = self.stream.shards if shards is None else list(shards), max(1, self.workers)
        table = self.stream.table
        return [sum(table.shards[i].count for i in shards[w::n]) // self.batch_size
                for w in range(n)]

    def set_epoch(self, epoch: int, step: int = 0) -> None:
        """Make the next batch batch ``step`` of epoch ``epoch`` (for resuming)."""
        if not 0 <= step <= self.steps_per_epoch:
            raise ValueError(f"step {step} outside epoch of {self.steps_per_epoch} steps")
        self.epoch, self.step = int(epoch), int(step)

    def __iter__(self):
        while True:
            counts = self.worker_batches()
            self.stream.epoch = self.epoch
            self.stream.uses = round_robin_skips(counts, self.steps_per_epoch)
            self.stream.skips = round_robin_skips(counts, self.step)
            if self.step < self.steps_per_epoch:
                items = _stream_loader(self.stream, self.workers, hash(
                    (self.stream.seed, self.stream.rank, self.epoch)) % 2 ** 62)
                for batch, skipped in items:
                    self.skipped.add(skipped)
                    if batch is not None:
                        self.rows = batch[2].tolist()  # the packed rows of this batch
                        self.step += 1
                        yield tuple(batch[0])
                if self.step < self.steps_per_epoch:
                    raise DatasetError(f"rank {self.stream.rank} found no readable image "
                                       "in its shards; run `hpt-hpc data check` on the "
                                       "dataset")
            self.epoch, self.step = self.epoch + 1, 0

    def close(self) -> None:
        """Nothing to stop: each epoch's workers end with it."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

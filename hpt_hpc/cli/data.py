"""``hpt-hpc data``: prepare the offline datasets, check, index and measure a dataset."""
from __future__ import annotations

import click

from ..config.schema import DATASET_FORMATS, DataConfig
from .scheduler import pop_scheduler, scheduler_options

DATASETS = ("fashion-mnist", "mnist", "digits", "mnist-source")


@click.group()
def data() -> None:
    """Prepare and check image datasets."""


@data.command("prepare")
@click.argument("name", type=click.Choice(DATASETS))
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--seed", default=0, show_default=True, help="Seed of the split assignment.")
@click.option("--limit", type=int, default=None, help="At most this many images per split.")
def prepare(name: str, dest: str, seed: int, limit) -> None:
    """Write an offline dataset NAME as an image tree DEST/{train,val,test}/<class>/."""
    from ..data.prepare import prepare_dataset
    s = prepare_dataset(name, dest, seed=seed, limit=limit)
    done = "already prepared, reused" if s["reused"] else f"written in {s['seconds']:.1f} s"
    click.echo(f"{s['name']} -> {s['path']} (seed {s['seed']}, limit {s['limit'] or 'none'}; "
               f"{done})")
    for split, counts in s["class_counts"].items():
        per_class = " ".join(f"{c}:{n}" for c, n in counts.items())
        click.echo(f"  {split}: {sum(counts.values())} images ({per_class})")


@data.command("check")
@click.argument("path", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(list(DATASET_FORMATS)),
              default="imagefolder", show_default=True,
              help="Class folders (split/class/image), CSV file lists (split.csv) or a "
                   "folder of unlabelled images (any depth; its train/ or itself).")
@click.option("--channels", type=click.IntRange(min=1), default=3, show_default=True,
              help="As data.channels: 1 or 3 convert to grey or RGB; another number reads "
                   "that many bands (multi-band TIFF).")
@click.option("--write-clean-list", metavar="PREFIX", default=None,
              help="Write CSV file lists of the readable images, one per split: "
                   "PREFIX-<split>.csv (PREFIX taken as typed; never a file it reads).")
@click.option("--max-pixels", type=click.IntRange(min=1), default=DataConfig().max_pixels,
              show_default=True,
              help="Images that decode to more bytes (width x height x bands x bytes per "
                   "sample, every page read; from the header) count as unreadable "
                   "(data.max_pixels).")
@click.option("--strict", is_flag=True,
              help="Exit with code 2 when any image is unreadable, too.")
def check(path: str, fmt: str, channels: int, write_clean_list, max_pixels,
          strict: bool) -> None:
    """Count images and classes per split and list unreadable files (also FIFOs, sockets
    and devices named like images, and images over --max-pixels).

    \b
    Exit codes:
      0  usable: every split found has readable images (unreadable
         files are listed; training skips them)
      2  not usable (no split found, or a split without one readable
         image), or --strict and any image is unreadable
    """
    from ..data.check import check_dataset, format_report
    from ..data.sources import DatasetError
    if fmt == "shards" and write_clean_list:
        raise DatasetError("--write-clean-list does not apply to format shards (its images "
                           "are inside the tars): pack the clean source again instead")
    report = check_dataset(path, fmt=fmt, channels=channels,
                           write_clean_list=write_clean_list, max_pixels=max_pixels)
    click.echo(format_report(report))
    if report["unusable"]:
        raise DatasetError(f"dataset {report['path']} is not usable: {report['unusable']}")
    if strict and report["unreadable_count"]:
        raise DatasetError(f"{report['unreadable_count']} unreadable image(s) in "
                           f"{report['path']} (--strict)")


@data.command("index")
@click.argument("path", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(list(DATASET_FORMATS)),
              default="imagefolder", show_default=True,
              help="Dataset format, as in data check.")
@click.option("--split", "splits", multiple=True, default=("train",), show_default=True,
              help="A split to index; repeat the option for more.")
def index(path: str, fmt: str, splits) -> None:
    """Save the listing of each split inside the dataset folder (PATH/.<split>.hpt-index.npz,
    or PATH/.hpt-index/ for a folder that is itself the split; ~/.cache/hpt-hpc/index where
    the dataset is read-only); stages and evaluations reuse it while no folder of the split has
    changed, instead of listing every file again."""
    import time
    from types import SimpleNamespace

    from ..data.sources import DatasetError, index_split
    from ..errors import HptError
    if fmt == "shards":
        raise DatasetError("format shards needs no index: its manifest is its listing")
    ds = SimpleNamespace(path=path, format=fmt, splits={s: s for s in splits}, max_images=None)
    for split in splits:
        started = time.monotonic()
        try:
            listing, where = index_split(ds, split)
        except OSError as exc:
            raise HptError(f"cannot save the index of {path!r}: {exc}") from None
        click.echo(f"{split}: {len(listing.records)} images, {len(listing.classes)} classes, "
                   f"{len(listing.stamps)} folder(s) watched, listed in "
                   f"{time.monotonic() - started:.1f} s -> {where}")


@data.command("stats")
@click.argument("path", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(list(DATASET_FORMATS)),
              default="imagefolder", show_default=True,
              help="Dataset format, as in data check.")
@click.option("--split", default="train", show_default=True,
              help="The split whose images are measured.")
@click.option("--channels", type=click.IntRange(min=1), default=3, show_default=True,
              help="As data.channels: 1 or 3 convert to grey or RGB; another number reads "
                   "that many bands (multi-band TIFF).")
@click.option("--max-images", type=click.IntRange(min=1), default=5000, show_default=True,
              help="Measure a seeded sample of this many images.")
@click.option("--max-pixels", type=click.IntRange(min=1), default=DataConfig().max_pixels,
              show_default=True, help="Images that decode to more bytes are skipped "
                                      "(data.max_pixels).")
def stats(path: str, fmt: str, split: str, channels: int, max_images: int,
          max_pixels: int) -> None:
    """Per-channel mean and std of a dataset's images, printed as the data.mean and
    data.std lines of a config."""
    from types import SimpleNamespace

    from ..data.stats import dataset_stats
    ds = SimpleNamespace(path=path, format=fmt, splits={split: split}, max_images=None)
    result = dataset_stats(ds, split, channels, max_images, max_pixels)
    click.echo(f"# {result['images']} images of {path} ({split}), {result['pixels']} pixels"
               + (f", {result['skipped']} unreadable skipped" if result["skipped"] else ""))
    click.echo(f"data:\n  channels: {channels}\n  mean: {result['mean']}\n"
               f"  std: {result['std']}")


@data.command("shard")
@click.argument("path", type=click.Path())
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--format", "fmt", type=click.Choice([f for f in DATASET_FORMATS
                                                    if f != "shards"]),
              default="imagefolder", show_default=True,
              help="Format of the dataset at PATH, as in data check.")
@click.option("--split", "splits", multiple=True, default=("train", "val", "test"),
              show_default=True, help="A split to pack (DEST/<split>/); repeat the option "
                                      "for more. Splits the dataset lacks are left out.")
@click.option("--shard-size", default="64MB", show_default=True,
              help="About this many bytes per shard (64MB, 1GB, 500k, ...).")
@click.option("--seed", default=0, show_default=True,
              help="Seed of the order in which images are packed (mixes the classes).")
@click.option("--shards-per-job", type=click.IntRange(min=1), default=16, show_default=True,
              help="With an executor other than debug: shards each job of the array packs.")
@scheduler_options
def shard(path: str, dest: str, fmt: str, splits, shard_size: str, seed: int,
          shards_per_job: int, **scheduler) -> None:
    """Pack a dataset into tar shards (WebDataset layout, DALI index files, a manifest)
    under DEST/<split>/, for `format: shards`. Deterministic: the same input gives the
    same bytes. Run again after an interruption: finished shards are verified and kept.
    In this process unless --executor (or --profile) says otherwise: then per split one
    job array over shard ranges and a manifest job after it (records, logs under DEST)."""
    import os
    from types import SimpleNamespace

    from ..data.shards import parse_size, shard_split
    from ..data.sources import DatasetError, split_location
    from ..launch.executors import resolve_executor
    options, log_folder = pop_scheduler(scheduler, default_executor="debug")
    size = parse_size(shard_size)
    ds = SimpleNamespace(path=path, format=fmt, splits={s: s for s in splits}, max_images=None)
    found = [s for s in splits if os.path.exists(split_location(ds, s))]
    if not found:
        raise DatasetError(f"none of the splits {', '.join(splits)} exists in {path!r} "
                           f"(format {fmt})")
    if not resolve_executor(options).in_process or options.container:
        from ..launch.commands import pack_shards
        from ..launch.submit import describe
        from ..plan import shard_phases
        phases = shard_phases(path, fmt, found, dest, size, seed, shards_per_job)
        record = pack_shards(phases, options, dest, path, log_folder)
        click.echo(describe(record))
        if resolve_executor(options).detached(wait=True):
            click.echo(f"follow: hpt-hpc status {dest} --watch")
        else:
            click.echo("\n".join(f"{s}: manifest {os.path.join(dest, s, 'manifest.json')}"
                                 for s in found))
        return
    for split in found:
        result = shard_split(ds, split, os.path.join(dest, split), size, seed=seed,
                             log=click.echo)
        click.echo(f"{split}: {result['images']} images in {len(result['shards'])} shard(s) "
                   f"({len(result['kept'])} kept, {len(result['written'])} written) -> "
                   f"{os.path.join(dest, split, 'manifest.json')}")

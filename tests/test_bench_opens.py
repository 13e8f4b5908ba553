"""benchmarks/shards.py's count of opens in an strace log and the whole epoch it implies
from a window of batches (the 1.28M-image figures are extrapolated this way)."""
import importlib.util
from pathlib import Path

_SPEC = importlib.util.spec_from_file_location(  # by path: benchmarks/ is not on sys.path
    "bench_shards", Path(__file__).resolve().parents[1] / "benchmarks" / "shards.py")
shards = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(shards)

D = "/data/set"


def _log(*lines):
    return "\n".join(f'123 openat(AT_FDCWD, "{p}", O_RDONLY|O_CLOEXEC) = {r}'
                     for p, r in lines)


def test_folder_opens_before_and_in_the_window_and_the_epoch_they_imply():
    log = _log((f"{D}/train/0/a.jpg", 3), ("/usr/lib/python3/x.py", 4),  # not the dataset
               (f"{D}/train/0/a.jpg", 3), (f"{D}/missing.jpg", "-1 ENOENT (No such file)"),
               (f"{D}/.bench-window-begin", "-1 ENOENT (No such file or directory)"),
               *[(f"{D}/train/1/{i}.jpg", 5) for i in range(8)],
               (f"{D}/.bench-window-end", "-1 ENOENT (No such file or directory)"),
               (f"{D}/train/1/late.jpg", 5))
    counts = shards.count_opens(log, D)
    assert counts == {"startup": 2, "window": 8, "tar": 0, "distinct_tars": 0}
    # 2 opens of the first batch's image, then 8 opens per 4 images over 100 - 1 more
    assert shards.epoch_opens(counts, 1, 4, 100) == 2 + 2 * 99


def test_shard_opens_count_every_shard_once_per_visit_though_the_window_saw_few():
    log = _log((f"{D}/train/manifest.json", 3), (f"{D}/train/listing.npz", 3),
               (f"{D}/train/shard-00000.tar", 4), (f"{D}/train/shard-00001.tar", 5),
               (f"{D}/.bench-window-begin", "-1 ENOENT (x)"),
               (f"{D}/train/shard-00002.tar", 4),
               (f"{D}/.bench-window-end", "-1 ENOENT (x)"))
    counts = shards.count_opens(log, D)
    assert counts == {"startup": 4, "window": 1, "tar": 3, "distinct_tars": 3}
    assert shards.epoch_opens(counts, 64, 640, 64_000, shards=40) == 2 + 40
    twice = _log((f"{D}/train/shard-00000.tar", 4), (f"{D}/train/shard-00000.tar", 5),
                 (f"{D}/.bench-window-begin", "-1 ENOENT (x)"))
    assert shards.epoch_opens(shards.count_opens(twice, D), 64, 64, 640, shards=10) == 20

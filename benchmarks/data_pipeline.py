"""Data-pipeline benchmark: two augmented 224x224 MoCo-v2 views per ~256x256 JPEG.

Variants, interleaved round by round in one process (shared machines are noisy: compare
within one run):

* ``dali-cpu``  this toolkit's DALI loader on CPU operators (``data.backend: dali``);
* ``tv1-pil``   the original MoCo-v2 / HPT style: PIL decode, torchvision v1 transforms,
                PIL Gaussian blur, ToTensor + Normalize;
* ``tv-hpt``    this toolkit's torchvision backend (v1 + PIL, one-pass normalise);
* ``tv2``       torchvision.transforms.v2 on tensors (decode_jpeg, kernel-23 blur);
* ``dali-gpu``  the DALI loader on GPU operators (only with a GPU; ``--variants``).

``--breakdown`` adds DALI ablations to find where the time goes: without colour or blur,
colour by DALI operators instead of the torch colour stage, the blur as DALI's
``gaussian_blur`` operator and/or with the fixed 23-pixel window (the first,
straightforward pipeline had both), threads, batch size and prefetch depth.

CPU-ms per image is the process CPU time (user + system, all threads) per image, with
every variant in-process (torchvision: ``num_workers=0``, one torch thread; DALI:
``--threads``), so it depends little on how busy the machine is; a pipeline's background
work is waited for and counted in its own round. Images/s is wall-clock on the same runs
(busy time only). Images: RGB composites of three real Fashion-MNIST images, upscaled to
256x256 (bicubic), JPEG quality 90.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import random
import resource
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def make_jpegs(folder: Path, count: int, side: int, seed: int = 0) -> list:
    """``count`` RGB JPEGs of side ``side``: three upscaled Fashion-MNIST images as R, G, B."""
    from hpt_hpc.config import DatasetConfig
    from hpt_hpc.data import list_split, prepare_dataset
    marker = folder / f".done-{count}-{side}"
    paths = [folder / f"img{i:05d}.jpg" for i in range(count)]
    if marker.exists():
        return [str(p) for p in paths]
    tree = folder / "fashion-mnist"
    prepare_dataset("fashion-mnist", tree, limit=300)  # sources; 3 drawn per JPEG
    records, _ = list_split(DatasetConfig(path=str(tree)), "train")
    rng = random.Random(seed)
    for path in paths:
        grey = [Image.open(r.path).convert("L").resize((side, side), Image.BICUBIC)
                for r in rng.sample(records, 3)]
        Image.merge("RGB", grey).save(path, quality=90)
    marker.touch()
    return [str(p) for p in paths]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ------------------------------------------------------------------ torchvision variants

class PilBlur:
    """MoCo-v2's blur: PIL GaussianBlur with radius ~ U(0.1, 2.0)."""

    def __call__(self, img):
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))


def tv1_view(size: int):
    from torchvision import transforms as T
    return T.Compose([
        T.RandomResizedCrop(size, scale=(0.2, 1.0)),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([PilBlur()], p=0.5),
        T.RandomHorizontalFlip(),
        T.ToTensor(), T.Normalize(MEAN, STD)])


def tv2_view(size: int):
    from torchvision.transforms import v2
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=(0.2, 1.0), antialias=True),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        v2.RandomGrayscale(p=0.2),
        v2.RandomApply([v2.GaussianBlur(23, sigma=(0.1, 2.0))], p=0.5),
        v2.RandomHorizontalFlip(),
        v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])


class TwoViews(torch.utils.data.Dataset):
    def __init__(self, paths, load, view):
        self.paths, self.load, self.view = paths, load, view

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        img = self.load(self.paths[i])
        return self.view(img), self.view(img)


def pil_rgb(path):
    with Image.open(path) as img:
        return img.convert("RGB")


def tensor_rgb(path):
    from torchvision.io import ImageReadMode, decode_image, read_file
    return decode_image(read_file(path), mode=ImageReadMode.RGB)


def torch_stream(dataset, batch: int):
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True,
                                         num_workers=0, drop_last=True)
    while True:
        yield from loader


# ------------------------------------------------------------------ DALI variants

def dali_stream(paths, size, batch, threads, device="cpu", prefetch=2, **spec_changes):
    """The toolkit's DALI loader; ``spec_changes`` override ViewSpec fields (ablations)."""
    from hpt_hpc.config import AugmentConfig, DataConfig
    from hpt_hpc.data import ImageRecord
    from hpt_hpc.data.dali_loader import DaliPretrainLoader
    records = [ImageRecord(p, (0,)) for p in paths]
    data = DataConfig(backend="dali", device=device, image_size=size, workers=threads)
    loader = DaliPretrainLoader(records, AugmentConfig(), data, batch, seed=0,
                                prefetch=prefetch)
    if spec_changes:
        loader.spec = dataclasses.replace(loader.spec, **spec_changes)
    return iter(loader)


def variants(args, paths) -> dict:
    size, batch, threads = args.size, args.batch, args.threads
    torch.set_num_threads(1)
    make = {
        "dali-cpu": lambda: dali_stream(paths, size, batch, threads),
        "tv1-pil": lambda: torch_stream(TwoViews(paths, pil_rgb, tv1_view(size)), batch),
        "tv-hpt": lambda: tv_hpt_stream(paths, size, batch),
        "tv2": lambda: torch_stream(TwoViews(paths, tensor_rgb, tv2_view(size)), batch),
        "dali-gpu": lambda: dali_stream(paths, size, batch, threads, device="gpu"),
    }
    if args.breakdown:
        def dali(**changes):
            options = {k: changes.pop(k) for k in ("batch", "threads", "prefetch")
                       if k in changes}
            return lambda: dali_stream(paths, size, options.get("batch", batch),
                                       options.get("threads", threads),
                                       prefetch=options.get("prefetch", 2), **changes)
        make.update({
            "dali-decode+crop+flip": dali(jitter_p=0.0, grayscale_p=0.0, blur_sigma=None),
            "dali-no-colour": dali(jitter_p=0.0, grayscale_p=0.0),
            "dali-colour-in-dali": dali(colour_in_dali=True),
            "dali-no-blur": dali(blur_sigma=None),
            "dali-blur-filter-fixed-23": dali(blur_fixed_window=True),
            "dali-blur-gaussian-adaptive": dali(blur_cpu_filter=False),
            "dali-blur-gaussian-fixed-23": dali(blur_cpu_filter=False, blur_fixed_window=True),
            "dali-2-threads": dali(threads=2),
            "dali-batch-16": dali(batch=16),
            "dali-batch-64": dali(batch=64),
            "dali-batch-128": dali(batch=128),
            "dali-prefetch-1": dali(prefetch=1),
            "dali-prefetch-3": dali(prefetch=3),
        })
    names = args.variants or [n for n in make if n != "dali-gpu"]
    return {name: make[name] for name in names}


def tv_hpt_stream(paths, size, batch):
    from hpt_hpc.config import AugmentConfig, DataConfig
    from hpt_hpc.data import ImageRecord, build_pretrain_loader
    records = [ImageRecord(p, (0,)) for p in paths]
    return iter(build_pretrain_loader(records, AugmentConfig(), DataConfig(image_size=size),
                                      batch, seed=0, workers=0))


def settle(poll: float = 0.02) -> float:
    """Wait until background work (DALI's prefetching threads) has finished: the process
    uses under 10% of a core over ``poll`` seconds. Returns the busy seconds waited."""
    start, last = time.perf_counter(), cpu_seconds()
    while True:
        time.sleep(poll)
        now = cpu_seconds()
        if now - last < 0.1 * poll:
            return max(0.0, time.perf_counter() - start - poll)
        last = now


def measure(stream, batches: int, cuda: bool):
    """(CPU seconds, wall seconds, images) for ``batches`` batches. The work a pipeline
    prefetches after the last batch is waited for and counted here, as the work prefetched
    for the first batch was counted in this variant's previous round."""
    cpu, wall = cpu_seconds(), time.perf_counter()
    images = 0
    for _ in range(batches):
        view1, _ = next(stream)
        images += view1.shape[0]
    if cuda:
        torch.cuda.synchronize()
    busy = time.perf_counter() - wall
    busy += settle()
    return cpu_seconds() - cpu, busy, images


def machine() -> dict:
    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as handle:
            model = next(l.split(":", 1)[1].strip() for l in handle if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"host": socket.gethostname(), "cpu": model,
            "cores": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "torch": torch.__version__}
    try:
        import nvidia.dali
        info["dali"] = nvidia.dali.__version__
    except ImportError:
        pass
    import torchvision
    info["torchvision"] = torchvision.__version__
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def run(args) -> dict:
    paths = make_jpegs(Path(args.cache), args.images, args.source_size)
    makers = variants(args, paths)
    streams = {name: make() for name, make in makers.items()}
    cuda = torch.cuda.is_available()
    for stream in streams.values():  # warm-up: pipelines built, caches hot
        measure(stream, 2, cuda)
    settle()
    rows = {name: [] for name in streams}
    for _ in range(args.rounds):
        order = list(streams)
        random.shuffle(order)
        for name in order:
            rows[name].append(measure(streams[name], args.batches, cuda))
    summary = {}
    for name, runs in rows.items():
        cpu_ms = [1000 * c / n for c, _, n in runs]
        rate = [n / w for _, w, n in runs]
        summary[name] = {"cpu_ms_per_image": statistics.median(cpu_ms),
                         "cpu_ms_spread": [min(cpu_ms), max(cpu_ms)],
                         "images_per_s": statistics.median(rate),
                         "images_per_s_spread": [min(rate), max(rate)]}
    ref = summary.get("tv1-pil", {}).get("cpu_ms_per_image")
    for row in summary.values():
        row["cpu_vs_tv1_pil"] = row["cpu_ms_per_image"] / ref if ref else None
    return {"machine": machine(), "settings": {k: v for k, v in vars(args).items()
                                               if k not in ("out",)},
            "images": f"{args.images} RGB JPEGs {args.source_size}x{args.source_size} q90: "
                      "3 real Fashion-MNIST images as channels, bicubic upscaled",
            "time": time.strftime("%Y-%m-%d %H:%M:%S"), "results": summary}


def markdown(result: dict) -> str:
    m, s = result["machine"], result["settings"]
    where = f"{m['cpu']}, {m['cores']} cores" + (f", {m['gpu']}" if "gpu" in m else "")
    lines = [f"Two {s['size']}x{s['size']} views per image, batch {s['batch']}, DALI "
             f"{s['threads']} thread(s), torchvision in-process (1 thread); {where}; "
             f"median of {s['rounds']} interleaved rounds ({result['time']}).", "",
             "| variant | CPU-ms / image | vs tv1-pil | images/s (wall) |",
             "|---|---|---|---|"]
    for name, row in result["results"].items():
        ratio = f"{row['cpu_vs_tv1_pil']:.2f}x" if row["cpu_vs_tv1_pil"] else "-"
        lines.append(f"| {name} | {row['cpu_ms_per_image']:.2f} | {ratio} | "
                     f"{row['images_per_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--source-size", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="DALI threads")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=6, help="batches per variant per round")
    parser.add_argument("--variants", nargs="*", default=None)
    parser.add_argument("--breakdown", action="store_true")
    parser.add_argument("--cache", default=os.path.join(
        os.environ.get("TMPDIR", "/tmp"), "hpt-bench-jpegs"))
    parser.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "benchmarks/results"))
    parser.add_argument("--tag", default="data_pipeline")
    args = parser.parse_args(argv)
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    result = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{args.tag}-{time.strftime('%Y%m%d-%H%M%S')}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    stem.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    print(f"written: {stem}.json, {stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

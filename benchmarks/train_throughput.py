"""Training-throughput benchmark: images/s of a MoCo-v2 step, ours vs a reference loop.

Cases: ResNet-18 and ResNet-50 at 224x224 (MoCo-v2: K=65536, dim 128, MLP head) and the
quickstart's small model (``configs/quickstart.yaml``: width-0.25 ResNet-18, 32x32 grey).
Modes, interleaved round by round in one process so that ratios hold on a noisy machine:

* ``ours-synthetic``  this toolkit's step (:mod:`hpt_hpc.train.speed`, the engine's
  ``compute: auto``: bf16 + channels_last + fused SGD on a GPU, fp32 on CPU) on random
  device-resident batches: the compute ceiling;
* ``ours-dali``       the same step fed by the DALI loader (GPU operators on a GPU);
* ``ours-fp32``       (GPU only) the step with every switch off: what the switches bring;
* ``reference``       ``benchmarks/reference_moco.py``: the original MoCo-v2 loop (fp32,
  PIL + torchvision loader with ``--workers`` processes, DDP step);
* ``reference-synthetic`` the reference step on the synthetic batches (step-only ratio).

Loaders get the same CPU budget (DALI threads = reference workers = ``--workers``).
Memory per configuration: resident (model, optimiser, queue) plus the step's peak over two
steps, from ``torch.cuda.max_memory_allocated`` on a GPU or the process' peak RSS
(``/proc/self/clear_refs`` + ``VmHWM``) on CPU, with loader workers' unique memory.
``--batch-search`` (GPU): the largest ResNet-50 224x224 batch whose step fits, by doubling
then bisection on out-of-memory. Results: ``<out>/<tag>.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import psutil
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from data_pipeline import machine, make_jpegs  # noqa: E402
from train_measure import (child_uss_mb, largest_fitting, markdown, measure,  # noqa: E402
                           peak_since_reset, reset_peak, rss_mb)
from reference_moco import (ReferenceTrainer, init_single_process_group,  # noqa: E402
                            reference_loader)

from hpt_hpc.config import ExperimentConfig, load_config  # noqa: E402
from hpt_hpc.config.schema import ComputeConfig  # noqa: E402
from hpt_hpc.models import build_backbone_from_config  # noqa: E402
from hpt_hpc.ssl import MoCo  # noqa: E402
from hpt_hpc.train.speed import (make_optimizer, prepare_model, resolve_speed,  # noqa: E402
                                 to_device, train_step)

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda", 0) if CUDA else torch.device("cpu")


def case_config(name: str, backend_device: str) -> ExperimentConfig:
    """The experiment config of a case (data.backend dali)."""
    if name == "quickstart-32":
        cfg = load_config(ROOT / "configs/quickstart.yaml")
    else:
        cfg = ExperimentConfig()
        cfg.model.arch, cfg.model.width, cfg.model.small_stem = name.split("-")[0], 1.0, False
        cfg.model.in_channels, cfg.data.channels, cfg.data.image_size = 3, 3, 224
        cfg.moco.queue_size, cfg.moco.momentum, cfg.moco.dim = 65536, 0.999, 128
    cfg.data.backend, cfg.data.device = "dali", backend_device
    return cfg


def image_paths(name: str, args) -> list:
    if name != "quickstart-32":
        return make_jpegs(Path(args.cache), args.images, 256)
    from hpt_hpc.config import DatasetConfig
    from hpt_hpc.data import list_split, prepare_dataset
    tree = Path(args.cache) / "fashion-mnist-small"
    prepare_dataset("fashion-mnist", tree, limit=max(64, args.images // 10))
    return [r.path for r in list_split(DatasetConfig(path=str(tree)), "train")[0]]


class Synthetic:
    """The same two device-resident random batches, forever (NCHW, as loaders deliver)."""

    def __init__(self, batch: int, channels: int, size: int):
        gen = torch.Generator().manual_seed(0)
        self.views = [torch.randn(batch, channels, size, size, generator=gen).to(DEVICE)
                      for _ in range(2)]

    def __iter__(self):
        while True:
            yield self.views


class OurRunner:
    """The engine's step: to_device, zero_grad, train_step, SGD step; no per-step sync."""

    def __init__(self, cfg: ExperimentConfig, feed, compute: ComputeConfig):
        self.speed = resolve_speed(compute, DEVICE)
        self.model = MoCo.from_config(cfg.model, cfg.moco).to(DEVICE).train()
        prepare_model(self.model, self.speed)  # also sets cudnn.benchmark on CUDA
        params = self.model.trainable_parameters("full")
        self.optimizer = make_optimizer(params, cfg.optim.lr, 0.9, 1e-4, self.speed)
        self.feed, self.batches, self.loss = feed, iter(feed), None

    def step(self):
        view_q, view_k = (to_device(v, DEVICE, self.speed) for v in next(self.batches))
        self.optimizer.zero_grad(set_to_none=True)
        self.loss, _ = train_step(self.model, self.model, [view_q, view_k], self.speed)
        self.optimizer.step()

    def finish(self):
        if self.loss is not None:
            float(self.loss)


class ReferenceRunner:
    """:class:`ReferenceTrainer` fed by its own loader (``labelled``) or synthetic batches."""

    def __init__(self, cfg: ExperimentConfig, feed, torchvision_model: bool, labelled: bool):
        import torchvision
        encoder = (getattr(torchvision.models, cfg.model.arch) if torchvision_model
                   else partial(build_backbone_from_config, cfg.model))
        self.trainer = ReferenceTrainer(encoder, DEVICE, cfg.moco.dim, cfg.moco.queue_size,
                                        cfg.moco.momentum, cfg.moco.temperature)
        self.feed, self.batches = feed, self._stream(feed, labelled)

    @staticmethod
    def _stream(feed, labelled: bool):
        while True:  # epochs of the DataLoader, (views, labels) -> views
            for item in feed:
                yield item[0] if labelled else item

    def step(self):
        self.trainer.step(next(self.batches))

    finish = staticmethod(lambda: None)


SYNTHETIC_VARIANTS = {  # our step on synthetic input with these compute settings
    "ours-synthetic": {}, "ours-fp32": dict(precision="fp32", channels_last=False,
                                            fused_optimizer="off"),
    "ours-bf16": dict(precision="bf16"), "ours-channels-last": dict(channels_last=True),
    "ours-bf16-channels-last": dict(precision="bf16", channels_last=True),
    "ours-fused": dict(fused_optimizer="fused"), "ours-compiled": dict(compile=True)}


def build_runner(case: str, mode: str, args, cfg, paths, synthetic):
    size, channels = cfg.data.image_size, cfg.data.channels
    if mode in SYNTHETIC_VARIANTS:
        return OurRunner(cfg, synthetic, ComputeConfig(**SYNTHETIC_VARIANTS[mode]))
    if mode == "ours-dali":
        from hpt_hpc.data import ImageRecord
        from hpt_hpc.data.dali_loader import DaliPretrainLoader
        records = [ImageRecord(p, (0,)) for p in paths]
        feed = DaliPretrainLoader(records, cfg.augment, cfg.data, args.batch_for[case],
                                  seed=0, workers=args.workers)
        return OurRunner(cfg, feed, ComputeConfig())
    if mode == "reference-synthetic":
        return ReferenceRunner(cfg, synthetic, case != "quickstart-32", labelled=False)
    init_single_process_group(DEVICE)  # the original creates its group before the loader
    feed = reference_loader(paths, args.batch_for[case], args.workers, size, grey=channels == 1)
    return ReferenceRunner(cfg, feed, case != "quickstart-32", labelled=True)


def build_and_profile(case, mode, args, cfg, paths, synthetic):
    """Build a runner, warm it up and measure its own memory (resident + step peak)."""
    before, children = reset_peak(), {c.pid for c in psutil.Process().children(True)}
    runner = build_runner(case, mode, args, cfg, paths, synthetic)
    measure(runner, args.warmup, 0)
    resident = (torch.cuda.memory_allocated() / 2 ** 30 if CUDA else rss_mb()) - before
    steady = reset_peak()
    measure(runner, 2, 0)
    unit = "gb" if CUDA else "mb"
    memory = {f"resident_{unit}": round(resident, 3),
              f"step_peak_{unit}": round(peak_since_reset() - steady, 3)}
    memory[f"peak_{unit}"] = round(resident + memory[f"step_peak_{unit}"], 3)
    if not CUDA:
        memory["process_peak_rss_mb"] = round(peak_since_reset(), 1)
        memory["loader_workers_uss_mb"] = round(child_uss_mb(children), 1)
    return runner, memory


def close(runner):
    for feed in (getattr(runner, "feed", None),):
        for name in ("close", "_shutdown_workers"):
            if hasattr(feed, name):
                getattr(feed, name)()
        iterator = getattr(feed, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()


def batch_search(args) -> dict:
    """Largest ResNet-50 224x224 batch of our step that fits: doubling, then bisection."""
    if not CUDA:
        return {"skipped": "needs a CUDA GPU"}
    cfg = case_config("resnet50-224", "gpu")
    runner = OurRunner(cfg, [], ComputeConfig())
    trials = []

    def fits(batch: int) -> bool:
        started, ok = time.perf_counter(), True
        try:
            runner.batches = iter(Synthetic(batch, 3, 224))
            torch.cuda.reset_peak_memory_stats()
            measure(runner, 2, batch)
        except torch.OutOfMemoryError:
            ok = False
        runner.batches, runner.loss = None, None
        runner.optimizer.zero_grad(set_to_none=True)
        model = runner.model
        model._held_keys = []
        gc.collect()
        torch.cuda.empty_cache()
        trials.append({"batch": batch, "fits": ok, "seconds": round(time.perf_counter() - started, 1),
                       "peak_gb": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)})
        return ok

    best = largest_fitting(fits, args.search_start, args.search_limit, args.search_resolution)
    return {"largest_batch": best, "resolution": args.search_resolution, "trials": trials,
            "gpu_memory_gb": round(torch.cuda.get_device_properties(0).total_memory / 2 ** 30, 1)}


# ------------------------------------------------------------------ the run

def default_modes() -> list:
    mine = ["ours-synthetic", "ours-dali", "reference", "reference-synthetic"]
    return mine + ["ours-fp32"] if CUDA else mine


def paired_ratio(rows, a, b, cpu=False) -> float:
    """Median over rounds of speed(a) / speed(b), both measured in the same round; speed is
    images per wall second, or per CPU second with ``cpu``."""
    if a not in rows or b not in rows:
        return None
    pick = 0 if cpu else 1
    ratios = [(ra[2] / ra[pick]) / (rb[2] / rb[pick]) for ra, rb in zip(rows[a], rows[b])]
    return round(statistics.median(ratios), 3) if ratios else None


def summarise(rows, memory, batch) -> dict:
    modes = {}
    for mode, runs in rows.items():
        rates = [n / w for _, w, n in runs]
        modes[mode] = {"batch": batch, "steps_measured": sum(n for *_, n in runs) // batch,
                       "images_per_s": round(statistics.median(rates), 2),
                       "images_per_s_spread": [round(min(rates), 2), round(max(rates), 2)],
                       "cpu_ms_per_image": round(statistics.median(
                           1000 * c / n for c, _, n in runs), 1),
                       "memory": memory[mode]}
    dali_vs_synth = paired_ratio(rows, "ours-dali", "ours-synthetic")
    ratios = {"ours_vs_reference": paired_ratio(rows, "ours-dali", "reference"),
              "step_vs_reference_step": paired_ratio(rows, "ours-synthetic",
                                                     "reference-synthetic"),
              "dali_vs_synthetic": dali_vs_synth,
              "input_cost": round(1 - dali_vs_synth, 3) if dali_vs_synth else None,
              "switches_gain": paired_ratio(rows, "ours-synthetic", "ours-fp32"),
              "ours_vs_reference_cpu": paired_ratio(rows, "ours-dali", "reference", cpu=True),
              "step_vs_reference_step_cpu": paired_ratio(rows, "ours-synthetic",
                                                         "reference-synthetic", cpu=True)}
    for mode in rows:
        if mode in SYNTHETIC_VARIANTS and mode != "ours-synthetic":
            ratios[f"{mode}_vs_ours-synthetic"] = paired_ratio(rows, mode, "ours-synthetic")
    return {"modes": modes, "ratios": {k: v for k, v in ratios.items() if v is not None}}


def targets(results: dict) -> dict:
    out = {}
    for case, res in results.items():
        ratio = res["ratios"].get("ours_vs_reference")
        if ratio is not None:
            out[f"{case}: ours >= reference"] = ratio >= 1.0
    r50 = results.get("resnet50-224")
    if CUDA and r50:
        dali = r50["modes"].get("ours-dali", {}).get("images_per_s", 0)
        out["resnet50-224: >= 4000 images/s with DALI-GPU"] = dali >= 4000
        out["resnet50-224: input cost < 5%"] = r50["ratios"].get("input_cost", 1) < 0.05
    return out


def run(args, emit) -> dict:
    """Build, profile and time every (case, mode); ``emit`` saves partial results."""
    if not CUDA:
        torch.set_num_threads(len(os.sched_getaffinity(0)))
    random.seed(0)
    backend_device = "gpu" if CUDA else "cpu"
    runners, memory, batches, errors = {}, {}, {}, {}
    for case in args.cases:
        cfg, paths = case_config(case, backend_device), image_paths(case, args)
        batch = args.batch_for[case]
        synthetic = Synthetic(batch, cfg.data.channels, cfg.data.image_size)
        for mode in args.modes:
            print(f"building {case} {mode}", flush=True)
            try:
                runners[case, mode], memory[case, mode] = build_and_profile(
                    case, mode, args, cfg, paths, synthetic)
            except Exception as exc:  # noqa: BLE001 - one broken mode must not end the run
                errors[f"{case} {mode}"] = repr(exc)[:500]
                print(f"  failed: {exc!r}"[:300], flush=True)
                continue
            batches[case, mode] = batch
    rows = {key: [] for key in runners}
    started, rounds_done = time.perf_counter(), 0
    for index in range(args.rounds):
        elapsed = time.perf_counter() - started
        if index and elapsed / index * (index + 1) > args.budget:
            break  # the next round would overrun the time budget
        order = list(runners)
        random.shuffle(order)
        for key in order:
            rows[key].append(measure(runners[key], args.steps_for[key[0]], batches[key]))
        rounds_done += 1
        print(f"round {rounds_done} done at {time.perf_counter() - started:.0f} s", flush=True)
    for runner in runners.values():
        close(runner)
    runners.clear()
    gc.collect()
    if CUDA:
        torch.cuda.empty_cache()
    results = {case: summarise({m: rows[c, m] for c, m in rows if c == case},
                               {m: memory[c, m] for c, m in memory if c == case},
                               args.batch_for[case]) for case in args.cases}
    out = {"machine": machine(), "device": str(DEVICE), "time": time.strftime("%Y-%m-%d %H:%M:%S"),
           "settings": {"cases": args.cases, "modes": args.modes, "batch": args.batch_for,
                        "steps_per_round": args.steps_for, "rounds": rounds_done,
                        "warmup_steps": args.warmup, "loader_workers": args.workers,
                        "torch_threads": torch.get_num_threads()},
           "results": results, "targets": targets(results), "errors": errors}
    out["batch_search"] = {"skipped": "not asked"}
    if args.batch_search:
        emit(dict(out, batch_search={"skipped": "running"}))
        out["batch_search"] = batch_search(args)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="*",
                        default=["quickstart-32", "resnet18-224", "resnet50-224"])
    parser.add_argument("--modes", nargs="*", default=None)
    parser.add_argument("--batch", type=int, default=256 if CUDA else 8, help="224x224 cases")
    parser.add_argument("--small-batch", type=int, default=64, help="quickstart case")
    parser.add_argument("--steps", type=int, default=10 if CUDA else 2,
                        help="steps per mode per round (224x224 cases)")
    parser.add_argument("--small-steps", type=int, default=10 if CUDA else 5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=5 if CUDA else 1)
    parser.add_argument("--budget", type=float, default=300, help="seconds for the rounds")
    parser.add_argument("--workers", type=int, default=8 if CUDA else 1,
                        help="DALI threads and reference DataLoader workers")
    parser.add_argument("--images", type=int, default=1024 if CUDA else 128)
    parser.add_argument("--batch-search", action="store_true", help="GPU only")
    parser.add_argument("--search-start", type=int, default=256)
    parser.add_argument("--search-limit", type=int, default=8192)
    parser.add_argument("--search-resolution", type=int, default=64)
    parser.add_argument("--cache", default=os.path.join(
        os.environ.get("TMPDIR", "/tmp"), "hpt-bench-jpegs"))
    parser.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "benchmarks/results"))
    parser.add_argument("--tag", default="train_throughput")
    args = parser.parse_args(argv)
    args.modes = args.modes or default_modes()
    args.batch_for = {c: args.small_batch if c == "quickstart-32" else args.batch
                      for c in args.cases}
    args.steps_for = {c: args.small_steps if c == "quickstart-32" else args.steps
                      for c in args.cases}
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def emit(result):
        (out / f"{args.tag}.json").write_text(json.dumps(result, indent=2))
        (out / f"{args.tag}.md").write_text(markdown(result))

    result = run(args, emit)
    emit(result)
    print(markdown(result))
    print(f"written: {out / args.tag}.json, .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

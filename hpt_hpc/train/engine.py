"""The stage engine: one pretraining stage from a :class:`StagePlan`, a data loader, a
tracker and an initial checkpoint file. The ssl method (MoCo-v2, ...) is asked only
through its interface (:class:`hpt_hpc.ssl.SslMethod`).

Iteration-based SGD or AdamW with cosine decay (optional per-parameter gradient clipping). Periodic and final checkpoints are written
atomically; if the stage's output folder already holds a checkpoint the stage resumes
from it at the saved step. Variants: ``full`` (HPT), ``bn`` (HPT-BN), ``bn-stats`` (the
Base baseline: BatchNorm statistics re-estimated, no gradient step), ``scratch`` (Target),
``last-blocks`` (HPT-LB), ``lora`` (HPT-LoRA): :mod:`hpt_hpc.models.variants`.
Speed switches (bf16 autocast, channels_last, fused SGD, compile, gradient accumulation)
come from ``cfg.compute`` through :mod:`hpt_hpc.train.speed`. On a GPU the loss is read
back (a host sync) only when it is logged, reported or checked, not every step.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import torch

from ..config import config_to_dict, flatten
from ..models.resolve import Resolved
from ..data.specs import GLOBAL_VIEWS
from ..errors import ConfigError, HptError
from ..models import SKIPPED_KEY, is_bn, reestimate_bn_stats, stage_checkpoint
from ..plan import StagePlan
from ..plan.record import StageRecord
from ..progress import Progress
from ..ssl import SslMethod, build_method
from ..tracking import NullTracker, Tracker
from .distributed import DistInfo
from .initial import load_stage_init
from .resume import (RESUME_CHANGES_KEY, check_finite, load_resume_point, lower_rate_advice,
                     save_resume_point)
from .speed import (DECAYED, StepSpeed, check_accumulation, clip_gradients, make_optimizer,
                    prepare_model, resolve_speed, set_optimizer_impl, to_device, train_step,
                    weight_decay_at)
from ..device import resolve_device
from .state import capture_rng_state, restore_rng_state, seed_everything

log = logging.getLogger(__name__)


def learning_rate(step: int, total: int, base_lr: float, warmup: int, schedule: str) -> float:
    """Linear warm-up for ``warmup`` steps, then cosine decay to 0 (or constant)."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    if schedule == "constant":
        return base_lr
    progress = (step - warmup) / max(1, total - warmup)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _batches(loader: Any, start_step: int) -> Iterator[Tuple[torch.Tensor, ...]]:
    """The loader's batch stream positioned at global step ``start_step``.

    Resumable loaders expose ``steps_per_epoch`` and ``set_epoch(epoch, step)``; the
    stream after a resume is then the one an uninterrupted run would have seen.
    """
    per_epoch = getattr(loader, "steps_per_epoch", 0)
    if per_epoch and hasattr(loader, "set_epoch"):
        loader.set_epoch(start_step // per_epoch, start_step % per_epoch)
    return iter(loader)


def bn_stats_batches(loader: Any, start_step: int, device: torch.device
                     ) -> Iterator[torch.Tensor]:
    """Variant bn-stats' input from step ``start_step`` on: each batch's global views (the
    first :data:`~hpt_hpc.data.specs.GLOBAL_VIEWS`, at ``data.image_size``, the size the
    evaluation sees) as one batch; multi-crop's local views are left out."""
    return (torch.cat(views[:GLOBAL_VIEWS]).to(device) for views in _batches(loader, start_step))


def _rng_states(dist: DistInfo) -> Dict[str, Any]:
    """This rank's generator states and, with several ranks, every rank's under ``ranks``
    (each rank's augmentations draw from its own generators: a resume restores them all).
    Collective: every rank calls it."""
    state = capture_rng_state()
    if dist.world_size > 1:
        import torch.distributed as torch_dist
        ranks: list = [None] * dist.world_size
        torch_dist.all_gather_object(ranks, state)
        state = {**state, "ranks": ranks}
    return state


def _skipped_images(loader: Any, dist: DistInfo) -> Dict[str, str]:
    """The unreadable images every rank's loader met so far (``{path: reason}``: the union
    of the ranks' sets; each rank reads its own part of the data). Collective."""
    skipped = getattr(loader, "skipped", None)
    own = skipped.reasons if skipped is not None else {}
    if dist.world_size == 1:
        return own
    import torch.distributed as torch_dist
    ranks: list = [None] * dist.world_size
    torch_dist.all_gather_object(ranks, own)
    union: Dict[str, str] = {}
    for part in ranks:
        for path, reason in part.items():
            union.setdefault(path, reason)
    return union


def _own_rng(state: Dict[str, Any], dist: DistInfo) -> Dict[str, Any]:
    """The states this rank saved (rank 0's in a checkpoint written by one rank)."""
    ranks = state.get("ranks")
    return ranks[dist.rank] if ranks and len(ranks) == dist.world_size else state


@dataclass
class StageRun:
    """One call of :func:`run_stage`: what the loop and its checkpoints need besides the
    model and the optimiser (the plan, its data, tracker, device, ranks, step kernels, the
    init file, and the caller's hooks)."""

    plan: StagePlan
    loader: Any
    tracker: Tracker
    device: torch.device
    dist: DistInfo
    speed: StepSpeed
    init: Optional[str] = None
    stop_after: Optional[int] = None
    on_step: Optional[Callable[[int, float], None]] = None
    should_stop: Optional[Callable[[int], bool]] = None

    def checkpoint(self, model: SslMethod, optimizer: Optional[torch.optim.Optimizer],
                   step: int, rng: Dict[str, Any], init_report: Dict[str, Any],
                   skipped: Dict[str, str]) -> Dict[str, Any]:
        plan = self.plan
        return stage_checkpoint(model, optimizer, step, plan.iterations, plan.stage,
                                plan.variant, self.init, config_to_dict(plan.config), rng,
                                self.tracker.run_id, method=plan.method, label=plan.label,
                                target_steps=plan.target_steps,
                                init_report=init_report or None, skipped=skipped,
                                **model.checkpoint_keys())


def parameter_digest(model: SslMethod) -> str:
    """A short hash of the online encoder's parameters: equal digests, equal weights."""
    import hashlib
    digest = hashlib.sha256()
    for name, param in sorted(model.online_encoder().named_parameters()):
        digest.update(name.encode())
        digest.update(param.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def build_model(plan: StagePlan, num_images: int) -> SslMethod:
    """The stage's ssl method for ``num_images`` training images (every rank lists all)."""
    return build_method(plan.config, plan.ssl, num_images=num_images,
                        global_batch=plan.batch_size)


def run_stage(plan: StagePlan, loader: Any, tracker: Optional[Tracker] = None,
              init: Optional[str] = None, dist: Optional[DistInfo] = None,
              stop_after: Optional[int] = None,
              on_step: Optional[Callable[[int, float], None]] = None,
              should_stop: Optional[Callable[[int], bool]] = None,
              resolved: Optional[Resolved] = None) -> StageRecord:
    """Run (or resume) one stage; return where its checkpoint is and how far it got.

    ``loader`` yields batches of views (2 global, then any local ones: the method gets
    them all, bn-stats the global ones) and reports ``num_images``;
    ``init`` is a checkpoint file (``None``: random init; ``resolved``: the reference it
    was resolved from, which names it and the model its weights are for: :mod:`.initial`). ``stop_after`` ends the run
    early after that many steps of this call (used to test resumption); ``should_stop(step)``
    is asked after every step and ends the run at that step boundary when true (preemption).
    With ``dist.world_size > 1`` the process group must be initialised: the model is wrapped
    in DistributedDataParallel and every rank must make the same ``should_stop`` decision.
    """
    tracker = tracker or NullTracker()
    dist = dist or DistInfo()
    if dist.world_size != plan.world_size:
        raise HptError(f"stage '{plan.stage}' was planned for {plan.world_size} rank(s) but "
                       f"runs on {dist.world_size}; plan it with the job's world size")
    cfg, stage, variant, total = plan.config, plan.stage, plan.variant, plan.iterations
    layout = plan.layout
    layout.checkpoints.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    started = time.time()

    speed = resolve_speed(cfg.compute, device)
    check_accumulation(plan.rank_batch_size, speed.accumulate, stage)
    run = StageRun(plan, loader, tracker, device, dist, speed, init, stop_after, on_step,
                   should_stop)
    seed_everything(cfg.seed + dist.rank)
    model = build_model(plan, loader.num_images)
    result = StageRecord(stage, variant, layout.final, 0, total, label=plan.label,
                         rank=dist.rank, world_size=dist.world_size,
                         queue_size=int(model.facts().get("queue_size", 0)),
                         images=loader.num_images, threads=torch.get_num_threads(),
                         ssl=plan.ssl)

    resume_state = load_resume_point(plan)
    if resume_state is None and init:
        report = load_stage_init(model, plan, init, resolved, tracker)
        result.init, result.init_layout = report["init"], report.get("layout")
    elif resume_state is not None:
        result.init = dict(resume_state.get("init_report") or {})
    model.to(device)
    section = cfg.stages[stage]
    try:  # before compiling: variant lora adds layers
        params = model.trainable_parameters(variant, section.train_head, section.blocks,
                                            section.lora)
    except ConfigError as exc:
        raise ConfigError(f"stages.{stage}: {exc}") from None
    prepare_model(model, speed)
    optimizer = (make_optimizer(params, plan.lr, cfg.optim.momentum, cfg.optim.weight_decay,
                                speed, cfg.optim.optimizer, cfg.optim.decay_norms_and_biases)
                 if params else None)
    start = 0
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        if optimizer is not None and resume_state.get("optimizer"):
            optimizer.load_state_dict(resume_state["optimizer"])
            set_optimizer_impl(optimizer, speed)
        restore_rng_state(_own_rng(resume_state["rng"], dist))
        if getattr(loader, "skipped", None) is not None:  # counted on, not met again
            loader.skipped.restore(resume_state.get(SKIPPED_KEY) or {})
        start = result.resumed_from = int(resume_state["step"])
        result.resume_changes = list(resume_state.get(RESUME_CHANGES_KEY) or [])
        log.info("stage %s: resuming at step %d of %d", stage, start, total)

    tracker.log_params(flatten(config_to_dict(cfg)))
    if result.resumed_from is not None:
        tracker.set_tags({"hpt.resumed_from_step": str(start)})
    if result.resume_changes:
        tracker.set_tags({"hpt.resume_changes": "; ".join(result.resume_changes)})

    if variant == "bn-stats":
        if not any(is_bn(m) for m in model.online_encoder().modules()):
            log.info("stage %s: bn-stats: the backbone (%s) has no BatchNorm layers, so "
                     "there are no statistics to re-estimate; the result is the initial "
                     "model as is", stage, cfg.model.arch)
        elif start < total:
            reestimate_bn_stats(model.online_encoder(), bn_stats_batches(loader, start, device),
                                total)
            if dist.world_size > 1:
                _average_buffers(model.online_encoder(), dist.world_size)
            model.sync_targets()
        result.steps = total
    else:
        net = model
        if dist.world_size > 1:
            net = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        log.info("stage %s: step %s", stage, speed.describe())
        result = _train_loop(run, net, optimizer, result, start)

    check_finite(model, plan, result.steps, plan.lr)
    skipped = _skipped_images(loader, dist)
    state = run.checkpoint(model, optimizer, result.steps, _rng_states(dist), result.init,
                           skipped)
    if dist.is_main and (result.completed or result.saved_step != result.steps):
        save_resume_point(state, plan, final=result.completed)
        if result.completed:
            result.model_uri = tracker.log_checkpoint(str(layout.final), kind="final")
    result.run_id = tracker.run_id
    result.checkpoint = layout.checkpoint(result.completed)
    result.skipped_images = len(skipped)  # the stage's, resumed or not, over all ranks
    if result.skipped_images:
        log.warning("stage %s: skipped %d unreadable image(s)%s: %s", stage,
                    result.skipped_images, f" over {dist.world_size} ranks"
                    if dist.world_size > 1 else "", ", ".join(list(skipped)[:5]))
    result.seconds = time.time() - started
    result.param_digest = parameter_digest(model)
    tracker.log_metrics({"skipped_images": result.skipped_images}, step=result.steps)
    tracker.flush()
    return result


def _average_buffers(module: torch.nn.Module, world_size: int) -> None:
    """Average floating-point buffers (BatchNorm statistics) over all ranks."""
    import torch.distributed as torch_dist
    for buf in module.buffers():
        if buf.is_floating_point():
            torch_dist.all_reduce(buf)
            buf.div_(world_size)


def _train_loop(run: StageRun, net: torch.nn.Module,
                optimizer: Optional[torch.optim.Optimizer], result: StageRecord,
                start: int) -> StageRecord:
    plan, tracker, device, dist, speed = run.plan, run.tracker, run.device, run.dist, run.speed
    on_step, should_stop, stop_after = run.on_step, run.should_stop, run.stop_after
    cfg, base_lr = plan.config, plan.lr
    model: SslMethod = getattr(net, "module", net)
    total = result.total_steps
    end = total if stop_after is None else min(total, start + stop_after)
    net.train()
    batches = _batches(run.loader, start)
    step, loss_value, tick = start, float("nan"), time.time()
    durations, window_started, window_steps = [], time.perf_counter(), 0
    log_every = max(1, min(50, total // 20 or 1))
    progress = Progress(f"stage {result.stage}", total, cfg.progress_seconds,
                        images_per_step=plan.batch_size, start=start, enabled=dist.is_main,
                        status_file=plan.layout.progress)
    every = cfg.checkpoint.every
    sync_each_step = device.type != "cuda" or on_step is not None
    for step in range(start, end):
        fetch = time.perf_counter()
        views = [to_device(view, device, speed) for view in next(batches)]
        wait = time.perf_counter() - fetch
        lr = learning_rate(step, total, base_lr, cfg.optim.warmup_iterations, cfg.optim.schedule)
        decay = weight_decay_at(step, total, cfg.optim.weight_decay,
                                cfg.optim.weight_decay_end)
        for group in optimizer.param_groups:
            group["lr"] = lr
            if group.get(DECAYED, True):
                group["weight_decay"] = decay
        optimizer.zero_grad(set_to_none=True)
        loss, out = train_step(net, model, views, speed)
        model.before_step(step, total)
        if cfg.optim.clip_grad:
            clip_gradients(model.parameters(), cfg.optim.clip_grad)
        optimizer.step()
        model.after_step(step + 1, total)
        window_steps += 1
        logged = (step + 1) % log_every == 0 or step + 1 == end
        if sync_each_step or logged:
            loss_value = float(loss)  # waits for the device: times the steps since last read
            if not math.isfinite(loss_value):
                raise HptError(f"stage '{plan.label}': the loss became {loss_value} by step "
                               f"{step + 1} (learning rate {lr:g}); nothing diverged was "
                               f"saved. {lower_rate_advice(plan)}")
            now_perf = time.perf_counter()
            durations += [(now_perf - window_started) / window_steps] * window_steps
            window_started, window_steps = now_perf, 0
        if on_step is not None:
            on_step(step + 1, loss_value)
        if logged:
            now = time.time()
            metrics = model.metrics_of(out)
            if cfg.optim.weight_decay_end is not None:
                metrics["weight_decay"] = decay
            tracker.log_metrics({"loss": loss_value, "lr": lr, **metrics,
                                 "step_seconds": (now - tick) / log_every}, step=step + 1)
            failure = model.failure_of(metrics)
            if failure:
                raise HptError(f"stage '{plan.label}' stopped at step {step + 1}: {failure}")
            tick = now
        progress.update(step + 1, wait, f"loss {loss_value:.4f} lr {lr:.4g}")
        if (every and (step + 1) % every == 0 or step + 1 in cfg.checkpoint.at) \
                and step + 1 < total:
            check_finite(model, plan, step + 1, lr)
            rng, skipped = _rng_states(dist), _skipped_images(run.loader, dist)
            if dist.is_main:
                save_resume_point(run.checkpoint(model, optimizer, step + 1, rng,
                                                 result.init, skipped), plan)
            result.saved_step = step + 1
        if should_stop is not None and step + 1 < end and should_stop(step + 1):
            log.warning("stage %s: stopping at step %d on request (preemption)", result.stage,
                        step + 1)
            end = step + 1
            break
    result.steps = end if end > start else start
    result.final_loss = loss_value
    steady = sorted(durations[5:] or durations)
    if steady:
        result.step_seconds = steady[len(steady) // 2]
    return result

"""DINO (ssl: dino) step for step against a reference written here from the paper's
algorithm (plain torch: its own weight-normalised layer, loss, centre, temperatures, EMA,
frozen last layer and per-parameter clipping), through the real engine; the collapse
guard; the CLI; the cross-method rule. The 2-rank case: test_dino_distributed.py."""
from __future__ import annotations

import copy
import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from hpt_hpc.cli.main import cli
from hpt_hpc.config import OutputLayout, config_from_dict, load_config
from hpt_hpc.data import build_eval_loader
from hpt_hpc.data.sources import ImageRecord
from hpt_hpc.models import load_checkpoint
from hpt_hpc.plan import stage_plan
from hpt_hpc.ssl import Dino, build_method
from hpt_hpc.train.distributed import DistInfo
from hpt_hpc.train.engine import run_stage
from hpt_hpc.train.state import seed_everything
from tiny import tiny_config_data, write_tiny_config

STEPS, BATCH, GLOBAL, LOCAL = 3, 4, 16, 8
DINO = {"out_dim": 32, "hidden_dim": 16, "bottleneck_dim": 8, "freeze_last_layer_steps": 1,
        "warmup_teacher_temp": 0.07, "teacher_temp": 0.04, "warmup_teacher_temp_steps": 2,
        "student_temp": 0.1, "center_momentum": 0.8, "momentum_teacher": 0.9,
        "collapse_min_feature_std": 0.0, "collapse_min_kl": 0.0}
MODELS = {
    "resnet": {"arch": "resnet18", "width": 0.125, "small_stem": True, "stem_stride": 2,
               "in_channels": 1},
    "vit": {"arch": "timm:vit_small_patch16_224", "in_channels": 1,
            # no qkv bias: a key bias has no true gradient (softmax ignores it), only
            # rounding noise that AdamW would blow up to +-lr steps in either direction
            "timm_kwargs": {"patch_size": 4, "depth": 2, "embed_dim": 32, "num_heads": 2,
                            "qkv_bias": False, "dynamic_img_size": True}},
}


def dino_config(out: Path, model: str, optimizer: str, *, world: int = 1, optim=None,
                **dino):
    """A 3-step DINO stage on fixed views: constant lr, a checkpoint after every step."""
    data = tiny_config_data(out, {"none": out}, {
        "base": {"dataset": "none", "iterations": STEPS, "batch_size": BATCH * world}})
    data.update(ssl="dino", model=MODELS[model], dino={**DINO, **dino},
                checkpoint={"every": 1, "keep": STEPS})
    data["optim"].update(optimizer=optimizer, schedule="constant", clip_grad=0.05,
                         weight_decay=0.01, lr=0.05 if optimizer == "sgd" else 1e-3)
    data["optim"].update(optim or {})
    data["compute"] = {"threads": 1}
    return config_from_dict(data)


def views_of(step: int, world: int = 1):
    """The step's 2 global + 2 local views of the global batch (the same on every rank)."""
    gen = torch.Generator().manual_seed(1000 + step)
    n = BATCH * world
    return ([torch.randn(n, 1, GLOBAL, GLOBAL, generator=gen) for _ in range(2)]
            + [torch.randn(n, 1, LOCAL, LOCAL, generator=gen) for _ in range(2)])


class FixedLoader:
    """Yields :func:`views_of` each step, this rank's slice of the global batch."""

    num_images = 64

    def __init__(self, rank: int = 0, world: int = 1) -> None:
        self.rank, self.world = rank, world

    def __iter__(self):
        step = 0
        while True:
            yield tuple(v[self.rank * BATCH:(self.rank + 1) * BATCH]
                        for v in views_of(step, self.world))
            step += 1


def run_engine(cfg, rank: int = 0, world: int = 1):
    """The stage through the engine; per step: this rank's loss and (rank 0) the
    checkpointed model."""
    losses = []
    plan = stage_plan(cfg, "base", world_size=world, tracking=None)
    run_stage(plan, FixedLoader(rank, world), dist=DistInfo(rank, world, 0),
              on_step=lambda step, loss: losses.append(loss))
    if rank:
        return losses, []  # rank 0 writes the checkpoints
    folder = plan.layout.checkpoints
    states = [load_checkpoint(folder / f"step-{s:09d}.pt")["model"] for s in range(1, STEPS)]
    return losses, states + [load_checkpoint(plan.layout.final)["model"]]


# -- the reference ---------------------------------------------------------------------------
class RefNet(nn.Module):
    """Backbone, MLP, L2 norm, weight-normalised prototypes (torch's own weight_norm)."""

    def __init__(self, encoder: nn.Module, norm_last_layer: bool) -> None:
        super().__init__()
        head = encoder.fc
        self.backbone = copy.deepcopy(encoder)
        self.backbone.fc = nn.Identity()
        self.mlp = copy.deepcopy(head.mlp)
        v = head.last_layer.weight_v.detach()
        last = nn.Linear(v.shape[1], v.shape[0], bias=False)
        last.weight.data.copy_(v)
        self.last = nn.utils.parametrizations.weight_norm(last)
        self.last.parametrizations.weight.original0.data.fill_(1.0)
        self.last.parametrizations.weight.original0.requires_grad = not norm_last_layer

    def forward(self, x):
        return self.last(F.normalize(self.mlp(self.backbone(x)), dim=-1))

    def as_project_state(self) -> dict:
        """This net's tensors under the project's encoder keys (``fc`` = the head)."""
        out = dict(self.backbone.state_dict())
        out.update({f"fc.mlp.{k}": v for k, v in self.mlp.state_dict().items()})
        g = self.last.parametrizations.weight
        out["fc.last_layer.weight_g"], out["fc.last_layer.weight_v"] = g.original0, g.original1
        return out


class Reference:
    """DINO's algorithm, from the paper, on ``world`` ranks' slices of the global batch
    (BatchNorm statistics per rank as DDP has them; gradients averaged over ranks)."""

    def __init__(self, cfg, world: int = 1) -> None:
        seed_everything(cfg.seed)  # the engine's initial weights
        model = build_method(cfg, "dino", num_images=64, global_batch=BATCH * world)
        d = self.d = cfg.dino
        self.student = RefNet(model.student, d.norm_last_layer).train()
        self.teacher = copy.deepcopy(self.student)
        for p in self.teacher.parameters():
            p.requires_grad = False
        self.center = torch.zeros(1, d.out_dim)
        self.world, self.clipped = world, 0
        params = [p for p in self.student.parameters() if p.requires_grad]
        o = self.o = cfg.optim
        if not o.decay_norms_and_biases:  # DINO's get_params_groups
            params = [{"params": [p for n, p in self.student.named_parameters()
                                  if p.requires_grad and not n.endswith(".bias")
                                  and len(p.shape) != 1]},
                      {"params": [p for n, p in self.student.named_parameters()
                                  if p.requires_grad and (n.endswith(".bias")
                                                          or len(p.shape) == 1)],
                       "weight_decay": 0.0}]
        self.opt = (torch.optim.SGD(params, lr=o.lr, momentum=o.momentum,
                                    weight_decay=o.weight_decay) if o.optimizer == "sgd"
                    else torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay))
        self.clip = o.clip_grad

    def weight_decay(self, step: int) -> float:
        """DINO's cosine_scheduler(wd, wd_end) over the stage's steps."""
        o = self.o
        if o.weight_decay_end is None:
            return o.weight_decay
        return o.weight_decay_end + 0.5 * (o.weight_decay - o.weight_decay_end) * (
            1 + math.cos(math.pi * step / STEPS))

    def temperature(self, step: int) -> float:
        d = self.d
        return d.warmup_teacher_temp + (d.teacher_temp - d.warmup_teacher_temp) * \
            min(1.0, step / d.warmup_teacher_temp_steps)

    def rank_loss(self, views, temp: float):
        """One rank's loss and its teacher outputs (the multi-crop wrapper: one backbone
        pass per resolution)."""
        with torch.no_grad():
            t = self.teacher(torch.cat(views[:2]))
        s = torch.cat([self.student(torch.cat(views[:2])), self.student(torch.cat(views[2:]))])
        q = F.softmax((t - self.center) / temp, dim=-1).chunk(2)
        logp = F.log_softmax(s / self.d.student_temp, dim=-1).chunk(len(views))
        pairs = [(-q[i] * logp[v]).sum(-1).mean() for i in range(2)
                 for v in range(len(views)) if v != i]
        return sum(pairs) / len(pairs), t

    def step(self, step: int, views) -> float:
        temp = self.temperature(step)
        losses, outs = zip(*[self.rank_loss([v[r * BATCH:(r + 1) * BATCH] for v in views],
                                            temp) for r in range(self.world)])
        self.opt.param_groups[0]["weight_decay"] = self.weight_decay(step)
        self.opt.zero_grad()
        (sum(losses) / self.world).backward()
        last = self.student.last.parametrizations.weight
        if step < self.d.freeze_last_layer_steps:
            for p in last.parameters():
                p.grad = None
        for p in self.student.parameters():
            if p.grad is not None:
                coef = self.clip / (p.grad.norm() + 1e-6)
                if coef < 1:
                    p.grad.mul_(coef)
                    self.clipped += 1
        self.opt.step()
        m = self.d.center_momentum
        self.center = self.center * m + torch.cat(outs).mean(0, keepdim=True) * (1 - m)
        mt = 1 - (1 - self.d.momentum_teacher) * (math.cos(math.pi * step / STEPS) + 1) / 2
        with torch.no_grad():
            for pt, ps in zip(self.teacher.parameters(), self.student.parameters()):
                pt.mul_(mt).add_(ps.detach(), alpha=1 - mt)
        return float(losses[0].detach())


def compare(engine_losses, states, ref: Reference, world: int = 1, buffers: bool = True):
    """Every step: equal loss, centre, teacher (after its EMA) and student (after the
    optimiser step); BatchNorm statistics too unless ``buffers`` is False. AdamW moves a
    weight by about lr whatever its gradient's size, so rounding differences of tiny
    gradients may move weights by up to 1% of lr."""
    atol = 1e-6 if ref.opt.__class__ is torch.optim.SGD else 0.01 * ref.opt.defaults["lr"]
    for step in range(STEPS):
        loss = ref.step(step, views_of(step, world))
        state = states[step]
        assert engine_losses[step] == pytest.approx(loss, rel=1e-5, abs=1e-6), step
        torch.testing.assert_close(state["center"], ref.center, rtol=1e-4, atol=1e-6)
        for prefix, net in (("student.", ref.student), ("teacher.", ref.teacher)):
            for key, value in net.as_project_state().items():
                if not buffers and not value.is_floating_point() or \
                        not buffers and "running" in key:
                    continue
                torch.testing.assert_close(state[prefix + key], value.detach(), rtol=1e-4,
                                           atol=atol, msg=lambda m: f"step {step} {prefix}"
                                           f"{key}: {m}")
    assert ref.clipped > 0  # the clipping was exercised


@pytest.mark.parametrize("model", ["resnet", "vit"])
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_engine_equals_the_papers_algorithm(tmp_path, model, optimizer):
    norm = model == "resnet"  # the ViT trains its last layer's norms too
    cfg = dino_config(tmp_path, model, optimizer, norm_last_layer=norm)
    losses, states = run_engine(cfg)
    compare(losses, states, Reference(cfg))


@pytest.mark.parametrize("model", ["resnet", "vit"])
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_the_weight_decay_schedule_spares_biases_and_norms(tmp_path, model, optimizer):
    """DINO's weight decay: a cosine from weight_decay to weight_decay_end, none on biases
    and norm parameters; large decays, so a constant or misplaced one shows."""
    cfg = dino_config(tmp_path, model, optimizer, norm_last_layer=False, optim={
        "weight_decay": 0.5, "weight_decay_end": 5.0, "decay_norms_and_biases": False})
    losses, states = run_engine(cfg)
    compare(losses, states, Reference(cfg))


# -- the collapse guard, the CLI, the cross-method rule -------------------------------------
SMALL = {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16, "freeze_last_layer_steps": 0}


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _dino_cli_config(folder, mnist_tree, dino, iterations=8, **sections):
    folder.mkdir(parents=True)
    return write_tiny_config(folder, {"mnist": mnist_tree},
                             {"base": {"dataset": "mnist", "iterations": iterations}},
                             ssl="dino", dino={**SMALL, **dino}, **sections)


def test_a_collapse_stops_the_stage_with_one_line(tmp_path, mnist_tree):
    # neither centring (the centre stays 0) nor sharpening (teacher as warm as the
    # student): the student learns to match the teacher on every view, KL falls to ~0
    off = {"center_momentum": 1.0, "teacher_temp": 0.1, "warmup_teacher_temp": 0.1,
           "collapse_min_kl": 0.01}
    out = invoke("train", "--config", _dino_cli_config(tmp_path / "off", mnist_tree, off))
    assert out.exit_code == 2 and out.output.count("\n") == 1, out.output
    line = out.output
    assert line.startswith("error: ") and "Traceback" not in line
    assert "stage 'base' stopped at step " in line
    assert "DINO collapsed: KL(teacher || student)" in line and "dino.collapse_min_kl 0.01" in line
    assert "dino.center_momentum below 1" in line and "dino.teacher_temp below" in line
    kl = float(re.search(r"student\) ([\d.e-]+) is below", line).group(1))
    assert 0 <= kl < 0.01
    checkpoints = tmp_path / "off" / "out" / "base" / "checkpoints"
    assert not (checkpoints / "final.pt").exists()
    # the same guard lets the paper's settings (centring, teacher 0.04 < student 0.1) run
    healthy = _dino_cli_config(tmp_path / "on", mnist_tree, {"collapse_min_kl": 0.01})
    assert invoke("train", "--config", healthy).exit_code == 0


def test_the_feature_std_guard_names_the_statistic():
    model = Dino("resnet18", 0.125, True, 1, 2, 16, out_dim=8, hidden_dim=8, bottleneck_dim=4,
                 collapse_min_feature_std=1e-3, collapse_min_kl=1e-3)
    healthy = {"feature_std": 0.09, "kl": 0.5, "teacher_entropy": 1.0}
    assert model.failure_of(healthy) == ""
    line = model.failure_of({**healthy, "feature_std": 1e-4})
    assert line.startswith("DINO collapsed: the student's feature std 0.0001 is below "
                           "dino.collapse_min_feature_std 0.001 (teacher entropy 1)")
    assert "KL" in model.failure_of({**healthy, "kl": 1e-4})


def test_the_metrics_are_the_papers_statistics():
    """teacher_entropy, kl and feature_std recomputed from the outputs independently."""
    torch.manual_seed(0)
    model = Dino("resnet18", 0.125, True, 1, 2, 16, out_dim=8, hidden_dim=8, bottleneck_dim=4)
    views = views_of(0)
    out = model(*views)
    with torch.no_grad():
        t = model.teacher(torch.cat(views[:2]))
        s = model.student(torch.cat(views[:2])), model.student(torch.cat(views[2:]))
        feats = model.student.forward_features(torch.cat(views[:2]))
    q = F.softmax(t / 0.04, dim=-1)  # centre 0 before the first update
    entropy = float(-(q * q.log()).sum(-1).mean())
    logp = F.log_softmax(torch.cat(s) / 0.1, dim=-1).chunk(4)
    qs = q.chunk(2)
    kls = [float(F.kl_div(logp[v], qs[i], reduction="batchmean")) for i in range(2)
           for v in range(4) if v != i]
    std = float(F.normalize(feats, dim=1).std(dim=0).mean())
    metrics = model.metrics_of(out)
    assert metrics["teacher_entropy"] == pytest.approx(entropy, rel=1e-4)
    assert metrics["kl"] == pytest.approx(sum(kls) / len(kls), rel=1e-4, abs=1e-5)
    assert metrics["feature_std"] == pytest.approx(std, rel=1e-4)
    assert metrics["teacher_temp"] == pytest.approx(0.04)


VIT = {"model": {"arch": "timm:vit_small_patch16_224", "in_channels": 1,
                 "timm_kwargs": {"patch_size": 4, "depth": 2, "embed_dim": 32,
                                 "num_heads": 2}}}


def test_a_dino_stage_after_a_moco_stage_through_the_cli(tmp_path, mnist_tree):
    """base: MoCo; target: DINO from stage:base (backbone loaded, heads fresh); then probe
    (cached, knn), a timm export and embed of the DINO result."""
    config = write_tiny_config(tmp_path, {"mnist": mnist_tree}, {
        "base": {"dataset": "mnist", "iterations": 2},
        "target": {"dataset": "mnist", "iterations": 3, "init": "stage:base", "ssl": "dino"}},
        dino=SMALL, **VIT)
    out = invoke("train", "--config", config)
    assert out.exit_code == 0, out.output
    layout = OutputLayout(tmp_path / "out")
    base = load_checkpoint(layout.stage("base").final)
    target = load_checkpoint(layout.stage("target").final)
    assert (base["ssl"], target["ssl"]) == ("moco-v2", "dino")
    assert target["backbone_key"] == "student." and target["target_key"] == "teacher."
    result = json.loads((layout.stage("target").root / "result.json").read_text())
    init = result["init"]
    assert init["ssl"] == "moco-v2" and not init["head_loaded"]
    assert init["loaded"] == init["of"] > 0
    # the backbone was MoCo's at step 0: recompute it from the base and a fresh DINO
    cfg = load_config(config)
    seed_everything(cfg.seed)
    fresh = build_method(cfg, "dino", num_images=64, global_batch=8)
    report = fresh.load_initial(str(layout.stage("base").final))
    assert report["teacher"] == "copied from the student" and not report["head_loaded"]
    moco_backbone = {k[len("encoder_q."):]: v for k, v in base["model"].items()
                     if k.startswith("encoder_q.") and not k.startswith("encoder_q.fc.")}
    for key, value in fresh.student.state_dict().items():
        if key.startswith("fc."):  # DINO's head: its own fresh init, no MoCo tensor
            assert not any(k.endswith(key[3:]) and v.shape == value.shape and torch.equal(
                v, value) for k, v in base["model"].items()), key
        else:
            assert torch.equal(value, moco_backbone[key]), key
    assert all(torch.equal(v, fresh.student.state_dict()[k])
               for k, v in fresh.teacher.state_dict().items())

    for mode in ("cached", "knn"):
        probe = invoke("probe", "--config", config, "--dataset", "mnist", "--checkpoint",
                       "stage:target", "--set", f"probe.mode={mode}")
        assert probe.exit_code == 0, probe.output
        assert 10 < float(re.search(r"top1 ([\d.]+) %", probe.output).group(1)) <= 100
    exported = invoke("export", layout.stage("target").final, "--format", "timm", "--out",
                      tmp_path / "dino.pt")
    assert exported.exit_code == 0, exported.output
    state = torch.load(tmp_path / "dino.pt", weights_only=True)
    student = {k[len("student.backbone."):]: v for k, v in target["model"].items()
               if k.startswith("student.backbone.")}
    assert state.keys() == student.keys()
    assert all(torch.equal(state[k], student[k]) for k in student)
    import timm
    vit = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0,
                            in_chans=1, img_size=16, **VIT["model"]["timm_kwargs"])
    vit.load_state_dict(state, strict=True)
    prefix = tmp_path / "emb" / "val"
    embed = invoke("embed", "--config", config, "--dataset", "mnist", "--split", "val",
                   "--checkpoint", "stage:target", "--out", prefix)
    assert embed.exit_code == 0, embed.output
    embedded = np.load(f"{prefix}.npy")
    with open(f"{prefix}.index.csv", encoding="utf-8") as handle:
        root = handle.readline().removeprefix("# root: ").rstrip("\n")
        rows = [(int(r["row"]), f"{root}/{r['path']}") for r in csv.DictReader(handle)][:8]
    records = [ImageRecord(p, ()) for _, p in rows]
    images = next(iter(build_eval_loader(records, cfg.data, batch_size=len(records),
                                         probe=cfg.probe)))[0]
    with torch.no_grad():
        expected = vit.eval()(images).numpy()
    assert np.allclose(embedded[[r for r, _ in rows]], expected, atol=1e-5)


@pytest.mark.parametrize("family", ["resnet", "vit"])
def test_local_views_train_dino_and_are_refused_for_moco(tmp_path, mnist_tree, family):
    """2 global (16 px) + 2 local (8 px) views from the real loader through `train`: a DINO
    stage trains on them (a ViT at two input sizes: timm's dynamic_img_size); a MoCo stage
    is refused before any work, in one line."""
    local = ["--set", "augment.local_crops.number=2", "--set", "augment.local_crops.size=8"]
    sections = VIT if family == "vit" else {}
    config = _dino_cli_config(tmp_path / "dino", mnist_tree, {}, iterations=3, **sections)
    out = invoke("train", "--config", config, *local)
    assert out.exit_code == 0, out.output
    assert (tmp_path / "dino" / "out" / "base" / "checkpoints" / "final.pt").is_file()
    moco = tmp_path / "moco"
    moco.mkdir()
    config = write_tiny_config(moco, {"mnist": mnist_tree},
                               {"base": {"dataset": "mnist", "iterations": 3}}, **sections)
    out = invoke("train", "--config", config, *local)
    assert out.exit_code == 2 and "Traceback" not in out.output, out.output
    assert out.output.strip() == (
        "error: stages.base: ssl method 'moco-v2' takes the two global views only, but "
        "augment.local_crops.number is 2; set it to 0 or use ssl: dino")
    assert not (moco / "out").exists()


def test_a_moco_base_and_a_dino_target_share_one_augment_section(tmp_path, mnist_tree):
    """local_crops in a config whose target is DINO: the MoCo base trains on the two
    global views, the DINO target on 2 + 2 (the views its loader really made)."""
    config = write_tiny_config(tmp_path, {"mnist": mnist_tree}, {
        "base": {"dataset": "mnist", "iterations": 2},
        "target": {"dataset": "mnist", "iterations": 2, "init": "stage:base", "ssl": "dino"}},
        dino=SMALL, augment={"local_crops": {"number": 2, "size": 8}})
    seen = {}
    import hpt_hpc.train.engine as engine
    real = engine.train_step

    def spy(net, method, views, speed):
        seen.setdefault(type(method).__name__, [tuple(v.shape[-1] for v in views)])
        return real(net, method, views, speed)
    engine.train_step = spy
    try:
        out = invoke("train", "--config", config)
    finally:
        engine.train_step = real
    assert out.exit_code == 0, out.output
    assert seen == {"MoCo": [(16, 16)], "Dino": [(16, 16, 8, 8)]}
    layout = OutputLayout(tmp_path / "out")
    settings = [load_checkpoint(layout.stage(s).final)["resume_settings"]
                for s in ("base", "target")]
    assert [x["augment.local_crops.number"] for x in settings] == [0, 2]


def test_a_resume_with_other_dino_settings_is_refused(tmp_path, mnist_tree):
    """A DINO stage's own settings are part of what a resume compares (like moco.*)."""
    config = _dino_cli_config(tmp_path / "d", mnist_tree, {}, iterations=3)
    assert invoke("train", "--config", config).exit_code == 0
    final = tmp_path / "d" / "out" / "base" / "checkpoints" / "final.pt"
    before = final.read_bytes()
    out = invoke("train", "--config", config, "--set", "dino.teacher_temp=0.07")
    assert out.exit_code == 2 and "Traceback" not in out.output, out.output
    assert out.output.startswith("error: ") and out.output.count("\n") == 1, out.output
    assert "dino.teacher_temp: 0.04 -> 0.07" in out.output
    assert final.read_bytes() == before

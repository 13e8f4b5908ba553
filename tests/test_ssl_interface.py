"""The ssl method interface: the engine, evaluation and initial weights ask a method only
through ``SslMethod``. Proven with a second method written here (a small BYOL: online
encoder + predictor, an EMA target, no queue) that runs real stages through the unchanged
engine, and with the cross-method rule (a stage after another method's checkpoint takes
the backbone only; heads start fresh, targets copy the online encoder)."""
from __future__ import annotations

import ast
import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

import hpt_hpc.ssl as ssl
from hpt_hpc.cli.main import cli
from hpt_hpc.config.schema import SSL_METHODS
from hpt_hpc.eval.runner import backbone_from_checkpoint
from hpt_hpc.models import backbone_state_dict, build_encoder, load_checkpoint
from hpt_hpc.ssl import SslMethod
from tiny import run_stage_of, tiny_config, write_tiny_config

PACKAGE = Path(__file__).resolve().parents[1] / "hpt_hpc"


class TinyByol(SslMethod):
    """BYOL (Grill et al. 2020) in a page: 2 - 2 cos(predictor(online(v1)), target(v2)),
    symmetric; the target follows the online encoder by a cosine EMA after each step."""

    name = "tiny-byol"
    backbone_key, target_key = "online.", "target."

    def __init__(self, cfg, dim: int = 16) -> None:
        super().__init__()
        m = cfg.model
        self.online = build_encoder(m.arch, m.width, m.small_stem, m.in_channels,
                                    m.stem_stride, cfg.data.image_size)
        self.online.fc = nn.Sequential(nn.Linear(self.online.feature_dim, 32), nn.ReLU(),
                                       nn.Linear(32, dim))
        self.predictor = nn.Sequential(nn.Linear(dim, 32), nn.ReLU(), nn.Linear(32, dim))
        self.target = copy.deepcopy(self.online)
        for p in self.target.parameters():
            p.requires_grad = False

    @classmethod
    def for_stage(cls, cfg, *, num_images, global_batch):
        return cls(cfg)

    def online_encoder(self):
        return self.online

    def ema_pairs(self):
        return [(self.target, self.online)]

    def ema_momentum(self, step, total):
        return 1 - (1 - 0.9) * (1 + torch.cos(torch.tensor(torch.pi * step / total))) / 2

    def trainable_parameters(self, variant, *args, **kwargs):
        params = super().trainable_parameters(variant, *args, **kwargs)
        if params:
            for p in self.predictor.parameters():
                p.requires_grad = True
            params += list(self.predictor.parameters())
        return params

    def forward(self, v1, v2):
        def half(a, b):
            p = F.normalize(self.predictor(self.online(a)), dim=1)
            with torch.no_grad():
                z = F.normalize(self.target(b), dim=1)
            return (2 - 2 * (p * z).sum(dim=1)).mean()
        return half(v1, v2) + half(v2, v1)

    def loss_of(self, out):
        return out

    def after_step(self, step, total):
        self.ema_update(float(self.ema_momentum(step, total)))


STAGES = {"target": {"dataset": "mnist", "variant": "scratch", "iterations": 4}}


@pytest.fixture
def with_byol(monkeypatch):
    monkeypatch.setitem(ssl.METHODS, TinyByol.name, TinyByol)


def _byol_config(tmp_path, mnist_tree, stages=STAGES):
    cfg = tiny_config(tmp_path, {"mnist": mnist_tree}, stages)
    for section in cfg.stages.values():
        section.ssl = TinyByol.name  # past the loader's closed set: a method added here
    return cfg


def test_the_table_is_the_configs_closed_set(tmp_path, mnist_tree):
    assert tuple(ssl.METHODS) == SSL_METHODS == ("moco-v2", "dino")
    config = write_tiny_config(tmp_path, {"mnist": mnist_tree}, STAGES)
    out = CliRunner().invoke(cli, ["config", "show", "--config", str(config), "--plan",
                                   "--set", "stages.target.ssl=mocov2"])
    assert out.exit_code == 2 and out.output.count("\n") == 1
    assert "'mocov2' is not one of moco-v2, dino (did you mean 'moco-v2'?)" in out.output
    shown = CliRunner().invoke(cli, ["config", "show", "--config", str(config), "--plan"])
    assert "ssl moco-v2" in shown.output


def test_a_second_method_runs_through_the_unchanged_engine(tmp_path, mnist_tree, with_byol):
    cfg = _byol_config(tmp_path, mnist_tree)
    result = run_stage_of(cfg, "target")
    assert result.completed and result.steps == 4 and result.queue_size == 0
    assert torch.isfinite(torch.tensor(result.final_loss))
    state = load_checkpoint(result.checkpoint)
    assert (state["ssl"], state["backbone_key"], state["target_key"]) == \
        ("tiny-byol", "online.", "target.")
    model = state["model"]
    assert any(k.startswith("predictor.") for k in model)
    online = {k[len("online."):]: v for k, v in model.items() if k.startswith("online.")}
    target = {k[len("target."):]: v for k, v in model.items() if k.startswith("target.")}
    # the EMA ran after every step: the target moved, but is not the online encoder
    fresh = TinyByol(cfg)
    moved = [k for k, v in target.items() if v.is_floating_point()
             and not torch.equal(v, fresh.target.state_dict()[k])]
    assert moved and any(not torch.equal(online[k], target[k]) for k in moved)
    # evaluation reads the online backbone of any method's checkpoint
    backbone = backbone_from_checkpoint(cfg, str(result.checkpoint))
    expected = {k: v for k, v in online.items() if not k.startswith("fc.")}
    assert backbone_state_dict(backbone).keys() == expected.keys()
    for key, value in backbone_state_dict(backbone).items():
        assert torch.equal(value, expected[key]), key
    # resuming continues the same method: stop after 2, resume, equal to the whole run
    cut = _byol_config(tmp_path / "cut", mnist_tree)
    run_stage_of(cut, "target", stop_after=2)
    rest = run_stage_of(cut, "target")
    again = load_checkpoint(rest.checkpoint)["model"]
    assert rest.resumed_from == 2
    assert all(torch.equal(v, again[k]) for k, v in model.items())


def test_a_stage_after_another_method_takes_the_backbone_only(tmp_path, mnist_tree,
                                                              with_byol):
    byol = run_stage_of(_byol_config(tmp_path / "byol", mnist_tree), "target")
    cfg = tiny_config(tmp_path / "moco", {"mnist": mnist_tree},
                      {"target": {"dataset": "mnist", "variant": "full", "iterations": 1}})
    moco = ssl.MoCo.from_config(cfg.model, cfg.moco, queue_size=64, image_size=16)
    head_before = copy.deepcopy(moco.encoder_q.fc.state_dict())
    report = moco.load_initial(str(byol.checkpoint))
    assert report["layout"] == "hpt-hpc" and report["ssl"] == "tiny-byol"
    assert not report["head_loaded"] and not report["targets_loaded"]
    assert report["encoder_k"] == "copied from encoder_q"
    byol_online = {k[len("online."):]: v for k, v in
                   load_checkpoint(byol.checkpoint)["model"].items() if k.startswith("online.")}
    for key, value in backbone_state_dict(moco.encoder_q).items():
        assert torch.equal(value, byol_online[key]), key
    for key, value in moco.encoder_q.fc.state_dict().items():
        assert torch.equal(value, head_before[key]), key  # fresh, not BYOL's projector
    for key, value in moco.encoder_k.state_dict().items():
        assert torch.equal(value, moco.encoder_q.state_dict()[key]), key
    # and the same through a real MoCo stage started from the BYOL checkpoint
    stage = run_stage_of(cfg, "target", init=str(byol.checkpoint))
    assert stage.init["ssl"] == "tiny-byol" and not stage.init["head_loaded"]


def test_the_engine_and_its_readers_name_no_method():
    """Only ssl/ knows a method's parts: the engine, speed switches, variants, loading,
    export and evaluation ask the interface (no encoder_q/encoder_k, no MoCo)."""
    names = {"encoder_q", "encoder_k", "MoCo", "queue"}
    for path in ("train/engine.py", "train/speed.py", "train/stage.py", "models/variants.py",
                 "models/export.py", "models/backbones.py", "eval/runner.py", "eval/embed.py",
                 "api.py"):
        tree = ast.parse((PACKAGE / path).read_text())
        used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | \
               {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)} | \
               {s.value for s in ast.walk(tree) if isinstance(s, ast.Constant)
                and isinstance(s.value, str)}
        assert not names & used, (path, names & used)

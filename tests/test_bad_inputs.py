"""Bad inputs and faults through the real CLI: each gives exit code 2 and one line without
a traceback, and loses nothing that was there before (table-driven where the shape is
the same); plus the resume-safety, hostile-file and secret-handling cases."""
from __future__ import annotations

import fcntl
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hpt_hpc.models import load_checkpoint
from tiny import run_stage_of, tiny_config, write_tiny_config
from usererror import assert_user_error, clear_tracking_env, run

STAGES = {"target": {"dataset": "mnist", "variant": "scratch", "iterations": 4}}


@pytest.fixture(autouse=True)
def _no_tracking_env(monkeypatch):
    clear_tracking_env(monkeypatch)


def config(tmp_path, mnist_tree, **sections) -> Path:
    sections.setdefault("checkpoint", {"every": 2})
    return write_tiny_config(tmp_path, {"mnist": mnist_tree}, STAGES, **sections)


@pytest.mark.parametrize("override, message", [
    ("optim.batch_size=0", "optim.batch_size: 0 is outside its range [1, inf]"),
    ("optim.batch_size=-8", "optim.batch_size: -8 is outside its range"),
    ("data.workers=-1", "data.workers: -1 is outside its range [0, inf]"),
    ("compute.threads=0", "compute.threads: 0 is outside its range [1, inf]"),
    ("moco.temperature=0", "moco.temperature: 0.0 is outside its range (0, inf]"),
    ("data.channels=2", "data.channels: 2 bands: augment.color_jitter need grey or RGB"),
    ("data.channels=0", "data.channels: 0 is outside its range"),
    ("optim.iterations=-5", "optim.iterations: -5 is outside its range"),
    ("stages.target.iterations=0", "stages.target.iterations: 0 is outside its range"),
    ("probe.center_crop_ratio=1.5", "probe.center_crop_ratio: 1.5 is outside its range"),
    ("tracking.uri=http://bob:hunter2@127.0.0.1:5999", "MLFLOW_TRACKING_USERNAME"),
    ("optim.lrr=0.1", "did you mean 'lr'"),
])
def test_config_errors_are_one_line_and_write_nothing(tmp_path, mnist_tree, override,
                                                      message):
    cfg = config(tmp_path, mnist_tree)
    line = assert_user_error(run("train", "--config", cfg, "--set", override), message)
    assert "hunter2" not in line
    assert not (tmp_path / "out").exists()


def test_scientific_notation_is_a_number(tmp_path, mnist_tree):
    result = run("config", "show", "--config", config(tmp_path, mnist_tree),
                 "--set", "optim.lr=1e-3", "--set", "probe.lr=2E+1")
    assert result.exit_code == 0, result.output
    assert "lr: 0.001" in result.output and "lr: 20.0" in result.output


def test_credentials_in_the_environment_uri_are_refused(tmp_path, mnist_tree, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://ann:s3cr3t-pw@mlflow.example:443")
    cfg = config(tmp_path, mnist_tree, tracking={"enabled": True})
    line = assert_user_error(run("train", "--config", cfg), "MLFLOW_TRACKING_PASSWORD")
    assert "s3cr3t-pw" not in line and not (tmp_path / "out").exists()


def test_cuda_without_a_gpu_is_one_line(tmp_path, mnist_tree):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    cfg = config(tmp_path, mnist_tree, device="cuda")
    assert_user_error(run("train", "--config", cfg), "no CUDA GPU is visible")
    assert not (tmp_path / "out/target/checkpoints").exists()


def test_profile_names_stay_in_the_profile_folders(tmp_path, mnist_tree):
    outside = tmp_path / "evil.yaml"
    outside.write_text("partition: x\n")
    for name in ("../../evil", str(outside.with_suffix("")), "a/b"):
        assert_user_error(run("launch", "--config", config(tmp_path, mnist_tree), "--stage",
                              "target", "--executor", "debug", "--profile", name),
                          "a profile is a name")


def test_read_only_store_is_one_line(tmp_path, mnist_tree):
    cfg = config(tmp_path, mnist_tree, tracking={"enabled": True})
    assert run("mlflow", "init", "--output-dir", tmp_path / "out").exit_code == 0
    db = tmp_path / "out" / "mlflow.db"
    before = db.read_bytes()
    if subprocess.run(["chattr", "+i", str(db)], capture_output=True).returncode != 0:
        pytest.fail("chattr +i is needed to make a store read-only for root")
    try:
        assert_user_error(run("train", "--config", cfg), "cannot be written")
    finally:
        subprocess.run(["chattr", "-i", str(db)], check=True)
    assert db.read_bytes() == before and not (tmp_path / "out/target").exists()


def test_unreadable_pipeline_record_and_same_name_pipelines(tmp_path, mnist_tree):
    store = f"sqlite:///{tmp_path / 'shared' / 'mlflow.db'}"
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    first = write_tiny_config(tmp_path / "a", {"mnist": mnist_tree}, STAGES,
                              tracking={"enabled": True, "uri": store})
    (tmp_path / "a" / "out").mkdir(parents=True)
    (tmp_path / "a" / "out" / "mlflow-pipeline.json").write_text('{"name": "ti')  # truncated
    assert run("train", "--config", first).exit_code == 0
    second = write_tiny_config(tmp_path / "b", {"mnist": mnist_tree}, STAGES,
                               tracking={"enabled": True, "uri": store})
    assert_user_error(run("train", "--config", second), "already logs to this store")
    assert not (tmp_path / "b" / "out" / "target").exists()


def test_a_running_stage_is_locked(tmp_path, mnist_tree):
    cfg = config(tmp_path, mnist_tree)
    lock = tmp_path / "out" / "target" / "stage.lock"
    lock.parent.mkdir(parents=True)
    with open(lock, "w") as holder:
        holder.write("host login1, pid 4242")
        holder.flush()
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert_user_error(run("train", "--config", cfg), "already running (host login1, "
                                                         "pid 4242)")
        assert not (tmp_path / "out/target/checkpoints/last.pt").exists()
    assert run("train", "--config", cfg).exit_code == 0  # released: the next run takes it


def test_resume_refuses_other_settings_and_names_them(tmp_path, mnist_tree):
    cfg = config(tmp_path, mnist_tree)
    assert run("train", "--config", cfg).exit_code == 0
    final = tmp_path / "out/target/checkpoints/final.pt"
    before = final.read_bytes()
    line = assert_user_error(run("train", "--config", cfg, "--set", "optim.lr=0.1"),
                             "optim.lr: 0.05 -> 0.1")
    assert "start fresh by moving" in line
    assert_user_error(run("train", "--config", cfg, "--set", "model.width=0.25"),
                      "model.width: 0.125 -> 0.25")
    assert final.read_bytes() == before
    assert run("train", "--config", cfg).exit_code == 0  # the same settings still resume


def test_divergence_never_becomes_the_resume_point(tmp_path, mnist_tree):
    cfg = config(tmp_path, mnist_tree, checkpoint={"every": 1})
    line = assert_user_error(run("train", "--config", cfg, "--set", "optim.lr=1e30"),
                             "Lower the learning rate")
    assert "non-finite" in line or "loss became" in line
    for path in (tmp_path / "out/target/checkpoints").glob("*.pt"):
        state = load_checkpoint(path)
        assert all(torch.isfinite(t).all() for t in state["model"].values()
                   if t.is_floating_point()), path
    shutil.rmtree(tmp_path / "out")  # other settings: start fresh, as the message says
    assert run("train", "--config", cfg).exit_code == 0


def test_an_unloadable_last_checkpoint_falls_back_to_the_previous(tmp_path, mnist_tree):
    cfg = tiny_config(tmp_path / "out", {"mnist": mnist_tree}, STAGES,
                      checkpoint={"every": 2})
    part = run_stage_of(cfg, "target", stop_after=3)  # saves at steps 2 and 3
    checkpoints = tmp_path / "out/target/checkpoints"
    assert load_checkpoint(checkpoints / "previous.pt")["step"] == 2
    (checkpoints / "last.pt").write_bytes(b"torn write")
    (checkpoints / ".last.pt.abc123.tmp").write_bytes(bytes(100))  # an interrupted save
    rest = run_stage_of(cfg, "target")
    assert part.steps == 3 and rest.resumed_from == 2 and rest.completed
    assert not list(checkpoints.glob(".*.tmp"))


def test_hostile_files_are_named_and_skipped(tmp_path, mnist_tree):
    from hpt_hpc.data import UnreadableImage, load_image
    tree = tmp_path / "tree"
    shutil.copytree(mnist_tree, tree)
    fifo = tree / "train" / "3" / "zz-fifo.png"
    os.mkfifo(fifo)
    big = tree / "train" / "3" / "zz-big.png"
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(big)
    out = subprocess.run([sys.executable, "-m", "hpt_hpc.cli.main", "data", "check",
                          str(tree), "--channels", "1", "--max-pixels", "1000"],
                         capture_output=True, text=True, timeout=120)
    assert str(fifo) in out.stdout and "zz-big.png" in out.stdout, out.stdout + out.stderr
    assert "exceed data.max_pixels" in out.stdout
    with pytest.raises(UnreadableImage, match="not a regular file"):
        load_image(str(fifo), 1)  # returns at once: the FIFO is never opened
    assert load_image(str(big), 1, max_pixels=1600).size == (40, 40)


def test_16_bit_images_convert_in_integer_arithmetic(tmp_path):
    from hpt_hpc.data.images import _to_8bit_grey
    arr = np.random.default_rng(0).integers(0, 65536, (64, 48), dtype=np.uint16)
    img = Image.fromarray(arr)
    assert img.mode.startswith("I;16")
    expected = np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8)  # the float formula
    assert np.array_equal(np.asarray(_to_8bit_grey(img)), expected)


def test_serve_refuses_a_taken_port(tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        result = run("mlflow", "serve", "--store", tmp_path / "store", "--port", port)
        assert_user_error(result, f"port {port} on 127.0.0.1 is taken")
        assert "MLFLOW_TRACKING_URI" not in result.output

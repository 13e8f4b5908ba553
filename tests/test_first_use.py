"""What a new user meets first (#22): read-only commands never create an MLflow store,
`serve` says when it creates one, a progress bar never glues to log lines on a terminal,
and the quiet outputs of `data prepare` and `sweep --dry-run`."""
from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from hpt_hpc.cli.main import cli
from tiny import write_tiny_config, write_tiny_experiment

REPO = Path(__file__).resolve().parents[1]
LOG_LINE = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?:INFO|WARNING) "
BAR = r"\[[#.]{24}\] "


def _store_files(folder: Path) -> list:
    return sorted(p.name for p in folder.rglob("mlflow.db*")) if folder.exists() else []


def test_read_only_commands_never_create_a_store(tmp_path, mnist_tree):
    path = write_tiny_experiment(tmp_path, {"mnist": mnist_tree}, {
        "linear": {"method": ["HPT"], "dataset": ["mnist"], "steps": [2]}}, tracking=True)
    out = tmp_path / "out"
    db = out / "mlflow.db"
    report = CliRunner().invoke(cli, ["report", str(path)])
    assert report.exit_code == 2, report.output
    assert f"error: no MLflow store at {db}" in report.output
    assert "hpt-hpc sweep" in report.output and report.output.count("\n") == 1
    runs = CliRunner().invoke(cli, ["runs", "--output-dir", str(out)])
    assert runs.exit_code == 2 and f"error: no MLflow store at {db}" in runs.output
    dry = CliRunner().invoke(cli, ["sweep", str(path), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    uri = CliRunner().invoke(cli, ["report", "--tracking-uri", f"sqlite:///{tmp_path}/x.db",
                                   "--name", "tiny-sweep", "--out", str(tmp_path / "r")])
    assert uri.exit_code == 2 and f"no MLflow store at {tmp_path}/x.db" in uri.output
    assert _store_files(tmp_path) == []


def test_serve_says_when_it_creates_a_store(tmp_path):
    store = tmp_path / "typo-store"
    proc = subprocess.Popen([sys.executable, "-m", "hpt_hpc.cli.main", "mlflow", "serve",
                             "--store", str(store), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)},
                            start_new_session=True)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("export MLFLOW_TRACKING_URI="):
                break
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(60)
    assert f"new MLflow store {store / 'mlflow.db'} (there was none in {store})\n" in lines, \
        lines
    assert (store / "mlflow.db").is_file()


def _screen(raw: str) -> list:
    """The lines a terminal shows for ``raw`` (carriage return, erase to end of line)."""
    shown = []
    for chunk in raw.split("\n"):
        line, col = [], 0
        for part in re.split(r"(\r|\x1b\[K)", chunk):
            if part == "\r":
                col = 0
            elif part == "\x1b[K":
                del line[col:]
            else:
                line[col:col + len(part)] = part
                col += len(part)
        shown.append("".join(line))
    return shown


def _run_on_a_terminal(args: list, cwd: Path) -> str:
    main, child = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "hpt_hpc.cli.main", *args], cwd=cwd,
                            stdin=subprocess.DEVNULL, stdout=child, stderr=child,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    os.close(child)
    chunks = []
    try:
        while True:
            ready, _, _ = select.select([main], [], [], 300)
            if not ready:
                break
            try:
                data = os.read(main, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(main)
        proc.wait(60)
    assert proc.returncode == 0, b"".join(chunks).decode(errors="replace")[-3000:]
    return b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")


def test_log_lines_never_glue_to_the_progress_bar(tmp_path, mnist_tree):
    """On a real pseudo-terminal: warnings about unreadable images logged while the bar
    is drawn start on a line of their own; the MoCo queue notice is one log line."""
    folder = tmp_path / "images"
    folder.mkdir()
    pngs = sorted((mnist_tree / "train").rglob("*.png"))[:16]
    for i, png in enumerate(pngs):
        (folder / f"ok{i:03d}.png").write_bytes(png.read_bytes())
        (folder / f"broken{i:03d}.png").write_bytes(png.read_bytes()[:50])
    config = write_tiny_config(tmp_path, {"mine": folder},
                               {"target": {"dataset": "mine", "iterations": 6}},
                               progress_seconds=1e-6, checkpoint={"every": 0})
    config.write_text(config.read_text().replace(f"path: {folder}",
                                                 f"path: {folder}\n    format: folder")
                      .replace("queue_size: 64", "queue_size: 1024"))
    raw = _run_on_a_terminal(["train", "--config", str(config)], tmp_path)
    # the case at stake happened: a log record written while the bar was on screen
    assert re.search(BAR + r"[^\n]*" + LOG_LINE + r"hpt_hpc\.data", raw), raw[-3000:]
    screen = _screen(raw)
    glued = [line for line in screen if re.search(BAR, line) and re.search(LOG_LINE, line)]
    assert not glued, glued[:3]
    skipped = [line for line in screen if "skipping unreadable image" in line]
    assert len(skipped) == 16 and all(re.match(LOG_LINE, line) for line in skipped), skipped
    assert any(re.fullmatch(BAR + r"stage target: step 6/6 .*", line) for line in screen)
    queue = [line for line in screen if "queue" in line]
    assert len(queue) == 1 and re.match(
        LOG_LINE + r"hpt_hpc\.ssl\.moco: MoCo queue size K=1024 exceeds the 32 images "
        r"listed; using K=32 ", queue[0]), queue
    assert "UserWarning" not in raw


def test_data_prepare_prints_a_short_summary(tmp_path):
    out = CliRunner().invoke(cli, ["data", "prepare", "mnist", str(tmp_path / "m"),
                                   "--limit", "30"])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert len(lines) <= 6 and "{" not in out.output, out.output
    counts = {s: len(list((tmp_path / "m" / s).rglob("*.png"))) for s in ("train", "val", "test")}
    for split, n in counts.items():
        per_class = " ".join(f"{c}:{len(list((tmp_path / 'm' / split / c).glob('*.png')))}"
                             for c in sorted(os.listdir(tmp_path / "m" / split)))
        assert f"  {split}: {n} images ({per_class})" in lines, out.output
    again = CliRunner().invoke(cli, ["data", "prepare", "mnist", str(tmp_path / "m"),
                                     "--limit", "30"])
    assert again.exit_code == 0 and "already prepared" in again.output.splitlines()[0]


def test_dry_run_lists_only_phases_with_jobs(tmp_path, mnist_tree):
    path = write_tiny_experiment(tmp_path, {"mnist": mnist_tree}, {
        "linear": {"method": ["HPT"], "dataset": ["mnist"], "steps": [2]}})
    out = CliRunner().invoke(cli, ["sweep", str(path), "--dry-run"])
    assert out.exit_code == 0, out.output
    phases = re.findall(r"^phase (\S+) \((\d+) jobs?", out.output, re.M)
    assert phases == [("upstream-base", "1"), ("pretrain", "1"), ("eval", "3")], out.output
    assert "control" not in out.output

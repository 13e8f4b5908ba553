"""Progress of long loops: timed lines (never a flood), a bar only on a terminal, the data
wait share, the status file `hpt-hpc status` reads; through the real CLI on real images."""
from __future__ import annotations

import io
import json
import re
import time

from click.testing import CliRunner

from hpt_hpc.cli.main import cli
from hpt_hpc.config import StageLayout, load_config
from hpt_hpc.progress import Progress, format_seconds
from tiny import write_tiny_config


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _slow(items, seconds):
    for item in items:
        time.sleep(seconds)
        yield item


def test_lines_on_a_timer_with_rate_wait_and_eta(tmp_path):
    stream, status = io.StringIO(), tmp_path / "progress.json"
    progress = Progress("job", 8, interval=1e-6, images_per_step=32, stream=stream,
                        status_file=status)
    for done, _ in enumerate(progress.timed(_slow(range(8), 0.02)), 1):
        time.sleep(0.005)  # the work: a fifth of each step
        progress.update(done, note="loss 1.0")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 8 and "\r" not in stream.getvalue()
    assert lines[-1].startswith("job: step 8/8 (100%), ") and lines[-1].endswith("loss 1.0")
    wait = int(re.search(r"data wait (\d+)%", lines[-1])[1])
    assert 50 <= wait <= 95, lines[-1]  # 20 ms waiting of every 25 ms step
    rate = float(re.search(r"(\d+) images/s", lines[-1])[1])
    assert 300 < rate < 32 / 0.025 * 1.2, lines[-1]  # at most 32 images per 25 ms
    assert "ETA 0s" in lines[-1] and "ETA ?" not in lines[0]
    figures = json.loads(status.read_text())
    assert figures["step"] == figures["total"] == 8 and figures["percent"] == 100.0


def test_a_long_interval_writes_only_the_final_line_and_zero_writes_none():
    stream = io.StringIO()
    progress = Progress("job", 500, interval=3600, stream=stream)
    for done in range(1, 501):
        progress.update(done)
    assert stream.getvalue().count("\n") == 1 and "step 500/500" in stream.getvalue()
    silent = io.StringIO()
    off = Progress("job", 5, interval=0, stream=silent)
    for done in range(1, 6):
        off.update(done)
    assert silent.getvalue() == ""
    other_rank = Progress("job", 5, interval=1e-6, stream=silent, enabled=False)
    other_rank.update(5)
    assert silent.getvalue() == ""


def test_a_terminal_gets_one_redrawn_bar():
    stream = Terminal()
    progress = Progress("job", 3, interval=1e-6, stream=stream)
    for done in (1, 2, 3):
        progress.update(done)
    text = stream.getvalue()
    assert text.startswith("\r[") and text.endswith("\n") and text.count("\n") == 1
    assert "[########################] job: step 3/3" in text
    assert format_seconds(3725) == "1h02m" and format_seconds(65) == "1m05s"


def test_training_and_evaluations_report_progress(tmp_path, mnist_tree):
    config = write_tiny_config(tmp_path, {"mnist": mnist_tree},
                               {"target": {"dataset": "mnist", "iterations": 6}},
                               progress_seconds=1e-6)
    out = CliRunner().invoke(cli, ["train", "--config", str(config)])
    assert out.exit_code == 0, out.output
    steps = re.findall(r"stage target: step (\d+)/6 \(\d+%\), \d+ images/s, data wait "
                       r"\d+%, ETA \S+, loss [\d.]+ lr", out.stderr)
    assert steps == [str(i) for i in range(1, 7)], out.stderr
    layout = StageLayout(load_config(str(config)).output_dir, "target")
    assert json.loads(layout.progress.read_text())["step"] == 6
    probe = CliRunner().invoke(cli, ["probe", "--config", str(config), "--dataset", "mnist",
                                     "--checkpoint", "stage:target"])
    assert probe.exit_code == 0, probe.output
    assert re.search(r"features mnist/train: step \d+/\d+ \(100%\)", probe.stderr)
    assert re.search(r"probe \(seed 0\): step 50/50 \(100%\).*best val", probe.stderr)
    tuned = CliRunner().invoke(cli, ["finetune", "--config", str(config), "--dataset",
                                     "mnist", "--labels", "10", "--iterations", "3",
                                     "--set", "finetune.eval_every=1"])
    assert tuned.exit_code == 0, tuned.output
    assert re.search(r"fine-tune: step 3/3 \(100%\), \d+ images/s, data wait", tuned.stderr)
    quiet = CliRunner().invoke(cli, ["probe", "--config", str(config), "--dataset", "mnist",
                                     "--set", "progress_seconds=0"])
    assert quiet.exit_code == 0 and "step" not in quiet.stderr, quiet.stderr

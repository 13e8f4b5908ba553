"""Your own data: flat/nested unlabelled folders, `data stats`, and the README tutorial run
line by line (the training run shortened to 4 steps) on real digits."""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image

from hpt_hpc.cli.main import cli
from hpt_hpc.config import StageLayout
from hpt_hpc.data.sources import ImageRecord
from hpt_hpc.data.stats import channel_stats
from hpt_hpc.plan.record import StageRecord
from tiny import write_tiny_config

REPO = Path(__file__).resolve().parents[1]


def _own_images(mnist_tree: Path, dest: Path) -> Path:
    """A user's folder: images flat at the top, more in a nested folder, a stray file."""
    pngs = sorted((mnist_tree / "train").rglob("*.png"))
    (dest / "nested" / "deeper").mkdir(parents=True)
    for i, png in enumerate(pngs):
        shutil.copy(png, dest / ("nested/deeper" if i % 3 == 0 else ".") / f"img{i}.png")
    (dest / "notes.txt").write_text("not an image")
    return dest


def _tutorial_section() -> str:
    text = (REPO / "README.md").read_text()
    return text.split("## Your own images (tutorial)", 1)[1].split("\n## ", 1)[0]


def _tutorial_lines():
    block = _tutorial_section().split("```bash\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


def _tutorial_python():
    return [part.split("```", 1)[0] for part in _tutorial_section().split("```python\n")[1:]]


def test_data_stats_match_the_pixels(tmp_path, mnist_tree):
    pngs = sorted((mnist_tree / "train").rglob("*.png"))[:20]
    pixels = np.concatenate([np.asarray(Image.open(p).convert("L"), np.float64).ravel() / 255
                             for p in pngs])
    stats = channel_stats([ImageRecord(str(p), ()) for p in pngs], channels=1)
    assert stats["mean"] == [round(pixels.mean(), 4)] and stats["images"] == 20
    assert stats["std"] == [round(pixels.std(), 4)]
    folder = _own_images(mnist_tree, tmp_path / "mine")
    out = CliRunner().invoke(cli, ["data", "stats", str(folder), "--format", "folder",
                                   "--channels", "3"])
    assert out.exit_code == 0, out.output
    assert re.search(r"# 200 images .*\n.*\n  channels: 3\n  mean: \[0\.\d+, 0\.\d+, 0\.\d+\]",
                     out.output), out.output


def test_pretraining_on_an_unlabelled_folder_and_evaluation_refused(tmp_path, mnist_tree):
    folder = _own_images(mnist_tree, tmp_path / "mine")
    config = write_tiny_config(tmp_path, {"mine": folder},
                               {"target": {"dataset": "mine", "iterations": 2}})
    config.write_text(config.read_text().replace(f"path: {folder}",
                                                 f"path: {folder}\n    format: folder"))
    trained = CliRunner().invoke(cli, ["train", "--config", str(config)])
    assert trained.exit_code == 0, trained.output
    result = StageRecord.read(StageLayout(tmp_path / "out", "target"))
    assert result.images == 200 and result.steps == 2, result  # nested ones included
    checked = CliRunner().invoke(cli, ["data", "check", str(folder), "--format", "folder"])
    assert checked.exit_code == 0, checked.output
    assert "200" in checked.output and "notes.txt" in checked.output
    probe = CliRunner().invoke(cli, ["probe", "--config", str(config), "--dataset", "mine"])
    assert probe.exit_code == 2 and "unlabelled images (format: folder)" in probe.output


def test_readme_tutorial_runs_as_written(tmp_path, mnist_tree, monkeypatch):
    """The shell lines, then the Python blocks: plain torchvision with the export file's
    preprocessing gives the features hpt_hpc.embed gives for the same image file."""
    lines = _tutorial_lines()
    assert [args[:2] for args in lines] == [
        ["hpt-hpc", "data"], ["hpt-hpc", "data"], ["hpt-hpc", "train"], ["hpt-hpc", "export"]]
    folder = _own_images(mnist_tree, tmp_path / "my-images")
    png = next(folder.glob("*.png")).read_bytes()
    (folder / "broken.png").write_bytes(png[:len(png) // 2])  # lines run as under `set -e`
    (tmp_path / "configs" / "tutorial").mkdir(parents=True)
    shutil.copy(REPO / "configs" / "tutorial" / "my-images.yaml",
                tmp_path / "configs" / "tutorial")
    monkeypatch.chdir(tmp_path)
    for args in lines:
        if args[1] == "train":
            args += ["--set", "optim.iterations=4", "--set", "data.workers=0"]
        result = CliRunner().invoke(cli, args[1:])
        assert result.exit_code == 0, f"{args}\n{result.output}"
        if args[1:3] == ["data", "check"]:
            assert "broken.png" in result.output and "1 unreadable" in result.output
    plain, api = _tutorial_python()
    image = re.search(r'Image\.open\("([^"]+)"\)', plain)[1]
    out = subprocess.run([sys.executable, "-c", plain + "\ntorch.save(features, 'f.pt')\n"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "torch.Size([1, 512])"
    script = api + f"\nimport numpy\nnumpy.save('api.npy', features)\nnumpy.save('one.npy', " \
                   f"hpt_hpc.embed(backbone, [{image!r}]))\n"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    import torch
    features = torch.load(tmp_path / "f.pt", weights_only=True).detach().numpy()
    assert np.allclose(features, np.load(tmp_path / "one.npy"), atol=1e-5)
    assert np.load(tmp_path / "api.npy").shape == (200, 512)  # every image, nested too


def test_folder_format_is_validated_with_the_others(tmp_path):
    config = write_tiny_config(tmp_path, {"x": tmp_path}, {})
    bad = config.read_text().replace(f"path: {tmp_path}", f"path: {tmp_path}\n    format: nope")
    config.write_text(bad)
    out = CliRunner().invoke(cli, ["config", "show", "--config", str(config)])
    assert out.exit_code == 2 and "imagefolder, filelist, folder" in out.output

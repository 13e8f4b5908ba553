"""Packaging: setup.py declares ranges, constraints.txt the tested versions, DALI is an
extra and a missing DALI falls back to the torchvision backend with one warning."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement

from tiny import write_tiny_config

REPO = Path(__file__).resolve().parents[1]


def _setup_requirements():
    text = (REPO / "setup.py").read_text()
    body = text.split("install_requires=[", 1)[1].split("]", 1)[0]
    extras = text.split("extras_require={", 1)[1].split("}", 1)[0]
    return ([Requirement(r) for r in re.findall(r'"([^"]+)"', body)],
            {k: [Requirement(r) for r in re.findall(r'"([^"]+)"', v)]
             for k, v in re.findall(r'"([\w-]+)": \[([^\]]*)\]', extras)})


def _pins():
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower()] = version
    return pins


def test_ranges_admit_the_tested_pins_and_nothing_is_pinned_exactly():
    required, extras = _setup_requirements()
    pins = _pins()
    for req in required + [r for group in extras.values() for r in group]:
        assert "==" not in str(req.specifier), f"{req}: a range belongs in setup.py"
        if req.name.lower() in pins:
            assert req.specifier.contains(pins[req.name.lower()]), (req, pins[req.name.lower()])
    assert {r.name.lower() for r in required} <= set(pins), "every dependency has a tested pin"
    assert {"dali-cuda12", "dali-cuda13"} <= set(extras)
    assert all(r.name.startswith("nvidia-dali-cuda") for r in extras["dali-cuda13"])
    makefile = (REPO / "Makefile").read_text()
    assert "-c constraints.txt" in makefile and "dali-cuda13" in makefile


def test_without_dali_the_torchvision_backend_trains_with_one_warning(tmp_path, mnist_tree):
    config = write_tiny_config(tmp_path, {"mnist": mnist_tree},
                               {"target": {"dataset": "mnist", "iterations": 2}})
    script = ("import sys; sys.modules['nvidia.dali'] = None\n"  # DALI not installed
              "from hpt_hpc.cli.main import cli\n"
              f"cli(['train', '--config', {str(config)!r}, '--set', 'data.backend=dali'])")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stderr.count("NVIDIA DALI cannot be imported") == 1, out.stderr[-2000:]
    assert "[dali-cuda12] or [dali-cuda13]" in out.stderr
    assert (tmp_path / "out" / "target" / "checkpoints" / "final.pt").is_file()

"""docs/config.md is the output of `hpt-hpc config reference`, and what it says is what the
loader enforces: every range it shows is the one a value outside fails with, every listed
value set is checked, every key has a meaning."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from hpt_hpc.cli.main import cli
from hpt_hpc.config import ConfigError, config_from_dict
from hpt_hpc.config.loader import RANGES
from hpt_hpc.config.reference import keys, sections

REPO = Path(__file__).resolve().parents[1]
NAMED = {"datasets.<name>": "datasets.d", "stages.<name>": "stages.target"}
BASE = {"datasets": {"d": {"path": "x"}}, "stages": {"target": {"dataset": "d"}}}


def _rows():
    return [row for _, _, rows in sections() for row in rows]


def _concrete(path: str) -> str:
    for generic, name in NAMED.items():
        path = path.replace(generic, name)
    return path


def test_docs_config_md_is_the_generated_reference():
    out = CliRunner().invoke(cli, ["config", "reference"])
    assert out.exit_code == 0, out.output
    assert (REPO / "docs" / "config.md").read_text() == out.output, (
        "docs/config.md is out of date: hpt-hpc config reference > docs/config.md")
    assert "| `optim.batch_size` | int | `256` | [1, inf] |" in out.output
    assert "`imagefolder`, `filelist`, `folder`" in out.output
    assert "[docs/config.md](docs/config.md)" in (REPO / "README.md").read_text()


def test_every_key_is_listed_with_a_meaning_and_every_range_names_a_key():
    listed = keys()
    assert len(listed) == len(set(listed)) > 100
    assert {"optim.lr", "datasets.<name>.format", "stages.<name>.variant",
            "augment.crop.scale", "grid", "tracking.uri"} <= set(listed)
    assert all(row[4].strip() for row in _rows()), [r[0] for r in _rows() if not r[4]]
    for pattern in RANGES:
        regex = re.compile("^" + re.escape(pattern).replace(r"\*", "[^.]+") + "$")
        assert any(regex.match(key) for key in listed), f"RANGES names no key: {pattern}"


def _outside(interval: str):
    """A value just outside an interval's lower (else upper) bound."""
    low, high = interval[1:-1].split(", ")
    if low != "-inf":
        return float(low) - (0 if interval[0] == "(" else 1)
    return float(high) + (0 if interval[-1] == ")" else 1)


@pytest.mark.parametrize("row", [r for r in _rows() if r[3].startswith(("[", "("))],
                         ids=lambda r: r[0].strip("`"))
def test_a_value_outside_the_shown_range_fails_with_that_range(row):
    path, kind = _concrete(row[0].strip("`")), row[1]
    listed = kind.startswith("list of ")  # a list's items each (checkpoint.at)
    kind = kind[len("list of "):] if listed else kind
    value = _outside(row[3])
    value = int(value) if kind.startswith("int") else value
    value = f"[{value}]" if listed else value
    with pytest.raises(ConfigError, match=re.escape(f"outside its range {row[3]}")):
        config_from_dict(BASE, [f"{path}={value}"])


@pytest.mark.parametrize("row", [r for r in _rows() if r[3].startswith("`")],
                         ids=lambda r: r[0].strip("`"))
def test_a_value_outside_the_listed_values_fails_naming_them(row):
    path = _concrete(row[0].strip("`"))
    values = ", ".join(re.findall(r"`([^`]+)`", row[3]))
    for value in values.split(", "):  # each listed value is accepted
        config_from_dict(BASE, [f"{path}={value}", "stages.target.init=x.pt"])
    with pytest.raises(ConfigError, match=re.escape(f"is not one of {values}")):
        config_from_dict(BASE, [f"{path}=nope"])


def test_a_listed_value_yaml_reads_as_a_boolean_is_accepted(tmp_path):
    """`off` is one of compute.fused_optimizer's values; YAML 1.1 reads it as false."""
    config = tmp_path / "c.yaml"
    config.write_text("name: x\ncompute: {fused_optimizer: off}\n")
    out = CliRunner().invoke(cli, ["config", "show", "--config", str(config)])
    assert out.exit_code == 0 and "fused_optimizer: 'off'" in out.output, out.output
    out = CliRunner().invoke(cli, ["config", "show", "--config", str(config),
                                   "--set", "compute.precision=off"])
    assert out.exit_code == 2 and "expected a string, got False" in out.output


def test_probe_mode_values_are_the_protocol_tables_modes():
    """docs/config.md points to docs/evaluation.md for them (a new mode changes neither
    the schema nor this reference); the loader and `probe --mode` take the table's."""
    from hpt_hpc.config.protocols import LINEAR_MODES
    row = next(r for r in _rows() if r[0] == "`probe.mode`")
    assert "evaluation.md" in row[3]
    for mode in LINEAR_MODES:
        assert config_from_dict(BASE, [f"probe.mode={mode}"]).probe.mode == mode
    with pytest.raises(ConfigError, match=re.escape(f"is not one of {', '.join(LINEAR_MODES)}")):
        config_from_dict(BASE, ["probe.mode=nope"])
    out = CliRunner().invoke(cli, ["probe", "--help"])
    assert f"[{'|'.join(LINEAR_MODES)}]" in out.output

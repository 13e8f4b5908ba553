"""The CLI as a hostile-input test drives it: ``run`` (in process) and
``assert_user_error`` (exit 2, one ``error:`` line, no traceback), and the tracking
variables such a test clears so that it never reaches a server of the environment."""
from __future__ import annotations

from click.testing import CliRunner

from hpt_hpc.cli.main import cli

TRACKING_VARS = ("MLFLOW_TRACKING_URI", "HPT_MLFLOW_PARENT_RUN_ID", "MLFLOW_TRACKING_USERNAME",
                 "MLFLOW_TRACKING_PASSWORD")


def clear_tracking_env(monkeypatch) -> None:
    for var in TRACKING_VARS:
        monkeypatch.delenv(var, raising=False)


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_user_error(result, text: str) -> str:
    """Exit 2, no traceback, the error on one line containing ``text``; returns it.
    ``result``: a CliRunner result or a finished subprocess (stdout and stderr)."""
    if hasattr(result, "returncode"):
        code, output = result.returncode, (result.stdout or "") + (result.stderr or "")
    else:
        code, output = result.exit_code, result.output
    assert code == 2, output
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and text in errors[0], output
    return errors[0]

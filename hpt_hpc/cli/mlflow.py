"""``hpt-hpc mlflow serve|init|sync`` and ``hpt-hpc runs``: the tracking store, a lean
server for a login node, and the comparison table of a pipeline's runs."""
from __future__ import annotations

import json
import os

import click


def _store_uri(uri, output_dir, config_path) -> str:
    from ..tracking.store import default_uri, normalize_uri, resolve_uri
    if uri:
        return normalize_uri(uri)
    if output_dir:
        return default_uri(output_dir)
    if config_path:
        from ..config import load_config
        cfg = load_config(config_path)
        return resolve_uri(cfg.tracking.uri, cfg.output_dir)
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return normalize_uri(os.environ["MLFLOW_TRACKING_URI"])
    raise click.UsageError("give --uri, --output-dir or --config (or set MLFLOW_TRACKING_URI)")


_where = [
    click.option("--tracking-uri", "--uri", "uri", default=None,
                 help="Tracking URI (sqlite:///... or http://...)."),
    click.option("--output-dir", default=None, type=click.Path(file_okay=False),
                 help="An experiment output_dir: its embedded store <dir>/mlflow.db."),
    click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False),
                 help="Experiment YAML: its tracking store."),
]


def _with_where(func):
    for option in reversed(_where):
        func = option(func)
    return func


@click.group("mlflow")
def mlflow_group() -> None:
    """MLflow tracking store and server."""


@mlflow_group.command("serve")
@click.option("--store", default="outputs", show_default=True, type=click.Path(file_okay=False),
              help="Folder of the store: <store>/mlflow.db and <store>/mlartifacts.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Bind address; 0.0.0.0 to accept compute nodes (use --auth there).")
@click.option("--port", default=5000, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port; 0 picks a free one (printed). A taken port is refused.")
@click.option("--allowed-hosts", default=None,
              help="Host headers to accept (default for 0.0.0.0: this machine's names).")
@click.option("--auth", is_flag=True,
              help="MLflow's basic-auth app: every request needs a user; the admin account "
                   "is MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD from the "
                   "environment (also what the jobs use).")
def serve(store: str, host: str, port: int, allowed_hosts, auth: bool) -> None:
    """Start a lean MLflow server (one worker, no job runner) and print its URI.

    Runs in the foreground until interrupted; start it in tmux/screen on the login node.
    A --store folder without a store gets a new, empty one (said in one line).
    Without --auth anyone who can reach the port can read and write every run: on a
    shared login node keep the default 127.0.0.1 or use --auth.
    """
    from ..tracking.server import AUTH_DB, start_server, stop_on_signals
    stop_on_signals()  # start_server and the finally below stop the server with us
    if host not in ("127.0.0.1", "localhost", "::1") and not auth:
        click.echo(f"WARNING: serving on {host} without --auth: every user who can reach "
                   f"this port can read and change all runs, configs and checkpoints",
                   err=True)
    handle = start_server(store, host=host, port=port, allowed_hosts=allowed_hosts, auth=auth)
    if handle.new_store:
        click.echo(f"new MLflow store {handle.new_store} (there was none in "
                   f"{handle.new_store.parent})")
    if handle.password_updated:
        click.echo(f"admin password of '{handle.password_updated}' updated to "
                   f"MLFLOW_TRACKING_PASSWORD in {handle.log_path.parent / AUTH_DB}")
    click.echo(f"MLflow server ready (pid {handle.process.pid}, log {handle.log_path})")
    click.echo(f"export MLFLOW_TRACKING_URI={handle.uri}")
    try:
        handle.process.wait()
    finally:
        handle.stop()


@mlflow_group.command("init")
@_with_where
def init(uri, output_dir, config_path) -> None:
    """Create an sqlite store's schema once (before array tasks start) or check a server."""
    from ..tracking.store import check_reachable, ensure_store
    target = _store_uri(uri, output_dir, config_path)
    check_reachable(target)
    ensure_store(target)
    click.echo(f"tracking store ready: {target}")


@mlflow_group.command("sync")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to keep retrying.")
def sync(folder: str, timeout: float) -> None:
    """Send what runs could not deliver during an outage (mlflow-pending-*.json files)."""
    from ..errors import HptError
    from ..tracking.mlflow_tracker import sync_pending
    done = sync_pending(folder, timeout)
    click.echo(json.dumps(done, indent=2) if done else "nothing pending")
    problems = []
    for path, summary in done.items():
        if summary.get("unreadable"):
            problems.append(f"{path} names no run and store to send to (not a spill file, "
                            f"or cut before them): nothing sent, the file is left in place")
        elif summary.get("kept"):
            metrics, ops = summary["synced"]
            what = "synced" if not summary["pending"] else "queued again (store unreachable)"
            problems.append(f"{path} is cut short: its {metrics} metric values and {ops} "
                            f"operations before the cut were {what}; what came after is "
                            f"lost; the file is kept as {summary['kept']}")
    if problems:
        raise HptError("; ".join(problems))
    if any(s["pending"] for s in done.values()):
        raise SystemExit(1)


@click.command("runs")
@_with_where
@click.option("--pipeline", default=None,
              help="Pipeline name or parent run id (default: the newest pipeline run).")
@click.option("--experiment", default=None, help="Only this experiment.")
@click.option("--markdown", is_flag=True, help="Print a Markdown table.")
def runs(uri, output_dir, config_path, pipeline, experiment, markdown) -> None:
    """A pipeline's stage and evaluation runs: method, dataset, steps, test/val score."""
    from ..experiments.results import format_runs, pipeline_rows
    from ..tracking.store import reader_for
    target = _store_uri(uri, output_dir, config_path)
    parent, rows = pipeline_rows(reader_for(target), pipeline, experiment)
    click.echo(f"pipeline {parent.data.tags.get('hpt.pipeline', parent.info.run_name)} "
               f"(run {parent.info.run_id}, {parent.info.status}) in {target}")
    click.echo(format_runs(rows, markdown))

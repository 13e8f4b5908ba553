"""N concurrent writers (an array's worth of tasks) against one ``hpt-hpc mlflow serve``
server on this machine (loopback only): errors, lost data, time.

Each writer is a process that opens a nested stage run the way a job does, logs params,
``--points`` steps of 3 metrics, a 1 KB artifact and a checkpoint (registered as a model
version), then closes. Afterwards every run, metric history and registered version is
counted. Results: ``benchmarks/results/tracking_load.json`` and a Markdown line.
Usage: ``.venv/bin/python benchmarks/tracking_load.py [--writers 64] [--points 200]``
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "tracking_load.json"


def _writer(uri: str, parent: str, task: int, points: int, folder: str, barrier,
            results) -> None:
    import traceback
    try:
        from hpt_hpc.tracking.runs import open_run
        barrier.wait(timeout=300)
        started = time.perf_counter()
        tracker = open_run(uri, "load", f"task-{task}", "stage", parent_run_id=parent,
                           tags={"hpt.pipeline": "load", "slurm.array_task_id": str(task)},
                           model_name="load", alias=f"load-task-{task}",
                           folder=Path(folder) / f"task-{task}", flush_seconds=0.5,
                           system_metrics=False, config={"task": task})
        tracker.log_params({"task": task, "lr": 0.01 * task})
        for step in range(1, points + 1):
            tracker.log_metrics({"loss": 1.0 / step, "lr": 0.1, "acc": 0.5}, step)
            if step % 50 == 0:
                time.sleep(0.02)
        ckpt = Path(folder) / f"ckpt-{task}.pt"
        ckpt.write_bytes(bytes(1024))
        tracker.log_checkpoint(str(ckpt))
        tracker.close(timeout=300)
        summary = tracker.summary()
        summary["seconds"] = time.perf_counter() - started
        results.put(summary)
    except BaseException:  # noqa: BLE001 - report, never hang the parent
        results.put({"error": traceback.format_exc()})


def run_load(writers: int, points: int, timeout: float = 900.0) -> dict:
    """Start a server, run ``writers`` processes against it, count what arrived."""
    from mlflow import MlflowClient

    from hpt_hpc.tracking.runs import start_pipeline_run
    from hpt_hpc.tracking.server import start_server
    work = Path(tempfile.mkdtemp(prefix="hpt-load-"))
    handle = start_server(work / "store", "127.0.0.1", 0)
    try:
        uri = handle.uri
        parent = start_pipeline_run(uri, "load", "load", work)
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["hpt_hpc.tracking.runs"])
        barrier, results = ctx.Barrier(writers), ctx.Queue()
        procs = [ctx.Process(target=_writer, args=(uri, parent, i, points, str(work),
                                                   barrier, results))
                 for i in range(writers)]
        started = time.perf_counter()
        for proc in procs:
            proc.start()
        summaries = []
        for _ in procs:
            try:
                summaries.append(results.get(timeout=timeout))
            except Exception:  # noqa: BLE001 - a writer that never reported
                summaries.append({"error": f"no report within {timeout:.0f} s"})
        wall = time.perf_counter() - started
        for proc in procs:
            proc.join(60)
        # the server may still be draining the writers' last requests: wait for it
        os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "300"
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "5"
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("load")
        runs = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent}'",
                                  max_results=writers * 2)
        complete = sum(len(client.get_metric_history(r.info.run_id, "loss")) == points
                       for r in runs)
        finished = sum(r.info.status == "FINISHED" for r in runs)
        versions = len(client.search_model_versions("name = 'load'", max_results=writers * 2))
        errors = [s["error"] for s in summaries if "error" in s]
        ok = [s for s in summaries if "error" not in s]
        return {"writers": writers, "points_per_writer": points, "wall_seconds": round(wall, 1),
                "runs": len(runs), "runs_finished": finished,
                "runs_with_every_point": complete, "model_versions": versions,
                "errors": len(errors) + sum(s["failures"] + s["dropped"] for s in ok),
                "pending_after_close": sum(s["pending"] for s in ok),
                "slowest_writer_seconds": round(max((s["seconds"] for s in ok), default=0), 1),
                "first_error": errors[0][-2000:] if errors else None}
    finally:
        handle.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=64)
    parser.add_argument("--points", type=int, default=200)
    args = parser.parse_args()
    result = run_load(args.writers, args.points)
    result.update({"machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
                   "python": sys.version.split()[0],
                   "date": time.strftime("%Y-%m-%d %H:%M")})
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    print(f"| {args.writers} concurrent writers against one `hpt-hpc mlflow serve` "
          f"(loopback) | {result['errors']} errors, {result['runs_with_every_point']}/"
          f"{args.writers} runs complete, {result['wall_seconds']} s |")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()

"""Where the quickstart's time goes, read from a finished run's MLflow store: the pipeline
run's wall time and every nested run's (stages: base and each target unit; evaluations:
feature extraction + probe, per method), summed by kind; what no nested run covers is
start-up, data preparation, planning, registry lookups and the report.
Results: ``benchmarks/results/quickstart_profile.json`` (one entry per ``--label``).
Usage: ``.venv/bin/python benchmarks/quickstart_profile.py OUTPUT --label before``
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections import defaultdict
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / \
    "quickstart_profile.json"


def profile(output: Path) -> dict:
    from mlflow.tracking import MlflowClient
    client = MlflowClient(f"sqlite:///{output / 'mlflow.db'}")
    runs = [r for e in client.search_experiments() for r in
            client.search_runs([e.experiment_id], max_results=10_000)]
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    pipeline = max(parents, key=lambda r: r.info.end_time - r.info.start_time)
    total = (pipeline.info.end_time - pipeline.info.start_time) / 1000
    parts = defaultdict(float)
    counts = defaultdict(int)
    for run in runs:
        if run.info.run_id == pipeline.info.run_id or not run.info.end_time:
            continue
        tags = run.data.tags
        kind = tags.get("hpt.kind", "other")
        what = tags.get("hpt.method") or tags.get("hpt.stage") or run.info.run_name
        if kind == "stage" and tags.get("hpt.stage") == "base":
            what = "base"
        key = f"{kind}: {what}"
        parts[key] += (run.info.end_time - run.info.start_time) / 1000
        counts[key] += 1
    covered = sum(parts.values())
    rows = {k: {"seconds": round(v, 1), "runs": counts[k], "share": round(v / total, 3)}
            for k, v in sorted(parts.items(), key=lambda kv: -kv[1])}
    rows["outside any nested run"] = {"seconds": round(total - covered, 1), "runs": 0,
                                      "share": round((total - covered) / total, 3)}
    return {"total_seconds": round(total, 1), "parts": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--label", required=True)
    args = parser.parse_args()
    result = profile(args.output.resolve())
    result.update(date=time.strftime("%Y-%m-%d %H:%M"), machine={
        "cpus": os.cpu_count(), "platform": platform.platform()})
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results[args.label] = result
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

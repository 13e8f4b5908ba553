"""``hpt-hpc runs``: a pipeline's stage and evaluation runs as one comparison table."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

from .store import TrackingError

COLUMNS = ("run", "kind", "method", "dataset", "steps", "loss", "probe test", "probe val",
           "status", "started from")


@dataclass
class RunRow:
    run: str
    kind: str
    method: str
    dataset: str
    steps: str
    loss: str
    probe_test: str
    probe_val: str
    status: str
    started_from: str
    run_id: str = ""

    def cells(self) -> Tuple[str, ...]:
        return (self.run, self.kind, self.method, self.dataset, self.steps, self.loss,
                self.probe_test, self.probe_val, self.status, self.started_from)


def _experiments(client: Any, experiment: Optional[str]) -> List[str]:
    if experiment:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            names = [e.name for e in client.search_experiments()]
            raise TrackingError(f"no experiment '{experiment}' (experiments: "
                                f"{', '.join(names) or 'none'})")
        return [exp.experiment_id]
    return [e.experiment_id for e in client.search_experiments()]


def find_pipeline_run(client: Any, pipeline: Optional[str] = None,
                      experiment: Optional[str] = None) -> Any:
    """A pipeline run by id, or the newest pipeline run named ``pipeline`` (or any)."""
    if pipeline and re.fullmatch(r"[0-9a-f]{32}", pipeline):
        return client.get_run(pipeline)
    query = "tags.`hpt.kind` = 'pipeline'"
    if pipeline:
        query += f" and tags.`hpt.pipeline` = '{pipeline}'"
    runs = client.search_runs(_experiments(client, experiment), query,
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise TrackingError(f"no pipeline run{f' named {pipeline!r}' if pipeline else ''} in "
                            f"{client.tracking_uri}")
    return runs[0]


def _fmt(value: Optional[float], percent: bool = False) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}%" if percent else f"{value:.4g}"


def _row(run: Any, names: dict) -> RunRow:
    tags, metrics = run.data.tags, run.data.metrics
    test = next((k for k in ("probe_test_acc", "probe_test_auroc") if k in metrics), None)
    val = test.replace("test", "val") if test else None
    src = tags.get("hpt.init_source") or tags.get("hpt.init", "")
    if tags.get("hpt.init_run_id") in names:
        src += f" <- {names[tags['hpt.init_run_id']]}"
    steps = tags.get("hpt.steps") or tags.get("hpt.target_steps", "-")
    return RunRow(run.info.run_name or run.info.run_id[:8], tags.get("hpt.kind", "?"),
                  tags.get("hpt.method", "-"), tags.get("hpt.dataset", "-"), steps,
                  _fmt(metrics.get("loss")),
                  (_fmt(metrics[test], True) + (" AUROC" if "auroc" in test else "")) if test else "-",
                  _fmt(metrics.get(val), True) if val and val in metrics else "-",
                  run.info.status, src or "-", run.info.run_id)


def pipeline_rows(client: Any, pipeline: Optional[str] = None,
                  experiment: Optional[str] = None) -> Tuple[Any, List[RunRow]]:
    """The pipeline run and one row per nested stage/evaluation run, oldest first."""
    parent = find_pipeline_run(client, pipeline, experiment)
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                                  order_by=["attributes.start_time ASC"], max_results=5000)
    names = {r.info.run_id: r.info.run_name for r in children}
    rows = [_row(r, names) for r in children]
    rows.sort(key=lambda r: 0 if r.kind == "stage" else 1)  # stable: stages, then evals
    return parent, rows


def format_table(rows: List[RunRow], markdown: bool = False) -> str:
    cells = [COLUMNS] + [r.cells() for r in rows]
    if markdown:
        lines = ["| " + " | ".join(c) + " |" for c in cells]
        lines.insert(1, "|" + "---|" * len(COLUMNS))
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()
                     for row in cells)

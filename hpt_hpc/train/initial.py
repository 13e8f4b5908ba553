"""A stage's initial weights: loaded strictly (every backbone tensor must fit unless
``stages.<s>.init_partial``), reported as "loaded N of M backbone tensors from <ref>" in
the log, the run's tags and the stage's ``result.json``, and kept in its checkpoints so
that a resumed stage reports the same."""
from __future__ import annotations

import logging
from typing import Any, Dict, Optional

from ..models.resolve import Resolved
from ..config.schema import ARCHS
from ..models.backbones import is_timm, timm_name
from ..models.weights import IncompatibleCheckpointError
from ..plan import StagePlan
from ..ssl import SslMethod
from ..tracking import Tracker

log = logging.getLogger(__name__)
_TAG_CHARS = 4000  # MLflow tag values are limited (5000 characters)


def source_name(path: str, resolved: Optional[Resolved]) -> str:
    """How the init is named: the file, or the reference (public names completed)."""
    return resolved.name if resolved is not None and resolved.name else path


def arch_hint(weights_arch: str, model_arch: str) -> str:
    """A line for weights made for another model than ``model.arch`` ('' when the same
    or unknown)."""
    own = timm_name(model_arch) if is_timm(model_arch) else model_arch
    if not weights_arch or weights_arch == own:
        return ""
    wanted = weights_arch if weights_arch in ARCHS else f"timm:{weights_arch}"
    return (f"hint: these weights are for the model '{weights_arch}' but model.arch is "
            f"'{model_arch}'; set model.arch: {wanted} to use them")


def summary(report: Dict[str, Any], source: str) -> Dict[str, Any]:
    """The plain record of a load (what result.json and the checkpoint keep)."""
    return {"source": source, "layout": report.get("layout"),
            "loaded": int(report["backbone_loaded"]), "of": int(report["expected_keys"]),
            "missing": list(report["missing_keys"]),
            "unexpected": list(report["unexpected_keys"]),
            "shape_mismatches": list(report["shape_mismatches"]),
            "classifier_dropped": int(report["dropped_keys"]),
            "adapted": list(report.get("adapted") or []),
            "head_loaded": bool(report.get("head_loaded")), "ssl": report.get("ssl") or ""}


def describe(init: Dict[str, Any]) -> str:
    """``loaded N of M backbone tensors from <source>`` (plus what was not loaded)."""
    text = f"loaded {init['loaded']} of {init['of']} backbone tensors from {init['source']}"
    if init.get("adapted"):
        text += f" (adapted as timm adapts pretrained weights: {'; '.join(init['adapted'])})"
    left = [f"{len(init[k])} {k.replace('_', ' ')}" for k in
            ("missing", "unexpected", "shape_mismatches") if init[k]]
    text += f"; not loaded: {', '.join(left)}" if left else ""
    if init.get("ssl") and not init.get("head_loaded"):
        text += f"; heads start fresh (the file was written by ssl method {init['ssl']})"
    return text


def tags(init: Dict[str, Any]) -> Dict[str, str]:
    """The run's tags of a load; a partial one lists what was not loaded."""
    out = {"hpt.init_loaded_tensors": str(init["loaded"]),
           "hpt.init_backbone_tensors": str(init["of"])}
    if init.get("adapted"):
        out["hpt.init_adapted"] = "; ".join(init["adapted"])[:_TAG_CHARS]
    rest = init["missing"] + init["unexpected"] + init["shape_mismatches"]
    if rest:
        out["hpt.init_not_loaded"] = "; ".join(rest)[:_TAG_CHARS]
    return out


def load_stage_init(model: SslMethod, plan: StagePlan, path: str,
                    resolved: Optional[Resolved], tracker: Tracker) -> Dict[str, Any]:
    """Load ``path`` (resolved from ``resolved``) into ``model`` for ``plan``'s stage; log
    and tag the load; return the method's report with the plain ``summary`` under
    ``init``."""
    cfg = plan.config
    name = source_name(path, resolved)
    partial = cfg.stages[plan.stage].init_partial
    try:
        report = model.load_initial(path, strict=not partial,
                                    source=name if name == path else f"{name} ({path})")
    except IncompatibleCheckpointError as exc:  # the first line says what to do
        first, _, details = str(exc).partition("\n")
        hint = arch_hint(resolved.arch if resolved is not None else "", cfg.model.arch)
        if not hint and not partial:
            hint = (f"stages.{plan.stage}.init_partial: true loads the tensors that fit "
                    f"(the others stay random)")
        raise IncompatibleCheckpointError(f"{first}; {hint}\n{details}" if hint
                                          else str(exc)) from None
    report["init"] = summary(report, name)
    line = describe(report["init"])
    (log.warning if report["init"]["loaded"] < report["init"]["of"] else log.info)(
        "stage %s: %s (%s layout)", plan.stage, line, report.get("layout"))
    tracker.set_tags(tags(report["init"]))
    return report

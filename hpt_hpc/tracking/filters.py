"""MLflow search filters, the one place they are spelled: every value is quoted the way
MLflow's parser reads it. The parser knows no escapes, so a value holding ``'`` is written
in double quotes, and one holding both ``'`` and ``"`` cannot be searched for: refused."""
from __future__ import annotations

from typing import Mapping, Optional

from .store import TrackingError


def filter_value(value: object) -> str:
    """``value`` as a string literal of a search filter (one line refusing the impossible)."""
    text = str(value)
    if "'" not in text:
        return f"'{text}'"
    if '"' not in text:
        return f'"{text}"'
    raise TrackingError(f"{text!r} holds both ' and \": MLflow searches cannot name it; "
                        f"drop one kind of quote")


def run_filter(tags: Mapping[str, object], status: Optional[str] = None) -> str:
    """``tags.`k` = 'v' and ...`` (and ``attributes.status = '<status>'``)."""
    clauses = [f"tags.`{key}` = {filter_value(value)}" for key, value in tags.items()]
    if status:
        clauses.append(f"attributes.status = {filter_value(status)}")
    return " and ".join(clauses)

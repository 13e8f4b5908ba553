"""A tracker's spill file (``mlflow-pending-<run_id>.json``): what a run could not deliver,
read back whole or, when its end is missing (a copy cut short, a full disk), up to its last
complete record; such a file is kept, renamed, so nothing in it is sent twice."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Tuple

PARTIAL_SUFFIX = ".partial"
_DELIMITERS = ",]}"


def read_spill(path: Path) -> Tuple[Dict[str, Any], bool]:
    """The spill's fields and whether the file was whole. A cut file gives its top-level
    values and the list items that end before the cut (a value the cut may have shortened,
    such as a number at the very end, is dropped: never a wrong number)."""
    text = Path(path).read_text(errors="replace")
    try:
        data = json.loads(text)
    except ValueError:
        return _salvage(text), False
    return (data, True) if isinstance(data, dict) else ({}, False)


def _salvage(text: str) -> Dict[str, Any]:
    decoder, out = json.JSONDecoder(), {}

    def skip(i: int) -> int:
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        return i

    def value(i: int) -> Tuple[Any, int]:
        item, end = decoder.raw_decode(text, i)
        end = skip(end)
        if end >= len(text) or text[end] not in _DELIMITERS:
            raise ValueError("cut")  # nothing after it: it may be cut short
        return item, end

    i = skip(0)
    if not text.startswith("{", i):
        return out
    i += 1
    try:
        while True:
            key, i = decoder.raw_decode(text, skip(i))
            if not isinstance(key, str):
                return out
            i = skip(i)
            if not text.startswith(":", i):
                return out
            i = skip(i + 1)
            if text.startswith("[", i):
                items = out[key] = []
                i = skip(i + 1)
                while not text.startswith("]", i):
                    item, i = value(i)
                    items.append(item)
                    if text.startswith(",", i):
                        i = skip(i + 1)
                i = skip(i + 1)
            else:
                out[key], i = value(i)
            if not text.startswith(",", i):
                return out
            i += 1
    except (ValueError, IndexError):
        return out


def keep_partial(path: Path) -> Path:
    """Move a cut spill file aside (``<name>.partial``, never over another); its new path."""
    path = Path(path)
    target, n = path.with_name(path.name + PARTIAL_SUFFIX), 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}{PARTIAL_SUFFIX}-{n}")
    os.replace(path, target)
    return target

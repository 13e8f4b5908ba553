"""The config key reference (``docs/config.md``): one row per key, from the schema's
declarations (type, default, meaning, values: :func:`hpt_hpc.config.schema.key`) and the
loader's range table (:data:`hpt_hpc.config.loader.RANGES`). ``hpt-hpc config reference``
prints it (through the one table writer); a test keeps the file equal to it."""
from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any, Iterator, List, Optional, Tuple

from .loader import RANGES, range_text
from .refs import InitRef
from .schema import ExperimentConfig

GENERATOR = "hpt-hpc config reference > docs/config.md"
HEADER = ("key", "type", "default", "values", "meaning")


def _type(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        inner = [a for a in args if a is not type(None)]
        return f"{_type(inner[0])} or null"
    if origin in (list, typing.List):
        return f"list of {_type(args[0])}" if args[0] is not Any else "list"
    if origin in (dict, typing.Dict):
        return f"mapping of {_type(args[1])}" if args[1] is not Any else "mapping"
    if tp is InitRef:
        return "string or null"  # a reference, parsed on load
    if dataclasses.is_dataclass(tp):
        return "section"
    return {bool: "bool", int: "int", float: "float", str: "string"}.get(tp, str(tp))


def _default(f: dataclasses.Field) -> str:
    value = f.default_factory() if f.default is dataclasses.MISSING else f.default
    if isinstance(value, InitRef):
        value = value.text
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    return f"`{json.dumps(value)}`"


def _range(path: str) -> Optional[str]:
    """The interval of the :data:`RANGES` entry naming ``path`` (``*`` matches a name)."""
    parts = path.split(".")
    for pattern, bounds in RANGES.items():
        names = pattern.split(".")
        if len(names) == len(parts) and all(n in ("*", p) for n, p in zip(names, parts)):
            return range_text(bounds)
    return None


def _sections(cls: type, where: str) -> Iterator[Tuple[str, type, List[tuple]]]:
    """``(path, section class, rows)`` of ``cls`` and, after it, of its sub-sections."""
    hints = typing.get_type_hints(cls)
    rows, nested = [], []
    for f in dataclasses.fields(cls):
        tp, path = hints[f.name], f"{where}.{f.name}" if where else f.name
        values = f.metadata.get("shown") or \
            ", ".join(f"`{c}`" for c in f.metadata.get("choices", ()))
        if typing.get_origin(tp) in (dict, typing.Dict) and \
                dataclasses.is_dataclass(typing.get_args(tp)[1]):
            nested.append((typing.get_args(tp)[1], f"{path}.<name>"))
            continue
        if dataclasses.is_dataclass(tp) and tp is not InitRef:
            nested.append((tp, path))
            continue
        rows.append((f"`{path}`", _type(tp), _default(f), values or _range(path) or "",
                     f.metadata["doc"]))
    if rows:
        yield where, cls, rows
    for tp, path in nested:
        yield from _sections(tp, path)


def keys() -> List[str]:
    """Every leaf key's dotted path (``<name>`` for names of a mapping)."""
    return [row[0].strip("`") for _, _, rows in _sections(ExperimentConfig, "")
            for row in rows]


INTRO = ("Every key of an experiment config (YAML; `--set key.path=value` overrides any "
         "of them), generated from `hpt_hpc/config/schema.py` (type, default, meaning, "
         "allowed values) and the range table of `hpt_hpc/config/loader.py` by "
         f"`{GENERATOR}`; a test fails when this file is out of date. Ranges: `[` `]` "
         "include the bound, `(` `)` exclude it; a `null` value is not checked. "
         "`configs/paper/` holds the published settings, `configs/tutorial/` a small one. "
         "Config files, experiment files, cluster profiles and `--set` values are read by "
         "one YAML reader (`hpt_hpc/config/yamlfile.py`) that refuses, in one line naming "
         "the line, aliases (`*name`: a small file could expand without bound), a key given "
         "twice in one mapping (at any depth; YAML would keep the last one silently) and a "
         "file that is not UTF-8 text.")


def sections() -> List[Tuple[str, str, List[tuple]]]:
    """``(title, meaning, rows)`` per section, the top level first."""
    return [(f"`{where}`" if where else "Top level", _about(cls), rows)
            for where, cls, rows in _sections(ExperimentConfig, "")]


def _about(cls: type) -> str:
    """The first paragraph of a section's docstring, on one line."""
    return " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())

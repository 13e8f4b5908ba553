"""The one reader of user YAML (config files, experiment files, cluster profiles, ``--set``
values): safe types only, bounded and unambiguous. Aliases (``*name``) are refused, so a
kilobyte file cannot expand to gigabytes (the "billion laughs"); a key given twice in one
mapping is refused at any depth (YAML would keep the last one silently); a file that is not
UTF-8 text is refused. Every refusal is one :class:`ConfigError` line naming the line."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Union

import yaml

from ..errors import ConfigError


class _Refused(yaml.YAMLError):
    """A document this reader will not build (alias, duplicate key)."""


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` without aliases and without duplicate keys."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _Refused(f"line {event.start_mark.line + 1}: YAML aliases ('*{event.anchor}')"
                           f" are not supported (they can expand a small file without "
                           f"bound); write the value out")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark.line + 1)
                except TypeError:  # unhashable: the base class says so
                    continue
                if first != key_node.start_mark.line + 1:
                    raise _Refused(f"line {key_node.start_mark.line + 1}: duplicate key "
                                   f"'{key}' (first given on line {first}); keep one")
        return super().construct_mapping(node, deep)


def _one_line(exc: yaml.YAMLError) -> str:
    """A YAML error on one line: where (line, column) and what."""
    if isinstance(exc, _Refused):
        return str(exc)
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
    context = getattr(exc, "context", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{context + ': ' if context else ''}{problem}"


def parse_yaml(text: str, where: str) -> Any:
    """The value of a YAML document (``None`` when empty); ``where`` names it in errors."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: {_one_line(exc)}") from None


def read_yaml_file(path: Union[str, Path], kind: str) -> Any:
    """The value of the YAML file ``path`` (a ``kind``: config, experiment, profile file)."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{kind} file '{path}' is not UTF-8 text (byte 0x{raw[exc.start]:02x}"
                          f" at offset {exc.start}); give a YAML file") from None
    return parse_yaml(text, f"{kind} file '{path}' is not valid YAML")

"""How every config key is declared: :func:`key` (default, one line of meaning, the values
of a closed set); ``docs/config.md`` and the loader's checks are read from it."""
from __future__ import annotations

from dataclasses import MISSING, field
from typing import Any, Callable, Optional, Sequence


def key(default: Any = MISSING, doc: str = "", *, factory: Optional[Callable[[], Any]] = None,
        choices: Sequence[str] = (), shown: str = "") -> Any:
    """A config key: its default (``factory`` for mutable ones), one line of meaning and
    the values of a closed set (checked by the loader; ``shown``: where the reference
    points for them instead of listing them, for a set another table owns)."""
    meta = {"doc": doc, "choices": tuple(choices), "shown": shown}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)

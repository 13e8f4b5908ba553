"""The one table writer: Markdown, aligned plain text and CSV from a header and rows of
cells (the report, the quickstart table and ``hpt-hpc runs`` all write through it)."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, List, Sequence

from ..files import atomic_write


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]],
                   align: str = "") -> List[str]:
    """Lines of a Markdown table; ``align`` per column: ``l`` (default) or ``r``. A ``|``
    inside a cell (a caveat's text, a dataset name) is escaped: it never adds a column."""
    marks = ["---:" if align[i:i + 1] == "r" else "---" for i in range(len(header))]

    def line(cells) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
    return [line(header), "|" + "|".join(marks) + "|"] + [line(row) for row in rows]


def text_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> List[str]:
    """Lines of a plain-text table with aligned columns."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    with atomic_write(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)

"""A compact, read-only list of :class:`~hpt_hpc.data.sources.ImageRecord` (numpy only).

A Python list of 1.28M records costs ~300 bytes each (path string, tuples, list slot) and,
worse, every loader worker forked from a rank copies the pages it touches: reading a record
writes its reference count. :class:`RecordTable` keeps the same records in four arrays —
the paths below one ``root`` as one UTF-8 buffer with end offsets, the labels flat with end
offsets — so a rank holds ~50 bytes per image and forked workers share every page.
Indexing builds an :class:`ImageRecord` on demand; a table is a ``Sequence`` of them.
"""
from __future__ import annotations

import os
from array import array
from typing import Iterable, Iterator, NamedTuple, Sequence, Tuple, Union

import numpy as np

__all__ = ["ImageRecord", "RecordTable", "TableBuilder", "as_table"]


class ImageRecord(NamedTuple):
    """One image: its file and its integer labels (empty for unlabelled images)."""

    path: str
    labels: Tuple[int, ...]


class RecordTable(Sequence):
    """Records as arrays: ``root`` + ``blob[ends[i-1]:ends[i]]`` is path ``i`` (a path in
    the blob that is absolute stands alone), ``labels[label_ends[i-1]:label_ends[i]]`` its
    labels."""

    ARRAYS = ("blob", "ends", "labels", "label_ends")

    def __init__(self, root: str, blob: np.ndarray, ends: np.ndarray, labels: np.ndarray,
                 label_ends: np.ndarray):
        if len(ends) != len(label_ends):
            raise ValueError("a table needs one label range per path")
        self.root = root
        self.blob, self.ends = blob.astype(np.uint8, copy=False), ends.astype(np.int64, copy=False)
        self.labels = labels.astype(np.int32, copy=False)
        self.label_ends = label_ends.astype(np.int64, copy=False)

    @classmethod
    def from_records(cls, records: Iterable[ImageRecord], root: str = "") -> "RecordTable":
        builder = TableBuilder(root)
        for record in records:
            builder.add_path(record.path, record.labels)
        return builder.table()

    def __len__(self) -> int:
        return len(self.ends)

    def path(self, index: int) -> str:
        rel = self.relative_path(index)
        return os.path.join(self.root, rel) if self.root else rel

    def relative_path(self, index: int) -> str:
        """Path ``index`` as stored: relative to ``root`` (absolute when outside it)."""
        return self.blob[_span(self.ends, index)].tobytes().decode("utf-8", "surrogateescape")

    def labels_of(self, index: int) -> Tuple[int, ...]:
        return tuple(int(v) for v in self.labels[_span(self.label_ends, index)])

    def __getitem__(self, index: Union[int, slice]):
        if isinstance(index, slice):  # a list, as a list's slice (take() stays compact)
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"record {index} of {len(self)}")
        return ImageRecord(self.path(index), self.labels_of(index))

    def __iter__(self) -> Iterator[ImageRecord]:
        return (self[i] for i in range(len(self)))

    def __eq__(self, other) -> bool:  # equal to any sequence of the same records
        if not isinstance(other, Sequence) or isinstance(other, (str, bytes)):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"RecordTable({len(self)} records below {self.root!r})"

    @property
    def paths(self) -> "_Paths":
        """The paths as a sequence of strings (built on access, nothing copied)."""
        return _Paths(self)

    def take(self, indices: Iterable[int]) -> "RecordTable":
        """A new table of the records at ``indices``, in that order."""
        builder = TableBuilder(self.root)
        for i in indices:
            builder.add_raw(self.blob[_span(self.ends, i)].tobytes(),
                            self.labels[_span(self.label_ends, i)])
        return builder.table()

    def max_label(self) -> int:
        """The largest label, -1 when no record has one."""
        return int(self.labels.max()) if len(self.labels) else -1

    def _label_counts(self) -> np.ndarray:
        return np.diff(self.label_ends, prepend=0)

    @property
    def multi_label(self) -> bool:
        """True when some record has more than one label."""
        counts = self._label_counts()
        return bool(len(counts) and counts.max() > 1)

    def first_labels(self) -> np.ndarray:
        """The first label of every record (-1 for unlabelled ones)."""
        counts = self._label_counts()
        first = np.full(len(self), -1, dtype=np.int64)
        has = counts > 0
        first[has] = self.labels[(self.label_ends - counts)[has]]
        return first

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, name).nbytes for name in self.ARRAYS)


def _span(ends: np.ndarray, index: int) -> slice:
    """Where item ``index`` lies in the flat array that ``ends`` cuts into items."""
    return slice(int(ends[index - 1]) if index > 0 else 0, int(ends[index]))


class _Paths(Sequence):
    def __init__(self, table: RecordTable):
        self._table = table

    def __len__(self) -> int:
        return len(self._table)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self._table.path(i) for i in range(*index.indices(len(self)))]
        return self._table.path(index if index >= 0 else index + len(self))


class TableBuilder:
    """Appends records to growable arrays (no per-record Python objects are kept)."""

    def __init__(self, root: str = ""):
        self.root = root
        self._prefix = os.path.join(root, "") if root else ""
        self._blob, self._ends = bytearray(), array("q")
        self._labels, self._label_ends = array("i"), array("q")

    def add_path(self, path: str, labels: Sequence[int] = ()) -> None:
        """Add a record; ``path`` below ``root`` is stored relative to it."""
        if self._prefix and path.startswith(self._prefix):
            path = path[len(self._prefix):]
        elif self._prefix:
            path = os.path.abspath(path)  # outside root: kept whole (absolute)
        self.add_raw(path.encode("utf-8", "surrogateescape"), labels)

    def add_raw(self, rel: bytes, labels) -> None:
        self._blob += rel
        self._ends.append(len(self._blob))
        self._labels.extend(int(v) for v in labels)
        self._label_ends.append(len(self._labels))

    def __len__(self) -> int:
        return len(self._ends)

    def table(self) -> RecordTable:
        return RecordTable(self.root, np.frombuffer(bytes(self._blob), dtype=np.uint8),
                           np.frombuffer(self._ends, dtype=np.int64).copy(),
                           np.frombuffer(self._labels, dtype=np.int32).copy(),
                           np.frombuffer(self._label_ends, dtype=np.int64).copy())


def as_table(records: Union[RecordTable, Sequence[ImageRecord]]) -> RecordTable:
    """``records`` as a :class:`RecordTable` (a table is returned as it is)."""
    return records if isinstance(records, RecordTable) else RecordTable.from_records(records)


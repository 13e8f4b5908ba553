"""Progress of a long loop (training, feature extraction, probe, fine-tune): a line on a
timer with step/total, images/s, the share of time spent waiting for data and the ETA; a
live bar instead when the stream is a terminal; optionally the same figures in a small
JSON file that ``hpt-hpc status`` reads. Only the process that should report (rank 0)
creates an enabled reporter; the others get a silent one.

On a terminal, :func:`guard_terminal` (called by the CLI before logging is set up) routes
``sys.stderr``/``sys.stdout`` through :class:`TerminalStream`: any other output (log
records, warnings, ``click.echo``) first erases the live bar, and a complete line is
followed by the bar drawn again, so no line is ever glued to the bar."""
from __future__ import annotations

import atexit
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import IO, Iterable, Iterator, Optional

from .files import write_text_atomic

BAR_REFRESH = 0.5  # seconds between redraws of the live bar on a terminal
ERASE_END = "\x1b[K"  # erase to the end of the line (what a shorter bar leaves over)


class _Bar:
    """The live bar of this process's terminal: its text and the stream it is drawn on."""

    stream: Optional[IO[str]] = None  # the real terminal stream
    text = ""  # "" when no bar is live
    shown = False  # on screen now, the cursor at its end
    pid = 0  # a forked child (a loader worker) may erase the bar, never draw it

    @classmethod
    def draw(cls, stream: IO[str], text: str, final: bool) -> None:
        draw_line(stream, text, final)
        cls.stream, cls.pid = stream, os.getpid()
        cls.text, cls.shown = ("", False) if final else (text, True)

    @classmethod
    def erase(cls) -> None:
        if cls.shown:
            cls.stream.write("\r" + ERASE_END)
            cls.stream.flush()
            cls.shown = False

    @classmethod
    def restore(cls) -> None:
        if cls.text and not cls.shown and cls.pid == os.getpid():
            cls.draw(cls.stream, cls.text, final=False)


def draw_line(stream: IO[str], text: str, final: bool) -> None:
    """``text`` over the current line of a terminal (a new line after it when ``final``),
    cut to the terminal's width: a wrapped line could not be erased."""
    width = shutil.get_terminal_size((200, 24)).columns
    stream.write("\r" + text[:max(20, width - 1)] + ERASE_END + ("\n" if final else ""))
    stream.flush()


class TerminalStream:
    """A terminal stream whose writers never glue to the live bar: the bar is erased
    before other output and drawn again after a complete line."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        if not text or not _Bar.shown:
            return self._stream.write(text)
        _Bar.erase()
        written = self._stream.write(text)
        if text.endswith("\n"):
            self._stream.flush()
            _Bar.restore()
        return written

    def draw_bar(self, text: str, final: bool) -> None:
        _Bar.draw(self._stream, text, final)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def _is_terminal(stream: object) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def guard_terminal() -> None:
    """Route ``sys.stderr`` and ``sys.stdout`` through :class:`TerminalStream` where they
    are terminals (once per process); a bar left live at exit is erased."""
    guarded = False
    for name in ("stderr", "stdout"):
        stream = getattr(sys, name)
        if not isinstance(stream, TerminalStream) and _is_terminal(stream):
            setattr(sys, name, TerminalStream(stream))
            guarded = True
    if guarded:
        atexit.register(_Bar.erase)


def format_seconds(seconds: Optional[float]) -> str:
    """``1h02m``, ``3m05s``, ``42s``; ``?`` when unknown."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class Progress:
    """Report ``done`` of ``total`` steps of ``label``.

    ``update(done, wait)`` after each step (``wait``: seconds of that step spent waiting
    for input); ``images_per_step`` turns steps/s into images/s. A line is written when
    ``interval`` seconds passed since the last one, and at the end; on a terminal a bar is
    redrawn in place instead. ``status_file`` (optional) gets the latest figures as JSON,
    written atomically with each line."""

    def __init__(self, label: str, total: int, interval: float,
                 images_per_step: int = 0, start: int = 0, enabled: bool = True,
                 stream: Optional[IO[str]] = None, status_file: Optional[Path] = None,
                 unit: str = "step") -> None:
        self.label, self.total, self.unit = label, max(0, int(total)), unit
        self.interval, self.images_per_step = float(interval), int(images_per_step)
        self.enabled = enabled and self.interval > 0
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.status_file = Path(status_file) if status_file else None
        self.start, self.done, self.wait = int(start), int(start), 0.0
        self.began = self.last_line = self.last_bar = time.perf_counter()
        self.lines, self.note, self.drawn = 0, "", False

    def update(self, done: int, wait: float = 0.0, note: str = "") -> None:
        """``done`` steps so far, ``wait`` seconds of input wait in the last one, ``note``
        appended to the line (e.g. the loss)."""
        self.done, self.wait = int(done), self.wait + max(0.0, float(wait))
        self.note = note
        if not self.enabled:
            return
        now = time.perf_counter()
        finished = self.done >= self.total
        if self.tty and (now - self.last_bar >= BAR_REFRESH or finished or not self.drawn):
            self.last_bar, self.drawn = now, True
            if isinstance(self.stream, TerminalStream):
                self.stream.draw_bar(self._bar(), finished)
            else:
                draw_line(self.stream, self._bar(), finished)
        if finished or now - self.last_line >= self.interval:
            self.last_line = now
            if not self.tty:
                self.stream.write(self.line() + "\n")
                self.stream.flush()
            self.lines += 1
            self._write_status()

    def timed(self, iterable: Iterable) -> Iterator:
        """``iterable``'s items, the time spent waiting for each counted as data wait."""
        it = iter(iterable)
        while True:
            asked = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                return
            self.wait += time.perf_counter() - asked
            yield item

    def figures(self) -> dict:
        """step, total, percent, images/s, data-wait share, elapsed and ETA seconds."""
        elapsed = max(1e-9, time.perf_counter() - self.began)
        steps = self.done - self.start
        rate = steps / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else None
        return {"label": self.label, "step": self.done, "total": self.total,
                "percent": round(100.0 * self.done / self.total, 1) if self.total else 100.0,
                "images_per_second": round(rate * self.images_per_step, 1),
                "data_wait": round(min(1.0, self.wait / elapsed), 3),
                "elapsed_seconds": round(elapsed, 1),
                "eta_seconds": None if eta is None else round(eta, 1),
                "updated": time.strftime("%Y-%m-%dT%H:%M:%S"), "pid": os.getpid()}

    def line(self) -> str:
        f = self.figures()
        speed = f", {f['images_per_second']:.0f} images/s" if self.images_per_step else ""
        return (f"{self.label}: {self.unit} {f['step']}/{f['total']} ({f['percent']:.0f}%)"
                f"{speed}, data wait {100 * f['data_wait']:.0f}%, "
                f"ETA {format_seconds(f['eta_seconds'])}" + (f", {self.note}" if self.note else ""))

    def _bar(self, width: int = 24) -> str:
        filled = int(width * self.done / self.total) if self.total else width
        return f"[{'#' * filled}{'.' * (width - filled)}] {self.line()}"

    def _write_status(self) -> None:
        if self.status_file is None:
            return
        try:
            write_text_atomic(self.status_file, json.dumps(self.figures()))
        except OSError:  # progress is advisory: a full disk must not stop training
            pass


def read_status(path: Path) -> Optional[dict]:
    """The figures a :class:`Progress` last wrote to ``path`` (None: none, or unreadable)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None

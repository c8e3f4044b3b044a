"""Output: plain lines that read well in the journal, plus progress on a terminal.

Everything goes to the real stderr, so doit's output capture never hides it.
"""

from __future__ import annotations

import logging
import sys
import threading
import time

log = logging.getLogger("wpbackup")


def setup_logging() -> None:
    """One handler on the process's stderr; the journal adds its own timestamps."""
    if log.handlers:
        return
    handler = logging.StreamHandler(sys.__stderr__)
    fmt = "%(asctime)s %(message)s" if sys.__stderr__.isatty() else "%(message)s"
    handler.setFormatter(logging.Formatter(fmt, "%H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


class Progress:
    """Counts bytes of a long step; on a terminal, prints done/rate every few seconds."""

    interval = 5.0

    def __init__(self, label: str, total: int | None = None):
        self.label = label
        self.total = total
        self.done = 0
        self.started = self.last = time.monotonic()
        self.enabled = sys.__stderr__.isatty()
        self.lock = threading.Lock()

    def add(self, count: int) -> None:
        with self.lock:
            self.done += count
        self._maybe_print()

    def set(self, count: int) -> None:
        self.done = count
        self._maybe_print()

    def _maybe_print(self) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.last < self.interval:
            return
        self.last = now
        rate = self.done / max(now - self.started, 1e-6)
        share = f" of {human_bytes(self.total)}" if self.total else ""
        log.info("%s: %s%s, %s/s", self.label, human_bytes(self.done), share, human_bytes(rate))

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

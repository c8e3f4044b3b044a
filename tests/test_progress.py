"""Progress lines on a terminal: bytes done and rate, throttled."""

from __future__ import annotations

import logging

from wpbackup.console import Progress, human_bytes, log


def test_progress_prints_bytes_and_rate_only_when_enabled():
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    log.addHandler(handler)
    level = log.level
    log.setLevel(logging.INFO)
    try:
        quiet = Progress("blog tar")
        quiet.enabled = False
        quiet.add(5 << 20)
        assert lines == []
        shown = Progress("blog upload", total=10 << 20)
        shown.enabled, shown.interval = True, 0
        shown.add(5 << 20)
        assert len(lines) == 1
        assert lines[0].startswith("blog upload: 5.0 MiB of 10.0 MiB, ") and lines[0].endswith("/s")
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def test_human_bytes():
    assert human_bytes(512) == "512 B"
    assert human_bytes(3 * (1 << 30)) == "3.0 GiB"

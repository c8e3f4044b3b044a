"""The write-out hint given while archives and dumps are written: present on Linux, given once
per EVERY bytes, and harmless where it cannot apply (it never decides anything: fsync does)."""

from __future__ import annotations

import os
import sys

import pytest

from wpbackup.backup import writeback


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range is Linux's")
def test_the_hint_is_available_here():
    assert writeback.available()


def test_the_hint_is_given_once_per_every_bytes(monkeypatch, tmp_path):
    hinted = []
    monkeypatch.setattr(writeback, "start_writeback", hinted.append)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    try:
        pacer = writeback.Pacer(fd)
        for _ in range(10):
            pacer.wrote(writeback.EVERY // 4)
    finally:
        os.close(fd)
    assert hinted == [fd, fd]


def test_a_pipe_or_a_closed_descriptor_is_no_error(tmp_path):
    read, write = os.pipe()
    try:
        writeback.start_writeback(write)
    finally:
        os.close(read)
        os.close(write)
    writeback.start_writeback(write)  # closed by now
    path = tmp_path / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    os.write(fd, b"x" * 100_000)
    writeback.start_writeback(fd)  # a file just written: the hint applies, nothing is raised
    os.close(fd)

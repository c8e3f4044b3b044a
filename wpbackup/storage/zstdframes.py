"""Where the zstd frames of an archive start, so database.sql can be read from its own frame.

    archive = frames (wp-config.php, site files) + frame (database.sql's header)
              + frames (the dump in pieces) + frame (manifest.json, end)
                                               ^ found by skipping block headers

The compress stage starts database.sql in a frame of its own, which decompresses without
the frames before it (read across the frames after it). Finding that frame means reading the
frame and block headers only (3 bytes per block of at most 128 KiB), and the first block of the
frames from the end back to it, so a restore can start loading the database at once
instead of after decompressing every file before it. An archive made otherwise (one frame,
`tar --zstd`) simply has no such frame.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path
from typing import BinaryIO

import zstandard

FRAME_MAGIC = 0xFD2FB528
SKIPPABLE = range(0x184D2A50, 0x184D2A60)
CHUNK = 1 << 20
BLOCK = 512


def frame_starts(path: Path) -> list[int]:
    """Byte offsets of the zstd frames in ``path`` (stops quietly at anything malformed: the
    scan, which reads every byte, is what judges the archive)."""
    starts: list[int] = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        pos = 0
        while pos + 8 <= size:
            magic = int.from_bytes(os.pread(fd, 4, pos), "little")
            if magic in SKIPPABLE:
                pos += 8 + int.from_bytes(os.pread(fd, 4, pos + 4), "little")
                continue
            if magic != FRAME_MAGIC:
                break
            starts.append(pos)
            end = _frame_end(fd, pos, size)
            if end is None:
                break
            pos = end
    finally:
        os.close(fd)
    return starts


def _frame_end(fd: int, pos: int, size: int) -> int | None:
    """The offset after the frame at ``pos``: its header, its blocks, its checksum."""
    descriptor = os.pread(fd, 1, pos + 4)[0]
    single_segment = descriptor >> 5 & 1
    header = (1 + (0 if single_segment else 1) + (0, 1, 2, 4)[descriptor & 3]
              + ((1 if single_segment else 0), 2, 4, 8)[descriptor >> 6])
    at = pos + 4 + header
    while True:
        raw = os.pread(fd, 3, at)
        if len(raw) < 3:
            return None
        block = int.from_bytes(raw, "little")
        kind = block >> 1 & 3
        if kind == 3:  # reserved: not a valid frame
            return None
        at += 3 + (1 if kind == 1 else block >> 3)
        if at > size:
            return None
        if block & 1:  # the last block
            return at + (4 if descriptor >> 2 & 1 else 0)


def open_member_at(raw: BinaryIO, offset: int, name: str):
    """The member ``name`` when the frame at ``offset`` starts with it: (tar, member) to read
    it through ``tar.extractfile(member)``; None otherwise."""
    raw.seek(offset)
    stream = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, read_size=CHUNK)
    try:
        tar = tarfile.open(fileobj=stream, mode="r|", bufsize=CHUNK)
        member = tar.next()
    except (tarfile.TarError, zstandard.ZstdError, EOFError, OSError, ValueError):
        return None
    if member is None or member.name != name or not member.isfile():
        return None
    return tar, member


def member_frame(path: Path, name: str) -> int | None:
    """The offset of the frame that starts with member ``name``, looking from the end (the
    dump follows the files): each frame's first tar header is read alone, and only a frame
    that names ``name`` is opened as a tar."""
    wanted = name.encode() + b"\0"
    with open(path, "rb") as raw:
        for offset in reversed(frame_starts(path)[1:]):
            raw.seek(offset)
            try:
                head = zstandard.ZstdDecompressor().stream_reader(raw, read_size=1 << 16).read(BLOCK)
            except zstandard.ZstdError:
                continue
            # a member over 8 GiB starts with a pax header (././@PaxHeader): open_member_at decides
            if (head[:len(wanted)] == wanted or head.startswith(b"././@PaxHeader")) and (
                    open_member_at(raw, offset, name) is not None):
                return offset
    return None

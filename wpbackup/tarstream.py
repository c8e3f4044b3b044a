"""Writing POSIX (pax) tar members straight into a byte stream, without tarfile's own
buffering and without ending the archive, so one archive can be built in several pieces:

    files part: members...            (tar stage)
    rest:       members... + end      (compress stage, appended later)

Files that vanish or change while they are read are warned about, not fatal: the member
keeps the size its header announced (zero-padded or cut), so the tar stays readable.
"""

from __future__ import annotations

import fnmatch
import os
import re
import stat
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

BLOCK = 512
RECORD = BLOCK * 20
CHUNK = 1 << 20


def padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


def header(info: tarfile.TarInfo) -> bytes:
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")


def end_of_archive(written: int) -> bytes:
    """The two zero blocks that end a tar, padded to a whole record like GNU tar does."""
    total = written + 2 * BLOCK
    return b"\0" * (2 * BLOCK + (-total % RECORD))


def bytes_member(name: str, data: bytes, mtime: float, mode: int = 0o600) -> bytes:
    """A whole member (header, data, padding) for small in-memory content."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(mtime), mode
    return header(info) + data + padding(len(data))


@dataclass
class TreeStats:
    """What went into the files part: counted for the manifest and the summary."""

    files: int = 0
    bytes: int = 0
    dirs: int = 0
    links: int = 0
    written: int = 0
    warnings: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        if len(self.warnings) < 200:
            self.warnings.append(message)


def exclusion_matcher(patterns: Iterable[str]) -> Callable[[str], bool]:
    """One compiled regex for all patterns: is this relative path itself excluded?"""
    patterns = tuple(patterns)
    if not patterns:
        return lambda relative: False
    regex = re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))
    return lambda relative: regex.match(relative) is not None


def is_excluded(relative: str, patterns: Iterable[str]) -> bool:
    """True when the path, or any folder above it, matches one of the patterns."""
    matches = exclusion_matcher(patterns)
    parts = relative.split("/")
    return any(matches("/".join(parts[:depth])) for depth in range(1, len(parts) + 1))


def _info(name: str, st: os.stat_result) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.mtime = int(st.st_mtime)
    return info


def walk(root: Path, start: str, excludes: Iterable[str], skip: set[tuple[int, int]],
         stats: TreeStats) -> Iterator[tuple[str, os.stat_result]]:
    """Yield (relative name, lstat) below root/start, depth first, sorted, pruned."""
    excluded = exclusion_matcher(excludes)  # folders are pruned, so each path is tested once
    top = root / start if start else root
    try:
        st = top.lstat()
    except OSError as exc:
        stats.warn(f"{top}: {exc.strerror}")
        return
    if start:
        yield start, st
    stack = [(top, start)]
    while stack:
        folder, rel = stack.pop()
        try:
            with os.scandir(folder) as iterator:
                entries = sorted(iterator, key=lambda e: e.name)
        except OSError as exc:
            stats.warn(f"{folder}: cannot list: {exc.strerror}")
            continue
        subdirs = []
        for entry in entries:
            name = f"{rel}/{entry.name}" if rel else entry.name
            if excluded(name):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as exc:
                stats.warn(f"{name}: vanished before it was read ({exc.strerror})")
                continue
            if (st.st_dev, st.st_ino) in skip:
                continue
            yield name, st
            if stat.S_ISDIR(st.st_mode):
                subdirs.append((Path(entry.path), name))
        stack.extend(reversed(subdirs))


def write_tree(out: BinaryIO, root: Path, start: str, excludes: Iterable[str],
               skip: set[tuple[int, int]], stats: TreeStats,
               progress: Callable[[int], None] | None = None) -> None:
    """Write every member below root/start to ``out`` (no end-of-archive blocks)."""
    for name, st in walk(root, start, excludes, skip, stats):
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            info = _info(name, st)
            info.type = tarfile.DIRTYPE
            chunk = header(info)
            out.write(chunk)
            stats.dirs += 1
            stats.written += len(chunk)
        elif stat.S_ISLNK(mode):
            info = _info(name, st)
            info.type = tarfile.SYMTYPE
            try:
                info.linkname = os.readlink(root / name)
            except OSError as exc:
                stats.warn(f"{name}: vanished before it was read ({exc.strerror})")
                continue
            chunk = header(info)
            out.write(chunk)
            stats.links += 1
            stats.written += len(chunk)
        elif stat.S_ISREG(mode):
            write_file(out, root / name, name, stats, progress)
        else:
            stats.warn(f"{name}: skipped (not a regular file, folder or link)")


def write_file(out: BinaryIO, path: Path, name: str, stats: TreeStats,
               progress: Callable[[int], None] | None = None) -> None:
    """One regular file as a member; its size is fixed by fstat of the opened file."""
    try:
        handle = open(path, "rb", buffering=0)
    except FileNotFoundError:
        stats.warn(f"{name}: vanished before it was read")
        return
    except OSError as exc:
        stats.warn(f"{name}: cannot read: {exc.strerror}")
        return
    with handle:
        st = os.fstat(handle.fileno())
        info = _info(name, st)
        info.size = size = st.st_size
        head = header(info)
        out.write(head)
        remaining = size
        while remaining:
            chunk = handle.read(min(CHUNK, remaining))
            if not chunk:
                stats.warn(f"{name}: shrank while being read; padded with zeros")
                filler = b"\0" * min(CHUNK, remaining)
                while remaining:
                    piece = filler[:remaining]
                    out.write(piece)
                    remaining -= len(piece)
                break
            out.write(chunk)
            remaining -= len(chunk)
            if progress:
                progress(len(chunk))
        if handle.read(1):
            stats.warn(f"{name}: grew while being read; stored the first {size} bytes")
        if os.fstat(handle.fileno()).st_mtime != st.st_mtime:
            stats.warn(f"{name}: changed while being read")
    pad = padding(size)
    out.write(pad)
    stats.files += 1
    stats.bytes += size
    stats.written += len(head) + size + len(pad)

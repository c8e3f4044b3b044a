"""The dump's zstd frames compressed by the dump stage, while the tar stage still runs.

    dump stage:      mariadb-dump -> database.sql -> pieces (frames.dump_pieces) -> compressed, kept here
    compress stage:  header frame, then each piece: last night's frame (copied), one kept here,
                     or compressed now; then manifest and end

`dump` and `tar` run side by side in one process, and the dump is nearly always done first
(at 1 GiB: 1.4 s beside 3.9 s): the core it leaves compresses the dump then, instead of the
compress stage doing it once both are done. The frames are the very bytes the compress stage
would make (same pieces, level and compressor settings), so the archive is the same either
way. Kept in memory, at most BUDGET bytes of them for all sites together (the rest is
compressed later as before: a site whose tar stage failed keeps its share until the process
ends), and only for the same database.sql (size and mtime); a compress stage in another process, after a
crash for instance, finds none and compresses the dump itself. Pieces the compress stage will
copy from last night's archive are not compressed here.
"""

from __future__ import annotations

import threading
from pathlib import Path

import zstandard

from wpbackup.backup.frames import dump_key, dump_pieces

BUDGET = 24 << 20  # compressed bytes held between the two stages (peak memory stays under 150 MiB)

_lock = threading.Lock()
_ready: dict[str, tuple[tuple[int, int], dict[str, bytes]]] = {}
_busy = 0  # compressed by a precompress() still running


def _held() -> int:
    """Compressed bytes held now, or being compressed (under _lock)."""
    return _busy + sum(len(data) for _, frames in _ready.values() for data in frames.values())


def _stamp(dump: Path) -> tuple[int, int]:
    st = dump.stat()
    return st.st_size, st.st_mtime_ns


def precompress(dump: Path, level: int, skip: set[str] | frozenset[str] = frozenset(),
                budget: int = BUDGET) -> int:
    """Compress the pieces of ``dump`` that are not in ``skip`` (keys of last night's frames)
    while all sites together hold less than ``budget`` compressed bytes; returns how many
    pieces are held."""
    global _busy
    compressor = zstandard.ZstdCompressor(level=level, write_checksum=True)  # as FrameWriter._compress
    stamp = _stamp(dump)
    with _lock:
        _ready.pop(str(dump), None)  # an earlier dump of this run's
    held: dict[str, bytes] = {}
    size, same = 0, False
    try:
        for piece in dump_pieces(dump):
            key = dump_key(piece)
            if key in skip or key in held:
                continue
            data = compressor.compress(piece)
            with _lock:
                if _held() + len(data) > budget:
                    break
                _busy += len(data)
            held[key] = data
            size += len(data)
        same = _stamp(dump) == stamp  # else rewritten meanwhile: these are not its pieces
    finally:
        with _lock:
            _busy -= size
            if held and same:
                _ready[str(dump)] = (stamp, held)
    return len(held) if same else 0


def take(dump: Path) -> dict[str, bytes]:
    """The frames held for this very ``dump`` (key -> compressed bytes), handed over once."""
    with _lock:
        kept = _ready.pop(str(dump), None)
    try:
        return kept[1] if kept and kept[0] == _stamp(dump) else {}
    except OSError:
        return {}

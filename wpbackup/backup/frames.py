"""The files part in stable zstd frames, and the index that lets the next night reuse them.

    walk: folders and links (in walk order), then regular files by mtime (then name)
          -> runs -> one zstd frame per run -> files.part.zst, frame index

A run is a big file on its own (at least BIG bytes), or consecutive small members that end
where a member's name hashes to a boundary (once the run holds RUN_MIN bytes), or at RUN_MAX.
Boundaries chosen by name and size, not by position in the stream, keep the runs after a new,
changed or deleted file as they were, and the compression of a run depends on nothing else:
the same site state gives the same bytes, whether compressed tonight or copied. Files go in
order of modification, so whatever changed since last night (rewritten and new files) sits
together at the end, where the dump follows: the upload sends one stretch of new bytes instead
of one per change (S3 wants 5 MiB per part, see storage/partplan.py). Stock tar extracts any
order; folders come first so that each exists before its files.

The index (``NAME.frames`` beside the archive, zstd-compressed JSON) lists every frame: offset,
compressed length, CRC32 of its compressed bytes, uncompressed length and, for frames of site
members, a digest of the identity of its members (name, link target, where its content was
read, and mode, size, mtime, ctime, inode, device and owner: a few bytes a frame, whatever the
number of files). Tonight, a run whose members have the identity of a run in last night's
index is copied from last night's archive (its CRC32 checked first) instead of being read and
compressed again, and when that archive is gone a run compressed again to the same bytes is
noticed too: the index says which of tonight's frames equal which of last night's, so the
upload can copy those bytes inside S3. A file modified less than RACY seconds before it was
read is never reused (a write in the same clock tick leaves its stat unchanged).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import stat
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

import zstandard

from wpbackup.atomic import write_atomic
from wpbackup.backup.tarstream import BLOCK, CHUNK, Entry, TreeStats, member_name, write_entry
from wpbackup.console import log
from wpbackup.errors import BackupError

LAYOUT = 1
INDEX_SUFFIX = ".frames"
BIG = 256 << 10  # a file this large is a frame of its own
RUN_MIN = 128 << 10
RUN_MAX = 1 << 20
BOUNDARY = 8  # about one member name in this many ends a run (past RUN_MIN)
PENDING = 4  # runs compressed ahead of the writer (bounded memory: RUN_MAX + BIG each)
RACY = 2.0  # seconds: a file changed this shortly before it was read may change again unseen


@dataclass
class Frame:
    """One zstd frame of an archive. ``key``: the digest of what it holds ("f:" and the
    identities of its site members, or "d:" and a piece of the dump; None: never reused:
    wp-config.php, the dump's header, the tail, a member read with trouble).
    ``source``: offset of the same bytes in the archive the run reused (or matched)."""

    offset: int
    length: int
    crc: int
    raw: int
    key: str | None = None
    source: int | None = None

    def row(self) -> list:
        return [self.offset, self.length, self.crc, self.raw, self.key, self.source]

    @classmethod
    def from_row(cls, row: list) -> Frame:
        offset, length, crc, raw, key, source = row
        if not all(isinstance(v, int) and v >= 0 for v in (offset, length, crc, raw)):
            raise ValueError("bad frame row")
        return cls(offset, length, crc, raw, key if isinstance(key, str) else None,
                   source if isinstance(source, int) and source >= 0 else None)


@dataclass
class Index:
    """Where an archive's frames are, and (``source``) the archive its reused frames came from."""

    archive: str
    size: int
    sha256: str
    level: int
    frames: list[Frame] = field(default_factory=list)
    source: str | None = None
    layout: int = LAYOUT

    def dumps(self) -> bytes:
        body = {"layout": self.layout, "archive": self.archive, "size": self.size, "sha256": self.sha256,
                "level": self.level, "source": self.source, "frames": [f.row() for f in self.frames]}
        return zstandard.ZstdCompressor(level=3).compress(json.dumps(body, separators=(",", ":")).encode())


def compressor(level: int, threads: int) -> zstandard.ZstdCompressor:
    """ZSTD_THREADS=0 means every core, as `zstd -T0` does."""
    return zstandard.ZstdCompressor(level=level, threads=-1 if threads == 0 else threads, write_checksum=True)


def index_path(archive: Path) -> Path:
    return archive.with_name(archive.name + INDEX_SUFFIX)


def save_index(path: Path, index: Index) -> None:
    write_atomic(path, index.dumps())


def load_index(path: Path) -> Index | None:
    """The index at ``path``, or None when it is missing, damaged or of another layout (then
    nothing is reused: the archive is simply written afresh)."""
    try:
        with open(path, "rb") as handle:
            body = json.loads(zstandard.ZstdDecompressor().stream_reader(handle).read())
        if body.get("layout") != LAYOUT:
            return None
        frames = [Frame.from_row(row) for row in body["frames"]]
        return Index(str(body["archive"]), int(body["size"]), str(body["sha256"]), int(body["level"]),
                     frames, body.get("source"))
    except (OSError, ValueError, TypeError, KeyError, AttributeError, zstandard.ZstdError):
        return None


def identity(entry: Entry) -> list:
    """What must not have changed for a member's bytes in last night's archive to be tonight's."""
    st = entry.st
    size = st.st_size if stat.S_ISREG(st.st_mode) and entry.linkname is None else 0
    # the name as written (member_name): an archive from before that rule holds other bytes
    return [member_name(entry.name), entry.linkname or "", str(entry.path) if entry.outside else "", st.st_mode, size,
            st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev, st.st_uid, st.st_gid]


def run_key(entries: list[Entry]) -> str:
    """The digest of a run's member identities (what the index keeps of them)."""
    text = json.dumps([identity(e) for e in entries], separators=(",", ":"), ensure_ascii=False)
    return "f:" + hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()


class Previous:
    """Last night's archive as tonight's files part reuses it: its frames by member
    identities, and its bytes when the archive is still on disk (same size as indexed)."""

    def __init__(self, index: Index, archive: Path, level: int):
        self.index = index
        self.name = index.archive
        usable = index.level == level
        self.frames = {f.key: f for f in index.frames if f.key} if usable else {}
        self.fd: int | None = None
        try:
            if usable and archive.stat().st_size == index.size:
                self.fd = os.open(archive, os.O_RDONLY)
        except OSError:
            self.fd = None
        self.broken = False

    def find(self, key: str | None) -> Frame | None:
        return self.frames.get(key) if key and self.frames and not self.broken else None

    def fetch(self, frame: Frame) -> bytes | None:
        """A small frame's bytes from last night's archive, CRC32 checked (None: not usable)."""
        if self.fd is None or self.broken:
            return None
        data = os.pread(self.fd, frame.length, frame.offset)
        if len(data) != frame.length or zlib.crc32(data) != frame.crc:
            return self._damaged()
        return data

    def copy(self, frame: Frame, write: Callable[[bytes], object]) -> bool:
        """Copy a big frame into ``write`` after a first pass checked its CRC32."""
        if self.fd is None or self.broken:
            return False
        crc = 0
        for start in range(0, frame.length, CHUNK):
            chunk = os.pread(self.fd, min(CHUNK, frame.length - start), frame.offset + start)
            if not chunk:
                break
            crc = zlib.crc32(chunk, crc)
        if crc != frame.crc:
            self._damaged()
            return False
        again = 0
        for start in range(0, frame.length, CHUNK):
            chunk = os.pread(self.fd, min(CHUNK, frame.length - start), frame.offset + start)
            again = zlib.crc32(chunk, again)
            write(chunk)
        if again != frame.crc:  # changed between the two reads: what was written is not last night's
            raise BackupError(f"{self.name} changed while its frames were copied; the next run archives the "
                              "files again")
        return True

    def _damaged(self) -> None:
        log.warning("%s no longer holds the bytes its frame index lists: the files are compressed again",
                    self.name)
        self.broken = True
        return None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def member_bytes(entry: Entry) -> int:
    """A member's size in the tar as the boundary rule counts it (header and padded data)."""
    size = entry.st.st_size if stat.S_ISREG(entry.st.st_mode) and entry.linkname is None else 0
    return BLOCK + size + (-size % BLOCK)


def is_big(entry: Entry) -> bool:
    return entry.linkname is None and stat.S_ISREG(entry.st.st_mode) and entry.st.st_size >= BIG


def ends_run(entry: Entry, run_bytes: int) -> bool:
    if run_bytes >= RUN_MAX:
        return True
    return run_bytes >= RUN_MIN and zlib.crc32(entry.name.encode("utf-8", "surrogateescape")) % BOUNDARY == 0


DUMP_MIN = 256 << 10
DUMP_MAX = 2 << 20
DUMP_BOUNDARY = 32  # about one candidate in this many past DUMP_MIN ends a piece
_ROW_START = re.compile(rb"\),\(|\n")  # between two rows of an extended INSERT, or a line's end


def dump_pieces(path: Path) -> Iterator[bytes]:
    """The dump in content-defined pieces: a piece ends between two rows (or at a line's end)
    where the 16 bytes that follow hash to a boundary, once it holds DUMP_MIN bytes (at DUMP_MAX
    whatever follows). An edited or added row changes its own piece; the pieces after it end
    where they ended last night, so they compress to the same bytes. Bounded memory."""
    buffer = b""
    with open(path, "rb") as source:
        eof = False
        while True:
            while not eof and len(buffer) < DUMP_MAX + 64:
                block = source.read(CHUNK)
                eof = not block
                buffer += block
            if not buffer:
                return
            cut = _cut(buffer, eof)
            if cut is None:
                yield buffer
                return
            yield buffer[:cut]
            buffer = buffer[cut:]


def _cut(buffer: bytes, eof: bool) -> int | None:
    if eof and len(buffer) <= DUMP_MAX:
        limit = len(buffer)
    else:
        limit = DUMP_MAX
    at = DUMP_MIN
    while at < limit:
        found = _ROW_START.search(buffer, at, limit)
        if found is None:
            break
        cut = found.end() - (1 if found.group() == b"),(" else 0)  # a piece starts with "(" of a row
        if zlib.crc32(buffer[cut:cut + 16]) % DUMP_BOUNDARY == 0:
            return cut
        at = found.end()
    return None if limit == len(buffer) else DUMP_MAX


def dump_key(piece: bytes) -> str:
    return f"d:{hashlib.blake2b(piece, digest_size=16).hexdigest()}:{len(piece)}"


def _settled(entry: Entry, st: os.stat_result) -> bool:
    """The file was read as the walk saw it, and not modified in the last RACY seconds: a
    write in the same clock tick as the read (timestamps advance once per tick on many
    kernels) would leave size, times and inode as they are, and the stale bytes would be
    copied night after night."""
    if (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino) != (
            entry.st.st_size, entry.st.st_mtime_ns, entry.st.st_ctime_ns, entry.st.st_ino):
        return False
    return max(st.st_mtime_ns, st.st_ctime_ns) < time.time_ns() - int(RACY * 1e9)


class FileOrder:
    """The walk's regular files, handed back by (mtime, name): kept in a small SQLite file
    beside the files part, so a site of a million files costs disk, not memory. Each file is
    looked at again when its turn comes (lstat): one that is gone, or no longer a regular file,
    is reported as the walk would have."""

    def __init__(self, path: Path):
        self.path = path
        path.unlink(missing_ok=True)
        self.db = sqlite3.connect(path)
        self.db.execute("PRAGMA journal_mode=OFF")
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute("CREATE TABLE f (mtime INTEGER, name BLOB, path BLOB, outside INTEGER)")
        self.batch: list[tuple] = []

    def add(self, entry: Entry) -> None:
        self.batch.append((entry.st.st_mtime_ns, _blob(entry.name), _blob(str(entry.path)), int(entry.outside)))
        if len(self.batch) >= 5000:
            self._flush()

    def _flush(self) -> None:
        self.db.executemany("INSERT INTO f VALUES (?, ?, ?, ?)", self.batch)
        self.batch = []

    def entries(self, stats: TreeStats) -> Iterator[Entry]:
        self._flush()
        for _, name, path, outside in self.db.execute("SELECT * FROM f ORDER BY mtime, name"):
            name, path = _text(name), _text(path)
            try:
                st = os.lstat(path)
            except OSError as exc:
                stats.cannot_read(name, f"vanished before it was read ({exc.strerror})")
                continue
            if not stat.S_ISREG(st.st_mode):
                stats.cannot_read(name, "is no longer a regular file")
                continue
            yield Entry(name, Path(path), st, None, bool(outside))

    def close(self) -> None:
        self.db.close()
        self.path.unlink(missing_ok=True)


def _blob(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _text(blob: bytes) -> str:
    return blob.decode("utf-8", "surrogateescape")


class Crc:
    """Passes compressed bytes on to ``sink`` and keeps their CRC32."""

    def __init__(self, sink: BinaryIO):
        self.sink, self.crc = sink, 0

    def write(self, data) -> int:
        self.crc = zlib.crc32(data, self.crc)
        return self.sink.write(data)

    def flush(self) -> None:
        pass


@dataclass
class Reuse:
    """What tonight's files part took from last night's archive."""

    frames: int = 0
    files: int = 0
    bytes: int = 0
    matched: int = 0  # frames compressed again to last night's bytes (the archive was gone)
    chunks: int = 0  # pieces of the dump copied


class FrameWriter:
    """Writes the walk's members to ``sink`` (which counts ``written``) as stable frames."""

    def __init__(self, sink, level: int, threads: int, stats: TreeStats, previous: Previous | None = None,
                 progress: Callable[[int], None] | None = None):
        self.sink, self.level, self.threads, self.stats = sink, level, threads, stats
        self.previous, self.progress = previous, progress
        self.frames: list[Frame] = []
        self.reuse = Reuse()
        self.run: list[Entry] = []
        self.run_bytes = 0
        workers = threads if threads > 0 else (os.cpu_count() or 1)
        self.pool = ThreadPoolExecutor(max_workers=workers)
        self.pending: deque[tuple[Future, str | None, int, Frame | None]] = deque()
        self.local = threading.local()

    # --- members in -------------------------------------------------------------------
    def add(self, entry: Entry) -> None:
        mode = entry.st.st_mode
        if entry.linkname is None and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            write_entry(BytesIO(), entry, self.stats)  # the warning; nothing is written
            return
        if is_big(entry):
            self.end_run()
            self._big(entry)
            return
        self.run.append(entry)
        self.run_bytes += member_bytes(entry)
        if ends_run(entry, self.run_bytes):
            self.end_run()

    def single(self, write: Callable[[BinaryIO], None]) -> None:
        """A frame of its own that is never reused (wp-config.php outside the tree)."""
        self.end_run()
        self._drain(0)
        buffer = BytesIO()
        write(buffer)
        self._put(self._compress(buffer.getvalue()), None, len(buffer.getvalue()))

    def chunk(self, raw: bytes, key: str) -> None:
        """A piece of a stream (the dump) whose identity is its content: last night's frame
        of the same content is copied, anything else compressed."""
        self.end_run()
        old = self.previous.find(key) if self.previous else None
        data = self.previous.fetch(old) if old else None
        if old and data is not None:
            self.reuse.chunks += 1
            done: Future = Future()
            done.set_result(data)
            self.pending.append((done, key, old.raw, old))
        else:
            self.pending.append((self.pool.submit(self._compress, raw), key, len(raw), None))
        self._drain(PENDING)

    def end_run(self) -> None:
        if not self.run:
            return
        run, self.run, self.run_bytes = self.run, [], 0
        key = run_key(run)
        old = self.previous.find(key) if self.previous else None
        data = self.previous.fetch(old) if old else None
        if old and data is not None:
            self._count_reused(run, old)
            done: Future = Future()
            done.set_result(data)
            self.pending.append((done, key, old.raw, old))
        else:
            raw, clean = self._read(run)
            self.pending.append((self.pool.submit(self._compress, raw), key if clean else None, len(raw), None))
        self._drain(PENDING)

    def abandon(self) -> None:
        """Stop after a failure elsewhere: nothing more is compressed or written."""
        self.pending.clear()
        self.pool.shutdown(wait=True, cancel_futures=True)
        if self.previous:
            self.previous.close()

    def finish(self) -> list[Frame]:
        try:
            self.end_run()
            self._drain(0)
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
            if self.previous:
                self.previous.close()
        return self.frames

    # --- reading and compressing ------------------------------------------------------
    def _read(self, run: list[Entry]) -> tuple[bytes, bool]:
        """The run's tar bytes, and whether every member was read as its identity says."""
        buffer = BytesIO()
        troubles = self._troubles()
        clean = True
        for entry in run:
            st = write_entry(buffer, entry, self.stats, self.progress)
            clean &= st is None or _settled(entry, st)
        clean &= troubles == self._troubles()
        return buffer.getvalue(), clean

    def _troubles(self) -> tuple[int, int]:
        """What reading has reported so far: a change means the member just read had trouble."""
        return self.stats.unreadable_count, len(self.stats.warnings)

    def _compress(self, raw: bytes) -> bytes:
        compressor = getattr(self.local, "compressor", None)
        if compressor is None:
            compressor = self.local.compressor = zstandard.ZstdCompressor(level=self.level, write_checksum=True)
        return compressor.compress(raw)

    def _big(self, entry: Entry) -> None:
        """A big file: copied from last night's archive, or compressed straight into the sink
        on every core (its bytes never all in memory)."""
        self._drain(0)
        key = run_key([entry])
        old = self.previous.find(key) if self.previous else None
        start = self.sink.written
        if old and self.previous.copy(old, self.sink.write):
            self._count_reused([entry], old)
            self.frames.append(Frame(start, old.length, old.crc, old.raw, key, old.offset))
            return
        troubles = self._troubles()
        before = self.stats.written
        counted = Crc(self.sink)
        with compressor(self.level, self.threads).stream_writer(counted, closefd=False, write_size=CHUNK) as out:
            st = write_entry(out, entry, self.stats, self.progress)
        clean = st is not None and troubles == self._troubles() and _settled(entry, st)
        frame = Frame(start, self.sink.written - start, counted.crc, self.stats.written - before,
                      key if clean else None)
        self._match(frame)
        self.frames.append(frame)

    def _count_reused(self, run: list[Entry], old: Frame) -> None:
        for entry in run:
            mode = entry.st.st_mode
            if entry.linkname is not None:
                self.stats.links += 1
            elif stat.S_ISDIR(mode):
                self.stats.dirs += 1
            else:
                self.stats.files += 1
                self.stats.bytes += entry.st.st_size
                self.reuse.files += 1
                self.reuse.bytes += entry.st.st_size
                if self.progress:
                    self.progress(entry.st.st_size)
        self.stats.written += old.raw
        self.reuse.frames += 1

    def _match(self, frame: Frame) -> None:
        """A frame compressed again to the very bytes of last night's (its archive was gone)."""
        if not self.previous or not frame.key:
            return
        old = self.previous.find(frame.key)
        if old and (old.length, old.crc, old.raw) == (frame.length, frame.crc, frame.raw):
            frame.source = old.offset
            self.reuse.matched += 1

    # --- writing, in order ---------------------------------------------------------------
    def _drain(self, keep: int) -> None:
        while self.pending and (len(self.pending) > keep or self.pending[0][0].done()):
            future, key, raw, old = self.pending.popleft()
            if old is not None:
                self._put(future.result(), key, raw, source=old.offset, crc=old.crc)
            else:
                self._put(future.result(), key, raw)

    def _put(self, data: bytes, key: str | None, raw: int, source: int | None = None,
             crc: int | None = None) -> None:
        start = self.sink.written
        self.sink.write(data)
        frame = Frame(start, len(data), zlib.crc32(data) if crc is None else crc, raw, key, source)
        if source is None:
            self._match(frame)
        self.frames.append(frame)

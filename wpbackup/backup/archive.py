"""Building `{site}-backup-{stamp}.tar.zst` in two streamed pieces, with no uncompressed tar
ever on disk and each byte compressed once:

    tar stage:      wp-config.php + site files -> tar members -> zstd frames -> files.part.zst
    compress stage: files.part.zst += zstd frames(database.sql, manifest.json, end blocks)
                    -> renamed to the final archive name, sha256 sidecar beside it

Concatenated zstd frames decompress as one stream and the members form one valid tar, so
`tar --zstd -xf` reads the result. The sha256 is computed while writing and, when the archive
is going to S3, so is the checksum of each part the upload will send (MD5 for Content-MD5, or
CRC32 with S3_CHECKSUM=crc32): the upload then reads each part once instead of twice, and S3
checks the bytes it gets against the archive as it was written, not as it reads back.
"""

from __future__ import annotations

import binascii
import hashlib
import json
import os
import queue
import stat
import tarfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from wpbackup.atomic import write_atomic
from wpbackup.backup.frames import (
    FileOrder,
    Frame,
    FrameWriter,
    Index,
    Previous,
    Reuse,
    dump_key,
    dump_pieces,
    index_path,
    load_index,
    save_index,
)
from wpbackup.backup.tarstream import (
    CHUNK,
    TreeStats,
    bytes_member,
    end_of_archive,
    header,
    padding,
    walk,
    write_file,
)
from wpbackup.backup.writeback import Pacer
from wpbackup.console import log
from wpbackup.errors import BackupError, disk_error

# sha256 (and part checksum) state of a files part written by this process, so compress need
# not read it again.
_hash_cache: dict[str, tuple[int, hashlib._Hash, PartDigests | None]] = {}
_hash_lock = threading.Lock()


class _Crc32:
    """binascii.crc32 behind hashlib's update/digest/copy (digest: 4 bytes, big-endian)."""

    def __init__(self, value: int = 0):
        self.value = value

    def update(self, data) -> None:
        self.value = binascii.crc32(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(4, "big")

    def copy(self) -> _Crc32:
        return _Crc32(self.value)


PART_ALGORITHMS = ("md5", "crc32")


class PartDigests:
    """The checksum (``algorithm``: md5 or crc32) of each ``part_size`` slice of a byte stream:
    what every part of a later multipart upload with that part size carries (the last part
    may be shorter)."""

    def __init__(self, part_size: int, algorithm: str = "md5"):
        if algorithm not in PART_ALGORITHMS:
            raise ValueError(f"unknown part checksum {algorithm!r}")
        self.part_size, self.algorithm = part_size, algorithm
        self.done: list[bytes] = []
        self._current = self._new()
        self._fill = 0

    def _new(self):
        return hashlib.md5(usedforsecurity=False) if self.algorithm == "md5" else _Crc32()

    def same_plan(self, other: PartDigests) -> bool:
        return (self.part_size, self.algorithm) == (other.part_size, other.algorithm)

    def update(self, data) -> None:
        view = memoryview(data)
        while view:
            take = min(len(view), self.part_size - self._fill)
            self._current.update(view[:take])
            self._fill += take
            view = view[take:]
            if self._fill == self.part_size:
                self.done.append(self._current.digest())
                self._current, self._fill = self._new(), 0

    def copy(self) -> PartDigests:
        twin = PartDigests(self.part_size, self.algorithm)
        twin.done, twin._current, twin._fill = list(self.done), self._current.copy(), self._fill
        return twin

    def hexdigests(self) -> list[str]:
        """One per part, the last (partial) one included."""
        tail = [self._current.digest()] if self._fill else []
        return [digest.hex() for digest in self.done + tail]


class _Consumer:
    """A thread that feeds every queued chunk to ``use``, through a short queue (bounded
    memory); hashlib and os.write release the GIL, so consumers run beside the compression."""

    def __init__(self, use: Callable[[bytes], None]):
        self.use = use
        self.error: Exception | None = None
        self.queue: queue.Queue = queue.Queue(maxsize=8)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (data := self.queue.get()) is not None:
            if self.error is not None:
                continue
            try:
                self.use(data)
            except Exception as exc:  # kept for the writer's caller; the queue is still drained
                self.error = exc

    def finish(self) -> None:
        self.queue.put(None)
        self.thread.join()


class PartLost(BackupError):
    """The files part lost data in a crash (it is not fsynced): the tar stage must be redone."""


class HashingWriter:
    """A write-only file object that hashes and counts what passes through to ``fd``.

    Hashing and writing run in a thread of their own beside the compression, and the part
    checksums (``parts``; MD5 is the slowest hash) in another: memory stays bounded, the hashes cost no
    wall time while cores are free. ``close()`` must be called before the digests are read;
    a write error surfaces there or on a later write.
    """

    def __init__(self, fd: int, digest=None, written: int = 0, parts: PartDigests | None = None):
        self.fd = fd
        self.digest = digest or hashlib.sha256()
        self.parts = parts
        self.written = written
        self._closed = False
        self._pacer = Pacer(fd)
        self._writer = _Consumer(self._write)
        self._consumers = [self._writer] + ([_Consumer(parts.update)] if parts else [])

    def _write(self, data: bytes) -> None:
        self.digest.update(data)
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]
        self._pacer.wrote(len(data))

    def _raise(self) -> None:
        for consumer in self._consumers:
            if consumer.error is not None:
                raise consumer.error

    def write(self, data) -> int:
        self._raise()
        data = data if isinstance(data, bytes) else bytes(data)
        for consumer in self._consumers:
            consumer.queue.put(data)
        self.written += len(data)
        return len(data)

    def flush(self) -> None:
        pass

    def abandon(self) -> None:
        """Stop the threads after a failure elsewhere (their own error is moot then)."""
        try:
            self.close()
        except Exception:
            pass

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            for consumer in self._consumers:
                consumer.finish()
        self._raise()


def archive_name(site: str, stamp: str) -> str:
    return f"{site}-backup-{stamp}.tar.zst"


@dataclass
class FilesPart:
    size: int
    stats: TreeStats
    reuse: Reuse
    source: str | None  # the archive whose frames were reused or matched


def frames_path(files_part: Path) -> Path:
    """The files part's frame list, beside it in the run folder until the archive's index."""
    return index_path(files_part)


def write_files_part(root: Path, files: str, wp_config: Path, excludes: tuple[str, ...],
                     skip: set[tuple[int, int]], target: Path, level: int, threads: int,
                     progress: Callable[[int], None] | None = None, parts: PartDigests | None = None,
                     previous: Path | None = None) -> FilesPart:
    """Stream wp-config.php and the site files into stable zstd frames at ``target``
    (atomic; frames.py), reusing the frames of the ``previous`` archive where its index
    says the members are unchanged; with ``parts``, the checksum of each upload part is
    computed on the way."""
    partial = target.with_name(target.name + ".tmp")
    stats = TreeStats()
    old = load_index(index_path(previous)) if previous else None
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        sink = HashingWriter(fd, parts=parts)
        writer = FrameWriter(sink, level, threads, stats, Previous(old, previous, level) if old else None, progress)
        try:
            try:
                _write_members(writer, root, files, wp_config, excludes, skip, stats,
                               target.with_name(target.name + ".order"))
            except BaseException:
                writer.abandon()
                raise
            frames = writer.finish()
            sink.close()
            # no fsync here: the archive is fsynced once, whole, before it gets its final name;
            # a files part cut short by a crash is noticed by the compress stage and redone
        finally:
            sink.abandon()
            os.close(fd)
        save_index(frames_path(target), Index(target.name, sink.written, "", level, frames,
                                              old.archive if old else None))
        os.replace(partial, target)
    except OSError as exc:
        raise disk_error(partial, exc) from None
    finally:
        if partial.exists():
            partial.unlink()
    with _hash_lock:
        _hash_cache[str(target)] = (sink.written, sink.digest, sink.parts)
    return FilesPart(sink.written, stats, writer.reuse, old.archive if old else None)


def _write_members(writer: FrameWriter, root: Path, files: str, wp_config: Path, excludes: tuple[str, ...],
                   skip: set[tuple[int, int]], stats: TreeStats, order_path: Path) -> None:
    in_tree = files == "all" and wp_config.parent == root
    if not in_tree:
        counted = stats.files, stats.bytes

        def config(out) -> None:
            write_file(out, wp_config, "wp-config.php", stats)

        writer.single(config)
        if files != "all":  # with `files: all` every regular file counts, the config too
            stats.files, stats.bytes = counted
        else:  # the config came from the parent: the root's own (a dangling link) must not replace it
            excludes = (*excludes, "wp-config.php")
    order = FileOrder(order_path)
    try:
        for entry in walk(root, "" if files == "all" else "wp-content", excludes, skip, stats):
            if entry.linkname is None and stat.S_ISREG(entry.st.st_mode):
                order.add(entry)
            else:
                writer.add(entry)
        writer.end_run()
        for entry in order.entries(stats):
            writer.add(entry)
    finally:
        order.close()


def _resume_digests(path: Path, size: int, parts: PartDigests | None):
    """sha256 (and part checksum) state of the first ``size`` bytes of ``path``: kept from the
    tar stage of this process, or read again into ``parts`` (a new process, e.g. after a
    crash, or another part plan)."""
    with _hash_lock:
        cached = _hash_cache.pop(str(path), None)
    if cached and cached[0] == size:
        kept = cached[2]
        if parts is None or (kept is not None and kept.same_plan(parts)):
            return cached[1].copy(), kept.copy() if parts else None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        remaining = size
        while remaining and (chunk := handle.read(min(CHUNK, remaining))):
            digest.update(chunk)
            if parts:
                parts.update(chunk)
            remaining -= len(chunk)
    return digest, parts


@dataclass
class Finished:
    sha256: str
    size: int
    part_sums: list[str] | None  # hex, one per upload part (when asked for)
    dump_pieces_copied: int = 0


def finish_archive(files_part: Path, files_part_size: int, tar_written: int, dump: Path,
                   manifest: dict, archive: Path, level: int, threads: int,
                   progress: Callable[[int], None] | None = None, parts: PartDigests | None = None,
                   previous: Path | None = None) -> Finished:
    """Append database.sql, manifest.json and the end blocks to the files part, then give it
    the final name. Safe to repeat after a crash: the files part is cut back to its recorded
    size first, and the final name only appears once everything is on disk.
    """
    if files_part.stat().st_size < files_part_size:
        raise PartLost(f"{files_part} is shorter than its receipt says (lost in a crash)")
    try:
        os.truncate(files_part, files_part_size)
        digest, parts = _resume_digests(files_part, files_part_size, parts)
        fd = os.open(files_part, os.O_WRONLY | os.O_APPEND)
        sink = HashingWriter(fd, digest, files_part_size, parts)
        try:
            frames, copied = _append_rest(sink, tar_written, dump, manifest, level, threads, progress, previous)
            sink.close()
            os.fsync(fd)  # the whole archive, files part included, before the final name
        finally:
            sink.abandon()
            os.close(fd)
        index = load_index(frames_path(files_part))
        os.chmod(files_part, 0o600)
        os.replace(files_part, archive)
    except OSError as exc:
        if files_part.exists():
            os.truncate(files_part, files_part_size)
        raise disk_error(archive, exc) from None
    if index is not None and index.size == files_part_size:  # the next night's reuse, and this upload's copies
        index.archive, index.size, index.sha256 = archive.name, sink.written, sink.digest.hexdigest()
        index.frames += frames
        try:
            save_index(index_path(archive), index)
        except OSError as exc:  # only tomorrow's reuse is lost
            log.warning("could not write %s: %s", index_path(archive), exc.strerror)
    return Finished(sink.digest.hexdigest(), sink.written, parts.hexdigests() if parts else None, copied)


def _append_rest(sink: HashingWriter, tar_written: int, dump: Path, manifest: dict, level: int, threads: int,
                 progress: Callable[[int], None] | None, previous: Path | None) -> tuple[list[Frame], int]:
    """database.sql after a frame holding its header alone (restore finds that frame and loads
    the dump at once), in content-defined pieces (frames.dump_pieces: those unchanged since
    the previous archive are copied from it), then the manifest and the end blocks in the last
    frame. Returns the frames and how many pieces of the dump were copied."""
    old = load_index(index_path(previous)) if previous else None
    writer = FrameWriter(sink, level, threads, TreeStats(), Previous(old, previous, level) if old else None)
    try:
        st = dump.stat()
        info_head = _dump_header(st)
        writer.single(lambda out: out.write(info_head))
        for piece in dump_pieces(dump):
            writer.chunk(piece, dump_key(piece))
            if progress:
                progress(len(piece))
        written = len(info_head) + st.st_size + len(padding(st.st_size))
        body = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
        member = bytes_member("manifest.json", body, st.st_mtime)
        tail = padding(st.st_size) + member + end_of_archive(tar_written + written + len(member))
        writer.single(lambda out: out.write(tail))
    except BaseException:
        writer.abandon()
        raise
    return writer.finish(), writer.reuse.chunks


def _dump_header(st: os.stat_result) -> bytes:
    info = tarfile.TarInfo("database.sql")
    info.size, info.mtime, info.mode = st.st_size, int(st.st_mtime), 0o600
    return header(info)


def write_sidecar(archive: Path, sha256: str) -> Path:
    """NAME.sha256 in `sha256sum` format, written atomically."""
    sidecar = archive.with_name(archive.name + ".sha256")
    write_atomic(sidecar, f"{sha256}  {archive.name}\n".encode())
    return sidecar

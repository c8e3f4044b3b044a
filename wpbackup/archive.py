"""Building `{site}-backup-{stamp}.tar.zst` in two streamed pieces, with no uncompressed tar
ever on disk and each byte compressed once:

    tar stage:      wp-config.php + site files -> tar members -> zstd frames -> files.part.zst
    compress stage: files.part.zst += zstd frames(database.sql, manifest.json, end blocks)
                    -> renamed to the final archive name, sha256 sidecar beside it

Concatenated zstd frames decompress as one stream and the members form one valid tar, so
`tar --zstd -xf` reads the result. The sha256 is computed while writing.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import tarfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import zstandard

from .errors import BackupError, disk_error
from .tarstream import CHUNK, TreeStats, bytes_member, end_of_archive, header, padding, write_file, write_tree

# sha256 state of a files part written by this process, so compress need not read it again.
_hash_cache: dict[str, tuple[int, hashlib._Hash]] = {}
_hash_lock = threading.Lock()


class PartLost(BackupError):
    """The files part lost data in a crash (it is not fsynced): the tar stage must be redone."""


class HashingWriter:
    """A write-only file object that hashes and counts what passes through to ``fd``.

    Hashing and writing run in a thread of their own (both release the GIL), beside the
    compression, through a short queue: memory stays bounded, the sha256 costs no wall time.
    ``close()`` must be called before the digest is read; a write error surfaces there or on
    a later write.
    """

    def __init__(self, fd: int, digest=None, written: int = 0):
        self.fd = fd
        self.digest = digest or hashlib.sha256()
        self.written = written
        self._queue: queue.Queue = queue.Queue(maxsize=8)
        self._error: OSError | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while (data := self._queue.get()) is not None:
            if self._error is not None:
                continue
            try:
                self.digest.update(data)
                view = memoryview(data)
                while view:
                    view = view[os.write(self.fd, view):]
            except OSError as exc:
                self._error = exc

    def write(self, data) -> int:
        if self._error is not None:
            raise self._error
        self._queue.put(data if isinstance(data, bytes) else bytes(data))
        self.written += len(data)
        return len(data)

    def flush(self) -> None:
        pass

    def abandon(self) -> None:
        """Stop the writer thread after a failure elsewhere (its own error is moot then)."""
        try:
            self.close()
        except OSError:
            pass

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join()
        if self._error is not None:
            raise self._error


def compressor(level: int, threads: int) -> zstandard.ZstdCompressor:
    """ZSTD_THREADS=0 means every core, as `zstd -T0` does."""
    return zstandard.ZstdCompressor(level=level, threads=-1 if threads == 0 else threads, write_checksum=True)


def archive_name(site: str, stamp: str) -> str:
    return f"{site}-backup-{stamp}.tar.zst"


@dataclass
class FilesPart:
    size: int
    stats: TreeStats


def write_files_part(root: Path, files: str, wp_config: Path, excludes: tuple[str, ...],
                     skip: set[tuple[int, int]], target: Path, level: int, threads: int,
                     progress: Callable[[int], None] | None = None) -> FilesPart:
    """Stream wp-config.php and the site files into zstd frames at ``target`` (atomic)."""
    partial = target.with_name(target.name + ".tmp")
    stats = TreeStats()
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        sink = HashingWriter(fd)
        try:
            with compressor(level, threads).stream_writer(sink, closefd=False, write_size=CHUNK) as out:
                in_tree = files == "all" and wp_config.parent == root
                if not in_tree:
                    write_file(out, wp_config, "wp-config.php", stats)
                    if files != "all":  # with `files: all` every regular file counts, the config too
                        stats.files -= 1
                        stats.bytes -= wp_config.stat().st_size
                write_tree(out, root, "" if files == "all" else "wp-content", excludes, skip, stats, progress)
            sink.close()
            # no fsync here: the archive is fsynced once, whole, before it gets its final name;
            # a files part cut short by a crash is noticed by the compress stage and redone
        finally:
            sink.abandon()
            os.close(fd)
        os.replace(partial, target)
    except OSError as exc:
        raise disk_error(partial, exc) from None
    finally:
        if partial.exists():
            partial.unlink()
    with _hash_lock:
        _hash_cache[str(target)] = (sink.written, sink.digest)
    return FilesPart(sink.written, stats)


def _resume_digest(path: Path, size: int):
    with _hash_lock:
        cached = _hash_cache.pop(str(path), None)
    if cached and cached[0] == size:
        return cached[1].copy()
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        remaining = size
        while remaining and (chunk := handle.read(min(CHUNK, remaining))):
            digest.update(chunk)
            remaining -= len(chunk)
    return digest


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def finish_archive(files_part: Path, files_part_size: int, tar_written: int, dump: Path,
                   manifest: dict, archive: Path, level: int, threads: int,
                   progress: Callable[[int], None] | None = None) -> tuple[str, int]:
    """Append database.sql, manifest.json and the end blocks to the files part, then give it
    the final name. Safe to repeat after a crash: the files part is cut back to its recorded
    size first, and the final name only appears once everything is on disk.
    """
    if files_part.stat().st_size < files_part_size:
        raise PartLost(f"{files_part} is shorter than its receipt says (lost in a crash)")
    try:
        os.truncate(files_part, files_part_size)
        digest = _resume_digest(files_part, files_part_size)
        fd = os.open(files_part, os.O_WRONLY | os.O_APPEND)
        sink = HashingWriter(fd, digest, files_part_size)
        try:
            written = tar_written
            with compressor(level, threads).stream_writer(sink, closefd=False, write_size=CHUNK) as out:
                st = dump.stat()
                info_head = _dump_header(st)
                out.write(info_head)
                with open(dump, "rb") as source:
                    while chunk := source.read(CHUNK):
                        out.write(chunk)
                        if progress:
                            progress(len(chunk))
                out.write(padding(st.st_size))
                written += len(info_head) + st.st_size + len(padding(st.st_size))
                body = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
                member = bytes_member("manifest.json", body, st.st_mtime)
                out.write(member)
                written += len(member)
                out.write(end_of_archive(written))
            sink.close()
            os.fsync(fd)  # the whole archive, files part included, before the final name
        finally:
            sink.abandon()
            os.close(fd)
        os.chmod(files_part, 0o600)
        os.replace(files_part, archive)
    except OSError as exc:
        if files_part.exists():
            os.truncate(files_part, files_part_size)
        raise disk_error(archive, exc) from None
    return sink.digest.hexdigest(), sink.written


def _dump_header(st: os.stat_result) -> bytes:
    info = tarfile.TarInfo("database.sql")
    info.size, info.mtime, info.mode = st.st_size, int(st.st_mtime), 0o600
    return header(info)


def write_sidecar(archive: Path, sha256: str) -> Path:
    """NAME.sha256 in `sha256sum` format, written atomically."""
    sidecar = archive.with_name(archive.name + ".sha256")
    write_atomic(sidecar, f"{sha256}  {archive.name}\n".encode())
    return sidecar


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write a small file under a temporary name and rename it into place."""
    partial = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except OSError as exc:
        if partial.exists():
            partial.unlink()
        raise disk_error(path, exc) from None

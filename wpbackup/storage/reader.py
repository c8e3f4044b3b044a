"""Reading an archive back as a stream: sha256 of the raw bytes, zstd across all frames,
tar members one by one, without ever holding a member in memory.

    raw bytes (file or S3 body) -> sha256 -> zstd (read_across_frames) -> tar members

Used by verify (read everything, check the manifest) and restore (extract safely).
"""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path
from typing import BinaryIO

import zstandard

from wpbackup.backup.tarstream import OWN_MEMBERS

CHUNK = 1 << 20


class HashingReader:
    """A file-like reader that hashes and counts every raw byte read through it."""

    def __init__(self, raw: BinaryIO):
        self.raw = raw
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.digest.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        """Hash whatever follows the tar's end (zero padding, or appended garbage)."""
        while self.read(CHUNK):
            pass


def open_members(raw: BinaryIO) -> tuple[HashingReader, tarfile.TarFile]:
    """A streaming TarFile over the zstd stream of ``raw`` (every frame, in order)."""
    hashed = HashingReader(raw)
    stream = zstandard.ZstdDecompressor().stream_reader(hashed, read_across_frames=True, read_size=CHUNK)
    return hashed, tarfile.open(fileobj=stream, mode="r|", bufsize=CHUNK)


SPECIAL = OWN_MEMBERS  # a site file of the same name is written as ./NAME (tarstream.member_name)


def is_site_file(member: tarfile.TarInfo, mode: str) -> bool:
    """A regular file of the site as the manifest counts it: not the dump or the manifest,
    and not wp-config.php unless the whole root was archived (`files: all`)."""
    if not member.isfile() or member.name in SPECIAL:
        return False
    return mode == "all" or member.name != "wp-config.php"


def file_sha256(path: Path) -> str:
    """The sha256 of a whole file, read in bounded chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sidecar_sha256(archive: Path) -> str | None:
    """The checksum in NAME.sha256 beside an archive, if readable."""
    try:
        return (archive.with_name(archive.name + ".sha256")).read_text().split()[0]
    except (OSError, IndexError):
        return None

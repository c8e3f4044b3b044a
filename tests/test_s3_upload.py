"""The upload function on its own against the S3 server: the single-request path in both
checksum modes, and a mode we do not know refused before anything is sent."""

from __future__ import annotations

import base64
import hashlib
import zlib

import pytest

from wpbackup.errors import BackupError
from wpbackup.s3 import upload_archive, verify_object


def _archive(tmp_path, size: int = 3000):
    path = tmp_path / "a.tar.zst"
    path.write_bytes(bytes(range(256)) * (size // 256))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("mode", ["none", "crc32"])
def test_single_put_carries_crc32_only_when_asked(s3, tmp_path, mode):
    path, sha = _archive(tmp_path)
    done = upload_archive(s3.s3, s3.bucket, "k/a.tar.zst", path, sha, {"site": "a"}, tmp_path / "state.json",
                          checksum=mode)
    assert (done.parts, done.verified_by) == (1, "crc32" if mode == "crc32" else "etag")
    head = s3.s3.head_object(Bucket=s3.bucket, Key="k/a.tar.zst", ChecksumMode="ENABLED")
    crc = base64.b64encode(zlib.crc32(path.read_bytes()).to_bytes(4, "big")).decode()
    if mode == "crc32":
        assert head["ChecksumCRC32"] == crc
    else:
        assert head.get("ChecksumCRC32") in (None, crc)  # a server may compute one itself


def test_unknown_checksum_mode_sends_nothing(s3, tmp_path):
    path, sha = _archive(tmp_path)
    with pytest.raises(BackupError, match="unknown S3 checksum mode 'md5'"):
        upload_archive(s3.s3, s3.bucket, "k/a.tar.zst", path, sha, {}, tmp_path / "state.json", checksum="md5")
    assert s3.s3.list_objects_v2(Bucket=s3.bucket).get("KeyCount") == 0


def test_a_crc32_the_provider_disagrees_with_fails_verification(s3, tmp_path):
    path, sha = _archive(tmp_path)
    upload_archive(s3.s3, s3.bucket, "k/a.tar.zst", path, sha, {}, tmp_path / "state.json", checksum="crc32")
    wrong = base64.b64encode((zlib.crc32(path.read_bytes()) ^ 1).to_bytes(4, "big")).decode()
    with pytest.raises(BackupError, match="CRC32 does not match"):
        verify_object(s3.s3, s3.bucket, "k/a.tar.zst", path.stat().st_size, sha, None, wrong)

"""The upload function on its own against the S3 server: the single-request path in both
checksum modes, and a mode we do not know refused before anything is sent."""

from __future__ import annotations

import base64
import hashlib
import json
import zlib
from pathlib import Path

import pytest

from wpbackup.config.settings import Settings
from wpbackup.errors import BackupError
from wpbackup.storage.s3 import make_client, verify_object
from wpbackup.storage.upload import upload_archive


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


@pytest.mark.parametrize("endpoint, mode, unsigned", [
    ("https://s3.example.test", "crc32", True), (None, "crc32", True),
    ("http://127.0.0.1:9000", "crc32", False), ("https://s3.example.test", "none", False),
])
def test_crc32_over_https_skips_the_payload_sha256(endpoint, mode, unsigned):
    """Over HTTPS botocore signs the body (another full read and SHA-256) unless Content-MD5 is
    sent; in CRC32 mode the signed CRC32 header covers the body instead."""
    here = Path("/nonexistent")
    settings = Settings(env_path=here / ".env", server_id="web-1", sites_file=here / "sites.json",
                        db_path=here / "backups.db", backup_dir=here / "backups", s3_endpoint_url=endpoint,
                        s3_checksum=mode)
    client = make_client(settings)
    assert (client.meta.config.s3 or {}).get("payload_signing_enabled") is (False if unsigned else None)


def test_a_full_object_crc_is_not_taken_for_the_composite(s3, tmp_path):
    """A provider that keeps a whole-object CRC32 for a multipart upload: the composite we
    computed cannot be compared with it, so the object is checked by download instead."""
    data = bytes(range(256)) * (5 * 4096) + b"tail"
    part = 5 << 20
    key = "k/full.tar.zst"
    sha = hashlib.sha256(data).hexdigest()
    upload = s3.s3.create_multipart_upload(Bucket=s3.bucket, Key=key, Metadata={"sha256": sha},
                                           ChecksumAlgorithm="CRC32", ChecksumType="FULL_OBJECT")["UploadId"]
    parts = []
    for number, start in enumerate(range(0, len(data), part), 1):
        chunk = data[start:start + part]
        crc = base64.b64encode(zlib.crc32(chunk).to_bytes(4, "big")).decode()
        done = s3.s3.upload_part(Bucket=s3.bucket, Key=key, UploadId=upload, PartNumber=number, Body=chunk,
                                 ChecksumCRC32=crc)
        parts.append({"PartNumber": number, "ETag": done["ETag"], "ChecksumCRC32": crc})
    s3.s3.complete_multipart_upload(Bucket=s3.bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts})
    head = s3.s3.head_object(Bucket=s3.bucket, Key=key, ChecksumMode="ENABLED")
    assert head.get("ChecksumType") == "FULL_OBJECT"
    composite = base64.b64encode(zlib.crc32(b"".join(base64.b64decode(p["ChecksumCRC32"]) for p in parts))
                                 .to_bytes(4, "big")).decode()
    assert verify_object(s3.s3, s3.bucket, key, len(data), sha, None, composite, composite=True) == "download"


def test_one_client_per_configuration_and_process(tmp_path):
    """Building a client parses botocore's S3 model (0.4 s of CPU): sites share one; another
    endpoint or key gets its own."""
    here = Path("/nonexistent")
    base = dict(env_path=here / ".env", server_id="web-1", sites_file=here / "sites.json", db_path=here / "db",
                backup_dir=here / "backups", s3_endpoint_url="http://127.0.0.1:9", s3_access_key_id="a",
                s3_secret_access_key="b")
    first = make_client(Settings(**base))
    assert make_client(Settings(**base)) is first
    assert make_client(Settings(**{**base, "s3_endpoint_url": "http://127.0.0.1:10"})) is not first
    assert make_client(Settings(**{**base, "s3_secret_access_key": "c"})) is not first
    assert first.meta.config.max_pool_connections >= 16  # two uploads of 8 parts in flight


def test_the_upload_state_is_rewritten_at_most_once_a_second_past_64_parts(tmp_path):
    """Each rewrite holds every part (quadratic at 10,000 parts); a part not yet recorded when
    the process dies is only sent again, and the final save records them all."""
    from wpbackup.storage.upload import _State

    path = tmp_path / "upload-state.json"
    state = _State(path)
    state.data = {"upload_id": "u", "parts": {}}
    for number in range(1, 65):
        state.data["parts"][str(number)] = f"etag{number}"
        state.save(soon=True)
        assert len(json.loads(path.read_text())["parts"]) == number  # few parts: after each one
    state.data["parts"]["65"] = "etag65"
    state.saved_at += 3600  # as if it had just been saved, whatever the machine's speed
    state.save(soon=True)
    assert len(json.loads(path.read_text())["parts"]) == 64
    state.saved_at -= 7200  # more than a second ago
    state.save(soon=True)
    assert len(json.loads(path.read_text())["parts"]) == 65
    state.data["parts"]["66"] = "etag66"
    state.saved_at += 7200
    state.save()  # the final save, whenever it comes
    assert len(json.loads(path.read_text())["parts"]) == 66


@pytest.mark.parametrize("size", [3000, 12 << 20])
def test_without_checksums_from_the_writing_an_archive_changed_since_is_not_recorded(s3, tmp_path, size):
    """The part checksums are read from the disk now (a copy-built upload, a restart): the
    archive's sha256 is read again beside the upload, and bytes that are no longer the ones
    written are refused, the multipart upload aborted."""
    from wpbackup.storage.upload import ArchiveChanged

    path, sha = _archive(tmp_path, size)
    with open(path, "r+b") as handle:  # one byte flipped after the sha256 was taken
        handle.seek(size // 2)
        byte = handle.read(1)
        handle.seek(size // 2)
        handle.write(bytes([byte[0] ^ 1]))
    with pytest.raises(ArchiveChanged, match="no longer holds the bytes"):
        upload_archive(s3.s3, s3.bucket, "k/a.tar.zst", path, sha, {}, tmp_path / "state.json",
                       part_size=5 << 20)
    assert s3.s3.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", []) == []
    assert s3.s3.list_objects_v2(Bucket=s3.bucket).get("KeyCount", 0) == 0

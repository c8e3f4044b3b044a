"""The upload's part checksums (MD5s for Content-MD5, or CRC32s with S3_CHECKSUM=crc32) are
computed while the archive is written: they are the checksums of the archive's parts whether
the compress stage runs in the process that wrote the files part or in a new one, S3 gets
exactly those, and an archive that changed on disk after it was written is refused, never
recorded as uploaded."""

from __future__ import annotations

import base64
import hashlib
import json
import zlib
from pathlib import Path

import pytest

from wpbackup.backup import archive, steps
from wpbackup.backup.archive import PartDigests

from .conftest import dumped_and_tarred, make_site

PART = 5 << 20
HEADER = {"none": "content-md5", "crc32": "x-amz-checksum-crc32"}


def _sum(data: bytes, algorithm: str) -> bytes:
    return hashlib.md5(data).digest() if algorithm == "md5" else zlib.crc32(data).to_bytes(4, "big")


def _slices(path: Path, part_size: int, algorithm: str) -> list[bytes]:
    sums = []
    with open(path, "rb") as handle:
        while chunk := handle.read(part_size):
            sums.append(_sum(chunk, algorithm))
    return sums


@pytest.mark.parametrize("algorithm", ["md5", "crc32"])
@pytest.mark.parametrize("total", [0, 1, 4096, 4096 * 3, 4096 * 3 + 1])
def test_part_digests_cut_at_part_boundaries_whatever_the_chunks(total, algorithm):
    data = (bytes(range(256)) * (total // 256 + 1))[:total]
    parts = PartDigests(4096, algorithm)
    for start in range(0, total, 1000):  # chunks that straddle the part boundaries
        parts.update(data[start:start + 1000])
    expected = [_sum(data[i:i + 4096], algorithm).hex() for i in range(0, total, 4096)]
    assert parts.hexdigests() == expected
    twin = parts.copy()
    twin.update(b"more")
    assert parts.hexdigests() == expected  # a copy moves on alone


def _written(install, s3, proxy, wordpress, tmp_path, mode: str, new_process: bool):
    """dump, tar and compress in this process; with ``new_process`` the compress stage finds
    no hash state of the tar stage, as after a crash, and reads the files part again."""
    install.use_s3(s3)
    install.env.update(S3_ENDPOINT_URL=proxy.url, S3_PART_SIZE_MB="5", S3_CHECKSUM=mode)
    install.sites.append({"name": "big", "path": str(make_site(tmp_path, wordpress, big_mb=22))})
    settings, site, run = dumped_and_tarred(install, "big")
    if new_process:
        archive._hash_cache.clear()
    made = steps.compress_stage(settings, site, run)
    return run, settings.backup_dir / made["archive"]


@pytest.mark.parametrize("mode, new_process", [("none", False), ("none", True), ("crc32", False), ("crc32", True)])
def test_the_part_checksums_written_with_the_archive_are_what_s3_gets(install, wordpress, s3, s3_proxy, tmp_path,
                                                                      mode, new_process):
    s3_proxy.check_sums = True
    run, path = _written(install, s3, s3_proxy, wordpress, tmp_path, mode, new_process)
    algorithm = "crc32" if mode == "crc32" else "md5"
    expected = _slices(path, PART, algorithm)
    assert len(expected) >= 4
    stored = json.loads((run.folder / "part-sums.json").read_text())
    assert (stored["part_size"], stored["algorithm"], stored["sums"]) == (PART, algorithm, [d.hex() for d in expected])

    result = install.doit("backup")
    assert result.returncode == 0, result.stdout + result.stderr
    sent = {number: headers[HEADER[mode]] for number, headers in s3_proxy.part_headers}
    assert sent == {number: base64.b64encode(d).decode() for number, d in enumerate(expected, 1)}
    assert len(install.rows("SELECT * FROM s3_archives")) == 1
    assert not (run.folder / "part-sums.json").exists()  # an intermediate: gone when the run closes


@pytest.mark.parametrize("mode, provider_checks", [("none", False), ("none", True), ("crc32", True), ("crc32", False)])
def test_an_archive_changed_after_it_was_written_is_not_uploaded(install, wordpress, s3, s3_proxy, tmp_path,
                                                                  mode, provider_checks):
    """moto stores what it gets and our ETag check finds the difference; AWS S3 answers
    BadDigest (the proxy does it here). Either way the upload stops, says why, and is aborted.
    With CRC32s on a provider that checks none (moto), the object's CRC32 gives it away."""
    s3_proxy.check_sums = provider_checks
    run, path = _written(install, s3, s3_proxy, wordpress, tmp_path, mode, False)
    with open(path, "r+b") as handle:  # a bit flipped on disk in the second part
        handle.seek(PART + 1234)
        byte = handle.read(1)
        handle.seek(PART + 1234)
        handle.write(bytes([byte[0] ^ 0x01]))
    result = install.doit("backup")
    out = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in out
    assert install.rows("SELECT * FROM s3_archives") == []
    if mode == "crc32" and not provider_checks:
        assert "the provider's CRC32 does not match the local archive" in out
        return  # the upload was complete when that showed: the object stays, unrecorded
    expected = "BadDigest): its bytes do not match" if provider_checks else "no longer holds the bytes written"
    assert expected in out and f"sha256sum -c {path.name}.sha256" in out and "the upload was aborted" in out
    assert s3.s3.list_objects_v2(Bucket=s3.bucket).get("KeyCount") == 0
    # nothing to resume from a damaged archive: the upload is aborted, so removing the run
    # folder (docs/troubleshooting.md) leaves no unfinished upload behind to bill
    assert s3.s3.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", []) == []
    assert not (run.folder / "upload-state.json").exists()


def test_an_abort_that_fails_is_kept_for_a_later_run(install, wordpress, s3, s3_proxy, tmp_path):
    s3_proxy.check_sums, s3_proxy.refuse_delete = True, True
    run, path = _written(install, s3, s3_proxy, wordpress, tmp_path, "none", False)
    with open(path, "r+b") as handle:
        handle.seek(PART + 99)
        byte = handle.read(1)
        handle.seek(PART + 99)
        handle.write(bytes([byte[0] ^ 0x01]))
    install.env["S3_MAX_ATTEMPTS"] = "1"
    result = install.doit("backup")
    assert result.returncode != 0 and "BadDigest" in result.stdout + result.stderr
    [upload] = s3.s3.list_multipart_uploads(Bucket=s3.bucket)["Uploads"]
    pending = json.loads((install.backup_dir / ".work" / "pending-aborts.json").read_text())
    assert pending == [[upload["Key"], upload["UploadId"]]]


def test_an_archive_cut_short_after_it_was_written_is_refused(install, wordpress, s3, s3_proxy, tmp_path):
    run, path = _written(install, s3, s3_proxy, wordpress, tmp_path, "none", False)
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.truncate(size - PART)  # one part fewer: the part checksums cannot cover it
    result = install.doit("backup")
    out = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in out
    assert f"is {size - PART} bytes, not the {size} it was written with" in out
    assert install.rows("SELECT * FROM s3_archives") == []
    assert s3.s3.list_objects_v2(Bucket=s3.bucket).get("KeyCount") == 0


def test_checksums_of_another_mode_are_not_used(install, wordpress, s3, s3_proxy, tmp_path):
    """Written with MD5s, uploaded after S3_CHECKSUM changed to crc32: the CRC32s are computed
    at upload time, and the provider's CRC32 check passes."""
    s3_proxy.check_sums = True
    run, path = _written(install, s3, s3_proxy, wordpress, tmp_path, "none", False)
    install.env["S3_CHECKSUM"] = "crc32"
    result = install.doit("backup")
    assert result.returncode == 0, result.stdout + result.stderr
    expected = _slices(path, PART, "crc32")
    sent = {number: headers["x-amz-checksum-crc32"] for number, headers in s3_proxy.part_headers}
    assert sent == {number: base64.b64encode(d).decode() for number, d in enumerate(expected, 1)}
    assert "verified (crc32)" in result.stdout + result.stderr
    assert len(install.rows("SELECT * FROM s3_archives")) == 1


def test_a_part_etag_that_is_no_md5_is_not_blamed_on_the_archive(install, wordpress, s3, s3_proxy, tmp_path):
    """A provider whose part ETags are not MD5s (AWS with SSE-KMS): the ETags differ from the
    MD5s taken while writing, but the part read back from disk matches them, so the archive is
    not called changed: the parts are accepted and the object is verified by reading it back
    (more in tests/test_s3_providers.py)."""
    s3_proxy.etag_not_md5 = True
    run, path = _written(install, s3, s3_proxy, wordpress, tmp_path, "none", False)
    result = install.doit("backup")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "with another checksum" not in out and "verified (download)" in out
    assert len(install.rows("SELECT * FROM s3_archives")) == 1
    assert s3.s3.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", []) == []

"""The second night: tonight's archive reuses last night's frames, and its upload copies those
bytes inside S3 (UploadPartCopy) and sends only the rest, through the test proxy in front of
moto. The object must still be the local archive byte for byte, verified before anything is
recorded; whatever is wrong with the copy source makes a plain upload, said once."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time

import pytest

from wpbackup.backup.frames import RACY

from .conftest import kill_group, make_site, wait_for
from .test_resume import _count

MIB = 1 << 20


def _setup(install, s3, proxy, wordpress, tmp_path):
    install.use_s3(s3)
    install.env.update(S3_ENDPOINT_URL=proxy.url, S3_PART_SIZE_MB="5", LOCAL_KEEP="3")
    root = make_site(tmp_path, wordpress)
    uploads = root / "wp-content" / "uploads" / "2025"
    uploads.mkdir(parents=True, exist_ok=True)
    for n in range(8):  # 32 MiB of media, each file a frame of its own
        (uploads / f"photo-{n}.jpg").write_bytes(os.urandom(4 * MIB))
    plugin = root / "wp-content" / "plugins" / "shop"
    plugin.mkdir(parents=True)
    for n in range(200):
        (plugin / f"part-{n:03d}.php").write_text(f"<?php // {n}\n" + "echo 'shop';\n" * 200)
    install.sites.append({"name": "big", "path": str(root)})
    time.sleep(RACY + 0.1)  # files changed just before they are read are never reused the next night
    return root


def _backup(install) -> str:
    result = install.doit("backup")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def _object_sha256(s3, key: str) -> str:
    digest = hashlib.sha256()
    for chunk in s3.s3.get_object(Bucket=s3.bucket, Key=key)["Body"].iter_chunks(MIB):
        digest.update(chunk)
    return digest.hexdigest()


def _newest(install):
    archive = install.archives()[-1]
    [row] = install.rows("SELECT filename, sha256 FROM s3_archives WHERE archive_name = ?", archive.name)
    return archive, row


def _first_night(install, s3, proxy, wordpress, tmp_path):
    root = _setup(install, s3, proxy, wordpress, tmp_path)
    _backup(install)
    first_sent = proxy.sent()
    assert proxy.part_copies() == 0
    return root, first_sent


@pytest.mark.parametrize("checksum", ["none", "crc32"])
def test_second_night_copies_the_unchanged_bytes_and_the_object_is_the_archive(install, wordpress, s3, s3_proxy,
                                                                                  tmp_path, mariadb, checksum):
    install.env["S3_CHECKSUM"] = checksum
    s3_proxy.check_sums = True
    root, first_sent = _first_night(install, s3, s3_proxy, wordpress, tmp_path)
    first = install.archives()[-1]
    (root / "wp-content" / "uploads" / "2025" / "photo-3.jpg").write_bytes(os.urandom(4 * MIB))  # in the middle
    (root / "wp-content" / "plugins" / "shop" / "part-100.php").unlink()
    shutil.copytree(root / "wp-content" / "plugins" / "shop", root / "wp-content" / "plugins" / "cart")
    before = s3_proxy.sent()
    output = _backup(install)
    sent = s3_proxy.sent() - before
    archive, row = _newest(install)
    assert archive != first
    assert s3_proxy.part_copies() >= 2
    assert sent < archive.stat().st_size * 0.6, (sent, archive.stat().st_size)
    assert _count(install, "INFO", "%unchanged files%copied from " + first.name + "%") == 1
    assert _count(install, "INFO", "%parts copied inside S3 from the previous archive%") == 1
    assert _object_sha256(s3, row["filename"]) == row["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert "SUMMARY big: OK" in output
    check = install.doit("verify", "--remote", "--site", "big")
    assert check.returncode == 0, check.stdout + check.stderr
    archive.unlink()  # the restore must come from the copy-built S3 object
    target = tmp_path / "restored"
    database = f"{wordpress.db_name}_copybuilt_{checksum}"
    mariadb.sql(f"DROP DATABASE IF EXISTS {database}; CREATE DATABASE {database}; "
                f"GRANT ALL ON {database}.* TO '{wordpress.db_user}'@'127.0.0.1'")
    restored = install.doit("restore", "--site", "big", "--target", str(target), "--database", database)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    for path in (root / "wp-content").rglob("*"):
        if path.is_file():
            assert (target / path.relative_to(root)).read_bytes() == path.read_bytes()
    assert not (target / "wp-content" / "plugins" / "shop" / "part-100.php").exists()


@pytest.mark.parametrize("damage", ["deleted", "replaced"])
def test_last_nights_object_gone_or_different_means_a_plain_upload(install, wordpress, s3, s3_proxy, tmp_path,
                                                                   damage):
    root, _ = _first_night(install, s3, s3_proxy, wordpress, tmp_path)
    first, row = _newest(install)
    if damage == "deleted":
        s3.s3.delete_object(Bucket=s3.bucket, Key=row["filename"])
    else:  # same size and metadata, other bytes: only the copied parts' ETags can tell
        head = s3.s3.head_object(Bucket=s3.bucket, Key=row["filename"])
        s3.s3.put_object(Bucket=s3.bucket, Key=row["filename"], Body=os.urandom(head["ContentLength"]),
                         Metadata=head["Metadata"])
    (root / "wp-content" / "uploads" / "2025" / "photo-1.jpg").write_bytes(os.urandom(4 * MIB))
    _backup(install)
    archive, row = _newest(install)
    assert _object_sha256(s3, row["filename"]) == hashlib.sha256(archive.read_bytes()).hexdigest()
    said = "%is no longer at%" if damage == "deleted" else "%does not hold tonight's bytes%"
    assert _count(install, "INFO", said) == 1
    assert s3.s3.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", []) == []


def test_a_provider_refusing_part_copies_gets_the_whole_archive(install, wordpress, s3, s3_proxy, tmp_path):
    _first_night(install, s3, s3_proxy, wordpress, tmp_path)
    s3_proxy.refuse_part_copy = True
    before = s3_proxy.sent()
    output = _backup(install)
    archive, row = _newest(install)
    assert s3_proxy.sent() - before >= archive.stat().st_size
    assert _object_sha256(s3, row["filename"]) == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert _count(install, "INFO", "%refused to copy parts%NotImplemented%") == 1
    assert output.count("refused to copy parts") >= 1
    assert s3.s3.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", []) == []


def test_kill_in_a_copy_built_upload_then_resume(install, wordpress, s3, s3_proxy, tmp_path):
    root, _ = _first_night(install, s3, s3_proxy, wordpress, tmp_path)
    (root / "wp-content" / "uploads" / "2025" / "photo-6.jpg").write_bytes(os.urandom(4 * MIB))
    seen = s3_proxy.parts_seen
    s3_proxy.mode, s3_proxy.after_parts = "hang", seen + 1
    proc = install.start("backup")

    def one_part_stored() -> bool:
        states = list((install.backup_dir / ".work").glob("big/*/upload-state.json"))
        try:
            state = json.loads(states[0].read_text())
            return bool(state["parts"]) and bool(state.get("plan"))
        except (ValueError, KeyError, OSError, IndexError):
            return False

    wait_for(lambda: s3_proxy.hanging.is_set() and one_part_stored(), proc)
    kill_group(proc)
    s3_proxy.mode = "pass"
    s3_proxy.release.set()
    _backup(install)
    archive, row = _newest(install)
    assert _object_sha256(s3, row["filename"]) == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert _count(install, "INFO", "%parts resumed%parts copied inside S3%") == 1
    assert s3.s3.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", []) == []

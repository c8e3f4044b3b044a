"""Resume: a run that died half-way (S3 refusing, kill -9 mid-upload, mid-dump, mid-
compression) is finished by the next `doit backup`: same archive, no second dump, one
object, one catalog row, and never a partial file under the final name."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
import zlib
from pathlib import Path

from .conftest import dumped_and_tarred, kill_group, make_site, stalling_dump, wait_for


def _count(install, status: str, like: str) -> int:
    return len(install.rows("SELECT id FROM backup_log WHERE status = ? AND details LIKE ?", status, like))


def _objects(s3) -> list[dict]:
    return s3.s3.list_objects_v2(Bucket=s3.bucket).get("Contents", [])


def _setup_upload(install, s3, proxy, wordpress, tmp_path) -> None:
    install.use_s3(s3)
    install.env.update(S3_ENDPOINT_URL=proxy.url, S3_PART_SIZE_MB="5")
    install.sites.append({"name": "big", "path": str(make_site(tmp_path, wordpress, big_mb=22))})


def test_upload_refused_midway_resumes_from_stored_parts(install, wordpress, s3, s3_proxy, tmp_path):
    _setup_upload(install, s3, s3_proxy, wordpress, tmp_path)
    s3_proxy.mode, s3_proxy.after_parts = "refuse", 2
    first = install.doit("backup")
    assert first.returncode != 0 and "Traceback" not in first.stdout + first.stderr  # failed, not crashed
    assert "SUMMARY big: FAILED at upload" in first.stdout + first.stderr
    assert install.rows("SELECT * FROM s3_archives") == []
    assert _count(install, "ERROR", "upload failed%") == 1
    [archive] = install.archives()
    uploads = s3.s3.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", [])
    assert len(uploads) == 1

    s3_proxy.mode = "pass"
    second = install.doit("backup")
    assert second.returncode == 0, second.stdout + second.stderr
    assert install.archives() == [archive]
    [obj] = _objects(s3)
    assert obj["Key"].endswith(archive.name) and obj["Size"] == archive.stat().st_size
    assert len(install.rows("SELECT * FROM s3_archives")) == 1
    assert _count(install, "INFO", "%2 parts resumed%") == 1
    assert _count(install, "INFO", "database % dumped%") == 1
    assert _count(install, "START", "%") == 1
    assert s3.s3.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", []) == []


def test_kill_9_during_upload_resumes_without_new_dump(install, wordpress, s3, s3_proxy, tmp_path):
    _setup_upload(install, s3, s3_proxy, wordpress, tmp_path)
    s3_proxy.mode, s3_proxy.after_parts = "hang", 1
    proc = install.start("backup")

    def one_part_stored() -> bool:
        states = list((install.backup_dir / ".work").glob("big/*/upload-state.json"))
        try:
            return bool(states and json.loads(states[0].read_text())["parts"])
        except (ValueError, KeyError, OSError):
            return False

    wait_for(lambda: s3_proxy.hanging.is_set() and one_part_stored(), proc)
    kill_group(proc)
    s3_proxy.mode = "pass"
    s3_proxy.release.set()
    [archive] = install.archives()

    result = install.doit("backup")
    assert result.returncode == 0, result.stdout + result.stderr
    assert install.archives() == [archive]
    [obj] = _objects(s3)
    assert obj["Size"] == archive.stat().st_size
    assert len(install.rows("SELECT * FROM s3_archives")) == 1
    assert _count(install, "INFO", "%parts resumed%") == 1
    assert _count(install, "INFO", "database % dumped%") == 1
    assert _count(install, "INFO", "archive % written%") == 1
    assert _count(install, "SUCCESS", "%") == 1


def test_kill_9_during_dump_leaves_no_final_file_and_resumes_same_run(install, wordpress, tmp_path):
    bindir, marker = stalling_dump(tmp_path)
    install.add_site("blog", wordpress)
    proc = install.start("backup", env={"PATH": f"{bindir}:{os.environ['PATH']}"})
    wait_for(marker.exists, proc)
    kill_group(proc)
    work = install.backup_dir / ".work" / "blog"
    stamp = json.loads((work / "run.json").read_text())["stamp"]
    assert not (work / stamp / "database.sql").exists()
    assert install.archives() == []

    result = install.doit("backup")
    assert result.returncode == 0, result.stdout + result.stderr
    [archive] = install.archives()
    assert archive.name == f"blog-backup-{stamp}.tar.zst"
    assert _count(install, "START", "%") == 1
    assert subprocess.run(["tar", "--zstd", "-tf", str(archive)], capture_output=True).returncode == 0


def _reader_waits(fifo: Path) -> int | None:
    """A write end of ``fifo`` once some process opened it for reading, else None: the event
    that the compress stage reached the dump."""
    try:
        return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # ENXIO: nobody reads it yet
        return None


def test_kill_9_during_compression_never_leaves_a_final_named_partial(install, wordpress, mariadb, tmp_path):
    """Killed while the files are compressed (a 1 TiB sparse upload keeps the tar stage busy for
    minutes, whatever the machine), then while the dump is appended (the compress stage blocks
    on a FIFO put in the dump's place): never a final-named partial, and the third run finishes
    the same archive without dumping again."""
    mariadb.sql(f"CREATE DATABASE killtest; GRANT ALL ON killtest.* TO '{wordpress.db_user}'@'127.0.0.1'")
    mariadb.sql("CREATE TABLE killtest.wp_big (id INT PRIMARY KEY AUTO_INCREMENT, v LONGTEXT); "
                "INSERT INTO killtest.wp_big (v) SELECT SHA2(RAND(), 512) FROM seq_1_to_2000;", database="killtest")
    root = make_site(tmp_path, wordpress)
    wordpress.write_config("killtest", root)
    huge = root / "wp-content" / "uploads" / "huge.bin"
    with open(huge, "wb") as handle:
        handle.truncate(1 << 40)
    install.sites.append({"name": "slow", "path": str(root)})
    work = install.backup_dir / ".work" / "slow"

    def folder() -> Path:
        return work / json.loads((work / "run.json").read_text())["stamp"]

    proc = install.start("backup")  # kill while the files are being compressed
    wait_for(lambda: (work / "run.json").exists() and (folder() / "dump.json").exists()
             and (folder() / "files.part.zst.tmp").exists(), proc)
    kill_group(proc)
    assert install.archives() == []
    assert not (folder() / "files.part.zst").exists() and not (folder() / "tar.json").exists()
    huge.unlink()
    dump_receipt = folder() / "dump.json"
    dumped = (dump_receipt.read_bytes(), dump_receipt.stat().st_mtime_ns)

    dump = folder() / "database.sql"
    real_dump = tmp_path / "database.sql"
    os.replace(dump, real_dump)
    os.mkfifo(dump)
    proc = install.start("backup")  # kill while the dump is appended to the archive
    writers: list[int] = []  # held open until the kill: closing it would end the dump early
    try:
        wait_for(lambda: writers.append(_reader_waits(dump)) or writers[-1] is not None, proc)
        assert (folder() / "tar.json").exists()
        kill_group(proc)
    finally:
        for fd in writers:
            if fd is not None:
                os.close(fd)
        dump.unlink()
        os.replace(real_dump, dump)
    assert install.archives() == []
    assert not (folder() / "compress.json").exists()

    result = install.doit("backup")
    assert result.returncode == 0, result.stdout + result.stderr
    [archive] = install.archives()
    assert archive.name == f"slow-backup-{folder().name}.tar.zst"
    assert (dump_receipt.read_bytes(), dump_receipt.stat().st_mtime_ns) == dumped  # no second dump
    listing = subprocess.run(["tar", "--zstd", "-tvf", str(archive)], capture_output=True, text=True)
    assert listing.returncode == 0 and "database.sql" in listing.stdout and "manifest.json" in listing.stdout
    check = subprocess.run(["sha256sum", "-c", archive.name + ".sha256"], cwd=install.backup_dir)
    assert check.returncode == 0


def test_sigterm_saves_doit_state_and_stops_children(install, wordpress, tmp_path):
    bindir, marker = stalling_dump(tmp_path)
    install.add_site("blog", wordpress)
    proc = install.start("backup", env={"PATH": f"{bindir}:{os.environ['PATH']}"})
    work = install.backup_dir / ".work" / "blog"
    wait_for(lambda: marker.exists() and any(work.glob("*/tar.json")), proc)
    time.sleep(1)  # doit's main thread records tar:blog's success a moment after its receipt
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=30)
    assert proc.returncode != 0
    assert "terminated by signal 15" in output
    state = install.root / ".doit.db"
    import sqlite3

    saved = {row[0] for row in sqlite3.connect(state).execute("SELECT task_id FROM doit")}
    assert "tar:blog" in saved and "dump:blog" not in saved
    leftover = subprocess.run(["pgrep", "-f", str(bindir)], capture_output=True, text=True).stdout
    assert leftover.strip() == "" or all(
        not os.path.exists(f"/proc/{pid}") for pid in leftover.split())
    result = install.doit("backup")
    assert result.returncode == 0, result.stdout + result.stderr
    assert _count(install, "INFO", "% files % archived%") == 1


def test_stale_open_run_is_abandoned_and_cleaned(install, wordpress, s3, s3_proxy, tmp_path):
    _setup_upload(install, s3, s3_proxy, wordpress, tmp_path)
    s3_proxy.mode, s3_proxy.after_parts = "refuse", 1
    assert install.doit("backup").returncode != 0
    [old] = install.archives()
    assert len(s3.s3.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", [])) == 1
    old_stamp = old.name.split("-backup-")[1][:-len(".tar.zst")]
    time.sleep(1.1)
    s3_proxy.mode = "pass"
    install.env["STALE_RUN_HOURS"] = "0.0001"
    result = install.doit("backup")
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(install.archives()) == 2  # the old complete archive is kept, a new one made
    assert _count(install, "INFO", f"run {old_stamp} was older than STALE_RUN_HOURS%") == 1
    assert not (install.backup_dir / ".work" / "big" / old_stamp).exists()
    assert s3.s3.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", []) == []
    [obj] = _objects(s3)
    assert old_stamp not in obj["Key"]


def test_files_part_cut_short_by_a_crash_is_archived_again(install, wordpress, tmp_path):
    """The files part is not fsynced (the archive is, once): if a crash cut it short, the
    compress stage notices, drops the tar receipt, and the next run redoes the tar stage."""
    from wpbackup.backup import steps
    from wpbackup.errors import BackupError

    install.sites.append({"name": "blog", "path": str(make_site(tmp_path, wordpress, big_mb=2))})
    settings, site, run = dumped_and_tarred(install, "blog")
    part = run.folder / "files.part.zst"
    os.truncate(part, part.stat().st_size // 2)
    try:
        steps.compress_stage(settings, site, run)
    except BackupError as exc:
        assert "the next run archives the files again" in str(exc)
    else:
        raise AssertionError("a damaged files part was accepted")
    assert run.receipt("tar") is None and not part.exists()
    assert install.archives() == []
    result = install.doit("backup")
    assert result.returncode == 0, result.stdout + result.stderr
    [archive] = install.archives()
    assert archive.name == f"blog-backup-{run.stamp}.tar.zst"
    assert subprocess.run(["tar", "--zstd", "-tf", str(archive)], capture_output=True).returncode == 0


def _crc32(data: bytes) -> bytes:
    return zlib.crc32(data).to_bytes(4, "big")


def test_crc32_mode_checks_every_part_and_resumes(install, wordpress, s3, s3_proxy, tmp_path):
    """S3_CHECKSUM=crc32: every part carries its CRC32, the provider ends up with a composite
    CRC32 of the whole archive, and a refused upload still resumes from the stored parts."""
    _setup_upload(install, s3, s3_proxy, wordpress, tmp_path)
    install.env["S3_CHECKSUM"] = "crc32"
    s3_proxy.mode, s3_proxy.after_parts = "refuse", 2
    assert install.doit("backup").returncode != 0
    s3_proxy.mode = "pass"
    second = install.doit("backup")
    assert second.returncode == 0, second.stdout + second.stderr
    assert _count(install, "INFO", "%2 parts resumed%") == 1
    assert _count(install, "INFO", "%verified (crc32)%") == 1  # the provider's CRC, no download
    [archive] = install.archives()
    data = archive.read_bytes()
    part = 5 << 20
    sums = [_crc32(data[i:i + part]) for i in range(0, len(data), part)]
    assert {n for n, _ in s3_proxy.part_headers} == set(range(1, len(sums) + 1))
    for number, headers in s3_proxy.part_headers:  # both runs, refused attempts included
        assert base64.b64decode(headers["x-amz-checksum-crc32"]) == sums[number - 1], number
    [obj] = _objects(s3)
    head = s3.s3.head_object(Bucket=s3.bucket, Key=obj["Key"], ChecksumMode="ENABLED")
    assert head["ChecksumCRC32"].split("-")[0] == base64.b64encode(_crc32(b"".join(sums))).decode()


def test_changing_checksum_mode_mid_upload_starts_it_afresh(install, wordpress, s3, s3_proxy, tmp_path):
    _setup_upload(install, s3, s3_proxy, wordpress, tmp_path)
    s3_proxy.mode, s3_proxy.after_parts = "refuse", 2
    assert install.doit("backup").returncode != 0
    assert len(s3.s3.list_multipart_uploads(Bucket=s3.bucket)["Uploads"]) == 1
    s3_proxy.mode = "pass"
    install.env["S3_CHECKSUM"] = "crc32"
    second = install.doit("backup")
    assert second.returncode == 0, second.stdout + second.stderr
    assert _count(install, "INFO", "%parts resumed%") == 0
    assert _count(install, "INFO", "database % dumped%") == 1
    assert s3.s3.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", []) == []
    [obj] = _objects(s3)
    head = s3.s3.head_object(Bucket=s3.bucket, Key=obj["Key"], ChecksumMode="ENABLED")
    assert "ChecksumCRC32" in head


def test_changed_configuration_abandons_the_open_run(install, wordpress, tmp_path):
    """A run that failed (here: the database refused the login, while the files part was
    written) is not resumed once the operator changed what shapes the archive: its files part
    holds the old tree, and the manifest would describe the new settings beside it."""
    root = make_site(tmp_path, wordpress)
    (root / "wp-content" / "uploads" / "private.bin").write_bytes(os.urandom(1000))
    site = {"name": "blog", "path": str(root), "db": {"password": "not-the-password"}}
    install.sites.append(site)
    first = install.doit("backup")
    assert first.returncode != 0 and "dump failed" in first.stdout + first.stderr
    [old_stamp] = [p.name for p in (install.backup_dir / ".work" / "blog").iterdir() if p.is_dir()]
    assert (install.backup_dir / ".work" / "blog" / old_stamp / "tar.json").exists()
    del site["db"]
    site["exclude"] = ["wp-content/uploads/private.bin"]
    second = install.doit("backup")
    assert second.returncode == 0, second.stdout + second.stderr
    assert _count(install, "INFO", f"run {old_stamp} was started with another configuration%abandoned%") == 1
    assert not (install.backup_dir / ".work" / "blog" / old_stamp).exists()
    [archive] = install.archives()
    assert old_stamp not in archive.name
    listing = subprocess.run(["tar", "--zstd", "-tf", str(archive)], capture_output=True, text=True, check=True)
    assert "wp-content/uploads/private.bin" not in listing.stdout.splitlines()
    manifest = json.loads(subprocess.run(["tar", "--zstd", "-xOf", str(archive), "manifest.json"],
                                         capture_output=True, check=True).stdout)
    assert "wp-content/uploads/private.bin" in manifest["files"]["excluded"]


def test_open_run_that_recorded_its_result_counts_as_closed(tmp_path):
    """Killed between writing its catalog receipt and closing run.json: the run is done, so
    the next backup starts a new one instead of finding nothing to do until it goes stale."""
    from datetime import datetime, timezone

    from wpbackup.backup import runs

    now = datetime(2026, 12, 1, 3, 0, tzinfo=timezone.utc)
    run = runs.plan_run(tmp_path, "blog", now, 20, "fp")
    runs.open_run(run)
    assert runs.plan_run(tmp_path, "blog", now, 20, "fp").resumed
    run.write_receipt("catalog", {"archive": "x"})
    later = runs.plan_run(tmp_path, "blog", now, 20, "fp")
    assert not later.resumed and later.abandoned is None and later.stamp > run.stamp

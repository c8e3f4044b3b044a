"""Restore and verify: every backup can come back, and a bad one is caught, not trusted."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import uuid

import pytest
import zstandard

from wpbackup.fleet import catalog

from .conftest import REPO, make_site
from .servers import WordPress


def _out(result) -> str:
    return result.stdout + result.stderr


@pytest.fixture
def own_wordpress(mariadb, tmp_path):
    """A WordPress of this test alone (its own copy and database), free to be destroyed."""
    name = f"wp{uuid.uuid4().hex[:8]}"
    site = WordPress(mariadb, tmp_path / "own", name=name)
    mariadb.sql(f"GRANT ALL ON `wpbackup\\_verify\\_%`.* TO '{site.db_user}'@'127.0.0.1'; "
                f"GRANT ALL ON `{name}\\_alt`.* TO '{site.db_user}'@'127.0.0.1'")
    return site


def _backup(install, site: WordPress, s3=None) -> None:
    site.read()  # WordPress's first page load writes options (widgets, cron): done before the dump
    if s3 is not None:
        install.use_s3(s3)
    install.add_site("blog", site)
    result = install.doit("backup")
    assert result.returncode == 0, _out(result)


def test_round_trip_from_s3_after_losing_database_and_files(install, own_wordpress, mariadb, s3):
    site = own_wordpress
    _backup(install, site, s3)
    before = site.read()
    upload = site.upload.read_bytes()
    for archive in install.archives():
        archive.unlink()
    mariadb.sql(f"DROP DATABASE {site.db_name}")
    shutil.rmtree(site.path / "wp-content")
    assert site.read() == {}

    result = install.doit("restore", "--site", "blog")
    assert result.returncode == 0, _out(result)
    assert "from s3" in _out(result)
    after = site.read()
    assert after == before and after["siteurl"] == "http://wp.test"
    assert any("😀" in title for title in after["titles"])
    assert site.upload.read_bytes() == upload
    assert not list((site.path.parent).glob(".site.restore-*"))
    assert install.rows("SELECT * FROM backup_log WHERE details LIKE 'restored %'")


def test_restore_into_another_database_and_folder_leaves_the_original(install, own_wordpress, mariadb, tmp_path):
    site = own_wordpress
    _backup(install, site)
    before = site.read()
    other = tmp_path / "elsewhere"
    result = install.doit("restore", "--site", "blog", "--target", str(other), "--database", f"{site.db_name}_alt")
    assert result.returncode == 0, _out(result)
    assert site.read() == before
    rel = site.upload.relative_to(site.path)
    assert (other / rel).read_bytes() == site.upload.read_bytes()
    assert (other / "wp-config.php").exists()
    titles = mariadb.sql("SELECT post_title FROM wp_posts WHERE post_type='post' ORDER BY ID",
                         database=f"{site.db_name}_alt")
    assert "😀" in titles

    again = install.doit("restore", "--site", "blog", "--target", str(other), "--database", f"{site.db_name}_alt")
    assert again.returncode != 0 and "add --force" in _out(again)
    forced = install.doit("restore", "--site", "blog", "--target", str(other), "--database", f"{site.db_name}_alt",
                          "--force")
    assert forced.returncode == 0, _out(forced)


def _manifest(files: int = 0, size: int = 0, sql: bytes = b"") -> bytes:
    import hashlib

    return json.dumps({"site": "blog", "files": {"mode": "wp-content", "count": files, "bytes": size},
                       "database": {"sha256": hashlib.sha256(sql).hexdigest(), "bytes": len(sql),
                                    "tables": {}}}).encode()


def _craft(path, evil: list[tarfile.TarInfo]) -> str:
    """A .tar.zst holding a valid-looking backup plus hostile members; returns its sha256."""
    import hashlib

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add(name, data=b"x", **attrs):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            for key, value in attrs.items():
                setattr(info, key, value)
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
        add("wp-config.php", b"<?php\n")
        add("wp-content/ok.txt", b"fine")
        for member in evil:
            tar.addfile(member, io.BytesIO(b"evil") if member.isfile() else None)
        add("database.sql", b"SELECT 1;\n")
        add("manifest.json", _manifest(1, 4, b"SELECT 1;\n"))
    data = zstandard.ZstdCompressor().compress(buffer.getvalue())
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _member(name, kind=tarfile.REGTYPE, linkname="", size=4):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    info.size = size if kind == tarfile.REGTYPE else 0
    return info


@pytest.mark.parametrize("case, evil", [
    ("traversal", [_member("wp-content/../../outside/evil.txt")]),
    ("absolute", [_member("/tmp/wpbackup-absolute-evil.txt")]),
    ("symlink escape", [_member("wp-content/link", tarfile.SYMTYPE, "../../outside"),
                        _member("wp-content/link/evil.txt")]),
    ("hardlink escape", [_member("wp-content/hard", tarfile.LNKTYPE, "../../outside/secret.txt")]),
    ("device file", [_member("wp-content/disk", tarfile.CHRTYPE)]),
    ("link through a later link", [_member("wp-content/t", tarfile.SYMTYPE, "s/.."),
                                   _member("wp-content/s", tarfile.SYMTYPE, ".."),
                                   _member("wp-content/t/evil.txt")]),
])
def test_malicious_archives_are_refused_and_nothing_is_written_outside(install, wordpress, tmp_path, case, evil):
    install.add_site("blog", wordpress)
    install.write()
    install.backup_dir.mkdir(mode=0o700)
    name = "blog-backup-20260101-000000.tar.zst"
    sha256 = _craft(install.backup_dir / name, evil)
    catalog.log_event(install.db_path, "SUCCESS", "crafted", site="blog", server_id="web-1",
                      stamp="20260101-000000", archive_name=name, archive_sha256=sha256, archive_size=1)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("keep")
    target = tmp_path / "target" / "site"
    result = install.doit("restore", "--site", "blog", "--files-only", "--target", str(target))
    assert result.returncode != 0, _out(result)
    assert "refused archive member" in _out(result) and "nothing was changed" in _out(result)
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").read_text() == "keep"
    assert not list((tmp_path / "target").iterdir())  # no target, no leftover temporary folder
    import os

    assert not os.path.exists("/tmp/wpbackup-absolute-evil.txt")
    checked = install.doit("verify", "--site", "blog")  # verify refuses what restore refuses
    assert checked.returncode != 0 and "restore would refuse it: refused archive member" in _out(checked)


def test_corrupted_archive_is_reported_by_verify_and_refused_by_restore(install, own_wordpress, s3, mariadb):
    site = own_wordpress
    _backup(install, site, s3)
    assert install.doit("verify", "--remote").returncode == 0
    [archive] = install.archives()
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    local = install.doit("verify")
    assert local.returncode != 0 and "verify failed" in _out(local) and "local:" in _out(local)
    [row] = install.rows("SELECT filename FROM s3_archives")
    head = s3.s3.head_object(Bucket=s3.bucket, Key=row["filename"])
    s3.s3.put_object(Bucket=s3.bucket, Key=row["filename"], Body=bytes(data), Metadata=head["Metadata"])
    remote = install.doit("verify", "--remote")
    assert remote.returncode != 0 and f"s3://{s3.bucket}/" in _out(remote)
    assert catalog.failed_s3_verifications(install.db_path, "web-1") == {archive.name}  # prune reads this
    before = site.read()
    restored = install.doit("restore", "--site", "blog", "--force")
    assert restored.returncode != 0
    assert "does not match its recorded sha256: nothing was changed" in _out(restored)
    assert site.read() == before
    assert len(install.rows("SELECT * FROM backup_log WHERE status='ERROR' AND details LIKE 'verify failed%'")) == 2


def test_restore_test_passes_on_a_good_archive_and_fails_when_a_table_is_missing(install, own_wordpress, tmp_path):
    site = own_wordpress
    _backup(install, site)
    good = install.doit("verify", "--restore-test")
    assert good.returncode == 0, _out(good)
    assert "restore test" in _out(good)

    [archive] = install.archives()
    work = tmp_path / "repack"
    work.mkdir()
    subprocess.run(["tar", "--zstd", "-xf", str(archive)], cwd=work, check=True)
    sql = (work / "database.sql").read_text()
    start = sql.index("DROP TABLE IF EXISTS `wp_comments`")
    end = sql.index("DROP TABLE IF EXISTS", start + 10)
    (work / "database.sql").write_text(sql[:start] + sql[end:])
    manifest = json.loads((work / "manifest.json").read_text())
    import hashlib

    raw = (work / "database.sql").read_bytes()
    manifest["database"].update(sha256=hashlib.sha256(raw).hexdigest(), bytes=len(raw))
    (work / "manifest.json").write_text(json.dumps(manifest))
    name = "blog-backup-20990101-000000.tar.zst"
    members = ["wp-config.php", "wp-content", "database.sql", "manifest.json"]
    subprocess.run(["tar", "--zstd", "-cf", str(install.backup_dir / name), *members], cwd=work, check=True)
    sha256 = hashlib.sha256((install.backup_dir / name).read_bytes()).hexdigest()
    (install.backup_dir / f"{name}.sha256").write_text(f"{sha256}  {name}\n")
    catalog.log_event(install.db_path, "SUCCESS", "repacked without wp_comments", site="blog", server_id="web-1",
                      stamp="20990101-000000", archive_name=name, archive_sha256=sha256, archive_size=len(raw))
    plain = install.doit("verify")
    assert plain.returncode == 0, _out(plain)  # checksum and manifest are consistent...
    bad = install.doit("verify", "--restore-test")
    assert bad.returncode != 0  # ...but the restored database lacks a table
    assert "table wp_comments" in _out(bad)


def test_damaged_local_copy_falls_back_to_the_intact_s3_copy(install, own_wordpress, s3, mariadb, tmp_path):
    site = own_wordpress
    _backup(install, site, s3)
    [archive] = install.archives()
    data = bytearray(archive.read_bytes())
    data[100] ^= 0xFF
    archive.write_bytes(bytes(data))
    result = install.doit("restore", "--site", "blog", "--target", str(tmp_path / "copy"),
                          "--database", f"{site.db_name}_alt")
    assert result.returncode == 0, _out(result)
    assert "from s3" in _out(result) and "trying the S3 copy" in _out(result)
    rel = site.upload.relative_to(site.path)
    assert (tmp_path / "copy" / rel).read_bytes() == site.upload.read_bytes()


def test_whole_root_archive_never_replaces_a_non_empty_folder_without_force(install, wordpress, tmp_path):
    install.add_site("blog", wordpress, files="all", exclude=["wp-includes", "wp-admin"])
    result = install.doit("backup")
    assert result.returncode == 0, _out(result)
    install.sites[0]["files"] = "wp-content"  # the configuration changed since that backup
    target = tmp_path / "live"
    (target / "wp-content").mkdir(parents=True)  # empty wp-content: the usual check passes
    (target / "index.php").write_text("<?php // the live site")
    refused = install.doit("restore", "--site", "blog", "--files-only", "--target", str(target))
    assert refused.returncode != 0 and "holds a whole WordPress root" in _out(refused)
    assert (target / "index.php").read_text() == "<?php // the live site"
    assert not list(tmp_path.glob(".live.restore-*"))


def test_set_id_bits_are_cleared_on_restored_files_but_folders_keep_theirs(install, wordpress, tmp_path):
    """A set-user-ID program planted in a hacked site must not come back with the bit set (as
    root, tar would restore it with its owner); a folder's set-group-ID bit is a host's choice
    and stays. Other mode bits come back as archived."""
    root = make_site(tmp_path, wordpress)
    shared = root / "wp-content" / "uploads" / "shared"
    shared.mkdir()
    os.chmod(shared, 0o2775)
    planted = root / "wp-content" / "uploads" / "planted"
    planted.write_bytes(b"#!/bin/sh\nid\n")
    os.chmod(planted, 0o6755)
    script = root / "wp-content" / "uploads" / "tool.sh"
    script.write_text("echo ok\n")
    os.chmod(script, 0o750)
    install.sites.append({"name": "blog", "path": str(root)})
    assert install.doit("backup").returncode == 0
    target = tmp_path / "back"
    result = install.doit("restore", "--site", "blog", "--files-only", "--target", str(target))
    assert result.returncode == 0, _out(result)
    assert "set-user/group-ID bits cleared on 1 file" in _out(result)
    uploads = target / "wp-content" / "uploads"
    assert stat.S_IMODE((uploads / "planted").stat().st_mode) == 0o755
    assert stat.S_IMODE((uploads / "tool.sh").stat().st_mode) == 0o750
    if os.geteuid() == 0:  # only root restores archived modes as they are
        assert stat.S_IMODE((uploads / "shared").stat().st_mode) == 0o2775


# --- a restore that cannot half-succeed ---------------------------------------------------------

def _rows(mariadb, sql: str, database: str | None = None) -> list[list[str]]:
    return [line.split("\t") for line in mariadb.sql(sql, database).splitlines() if line]


def _db_state(mariadb, name: str) -> dict:
    """Everything of a database a restore could change: tables and views with a checksum of
    their rows, triggers, views' and routines' definitions, events."""
    s = f"'{name}'"
    tables = dict(_rows(mariadb, f"SELECT TABLE_NAME, TABLE_TYPE FROM information_schema.TABLES "
                                 f"WHERE TABLE_SCHEMA = {s}"))
    base = [t for t, kind in tables.items() if kind != "VIEW"]
    sums = dict(_rows(mariadb, "CHECKSUM TABLE " + ", ".join(f"`{name}`.`{t}`" for t in base))) if base else {}
    return {
        "tables": {t: (kind, sums.get(f"{name}.{t}")) for t, kind in tables.items()},
        "triggers": _rows(mariadb, "SELECT TRIGGER_NAME, EVENT_OBJECT_TABLE, ACTION_STATEMENT FROM "
                                   f"information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = {s} ORDER BY 1"),
        "views": _rows(mariadb, f"SELECT TABLE_NAME, VIEW_DEFINITION FROM information_schema.VIEWS "
                                f"WHERE TABLE_SCHEMA = {s} ORDER BY 1"),
        "routines": _rows(mariadb, "SELECT ROUTINE_TYPE, ROUTINE_NAME, ROUTINE_DEFINITION FROM "
                                   f"information_schema.ROUTINES WHERE ROUTINE_SCHEMA = {s} ORDER BY 2"),
        "events": _rows(mariadb, f"SELECT EVENT_NAME, EVENT_DEFINITION FROM information_schema.EVENTS "
                                 f"WHERE EVENT_SCHEMA = {s} ORDER BY 1"),
    }


def _tree(root) -> dict:
    """Every entry below ``root``: files (their sha256), link targets, folders."""
    import hashlib

    found = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            found[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            found[rel] = ("dir",)
        else:
            found[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
    return found


def _leftovers(mariadb, *folders) -> list[str]:
    """What a restore may have left of its own: scratch databases, set-aside tables,
    temporary or old folders."""
    found = [r[0] for r in _rows(mariadb, "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA "
                                          "WHERE SCHEMA_NAME LIKE '%\\_wpb\\_%'")]
    found += [".".join(r) for r in _rows(mariadb, "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES "
                                                  "WHERE TABLE_NAME LIKE 'wpb\\_old\\_%'")]
    for folder in folders:
        for pattern in (".wpbackup-*", ".*.restore-*", ".*.old-*", ".wp-config.php.restore-*"):
            found += [str(p) for p in folder.glob(pattern)]
    return found


def _snapshot(mariadb, site: WordPress) -> dict:
    return {"wordpress": site.read(), "db": _db_state(mariadb, site.db_name), "files": _tree(site.path)}


def _exited() -> subprocess.Popen:
    """A process that has ended: its PID names what a killed restore left."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    return dead


def _allow_scratch(mariadb, site: WordPress) -> None:
    """Let the site's user create the scratch databases (`NAME_wpb_*`)."""
    mariadb.sql(f"GRANT ALL ON `{site.db_name}\\_wpb\\_%`.* TO '{site.db_user}'@'127.0.0.1'")


PATHS = {"scratch": "loaded into a scratch database, then renamed into place",
         "aside": "the replaced tables kept aside in the database until the files were in place"}


def _change_live_site(mariadb, site: WordPress) -> None:
    """After the backup: what a restore must undo (or, when it fails, keep)."""
    mariadb.sql("UPDATE wp_options SET option_value = 'http://changed.test' WHERE option_name = 'siteurl'; "
                "UPDATE wp_posts SET post_title = 'Changed after the backup' WHERE post_title = 'Third post'",
                database=site.db_name)
    site.upload.write_bytes(b"changed after the backup")
    (site.path / "wp-content" / "uploads" / "new-after-backup.txt").write_text("new")


def _repack(install, archive, edit_sql) -> str:
    """The archive again with database.sql changed by ``edit_sql``, its manifest and checksum
    made consistent, as the newest success in the catalog; returns its name."""
    import hashlib

    work = archive.parent / "repack"
    work.mkdir()
    subprocess.run(["tar", "--zstd", "-xf", str(archive)], cwd=work, check=True)
    sql = edit_sql((work / "database.sql").read_bytes())
    (work / "database.sql").write_bytes(sql)
    manifest = json.loads((work / "manifest.json").read_text())
    manifest["database"].update(sha256=hashlib.sha256(sql).hexdigest(), bytes=len(sql))
    (work / "manifest.json").write_text(json.dumps(manifest))
    name = "blog-backup-20990101-000000.tar.zst"
    members = [m for m in ("wp-config.php", "wp-content", "database.sql", "manifest.json") if (work / m).exists()]
    subprocess.run(["tar", "--zstd", "-cf", str(install.backup_dir / name), *members], cwd=work, check=True)
    shutil.rmtree(work)
    data = (install.backup_dir / name).read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    (install.backup_dir / f"{name}.sha256").write_text(f"{sha256}  {name}\n")
    catalog.log_event(install.db_path, "SUCCESS", "repacked", site="blog", server_id="web-1",
                      stamp="20990101-000000", archive_name=name, archive_sha256=sha256, archive_size=len(data))
    return name


def _broken_near_its_end(sql: bytes) -> bytes:
    """Every table loaded, then a statement the server refuses."""
    end = sql.rindex(b"/*!40103 SET TIME_ZONE=@OLD_TIME_ZONE */;")
    return sql[:end] + b"INSERT INTO wp_options VALUES (this is not sql);\n" + sql[end:]


@pytest.mark.parametrize("path", ["scratch", "aside"])
def test_a_load_failing_near_its_end_leaves_database_and_files_as_they_were(install, own_wordpress, mariadb, path):
    site = own_wordpress
    if path == "scratch":
        _allow_scratch(mariadb, site)
    _backup(install, site)
    [archive] = install.archives()
    _repack(install, archive, _broken_near_its_end)
    _change_live_site(mariadb, site)
    before = _snapshot(mariadb, site)
    assert before["wordpress"]["siteurl"] == "http://changed.test"

    result = install.doit("restore", "--site", "blog", "--force")
    assert result.returncode != 0
    assert "load database.sql failed" in _out(result) and "ERROR 1064" in _out(result)
    if path == "aside":  # the dump ran in the live database, so there was something to undo
        assert "put back as they were" in _out(result)
    assert _snapshot(mariadb, site) == before
    assert _leftovers(mariadb, site.path, site.path.parent, site.path / "wp-content") == []


class TableHold:
    """A transaction that has read wp_options: RENAME TABLE waits until it ends."""

    def __init__(self, mariadb, database: str):
        self.proc = subprocess.Popen(
            ["mariadb", "--no-defaults", f"--socket={mariadb.socket}", "-uroot", "--batch", "--skip-column-names",
             "--unbuffered", database], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.proc.stdin.write("START TRANSACTION;\nSELECT COUNT(*) FROM wp_options;\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip().isdigit()  # the lock is held

    def release(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("COMMIT;\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


def _wait_for_waiting_rename(mariadb, restore) -> None:
    """Until the restore's RENAME TABLE waits for the held lock (files and scratch ready)."""
    import time

    deadline = time.monotonic() + 120
    while not _rows(mariadb, "SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE 'RENAME TABLE%' "
                             "AND STATE LIKE 'Waiting for table metadata lock%'"):
        assert restore.poll() is None, restore.stdout.read()
        assert time.monotonic() < deadline, "the restore never reached its RENAME TABLE"
        time.sleep(0.1)


@pytest.mark.parametrize("path", ["scratch", "aside"])
def test_a_files_swap_failing_after_the_tables_moved_puts_the_database_back(install, own_wordpress, mariadb,
                                                                            path):
    """The files swap fails for real: wp-content becomes immutable (chattr +i, which stops
    even root from renaming it) while the restore waits in its RENAME TABLE."""
    site = own_wordpress
    if path == "scratch":
        _allow_scratch(mariadb, site)
    _backup(install, site)
    _change_live_site(mariadb, site)
    before = _snapshot(mariadb, site)
    content = site.path / "wp-content"
    hold = TableHold(mariadb, site.db_name)
    restore = install.start("restore", "--site", "blog", "--force")
    try:
        _wait_for_waiting_rename(mariadb, restore)
        subprocess.run(["chattr", "+i", str(content)], check=True)
        hold.release()
        output = restore.communicate(timeout=300)[0]
    finally:
        subprocess.run(["chattr", "-i", str(content)], check=True)
        hold.release()
        if restore.poll() is None:
            restore.kill()
            restore.wait()
    assert restore.returncode != 0
    assert "cannot swap the restored files into place" in output and "Operation not permitted" in output
    assert "put back as they were" in output
    assert _snapshot(mariadb, site) == before
    assert _leftovers(mariadb, site.path, site.path.parent, content) == []


def test_sigterm_while_the_tables_wait_to_move_changes_nothing(install, own_wordpress, mariadb):
    import signal

    site = own_wordpress
    _allow_scratch(mariadb, site)
    _backup(install, site)
    _change_live_site(mariadb, site)
    before = _snapshot(mariadb, site)
    hold = TableHold(mariadb, site.db_name)
    restore = install.start("restore", "--site", "blog", "--force")
    try:
        _wait_for_waiting_rename(mariadb, restore)
        restore.send_signal(signal.SIGTERM)
        output = restore.communicate(timeout=120)[0]
    finally:
        if restore.poll() is None:
            restore.kill()
            restore.wait()
        hold.release()  # only now: a RENAME left waiting in the server would run here
    assert restore.returncode != 0
    assert "stopped by a signal" in output
    assert not _rows(mariadb, "SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE 'RENAME TABLE%'")
    assert _snapshot(mariadb, site) == before
    assert _leftovers(mariadb, site.path, site.path.parent, site.path / "wp-content") == []


@pytest.mark.parametrize("mode", ["wp-content", "all"])
def test_a_mount_point_gets_its_contents_replaced(install, wordpress, tmp_path, mode):
    """A folder that is a mount point (here a bind mount) cannot be renamed: what is in it is
    replaced, and it stays mounted."""
    if os.geteuid() != 0:
        pytest.skip("bind mounts need root")
    root = make_site(tmp_path, wordpress)
    (root / "wp-content" / "uploads" / "keep.txt").write_text("archived")
    install.sites.append({"name": "blog", "path": str(root), "files": mode})
    assert install.doit("backup").returncode == 0
    folder = root if mode == "all" else root / "wp-content"
    archived = _tree(folder)
    backing = tmp_path / "backing"
    shutil.copytree(folder, backing, symlinks=True)
    subprocess.run(["mount", "--bind", str(backing), str(folder)], check=True)
    try:
        (folder / "wp-content" if mode == "all" else folder).joinpath("stray.txt").write_text("after the backup")
        shutil.rmtree(folder / ("wp-content/uploads" if mode == "all" else "uploads") / "2026")
        dead = _exited()
        moved = folder / f".wpbackup-old-{dead.pid}"  # what a restore killed mid-swap moved aside
        (moved / "uploads").mkdir(parents=True)
        (moved / "uploads" / "only-copy.jpg").write_text("the site before that restore")
        result = install.doit("restore", "--site", "blog", "--files-only", "--force")
        assert result.returncode == 0, _out(result)
        assert "a mount point: its contents replaced" in _out(result)
        assert str(folder) in open("/proc/self/mountinfo").read()  # still mounted
        assert (moved / "uploads" / "only-copy.jpg").exists() and f"{moved} holds the files" in _out(result)
        shutil.rmtree(moved)
        assert _tree(folder) == archived
        assert _tree(backing) == archived  # the mounted filesystem holds the restored files
    finally:
        subprocess.run(["umount", str(folder)], check=True)
    assert not list(tmp_path.glob(".*.restore-*"))


def _definer(site: WordPress) -> str:
    return f"DEFINER='{site.db_user}'@'127.0.0.1'"


def _add_database_objects(mariadb, site: WordPress) -> None:
    """A trigger on wp_posts, a view, a view of that view, a procedure (as the site's user)."""
    who = _definer(site)
    mariadb.sql(
        "CREATE TABLE wp_audit (post_id BIGINT, title TEXT); "
        f"CREATE {who} TRIGGER wp_posts_audit AFTER INSERT ON wp_posts FOR EACH ROW "
        "INSERT INTO wp_audit VALUES (NEW.ID, NEW.post_title); "
        f"CREATE {who} VIEW wp_published AS SELECT ID, post_title FROM wp_posts "
        "WHERE post_status = 'publish' AND post_type = 'post'; "
        f"CREATE {who} VIEW wp_published_titles AS SELECT post_title FROM wp_published; "
        f"CREATE {who} PROCEDURE wp_count_published() SELECT COUNT(*) FROM wp_published;", database=site.db_name)


@pytest.mark.parametrize("path", ["scratch", "aside"])
def test_triggers_views_and_routines_come_back_working(install, own_wordpress, mariadb, path):
    site = own_wordpress
    if path == "scratch":
        _allow_scratch(mariadb, site)
    _add_database_objects(mariadb, site)
    _backup(install, site)
    archived = _snapshot(mariadb, site)
    who = _definer(site)
    mariadb.sql("DROP TRIGGER wp_posts_audit; DROP VIEW wp_published_titles; "
                f"CREATE OR REPLACE {who} VIEW wp_published AS SELECT ID, post_title FROM wp_posts; "
                f"DROP PROCEDURE wp_count_published; CREATE {who} PROCEDURE wp_count_published() SELECT 0;",
                database=site.db_name)
    _change_live_site(mariadb, site)

    result = install.doit("restore", "--site", "blog", "--force")
    assert result.returncode == 0, _out(result)
    assert PATHS[path] in _out(result)
    assert _snapshot(mariadb, site) == archived
    definitions = mariadb.sql(f"SHOW CREATE VIEW {site.db_name}.wp_published; "
                              f"SHOW CREATE VIEW {site.db_name}.wp_published_titles")
    assert f"`{site.db_name}`.`wp_posts`" in definitions and "_wpb_" not in definitions
    published = mariadb.sql("SELECT COUNT(*) FROM wp_posts WHERE post_status = 'publish' AND post_type = 'post'",
                            database=site.db_name).strip()
    assert int(published) >= 4  # Hello world! and the three test posts
    assert mariadb.sql("SELECT COUNT(*) FROM wp_published_titles", database=site.db_name).strip() == published
    assert mariadb.sql("CALL wp_count_published()", database=site.db_name).strip() == published
    mariadb.sql("INSERT INTO wp_posts (post_title, post_content, post_excerpt, to_ping, pinged, "
                "post_content_filtered) VALUES ('fires the trigger', '', '', '', '', '')", database=site.db_name)
    assert "fires the trigger" in mariadb.sql("SELECT title FROM wp_audit", database=site.db_name)
    assert _leftovers(mariadb, site.path, site.path.parent, site.path / "wp-content") == []


def _add_another_install(mariadb, site: WordPress) -> dict:
    """A shop (prefix wp_shop_) and a table of no install, added after the blog's backup."""
    mariadb.sql(
        "CREATE TABLE wp_shop_options (option_id INT AUTO_INCREMENT PRIMARY KEY, option_name VARCHAR(191), "
        "option_value LONGTEXT); INSERT INTO wp_shop_options (option_name, option_value) "
        "VALUES ('siteurl', 'http://shop.test'); "
        "CREATE TABLE wp_shop_orders (id INT PRIMARY KEY, total INT); "
        "INSERT INTO wp_shop_orders VALUES (1, 10), (2, 20), (3, 30); "
        "CREATE TABLE inventory (sku VARCHAR(20) PRIMARY KEY, stock INT); "
        "INSERT INTO inventory VALUES ('a', 1), ('b', 2);", database=site.db_name)
    state = _db_state(mariadb, site.db_name)
    return {t: state["tables"][t] for t in ("wp_shop_options", "wp_shop_orders", "inventory")}


@pytest.mark.parametrize("path", ["scratch", "aside"])
def test_force_into_a_shared_database_leaves_the_other_installs_tables_alone(install, own_wordpress, mariadb,
                                                                            path):
    site = own_wordpress
    if path == "scratch":
        _allow_scratch(mariadb, site)
    _backup(install, site)
    wordpress_before = site.read()
    others = _add_another_install(mariadb, site)
    _change_live_site(mariadb, site)

    result = install.doit("restore", "--site", "blog", "--force", "--db-only")
    assert result.returncode == 0, _out(result)
    assert "kept 3 table(s) the archive does not hold: inventory, wp_shop_options, wp_shop_orders" in _out(result)
    after = _db_state(mariadb, site.db_name)
    assert {t: after["tables"][t] for t in others} == others
    assert site.read() == wordpress_before
    assert _leftovers(mariadb) == []


def test_the_sites_own_user_without_create_database_restores_through_tables_kept_aside(install, own_wordpress,
                                                                                      mariadb):
    """WordPress's usual user: all rights on its own database, none to create another."""
    site = own_wordpress
    grants = mariadb.sql(f"SHOW GRANTS FOR '{site.db_user}'@'127.0.0.1'")
    assert "ON *.*" not in grants.replace("GRANT USAGE ON *.*", "")  # no global CREATE
    _backup(install, site)
    archived = _snapshot(mariadb, site)
    _change_live_site(mariadb, site)
    result = install.doit("restore", "--site", "blog", "--force")
    assert result.returncode == 0, _out(result)
    assert "may not create databases" in _out(result) and PATHS["aside"] in _out(result)
    assert _snapshot(mariadb, site) == archived
    assert _leftovers(mariadb, site.path, site.path.parent, site.path / "wp-content") == []



@pytest.mark.parametrize("path", ["scratch", "aside"])
def test_what_a_killed_restore_left_in_the_database_is_dropped_or_named(install, own_wordpress, mariadb, path):
    """A loaded copy a killed restore left is dropped (it never was live); tables it had set
    aside are kept and named (maybe the only copy of them as they were); a running restore's,
    and another database's, are left alone."""
    from wpbackup.restore.dbswap import _base36

    site = own_wordpress
    if path == "scratch":
        _allow_scratch(mariadb, site)
    _backup(install, site)
    archived = _snapshot(mariadb, site)
    dead = _exited()
    token, running = f"{_base36(dead.pid)}x0a", f"{_base36(os.getpid())}x0d"
    db = site.db_name
    if path == "scratch":
        made = {f"{db}_wpb_new_{token}": True, f"{db}_wpb_old_{token}": True, f"{db}_wpb_old_{running}": True,
                f"{db}_wpb_new_{running}": True, f"{db}x_wpb_new_{token}": True,  # a running one's; another db's
                f"{db}_wpb_old_{token[:-1]}b": False}  # an empty one: nothing set aside yet
        for name, with_table in made.items():
            table = f"; CREATE TABLE `{name}`.wp_posts (ID INT)" if with_table else ""
            mariadb.sql(f"CREATE DATABASE `{name}`{table}")
        kept = [f"{db}_wpb_old_{token}", f"{db}_wpb_old_{running}", f"{db}_wpb_new_{running}", f"{db}x_wpb_new_{token}"]
        named = f"database {db}_wpb_old_{token} holds the 1 table a restore that was killed had set aside"
        others = [f"{db}_wpb_old_{running}", f"{db}x_wpb_new_{token}"]
    else:
        for table in (f"wpb_old_{token}_wp_posts", f"wpb_old_{token}_wp_options", f"wpb_old_{running}_wp_posts"):
            mariadb.sql(f"CREATE TABLE `{table}` (ID INT)", database=db)
        kept = [f"{db}.wpb_old_{token}_wp_options", f"{db}.wpb_old_{token}_wp_posts",
                f"{db}.wpb_old_{running}_wp_posts"]
        named = f"2 tables wpb_old_{token}_* in database {db}: set aside by a restore that was killed"
        others = [f"wpb_old_{running}"]
    try:
        result = install.doit("restore", "--site", "blog", "--db-only", "--force")
        out = _out(result)
        assert result.returncode == 0 and PATHS[path] in out, out
        assert named in out and "kept: drop" in out, out
        warnings = [line for line in out.splitlines() if "killed" in line]
        assert len(warnings) == len(set(warnings)) and not any(o in w for o in others for w in warnings), out
        assert sorted(_leftovers(mariadb)) == sorted(kept)
    finally:
        for name in kept:
            if path == "scratch":
                mariadb.sql(f"DROP DATABASE IF EXISTS `{name}`")
            else:
                mariadb.sql(f"DROP TABLE IF EXISTS `{name.split('.', 1)[1]}`", database=db)
    assert _snapshot(mariadb, site) == archived


def test_scratch_names_fit_in_64_characters_and_are_cut_alike_whatever_the_pid(monkeypatch):
    from wpbackup.restore import dbswap

    for pid in (1, 99_999, 4_194_304):
        monkeypatch.setattr(dbswap.os, "getpid", lambda pid=pid: pid)
        token = dbswap.new_token()
        assert len(token) <= dbswap.TOKEN_WIDTH and int(token.split("x")[0], 36) == pid
        for live in ("wp", "w" * 47, "w" * 64):
            name = f"{dbswap.scratch_base(live)}_wpb_old_{token}"
            assert len(name) <= 64 and name.startswith(live[:47])
            assert len(dbswap.aside_name("t" * 64, token)) <= 64
    assert dbswap.scratch_base("w" * 64) == "w" * 47

@pytest.mark.parametrize("exists", [True, False])
def test_a_database_the_user_may_not_use_gets_a_message_saying_so_and_what_to_run(install, own_wordpress,
                                                                                 mariadb, exists):
    site = own_wordpress
    _backup(install, site)
    other = f"{site.db_name}_other"
    if exists:
        mariadb.sql(f"CREATE DATABASE {other}; CREATE TABLE {other}.precious (id INT); "
                    f"INSERT INTO {other}.precious VALUES (7)")
    try:
        before = _db_state(mariadb, other) if exists else None
        result = install.doit("restore", "--site", "blog", "--db-only", "--force", "--database", other)
        output = _out(result)
        assert result.returncode != 0
        assert f"user '{site.db_user}'@'127.0.0.1' may not use database `{other}`" in output
        assert f"GRANT ALL ON `{other.replace('_', chr(92) + '_')}`.* TO '{site.db_user}'@'127.0.0.1'" in output
        assert "--admin" in output and "wrong password" not in output and "Traceback" not in output
        if exists:
            assert _db_state(mariadb, other) == before
        else:
            assert not _rows(mariadb, f"SHOW DATABASES LIKE '{other}'")
    finally:
        mariadb.sql(f"DROP DATABASE IF EXISTS {other}")


def test_admin_loads_as_the_servers_root_over_its_socket(install, own_wordpress, mariadb):
    site = own_wordpress
    _add_database_objects(mariadb, site)
    _backup(install, site)
    archived = _snapshot(mariadb, site)
    _change_live_site(mariadb, site)
    result = install.doit("restore", "--site", "blog", "--force", "--admin", env={"MYSQL_UNIX_PORT": mariadb.socket})
    assert result.returncode == 0, _out(result)
    assert PATHS["scratch"] in _out(result)  # root may create the scratch databases
    assert _snapshot(mariadb, site) == archived
    assert _leftovers(mariadb, site.path, site.path.parent, site.path / "wp-content") == []


def test_admin_is_refused_clearly_when_not_root_or_for_another_machines_database(tmp_path):
    from wpbackup.config.sites import DbSettings
    from wpbackup.config.wpconfig import DbHost
    from wpbackup.database.dblogin import admin_login
    from wpbackup.errors import BackupError

    remote = DbSettings("blog", "wp", "secret", DbHost("db.example.test", 3306))
    with pytest.raises(BackupError, match="the site's database is on db.example.test:3306"):
        admin_login(remote)
    if os.geteuid() != 0:
        pytest.skip("the unprivileged half needs root to drop privileges")
    probe = ("from wpbackup.database.dblogin import admin_login\nfrom wpbackup.config.sites import DbSettings\n"
             "from wpbackup.config.wpconfig import DbHost\nfrom wpbackup.errors import BackupError\n"
             "try:\n    admin_login(DbSettings('blog', 'wp', 'secret', DbHost('localhost')))\n"
             "except BackupError as exc:\n    print(exc)\n")
    import sys

    result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
                             probe], capture_output=True, text=True, cwd=REPO)
    assert "only root may do: run the restore as root" in result.stdout, result.stdout + result.stderr


def test_a_bad_database_name_is_refused_before_anything(install, wordpress, mariadb):
    install.add_site("blog", wordpress)
    assert install.doit("backup").returncode == 0
    before = mariadb.sql("SHOW DATABASES")
    for name in ["blog\n", "a b", "x;DROP", "a" * 65]:  # (an empty one: the test below)
        result = install.doit("restore", "--site", "blog", "--db-only", "--database", name)
        out = _out(result)
        assert result.returncode != 0 and "Traceback" not in out, out
        assert "--database" in out and "use letters, digits" in out, out
    assert mariadb.sql("SHOW DATABASES") == before




def test_what_a_killed_restore_left_is_cleared_or_named_on_the_next_one(install, wordpress, tmp_path):
    """After a restore killed outright, the next one removes its half-done extraction (it was
    never the site) but keeps the tree it had moved aside (maybe the only copy of the site as it
    was), saying where it is; what a restore still running uses is left alone."""
    site = make_site(tmp_path, wordpress)
    install.sites.append({"name": "blog", "path": str(site)})
    assert install.doit("backup").returncode == 0
    dead = _exited()
    partial = site / f".wp-content.restore-{dead.pid}"
    moved = site / f".wp-content.old-{dead.pid}"
    running = site / f".wp-content.restore-{os.getpid()}"
    config = site / f".wp-config.php.restore-{dead.pid}"
    for folder in (partial, moved, running):
        (folder / "uploads").mkdir(parents=True)
        (folder / "uploads" / "a.jpg").write_bytes(b"x" * 1000)
    config.write_text("<?php // half copied")
    result = install.doit("restore", "--site", "blog", "--files-only", "--force")
    out = _out(result)
    assert result.returncode == 0, out
    assert not partial.exists() and not config.exists()
    assert (moved / "uploads" / "a.jpg").exists() and str(moved) in out and "it is kept" in out
    assert (running / "uploads" / "a.jpg").exists()



def test_a_whole_root_restore_refuses_to_remove_what_a_killed_restore_moved_aside_in_it(install, wordpress,
                                                                                      tmp_path):
    root = make_site(tmp_path, wordpress)
    install.sites.append({"name": "blog", "path": str(root), "files": "all"})
    assert install.doit("backup").returncode == 0
    dead = _exited()
    moved = root / f".wp-content.old-{dead.pid}"
    (moved / "uploads").mkdir(parents=True)
    (moved / "uploads" / "only-copy.jpg").write_text("the site before that restore")
    (root / "index.php").write_text("<?php // live")
    result = install.doit("restore", "--site", "blog", "--files-only", "--force")
    out = _out(result)
    assert result.returncode != 0 and f"move it out of {root}" in out, out
    assert (moved / "uploads" / "only-copy.jpg").exists() and (root / "index.php").read_text() == "<?php // live"
    assert not list(tmp_path.glob(".site.restore-*"))

def test_only_files_of_processes_that_are_gone_count_as_leftovers(tmp_path):
    """A restore clears the credentials files and dumps killed restores left in the shared
    work folder, never those of another restore still running (another site's)."""
    from wpbackup.backup.children import left_by_the_dead

    dead = _exited()
    names = [f"client-{dead.pid}-k3j2.cnf", "client-x8f2ab1q.cnf", f"database-{dead.pid}.sql",  # gone
             "client-1-a1b2.cnf", "database-1.sql", f"client-{os.getpid()}-zz.cnf"]  # running
    for name in names:
        (tmp_path / name).write_text("x")
    found = {p.name for pattern in ("client-*.cnf", "database-*.sql") for p in left_by_the_dead(tmp_path, pattern)}
    assert found == set(names[:3])

def test_an_option_given_an_empty_value_is_refused_not_taken_for_its_default(install, wordpress, mariadb, tmp_path):
    """`--database="$DB"` with DB unset must not restore over the site's own database, nor
    `--target=` over its own folder; run.sh refuses an empty argument doit would crash on."""
    install.add_site("blog", wordpress)
    assert install.doit("backup").returncode == 0
    before, config = mariadb.sql("SHOW DATABASES"), (wordpress.path / "wp-config.php").read_bytes()
    for option in ("--database=", "--target=", "--archive=", "--database= "):
        result = install.doit("restore", "--site", "blog", "--force", option)
        out = _out(result)
        assert result.returncode != 0 and "Traceback" not in out, out
        assert f"{option.strip().rstrip('=')} was given an empty value" in out, out
    verify = install.doit("verify", "--site=")
    assert verify.returncode != 0 and "--site was given an empty value" in _out(verify)
    assert mariadb.sql("SHOW DATABASES") == before
    assert (wordpress.path / "wp-config.php").read_bytes() == config
    script = subprocess.run(["bash", str(REPO / "run.sh"), "restore", "--site", "blog", "--database", ""],
                            capture_output=True, text=True, cwd=tmp_path)
    assert script.returncode == 2 and "empty argument" in script.stderr and "Traceback" not in script.stderr

def test_a_root_holding_its_own_database_sql_and_manifest_json_restores_both_and_the_real_dump(
        install, own_wordpress, mariadb, tmp_path, s3):
    """`files: all` archives the root as it is: a stale dump left in the web root, a web app's
    manifest.json (and the folders beside them whose names begin the same) must neither be taken
    for the archive's own members (verify's counts, restore's database) nor be left out of the
    restore."""
    site = own_wordpress
    stale = b"-- a stale dump somebody left in the web root\nDROP TABLE IF EXISTS wp_posts;\n"
    app_manifest = b'{"name": "The Blog", "start_url": "/"}\n'
    (site.path / "database.sql").write_bytes(stale)
    (site.path / "manifest.json").write_bytes(app_manifest)
    (site.path / "database.sql.d").mkdir()  # a neighbour that only starts with the name
    (site.path / "manifest.json.d").mkdir()
    (site.path / "manifest.json.d" / "icons.json").write_text("[]")
    site.read()
    install.use_s3(s3)
    install.add_site("blog", site, files="all")
    result = install.doit("backup")
    assert result.returncode == 0, _out(result)
    before = site.read()
    [archive] = install.archives()
    names = subprocess.run(["tar", "--zstd", "-tf", str(archive)], check=True, capture_output=True,
                           text=True).stdout.splitlines()
    assert names.count("database.sql") == 1 and names.count("manifest.json") == 1
    assert "./database.sql" in names and "./manifest.json" in names
    assert json.loads(subprocess.run(["tar", "--zstd", "-xOf", str(archive), "manifest.json"], check=True,
                                     capture_output=True).stdout)["site"] == "blog"
    verified = install.doit("verify", "--site", "blog", "--remote")
    assert verified.returncode == 0, _out(verified)

    other = tmp_path / "elsewhere"
    restored = install.doit("restore", "--site", "blog", "--target", str(other), "--database", f"{site.db_name}_alt")
    assert restored.returncode == 0, _out(restored)
    assert (other / "database.sql").read_bytes() == stale
    assert (other / "manifest.json").read_bytes() == app_manifest
    assert (other / "manifest.json.d" / "icons.json").read_text() == "[]"
    titles = mariadb.sql("SELECT post_title FROM wp_posts WHERE post_type='post' ORDER BY ID",
                         database=f"{site.db_name}_alt")
    assert "😀" in titles
    assert site.read() == before

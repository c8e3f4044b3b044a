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

from wpbackup import catalog

from .conftest import make_site
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
    assert not (tmp_path / "wpbackup-absolute-evil.txt").exists()
    assert not list((tmp_path / "target").iterdir())  # no target, no leftover temporary folder
    import os

    assert not os.path.exists("/tmp/wpbackup-absolute-evil.txt")


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

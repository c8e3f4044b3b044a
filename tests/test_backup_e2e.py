"""End to end through the CLI: a real WordPress backed up to S3 and proven restorable."""

from __future__ import annotations

import json
import stat
import subprocess


def test_backup_to_s3_is_complete_and_restorable(install, wordpress, mariadb, s3, tmp_path):
    install.use_s3(s3)
    install.add_site("blog", wordpress)
    result = install.doit("backup")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "SUMMARY blog: OK" in output

    [archive] = install.archives()
    assert archive.name.startswith("blog-backup-") and archive.name.endswith(".tar.zst")
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    assert stat.S_IMODE(install.backup_dir.stat().st_mode) == 0o700
    sidecar = archive.with_name(archive.name + ".sha256")
    assert subprocess.run(["sha256sum", "-c", sidecar.name], cwd=install.backup_dir,
                          capture_output=True).returncode == 0
    sha256 = sidecar.read_text().split()[0]

    # the object sits at SERVER_ID/YYYY/MM/DD/NAME with its metadata
    stamp = archive.name[len("blog-backup-"):-len(".tar.zst")]
    key = f"web-1/{stamp[0:4]}/{stamp[4:6]}/{stamp[6:8]}/{archive.name}"
    head = s3.s3.head_object(Bucket=s3.bucket, Key=key)
    assert head["ContentLength"] == archive.stat().st_size
    assert head["Metadata"] == {"sha256": sha256, "site": "blog", "server-id": "web-1"}

    # stock tar reads it
    out = tmp_path / "extract"
    out.mkdir()
    subprocess.run(["tar", "--zstd", "-xf", str(archive)], cwd=out, check=True)
    assert (out / "database.sql").exists() and (out / "wp-config.php").exists()
    rel = wordpress.upload.relative_to(wordpress.path)
    assert (out / rel).read_bytes() == wordpress.upload.read_bytes()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["site"] == "blog" and manifest["server_id"] == "web-1"
    # the version as PHP itself reads it from the site's wp-includes/version.php
    version = subprocess.run(["php", "-r", f"include '{wordpress.path}/wp-includes/version.php'; echo $wp_version;"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert version and manifest["table_prefix"] == "wp_" and manifest["wordpress_version"] == version
    assert manifest["database"]["tables"]["wp_posts"] >= 4
    files = [p for p in (out / "wp-content").rglob("*") if p.is_file()]
    assert manifest["files"]["count"] == len(files)
    assert manifest["files"]["bytes"] == sum(p.stat().st_size for p in files)
    sql = (out / "database.sql").read_text(encoding="utf-8")
    assert "CREATE DATABASE" not in sql and "\nUSE " not in sql

    # the dump loads into a fresh database and WordPress reads the same posts back
    before = wordpress.read()
    mariadb.sql("CREATE DATABASE restored CHARACTER SET utf8mb4; "
                f"GRANT ALL ON restored.* TO '{wordpress.db_user}'@'127.0.0.1';")
    mariadb.load("restored", out / "database.sql")
    root = tmp_path / "restored-site"
    subprocess.run(["cp", "-r", str(wordpress.path), str(root)], check=True)
    wordpress.write_config("restored", root)
    after = wordpress.read(root)
    assert after == before and any("😀" in t for t in after["titles"])

    # catalog
    [row] = install.rows("SELECT * FROM s3_archives")
    assert row["filename"] == key and row["file_size"] == archive.stat().st_size
    assert row["site_name"] == "blog" and row["server_id"] == "web-1" and row["s3_bucket"] == s3.bucket
    statuses = [r["status"] for r in install.rows("SELECT status FROM backup_log WHERE site_name='blog' ORDER BY id")]
    assert statuses[0] == "START" and statuses[-1] == "SUCCESS" and "ERROR" not in statuses

    # the DB password appears nowhere
    assert wordpress.db_password not in output
    assert wordpress.db_password.encode() not in install.db_path.read_bytes()
    assert b"testing-secret-key-123" not in install.db_path.read_bytes()
    assert "testing-secret-key-123" not in output


def test_dump_keeps_routines_triggers_and_the_whole_database(install, wordpress, mariadb, tmp_path):
    from .conftest import make_site

    definer = f"'{wordpress.db_user}'@'127.0.0.1'"
    mariadb.sql(f"CREATE DATABASE shared; GRANT ALL ON shared.* TO '{wordpress.db_user}'@'127.0.0.1'")
    mariadb.sql("CREATE TABLE wp_items (id INT PRIMARY KEY, name VARCHAR(50)); "
                "CREATE TABLE wp_audit (id INT); "
                "CREATE TABLE other_site_posts (id INT); "
                "INSERT INTO wp_items VALUES (1, 'één 😀'), (2, 'two'); "
                f"CREATE DEFINER={definer} TRIGGER wp_items_audit AFTER INSERT ON wp_items "
                "FOR EACH ROW INSERT INTO wp_audit VALUES (NEW.id); "
                f"CREATE DEFINER={definer} PROCEDURE wp_count() SELECT COUNT(*) FROM wp_items;", database="shared")
    root = make_site(tmp_path, wordpress)
    wordpress.write_config("shared", root)
    install.sites.append({"name": "shared", "path": str(root)})
    result = install.doit("backup")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "whole database" in result.stderr  # no other WordPress install shares it
    [archive] = install.archives()
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["tar", "--zstd", "-xf", str(archive), "database.sql", "manifest.json"], cwd=out, check=True)
    sql = (out / "database.sql").read_text()
    assert "CREATE TABLE `wp_items`" in sql and "CREATE TABLE `other_site_posts`" in sql
    assert "TRIGGER" in sql and "wp_count" in sql
    assert json.loads((out / "manifest.json").read_text())["database"]["tables"] == {
        "other_site_posts": 0, "wp_audit": 0, "wp_items": 2}
    mariadb.sql(f"CREATE DATABASE shared_copy; GRANT ALL ON shared_copy.* TO '{wordpress.db_user}'@'127.0.0.1'")
    mariadb.load("shared_copy", out / "database.sql")
    assert mariadb.sql("SELECT name FROM wp_items ORDER BY id", database="shared_copy").split("\n")[0] == "één 😀"
    mariadb.sql("INSERT INTO wp_items VALUES (3, 'three'); CALL wp_count();", database="shared_copy")
    assert mariadb.sql("SELECT COUNT(*) FROM wp_audit", database="shared_copy").strip() == "1"

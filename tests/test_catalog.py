"""The catalog's schema carries a version and migrates older files forward by itself."""

from __future__ import annotations

import sqlite3
from contextlib import closing

from wpbackup.fleet import catalog


def test_legacy_catalog_is_migrated_keeping_its_rows(tmp_path):
    path = tmp_path / "backups.db"
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("CREATE TABLE backup_log (id INTEGER PRIMARY KEY, timestamp DATETIME, status TEXT, details TEXT)")
        conn.execute("CREATE TABLE s3_archives (id INTEGER PRIMARY KEY, filename TEXT, s3_endpoint TEXT, "
                     "s3_bucket TEXT, file_size INTEGER, upload_timestamp DATETIME)")
        conn.execute("CREATE TABLE daily_emails (id INTEGER PRIMARY KEY, date TEXT, email_sent INTEGER, "
                     "backup_count INTEGER)")
        conn.execute("INSERT INTO backup_log VALUES (1, '2025-01-01 03:00:00', 'SUCCESS', 'old backup')")
    catalog.log_event(path, "INFO", "new line", site="blog", server_id="web-1")
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == catalog.SCHEMA_VERSION
        rows = conn.execute("SELECT id, details, site_name, uid FROM backup_log ORDER BY id").fetchall()
        columns = {row[1] for row in conn.execute("PRAGMA table_info(s3_archives)")}
    assert [r[1] for r in rows] == ["old backup", "new line"]
    assert rows[1][2] == "blog" and all(r[3] for r in rows)
    assert {"site_name", "server_id", "sha256", "uid"} <= columns


def test_fresh_catalog_has_the_seed_columns(tmp_path):
    path = tmp_path / "backups.db"
    with closing(catalog.connect(path)) as conn:
        def cols(table):
            return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
        assert cols("backup_log")[:6] == ["id", "timestamp", "status", "details", "site_name", "server_id"]
        assert cols("s3_archives")[:8] == ["id", "filename", "s3_endpoint", "s3_bucket", "file_size",
                                           "upload_timestamp", "site_name", "server_id"]
        assert cols("daily_emails")[:4] == ["id", "date", "email_sent", "backup_count"]
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_lines_with_the_same_uid_are_written_once(tmp_path):
    path = tmp_path / "backups.db"
    for _ in range(2):
        catalog.log_event(path, "SUCCESS", "done", site="blog", server_id="web-1", uid="web-1:blog:x:success")
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT COUNT(*) FROM backup_log").fetchone()[0] == 1

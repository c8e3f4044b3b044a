"""`doit migrate`: a predecessor install (its .env keys, its catalog, its archive names and S3
keys) brought to this layout, checked point by point, then backed up, restored and pruned.

The legacy S3 endpoint is written as the predecessor wrote it, without scheme: 127.0.0.1:PORT.
The migration adds https:// to such an endpoint, except for a loopback host, which gets
http:// (a local MinIO or test server serves plain HTTP): that is how moto is reached here,
with no test-only switch in the code."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import subprocess
from pathlib import Path

import pytest

from .conftest import kill_group, make_site, wait_for

A, B, C = "20260101-030000", "20260102-030000", "20260103-030000"
SECRETS = ("legacy-s3-Secret-9f8e7d", "second-Secret-q1w2e3", "smtp-Secret-a1b2c3")
UNRELATED = ("2026/01/notes.txt", "other/2026/01/wp-backup-20260101-030000.tar.zst",
             "2026/02/wp-backup-20260101-030000.tar.zst", "2026/01/wp-backup-20260101-030000.tar.zst.sha256")

LEGACY_ENV = """# WordPress Backup configuration (copy to .env)
WP_CONFIG_PATH="{root}/wp-config.php"
WP_CONTENT_PATH="{root}/wp-content"

# Database: leave empty to read the values from wp-config.php
DB_HOST=""
DB_NAME=""
DB_USER=""
DB_PASSWORD=""

# this server's name in reports (empty: the host name)
SERVER_ID=""

# primary S3 storage
S3_SERVER_1_ENDPOINT="{endpoint}"
S3_SERVER_1_REGION="us-east-1"
S3_SERVER_1_ACCESS_KEY="testing"
S3_SERVER_1_SECRET_KEY="legacy-s3-Secret-9f8e7d"
S3_SERVER_1_BUCKET="wp-backups"

# secondary S3 storage (optional)
S3_SERVER_2_ENDPOINT="s3.eu-central-1.wasabisys.com"
S3_SERVER_2_ACCESS_KEY="AKIASECOND"
S3_SERVER_2_SECRET_KEY="second-Secret-q1w2e3"
S3_SERVER_2_BUCKET="mirror"

# email report
SMTP_SERVER="smtp.example.com"
SMTP_PORT="465"
SMTP_USER="backup@example.com"
SMTP_PASSWORD="smtp-Secret-a1b2c3"
SMTP_SENDER_EMAIL="backup@example.com"

# Cloudflare D1
CLOUDFLARE_ACCOUNT_ID="{d1_account}"
CLOUDFLARE_API_TOKEN="{d1_token}"
CLOUDFLARE_D1_DATABASE_ID="{d1_database}"

# remote deployment
REMOTE_HOST="web1.example.com"
REMOTE_USER="deploy"
REMOTE_PORT="2222"
REMOTE_DIR="/srv/wordpress-backup"

BACKUP_DIR="{backup_dir}"
RETENTION_LOCAL_DAYS="3"
RETENTION_S3_DAYS="2"
"""


def legacy_name(stamp: str) -> str:
    return f"wp-backup-{stamp}.tar.zst"


def old_key(stamp: str) -> str:
    return f"{stamp[:4]}/{stamp[4:6]}/{legacy_name(stamp)}"


def new_key(server: str, stamp: str) -> str:
    return f"{server}/{stamp[:4]}/{stamp[4:6]}/{stamp[6:8]}/blog-backup-{stamp}.tar.zst"


def old_catalog(path: Path) -> None:
    """The predecessor's backups.db: its three tables, its columns, some rows."""
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE backup_log (id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp DATETIME, status TEXT, details TEXT);
        CREATE TABLE s3_archives (id INTEGER PRIMARY KEY AUTOINCREMENT, filename TEXT, s3_endpoint TEXT,
                                  s3_bucket TEXT, file_size INTEGER, upload_timestamp DATETIME);
        CREATE TABLE daily_emails (id INTEGER PRIMARY KEY AUTOINCREMENT, date TEXT, email_sent INTEGER,
                                   backup_count INTEGER);
        INSERT INTO backup_log (timestamp, status, details) VALUES
            ('2026-01-01 03:00:00', 'START', 'Backup started'),
            ('2026-01-01 03:02:00', 'SUCCESS', 'Backup completed: wp-backup-20260101-030000.tar.zst'),
            ('2026-01-02 03:02:00', 'SUCCESS', 'Backup completed: wp-backup-20260102-030000.tar.zst');
        INSERT INTO s3_archives (filename, s3_endpoint, s3_bucket, file_size, upload_timestamp) VALUES
            ('2026/01/wp-backup-20260101-030000.tar.zst', 'x', 'wp-backups', 1, '2026-01-01 03:02:00'),
            ('wp-backup-20260102-030000.tar.zst', 'x', 'wp-backups', 1, '2026-01-02 03:02:00'),
            ('2025/12/wp-backup-20251201-030000.tar.zst', 'x', 'wp-backups', 1, '2025-12-01 03:02:00');
        INSERT INTO daily_emails (date, email_sent, backup_count) VALUES ('2026-01-02', 1, 1);
    """)
    conn.commit()
    conn.close()


def legacy_install(install, site_root: Path, backup_dir: Path, endpoint: str, archive: bytes, s3, d1=None) -> None:
    """.env, catalog, local archives (A, C) and S3 objects (A, B, unrelated) of the predecessor."""
    values = {"d1_account": "acc", "d1_token": "tok-Secret-zz9", "d1_database": "db"}
    if d1 is not None:
        env = d1.env()
        values = {"d1_account": env["D1_ACCOUNT_ID"], "d1_token": env["D1_API_TOKEN"],
                  "d1_database": env["D1_DATABASE_ID"]}
    install.env_path.write_text(LEGACY_ENV.format(root=site_root, endpoint=endpoint, backup_dir=backup_dir, **values))
    old_catalog(install.db_path)
    backup_dir.mkdir(mode=0o700)
    for stamp in (A, C):
        (backup_dir / legacy_name(stamp)).write_bytes(archive)
    s3.s3.put_object(Bucket=s3.bucket, Key=old_key(A), Body=archive)
    s3.s3.put_object(Bucket=s3.bucket, Key=old_key(B), Body=archive,
                     Metadata={"sha256": hashlib.sha256(archive).hexdigest()})
    for key in UNRELATED:
        s3.s3.put_object(Bucket=s3.bucket, Key=key, Body=b"not an archive of the predecessor")


def run(install, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """doit in the install, without Install.doit (which would write its own .env and sites.json)."""
    return subprocess.run(install.command(*args), capture_output=True, text=True, timeout=300,
                          env=install.process_env(env), cwd=install.root)


def out(result) -> str:
    return result.stdout + result.stderr


def objects(s3) -> dict[str, str]:
    listing = s3.s3.list_objects_v2(Bucket=s3.bucket).get("Contents", [])
    return {o["Key"]: o["ETag"] for o in listing}


def snapshot(install, *folders: Path) -> dict:
    """Every file (but doit's state and the run lock's holder note) with its bytes' hash, and
    every catalog row."""
    files = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.name.startswith((".doit", ".wpbackup.lock")):
                files[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    conn = sqlite3.connect(install.db_path)
    rows = {t: conn.execute(f"SELECT * FROM {t}").fetchall() for t in ("backup_log", "s3_archives", "daily_emails")}
    conn.close()
    return {"files": files, "rows": rows}


@pytest.fixture
def real_archive(wordpress, tmp_path_factory):
    """A real archive of site "blog" (taken by a native install), and the site's folder."""
    from .conftest import Install

    base = tmp_path_factory.mktemp("native")
    native = Install(base / "install")
    native.root.mkdir()
    root = make_site(base, wordpress, name="www")
    native.sites.append({"name": "blog", "path": str(root)})
    result = native.doit("backup")
    assert result.returncode == 0, out(result)
    return native.archives()[0].read_bytes(), root


def test_migrate_a_legacy_install_then_backup_restore_and_prune(install, s3, d1, real_archive, wordpress,
                                                                  mariadb, tmp_path):
    from wpbackup.config.settings import default_server_id, load_settings

    archive, root = real_archive
    digest = hashlib.sha256(archive).hexdigest()
    backup_dir = tmp_path / "legacy-backups"  # outside the install
    endpoint = s3.url.split("://", 1)[1]
    legacy_install(install, root, backup_dir, endpoint, archive, s3, d1)
    legacy_env = install.env_path.read_bytes()
    d1_env = {"D1_API_BASE": d1.url}

    result = run(install, "migrate", "--site", "blog", env=d1_env)
    assert result.returncode == 0, out(result)
    text = out(result)
    assert not any(secret in text for secret in (*SECRETS, d1.env()["D1_API_TOKEN"]))
    for key in ("S3_SERVER_2_ENDPOINT", "S3_SERVER_2_ACCESS_KEY", "S3_SERVER_2_SECRET_KEY", "S3_SERVER_2_BUCKET"):
        assert key in text  # listed, not silently dropped
    server = default_server_id()

    # .env: the old one kept byte for byte, the new one translated and loadable
    assert (install.root / ".env.legacy").read_bytes() == legacy_env
    assert install.env_path.stat().st_mode & 0o777 == 0o600
    settings = load_settings({"WPBACKUP_ENV": str(install.env_path), **d1_env})
    assert settings.server_id == server and settings.s3_bucket == "wp-backups"
    assert settings.s3_endpoint_url == s3.url and settings.s3_secret_access_key == SECRETS[0]
    assert settings.backup_dir == backup_dir and settings.local_keep == 3
    assert (settings.keep_daily, settings.keep_weekly, settings.keep_monthly) == (2, 0, 0)
    assert settings.d1_enabled
    assert settings.value("SMTP_HOST") == "smtp.example.com" and settings.value("SMTP_PORT") == 465
    assert settings.value("SMTP_SECURITY") == "ssl" and settings.value("SMTP_USERNAME") == "backup@example.com"
    assert settings.value("SMTP_PASSWORD") == SECRETS[2] and settings.value("REPORT_FROM") == "backup@example.com"
    assert settings.value("DEPLOY_HOSTS") == ("deploy@web1.example.com:2222",)
    assert settings.value("DEPLOY_PATH") == "/srv/wordpress-backup"
    new_env = install.env_path.read_text()
    assert not any(line.startswith(("S3_SERVER_", "WP_", "DB_", "CLOUDFLARE_", "REMOTE_", "RETENTION_"))
                   for line in new_env.splitlines())
    assert "wasabisys" not in new_env and SECRETS[1] not in new_env

    # sites.json: the one site, the root, no db (every DB_* was empty)
    sites = json.loads(settings.sites_file.read_text())["sites"]
    assert sites == [{"name": "blog", "path": str(root), "enabled": True}]

    # local archives: renamed, same bytes, each with its .sha256
    names = sorted(p.name for p in backup_dir.iterdir())
    assert names == [f"blog-backup-{s}.tar.zst{x}" for s in (A, C) for x in ("", ".sha256")]
    for stamp in (A, C):
        path = backup_dir / f"blog-backup-{stamp}.tar.zst"
        assert path.read_bytes() == archive
        assert (backup_dir / (path.name + ".sha256")).read_text() == f"{digest}  {path.name}\n"

    # S3: the predecessor's objects moved with this tool's metadata, nothing else touched
    after = objects(s3)
    assert set(after) == {new_key(server, A), new_key(server, B), *UNRELATED}
    for stamp in (A, B):
        head = s3.s3.head_object(Bucket=s3.bucket, Key=new_key(server, stamp))
        assert head["Metadata"] == {"sha256": digest, "site": "blog", "server-id": server}
        assert head["ContentLength"] == len(archive)

    # the catalog: a copy aside, old rows kept once and filled in, keys pointing at the new objects
    kept = sqlite3.connect(install.root / "backups.db.legacy")
    assert kept.execute("SELECT count(*) FROM backup_log").fetchone()[0] == 3
    assert "site_name" not in [row[1] for row in kept.execute("PRAGMA table_info(backup_log)")]
    kept.close()
    old_rows = install.rows("SELECT * FROM backup_log WHERE details LIKE 'Backup %'")
    assert len(old_rows) == 3 and {(r["site_name"], r["server_id"]) for r in old_rows} == {("blog", server)}
    s3_rows = install.rows("SELECT * FROM s3_archives ORDER BY id")
    assert len(s3_rows) == 3 and {r["server_id"] for r in s3_rows} == {server}
    assert [r["filename"] for r in s3_rows[:2]] == [new_key(server, A), new_key(server, B)]
    assert all(r["sha256"] == digest and r["deleted_at"] is None for r in s3_rows[:2])
    assert s3_rows[2]["deleted_at"] is not None  # its object was gone already
    assert install.rows("SELECT server_id FROM daily_emails")[0][0] == server
    assert len(install.rows("SELECT * FROM backup_log WHERE details LIKE 'migrated %'")) == 3  # A, B, C

    # a second run changes nothing
    before = snapshot(install, install.root, backup_dir)
    again = run(install, "migrate", "--site", "blog", env=d1_env)
    assert again.returncode == 0 and "nothing to do" in out(again), out(again)
    assert snapshot(install, install.root, backup_dir) == before and objects(s3) == after

    # then it is an install like any other: backup, status, restore of a migrated archive, prune
    backup = run(install, "backup", env=d1_env)
    assert backup.returncode == 0, out(backup)
    assert not any(secret in out(backup) for secret in SECRETS)
    status = run(install, "status", env=d1_env)
    assert status.returncode == 0 and "blog" in out(status), out(status)
    mariadb.sql(f"CREATE DATABASE IF NOT EXISTS {wordpress.db_name}_mig; "
                f"GRANT ALL ON `{wordpress.db_name}\\_mig`.* TO '{wordpress.db_user}'@'127.0.0.1'")
    target = tmp_path / "restored"
    restore = run(install, "restore", "--site", "blog", "--archive", f"blog-backup-{B}.tar.zst",
                  "--target", str(target), "--database", f"{wordpress.db_name}_mig", env=d1_env)
    assert restore.returncode == 0, out(restore)
    assert "from s3" in out(restore)
    assert (target / "wp-content" / "uploads").is_dir()
    assert "wp.test" in mariadb.sql("SELECT option_value FROM wp_options WHERE option_name = 'siteurl'",
                                    f"{wordpress.db_name}_mig")
    prune = run(install, "prune", env=d1_env)
    assert prune.returncode == 0, out(prune)
    left = set(objects(s3))
    assert new_key(server, A) not in left and new_key(server, B) in left and set(UNRELATED) <= left
    assert len([k for k in left if k.startswith(server + "/")]) == 2  # B and today's


def test_dry_run_changes_nothing_and_prints_the_plan(install, s3, tmp_path):
    root = tmp_path / "www"
    (root / "wp-content").mkdir(parents=True)
    backup_dir = tmp_path / "legacy-backups"
    legacy_install(install, root, backup_dir, s3.url.split("://", 1)[1], b"legacy archive bytes", s3)
    before, listed = snapshot(install, install.root, backup_dir), objects(s3)

    result = run(install, "migrate", "--site", "blog", "--server-id", "web-7", "--dry-run")
    assert result.returncode == 0, out(result)
    text = out(result)
    assert "nothing changed" in text and "S3_SERVER_2_SECRET_KEY" in text
    assert old_key(A) in text and new_key("web-7", B) in text and legacy_name(C) in text
    assert not any(secret in text for secret in SECRETS) and "tok-Secret" not in text
    now = snapshot(install, install.root, backup_dir)
    assert set(now["files"]) ^ set(before["files"]) == set()
    assert now == before and objects(s3) == listed
    assert not (install.root / "sites.json").exists() and not (install.root / ".env.legacy").exists()


def test_kill_during_the_s3_phase_then_a_second_run_completes(install, s3, s3_proxy, tmp_path):
    root = tmp_path / "www"
    (root / "wp-content").mkdir(parents=True)
    backup_dir = tmp_path / "legacy-backups"
    archive = os.urandom(50_000)
    legacy_install(install, root, backup_dir, s3_proxy.url.split("://", 1)[1], archive, s3)
    hanging = s3_proxy.hanging
    plain = s3_proxy.rewrite

    def hang_after_first_delete(kind, status, data):  # the old key is gone, the answer never comes
        if kind == "delete" and not hanging.is_set():
            hanging.set()
            s3_proxy.release.wait(120)
        return plain(kind, status, data)

    s3_proxy.rewrite = hang_after_first_delete
    proc = subprocess.Popen(install.command("migrate", "--site", "blog", "--server-id", "web-2"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=install.process_env(), cwd=install.root, start_new_session=True)
    try:
        wait_for(hanging.is_set, proc)
        kill_group(proc)
    finally:
        s3_proxy.rewrite = plain
        s3_proxy.release.set()
    assert [k for k in (old_key(A), old_key(B)) if k in objects(s3)] == [old_key(B)]  # A moved, B not yet

    result = run(install, "migrate", "--site", "blog")  # the journal remembers the server id
    assert result.returncode == 0, out(result)
    assert set(objects(s3)) == {new_key("web-2", A), new_key("web-2", B), *UNRELATED}
    rows = install.rows("SELECT filename, sha256 FROM s3_archives WHERE deleted_at IS NULL ORDER BY id")
    assert [tuple(r) for r in rows] == [(new_key("web-2", s), hashlib.sha256(archive).hexdigest()) for s in (A, B)]
    assert len(install.rows("SELECT * FROM backup_log WHERE details LIKE 'migrated %'")) == 3
    assert sorted(p.name for p in backup_dir.glob("*.tar.zst")) == [f"blog-backup-{s}.tar.zst" for s in (A, C)]


def test_translation_rules_for_paths_database_endpoint_and_retention(tmp_path):
    from wpbackup.errors import BackupError
    from wpbackup.ops import migrate

    assert migrate.with_scheme("s3.example.com") == "https://s3.example.com"
    assert migrate.with_scheme("127.0.0.1:9000") == "http://127.0.0.1:9000"
    assert migrate.with_scheme("http://minio:9000") == "http://minio:9000"
    assert migrate.site_db({"DB_HOST": "db.local:3307", "DB_NAME": "wp", "DB_USER": "", "DB_PASSWORD": ""}) == \
        {"name": "wp", "host": "db.local", "port": 3307}
    assert migrate.site_db({"DB_HOST": "localhost:/run/mysqld/mysqld.sock"}) == \
        {"host": "localhost", "socket": "/run/mysqld/mysqld.sock"}
    assert migrate.site_db({"DB_HOST": "", "DB_PASSWORD": ""}) == {}
    # wp-config.php one folder above the WordPress root, as WordPress allows
    root = tmp_path / "html"
    root.mkdir()
    (root / "wp-load.php").write_text("<?php\n")
    assert migrate.wordpress_root({"WP_CONFIG_PATH": str(tmp_path / "wp-config.php")}) == root
    assert migrate.wordpress_root({"WP_CONTENT_PATH": f"{root}/wp-content/",
                                   "WP_CONFIG_PATH": str(tmp_path / "wp-config.php")}) == root
    with pytest.raises(BackupError):
        migrate.wordpress_root({"WP_CONTENT_PATH": f"{root}/wp-content", "WP_CONFIG_PATH": "/etc/wp-config.php"})
    env, notes, unmapped = migrate.translate({"RETENTION_S3_DAYS": "0", "RETENTION_LOCAL_DAYS": "4",
                                              "REPORT_TO": "ops@example.com", "SMTP_SERVER": "mail",
                                              "SMTP_SENDER_EMAIL": "b@example.com", "OLD_FLAG": "1"}, "web-1")
    assert "KEEP_DAILY" not in env and env["LOCAL_KEEP"] == "4" and env["REPORT_TO"] == "ops@example.com"
    assert unmapped == ["OLD_FLAG"]


def test_a_shared_bucket_keeps_the_other_servers_legacy_archives(install, s3, tmp_path):
    """The legacy key layout names no server: only what this install's catalog lists moves."""
    root = tmp_path / "www"
    (root / "wp-content").mkdir(parents=True)
    backup_dir = tmp_path / "legacy-backups"
    legacy_install(install, root, backup_dir, s3.url.split("://", 1)[1], b"legacy archive bytes", s3)
    theirs = old_key("20260115-030000")
    s3.s3.put_object(Bucket=s3.bucket, Key=theirs, Body=b"another legacy server's archive")
    planned = run(install, "migrate", "--site", "blog", "--server-id", "web-7", "--dry-run")
    assert planned.returncode == 0, out(planned)
    assert old_key(A) in out(planned) and theirs not in out(planned)
    done = run(install, "migrate", "--site", "blog", "--server-id", "web-7")
    assert done.returncode == 0, out(done)
    assert theirs in objects(s3) and old_key(A) not in objects(s3)


def test_legacy_values_that_give_an_unloadable_site_are_one_clear_line(install, s3, tmp_path):
    root = tmp_path / "www"
    (root / "wp-content").mkdir(parents=True)
    backup_dir = tmp_path / "legacy-backups"
    legacy_install(install, root, backup_dir, s3.url.split("://", 1)[1], b"legacy archive bytes", s3)
    text = install.env_path.read_text()
    install.env_path.write_text(re.sub(r"(?m)^DB_HOST=.*$", "DB_HOST=localhost:99999", text)
                                if re.search(r"(?m)^DB_HOST=", text) else text + "DB_HOST=localhost:99999\n")
    before = snapshot(install, install.root, backup_dir)
    for args in (("--dry-run",), ()):
        result = run(install, "migrate", "--site", "blog", *args)
        assert result.returncode != 0 and "port" in out(result) and "Traceback" not in out(result), out(result)
    assert not (install.root / "sites.json").exists()
    assert snapshot(install, install.root, backup_dir)["rows"] == before["rows"]

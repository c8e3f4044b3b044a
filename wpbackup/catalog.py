"""The local catalog, `backups.db`: what happened (backup_log), what is stored remotely
(s3_archives) and which reports went out (daily_emails).

The three tables keep the seed's columns; extra columns carry what the tool needs (a
fleet-unique ``uid`` per row for the D1 sync, the run stamp, archive name, size and sha256).
The schema version lives in ``PRAGMA user_version`` and old files migrate forward on open.
"""

from __future__ import annotations

import re
import sqlite3
import uuid
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path

SCHEMA_VERSION = 2  # 2: backup_log.incomplete
STATUSES = ("START", "INFO", "SUCCESS", "ERROR", "FATAL")

_TABLES = {
    "backup_log": [
        ("id", "INTEGER PRIMARY KEY AUTOINCREMENT"), ("timestamp", "DATETIME"), ("status", "TEXT"),
        ("details", "TEXT"), ("site_name", "TEXT"), ("server_id", "TEXT"), ("uid", "TEXT"),
        ("run_stamp", "TEXT"), ("archive_name", "TEXT"), ("archive_size", "INTEGER"),
        ("archive_sha256", "TEXT"), ("incomplete", "INTEGER"),
    ],
    "s3_archives": [
        ("id", "INTEGER PRIMARY KEY AUTOINCREMENT"), ("filename", "TEXT"), ("s3_endpoint", "TEXT"),
        ("s3_bucket", "TEXT"), ("file_size", "INTEGER"), ("upload_timestamp", "DATETIME"),
        ("site_name", "TEXT"), ("server_id", "TEXT"), ("uid", "TEXT"), ("sha256", "TEXT"),
        ("archive_name", "TEXT"), ("run_stamp", "TEXT"), ("deleted_at", "DATETIME"),
    ],
    "daily_emails": [
        ("id", "INTEGER PRIMARY KEY AUTOINCREMENT"), ("date", "TEXT"), ("email_sent", "INTEGER"),
        ("backup_count", "INTEGER"), ("server_id", "TEXT"), ("uid", "TEXT"),
    ],
}


def now_utc() -> str:
    """Catalog timestamps: UTC, 'YYYY-MM-DD HH:MM:SS' (what SQLite's datetime() gives)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating and migrating as needed) the catalog."""
    new = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30)
    conn.row_factory = sqlite3.Row
    if new:
        path.chmod(0o600)
    migrate(conn)
    return conn


def migrate(conn: sqlite3.Connection) -> None:
    """Bring any older catalog (including the legacy single-site one) to SCHEMA_VERSION."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version >= SCHEMA_VERSION:
        return
    with conn:
        conn.execute("PRAGMA journal_mode=WAL")
    with conn:
        for table, columns in _TABLES.items():
            conn.execute(f"CREATE TABLE IF NOT EXISTS {table} ({', '.join(f'{n} {t}' for n, t in columns)})")
            present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            for name, kind in columns:
                if name not in present:
                    plain = kind.replace(" PRIMARY KEY AUTOINCREMENT", "")
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {plain}")
            conn.execute(f"UPDATE {table} SET uid = lower(hex(randomblob(16))) WHERE uid IS NULL")
            conn.execute(f"CREATE UNIQUE INDEX IF NOT EXISTS {table}_uid ON {table}(uid)")
        conn.execute("CREATE INDEX IF NOT EXISTS backup_log_site ON backup_log(site_name, status, timestamp)")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def log_event(path: Path, status: str, details: str, *, site: str | None, server_id: str,
              stamp: str | None = None, uid: str | None = None, archive_name: str | None = None,
              archive_size: int | None = None, archive_sha256: str | None = None,
              incomplete: int | None = None) -> None:
    """Append one backup_log line; a line with a known ``uid`` is written only once.
    ``incomplete``: on the result line of a backup, how many files it could not read."""
    if status not in STATUSES:
        raise ValueError(f"unknown status {status}")
    with closing(connect(path)) as conn, conn:
        conn.execute(
            "INSERT OR IGNORE INTO backup_log (timestamp, status, details, site_name, server_id, uid, "
            "run_stamp, archive_name, archive_size, archive_sha256, incomplete) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (now_utc(), status, details, site, server_id, uid or uuid.uuid4().hex, stamp,
             archive_name, archive_size, archive_sha256, incomplete),
        )


def record_upload(path: Path, *, key: str, endpoint: str | None, bucket: str, size: int, sha256: str,
                  site: str, server_id: str, stamp: str, archive_name: str, uploaded_at: str) -> None:
    """One s3_archives row per verified upload (idempotent: keyed by server, bucket and key)."""
    uid = f"{server_id}:s3:{bucket}:{key}"
    with closing(connect(path)) as conn, conn:
        conn.execute(
            "INSERT OR IGNORE INTO s3_archives (filename, s3_endpoint, s3_bucket, file_size, upload_timestamp, "
            "site_name, server_id, uid, sha256, archive_name, run_stamp) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (key, endpoint, bucket, size, uploaded_at, site, server_id, uid, sha256, archive_name, stamp),
        )


def last_successes(path: Path, include_incomplete: bool = False) -> dict[tuple[str, str], sqlite3.Row]:
    """The newest SUCCESS line per (server, site), with where its archive went; with
    ``include_incomplete``, the newest stored backup, complete or not."""
    if not path.exists():
        return {}
    wanted = STORED if include_incomplete else "b.status = 'SUCCESS' AND b.archive_name IS NOT NULL"
    latest = wanted.replace("b.", "x.")
    with closing(connect(path)) as conn:
        rows = conn.execute(
            "SELECT b.*, (SELECT s.filename FROM s3_archives s WHERE s.archive_name = b.archive_name "
            "  AND s.server_id = b.server_id AND s.deleted_at IS NULL ORDER BY s.id DESC LIMIT 1) AS s3_key, "
            "(SELECT s.s3_bucket FROM s3_archives s WHERE s.archive_name = b.archive_name "
            "  AND s.server_id = b.server_id AND s.deleted_at IS NULL ORDER BY s.id DESC LIMIT 1) AS s3_bucket "
            f"FROM backup_log b WHERE {wanted} "
            f"AND b.id = (SELECT MAX(id) FROM backup_log x WHERE {latest} "
            "  AND x.site_name = b.site_name AND x.server_id = b.server_id)"
        ).fetchall()
    return {(row["server_id"], row["site_name"]): row for row in rows}


def uploaded_archives(path: Path, server_id: str, site: str) -> set[str]:
    """Names of this site's archives with a verified, not deleted, S3 copy."""
    if not path.exists():
        return set()
    with closing(connect(path)) as conn:
        rows = conn.execute(
            "SELECT archive_name FROM s3_archives WHERE server_id = ? AND site_name = ? AND deleted_at IS NULL",
            (server_id, site),
        ).fetchall()
    return {row[0] for row in rows}


_VERIFY_OK = re.compile(r"^verify OK: \S+ \(([^:]*):")


def failed_s3_verifications(path: Path, server_id: str, site: str | None = None) -> set[str]:
    """Archive names whose S3 copy failed the latest `doit verify --remote` that checked it.

    Read from this server's verify lines (``archive_name`` set): a failure names the copy as
    ``s3://...`` (a copy that could not be read at all is no evidence of damage), a pass lists
    ``s3`` among the copies it checked. Prune uses this so that a damaged copy does not take
    the place of an intact one, nor let the local copy go."""
    if not path.exists():
        return set()
    # One site's lines come through the backup_log_site index: this runs after every backup.
    where, params = ("site_name = ? AND ", (site, server_id)) if site else ("", (server_id,))
    with closing(connect(path)) as conn:
        rows = conn.execute(
            f"SELECT archive_name, status, details FROM backup_log WHERE {where}server_id = ? "
            "AND status IN ('ERROR', 'INFO') AND archive_name IS NOT NULL "
            "AND (details LIKE 'verify failed: %' OR details LIKE 'verify OK: %') ORDER BY id", params,
        ).fetchall()
    failed: dict[str, bool] = {}
    for name, status, details in rows:
        if status == "ERROR" and any("s3://" in part and "cannot read the S3 copy" not in part
                                     for part in details.split("; ")):
            failed[name] = True
        elif status == "INFO" and (ok := _VERIFY_OK.match(details)) and "s3" in ok.group(1).split(", "):
            failed[name] = False
    return {name for name, bad in failed.items() if bad}


#: a backup's result line with an archive: complete (SUCCESS), or kept without what it could not read
STORED = "(b.status = 'SUCCESS' OR (b.status = 'ERROR' AND b.incomplete > 0)) AND b.archive_name IS NOT NULL"


def successes(path: Path, site: str) -> list[sqlite3.Row]:
    """Every stored backup of a site across the fleet, newest first, with its S3 copy: the
    complete ones and those kept incomplete (``incomplete`` > 0: files it could not read);
    an incomplete archive is still the newest copy of everything else."""
    if not path.exists():
        return []
    with closing(connect(path)) as conn:
        return conn.execute(
            "SELECT b.server_id, b.site_name, b.run_stamp, b.archive_name, b.archive_size, b.archive_sha256, "
            "b.incomplete, s.filename AS s3_key, s.s3_bucket, s.s3_endpoint, s.deleted_at "
            "FROM backup_log b LEFT JOIN s3_archives s ON s.archive_name = b.archive_name "
            f"AND s.server_id = b.server_id AND s.deleted_at IS NULL WHERE {STORED} AND b.site_name = ? "
            "ORDER BY b.run_stamp DESC, b.id DESC",
            (site,),
        ).fetchall()


def archived_names(path: Path, server_id: str, site: str) -> set[str]:
    """Names of this site's archives that ever reached S3 (an s3_archives row, verified when
    uploaded, whether prune deleted that copy since or not): a local archive without one is
    still waiting for its upload."""
    if not path.exists():
        return set()
    with closing(connect(path)) as conn:
        rows = conn.execute("SELECT DISTINCT archive_name FROM s3_archives WHERE server_id = ? AND site_name = ?",
                            (server_id, site)).fetchall()
    return {row[0] for row in rows}

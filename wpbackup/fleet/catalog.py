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

from wpbackup.errors import BackupError

SCHEMA_VERSION = 5  # 2: backup_log.incomplete; 3: change_seq per row and sync_state (fleet sync);
#                     4: verify results as columns (verified_local, verified_s3, restore_tested);
#                     5: alerts_sent (stale alerts already sent; local, never synced)
STATUSES = ("START", "INFO", "SUCCESS", "ERROR", "FATAL")

_TABLES = {
    "backup_log": [
        ("id", "INTEGER PRIMARY KEY AUTOINCREMENT"), ("timestamp", "DATETIME"), ("status", "TEXT"),
        ("details", "TEXT"), ("site_name", "TEXT"), ("server_id", "TEXT"), ("uid", "TEXT"),
        ("run_stamp", "TEXT"), ("archive_name", "TEXT"), ("archive_size", "INTEGER"),
        ("archive_sha256", "TEXT"), ("incomplete", "INTEGER"),
        # a verify line's results as data: 1 passed, 0 failed, NULL not checked
        ("verified_local", "INTEGER"), ("verified_s3", "INTEGER"), ("restore_tested", "INTEGER"),
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
    try:
        migrate(conn)
    except sqlite3.DatabaseError as exc:  # "file is not a database", a damaged page...
        conn.close()
        raise BackupError(f"{path}: cannot be read as the catalog ({exc}); move it aside to start a new one "
                          "(with the D1 sync on, the next sync brings this server's rows back)") from None
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
        track_changes(conn)
        if version < 4:
            _verify_results_from_text(conn)
        conn.execute(f"CREATE TABLE IF NOT EXISTS {ALERTS_SENT} (key TEXT PRIMARY KEY, sent_at DATETIME)")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


_VERIFY_OK = re.compile(r"^verify OK: \S+ \(([^:]*):")


def _verify_results_from_text(conn: sqlite3.Connection) -> None:
    """Schema 4: verify lines written before verify results were data get their columns filled
    once from the wording those versions used, so an S3 copy found damaged then stays known."""
    rows = conn.execute("SELECT id, status, details FROM backup_log WHERE archive_name IS NOT NULL AND "
                        "verified_s3 IS NULL AND verified_local IS NULL AND "
                        "(details LIKE 'verify failed: %' OR details LIKE 'verify OK: %')").fetchall()
    for row_id, status, details in rows:
        local = s3 = None
        if status == "ERROR":
            parts = details.split("; ")
            s3 = 0 if any("s3://" in p and "cannot read the S3 copy" not in p for p in parts) else None
            local = 0 if any("local:" in p for p in parts) else None
        elif ok := _VERIFY_OK.match(details):
            copies = ok.group(1).split(", ")
            local, s3 = (1 if "local" in copies else None), (1 if "s3" in copies else None)
        conn.execute("UPDATE backup_log SET verified_local = ?, verified_s3 = ? WHERE id = ?", (local, s3, row_id))


def log_event(path: Path, status: str, details: str, *, site: str | None, server_id: str,
              stamp: str | None = None, uid: str | None = None, archive_name: str | None = None,
              archive_size: int | None = None, archive_sha256: str | None = None,
              incomplete: int | None = None, checks: dict[str, int | None] | None = None) -> None:
    """Append one backup_log line; a line with a known ``uid`` is written only once.
    ``incomplete``: on the result line of a backup, how many files it could not read;
    ``checks``: on a verify line, its results (verified_local, verified_s3, restore_tested)."""
    checks = checks or {}
    if status not in STATUSES:
        raise ValueError(f"unknown status {status}")
    with closing(connect(path)) as conn, conn:
        conn.execute(
            "INSERT OR IGNORE INTO backup_log (timestamp, status, details, site_name, server_id, uid, "
            "run_stamp, archive_name, archive_size, archive_sha256, incomplete, verified_local, verified_s3, "
            "restore_tested) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (now_utc(), status, details, site, server_id, uid or uuid.uuid4().hex, stamp,
             archive_name, archive_size, archive_sha256, incomplete, checks.get("verified_local"),
             checks.get("verified_s3"), checks.get("restore_tested")),
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
            # the newest by run stamp, not by id: rows pulled back from D1 get ids after newer ones
            f"AND b.id = (SELECT x.id FROM backup_log x WHERE {latest} "
            "  AND x.site_name = b.site_name AND x.server_id = b.server_id "
            "  ORDER BY x.run_stamp DESC, x.id DESC LIMIT 1)"
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


def failed_s3_verifications(path: Path, server_id: str, site: str | None = None) -> set[str]:
    """Archive names whose S3 copy failed the latest `doit verify --remote` that checked it,
    read from the verify lines' ``verified_s3`` column (a copy that could not be read at all
    left it NULL: no evidence of damage). Prune uses this so that a damaged copy does not take
    the place of an intact one, nor let the local copy go."""
    if not path.exists():
        return set()
    # One site's lines come through the backup_log_site index: this runs after every backup.
    where, params = ("site_name = ? AND ", (site, server_id)) if site else ("", (server_id,))
    with closing(connect(path)) as conn:
        rows = conn.execute(
            f"SELECT archive_name, verified_s3 FROM backup_log WHERE {where}server_id = ? "
            "AND archive_name IS NOT NULL AND verified_s3 IS NOT NULL ORDER BY timestamp, id", params,
        ).fetchall()
    latest = {name: result for name, result in rows}
    return {name for name, result in latest.items() if result == 0}


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


def s3_copy(path: Path, server_id: str, site: str, archive_name: str, bucket: str,
            endpoint: str | None) -> sqlite3.Row | None:
    """The S3 copy of an archive in this bucket and endpoint that prune has not deleted (the
    copy source of a later upload), newest first."""
    if not path.exists():
        return None
    with closing(connect(path)) as conn:
        return conn.execute(
            "SELECT filename, file_size, sha256 FROM s3_archives WHERE server_id = ? AND site_name = ? "
            "AND archive_name = ? AND s3_bucket = ? AND s3_endpoint IS ? AND deleted_at IS NULL "
            "ORDER BY id DESC LIMIT 1", (server_id, site, archive_name, bucket, endpoint)).fetchone()


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


#: Local bookkeeping of the D1 sync: the change counter the triggers below draw from and the
#: sync's marks (what was pushed and pulled last); see wpbackup/fleet/sync.py.
SYNC_STATE = "sync_state"
#: one row per staleness episode already alerted (wpbackup/fleet/notify.py). This server's own
#: memory, outside _TABLES: no uid, no change_seq, never sent to D1.
ALERTS_SENT = "alerts_sent"


def track_changes(conn: sqlite3.Connection) -> None:
    """Schema 3: every row carries ``change_seq``, drawn from one counter whenever the row is
    inserted or updated (triggers, so prune's deletion mark or a report's ``email_sent`` are
    caught without their code knowing about the sync). The sync pushes this server's rows
    above its mark. A row written with ``change_seq`` already set (0: pulled from D1) is left
    as it is, so what came from D1 is not sent back. Runs inside migrate's transaction."""
    conn.execute(f"CREATE TABLE IF NOT EXISTS {SYNC_STATE} (key TEXT PRIMARY KEY, value)")
    conn.execute(f"INSERT OR IGNORE INTO {SYNC_STATE} (key, value) VALUES ('change_seq', 0)")
    bump = (f"UPDATE {SYNC_STATE} SET value = value + 1 WHERE key = 'change_seq'; "
            "UPDATE {table} SET change_seq = "
            f"(SELECT value FROM {SYNC_STATE} WHERE key = 'change_seq') WHERE id = NEW.id;")
    for table in _TABLES:
        if "change_seq" not in {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN change_seq INTEGER")
        # rows from before schema 3 are all unsent: number them in the order they were written
        base = conn.execute(f"SELECT value FROM {SYNC_STATE} WHERE key = 'change_seq'").fetchone()[0]
        conn.execute(f"UPDATE {table} SET change_seq = ? + id WHERE change_seq IS NULL", (base,))
        conn.execute(f"UPDATE {SYNC_STATE} SET value = MAX(value, (SELECT COALESCE(MAX(change_seq), 0) "
                     f"FROM {table})) WHERE key = 'change_seq'")
        conn.execute(f"CREATE INDEX IF NOT EXISTS {table}_change_seq ON {table}(change_seq)")
        conn.execute(f"CREATE TRIGGER IF NOT EXISTS {table}_changed_insert AFTER INSERT ON {table} "
                     f"WHEN NEW.change_seq IS NULL BEGIN {bump.format(table=table)} END")
        conn.execute(f"CREATE TRIGGER IF NOT EXISTS {table}_changed_update AFTER UPDATE ON {table} "
                     f"WHEN NEW.change_seq IS OLD.change_seq BEGIN {bump.format(table=table)} END")


#: a backup that failed: a stage's ERROR line of a run, without an archive (an incomplete backup has one)
FAILED = "b.status = 'ERROR' AND b.archive_name IS NULL AND b.run_stamp IS NOT NULL AND b.site_name IS NOT NULL"


def last_failures(path: Path) -> dict[tuple[str, str], sqlite3.Row]:
    """The newest failed backup per (server, site), the fleet's included (pulled from D1), so
    status can show a site whose last attempt failed, also one that never succeeded."""
    if not path.exists():
        return {}
    with closing(connect(path)) as conn:
        rows = conn.execute(
            f"SELECT b.* FROM backup_log b WHERE {FAILED} AND b.id = (SELECT x.id FROM backup_log x "
            f"WHERE {FAILED.replace('b.', 'x.')} AND x.site_name = b.site_name AND x.server_id = b.server_id "
            "ORDER BY x.timestamp DESC, x.id DESC LIMIT 1)"
        ).fetchall()
    return {(row["server_id"], row["site_name"]): row for row in rows}

"""A sample fleet in a catalog: three servers, one failed site, one stale server, one
shrunken archive, the rest healthy. The rows are what real runs write (the same columns and
wording), with times in the past, which only a direct insert can give.

    python -m tests.fleet_sample docs/report-example.png   renders the report to a picture
"""

from __future__ import annotations

import json
import sqlite3
import sys
import tempfile
import uuid
from contextlib import closing
from datetime import datetime, timedelta, timezone
from pathlib import Path

from wpbackup.fleet import catalog

GiB = 1 << 30
MiB = 1 << 20


def _row(conn: sqlite3.Connection, server: str, site: str, when: datetime, status: str, details: str,
         stamp: datetime | None = None, **columns) -> None:
    values = {"timestamp": when.strftime("%Y-%m-%d %H:%M:%S"), "status": status, "details": details,
              "site_name": site, "server_id": server, "uid": uuid.uuid4().hex,
              "run_stamp": stamp.strftime("%Y%m%d-%H%M%S") if stamp else None, **columns}
    conn.execute(f"INSERT INTO backup_log ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                 tuple(values.values()))


def backup(conn: sqlite3.Connection, server: str, site: str, start: datetime, size: int,
           seconds: float = 95, bucket: str | None = "fleet-backups") -> str:
    """A complete backup: START, SUCCESS with the archive, and its S3 copy."""
    name = f"{site}-backup-{start:%Y%m%d-%H%M%S}.tar.zst"
    end = start + timedelta(seconds=seconds)
    _row(conn, server, site, start, "START", f"backup run {start:%Y%m%d-%H%M%S} started", start)
    _row(conn, server, site, end, "SUCCESS", f"backup {name} complete", start, archive_name=name,
         archive_size=size, archive_sha256="0" * 64, incomplete=0)
    if bucket:
        key = f"{server}/{start:%Y/%m/%d}/{name}"
        conn.execute("INSERT INTO s3_archives (filename, s3_endpoint, s3_bucket, file_size, upload_timestamp, "
                     "site_name, server_id, uid, sha256, archive_name, run_stamp) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                     (key, "https://s3.example.com", bucket, size, end.strftime("%Y-%m-%d %H:%M:%S"), site, server,
                      f"{server}:s3:{bucket}:{key}", "0" * 64, name, start.strftime("%Y%m%d-%H%M%S")))
    return name


def failure(conn: sqlite3.Connection, server: str, site: str, start: datetime, details: str) -> None:
    _row(conn, server, site, start, "START", f"backup run {start:%Y%m%d-%H%M%S} started", start)
    _row(conn, server, site, start + timedelta(minutes=3), "ERROR", details, start)


def verified(conn: sqlite3.Connection, server: str, site: str, when: datetime, archive: str,
             restore_test: bool = False) -> None:
    _row(conn, server, site, when, "INFO", f"verify OK: {archive} (local, s3: checksum, zstd, tar, manifest)",
         archive_name=archive, verified_local=1, verified_s3=1, restore_tested=1 if restore_test else None)


def sample_fleet(db_path: Path, now: datetime) -> None:
    """web-1 (this server): blog, shop (its last run failed), news; web-2: wiki (archive shrank
    by two thirds), forum; web-3: silent for three days."""
    night = now.replace(hour=3, minute=0, second=0, microsecond=0)
    night = night if night < now else night - timedelta(days=1)
    with closing(catalog.connect(db_path)) as conn, conn:
        blogs = []
        for days in (2, 1, 0):
            start = night - timedelta(days=days)
            blog = backup(conn, "web-1", "blog", start, int(1.21 * GiB) + days * 3 * MiB, 412)
            blogs.append(blog)
            news = backup(conn, "web-1", "news", start + timedelta(minutes=7), 318 * MiB + days * MiB, 64)
            forum = backup(conn, "web-2", "forum", start + timedelta(minutes=1), 2 * GiB + 400 * MiB, 803)
            if days:
                backup(conn, "web-1", "shop", start + timedelta(minutes=2), 845 * MiB, 171)
                backup(conn, "web-2", "wiki", start + timedelta(minutes=4), 690 * MiB, 122)
        failure(conn, "web-1", "shop", night + timedelta(minutes=2),
                "upload failed: S3 refused the request: AccessDenied (403): check S3_ACCESS_KEY_ID and the "
                "bucket policy")
        wiki = backup(conn, "web-2", "wiki", night + timedelta(minutes=4), 241 * MiB, 48)
        verified(conn, "web-1", "blog", night - timedelta(hours=22), blogs[1], restore_test=True)
        verified(conn, "web-1", "news", night + timedelta(hours=1), news)
        verified(conn, "web-2", "forum", night + timedelta(hours=1, minutes=30), forum, restore_test=True)
        verified(conn, "web-2", "wiki", night + timedelta(hours=1, minutes=10), wiki)
        for days in (5, 4, 3):
            backup(conn, "web-3", "portfolio", night - timedelta(days=days), 96 * MiB, 31)


def sample_install(root: Path, now: datetime) -> Path:
    """An install folder (web-1, local-only apart from the sample's rows) holding the sample
    fleet; returns its .env path."""
    root.mkdir(parents=True, exist_ok=True)
    sites = [{"name": name, "path": str(root / "www" / name)} for name in ("blog", "shop", "news")]
    (root / "sites.json").write_text(json.dumps({"sites": sites}))
    (root / ".env").write_text("SERVER_ID=web-1\n")
    sample_fleet(root / "backups.db", now)
    return root / ".env"


def render_png(html: str, png: Path, width: int = 1000, height: int = 1150) -> None:
    """Render an HTML page with headless Chromium (Debian's chromium package) into a PNG."""
    import subprocess

    with tempfile.TemporaryDirectory() as scratch:
        page = Path(scratch) / "report.html"
        page.write_text(html)
        subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                        "--no-first-run", "--disable-background-networking", "--disable-component-update",
                        "--disable-sync", "--hide-scrollbars", f"--user-data-dir={scratch}/profile",
                        f"--window-size={width},{height}", f"--screenshot={png.absolute()}", page.as_uri()],
                       check=True, capture_output=True, timeout=120)


def main(argv: list[str]) -> None:
    from wpbackup.config.settings import load_settings
    from wpbackup.fleet.report import build_report, render

    out = Path(argv[1] if len(argv) > 1 else "docs/report-example.png")
    now = datetime.now(timezone.utc).replace(hour=8, minute=0, second=0, microsecond=0)
    with tempfile.TemporaryDirectory() as scratch:
        env = sample_install(Path(scratch) / "install", now)
        settings = load_settings({"WPBACKUP_ENV": str(env), "TZ": "UTC"})
        report = build_report(settings, ["blog", "shop", "news"], now=now)
        _text, html = render(report)
        render_png(html, out)
    print(f"{report.subject}\nwritten: {out}")


if __name__ == "__main__":
    main(sys.argv)

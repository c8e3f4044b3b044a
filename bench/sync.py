"""D1 sync benchmark: how many HTTP requests a sync costs. One command, no arguments needed:

    python bench/sync.py [--rows 10000]

Runs the real sync engine (wpbackup/fleet/sync.py) against the local D1 imitation
(tests/d1server.py, which enforces D1's limits) with two catalogs, web-1 and web-2, and prints
the requests of each case, counted by the server (retries would count; none happen here),
with the largest statement sent (bound parameters, bytes of SQL) and the largest request and
answer bodies:

  push, first sync     web-1's backlog of --rows rows, its very first sync (handshake, D1's
                       columns and indexes, the push, the pull)
  push, steady         --rows new rows on a server that synced before
  pull, first sync     web-2's new catalog takes the fleet's rows (a lost catalog, a new server)
  pull, steady         web-2, synced before, takes --rows new rows of web-1
  nothing new          a sync with nothing to send or take

The issue's budget: nothing new <= 2 requests, 10,000 rows pushed <= 25, pulled <= 10.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from tests.d1server import D1Server  # noqa: E402
from wpbackup.fleet import catalog, sync  # noqa: E402
from wpbackup.fleet.d1 import D1Client  # noqa: E402

BUDGET = {"nothing new": 2, "push": 25, "pull": 10}


def backlog(path: Path, server_id: str, rows: int, tag: str) -> None:
    """``rows`` new catalog rows of one server, shaped like a fleet's: 70% log lines, 20%
    uploads, 10% report rows (the proportions hardly matter: all three fill requests alike)."""
    lines, uploads = rows * 7 // 10, rows * 2 // 10
    reports = rows - lines - uploads
    with closing(catalog.connect(path)) as conn, conn:
        conn.executemany(
            "INSERT INTO backup_log (timestamp, status, details, site_name, server_id, uid, run_stamp, archive_name, "
            "archive_size, archive_sha256) VALUES (?,?,?,?,?,?,?,?,?,?)",
            [("2026-11-01 03:00:00", "SUCCESS", f"backup site{n % 50}-backup-20261101-030000.tar.zst complete: "
              "412.3 MiB, 14 tables, 18234 files, s3://wp-backups/web-1/2026/11/01/", f"site{n % 50}", server_id,
              f"{server_id}:{tag}:line:{n}", "20261101-030000", f"site{n % 50}-backup-20261101-030000.tar.zst",
              432_345_678, "ab" * 32) for n in range(lines)])
        conn.executemany(
            "INSERT INTO s3_archives (filename, s3_endpoint, s3_bucket, file_size, upload_timestamp, site_name, "
            "server_id, uid, sha256, archive_name, run_stamp) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            [(f"{server_id}/2026/11/01/site{n}-backup-20261101-030000.tar.zst", "https://s3.example.com",
              "wp-backups", 432_345_678, "2026-11-01 03:20:00", f"site{n % 50}", server_id,
              f"{server_id}:{tag}:s3:{n}", "cd" * 32, f"site{n}-backup-20261101-030000.tar.zst", "20261101-030000")
             for n in range(uploads)])
        conn.executemany(
            "INSERT INTO daily_emails (date, email_sent, backup_count, server_id, uid) VALUES (?,?,?,?,?)",
            [(f"2026-{n % 12 + 1:02d}-01", 1, 50, server_id, f"{server_id}:{tag}:report:{n}") for n in range(reports)])


def measure(d1: D1Server, path: Path, server_id: str) -> dict:
    """One sync: its report and what the server saw of it."""
    first = len(d1.seen)
    client = D1Client(d1.account, d1.database, d1.token, d1.url)
    started = time.perf_counter()
    report = sync.sync(path, server_id, client)
    seconds = time.perf_counter() - started
    client.close()
    seen = d1.seen[first:]
    assert all(s.status == 200 for s in seen), [s.status for s in seen]
    statements = [st for s in seen for st in s.statements]
    return {"report": report, "requests": len(seen), "seconds": seconds,
            "params": max((p for _, p in statements), default=0),
            "sql": max((len(q.encode()) for q, _ in statements), default=0),
            "body": max((len(s.body) for s in seen), default=0),
            "answer": max((s.answered for s in seen), default=0)}


def line(name: str, result: dict, budget: int | None) -> str:
    report = result["report"]
    verdict = "" if budget is None else (f"  (budget {budget}: {'ok' if result['requests'] <= budget else 'OVER'})")
    return (f"{name:<18} {result['requests']:>3} requests{verdict:<18} pushed {report.pushed:>6}, pulled "
            f"{report.pulled:>6}; largest statement {result['params']} params, {result['sql']} B of SQL; "
            f"largest request {result['body'] / 1024:.0f} KiB, answer {result['answer'] / 1024:.0f} KiB; "
            f"{result['seconds']:.2f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    rows = parser.parse_args().rows
    with tempfile.TemporaryDirectory(prefix="wpbackup-sync-bench-") as tmp:
        base = Path(tmp)
        d1 = D1Server(base / "d1")
        try:
            one, two = base / "web-1.db", base / "web-2.db"
            catalog.connect(one).close()
            backlog(one, "web-1", rows, "a")
            results = [("push, first sync", measure(d1, one, "web-1"), BUDGET["push"])]
            results.append(("pull, first sync", measure(d1, two, "web-2"), BUDGET["pull"]))
            backlog(one, "web-1", rows, "b")
            results.append(("push, steady", measure(d1, one, "web-1"), BUDGET["push"]))
            results.append(("pull, steady", measure(d1, two, "web-2"), BUDGET["pull"]))
            results.append(("nothing new", measure(d1, two, "web-2"), BUDGET["nothing new"]))
            results.append(("nothing new", measure(d1, one, "web-1"), BUDGET["nothing new"]))
        finally:
            d1.stop()
        with closing(sqlite3.connect(two)) as conn:
            held = sum(conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in sync.TABLES)
    print(f"D1 sync, {rows} rows per backlog (D1 imitation on 127.0.0.1; requests counted by the server)")
    for name, result, budget in results:
        print(line(name, result, budget))
    print(f"web-2 holds {held} rows of web-1 (expected {2 * rows})")
    over = [name for name, result, budget in results if rows == 10_000 and result["requests"] > budget]
    return 1 if over or held != 2 * rows else 0


if __name__ == "__main__":
    sys.exit(main())

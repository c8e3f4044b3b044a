"""The sync engine against the D1 imitation (tests/d1server.py), in this process so a fault
can meet any request: every fault switch (the sync completes, or fails clearly and completes
next time, no row lost, none doubled), a 10,000-row backlog within D1's limits and the
request budget, a predecessor's D1 tables, a replaced D1, and other servers' rows untouched."""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing

import pytest

from wpbackup.fleet import catalog, sync
from wpbackup.fleet.d1 import D1Client, D1Error, D1SqlError

from .d1server import D1Server

SKIP = ("id", "change_seq", "fleet_seq")


def _client(d1: D1Server, **options) -> D1Client:
    """Short timeouts and waits: the imitation answers in milliseconds."""
    settings = {"timeout": (2.0, 1.0), "backoff": (0.05, 0.2), "budget": 20.0}
    return D1Client(d1.account, d1.database, d1.token, d1.url, **{**settings, **options})


def _fill(path, server_id: str, runs: int = 3, site: str = "blog") -> None:
    """A catalog as backups leave it: START, INFO and SUCCESS lines, uploads, a report row."""
    for n in range(runs):
        stamp = f"2026110{n + 1}-030000"
        name = f"{site}-backup-{stamp}.tar.zst"
        catalog.log_event(path, "START", f"backup run {stamp} started", site=site, server_id=server_id,
                          stamp=stamp, uid=f"{server_id}:{site}:{stamp}:start")
        catalog.log_event(path, "INFO", f"run {stamp}: note {n}", site=site, server_id=server_id, stamp=stamp)
        catalog.record_upload(path, key=f"{server_id}/{name}", endpoint=None, bucket="wp-backups", size=1000 + n,
                              sha256="ab" * 32, site=site, server_id=server_id, stamp=stamp, archive_name=name,
                              uploaded_at="2026-11-01 03:05:00")
        catalog.log_event(path, "SUCCESS", f"backup {name} complete", site=site, server_id=server_id,
                          stamp=stamp, uid=f"{server_id}:{site}:{stamp}:success", archive_name=name,
                          archive_size=1000 + n, archive_sha256="ab" * 32)
    with closing(catalog.connect(path)) as conn, conn:
        conn.execute("INSERT INTO daily_emails (date, email_sent, backup_count, server_id, uid) VALUES (?,?,?,?,?)",
                     ("2026-11-03", 0, runs, server_id, f"{server_id}:report:{site}:2026-11-03"))


def _rows(query) -> dict[str, dict[str, tuple]]:
    """table -> uid -> the row's shared values (no local ids, no stamps)."""
    tables = {}
    for table in sync.TABLES:
        found = {}
        for row in query(f"SELECT * FROM {table} WHERE uid IS NOT NULL"):
            found[row["uid"]] = tuple((k, row[k]) for k in row.keys() if k not in SKIP)
        tables[table] = found
    return tables


def _local(path) -> dict[str, dict[str, tuple]]:
    with closing(sqlite3.connect(path)) as conn:
        conn.row_factory = sqlite3.Row
        return _rows(lambda q: conn.execute(q).fetchall())


def _same_everywhere(path, d1: D1Server, server_id: str = "web-1") -> None:
    """D1 holds exactly this server's rows (the same values), each once."""
    local, remote = _local(path), _rows(d1.sql)
    for table in sync.TABLES:
        mine = {uid: row for uid, row in remote[table].items() if dict(row)["server_id"] == server_id}
        assert mine == {uid: row for uid, row in local[table].items() if dict(row)["server_id"] == server_id}, table
        assert not d1.sql(f"SELECT uid FROM {table} WHERE uid IS NOT NULL GROUP BY uid HAVING COUNT(*) > 1")


def _wait_answered(d1: D1Server, fault: str) -> None:
    """A stalled request is still executed when its stall ends (as a slow D1 would): wait
    for that, so the checks see what it did."""
    deadline = time.monotonic() + 30
    while any(seen.fault == fault and seen.status is None for seen in d1.seen):
        assert time.monotonic() < deadline, "the stalled request never finished"
        time.sleep(0.05)


FAULTS = [("overloaded", {"retry_after": 1}), ("internal", {}), ("connection_lost", {}), ("html502", {}),
          ("html504", {}), ("reset", {}), ("stall", {"seconds": 2.0}), ("drop_after_commit", {})]


@pytest.mark.parametrize("kind, options", FAULTS, ids=[kind for kind, _ in FAULTS])
@pytest.mark.parametrize("at", ["handshake", "push"])
def test_a_transient_fault_is_retried_and_leaves_every_row_once(tmp_path, d1, kind, options, at):
    path = tmp_path / "backups.db"
    _fill(path, "web-1")
    d1.inject(kind, after=0 if at == "handshake" else 2, **options)  # 0 handshake, 1 columns, 2 push
    report = sync.sync(path, "web-1", _client(d1))
    assert report.pushed == len(_local(path)["backup_log"]) + 3 + 1  # lines, uploads, the report row
    _wait_answered(d1, kind)
    assert any(seen.fault == kind for seen in d1.seen)
    _same_everywhere(path, d1)
    again = sync.sync(path, "web-1", _client(d1))
    assert (again.pushed, again.pulled, again.requests) == (0, 0, 1)
    _same_everywhere(path, d1)


def test_a_lasting_outage_fails_clearly_and_the_next_sync_completes(tmp_path, d1):
    path = tmp_path / "backups.db"
    _fill(path, "web-1", runs=300)  # 1,201 rows: the push takes two requests
    d1.inject("internal", times=50, after=3)  # handshake, columns, the first push pass; then 500s
    with pytest.raises(D1Error, match=r"HTTP 500, code 7500: internal error; reference = .*gave up after 6 attempts"):
        sync.sync(path, "web-1", _client(d1, budget=5.0))
    with closing(sqlite3.connect(path)) as conn:  # the marks moved for what D1 committed, no further
        marks = dict(conn.execute("SELECT key, value FROM sync_state WHERE key LIKE 'push:%'").fetchall())
        for table in sync.TABLES:
            sent = conn.execute(f"SELECT uid FROM {table} WHERE change_seq <= ?", (marks.get(f"push:{table}", -1),))
            assert {uid for (uid,) in sent} == {row["uid"] for row in d1.sql(f"SELECT uid FROM {table}")}
    first = sum(len(d1.sql(f"SELECT uid FROM {table}")) for table in sync.TABLES)
    assert 900 < first <= sync.PUSH_ROWS  # the first push request, whole statements of it
    d1.clear_faults()
    report = sync.sync(path, "web-1", _client(d1))
    assert report.pushed == 1201 - first
    _same_everywhere(path, d1)


def test_cloudflare_api_budget_is_waited_out_or_reported(tmp_path):
    """1,200 requests per 5 minutes, then 5 minutes blocked: scaled to 4 per 2 s, 2 s blocked."""
    d1 = D1Server(tmp_path / "d1", api_budget=4, api_window=2.0, api_block=2.0)
    try:
        path = tmp_path / "backups.db"
        _fill(path, "web-1", runs=500)  # 2,001 rows: handshake, columns, 3 pushes, pull
        report = sync.sync(path, "web-1", _client(d1, budget=30.0))
        assert [seen.status for seen in d1.seen].count(429) >= 1
        assert report.requests == len(d1.seen)
        _same_everywhere(path, d1)

        d1.api_block = 600.0  # blocked for longer than a sync waits: one clear error, no waiting
        _fill(path, "web-1", runs=1, site="shop")
        with pytest.raises(D1Error, match="Please wait and consider throttling.*asks to wait 600 s"):
            for _ in range(6):  # one or two requests each: the budget of 4 runs out within these
                sync.sync(path, "web-1", _client(d1))
        assert d1.seen[-1].status == 429 and d1.seen[-2].status != 429  # given up at once, not retried
        d1.clear_faults()
        sync.sync(path, "web-1", _client(d1))
        _same_everywhere(path, d1)
    finally:
        d1.stop()


def test_a_backlog_of_10000_rows_stays_within_the_limits_and_the_request_budget(tmp_path, d1):
    path = tmp_path / "backups.db"
    catalog.connect(path).close()
    with closing(catalog.connect(path)) as conn, conn:
        conn.executemany(
            "INSERT INTO backup_log (timestamp, status, details, site_name, server_id, uid, run_stamp) "
            "VALUES (?,?,?,?,?,?,?)",
            [("2026-11-01 03:00:00", "INFO", f"line {n}: " + "x" * 150, f"site{n % 40}", "web-1", f"web-1:l{n}",
              "20261101-030000") for n in range(7000)])
        conn.executemany(
            "INSERT INTO s3_archives (filename, s3_bucket, file_size, upload_timestamp, site_name, server_id, uid, "
            "sha256, archive_name, run_stamp) VALUES (?,?,?,?,?,?,?,?,?,?)",
            [(f"web-1/2026/11/01/s{n}.tar.zst", "wp-backups", n, "2026-11-01 03:00:00", f"site{n % 40}", "web-1",
              f"web-1:s3:{n}", "cd" * 32, f"s{n}.tar.zst", "20261101-030000") for n in range(2000)])
        conn.executemany(
            "INSERT INTO daily_emails (date, email_sent, backup_count, server_id, uid) VALUES (?,?,?,?,?)",
            [(f"day {n}", 1, n, "web-1", f"web-1:report:{n}") for n in range(1000)])
        conn.execute("UPDATE backup_log SET details = ? WHERE uid = 'web-1:l0'", ("y" * 150_000,))  # a long one

    pushed = sync.sync(path, "web-1", _client(d1))
    assert pushed.pushed == 10_000 and pushed.requests <= 25, pushed
    assert all(seen.status == 200 for seen in d1.seen)
    statements = [s for seen in d1.seen for s in seen.statements]
    assert max(params for _, params in statements) <= 100
    assert max(len(sql.encode()) for sql, _ in statements) < 100_000
    _same_everywhere(path, d1)

    other = tmp_path / "server2.db"
    pulled = sync.sync(other, "web-2", _client(d1))
    assert pulled.pulled == 10_000 and pulled.requests <= 10, pulled
    assert _local(other) == _local(path)
    idle = sync.sync(path, "web-1", _client(d1))
    assert idle.requests <= 2 and (idle.pushed, idle.pulled) == (0, 0)


def test_rows_that_change_after_insert_are_sent_again(tmp_path, d1):
    path = tmp_path / "backups.db"
    _fill(path, "web-1")
    sync.sync(path, "web-1", _client(d1))
    with closing(catalog.connect(path)) as conn, conn:  # what prune and the report do to their rows
        conn.execute("UPDATE s3_archives SET deleted_at = '2026-11-05 04:00:00' WHERE run_stamp = '20261101-030000'")
        conn.execute("UPDATE daily_emails SET email_sent = 1")
    report = sync.sync(path, "web-1", _client(d1))
    assert (report.pushed, report.requests) == (2, 2)
    assert [r["deleted_at"] for r in d1.sql("SELECT deleted_at FROM s3_archives ORDER BY run_stamp")] == \
        ["2026-11-05 04:00:00", None, None]
    assert d1.sql("SELECT email_sent FROM daily_emails")[0][0] == 1
    other = tmp_path / "server2.db"
    sync.sync(other, "web-2", _client(d1))
    assert _local(other) == _local(path)


def test_a_server_never_changes_another_servers_rows(tmp_path, d1):
    one, two = tmp_path / "one.db", tmp_path / "two.db"
    _fill(one, "web-1")
    _fill(two, "web-2", site="shop")
    sync.sync(two, "web-2", _client(d1))
    # web-1 holds a row under a uid of web-2 (nothing makes one, but a bug or a hand could):
    # D1 keeps web-2's row, and web-1's pull leaves web-1's own alone
    with closing(catalog.connect(one)) as conn, conn:
        conn.execute("INSERT INTO backup_log (status, details, site_name, server_id, uid) VALUES "
                     "('INFO', 'claims a web-2 uid', 'blog', 'web-1', 'web-2:shop:20261102-030000:start')")
    sync.sync(one, "web-1", _client(d1))
    [claimed] = d1.sql("SELECT * FROM backup_log WHERE uid = 'web-2:shop:20261102-030000:start'")
    assert claimed["server_id"] == "web-2" and claimed["details"] == "backup run 20261102-030000 started"
    [kept] = sqlite3.connect(one).execute("SELECT server_id, details FROM backup_log "
                                          "WHERE uid = 'web-2:shop:20261102-030000:start'").fetchall()
    assert kept == ("web-1", "claims a web-2 uid")
    # web-2's rows that web-1 changed locally are not web-1's to send
    with closing(catalog.connect(one)) as conn, conn:
        conn.execute("UPDATE backup_log SET details = 'changed by web-1' "
                     "WHERE uid = 'web-2:shop:20261101-030000:start'")
    assert sync.sync(one, "web-1", _client(d1)).pushed == 0
    [start] = d1.sql("SELECT * FROM backup_log WHERE uid = 'web-2:shop:20261101-030000:start'")
    assert start["server_id"] == "web-2" and start["details"] == "backup run 20261101-030000 started"
    # D1's copy of web-2's own row changed by someone else: web-2 keeps what it wrote itself
    with closing(sqlite3.connect(d1.path)) as conn, conn:
        conn.execute("UPDATE backup_log SET details = 'edited in D1', fleet_seq = fleet_seq + 100 "
                     "WHERE uid = 'web-2:shop:20261103-030000:start'")

    def own(path):
        return {table: {uid: row for uid, row in rows.items() if dict(row)["server_id"] == "web-2"}
                for table, rows in _local(path).items()}

    before = own(two)
    sync.sync(two, "web-2", _client(d1))
    assert own(two) == before
    two.unlink()  # and when web-2's catalog is lost, D1's copy is what comes back
    sync.sync(two, "web-2", _client(d1))
    assert own(two)["backup_log"]["web-2:shop:20261103-030000:start"][2] == ("details", "edited in D1")


def test_a_predecessors_d1_tables_get_the_columns_and_keep_their_rows(tmp_path, d1):
    with closing(sqlite3.connect(d1.path)) as conn, conn:
        conn.executescript("""
            CREATE TABLE backup_log (id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp DATETIME, status TEXT,
                                     details TEXT);
            CREATE TABLE s3_archives (id INTEGER PRIMARY KEY AUTOINCREMENT, filename TEXT, s3_endpoint TEXT,
                                      s3_bucket TEXT, file_size INTEGER, upload_timestamp DATETIME);
            CREATE TABLE daily_emails (id INTEGER PRIMARY KEY AUTOINCREMENT, date TEXT, email_sent INTEGER,
                                       backup_count INTEGER);
            INSERT INTO backup_log (timestamp, status, details) VALUES ('2025-01-01 03:00:00', 'SUCCESS', 'old');
            INSERT INTO backup_log (timestamp, status, details) VALUES ('2025-01-02 03:00:00', 'SUCCESS', 'old');
        """)
    path = tmp_path / "backups.db"
    _fill(path, "web-1")
    report = sync.sync(path, "web-1", _client(d1))
    assert "backup_log.uid" in report.added_columns and "s3_archives.deleted_at" in report.added_columns
    assert len(d1.sql("SELECT * FROM backup_log WHERE details = 'old'")) == 2
    _same_everywhere(path, d1)
    fresh = tmp_path / "fresh.db"
    sync.sync(fresh, "web-2", _client(d1))
    assert len(_local(fresh)["backup_log"]) == len(_local(path)["backup_log"])  # the uid-less rows stay in D1
    assert sync.sync(path, "web-1", _client(d1)).requests == 1


def test_a_replaced_d1_database_gets_every_row_again(tmp_path, d1):
    path = tmp_path / "backups.db"
    _fill(path, "web-1")
    sync.sync(path, "web-1", _client(d1))
    with closing(sqlite3.connect(d1.path)) as conn, conn:  # a new, empty database under the same id
        for table in (*sync.TABLES, sync.META):
            conn.execute(f"DROP TABLE {table}")
    report = sync.sync(path, "web-1", _client(d1))
    assert report.pushed == sum(len(rows) for rows in _local(path).values())
    _same_everywhere(path, d1)


def test_d1_tables_changed_by_hand_give_a_readable_sql_error(tmp_path, d1):
    with closing(sqlite3.connect(d1.path)) as conn, conn:  # uid present, but not unique: no upsert possible
        conn.execute("CREATE TABLE backup_log (id INTEGER PRIMARY KEY, uid TEXT, server_id TEXT)")
    path = tmp_path / "backups.db"
    _fill(path, "web-1")
    with pytest.raises(D1SqlError, match=r"D1 refused the SQL \(code 7500: ON CONFLICT clause does not match"):
        sync.sync(path, "web-1", _client(d1))
    with closing(sqlite3.connect(path)) as conn:
        assert {value for (value,) in conn.execute("SELECT value FROM sync_state WHERE key LIKE 'push:%'")} == {0}

"""Two-way sync of this server's catalog (backups.db) with the fleet's D1 database.

    backups.db (this server)                               D1 (one database, the whole fleet)
    this server's rows, change_seq > push mark   --push-->  upsert by uid, fleet_seq = the request's stamp
    the other servers' rows (this server's own   <--pull--  rows with (fleet_seq, rowid) > pull mark
      too, until a new catalog had a full pull)

One sync, in requests (each one transaction in D1):
  1. handshake: create what is missing (IF NOT EXISTS), read D1's columns and fleet id, and,
     once D1's columns are known to match, the first page of every table's pull
  2. first sync with this D1 (or new columns): add D1's missing columns and the indexes,
     and ask for the first pages there
  3. pull what is left, PULL_ROWS rows per table and request; each page is applied locally
     in one transaction together with its mark. Before the push, so that a catalog that was
     lost takes back only what D1 held before, not the rows it is about to send
  4. push: new and changed rows as multi-row upserts (at most 100 bound parameters each),
     packed into requests of up to PUSH_ROWS rows; the push mark moves after each request
     D1 answered, never before

So a sync with nothing new costs one request; 10,000 rows go out in 11 (plus the handshake)
and come in in 2-4 (bench/sync.py measures it).

Why it is safe to repeat: every row has a fleet-unique ``uid``, UNIQUE in D1. A row sent
twice (a retry, an answer lost after D1 committed, a crash before the mark moved) updates
itself with the same values, and the upsert changes nothing when nothing differs. A server
never changes another's rows: it pushes only rows of its SERVER_ID, D1's upsert only updates
a row of the same server_id, and the pull writes other servers' rows only, plus this server's
own when they are missing here (a lost catalog gets its history back; rows present here are
never overwritten from D1).

``fleet_seq``: D1 stamps every row a request writes with the value of a counter in
``fleet_sync`` that the request bumps first. D1 runs one request at a time, so a later commit
always carries a higher stamp, and a reader that went up to (stamp, rowid) misses nothing
when it goes on from there. ``fleet_sync`` also holds a random fleet id: a D1 database that
was replaced (new id) makes this server send all of its rows again and pull from the start.
"""

from __future__ import annotations

import json
import re
import sqlite3
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

from wpbackup.console import log
from wpbackup.fleet import catalog
from wpbackup.fleet.d1 import BODY_BYTES, MAX_PARAMS, D1Client, D1Error, D1SqlError, statement_bytes

TABLES = ("backup_log", "s3_archives", "daily_emails")
LOCAL_ONLY = ("id", "change_seq")  # the local row id means nothing elsewhere; change_seq is ours
META = "fleet_sync"
PUSH_ROWS = 1000  # rows per push request (about 0.5 MB of JSON for backup_log lines)
PULL_ROWS = 2500  # rows per table and pull request
DONE = 1 << 62  # a rowid past any: "everything up to this stamp"
STAMP = f"(SELECT value FROM {META} WHERE key = 'seq')"
NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


@dataclass
class SyncReport:
    """What one sync did, for the summary line and the bench."""

    pushed: int = 0
    pulled: int = 0
    recovered: int = 0  # this server's own rows brought back from D1 (a lost catalog)
    requests: int = 0
    added_columns: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"pushed {self.pushed} rows", f"pulled {self.pulled}"]
        if self.recovered:
            parts.append(f"{self.recovered} of this server's own rows restored from D1")
        if self.added_columns:
            parts.append(f"added to D1: {', '.join(self.added_columns)}")
        return ", ".join(parts) + f" ({self.requests} D1 requests)"


def sync(db_path: Path, server_id: str, client: D1Client) -> SyncReport:
    """Push this server's new and changed rows, pull the fleet's; D1Error when D1 refuses or
    stays unreachable (what was done until then stays done, the next sync goes on from there)."""
    with closing(catalog.connect(db_path)) as conn:
        return _Sync(conn, server_id, client).run()


def local_columns(conn: sqlite3.Connection, table: str) -> list[tuple[str, str]]:
    """(name, type) of a local table's columns that D1 holds too (the local schema is the
    source: a column a later version adds reaches D1 by itself)."""
    columns = [(row[1], row[2] or "") for row in conn.execute(f"PRAGMA table_info({table})")]
    for name, kind in columns:
        if not NAME.match(name) or not re.fullmatch(r"[A-Za-z ]*", kind):
            raise ValueError(f"unexpected column {name!r} {kind!r} in the local {table}")
    return [(name, kind) for name, kind in columns if name not in LOCAL_ONLY]


# -- the SQL sent to D1 ------------------------------------------------------------------------

def schema_statements(types: dict[str, list[tuple[str, str]]]) -> list[tuple[str, list]]:
    """What a D1 database needs, created when missing: harmless to send every time."""
    statements = [
        (f"CREATE TABLE IF NOT EXISTS {META} (key TEXT PRIMARY KEY, value)", []),
        (f"INSERT OR IGNORE INTO {META} (key, value) VALUES ('seq', 0), ('fleet_id', lower(hex(randomblob(16))))",
         []),
    ]
    for table in TABLES:
        columns = ", ".join(f"{name} {'TEXT NOT NULL UNIQUE' if name == 'uid' else kind}".rstrip()
                            for name, kind in types[table])
        statements.append((f"CREATE TABLE IF NOT EXISTS {table} (id INTEGER PRIMARY KEY, {columns}, "
                           "fleet_seq INTEGER NOT NULL DEFAULT 0)", []))
    return statements


def _update_where_changed(table: str, names: list[str]) -> tuple[str, str]:
    """An upsert's SET list (every column but uid) and the condition that some value differs,
    so an unchanged row is not written again (and gets no new stamp)."""
    updates = ", ".join(f"{name} = excluded.{name}" for name in names if name != "uid")
    ours = ", ".join(f"{table}.{name}" for name in names)
    theirs = ", ".join(f"excluded.{name}" for name in names)
    return updates, f"({ours}) IS NOT ({theirs})"


def upsert_statement(table: str, names: list[str], rows: int) -> str:
    """Insert ``rows`` rows, or update each existing one of the same uid and server where a
    value differs; every row gets the request's stamp."""
    one = f"({', '.join('?' * len(names))}, {STAMP})"
    updates, differs = _update_where_changed(table, names)
    return (f"INSERT INTO {table} ({', '.join(names)}, fleet_seq) VALUES {', '.join([one] * rows)} "
            f"ON CONFLICT(uid) DO UPDATE SET {updates}, fleet_seq = excluded.fleet_seq "
            f"WHERE {table}.server_id IS excluded.server_id AND {differs}")


def pull_statements(table: str, names: list[str], mark: tuple[int, int], server_id: str | None):
    """A page of rows after ``mark`` (one more than PULL_ROWS, to know whether more follow),
    without this server's own unless ``server_id`` is None, and the highest stamp so far."""
    where, params = "(fleet_seq, rowid) > (?, ?) AND uid IS NOT NULL", [mark[0], mark[1]]
    if server_id is not None:
        where, params = where + " AND server_id IS NOT ?", params + [server_id]
    page = (f"SELECT rowid AS d1_rowid, fleet_seq, {', '.join(names)} FROM {table} WHERE {where} "
            f"ORDER BY fleet_seq, rowid LIMIT {PULL_ROWS + 1}", params)
    return [page, (f"SELECT MAX(fleet_seq) AS top FROM {table}", [])]


class _Sync:
    """One sync over one catalog connection (see the module docstring for the steps)."""

    def __init__(self, conn: sqlite3.Connection, server_id: str, client: D1Client):
        self.conn, self.me, self.client = conn, server_id, client
        self.types = {table: local_columns(conn, table) for table in TABLES}
        self.names = {table: [name for name, _ in self.types[table]] for table in TABLES}
        self.report = SyncReport()
        self.fingerprint = json.dumps(self.types, sort_keys=True)

    def run(self) -> SyncReport:
        first = self.client.requests
        try:
            pages = self.handshake()
            self.pull(pages)
            self.push()
        finally:
            self.report.requests = self.client.requests - first
        return self.report

    # -- local marks (catalog.SYNC_STATE) --

    def get(self, key: str, default=None):
        row = self.conn.execute(f"SELECT value FROM {catalog.SYNC_STATE} WHERE key = ?", (key,)).fetchone()
        return default if row is None or row[0] is None else row[0]

    def put(self, key: str, value) -> None:
        """Within the caller's transaction."""
        self.conn.execute(f"INSERT INTO {catalog.SYNC_STATE} (key, value) VALUES (?, ?) "
                          "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    def pull_mark(self, table: str) -> tuple[int, int]:
        seq, _, rowid = str(self.get(f"pull:{table}", "0 0")).partition(" ")
        return int(seq), int(rowid)

    def recovering(self) -> bool:
        """Until this catalog had one full pull from this D1, the pull takes this server's own
        rows too: whatever is missing here (a lost catalog) comes back."""
        return self.get("recovered") is None or self.get("recovered") != self.get("fleet_id")

    # -- 1, 2: handshake and schema --

    def handshake(self) -> dict | None:
        """The first request; the first pull pages when they could be asked for at once."""
        known = self.get("fleet_id") is not None and self.get("d1_columns") == self.fingerprint
        statements = schema_statements(self.types) + [(f"SELECT key, value FROM {META}", [])]
        statements += [(f"PRAGMA table_info({table})", []) for table in TABLES]
        head = len(statements)
        if known:
            owner = None if self.recovering() else self.me
            for table in TABLES:
                statements += pull_statements(table, self.names[table], self.pull_mark(table), owner)
        try:
            results = self.client.batch(statements)
        except D1SqlError:
            if not known:
                raise
            with self.conn:  # someone changed D1's tables: check them and add what is missing
                self.put("d1_columns", None)
            return self.handshake()
        meta = {row["key"]: row["value"] for row in results[head - 4]}
        columns = {table: {row["name"] for row in results[head - 3 + i]} for i, table in enumerate(TABLES)}
        if meta.get("fleet_id") != self.get("fleet_id"):
            self.new_fleet(meta.get("fleet_id"))
            known = False
        if not known or any(name not in columns[t] for t in TABLES for name in self.names[t]):
            return self.add_columns(columns)
        return {table: results[head + 2 * i: head + 2 * i + 2] for i, table in enumerate(TABLES)}

    def new_fleet(self, fleet_id: str | None) -> None:
        """First sync with this D1 database, or it was replaced: start over (every pull from
        the start; after a replacement all of this server's rows go out again, also those it
        once pulled from the old D1, change_seq 0: harmless repeats)."""
        replaced = self.get("fleet_id") is not None
        if replaced:
            log.info("sync: the D1 database is not the one this catalog synced with before "
                     "(its fleet id changed): sending all of this server's rows again")
        with self.conn:
            self.conn.execute(f"DELETE FROM {catalog.SYNC_STATE} WHERE key LIKE 'push:%' OR key LIKE 'pull:%' "
                              "OR key IN ('recovered', 'd1_columns')")
            self.put("fleet_id", fleet_id)
            for table in TABLES if not replaced else ():  # rows pulled from this D1 are in it already
                self.put(f"push:{table}", 0)

    def add_columns(self, present: dict[str, set[str]]) -> dict:
        """Give D1 the columns it lacks (an older version's tables, or a database a
        predecessor made) and the indexes the sync relies on; then the first pull pages."""
        statements = []
        for table in TABLES:
            for name, kind in self.types[table]:
                if name not in present[table]:
                    statements.append((f"ALTER TABLE {table} ADD COLUMN {name} {kind}".rstrip(), []))
                    self.report.added_columns.append(f"{table}.{name}")
            if "fleet_seq" not in present[table]:
                statements.append((f"ALTER TABLE {table} ADD COLUMN fleet_seq INTEGER NOT NULL DEFAULT 0", []))
            if "uid" not in present[table]:  # a table made without it: the upsert needs it unique
                statements.append((f"CREATE UNIQUE INDEX IF NOT EXISTS {table}_uid ON {table}(uid)", []))
            statements.append((f"CREATE INDEX IF NOT EXISTS {table}_fleet_seq ON {table}(fleet_seq)", []))
        head = len(statements)
        owner = None if self.recovering() else self.me
        for table in TABLES:
            statements += pull_statements(table, self.names[table], self.pull_mark(table), owner)
        results = self.client.batch(statements)
        with self.conn:
            self.put("d1_columns", self.fingerprint)
        return {table: results[head + 2 * i: head + 2 * i + 2] for i, table in enumerate(TABLES)}

    # -- 3: push --

    def pending(self, table: str):
        """This server's rows changed since the push mark, oldest change first, read a page
        at a time (a backlog of any size in bounded memory)."""
        names = ", ".join(self.names[table])
        last = self.get(f"push:{table}", -1)
        while True:
            rows = self.conn.execute(
                f"SELECT {names}, change_seq FROM {table} WHERE server_id = ? AND change_seq > ? "
                "ORDER BY change_seq LIMIT ?", (self.me, last, PUSH_ROWS)).fetchall()
            if not rows:
                return
            yield from rows
            last = rows[-1]["change_seq"]

    def statements(self):
        """(table, statement, rows, highest change_seq) of the whole backlog, each statement
        as many rows as 100 bound parameters allow."""
        for table in TABLES:
            names = self.names[table]
            per = MAX_PARAMS // len(names)
            group: list[sqlite3.Row] = []
            for row in self.pending(table):
                group.append(row)
                if len(group) == per:
                    yield table, self._upsert(table, group), len(group), group[-1]["change_seq"]
                    group = []
            if group:
                yield table, self._upsert(table, group), len(group), group[-1]["change_seq"]

    def _upsert(self, table: str, rows: list[sqlite3.Row]) -> tuple[str, list]:
        names = self.names[table]
        return upsert_statement(table, names, len(rows)), [row[name] for row in rows for name in names]

    def push(self) -> None:
        """Send the backlog in as few requests as PUSH_ROWS and BODY_BYTES allow."""
        request: list[tuple[str, list]] = []
        size = rows = 0
        marks: dict[str, int] = {}
        for table, statement, count, mark in self.statements():
            cost = statement_bytes(*statement)
            if request and (rows + count > PUSH_ROWS or size + cost > BODY_BYTES):
                self.send(request, rows, marks)
                request, size, rows, marks = [], 0, 0, {}
            request.append(statement)
            size, rows, marks[table] = size + cost, rows + count, mark
        if request:
            self.send(request, rows, marks)
        with self.conn:  # all sent: rows pulled from now on (change_seq 0) are not ours to send
            for table in TABLES:
                if self.get(f"push:{table}", -1) < 0:
                    self.put(f"push:{table}", 0)

    def send(self, request: list[tuple[str, list]], rows: int, marks: dict[str, int]) -> None:
        """One push request; the marks move only once D1 answered that it committed."""
        if self.client.stopping.is_set():
            raise D1Error("stopped before the sync was done")
        self.client.batch([(f"UPDATE {META} SET value = value + 1 WHERE key = 'seq'", [])] + request)
        with self.conn:
            for table, mark in marks.items():
                self.put(f"push:{table}", mark)
        self.report.pushed += rows

    # -- 4: pull --

    def pull(self, pages: dict | None) -> None:
        """Apply the handshake's pages, then ask for more until every table is done."""
        recovering = self.recovering()
        owner = None if recovering else self.me
        todo = list(TABLES)
        if pages is not None:
            todo = [table for table in TABLES if not self.take(table, *pages[table])]
        while todo:
            if self.client.stopping.is_set():
                raise D1Error("stopped before the sync was done")
            statements = [s for table in todo
                          for s in pull_statements(table, self.names[table], self.pull_mark(table), owner)]
            results = self.client.batch(statements)
            todo = [table for i, table in enumerate(todo) if not self.take(table, *results[2 * i: 2 * i + 2])]
        if recovering:
            with self.conn:
                self.put("recovered", self.get("fleet_id"))

    def take(self, table: str, page: list[dict], top: list[dict]) -> bool:
        """Apply one page and move the table's mark, in one local transaction; True when
        nothing more is waiting in D1."""
        more = len(page) > PULL_ROWS
        page = page[:PULL_ROWS]
        names = self.names[table]
        own = [[row.get(name) for name in names] for row in page if row.get("server_id") == self.me]
        others = [[row.get(name) for name in names] + [self.me] for row in page if row.get("server_id") != self.me]
        if more:
            mark = (page[-1]["fleet_seq"], page[-1]["d1_rowid"])
        else:  # everything up to D1's highest stamp is here: later writes carry higher ones
            highest = max([self.pull_mark(table)[0], top[0].get("top") or 0] if top else [self.pull_mark(table)[0]])
            mark = (highest, DONE)
        with self.conn:
            before = self.conn.total_changes
            self.conn.executemany(self._insert_missing(table), own)
            self.report.recovered += self.conn.total_changes - before
            self.conn.executemany(self._upsert_local(table), others)
            self.put(f"pull:{table}", f"{mark[0]} {mark[1]}")
        self.report.pulled += len(others)
        return not more

    def _insert_missing(self, table: str) -> str:
        """This server's own row from D1: only where the catalog lacks it (change_seq 0: it is
        in D1 already, nothing to send back)."""
        names = self.names[table]
        return (f"INSERT INTO {table} ({', '.join(names)}, change_seq) VALUES ({', '.join('?' * len(names))}, 0) "
                "ON CONFLICT(uid) DO NOTHING")

    def _upsert_local(self, table: str) -> str:
        """Another server's row: inserted, or updated where it differs; never one of ours."""
        names = self.names[table]
        updates, differs = _update_where_changed(table, names)
        return (f"INSERT INTO {table} ({', '.join(names)}, change_seq) VALUES ({', '.join('?' * len(names))}, 0) "
                f"ON CONFLICT(uid) DO UPDATE SET {updates} WHERE {table}.server_id IS excluded.server_id "
                f"AND excluded.server_id IS NOT ? AND {differs}")

"""A local imitation of Cloudflare D1's HTTP API, backed by SQLite (which is what D1 is),
following the checklist in ../shared/spec/d1-api.md section 3, so that code passing against
it works against Cloudflare:

    POST /client/v4/accounts/{account}/d1/database/{database}/query|raw
         Authorization: Bearer <token>
         {"sql": "...", "params": [...]}  or  {"batch": [{"sql": ..., "params": [...]}, ...]}
    ->   {"success": ..., "errors": [{"code", "message"}], "messages": [], "result": ...}

- routing and auth: 10001 (no credentials), 6003/6111 (malformed header), 10000 (wrong token),
  7403 (account not the token's, or a read-only token writing), 7400 (no UUID), 7404 (unknown
  database), 7003 (unknown route);
- statements: split like D1 (one result per statement), each and a whole multi-statement
  ``sql`` at most 100,000 bytes (``statement too long: SQLITE_TOOBIG``), at most 100 bound
  parameters (``too many SQL variables: SQLITE_ERROR``), the count must match (``Wrong number
  of parameter bindings for SQL query.``), in a multi-statement ``sql`` only the last statement
  may have parameters (workerd's rule), no named parameters; SQLite's limits set as workerd
  sets them; the authorizer refuses BEGIN/COMMIT/SAVEPOINT, ATTACH/DETACH, TEMP objects,
  virtual tables other than fts5, PRAGMAs outside D1's allow-list and any access to ``_cf_KV``
  (``not authorized: SQLITE_AUTH``); foreign keys always on;
- one transaction per request: any error rolls the whole request back and answers 400 with
  ``result: []`` and no partial results; messages are ``<sqlite message>: <PRIMARY CODE>``;
- values: strings, numbers and null; booleans and nested values are refused (over HTTP D1's
  behaviour is undocumented, so a client relying on it should find out here); BLOBs come back
  as lists of bytes, integers above 2^53 as floats (JSON's precision, as with real D1);
- switchable faults (``inject``): 429 overloaded with ``retry-after``, 500/7500 internal
  error, 500 "Network connection lost.", HTML 502 and 504 pages, a connection reset, a stall
  past the client's timeout (the request is still executed afterwards, as a slow D1 would),
  and "committed, then the connection dropped"; plus Cloudflare's API budget (1,200 requests
  per 5 minutes per token, then everything blocked for 5 minutes, all three scalable) and a
  per-request deadline (30 s, scalable) that aborts and rolls back.

Every request is kept in ``seen`` (path, status, raw body, statements with their parameter
counts) so tests can check what a client sent, not only what it got.
"""

from __future__ import annotations

import json
import math
import re
import secrets
import socket
import sqlite3
import struct
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .servers import free_port

MAX_SQL_BYTES = 100_000
MAX_PARAMS = 100
ROUTE = re.compile(r"^/client/v4/accounts/([^/]+)/d1/database/([^/]+)/(query|raw)$")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
#: D1's PRAGMA allow-list (workerd ALLOWED_PRAGMAS); page_size may only be read
PRAGMAS = {"table_list", "table_info", "table_xinfo", "index_list", "index_info", "index_xinfo",
           "foreign_key_list", "foreign_key_check", "quick_check", "data_version", "optimize", "page_size",
           "foreign_keys", "defer_foreign_keys", "case_sensitive_like", "ignore_check_constraints",
           "legacy_alter_table", "recursive_triggers", "reverse_unordered_selects"}
PRIMARY = {1: "SQLITE_ERROR", 2: "SQLITE_INTERNAL", 3: "SQLITE_PERM", 4: "SQLITE_ABORT", 5: "SQLITE_BUSY",
           6: "SQLITE_LOCKED", 7: "SQLITE_NOMEM", 8: "SQLITE_READONLY", 9: "SQLITE_INTERRUPT", 10: "SQLITE_IOERR",
           11: "SQLITE_CORRUPT", 12: "SQLITE_NOTFOUND", 13: "SQLITE_FULL", 14: "SQLITE_CANTOPEN",
           15: "SQLITE_PROTOCOL", 17: "SQLITE_SCHEMA", 18: "SQLITE_TOOBIG", 19: "SQLITE_CONSTRAINT",
           20: "SQLITE_MISMATCH", 21: "SQLITE_MISUSE", 23: "SQLITE_AUTH", 25: "SQLITE_RANGE"}
LIMITS = {"SQLITE_LIMIT_LENGTH": 2_000_000, "SQLITE_LIMIT_SQL_LENGTH": MAX_SQL_BYTES,
          "SQLITE_LIMIT_COLUMN": 100, "SQLITE_LIMIT_FUNCTION_ARG": 32, "SQLITE_LIMIT_LIKE_PATTERN_LENGTH": 50,
          "SQLITE_LIMIT_ATTACHED": 0, "SQLITE_LIMIT_VARIABLE_NUMBER": MAX_PARAMS,
          "SQLITE_LIMIT_COMPOUND_SELECT": 5, "SQLITE_LIMIT_EXPR_DEPTH": 100}
_WRITES = {sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE, sqlite3.SQLITE_CREATE_TABLE,
           sqlite3.SQLITE_CREATE_INDEX, sqlite3.SQLITE_CREATE_TRIGGER, sqlite3.SQLITE_CREATE_VIEW,
           sqlite3.SQLITE_DROP_TABLE, sqlite3.SQLITE_DROP_INDEX, sqlite3.SQLITE_DROP_TRIGGER,
           sqlite3.SQLITE_DROP_VIEW, sqlite3.SQLITE_ALTER_TABLE, sqlite3.SQLITE_REINDEX, sqlite3.SQLITE_ANALYZE}
_REFUSED = {sqlite3.SQLITE_TRANSACTION, sqlite3.SQLITE_SAVEPOINT, sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH,
            sqlite3.SQLITE_CREATE_TEMP_INDEX, sqlite3.SQLITE_CREATE_TEMP_TABLE, sqlite3.SQLITE_CREATE_TEMP_TRIGGER,
            sqlite3.SQLITE_CREATE_TEMP_VIEW, sqlite3.SQLITE_DROP_TEMP_INDEX, sqlite3.SQLITE_DROP_TEMP_TABLE,
            sqlite3.SQLITE_DROP_TEMP_TRIGGER, sqlite3.SQLITE_DROP_TEMP_VIEW}
HTML = "<html><head><title>{code} {title}</title></head><body><center><h1>{code} {title}</h1></center>" \
       "<hr><center>cloudflare</center></body></html>"
FAULTS = ("overloaded", "internal", "connection_lost", "html502", "html504", "reset", "stall", "drop_after_commit")


class Refused(Exception):
    """A D1 error answer: HTTP status, Cloudflare code, message."""

    def __init__(self, status: int, code: int, message: str, **extra):
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


@dataclass
class Seen:
    """One request as it arrived."""

    path: str
    body: bytes
    headers: dict[str, str]
    status: int | None = None
    fault: str | None = None
    answered: int = 0  # bytes of the answer's body
    statements: list[tuple[str, int]] = field(default_factory=list)  # (sql, bound parameters)


def split_statements(sql: str) -> list[str]:
    """Statements as D1 runs them: accumulate up to a ';' that completes one."""
    pieces, start = [], 0
    for index, char in enumerate(sql):
        if char == ";" and sqlite3.complete_statement(sql[start:index + 1]):
            piece = sql[start:index + 1].strip()
            if piece.strip(";").strip():
                pieces.append(piece)
            start = index + 1
    if sql[start:].strip():
        pieces.append(sql[start:].strip())
    return pieces


def placeholders(sql: str) -> tuple[int, bool]:
    """(parameters the statement needs, whether it uses named ones), outside literals and
    comments: ``?NNN`` counts as NNN, a bare ``?`` as one more than the largest so far."""
    index, end, highest, named = 0, len(sql), 0, False
    while index < end:
        char = sql[index]
        if char in "'\"`":
            close = index + 1
            while close < end and not (sql[close] == char and sql[close + 1:close + 2] != char):
                close += 2 if sql[close] == char else 1
            index = close + 1
        elif char == "[":
            close = sql.find("]", index + 1)
            index = close + 1 if close >= 0 else end
        elif sql.startswith("--", index):
            close = sql.find("\n", index)
            index = close + 1 if close >= 0 else end
        elif sql.startswith("/*", index):
            close = sql.find("*/", index + 2)
            index = close + 2 if close >= 0 else end
        elif char == "?":
            digits = index + 1
            while digits < end and sql[digits].isdigit():
                digits += 1
            highest = max(highest, int(sql[index + 1:digits])) if digits > index + 1 else highest + 1
            index = digits
        else:
            if char in ":@$" and index + 1 < end and (sql[index + 1].isalpha() or sql[index + 1] == "_"):
                named = True
            index += 1
    return highest, named


def _message(exc: sqlite3.Error) -> str:
    """D1's form: SQLite's message, then the primary result code's name."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:  # Python 3.10: no error codes on exceptions
        code = 19 if isinstance(exc, sqlite3.IntegrityError) else 23 if "not authorized" in str(exc) else 1
    return f"{exc}: {PRIMARY.get(code & 0xFF, 'SQLITE_ERROR')}"


def _value(value):
    """A column value as D1 answers it over JSON."""
    if isinstance(value, bytes):
        return list(value)
    if isinstance(value, int) and abs(value) > 2 ** 53:
        return float(value)
    return value


class D1Server:
    """One D1 database behind an HTTP server on 127.0.0.1 (``url`` is what D1_API_BASE takes)."""

    def __init__(self, root: Path, *, api_budget: int = 1200, api_window: float = 300.0,
                 api_block: float = 300.0, deadline: float = 30.0):
        root.mkdir(parents=True, exist_ok=True)
        self.path = root / "d1.sqlite"
        self.account = secrets.token_hex(16)
        self.database = str(uuid.uuid4())
        self.token = "d1tok-" + secrets.token_urlsafe(30)
        self.read_only_token = "d1ro-" + secrets.token_urlsafe(30)
        self.other_account_token = "d1other-" + secrets.token_urlsafe(30)  # valid, for another account
        self.api_budget, self.api_window, self.api_block, self.deadline = api_budget, api_window, api_block, deadline
        self.seen: list[Seen] = []
        self._faults: deque[tuple[str, dict]] = deque()
        self._calls: dict[str, deque[float]] = {}
        self._blocked_until: dict[str, float] = {}
        self._lock = threading.Lock()  # D1 runs one request at a time per database
        self._stop = threading.Event()
        self.conn = self._open()
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/client/v4"
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), _handler(self))
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("CREATE TABLE IF NOT EXISTS _cf_KV (key TEXT PRIMARY KEY, value BLOB) WITHOUT ROWID")
        if hasattr(conn, "setlimit"):  # Python 3.11+; on 3.10 the checks below give the same answers
            for name, value in LIMITS.items():
                conn.setlimit(getattr(sqlite3, name), value)
        return conn

    def env(self, token: str | None = None) -> dict[str, str]:
        """The D1_* settings of an install that syncs with this database."""
        return {"D1_ACCOUNT_ID": self.account, "D1_DATABASE_ID": self.database,
                "D1_API_TOKEN": token or self.token, "D1_API_BASE": self.url}

    def inject(self, kind: str, times: int = 1, after: int = 0, **options) -> None:
        """After ``after`` requests that pass, the next ``times`` meet this fault (faults
        queue up in the order injected)."""
        assert kind in FAULTS, kind
        for _ in range(after):
            self._faults.append((None, {}))
        for _ in range(times):
            self._faults.append((kind, options))

    def clear_faults(self) -> None:
        self._faults.clear()
        self._blocked_until.clear()
        self._calls.clear()

    def sql(self, query: str, params=()) -> list[sqlite3.Row]:
        """Read the database directly (no HTTP, no authorizer): for checks in tests."""
        with self._lock:
            conn = sqlite3.connect(self.path)
            conn.row_factory = sqlite3.Row
            try:
                return conn.execute(query, params).fetchall()
            finally:
                conn.close()

    def stop(self) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)
        self.conn.close()

    # -- what a request goes through, in order --

    def next_fault(self) -> tuple[str | None, dict]:
        with self._lock:
            return self._faults.popleft() if self._faults else (None, {})

    def authenticate(self, headers) -> bool:
        """The request's token, or Refused."""
        value = headers.get("Authorization")
        if value is None:
            raise Refused(400, 10001, "Unable to authenticate request")
        match = re.fullmatch(r"Bearer ([!-~]+)", value)
        if not match:
            raise Refused(400, 6003, "Invalid request headers",
                          error_chain=[{"code": 6111, "message": "Invalid format for Authorization header"}])
        token = match.group(1)
        if token not in (self.token, self.read_only_token, self.other_account_token):
            raise Refused(401, 10000, "Authentication error")
        self.rate_limit(token)
        return token

    def rate_limit(self, token: str) -> None:
        """Cloudflare's API budget per token: over it, everything is refused for a while."""
        now = time.monotonic()
        with self._lock:
            until = self._blocked_until.get(token, 0)
            if now < until:
                raise Refused(429, 971, "Please wait and consider throttling your request speed",
                              retry_after=math.ceil(until - now), result=None)
            calls = self._calls.setdefault(token, deque())
            while calls and calls[0] <= now - self.api_window:
                calls.popleft()
            calls.append(now)
            if len(calls) > self.api_budget:
                self._blocked_until[token] = now + self.api_block
                raise Refused(429, 971, "Please wait and consider throttling your request speed",
                              retry_after=math.ceil(self.api_block), result=None)

    def route(self, path: str, token: str) -> str:
        """The endpoint ('query' or 'raw'), or Refused."""
        match = ROUTE.match(path)
        if not match:
            raise Refused(404, 7003, f"Could not route to {path}, perhaps your object identifier is invalid?")
        account, database, endpoint = match.groups()
        if account != self.account or token == self.other_account_token:
            raise Refused(403, 7403, "The given account is not valid or is not authorized to access this service")
        if not UUID.match(database):
            raise Refused(400, 7400, "Invalid property: databaseId => Invalid uuid")
        if database != self.database:
            raise Refused(404, 7404, f"The database {database} could not be found")
        return endpoint

    @staticmethod
    def statements(body: bytes) -> list[tuple[str, list]]:
        """(sql, params) of each item: Form A is one item, Form B one per batch entry."""
        try:
            data = json.loads(body)
        except ValueError:
            raise Refused(400, 7400, "Invalid JSON body") from None
        if isinstance(data, dict) and isinstance(data.get("batch"), list):
            items = data["batch"]
        elif isinstance(data, dict) and "sql" in data:
            items = [data]
        else:
            raise Refused(400, 7400, "Invalid property: body must have sql or batch")
        out = []
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("sql"), str):
                raise Refused(400, 7400, "Invalid property: sql => Expected string")
            params = item.get("params", [])
            if not isinstance(params, list):
                raise Refused(400, 7400, "Invalid property: params => Expected array")
            for value in params:  # strings, numbers and null (see the module docstring)
                if isinstance(value, bool) or not (value is None or isinstance(value, (str, int, float))):
                    raise Refused(400, 7400, f"Invalid property: params => unsupported value {json.dumps(value)}")
            out.append((item["sql"], params))
        return out

    def execute(self, statements: list[tuple[str, list]], raw: bool, read_only: bool, seen: Seen) -> list[dict]:
        """Everything in one transaction: the results, or Refused after a rollback."""
        with self._lock:
            conn = self.conn
            conn.set_authorizer(_allow_all)
            conn.execute("BEGIN")
            started = time.monotonic()
            conn.set_progress_handler(lambda: 1 if time.monotonic() - started > self.deadline else 0, 1000)
            denied: list[str] = []
            authorizer = _authorizer(read_only, denied)
            try:
                conn.set_authorizer(authorizer)
                results = []
                for sql, params in statements:
                    results += self._run(conn, sql, params, raw, seen, authorizer, denied)
                conn.set_authorizer(_allow_all)
                conn.execute("COMMIT")
                return results
            except BaseException:
                conn.set_authorizer(_allow_all)
                conn.execute("ROLLBACK")
                raise
            finally:
                conn.set_progress_handler(None, 0)

    def _run(self, conn, sql: str, params: list, raw: bool, seen: Seen, authorizer, denied: list) -> list[dict]:
        """One item of the request: one or more statements, one result each."""
        pieces = split_statements(sql) or [sql]
        if len(sql.encode()) > MAX_SQL_BYTES:
            raise Refused(400, 7500, "statement too long: SQLITE_TOOBIG")
        needs = [placeholders(piece) for piece in pieces]
        if any(named for _, named in needs):
            raise Refused(400, 7500, "named parameters are not supported: SQLITE_ERROR")
        if len(pieces) > 1 and params and any(count for count, _ in needs[:-1]):
            raise Refused(400, 7500, "When executing multiple SQL statements in a single call, only the last "
                                     "statement can have parameters.")
        results = []
        for piece, (count, _) in zip(pieces, needs, strict=True):
            bound = params if piece is pieces[-1] else []
            seen.statements.append((piece, len(bound)))
            if count > MAX_PARAMS:
                raise Refused(400, 7500, "too many SQL variables: SQLITE_ERROR")
            if count != len(bound):
                raise Refused(400, 7500, "Wrong number of parameter bindings for SQL query.")
            results.append(self._statement(conn, piece, bound, raw, authorizer, denied))
        return results

    def _statement(self, conn, sql: str, params: list, raw: bool, authorizer, denied: list) -> dict:
        before, started = conn.total_changes, time.perf_counter()
        try:
            cursor = conn.execute(sql, params)
            rows = cursor.fetchall()
        except sqlite3.ProgrammingError as exc:
            if "bindings" in str(exc):
                raise Refused(400, 7500, "Wrong number of parameter bindings for SQL query.") from None
            raise Refused(400, 7500, f"{exc}: SQLITE_ERROR") from None
        except sqlite3.Error as exc:
            message = _message(exc)
            if "interrupted" in message:
                raise Refused(500, 7500, "D1 DB storage operation exceeded timeout which caused object "
                                         "to be reset.") from None
            if message.endswith("SQLITE_AUTH") and denied:
                raise Refused(403, 7403, "The given account is not valid or is not authorized to access "
                                         "this service") from None
            if message.endswith("SQLITE_AUTH"):  # "access to X.Y is prohibited" and the like
                message = "not authorized: SQLITE_AUTH"
            raise Refused(400, 7500, message) from None
        columns = [d[0] for d in cursor.description or ()]
        rows = [[_value(v) for v in row] for row in rows]
        changes = conn.total_changes - before
        elapsed = (time.perf_counter() - started) * 1000
        conn.set_authorizer(_allow_all)  # the server's own look, not the client's
        size = conn.execute("PRAGMA page_count").fetchone()[0] * conn.execute("PRAGMA page_size").fetchone()[0]
        last_row_id = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
        conn.set_authorizer(authorizer)
        results = {"columns": columns, "rows": rows} if raw else [dict(zip(columns, row, strict=True)) for row in rows]
        return {"results": results, "success": True, "meta": {
            "served_by": "d1-imitation", "served_by_region": "WEUR", "served_by_primary": True,
            "timings": {"sql_duration_ms": elapsed}, "duration": elapsed, "changes": changes,
            "last_row_id": last_row_id,
            "changed_db": changes > 0 or not sql.lstrip().upper().startswith(("SELECT", "PRAGMA", "WITH")),
            "size_after": size, "rows_read": len(rows), "rows_written": changes}}


def _allow_all(*args) -> int:
    return sqlite3.SQLITE_OK


def _authorizer(read_only: bool, denied: list):
    """D1's refusals; with a read-only token, writes are refused too (and noted in ``denied``,
    so the answer is 7403 rather than an SQL error)."""

    def check(action, arg1, arg2, dbname, source):
        names = [str(a).lower() for a in (arg1, arg2) if a]
        if action in _REFUSED or any(n.startswith("_cf_") for n in names):
            return sqlite3.SQLITE_DENY
        if action in (sqlite3.SQLITE_CREATE_VTABLE, sqlite3.SQLITE_DROP_VTABLE) and arg2 != "fts5":
            return sqlite3.SQLITE_DENY
        if action == sqlite3.SQLITE_PRAGMA:
            name = (arg1 or "").lower()
            if name not in PRAGMAS or (name == "page_size" and arg2 is not None):
                return sqlite3.SQLITE_DENY
        if read_only and action in _WRITES and not (arg1 or "").startswith("sqlite_"):
            denied.append(str(arg1))
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    return check


def _handler(server: D1Server):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.answer(Refused(404, 7003, "No route for the URI"), Seen(self.path, b"", {}))

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen = Seen(self.path, body, {k.lower(): v for k, v in self.headers.items()})
            server.seen.append(seen)
            kind, options = server.next_fault()
            seen.fault = kind
            if kind == "reset":  # RST, no answer at all
                seen.status = 0
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()
                return
            if kind in ("html502", "html504"):
                code = 502 if kind == "html502" else 504
                page = HTML.format(code=code, title="Bad Gateway" if code == 502 else "Gateway Time-out")
                return self.send(code, page.encode(), "text/html", seen)
            if kind == "overloaded":
                return self.answer(Refused(429, 7500, "D1 DB is overloaded. Too many requests queued.",
                                           retry_after=options.get("retry_after", 1)), seen)
            if kind == "internal":
                return self.answer(Refused(500, 7500, f"internal error; reference = {secrets.token_hex(12)}"), seen)
            if kind == "connection_lost":
                return self.answer(Refused(500, 7500, "Network connection lost."), seen)
            if kind == "stall" and server._stop.wait(options.get("seconds", 5)):
                return
            try:
                token = server.authenticate(self.headers)
                endpoint = server.route(self.path, token)
                statements = server.statements(body)
                results = server.execute(statements, endpoint == "raw", token == server.read_only_token, seen)
            except Refused as refused:
                return self.answer(refused, seen)
            if kind == "drop_after_commit":  # committed; the answer never arrives
                seen.status = 0
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            envelope = {"result": results, "success": True, "errors": [], "messages": []}
            self.send(200, json.dumps(envelope).encode(), "application/json", seen)

        def answer(self, refused: Refused, seen: Seen):
            error = {"code": refused.code, "message": refused.message}
            if "error_chain" in refused.extra:
                error["error_chain"] = refused.extra["error_chain"]
            envelope = {"result": refused.extra.get("result", []), "success": False, "errors": [error],
                        "messages": []}
            headers = {"Retry-After": str(refused.extra["retry_after"])} if "retry_after" in refused.extra else {}
            self.send(refused.status, json.dumps(envelope).encode(), "application/json", seen, headers)

        def send(self, status: int, body: bytes, kind: str, seen: Seen, headers: dict | None = None):
            seen.status, seen.answered = status, len(body)
            try:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)
            except OSError:  # the client gave up (a stall past its timeout)
                self.close_connection = True

    return Handler

"""Cloudflare D1's HTTP API, as much of it as the fleet sync needs.

    [(sql, params), ...] --POST {D1_API_BASE}/accounts/{account}/d1/database/{database}/raw-->
        {"batch": [{"sql": "...", "params": [...]}, ...]}        one request = one transaction
    <-- {"success": true, "result": [{"results": {"columns": [...], "rows": [[...]]}}, ...]}

Values are always bound (``?``), never spliced into SQL, and every statement is checked
against D1's limits before it leaves: at most 100 bound parameters, well under 100,000 bytes
of SQL. Transient trouble (429 with ``retry-after``, 5xx, an HTML page from Cloudflare's edge,
a timeout, a dropped connection) is retried with exponential backoff and jitter, within a
total time budget per request. A request whose answer got lost may have been committed, so
it is simply sent again: whatever is sent through here must be idempotent (sync.py upserts by
a fleet-unique uid). Errors the operator can fix (token, permission, account, database, SQL)
are not retried and say what to do.

The API token travels only in the Authorization header: it is in no URL, body, log line or
message (messages from Cloudflare are scrubbed of it, should one ever echo it).
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

import requests

from wpbackup.errors import BackupError

#: D1's documented limits (docs/cloudflare-d1.md) and the margins this client keeps.
MAX_PARAMS = 100  # bound parameters per statement
MAX_SQL_BYTES = 100_000  # D1 refuses a longer statement (SQLITE_TOOBIG)
SQL_BYTES = 90_000  # what a statement of ours may use
BODY_BYTES = 1_000_000  # per request: D1 documents no body limit, so stay modest
#: Time: D1 gives a request 30 s; the answer must also travel back.
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 45.0
RETRY_BUDGET = 90.0  # seconds one request may take, retries and waits included
MAX_ATTEMPTS = 6
BACKOFF_FIRST, BACKOFF_CAP = 0.5, 8.0

DOCS = "docs/cloudflare-d1.md"
Statement = tuple[str, Sequence[object]]


class D1Error(BackupError):
    """D1 refused or could not be reached; ``code`` is Cloudflare's error code if it sent one."""

    def __init__(self, message: str, *, code: int | None = None, status: int | None = None,
                 retryable: bool = False, wait: float | None = None):
        super().__init__(message)
        self.code, self.status, self.retryable, self.wait = code, status, retryable, wait


class D1SqlError(D1Error):
    """D1 ran the request and refused the SQL (code 7500 with a 4xx): a bug on our side or a
    D1 database whose tables someone else changed; retrying cannot help."""


class _Bearer(requests.auth.AuthBase):
    """The token in the Authorization header, and nowhere else (not even in a repr)."""

    def __init__(self, token: str):
        self._token = token

    def __call__(self, request):
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request

    def __repr__(self) -> str:
        return "<bearer token>"


def check_statement(sql: str, params: Sequence[object]) -> list[object]:
    """The statement as D1 takes it, or ValueError when it breaks a limit (the sync never
    builds such a statement; this keeps a future change from finding out in production)."""
    if len(params) > MAX_PARAMS:
        raise ValueError(f"{len(params)} bound parameters in one statement, D1 takes at most {MAX_PARAMS}")
    if len(sql.encode()) > SQL_BYTES:
        raise ValueError(f"statement of {len(sql.encode())} bytes, over this client's {SQL_BYTES}")
    values = []
    for value in params:
        if isinstance(value, bool):
            value = int(value)  # D1's Worker API stores booleans as 1/0; over HTTP it is undocumented
        elif not (value is None or isinstance(value, (str, int, float))):
            raise ValueError(f"cannot bind a {type(value).__name__} for D1")
        values.append(value)
    return values


def encode(statements: Sequence[Statement]) -> bytes:
    """The request body: the batch form, one object per statement with its own params."""
    batch = [{"sql": sql, "params": check_statement(sql, params)} for sql, params in statements]
    return json.dumps({"batch": batch}, separators=(",", ":"), ensure_ascii=False).encode()


def statement_bytes(sql: str, params: Sequence[object]) -> int:
    """What one statement adds to a request body (for packing requests under BODY_BYTES)."""
    return len(json.dumps({"sql": sql, "params": list(params)}, separators=(",", ":"),
                          ensure_ascii=False).encode()) + 1


def rows_of(result: dict) -> list[dict]:
    """One statement's rows as dicts: /raw answers columns + rows, /query objects."""
    results = result.get("results")
    if isinstance(results, dict):
        columns = results.get("columns") or []
        return [dict(zip(columns, row, strict=False)) for row in results.get("rows") or []]
    return list(results or [])


def retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a ``retry-after`` header: a number, or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


class D1Client:
    """One D1 database over HTTP. ``requests`` counts the HTTP requests sent (retries
    included), ``batch`` runs statements as one transaction."""

    def __init__(self, account_id: str, database_id: str, token: str,
                 base: str = "https://api.cloudflare.com/client/v4", *,
                 timeout: tuple[float, float] = (CONNECT_TIMEOUT, READ_TIMEOUT), budget: float = RETRY_BUDGET,
                 attempts: int = MAX_ATTEMPTS, backoff: tuple[float, float] = (BACKOFF_FIRST, BACKOFF_CAP),
                 stopping: threading.Event | None = None, session: requests.Session | None = None):
        self.account_id, self.database_id = account_id, database_id
        self.url = f"{base.rstrip('/')}/accounts/{account_id}/d1/database/{database_id}/raw"
        self._token = token
        self._auth = _Bearer(token)
        self.timeout, self.budget, self.attempts, self.backoff = timeout, budget, attempts, backoff
        self.stopping = stopping or threading.Event()
        self.session = session or requests.Session()
        self.requests = 0

    @classmethod
    def from_settings(cls, settings, **options) -> D1Client:
        return cls(settings.d1_account_id, settings.d1_database_id, settings.d1_api_token,
                   settings.d1_api_base, **options)

    def __repr__(self) -> str:
        return f"D1Client({self.url})"

    def close(self) -> None:
        self.session.close()

    def batch(self, statements: Sequence[Statement]) -> list[list[dict]]:
        """Run the statements as one transaction (all or nothing); each one's rows."""
        body = encode(statements)
        results = self._send(body)
        if len(results) != len(statements):
            raise D1Error(f"D1 answered {len(results)} results for {len(statements)} statements")
        return [rows_of(result) for result in results]

    def _send(self, body: bytes) -> list[dict]:
        """POST with retries: transient failures wait (retry-after, else backoff with jitter)
        and try again until the budget or the attempts run out."""
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._attempt(body)
            except D1Error as exc:
                if not exc.retryable:
                    raise
                last = exc
            elapsed = time.monotonic() - started
            wait = last.wait if last.wait is not None else self._backoff(attempt)
            if last.wait is not None and last.wait > self.budget:
                raise D1Error(f"{last}: Cloudflare asks to wait {last.wait:.0f} s, longer than a sync waits "
                              f"({self.budget:.0f} s)", code=last.code, status=last.status) from None
            if attempt >= self.attempts or elapsed + wait > self.budget:
                raise D1Error(f"{last} (gave up after {attempt} attempts in {elapsed:.0f} s)",
                              code=last.code, status=last.status) from None
            if self.stopping.wait(wait):
                raise D1Error(f"{last} (stopped while waiting to retry)", code=last.code) from None

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter: half the step fixed, half random, so servers that
        failed together do not come back together."""
        first, cap = self.backoff
        step = min(cap, first * 2 ** (attempt - 1))
        return step / 2 + random.uniform(0, step / 2)

    def _attempt(self, body: bytes) -> list[dict]:
        """One HTTP request; its results, or a D1Error saying whether to retry."""
        self.requests += 1
        try:
            response = self.session.post(self.url, data=body, auth=self._auth, timeout=self.timeout,
                                         headers={"Content-Type": "application/json"})
        except requests.Timeout:
            raise D1Error(f"D1 did not answer within {self.timeout[1]:.0f} s", retryable=True) from None
        except requests.ConnectionError as exc:
            raise D1Error(f"connection to D1 failed ({self._scrub(_reason(exc))})", retryable=True) from None
        except requests.RequestException as exc:
            raise D1Error(f"request to D1 failed ({self._scrub(_reason(exc))})", retryable=True) from None
        with response:
            return self._results(response)

    def _results(self, response: requests.Response) -> list[dict]:
        status = response.status_code
        envelope = _json(response)
        if envelope is None:  # an HTML page from the edge (502, 504), or a body cut short
            kind = response.headers.get("Content-Type", "no content type").split(";")[0]
            hint = "" if status >= 500 or status < 400 else ": is D1_API_BASE right?"
            raise D1Error(f"D1 answered HTTP {status} with no JSON ({kind}){hint}", status=status,
                          retryable=status >= 500 or status in (408, 429) or status < 300,
                          wait=retry_after(response.headers.get("Retry-After")) if status == 429 else None)
        if envelope.get("success") is True and status < 300:
            return list(envelope.get("result") or [])
        errors = [e for e in envelope.get("errors") or [] if isinstance(e, dict)]
        code = errors[0].get("code") if errors else None
        text = self._scrub("; ".join(str(e.get("message", "")) for e in errors) or "no error message")
        if status == 429:
            raise D1Error(f"D1 is throttling requests (HTTP 429, code {code}: {text})", code=code, status=status,
                          retryable=True, wait=retry_after(response.headers.get("Retry-After")))
        if status >= 500 or status == 408:
            raise D1Error(f"D1 failed (HTTP {status}, code {code}: {text})", code=code, status=status,
                          retryable=True)
        raise self._refusal(status, code, text)

    def _refusal(self, status: int, code: object, text: str) -> D1Error:
        """An error retrying cannot fix, worded for the operator."""
        where = f"D1_ACCOUNT_ID={self.account_id}"
        if code == 10000:
            message = (f"D1 refused the API token (code 10000: {text}): D1_API_TOKEN is wrong, expired or "
                       f"revoked; create a token with Account > D1 > Edit ({DOCS})")
        elif code == 7403:
            message = (f"the API token may not use D1 in {where} (code 7403: {text}): give the token "
                       f"Account > D1 > Edit on this account, or check D1_ACCOUNT_ID ({DOCS})")
        elif code == 7404:
            message = (f"no D1 database D1_DATABASE_ID={self.database_id} in {where} (code 7404: {text}): "
                       f"check D1_DATABASE_ID (`wrangler d1 list` shows the ids)")
        elif code == 7400:
            message = f"D1_DATABASE_ID={self.database_id} is no D1 database id (code 7400: {text})"
        elif code in (10001, 6003, 7003):
            message = (f"Cloudflare did not accept the request (code {code}: {text}): check D1_API_BASE, "
                       f"D1_ACCOUNT_ID and D1_DATABASE_ID")
        elif code == 7500:
            return D1SqlError(f"D1 refused the SQL (code 7500: {text})", code=code, status=status)
        else:
            message = f"D1 refused the request (HTTP {status}, code {code}: {text})"
        return D1Error(message, code=code if isinstance(code, int) else None, status=status)

    def _scrub(self, text: str) -> str:
        """Never repeat the token, even if a server or a library put it into a message."""
        text = text if len(text) <= 300 else text[:300] + "..."
        return text.replace(self._token, "[token]") if self._token else text


def _json(response: requests.Response) -> dict | None:
    """The JSON envelope, or None when the body is no JSON object."""
    try:
        data = response.json()
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _reason(exc: Exception) -> str:
    """The innermost reason of a requests error, without its long repr chain."""
    reason = exc
    while reason.args and isinstance(reason.args[0], Exception):
        reason = reason.args[0]
    text = str(getattr(reason, "reason", None) or reason)
    return text.split(": ", 1)[-1] if "object at 0x" in text else text

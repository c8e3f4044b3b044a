"""At most one report per day: who may send the report for a date, and recording that it went.

    claim(settings, date) --local lock--> already in daily_emails (any server)? -> "already sent ..."
                          --D1 on------> one D1 batch: take report_claims[date] if free -> won / "... by web-2"
                          --D1 down----> the local answer, with a warning (never silently)
    Claim.sent(n)    daily_emails row (email_sent = 1; the sync carries it to the fleet) + D1 sent_at
    Claim.release()  sending failed: nothing marked sent, the D1 claim freed at once

Two `doit report` of one install never both send: the claim holds an flock in the install's
folder (``.wpbackup-report.lock``) until sent() or release(); it dies with its process.

With D1 on, every server's timer fires at about the same time, and exactly one of them may
send the fleet's report. The decision is a single D1 request (D1 runs a request as one
transaction), in D1's table ``report_claims``:

    date TEXT PRIMARY KEY, token, server_id, claimed_at, sent_at, sent_by

The upsert takes the row when it is free (no token, or a claim older than LEASE_MINUTES: a
holder that died without sending or releasing) and not sent yet (or always, with --force), and
the SELECT in the same request reads back whose token holds it. Times are D1's own clock
(``datetime('now')``), so servers with skewed clocks still agree on what is stale.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime

from wpbackup import flocks
from wpbackup.config.settings import Settings
from wpbackup.errors import BackupError
from wpbackup.fleet import catalog
from wpbackup.fleet.d1 import D1Client, D1Error

#: a claim older than this, never sent nor released, belonged to a server that died sending
LEASE_MINUTES = 20
LOCK_NAME = ".wpbackup-report.lock"
#: D1Client options for the claim's requests (the tests shorten the waits)
D1_OPTIONS: dict = {}

SCHEMA = ("CREATE TABLE IF NOT EXISTS report_claims (date TEXT PRIMARY KEY, token TEXT, server_id TEXT, "
          "claimed_at TEXT, sent_at TEXT, sent_by TEXT)")
TAKE = ("INSERT INTO report_claims (date, token, server_id, claimed_at) VALUES (?, ?, ?, datetime('now')) "
        "ON CONFLICT (date) DO UPDATE SET token = excluded.token, server_id = excluded.server_id, "
        "claimed_at = excluded.claimed_at "
        "WHERE ? OR (report_claims.sent_at IS NULL AND (report_claims.token IS NULL "
        "OR report_claims.claimed_at < datetime('now', ?)))")
HOLDER = "SELECT token, server_id, claimed_at, sent_at, sent_by FROM report_claims WHERE date = ?"
MARK_SENT = ("INSERT INTO report_claims (date, server_id, sent_at, sent_by) VALUES (?, ?, datetime('now'), ?) "
             "ON CONFLICT (date) DO UPDATE SET token = NULL, claimed_at = NULL, sent_at = excluded.sent_at, "
             "sent_by = excluded.sent_by")
FREE = "UPDATE report_claims SET token = NULL, claimed_at = NULL WHERE date = ? AND token = ?"


class _Lock:
    """This install's report lock: an flock on its own file descriptor (so two threads of one
    process exclude each other too, as two processes do)."""

    def __init__(self, fd: int):
        self.fd: int | None = fd

    @classmethod
    def take(cls, settings: Settings) -> _Lock | str:
        """The lock, or a sentence naming the process holding it."""
        try:
            fd = flocks.take(settings.state_dir / LOCK_NAME)
        except flocks.Held as busy:
            return f"another `doit report` of this install is sending a report ({busy.holder}); not sending twice"
        return cls(fd)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor drops the flock
            self.fd = None


@dataclass
class Claim:
    """The right to send the report for ``date``. Call exactly one of sent() or release();
    a process that dies holding a claim frees the local lock with it, and its D1 claim can be
    taken over after LEASE_MINUTES. ``warning``, when set, must be shown to the operator (read
    it again after sent() or release(): they add one when D1 could not be told)."""

    date: str
    via: str  # "local" or "d1"
    warning: str | None = None
    token: str = ""
    settings: Settings | None = field(default=None, repr=False)
    lock: _Lock | None = field(default=None, repr=False)
    done: bool = False

    def sent(self, backup_count: int) -> None:
        """The report for ``date`` went out: mark it in D1 (first, so the fleet stops at once)
        and in the local daily_emails (the sync carries the row to the other servers)."""
        if self.done:
            return
        self.done = True
        try:
            if self.via == "d1":
                self._tell_d1([(MARK_SENT, [self.date, self.settings.server_id, self.settings.server_id])],
                              f"the report was sent, but D1 could not record it (another server may send it "
                              f"again once the claim is {LEASE_MINUTES} min old)")
            record_sent(self.settings, self.date, backup_count)
        finally:
            self.lock.release()

    def release(self) -> None:
        """Sending failed: nothing is marked sent and the claim is freed, so the next run (of
        any server) may send."""
        if self.done:
            return
        self.done = True
        try:
            if self.via == "d1":
                self._tell_d1([(FREE, [self.date, self.token])],
                              f"could not free the claim in D1 (other servers may take it over once it is "
                              f"{LEASE_MINUTES} min old)")
        finally:
            self.lock.release()

    def _tell_d1(self, statements: list, consequence: str) -> None:
        """One request to D1; a failure becomes a warning (the mail itself is decided already)."""
        try:
            _d1_batch(self.settings, statements)
        except D1Error as exc:
            self.warning = "; ".join(filter(None, [self.warning, f"{consequence}: {exc}"]))


def check_date(date: str) -> None:
    """A report date is exactly YYYY-MM-DD (it names files and rows)."""
    try:
        if datetime.strptime(date, "%Y-%m-%d").strftime("%Y-%m-%d") == date:
            return
    except ValueError:
        pass
    raise BackupError(f"not a date (YYYY-MM-DD): {date!r}")


def sent_by(settings: Settings, date: str) -> str | None:
    """The server that sent the report for ``date`` according to the local daily_emails (its
    own rows and, with D1, those the sync pulled from the fleet); None when none did."""
    try:
        with closing(catalog.connect(settings.db_path)) as conn:
            row = conn.execute("SELECT server_id FROM daily_emails WHERE date = ? AND email_sent = 1 "
                               "ORDER BY id LIMIT 1", (date,)).fetchone()
    except sqlite3.Error as exc:
        raise BackupError(f"cannot read the catalog {settings.db_path}: {exc}") from None
    return None if row is None else (row["server_id"] or "a server without SERVER_ID")


def record_sent(settings: Settings, date: str, backup_count: int) -> None:
    """One daily_emails row: the report for ``date`` was sent by this server."""
    uid = f"{settings.server_id}:report:{date}:{uuid.uuid4().hex[:12]}"
    try:
        with closing(catalog.connect(settings.db_path)) as conn, conn:
            conn.execute("INSERT INTO daily_emails (date, email_sent, backup_count, server_id, uid) "
                         "VALUES (?, 1, ?, ?, ?)", (date, backup_count, settings.server_id, uid))
    except sqlite3.Error as exc:
        raise BackupError(f"the report was sent, but cannot be recorded in {settings.db_path}: {exc}") from None


def _d1_batch(settings: Settings, statements: list) -> list[list[dict]]:
    client = D1Client.from_settings(settings, **D1_OPTIONS)
    try:
        return client.batch(statements)
    finally:
        client.close()


def _claim_in_d1(settings: Settings, date: str, token: str, force: bool) -> str | None:
    """Take the D1 claim for ``date`` in one transaction: None when this token holds it now,
    else why not."""
    results = _d1_batch(settings, [
        (SCHEMA, []),
        (TAKE, [date, token, settings.server_id, 1 if force else 0, f"-{LEASE_MINUTES} minutes"]),
        (HOLDER, [date]),
    ])
    holder = results[2][0] if results[2] else {}
    if holder.get("token") == token:
        return None
    if holder.get("sent_at"):
        return (f"the report for {date} was already sent by {holder.get('sent_by')} at {holder['sent_at']} UTC; "
                "--force sends it again")
    return (f"the report for {date} is being sent by {holder.get('server_id')} (claimed at "
            f"{holder.get('claimed_at')} UTC); should it fail, the next run sends it, or any server once the "
            f"claim is {LEASE_MINUTES} min old; --force sends it now")


def claim(settings: Settings, date: str, force: bool = False) -> Claim | str:
    """The right to send the report for ``date`` (YYYY-MM-DD), or a sentence saying why not
    ("the report for 2026-12-01 was already sent by web-2 at 2026-12-01 08:00:03 UTC; --force
    sends it again"). ``force`` takes it even when the report was sent or is being sent."""
    check_date(date)
    lock = _Lock.take(settings)
    if isinstance(lock, str):
        return lock
    try:
        verdict = _decide(settings, date, force, uuid.uuid4().hex)
    except BaseException:
        lock.release()
        raise
    if isinstance(verdict, str):
        lock.release()
        return verdict
    verdict.settings, verdict.lock = settings, lock
    return verdict


def _decide(settings: Settings, date: str, force: bool, token: str) -> Claim | str:
    """The local rule first (a report any server is known to have sent), then D1's claim;
    D1 out of reach falls back to the local rule, saying so."""
    sender = sent_by(settings, date)
    if sender and not force:
        return f"the report for {date} was already sent by {sender} (daily_emails); --force sends it again"
    if not settings.d1_enabled:
        return Claim(date, "local", token=token)
    try:
        refusal = _claim_in_d1(settings, date, token, force)
    except D1Error as exc:
        return Claim(date, "local", token=token,
                     warning=f"could not claim the report in D1 ({exc}): claimed locally only, another "
                             f"server may send the report for {date} too")
    return refusal if refusal else Claim(date, "d1", token=token)

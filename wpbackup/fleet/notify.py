"""Alerts that do not wait for the morning: one short message per site that needs action,
sent through Apprise to every NOTIFY_URLS target (ntfy, Slack, Telegram, e-mail, webhooks...).

    backup run's SUMMARY --+
    verify failures -------+--> [Alert] --> send_alerts --> one thread per URL, all bounded
    stale_alerts(health) --+                                by DEADLINE; a failure is one
                                                            warning naming scheme and host

An alert is a convenience on top of the daily report, never a reason for a backup to fail or
wait: send_alerts catches everything, and a target that does not answer is given up on after
DEADLINE seconds (Apprise's own socket timeouts end the request itself soon after).
Apprise URLs carry tokens (in the path, the user part, sometimes the host part), so a URL is
only ever shown as Apprise's privacy form reduced to scheme and host, and every text sent is
scrubbed of the install's secrets first.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
import time
from contextlib import closing
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote, urlsplit

from wpbackup.config.settings import KEYS, Settings
from wpbackup.console import log
from wpbackup.fleet import catalog

if TYPE_CHECKING:
    from wpbackup.fleet.health import FleetHealth

#: seconds send_alerts waits for all targets together (they are sent to side by side)
DEADLINE = 10.0
#: more alerts than this in one call: the rest go as one message listing them (a database
#: server down fails every site; thirty messages at once help nobody)
MAX_ALERTS = 10
#: alerted staleness episodes older than this are forgotten (the table stays small)
FORGET_AFTER = timedelta(days=180)
#: pieces of a URL shorter than this are not scrubbed from texts (they would hit common words)
MIN_SECRET = 6

LABELS = {"failed": "FAILED", "incomplete": "INCOMPLETE", "verify_failed": "VERIFY FAILED",
          "stale": "STALE", "ok": "OK"}
SUBJECTS = {"failed": "backup failed", "incomplete": "backup incomplete", "verify_failed": "verify failed",
            "stale": "no recent backup", "ok": "backed up"}


@dataclass
class Alert:
    """One thing an operator should hear about now. ``site`` is empty for a whole server."""

    kind: str     # "failed" | "incomplete" | "verify_failed" | "stale" | "ok"
    server: str
    site: str
    reason: str   # one line


@dataclass
class Message:
    title: str
    body: str
    kind: str
    alerts: list[int]  # which of the caller's alerts this message carries


# -- what is secret ---------------------------------------------------------------------------

def url_pieces(url: str) -> list[str]:
    """The parts of a URL that may be a token: user, password, path segments, query values,
    fragment, and the host too (Telegram, Slack, Discord and ntfy put tokens there)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]
    pieces = [parts.username or "", parts.password or "", parts.fragment]
    pieces += [unquote(segment) for segment in parts.path.split("/")]
    pieces += [value for _, value in parse_qsl(parts.query)]
    if "://" in url:  # the host part as Apprise reads it (a Telegram token holds a ':'); a
        netloc = url.split("://", 1)[1].split("/", 1)[0]  # real host name (with a dot) is no secret
        pieces += [piece for piece in re.split(r"[@/:?#&=]", netloc) if "." not in piece]
    return [piece for piece in pieces if len(piece) >= MIN_SECRET]


def secret_values(settings: Settings) -> list[str]:
    """Every secret of this install that a text could carry: the secret keys' values, the
    NOTIFY_URLS tokens and the HEALTHCHECK_URL path (the check's key), longest first."""
    found: list[str] = []
    for key in KEYS:
        value = settings.value(key.name)
        if key.secret and isinstance(value, str) and value:
            found.append(value)
    for url in settings.value("NOTIFY_URLS") or ():
        found += url_pieces(url)
    if ping := settings.value("HEALTHCHECK_URL"):
        found += [piece for piece in urlsplit(str(ping)).path.split("/") if len(piece) >= MIN_SECRET]
    return sorted(set(found), key=len, reverse=True)


def redact(text: str, secrets: list[str]) -> str:
    """``text`` with every secret replaced by '***'."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def one_line(text: str, limit: int = 300) -> str:
    words = " ".join((text or "").split())
    return words if len(words) <= limit else words[: limit - 3] + "..."


# -- the messages -----------------------------------------------------------------------------

def _where(alert: Alert) -> str:
    return f"{alert.server}/{alert.site}" if alert.site else alert.server


def message_for(alert: Alert, index: int, at: str) -> Message:
    """'[FAILED] web-1/shop: backup failed' and a body of two lines: why, and where/when."""
    label = LABELS.get(alert.kind, alert.kind.upper())
    subject = SUBJECTS.get(alert.kind, alert.kind)
    if alert.kind == "stale" and not alert.site:
        subject = "server silent"
    site = f", site {alert.site}" if alert.site else ""
    body = f"{one_line(alert.reason) or subject}\nserver {alert.server}{site}, {at} UTC"
    return Message(f"[{label}] {_where(alert)}: {subject}", body, alert.kind, [index])


def rollup(alerts: list[tuple[int, Alert]], at: str) -> Message:
    """The alerts beyond MAX_ALERTS, as one message naming each."""
    worst = next((kind for kind in LABELS if any(a.kind == kind for _, a in alerts)), alerts[0][1].kind)
    servers = sorted({a.server for _, a in alerts})
    listed = ", ".join(f"{_where(a)} ({LABELS.get(a.kind, a.kind).lower()})" for _, a in alerts)
    title = f"[{LABELS.get(worst, worst.upper())}] {', '.join(servers)}: {len(alerts)} more sites need action"
    return Message(title, f"{one_line(listed, 1500)}\n{at} UTC", worst, [index for index, _ in alerts])


def build_messages(alerts: list[Alert], notify_on: str, secrets: list[str]) -> list[Message]:
    """The messages to send: success only with NOTIFY_ON=all, at most MAX_ALERTS of them,
    no secret in any."""
    at = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    wanted = [(i, a) for i, a in enumerate(alerts) if a.kind != "ok" or notify_on == "all"]
    if len(wanted) > MAX_ALERTS:
        head, rest = wanted[: MAX_ALERTS - 1], wanted[MAX_ALERTS - 1:]
        messages = [message_for(a, i, at) for i, a in head] + [rollup(rest, at)]
    else:
        messages = [message_for(a, i, at) for i, a in wanted]
    for message in messages:
        message.title, message.body = redact(message.title, secrets), redact(message.body, secrets)
    return messages


# -- delivery ---------------------------------------------------------------------------------

#: where Apprise's warnings go while a delivery thread runs (a ContextVar: Apprise 2 hands its
#: work to its own threads with a copy of the caller's context, so the capture follows it)
_CAPTURED: ContextVar[list[str] | None] = ContextVar("wpbackup_apprise_capture", default=None)


class _Capture(logging.Handler):
    """Keeps Apprise's warnings for the one warning of ours (scrubbed), instead of letting
    them reach stderr unfiltered (some name a target's token)."""

    def emit(self, record: logging.LogRecord) -> None:
        sink = _CAPTURED.get()
        if sink is not None and record.levelno >= logging.WARNING:
            try:
                sink.append(record.getMessage())
            except Exception:  # a malformed record must not break a delivery
                pass


def _quiet_apprise() -> None:
    logger = logging.getLogger("apprise")
    if not any(isinstance(handler, _Capture) for handler in logger.handlers):
        logger.addHandler(_Capture())
        logger.propagate = False


def shown_target(url: str, private: str | None) -> str:
    """scheme://host of Apprise's privacy URL (tokens in the host position come masked);
    a host that does not look like one (a Telegram or ntfy token) is '***'."""
    scheme = url.split("://", 1)[0] if "://" in url else "?"
    netloc = urlsplit(private).netloc.rsplit("@", 1)[-1] if private else ""
    hostname = netloc.split(":")[0]
    if "..." in netloc or not ("." in netloc or netloc.startswith("[") or hostname == "localhost"):
        netloc = "***"
    return f"{scheme}://{netloc}"


def _asset(apprise):
    """Apprise sending in the calling thread (ours, a daemon): Apprise 2 otherwise hands each
    send to a pool whose threads the interpreter waits for at exit, so a target that trickles
    its answer could hold the process. (service_timeout is Apprise 1.9+; 0: no pool.)"""
    try:
        return apprise.AppriseAsset(async_mode=False, service_timeout=0)
    except Exception:  # an older Apprise: it sends in the calling thread anyway
        return apprise.AppriseAsset(async_mode=False)


@dataclass
class Delivery:
    """One NOTIFY_URLS target: its thread, what got through, and why not."""

    url: str
    messages: list[Message]
    secrets: list[str]
    target: str = ""
    service: str = ""
    sent: list[int] = field(default_factory=list)     # indices of the alerts that reached it
    failed: int = 0
    problems: list[str] = field(default_factory=list)
    invalid: bool = False
    done: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        threading.Thread(target=self._run, name="wpbackup-alert", daemon=True).start()

    def _run(self) -> None:
        _CAPTURED.set(self.problems)
        try:
            self._send()
        except Exception as exc:  # a plugin's bug is one more undelivered alert
            self.problems.append(f"unexpected {type(exc).__name__}")
            self.failed = self.failed or len(self.messages)
        finally:
            self.done.set()

    def _send(self) -> None:
        import apprise

        notifier = apprise.Apprise(asset=_asset(apprise))
        if not notifier.add(self.url):
            self.invalid = True
            self.target = shown_target(self.url, None)
            return
        try:
            self.service = notifier[0].service_name
            private = notifier.urls(privacy=True)[0]
        except Exception:
            private = None
        self.target = shown_target(self.url, private)
        types = {"ok": apprise.NotifyType.SUCCESS, "stale": apprise.NotifyType.WARNING,
                 "incomplete": apprise.NotifyType.WARNING}
        for index, message in enumerate(self.messages):
            if not notifier.notify(body=message.body, title=message.title,
                                   notify_type=types.get(message.kind, apprise.NotifyType.FAILURE)):
                self.failed = len(self.messages) - index  # a target that refused one (or did
                return                                    # not answer) is not tried again now
            self.sent += message.alerts

    def warn(self) -> None:
        """One warning when something did not get through: scheme and host only."""
        target = self.target or shown_target(self.url, None)
        name = f"{self.service} ({target})" if self.service else target
        pieces = url_pieces(self.url)
        keep = target.split("://", 1)[-1]
        scrub = [p for p in pieces if p != keep] + self.secrets
        reason = redact(one_line(self.problems[-1], 200), scrub) if self.problems else ""
        if self.invalid:
            log.warning("alert target %s: not a URL Apprise can use (see docs/notifications.md)", target)
        elif not self.done.is_set():
            log.warning("alerts to %s not confirmed within %gs (no answer); the run goes on", name, DEADLINE)
        elif self.failed:
            log.warning("%d of %d alert(s) to %s not delivered%s", self.failed, len(self.messages), name,
                        f": {reason}" if reason else "")


def send_alerts(settings: Settings, alerts: list[Alert]) -> int:
    """Send ``alerts`` to every NOTIFY_URLS target, side by side, waiting at most DEADLINE
    seconds in all; how many alerts reached at least one target. Never raises: an alert
    that cannot be sent is a warning on stderr, nothing more."""
    try:
        return _send_all(settings, alerts)
    except Exception as exc:  # pragma: no cover - a bug here must not fail a backup
        log.warning("alerts not sent: unexpected %s", type(exc).__name__)
        return 0


def _send_all(settings: Settings, alerts: list[Alert]) -> int:
    urls = settings.value("NOTIFY_URLS") or ()
    if not urls or not alerts:
        return 0
    secrets = secret_values(settings)
    messages = build_messages(alerts, str(settings.value("NOTIFY_ON")), secrets)
    if not messages:
        return 0
    _quiet_apprise()
    deliveries = [Delivery(url, messages, secrets) for url in urls]
    for delivery in deliveries:
        delivery.start()
    end = time.monotonic() + DEADLINE
    for delivery in deliveries:
        delivery.done.wait(max(0.0, end - time.monotonic()))
    reached: set[int] = set()
    for delivery in deliveries:
        delivery.warn()
        reached.update(delivery.sent)
    return len(reached)


# -- staleness --------------------------------------------------------------------------------

def _silent_reason(last: str | None, at: datetime, max_age: float) -> str:
    from wpbackup.fleet.health import parse_time

    when = parse_time(last)
    if when is None:
        return "no backup activity recorded from this server"
    hours = (at - when).total_seconds() / 3600
    return (f"no backup activity for {hours:.0f}h (last at {last} UTC; "
            f"BACKUP_MAX_AGE_HOURS={max_age:g}): is its timer running?")


def stale_candidates(health: FleetHealth) -> list[tuple[str, Alert | None]]:
    """(episode key, alert) for every STALE site and silent server. A silent server is one
    alert; its sites' episodes are keyed too (alert None), so they do not follow one by one."""
    found: list[tuple[str, Alert | None]] = []
    for server in health.servers:
        if server.silent:
            reason = _silent_reason(server.last_activity, health.at, health.max_age_hours)
            found.append((f"{server.server}::silent:{server.last_activity or '-'}",
                          Alert("stale", server.server, "", reason)))
        for site in server.sites:
            if site.verdict == "STALE":
                alert = None if server.silent else Alert("stale", site.server, site.site, site.reason)
                found.append((f"{site.server}:{site.site}:{site.last_success or 'never'}", alert))
    return found


def stale_alerts(settings: Settings, health: FleetHealth) -> list[Alert]:
    """The STALE sites (and silent servers) not alerted yet in this staleness episode; each
    is recorded in the catalog's alerts_sent as it is returned, so the next call does not
    repeat it. An episode is keyed by the last success: a site that recovers and goes stale
    again later is a new one. (Recorded before sending: a lost alert is not retried, the
    daily report still lists the site.)"""
    candidates = stale_candidates(health)
    if not candidates:
        return []
    now = catalog.now_utc()
    forget = (datetime.now(timezone.utc) - FORGET_AFTER).strftime("%Y-%m-%d %H:%M:%S")
    fresh: list[Alert] = []
    try:
        with closing(catalog.connect(settings.db_path)) as conn, conn:
            conn.execute(f"DELETE FROM {catalog.ALERTS_SENT} WHERE sent_at < ?", (forget,))
            for key, alert in candidates:
                inserted = conn.execute(f"INSERT OR IGNORE INTO {catalog.ALERTS_SENT} (key, sent_at) "
                                        "VALUES (?, ?)", (key, now)).rowcount
                if inserted and alert is not None:
                    fresh.append(alert)
    except sqlite3.Error as exc:
        log.warning("stale alerts skipped: cannot record them in the catalog: %s", exc)
        return []
    return fresh

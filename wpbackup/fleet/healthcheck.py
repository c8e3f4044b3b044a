"""Dead-man's-switch pings, healthchecks.io's pinging API: ``URL/start`` when a backup run
begins, then ``URL`` (success) or ``URL/fail``, both carrying the same ``rid`` (a run id, a
lowercase canonical UUID) so that overlapping runs pair up, the end ping with the run's
one-line summary as its POST body (shown in the check's event log).

A backup that never runs is only noticed by a monitor that expected a ping; so is a failing
one. A ping that cannot be delivered is one warning (scheme and host: the path is the check's
key) and never fails or holds up the backup: a short timeout and one retry.
"""

from __future__ import annotations

import time
import uuid
from urllib.parse import urlsplit, urlunsplit

from wpbackup.console import log

#: (connect, read) seconds per attempt; two attempts at most
TIMEOUT = (3.05, 5.0)
RETRY_AFTER = 1.0
#: characters of body sent (healthchecks.io keeps the first 100 kB, older servers 10 kB)
MAX_BODY = 10_000


def new_run_id() -> str:
    """A run id as healthchecks.io wants it: a UUID in canonical, lowercase text form."""
    return str(uuid.uuid4())


def ping_url(url: str, event: str = "", rid: str | None = None) -> str:
    """``url`` with ``/event`` appended to its path and ``rid`` to its query (a slug URL may
    carry a query of its own, such as ``?create=1``)."""
    parts = urlsplit(url)
    path = parts.path.rstrip("/") + (f"/{event}" if event else "")
    query = "&".join(q for q in (parts.query, f"rid={rid}" if rid else "") if q)
    return urlunsplit((parts.scheme, parts.netloc, path, query, ""))


def _shown(url: str) -> str:
    """scheme://host, never the path (the check's key) or a user part."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url.split(":", 1)[0] + "://..."
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"


def _attempt(target: str, body: bytes) -> str | None:
    """One POST; None when the server took it, else why not. requests is imported here, when
    HEALTHCHECK_URL is set: every run creates the reporter that pings."""
    import requests

    try:
        response = requests.post(target, data=body, timeout=TIMEOUT)
    except requests.RequestException as exc:
        return type(exc).__name__
    return None if response.status_code < 400 else f"HTTP {response.status_code}"


def ping(url: str | None, event: str = "", body: str = "", rid: str | None = None) -> bool:
    """Send one ping; ``event`` is 'start', 'fail' or '' (success). Never raises."""
    if not url:
        return False
    try:
        target = ping_url(url, event, rid)
        data = body[:MAX_BODY].encode("utf-8", "replace")
        problem = _attempt(target, data)
        if problem and not problem.startswith("HTTP 4"):  # a 4xx will not change on a retry
            time.sleep(RETRY_AFTER)
            problem = _attempt(target, data)
    except Exception as exc:  # a malformed URL or a bug: still no reason to fail a backup
        problem = type(exc).__name__
    if problem:
        log.warning("healthcheck ping%s to %s failed: %s", f" ({event})" if event else "", _shown(url), problem)
    return problem is None

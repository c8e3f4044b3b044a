"""Dead-man's-switch pings (healthchecks.io style): URL/start, URL on success, URL/fail.

A backup that never runs is only noticed by a monitor that expected a ping; so is a failing
one. A ping that cannot be delivered is logged and never fails the backup.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import requests

from wpbackup.console import log


def ping(url: str | None, event: str = "", body: str = "") -> bool:
    """Send one ping; event is 'start', 'fail' or '' (success)."""
    if not url:
        return False
    target = url.rstrip("/") + (f"/{event}" if event else "")
    try:
        requests.post(target, data=body.encode()[:10_000], timeout=10).raise_for_status()
        return True
    except requests.RequestException as exc:
        host = urlsplit(target).netloc.rsplit("@", 1)[-1]  # the path is the check's secret
        log.warning("healthcheck ping to %s failed: %s", host, type(exc).__name__)
        return False

"""`status`: read-only view of the catalog; exits non-zero when a site's backup is too old."""

from __future__ import annotations

from .actions import show_status


def task_status():
    """Show each site's last successful backup, its age, size and where it is stored."""
    return {"actions": [show_status], "uptodate": [False], "verbosity": 2}

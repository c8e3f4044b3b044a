"""`sync`: the catalog's D1 sync, after every site's catalog stage."""

from __future__ import annotations

from .actions import sync_catalog
from .context import CONTEXT


def task_sync():
    """Sync the catalog with Cloudflare D1: push local rows, pull the fleet's."""
    return {
        "actions": [sync_catalog],
        "task_dep": [f"catalog:{site.name}" for site in CONTEXT.enabled],
        "uptodate": [False],
        "verbosity": 2, "io": {"capture": False},
    }

"""Runs: which archive a `doit backup` works on, kept in a small state file per site.

    BACKUP_DIR/.work/SITE/run.json          {stamp, started_at, closed}
    BACKUP_DIR/.work/SITE/STAMP/*.json      one receipt per finished stage
    BACKUP_DIR/.work/SITE/STAMP/...         the run's intermediates (dump, files part)

The loader only reads: an open run younger than STALE_RUN_HOURS and started with the same
configuration (its fingerprint) is resumed (same stamp, same archive name); a closed one, or
none, gives a new stamp; a stale or reconfigured one is abandoned and its leftovers cleaned by
the first stage of the new run. Task names never carry the stamp.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from .archive import write_atomic

STAMP_FORMAT = "%Y%m%d-%H%M%S"
_open_lock = threading.Lock()


def make_stamp(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime(STAMP_FORMAT)


def parse_stamp(stamp: str) -> datetime:
    return datetime.strptime(stamp, STAMP_FORMAT).replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class Run:
    """One site's run: its stamp and folder, and whether it resumes or replaces another."""

    site: str
    stamp: str
    site_dir: Path
    resumed: bool = False
    abandoned: str | None = None
    fingerprint: str | None = None  # of everything that shapes this run's archive
    why_abandoned: str = ""  # what made the abandoned run unusable, for the log

    @property
    def folder(self) -> Path:
        return self.site_dir / self.stamp

    @property
    def state_file(self) -> Path:
        return self.site_dir / "run.json"

    def receipt_path(self, stage: str) -> Path:
        return self.folder / f"{stage}.json"

    def receipt(self, stage: str) -> dict | None:
        """A finished stage's receipt, or None (also for one of another run)."""
        try:
            data = json.loads(self.receipt_path(stage).read_text())
        except (OSError, ValueError):
            return None
        return data if data.get("stamp") == self.stamp else None

    def write_receipt(self, stage: str, data: dict) -> dict:
        data = {"stamp": self.stamp, "site": self.site, **data}
        write_atomic(self.receipt_path(stage), (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())
        return data


def read_state(site_dir: Path) -> dict | None:
    try:
        return json.loads((site_dir / "run.json").read_text())
    except (OSError, ValueError):
        return None


def plan_run(work_dir: Path, site: str, now: datetime, stale_hours: float, fingerprint: str | None = None) -> Run:
    """Decide, without writing anything, which run this invocation works on.

    An open run is resumed only when it is younger than STALE_RUN_HOURS, was started with the
    configuration in force now (same ``fingerprint``: resuming it would describe the new
    settings in a manifest beside the old content), and has not already recorded its result
    (a catalog receipt: the process died just before closing it)."""
    site_dir = work_dir / site
    state = read_state(site_dir)
    stamp = make_stamp(now)
    if state and not state.get("closed"):
        try:
            started = parse_stamp(state["stamp"])
        except (KeyError, ValueError, TypeError):
            return Run(site, stamp, site_dir, fingerprint=fingerprint)
        old = Run(site, state["stamp"], site_dir)
        if old.receipt("catalog") is not None:
            return Run(site, _after(stamp, state["stamp"]), site_dir, fingerprint=fingerprint)
        why = ""
        if now - started >= timedelta(hours=stale_hours):
            why = f"was older than STALE_RUN_HOURS={stale_hours:g}"
        elif fingerprint is not None and state.get("fingerprint") != fingerprint:
            why = "was started with another configuration of the site (path, files, exclude or database)"
        if not why:
            return Run(site, state["stamp"], site_dir, resumed=True, fingerprint=fingerprint)
        return Run(site, _after(stamp, state["stamp"]), site_dir, abandoned=state["stamp"],
                   fingerprint=fingerprint, why_abandoned=why)
    if state and isinstance(state.get("stamp"), str):
        stamp = _after(stamp, state["stamp"])
    return Run(site, stamp, site_dir, fingerprint=fingerprint)


def _after(stamp: str, previous: str) -> str:
    """``stamp``, or the second after ``previous`` when the clock has not passed it yet."""
    try:
        if previous >= stamp:
            return make_stamp(parse_stamp(previous) + timedelta(seconds=1))
    except ValueError:
        pass
    return stamp


def fingerprint(parts: dict) -> str:
    """A short digest of what shapes an archive (no secret may be in ``parts``)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def open_run(run: Run) -> bool:
    """Write run.json for this run (idempotent, thread-safe); True if it was opened now."""
    with _open_lock:
        state = read_state(run.site_dir)
        if state and state.get("stamp") == run.stamp:
            run.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            return False
        run.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        data = {"stamp": run.stamp, "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "closed": False, "fingerprint": run.fingerprint}
        write_atomic(run.state_file, json.dumps(data).encode())
        return True


INTERMEDIATES = ("database.sql", "files.part.zst", "part-sums.json", "upload-state.json")


def close_run(run: Run) -> None:
    """Mark the run closed and drop its intermediates (the archive lives in BACKUP_DIR).

    The small receipts stay until the next run opens: doit still reads them as file_dep
    while it saves this run's results.
    """
    with _open_lock:
        data = read_state(run.site_dir) or {"stamp": run.stamp}
        data.update(closed=True, closed_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        write_atomic(run.state_file, json.dumps(data).encode())
        for name in INTERMEDIATES:
            (run.folder / name).unlink(missing_ok=True)


def leftovers(run: Run) -> list[Path]:
    """Folders of this site's other runs: closed ones' receipts, or an abandoned run."""
    if not run.site_dir.is_dir():
        return []
    return [p for p in run.site_dir.iterdir() if p.is_dir() and p.name != run.stamp]

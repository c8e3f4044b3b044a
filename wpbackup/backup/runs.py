"""Runs: which archive a `doit backup` works on, kept in a small state file per site.

    BACKUP_DIR/.work/SITE/run.json          {stamp, started_at, closed}
    BACKUP_DIR/.work/SITE/STAMP/*.json      one receipt per finished stage
    BACKUP_DIR/.work/SITE/STAMP/...         the run's intermediates (dump, files part)

The loader only reads: an open run younger than STALE_RUN_HOURS and started with the same
configuration (its fingerprint) is resumed (same stamp, same archive name); a closed one, or
none, gives a new stamp; a stale or reconfigured one, or one whose folder is gone, is abandoned
and its leftovers cleaned by the first stage of the new run. Task names never carry the stamp.

A new stamp is the true time (UTC, to the second) and always later than the site's last one:
when the clock shows an earlier second than the last run's stamp (it was stepped back), the
site's run is refused rather than given a stamp that pretends to be later (``Run.refused``).
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from wpbackup.atomic import write_atomic

#: the stages of one site's backup, in order (steps.py does them, tasks/backup.py names them)
STAGES = ("dump", "tar", "compress", "upload", "catalog")

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
    refused: str = ""  # why this site may not run now (the clock is behind its last stamp)

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
    """run.json, or None when it is missing or damaged (not JSON, not an object)."""
    try:
        data = json.loads((site_dir / "run.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def valid_stamp(value) -> str | None:
    """``value`` if it is a run stamp, else None (a damaged run.json may hold anything)."""
    try:
        canonical = make_stamp(parse_stamp(value))
    except (TypeError, ValueError):
        return None
    return value if canonical == value else None  # stamps compare as text: only the exact form


def plan_run(work_dir: Path, site: str, now: datetime, stale_hours: float, fingerprint: str | None = None) -> Run:
    """Decide, without writing anything, which run this invocation works on.

    An open run is resumed only when its folder is still there, it is younger than
    STALE_RUN_HOURS, was started with the configuration in force now (same ``fingerprint``:
    resuming it would describe the new settings in a manifest beside the old content), and has
    not already recorded its result (a catalog receipt: the process died just before closing
    it). A damaged run.json names no run: the new run's first stage cleans every folder."""
    site_dir = work_dir / site
    state = read_state(site_dir) or {}
    stamp = make_stamp(now)
    previous = valid_stamp(state.get("stamp"))
    if previous is None or state.get("closed"):
        if previous is None and (site_dir / stamp).is_dir():  # no run.json, and a folder of this very second
            stamp = _after(stamp, stamp)
        return _new_run(site, stamp, site_dir, fingerprint, previous)
    old = Run(site, previous, site_dir)
    if old.receipt("catalog") is not None:
        return _new_run(site, stamp, site_dir, fingerprint, previous)
    why = ""
    if not old.folder.is_dir():
        why = "has no run folder (it was removed, or the process was killed while the run was starting)"
    elif now - parse_stamp(previous) >= timedelta(hours=stale_hours):
        why = f"was older than STALE_RUN_HOURS={stale_hours:g}"
    elif fingerprint is not None and state.get("fingerprint") != fingerprint:
        why = "was started with another configuration of the site (path, files, exclude or database)"
    if not why:
        return Run(site, previous, site_dir, resumed=True, fingerprint=fingerprint)
    return _new_run(site, stamp, site_dir, fingerprint, previous, abandoned=previous, why_abandoned=why)


def _new_run(site: str, stamp: str, site_dir: Path, fingerprint: str | None, previous: str | None,
             **abandoning) -> Run:
    """A new run after ``previous`` (the site's last stamp): refused when the clock is behind
    it, since any stamp now would be either untrue (made later) or sort before the last
    archive (a newer backup that retention and `latest` would take for an older one)."""
    if previous and previous > stamp:
        return Run(site, stamp, site_dir, fingerprint=fingerprint, refused=clock_behind(site_dir, stamp, previous))
    return Run(site, _after(stamp, previous) if previous else stamp, site_dir, fingerprint=fingerprint,
               **abandoning)


def clock_behind(site_dir: Path, stamp: str, previous: str) -> str:
    """The refusal an operator reads when the clock was stepped back behind a site's last run."""
    return (f"the clock is behind this site's last run: it is {stamp} UTC now, but run {previous} "
            f"exists and a new archive would sort before it, so none is made until the clock passes "
            f"that; check the system clock (timedatectl, NTP), or, if it is right and that stamp was "
            f"wrong, remove {site_dir / 'run.json'}")


def _after(stamp: str, previous: str) -> str:
    """``stamp``, or the second after ``previous`` when both fall in the same second (the
    loader waits for the next second first, so this only guards callers that do not)."""
    if previous == stamp:
        return make_stamp(parse_stamp(previous) + timedelta(seconds=1))
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

"""`restore`, `verify`: bring a backup back, and prove that one could.

    doit restore --site S [--archive NAME|latest] [--target DIR] [--database NAME]
                 [--db-only | --files-only] [--force] [--admin]
    doit verify [--site S] [--all] [--remote] [--restore-test]
"""

from __future__ import annotations

from pathlib import Path

from doit.exceptions import TaskFailed

from wpbackup.console import log
from wpbackup.errors import BackupError
from wpbackup.fleet import catalog
from wpbackup.fleet.notify import Alert, send_alerts

from .context import CONTEXT


def _site(name: str):
    known = {site.name: site for site in CONTEXT.sites}
    if not name:
        raise BackupError(f"--site is required (one of: {', '.join(known) or 'no site configured'})")
    if name not in known:
        raise BackupError(f"no site {name!r} in {CONTEXT.settings.sites_file} (known: {', '.join(known)})")
    return known[name]


def _record(status: str, site: str | None, message: str, archive_name: str | None = None,
            checks: dict[str, int | None] | None = None) -> None:
    try:
        catalog.log_event(CONTEXT.settings.db_path, status, message, site=site,
                          server_id=CONTEXT.settings.server_id, archive_name=archive_name, checks=checks)
    except Exception as exc:  # the operator still sees the message
        log.error("could not record in the catalog: %s", exc)


def restore_action(site, archive, target, database, db_only, files_only, force, admin=False):
    """Restore one site's archive (files, database or both). On SIGTERM the process waits
    until the restore has put everything back and this has reported it. The restore code
    (zstandard, S3, the database swap) is imported here, by `doit restore` alone."""
    from wpbackup.restore.restore import finish_before_exit

    with finish_before_exit():
        return _restore_and_report(site, archive, target, database, db_only, files_only, force, admin)


def _restore_and_report(site, archive, target, database, db_only, files_only, force, admin):
    from wpbackup.restore.restore import Request, restore

    try:
        _no_empty_values(archive=archive, target=target, database=database)
        chosen = _site(site)
        if db_only and files_only:
            raise BackupError("--db-only and --files-only exclude each other")
        summary = restore(CONTEXT.settings, Request(
            site=chosen, archive=archive, target=Path(target) if target else None,
            database=database, files=not db_only, db=not files_only, force=force, admin=admin))
    except BackupError as exc:
        _record("ERROR", site or None, f"restore failed: {exc}")
        log.error("restore failed: %s", exc)
        return TaskFailed(f"restore failed: {exc}")
    message = restored_line(summary)
    _record("INFO", chosen.name, message)
    print(message)
    return True


def _no_empty_values(**given: str | None) -> None:
    """An option given with nothing after it (``--database=`` from an unset shell variable)
    is refused: taken as "not given", it would restore over the site's own database or folder."""
    for name, value in given.items():
        if value is not None and not value.strip():
            raise BackupError(f"--{name} was given an empty value (an unset shell variable?): give it one, or "
                              f"leave --{name} out for its default; nothing was changed")


HOW_LOADED = {"scratch": "loaded into a scratch database, then renamed into place",
              "aside": "the replaced tables kept aside in the database until the files were in place",
              "new": "a new database"}


def restored_line(summary: dict) -> str:
    """The one line an operator reads after a restore (and the catalog keeps)."""
    parts = []
    if summary["target"]:
        into = " (a mount point: its contents replaced)" if summary.get("contents_replaced") else ""
        parts.append(f"{summary['files']} files into {summary['target']}{into}")
    if summary["database"]:
        how = HOW_LOADED.get(summary.get("database_path") or "", "")
        parts.append(f"database {summary['database']} ({summary['tables']} tables{'; ' + how if how else ''})")
    message = (f"restored {summary['archive']} ({summary['size']}, from {summary['from']}): "
               f"{' and '.join(parts)} in {summary['seconds']}s")
    if summary.get("setid_cleared"):
        message += f"; set-user/group-ID bits cleared on {summary['setid_cleared']} file(s)"
    kept = summary.get("kept_tables") or []
    if kept:
        shown = ", ".join(kept[:10]) + (f" and {len(kept) - 10} more" if len(kept) > 10 else "")
        message += f"; kept {len(kept)} table(s) the archive does not hold: {shown}"
    return message


def verify_action(site, all_, remote, restore_test_):
    """Verify archives of every (or one) site; fail if any check fails. Each verdict goes to
    the catalog as a line whose columns say which copy passed or failed (prune reads those);
    each failed check is also an alert to NOTIFY_URLS, sent at the end, all together."""
    from wpbackup.restore.verify import verify_archive

    settings = CONTEXT.settings
    try:
        _no_empty_values(site=site)
        sites = [_site(site)] if site is not None else CONTEXT.enabled
    except BackupError as exc:
        return TaskFailed(str(exc))
    failures = 0
    alerts: list[Alert] = []
    for chosen in sites:
        rows = [r for r in catalog.successes(settings.db_path, chosen.name) if r["server_id"] == settings.server_id]
        if not rows:
            print(f"{chosen.name}: no successful backup in the catalog")
            failures += 1
            continue
        for row in rows if all_ else rows[:1]:
            verdict = verify_archive(settings, chosen, row, remote, restore_test_ and row is rows[0])
            failures += not verdict.ok
            _record("INFO" if verdict.ok else "ERROR", chosen.name, verdict.message, row["archive_name"],
                    verdict.results())
            print(f"{chosen.name}: {verdict.message}")
            if not verdict.ok:
                alerts.append(Alert("verify_failed", settings.server_id, chosen.name, verdict.message))
    send_alerts(settings, alerts)
    return TaskFailed(f"{failures} archive check(s) failed") if failures else True


def _flag(name: str, help_text: str, long: str | None = None) -> dict:
    return {"name": name, "long": long or name.replace("_", "-"), "type": bool, "default": False, "help": help_text}


def _text(name: str, help_text: str, default: str | None = None) -> dict:
    return {"name": name, "long": name, "type": str, "default": default, "help": help_text}


def task_restore():
    """Restore a site's backup from local disk or S3 (--site S; see `doit help restore`)."""
    return {
        "actions": [restore_action],
        "params": [
            _text("site", "site name from sites.json (required)"),
            _text("archive", "archive file name, or 'latest'", "latest"),
            _text("target", "folder to restore the files into (default: the site's path)"),
            _text("database", "database to load the dump into (default: the site's own)"),
            _flag("db_only", "restore only the database"),
            _flag("files_only", "restore only the files"),
            _flag("force", "replace a non-empty folder or database"),
            _flag("admin", "as root on the database server: load as the server's root over its socket"),
        ],
        "uptodate": [False],
        "verbosity": 2,
        "io": {"capture": False},
    }


def task_verify():
    """Check archives: checksum, readable zstd+tar, manifest (--remote, --restore-test)."""
    return {
        "actions": [verify_action],
        "params": [
            _text("site", "only this site"),
            _flag("all_", "every archive in the catalog, not only the latest", "all"),
            _flag("remote", "also stream and check the S3 copies"),
            _flag("restore_test_", "restore the latest archive into a scratch database and folder", "restore-test"),
        ],
        "uptodate": [False],
        "verbosity": 2,
        "io": {"capture": False},
    }

"""The server's side of `doit deploy`, run there inside the install the deploy just updated:

    python3 -m wpbackup.ops.remote reset
        the seed's log reset, before the new version's first doit run: doit's dependency
        files (.doit.db, .doit-readonly.db, ...) beside .env go, so its tasks start clean.
        The run receipts under BACKUP_DIR/.work stay (an unfinished run resumes from them),
        and so does the catalog. Runs on the distribution's python3 before the venv is
        (re)built, so it needs nothing outside the standard library.
    .venv/bin/python -m wpbackup.ops.remote record --controller NAME --digest SHA256
        after a successful deploy that changed something: an INFO line in backup_log
        ("deployed wordpress-backup VERSION from NAME", synced to D1 like any line) and the
        marker .deployed, by which the next deploy tells a finished deploy of this bundle
        from one that stopped half-way (that one is finished, reset and recorded again).

Both take the backup lock, so neither runs under a backup; a held lock is exit 4.
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import sys
from datetime import datetime, timezone
from pathlib import Path

from wpbackup import __version__
from wpbackup.backup import lock
from wpbackup.errors import BackupError, ConfigError

INSTALL = Path(__file__).resolve().parents[2]  # the install: its .env, state and lock live here
MARKER = ".deployed"
STATE_FILES = ".doit*.db*"  # DOIT_CONFIG's dep_file names (sqlite3 backend, and journals)


def reset(install: Path = INSTALL) -> list[str]:
    """Remove doit's state files beside .env; the names removed."""
    removed = []
    for path in sorted(install.glob(STATE_FILES)):
        if path.is_file() and not path.is_symlink():
            path.unlink()
            removed.append(path.name)
    return removed


def record(controller: str, digest: str, install: Path = INSTALL) -> str:
    """The INFO line in this server's catalog, then the marker; the line's text."""
    from wpbackup.atomic import write_atomic
    from wpbackup.config.settings import load_settings
    from wpbackup.fleet import catalog

    settings = load_settings()
    details = f"deployed wordpress-backup {__version__} from {controller}"
    catalog.log_event(settings.db_path, "INFO", details, site=None, server_id=settings.server_id)
    marker = {"version": __version__, "digest": digest, "controller": controller,
              "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    write_atomic(install / MARKER, (json.dumps(marker) + "\n").encode(), 0o644)
    return details


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m wpbackup.ops.remote")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("reset", help="remove doit's state files (before the new version's first run)")
    done = commands.add_parser("record", help="record a finished deploy: INFO line and marker")
    done.add_argument("--controller", required=True)
    done.add_argument("--digest", required=True)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, install: Path = INSTALL) -> int:
    args = _arguments(sys.argv[1:] if argv is None else argv)
    if args.command == "record" and not (re.fullmatch(r"[0-9a-f]{64}", args.digest)
                                         and re.fullmatch(r"[\w.@-]{1,200}", args.controller)):
        print("wordpress-backup: record: --digest is a sha256 in hex, --controller a server name", file=sys.stderr)
        return 2
    path = install / ".wpbackup.lock"
    try:
        lock.acquire(path)
    except BackupError as exc:
        print(f"wordpress-backup: {exc}: deploy again when it has finished", file=sys.stderr)
        return 4
    try:
        if args.command == "reset":
            removed = reset(install)
            print(f"doit state reset: removed {', '.join(removed)}" if removed else "doit state reset: none there")
        else:
            print(f"recorded in the catalog: {record(args.controller, args.digest, install)}")
    except ConfigError as exc:
        print(f"wordpress-backup: {args.command}: {'; '.join(exc.problems)}", file=sys.stderr)
        return 3
    except (BackupError, OSError, sqlite3.Error) as exc:
        print(f"wordpress-backup: {args.command}: {exc}", file=sys.stderr)
        return 3
    finally:
        lock.release(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

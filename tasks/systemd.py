"""`systemd`: the timers that run this install by itself (wpbackup/ops/units.py).

    doit systemd                     render backup, report and verify (a service and a timer
                                     each) into systemd/ beside .env
    doit systemd --install           and install them: /etc/systemd/system (--unit-dir),
                                     daemon-reload, enable --now the three timers

Rendering happens again only when the templates or the values the units are made of change
(doit's file_dep and config_changed); --install always installs. `doit deploy` runs
`doit systemd --install` on every host it sets up.
"""

from __future__ import annotations

import functools
from pathlib import Path

from doit.exceptions import TaskFailed
from doit.tools import config_changed

from wpbackup.errors import BackupError
from wpbackup.ops import units

from .context import CONTEXT


@functools.lru_cache(maxsize=1)
def _context() -> dict | BackupError:
    """The units' values, worked out once per run and only when the task is selected (they
    read every site's wp-config.php for its socket: not for every doit start)."""
    try:
        return units.unit_context(CONTEXT.settings, CONTEXT.sites)
    except BackupError as exc:
        return exc


class units_changed(config_changed):
    """doit's config_changed on the values the units are made of, computed when doit asks."""

    def __init__(self):
        super().__init__({})

    def _calc_digest(self):
        context = _context()
        self.config = context if isinstance(context, dict) else {"error": str(context)}
        return super()._calc_digest()


def _not_installing(task, values) -> bool:
    """--install always installs, even when the rendered units are up to date (`doit info`
    asks without parsing any option: nothing to install then)."""
    return not (task.options or {}).get("install")


def systemd_action(install: bool, unit_dir: str):
    """Render the units (each file written only when it changed), then install if asked."""
    context = _context()
    if isinstance(context, BackupError):
        return TaskFailed(str(context))
    settings = CONTEXT.settings
    folder = settings.state_dir / "systemd"
    try:
        units.prepare_writable(settings)
        lines = units.write_units(units.render(context), folder)
        if install:
            lines += units.install(folder, Path(unit_dir))
    except BackupError as exc:
        return TaskFailed(str(exc))
    print("\n".join(lines))
    if not install:
        print("to install them: doit systemd --install (as root), or by hand as docs/systemd.md shows")
    return True


def task_systemd():
    """Render the systemd units (backup, report, weekly verify) beside .env; --install installs them."""
    folder = CONTEXT.settings.state_dir / "systemd"
    return {
        "actions": [systemd_action],
        "params": [
            {"name": "install", "long": "install", "type": bool, "default": False,
             "help": "also copy them into the unit folder, daemon-reload and enable --now the timers"},
            {"name": "unit_dir", "long": "unit-dir", "type": str, "default": str(units.SYSTEM_UNIT_DIR),
             "help": "where --install puts the units (default: /etc/systemd/system)"},
        ],
        "file_dep": sorted(str(path) for path in units.TEMPLATES.glob("*.j2")),
        "targets": [str(folder / name) for name in units.unit_names()],
        "uptodate": [units_changed(), _not_installing],
        "verbosity": 2,
    }

"""The systemd units of an install: backup, report and a weekly verify with restore test,
each a oneshot service and its timer, rendered from templates/systemd/ and installed.

    Settings + sites -> unit_context()  every value the templates use, with the reason for
                                        each sandbox choice (also what doit compares to
                                        decide whether to render again)
                     -> render()        the six unit files as text
                     -> write_units()   into systemd/ beside .env, each only when it changed
                     -> install()       /etc/systemd/system, daemon-reload, enable --now the
                                        timers; without a running systemd: written, and said

The sandbox is ProtectSystem=strict with writable paths derived from the settings: the state
folder (.env, doit's state, the lock), SITES_FILE's folder (a backup that finds no sites.json
discovers the sites and writes one), the catalog's folder and BACKUP_DIR (which also holds
the verify restore test's scratch folder, BACKUP_DIR/.work/wpbackup-verify-*, and restore's
BACKUP_DIR/.restore; the scratch database lives in the database server). docs/systemd.md
explains every directive.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from wpbackup.atomic import write_atomic
from wpbackup.config.settings import PROJECT_DIR, Settings
from wpbackup.config.sites import Site
from wpbackup.errors import BackupError

TEMPLATES = PROJECT_DIR / "templates" / "systemd"
SYSTEM_UNIT_DIR = Path("/etc/systemd/system")
SYSTEMD_RUNNING = Path("/run/systemd/system")  # what sd_booted() looks at: systemd is PID 1
HOME_ROOTS = (Path("/home"), Path("/root"), Path("/run/user"))  # what ProtectHome= covers
TMP_ROOTS = (Path("/tmp"), Path("/var/tmp"))  # what PrivateTmp= replaces
CODE = ("dodo.py", "tasks", "wpbackup", "templates")  # the install's code, never written by a run
DEFAULT_SOCKET = "/run/mysqld/mysqld.sock"  # the client's built-in socket for host localhost


@dataclass(frozen=True)
class UnitSpec:
    """One service and its timer: what runs, how long it may take, when it fires."""

    name: str
    description: str
    command: tuple[str, ...]  # doit's arguments
    calendar_key: str
    timeout: str  # TimeoutStartSec: generous, a stuck run must still end before the next
    delay: str  # RandomizedDelaySec: each host's own fixed offset (FixedRandomDelay)
    database: bool  # ordered after a local database server (a missed run fires at boot)


UNITS = (
    UnitSpec("wordpress-backup", "WordPress backup of every site (doit backup)", ("backup",),
             "BACKUP_ON_CALENDAR", "12h", "30min", True),
    UnitSpec("wordpress-report", "WordPress backup: the daily fleet report (doit report)", ("report",),
             "REPORT_ON_CALENDAR", "1h", "15min", False),
    UnitSpec("wordpress-verify", "WordPress backup: weekly restore test of every site's latest archive "
             "(doit verify)", ("verify", "--all", "--remote", "--restore-test"), "VERIFY_ON_CALENDAR", "12h",
             "30min", True),
)


def unit_names() -> list[str]:
    """The six file names, services first."""
    return [f"{unit.name}.service" for unit in UNITS] + [f"{unit.name}.timer" for unit in UNITS]


def timer_names() -> list[str]:
    return [f"{unit.name}.timer" for unit in UNITS]


def interpreter() -> Path:
    """The Python the services run: the install's own venv, which run.sh and deploy keep in
    step with requirements.txt, else the interpreter running doit now (it has doit and the
    requirements, or this would not run). Not resolved: a venv's python is a symlink, and its
    target alone knows nothing of the venv."""
    venv = PROJECT_DIR / ".venv" / "bin" / "python"
    if os.access(venv, os.X_OK):
        return venv
    return Path(sys.executable).absolute()


def service_user(settings: Settings) -> str | None:
    """Who the services run as: the owner of the install's state (its .env, else the folder),
    so that a timer's run writes files its owner's manual runs can change too. None for root,
    systemd's default for a system service (root reads every site's files)."""
    path = settings.env_path if settings.env_path.exists() else settings.state_dir
    uid = path.stat().st_uid
    if uid == 0:
        return None
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _under(path: Path, roots: tuple[Path, ...]) -> Path | None:
    return next((root for root in roots if path == root or root in path.parents), None)


def _minimal(paths: list[Path]) -> list[Path]:
    """The paths without duplicates and without those inside another of them, in order."""
    unique = list(dict.fromkeys(paths))
    return [p for p in unique if not any(other != p and other in p.parents for other in unique)]


def _sockets(sites: list[Site]) -> list[tuple[str, Path]]:
    """(site name, database socket) of each site on a socket (the client's built-in one for
    localhost). A site whose wp-config.php cannot be read is left out: its backup fails with
    its own message."""
    found = []
    for site in sites:
        try:
            host = site.database().host
        except BackupError:
            continue
        if host.socket or host.host == "localhost":
            found.append((site.name, Path(host.socket or DEFAULT_SOCKET)))
    return found


@dataclass
class Sandbox:
    """What the services may write, what stays visible, and why each choice was made."""

    writable: list[Path]
    read_only: list[Path]  # code inside a writable folder (.env beside dodo.py): kept read-only
    protect_home: str = "yes"
    private_tmp: bool = True
    notes: list[str] = field(default_factory=list)


def sandbox(settings: Settings, sites: list[Site], python: Path) -> Sandbox:
    """The writable paths and the ProtectHome=/PrivateTmp= choices for this install."""
    writable = _minimal([settings.state_dir, settings.sites_file.parent, settings.db_path.parent,
                         settings.backup_dir])
    venv = python.parent.parent if (python.parent.parent / "pyvenv.cfg").exists() else None
    code = [PROJECT_DIR / name for name in CODE] + ([venv] if venv else [])
    read_only = [c for c in code if any(c == w or w in c.parents for w in writable)]
    box = Sandbox(writable, read_only)
    needed = [(f"site {site.name}", site.path) for site in sites]
    needed += [(f"the database socket of {name}", socket) for name, socket in _sockets(sites)]
    needed += [("the state folder", settings.state_dir), ("DB_PATH", settings.db_path),
               ("BACKUP_DIR", settings.backup_dir), ("SITES_FILE", settings.sites_file),
               ("the install", PROJECT_DIR), ("its Python", python), ("its Python", python.resolve())]
    for what, path in needed:
        home, tmp = _under(path, HOME_ROOTS), _under(path, TMP_ROOTS)
        if home and box.protect_home == "yes":
            box.protect_home = "read-only"
            box.notes.append(f"ProtectHome=read-only, not yes: {what} is under {home} ({path})")
        if tmp and box.private_tmp:
            box.private_tmp = False
            box.notes.append(f"PrivateTmp=no: {what} is under {tmp} ({path}), which a private {tmp} would hide")
    if settings.s3_enabled and not settings.s3_access_key_id and box.protect_home == "yes":
        box.protect_home = "read-only"
        box.notes.append("ProtectHome=read-only, not yes: S3 keys come from boto3's chain, which reads ~/.aws")
    return box


_UNSAFE = re.compile(r"[\x00-\x1f\x7f\"'\\]|\s$|^\s")


def _checked(text: str, what: str) -> str:
    """A path or value as it may appear in a unit file: no control character, quote or
    backslash (one could end a line or a word early), no space at either end."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BackupError(f"{what} {text!r} is not valid UTF-8: a unit file cannot name it") from None
    if _UNSAFE.search(text):
        raise BackupError(f"{what} {text!r} holds a quote, backslash, control character or a space at one end: "
                          "a unit file cannot name it safely; move it to a plainer path")
    return text


def _unit_dict(unit: UnitSpec, settings: Settings, python: Path) -> dict:
    exec_words = [str(python), "-m", "doit", "-f", str(PROJECT_DIR / "dodo.py"), *unit.command]
    return {"name": unit.name, "description": unit.description, "timeout": unit.timeout, "delay": unit.delay,
            "database": unit.database, "calendar_key": unit.calendar_key,
            "calendar": _checked(str(settings.value(unit.calendar_key)), unit.calendar_key),
            "exec": [_checked(word, "ExecStart's") for word in exec_words]}


def unit_context(settings: Settings, sites: list[Site]) -> dict:
    """Every value the templates use (JSON-serialisable: doit's config_changed compares it),
    checked so that nothing in it can break a unit file."""
    python = interpreter()
    box = sandbox(settings, sites, python)
    docs = PROJECT_DIR / "docs" / "systemd.md"
    return {
        "units": [_unit_dict(unit, settings, python) for unit in UNITS],
        "project_dir": _checked(str(PROJECT_DIR), "the install folder"),
        "env_path": _checked(str(settings.env_path), "the .env path"),
        "docs": "file://" + quote(str(docs)),
        "user": service_user(settings),
        "writable": [_checked(str(p), "a writable path") for p in box.writable],
        "read_only": [_checked(str(p), "a read-only path") for p in box.read_only],
        "protect_home": box.protect_home,
        "private_tmp": box.private_tmp,
        # /tmp shared means /tmp read-only (ProtectSystem=strict): the temporary files (the
        # database clients' option files, ...) then go to a folder the unit may write
        "tmpdir": None if box.private_tmp else _checked(str(private_tmpdir(settings)), "the temporary folder"),
        "notes": box.notes,
    }


def private_tmpdir(settings: Settings) -> Path:
    """TMPDIR of the units that cannot have a private /tmp: inside BACKUP_DIR (writable, 0700)."""
    return settings.backup_dir / ".tmp"


def _value(text: str) -> str:
    """A plain setting's value: systemd expands %-specifiers in most of them."""
    return str(text).replace("%", "%%")


def _word(text: str) -> str:
    """One word of ExecStart=: %-specifiers and $-variables escaped, quoted when it has a space."""
    text = _value(text).replace("$", "$$")
    return f'"{text}"' if re.search(r"\s|;", text) else text


def _paths(paths: list[str]) -> str:
    """A space-separated list of paths (ReadWritePaths=, ReadOnlyPaths=), quoted where needed."""
    return " ".join(f'"{_value(p)}"' if re.search(r"\s", p) else _value(p) for p in paths)


def _environment(assignment: str) -> str:
    """One Environment= assignment, always quoted (a path may hold spaces)."""
    return f'"{_value(assignment)}"'


def render(context: dict, templates: Path = TEMPLATES) -> dict[str, str]:
    """The six unit files as text: {file name: content}. jinja2 is imported here: every doit
    command creates the systemd task (it needs only TEMPLATES and the unit names)."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(loader=FileSystemLoader(str(templates)), undefined=StrictUndefined, autoescape=False,
                      keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(value=_value, command=lambda words: " ".join(_word(w) for w in words),
                       paths=_paths, environment=_environment,
                       comment=lambda text: re.sub(r"[\x00-\x1f\x7f]", "?", text))
    service, timer = env.get_template("service.j2"), env.get_template("timer.j2")
    texts = {}
    for unit in context["units"]:
        texts[f"{unit['name']}.service"] = service.render(context, unit=unit)
    for unit in context["units"]:
        texts[f"{unit['name']}.timer"] = timer.render(context, unit=unit)
    return texts


def prepare_writable(settings: Settings) -> None:
    """ReadWritePaths= must exist when a service starts (else systemd refuses to start it):
    BACKUP_DIR (0700, as the backup makes it) and the folders of the catalog and of
    sites.json are made now."""
    try:
        settings.backup_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        settings.db_path.parent.mkdir(parents=True, exist_ok=True)
        settings.sites_file.parent.mkdir(parents=True, exist_ok=True)
        private_tmpdir(settings).mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise BackupError(f"cannot create {exc.filename}: {exc.strerror} (the units need it writable)") from None


def write_units(texts: dict[str, str], folder: Path, verb: str = "wrote") -> list[str]:
    """Write each file (atomically, 0644) whose content differs; one line per file."""
    try:
        folder.mkdir(mode=0o755, parents=True, exist_ok=True)
    except OSError as exc:
        raise BackupError(f"cannot create {folder}: {exc.strerror}") from None
    lines = []
    for name, text in texts.items():
        path = folder / name
        try:
            same = path.read_text(encoding="utf-8") == text
        except (OSError, UnicodeDecodeError):
            same = False
        if same:
            lines.append(f"unchanged {path}")
            continue
        write_atomic(path, text.encode("utf-8"), mode=0o644)
        lines.append(f"{verb} {path}")
    return lines


def verify_units(folder: Path) -> list[str]:
    """`systemd-analyze verify` on the rendered units, together (a timer's service is only
    checked beside it); refuses what it calls an error, returns its warnings. Skipped (said
    so) where systemd-analyze is not installed."""
    tool = shutil.which("systemd-analyze")
    if not tool:
        return ["systemd-analyze is not installed: the units were not checked before installing"]
    paths = [str(folder / name) for name in unit_names()]
    result = subprocess.run([tool, "verify", "--man=no", *paths], capture_output=True, text=True, timeout=120)
    said = [line for line in result.stderr.splitlines() if line.strip()]
    if result.returncode != 0:
        raise BackupError("systemd-analyze verify refuses the rendered units, nothing was installed: "
                          + "; ".join(said[:10]))
    return [f"systemd-analyze verify: {line}" for line in said]


def systemd_running() -> bool:
    return SYSTEMD_RUNNING.is_dir()


def _systemctl(systemctl: str, *args: str) -> None:
    result = subprocess.run([systemctl, *args], capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        said = (result.stderr.strip() or result.stdout.strip() or f"exit status {result.returncode}").splitlines()
        raise BackupError(f"systemctl {' '.join(args)} failed: {said[0]}")


def install(folder: Path, unit_dir: Path = SYSTEM_UNIT_DIR, running: bool | None = None) -> list[str]:
    """Copy the rendered units into ``unit_dir``, then daemon-reload and enable --now the
    three timers. Where systemd is not running the units are written and that is said: the
    host (a container, a chroot being prepared) starts them once systemd runs."""
    lines = verify_units(folder)
    texts = {name: (folder / name).read_text(encoding="utf-8") for name in unit_names()}
    try:
        lines += write_units(texts, unit_dir, verb="installed")
    except BackupError as exc:
        hint = "" if os.geteuid() == 0 else " (installing units needs root: sudo ./run.sh systemd --install)"
        raise BackupError(f"{exc}{hint}") from None
    timers = timer_names()
    if not (systemd_running() if running is None else running):
        lines.append(f"systemd is not running on this host ({SYSTEMD_RUNNING} is missing): the units are in "
                     f"{unit_dir}, not enabled; once systemd runs: systemctl daemon-reload && "
                     f"systemctl enable --now {' '.join(timers)}")
        return lines
    systemctl = shutil.which("systemctl")
    if not systemctl:
        raise BackupError("systemd is running but systemctl is not on PATH: cannot enable the timers")
    _systemctl(systemctl, "daemon-reload")
    _systemctl(systemctl, "enable", "--now", *timers)
    lines.append(f"enabled and started {', '.join(timers)} (systemctl list-timers 'wordpress-*' shows the next runs)")
    return lines

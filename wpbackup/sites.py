"""sites.json: load it, validate every key before anything runs, and resolve each site's
database settings (explicit values first, the rest from the site's wp-config.php).

Every problem is reported as ``FILE: site 'NAME': KEY: what is wrong``, all at once.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BackupError, ConfigError
from .wpconfig import DbHost, find_wp_config, parse_db_host, parse_wp_config

SITE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")

#: Skipped in every site: caches, upgrade leftovers and other backup plugins' archives.
DEFAULT_EXCLUDES = (
    "wp-content/cache",
    "wp-content/et-cache",
    "wp-content/upgrade",
    "wp-content/upgrade-temp-backup",
    "wp-content/updraft",
    "wp-content/ai1wm-backups",
    "wp-content/backups-dup-lite",
    "wp-content/backups-dup-pro",
    "wp-content/backup-db",
    "wp-content/backupwordpress-*",
    "wp-content/wpvividbackups",
    "wp-content/wp-clone",
    "wp-content/uploads/backwpup-*",
    "wp-content/uploads/wp-clone",
    "wp-content/uploads/ithemes-security/backups",
    "wp-content/wflogs",
    "*.log.gz",
)

_SITE_KEYS = {"name": str, "path": str, "enabled": bool, "files": str, "exclude": list, "db": dict}
_DB_KEYS = {"name": str, "user": str, "password": str, "host": str, "port": int, "socket": str,
            "tables": str}
#: `db.tables`: "all" (the whole database) or "prefix" (only the tables this site's prefix
#: owns); without it, wpbackup.mysql.select_tables decides from what the database holds.
TABLE_SELECTIONS = ("all", "prefix")
_TYPE_NAMES = {str: "a string", bool: "true or false", list: "a list", dict: "an object", int: "an integer"}


@dataclass(frozen=True)
class DbSettings:
    """How to reach one site's database (password stays out of repr and logs)."""

    name: str
    user: str
    password: str = field(repr=False)
    host: DbHost
    table_prefix: str = "wp_"
    tables: str | None = None  # db.tables: "all", "prefix", or None (detected)


@dataclass(frozen=True)
class Site:
    """One WordPress site from sites.json."""

    name: str
    path: Path
    enabled: bool = True
    files: str = "wp-content"
    exclude: tuple[str, ...] = ()
    db: dict = field(default_factory=dict, repr=False)

    @property
    def excludes(self) -> tuple[str, ...]:
        return DEFAULT_EXCLUDES + self.exclude

    def wp_config(self) -> Path:
        """The wp-config.php WordPress would load, or a BackupError saying where we looked."""
        if not self.path.is_dir():
            raise BackupError(f"site {self.name}: path {self.path} does not exist or is not a folder")
        found = find_wp_config(self.path)
        if found is None:
            real = self.path.resolve()  # WordPress looks beside the real root (see find_wp_config)
            where = "" if real == self.path else f" ({real.parent}, as {self.path} is a link to {real})"
            raise BackupError(
                f"site {self.name}: no wp-config.php in {self.path} or its parent folder{where}"
            )
        return found

    def database(self) -> DbSettings:
        """Explicit `db` values first, every missing one read from wp-config.php."""
        explicit = self.db
        needed = {"name", "user", "password", "host"} - {k for k, v in explicit.items() if v is not None}
        parsed: dict[str, str] = {}
        config_path = None
        try:  # read even when db is complete: the table prefix only lives there
            config_path = self.wp_config()
            parsed = parse_wp_config(config_path)
        except BackupError:
            if needed:
                raise
        missing = [
            key for key, const in (("name", "DB_NAME"), ("user", "DB_USER"))
            if explicit.get(key) is None and not parsed.get(const)
        ]
        if missing:
            raise BackupError(
                f"site {self.name}: {', '.join('db.' + m for m in missing)} not set in sites.json "
                f"and not found in {config_path}"
            )
        if explicit.get("host") is not None or explicit.get("port") is not None or explicit.get("socket"):
            host = DbHost(explicit.get("host") or "localhost", explicit.get("port"), explicit.get("socket"))
            if explicit.get("host") and ":" in explicit["host"] and explicit.get("port") is None:
                host = parse_db_host(explicit["host"])
        else:
            host = parse_db_host(parsed.get("DB_HOST", "localhost"))
        return DbSettings(
            name=explicit.get("name") or parsed["DB_NAME"],
            user=explicit.get("user") or parsed["DB_USER"],
            password=explicit["password"] if explicit.get("password") is not None else parsed.get("DB_PASSWORD", ""),
            host=host,
            table_prefix=parsed.get("table_prefix", "wp_"),
            tables=explicit.get("tables"),
        )


def _check_keys(obj: dict, spec: dict, where: str, problems: list[str], nullable: bool = False,
                secret: bool = False) -> None:
    """Unknown keys and wrong types; with ``secret`` the wrong value itself is never echoed."""
    for key, value in obj.items():
        if key not in spec:
            problems.append(f"{where}: {key}: unknown key (allowed: {', '.join(spec)})")
            continue
        expected = spec[key]
        if value is None and nullable:
            continue
        shown = f"a {type(value).__name__}" if secret else json.dumps(value)
        if expected is int and (isinstance(value, bool) or not isinstance(value, int)):
            problems.append(f"{where}: {key}: expected {_TYPE_NAMES[int]}, got {shown}")
        elif expected is not int and not isinstance(value, expected):
            problems.append(f"{where}: {key}: expected {_TYPE_NAMES[expected]}, got {shown}")


def _check_tables(db: dict, where: str, problems: list[str]) -> None:
    """`db.tables` is "all", "prefix" or absent (null too, like the other db keys); its value
    is no secret, so a wrong one is shown."""
    value = db.get("tables")
    if value is not None and (not isinstance(value, str) or value not in TABLE_SELECTIONS):
        problems.append(f'{where}: db: tables: must be "all" or "prefix", got {json.dumps(value)}')


def parse_sites(data: object, source: str) -> list[Site]:
    """Validate the decoded sites.json; raise ConfigError naming file, site and key."""
    problems: list[str] = []
    if not isinstance(data, dict) or set(data) - {"sites"} or not isinstance(data.get("sites"), list):
        raise ConfigError([f'{source}: expected an object {{"sites": [...]}} with a list of sites'])
    sites: list[Site] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(data["sites"]):
        label = f"sites[{index}]"
        if not isinstance(entry, dict):
            problems.append(f"{source}: {label}: expected an object, got {json.dumps(entry)}")
            continue
        name = entry.get("name")
        if isinstance(name, str):
            label = f"site '{name}'"
        where = f"{source}: {label}"
        before = len(problems)
        _check_keys(entry, _SITE_KEYS, where, problems)
        if "name" not in entry:
            problems.append(f"{where}: name: required")
        elif isinstance(name, str) and not SITE_NAME_RE.match(name):
            problems.append(
                f"{where}: name: {name!r} must match ^[a-z0-9][a-z0-9._-]{{0,62}}$ "
                "(it becomes part of file names and S3 keys)"
            )
        elif isinstance(name, str) and name in seen:
            problems.append(f"{where}: name: duplicate of sites[{seen[name]}]")
        if isinstance(name, str):
            seen.setdefault(name, index)
        if "path" not in entry:
            problems.append(f"{where}: path: required (the WordPress root, holding wp-load.php)")
        elif isinstance(entry["path"], str) and not Path(entry["path"]).is_absolute():
            problems.append(f"{where}: path: must be an absolute path, got {entry['path']!r}")
        if isinstance(entry.get("files"), str) and entry["files"] not in ("wp-content", "all"):
            problems.append(f"{where}: files: must be \"wp-content\" or \"all\", got {entry['files']!r}")
        exclude = entry.get("exclude", [])
        if isinstance(exclude, list):
            for item in exclude:
                if not isinstance(item, str) or not item.strip("/") or item.startswith("/") or ".." in item.split("/"):
                    problems.append(
                        f"{where}: exclude: {json.dumps(item)} must be a pattern relative to path"
                    )
        db = entry.get("db", {})
        if isinstance(db, dict):
            _check_keys({k: v for k, v in db.items() if k != "tables"}, _DB_KEYS, f"{where}: db", problems,
                        nullable=True, secret=True)
            _check_tables(db, where, problems)
        if len(problems) == before:
            sites.append(Site(
                name=name,
                path=Path(entry["path"]),
                enabled=entry.get("enabled", True),
                files=entry.get("files", "wp-content"),
                exclude=tuple(p.strip("/") for p in exclude),
                db=dict(db),
            ))
    if problems:
        raise ConfigError(problems)
    return sites


def load_sites(path: Path) -> list[Site]:
    """Read and validate sites.json; a missing or unreadable file is a ConfigError too."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([
            f"{path}: not found (copy sites.json.sample to {path.name} and describe your sites, "
            "or set SITES_FILE)"
        ]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError([f"{path}: line {exc.lineno} column {exc.colno}: invalid JSON: {exc.msg}"]) from None
    return parse_sites(data, str(path))

"""sites.json: load it, validate every key before anything runs, and resolve each site's
database settings (explicit values first, the rest from the site's wp-config.php).

Every problem is reported as ``FILE: site 'NAME': KEY: what is wrong``, all at once, and a
file that is no sites.json at all (not UTF-8, not JSON, nested too deeply) is one such problem,
never a traceback. Every name, path and value is checked whole (a trailing newline is refused).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from wpbackup.atomic import write_atomic
from wpbackup.config.settings import is_text, path_problem, shown
from wpbackup.config.wpconfig import DbHost, WpConfig, find_wp_config, parse_db_host, parse_wp_config
from wpbackup.errors import BackupError, ConfigError, disk_error

SITE_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")  # always matched whole (fullmatch)
TABLE_PREFIX_RE = re.compile(r"[A-Za-z0-9_]{1,64}")  # what WordPress itself accepts
MAX_SITES_FILE = 16 << 20  # bytes
SOCKET_MAX = 107  # bytes: a unix socket path longer than sun_path cannot be connected to

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
            "tables": str, "table_prefix": str}
#: sites.json `db` key -> what wp-config.php sets it with (when the key is left out)
FROM_WP_CONFIG = {"name": "DB_NAME", "user": "DB_USER", "password": "DB_PASSWORD", "host": "DB_HOST",
                  "table_prefix": "table_prefix"}
_DB_LENGTHS = {"name": 64, "user": 80, "host": 255, "password": 4096}
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
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
        """Explicit `db` values first, every missing one read from wp-config.php; a value
        wp-config.php does not give as one plain string is asked for, never guessed."""
        explicit = {key: value for key, value in self.db.items() if value is not None}
        host_given = bool({"host", "port", "socket"} & explicit.keys())
        wanted = [key for key in FROM_WP_CONFIG if key not in explicit and not (key == "host" and host_given)]
        found: dict[str, str] = {}
        try:  # read even when db is complete: the table prefix usually lives there only
            config_path = self.wp_config()
            config = parse_wp_config(config_path)
        except BackupError:  # no readable wp-config.php: fine only when db gives all but the prefix
            if set(wanted) - {"table_prefix"}:
                raise
        else:  # an unclear value is an error even when only the prefix is read from there
            found = self._from_wp_config(config_path, config, wanted)
        if host_given:
            host = DbHost(explicit.get("host") or "localhost", explicit.get("port"), explicit.get("socket"))
            if explicit.get("host") and ":" in explicit["host"] and explicit.get("port") is None:
                host = parse_db_host(explicit["host"])
        else:
            host = parse_db_host(found.get("host", "localhost"))
        return DbSettings(
            name=explicit["name"] if "name" in explicit else found["name"],
            user=explicit["user"] if "user" in explicit else found["user"],
            password=explicit["password"] if "password" in explicit else found.get("password", ""),
            host=host,
            table_prefix=explicit["table_prefix"] if "table_prefix" in explicit else found.get("table_prefix", "wp_"),
            tables=explicit.get("tables"),
        )

    def _from_wp_config(self, path: Path, config: WpConfig, wanted: list[str]) -> dict[str, str]:
        """The ``wanted`` db keys from wp-config.php, or a BackupError naming the file, the
        constant and the sites.json key that must give a value this reader cannot be sure of."""
        found: dict[str, str] = {}
        unclear: list[tuple[str, str]] = []
        unusable: list[str] = []
        for key in wanted:
            const = FROM_WP_CONFIG[key]
            label = "$table_prefix" if key == "table_prefix" else const
            value, why = config.lookup(const)
            if why:
                unclear.append((key, f"{label} {why}"))
            elif value is not None and (value != "" or key not in ("name", "user")):  # '' name: not set
                problem = None if value == "" and key in ("password", "host") else db_value_problem(key, value)
                if problem:
                    unusable.append(f"{label} {problem}")
                else:
                    found[key] = value
        if unclear:
            keys = ", ".join(f'"{key}"' for key, _ in unclear)
            raise BackupError(
                f"site {self.name}: {path}: {'; '.join(why for _, why in unclear)}: this tool does not "
                f"guess what PHP would compute; give {keys} in the site's \"db\" settings in sites.json")
        if unusable:
            raise BackupError(f"site {self.name}: {path}: {'; '.join(unusable)}")
        missing = [key for key in ("name", "user") if key in wanted and key not in found]
        if missing:
            hint = (f" (it includes other files, line {config.includes[0]}: if the value is set there, "
                    "give it in sites.json)") if config.includes else ""
            raise BackupError(
                f"site {self.name}: {', '.join('db.' + m for m in missing)} not set in sites.json "
                f"and not found in {path}{hint}"
            )
        return found


def db_value_problem(key: str, value: str) -> str | None:
    """Why a `db` value (from sites.json or wp-config.php) cannot be used as it is, or None.
    A password is never quoted; it only may not hold what no option file can carry."""
    if key == "password":
        if not is_text(value):
            return "is not valid UTF-8 text"
        if re.search(r"[\x00\r\n]", value):
            return "holds a NUL byte or a line break, which no database client option can carry"
        return f"is longer than {_DB_LENGTHS[key]} characters" if len(value) > _DB_LENGTHS[key] else None
    if key == "table_prefix":
        if TABLE_PREFIX_RE.fullmatch(value):
            return None
        return f"{shown(value)} is not valid: letters, digits and '_' only, at most 64 (as WordPress requires)"
    if not is_text(value):
        return "is not valid UTF-8 text"
    if value == "":
        return "is empty (leave the key out, or null, to read it from wp-config.php)"
    if _CONTROL_RE.search(value):
        return f"{shown(value)} holds a control character such as a line break"
    if key in ("name", "user", "host") and value.startswith("-"):
        return f"{shown(value)} starts with '-', which a database client would read as an option"
    if key == "socket":
        why = path_problem(value) or ("" if value.startswith("/") else "must be an absolute path")
        if not why and len(os.fsencode(value)) > SOCKET_MAX:
            why = f"is longer than {SOCKET_MAX} bytes, more than a unix socket path can be"
        return f"{shown(value)} {why}" if why else None
    if key in _DB_LENGTHS and len(value) > _DB_LENGTHS[key]:
        return f"is {len(value)} characters long; at most {_DB_LENGTHS[key]}"
    return None


class _JsonObject(dict):
    """A decoded JSON object that remembers the keys it held more than once (json keeps the
    last one in silence: two "db" objects, or two "sites" lists, would lose one)."""

    duplicates: tuple[str, ...] = ()


def _json_object(pairs: list[tuple[str, object]]) -> _JsonObject:
    obj = _JsonObject(pairs)
    if len(obj) < len(pairs):
        seen: set[str] = set()
        obj.duplicates = tuple(key for key, _ in pairs if key in seen or seen.add(key))
    return obj


def _json_shown(value: object) -> str:
    """A JSON value as a message shows it: escaped and cut short; a big or deeply nested list
    or object by its size only (writing it out could take long, or recurse too deep)."""
    if isinstance(value, str) and len(value) > 60:
        return json.dumps(value[:60]) + f"... ({len(value)} characters)"
    try:
        if isinstance(value, (list, dict)) and len(value) > 10:
            raise ValueError("too big to show")
        text = json.dumps(value)
    except (RecursionError, ValueError):
        return f"a list of {len(value)}" if isinstance(value, list) else f"an object with {len(value)} keys"
    return text if len(text) <= 60 else text[:60] + "..."


def _key_shown(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_.-]{1,40}", key) else shown(key)


def _check_keys(obj: dict, spec: dict, where: str, problems: list[str], nullable: bool = False,
                secret: bool = False) -> None:
    """Unknown or repeated keys and wrong types; with ``secret`` the wrong value itself is
    never echoed."""
    for key in getattr(obj, "duplicates", ()):
        problems.append(f"{where}: {_key_shown(key)}: given more than once")
    for key, value in obj.items():
        if key not in spec:
            problems.append(f"{where}: {_key_shown(key)}: unknown key (allowed: {', '.join(spec)})")
            continue
        expected = spec[key]
        if value is None and nullable:
            continue
        seen = f"a {type(value).__name__}" if secret else _json_shown(value)
        if expected is int and (isinstance(value, bool) or not isinstance(value, int)):
            problems.append(f"{where}: {key}: expected {_TYPE_NAMES[int]}, got {seen}")
        elif expected is not int and not isinstance(value, expected):
            problems.append(f"{where}: {key}: expected {_TYPE_NAMES[expected]}, got {seen}")


def _check_tables(db: dict, where: str, problems: list[str]) -> None:
    """`db.tables` is "all", "prefix" or absent (null too, like the other db keys); its value
    is no secret, so a wrong one is shown."""
    value = db.get("tables")
    if value is not None and (not isinstance(value, str) or value not in TABLE_SELECTIONS):
        problems.append(f'{where}: db: tables: must be "all" or "prefix", got {_json_shown(value)}')


def _check_db_values(db: dict, where: str, problems: list[str]) -> None:
    """The values of the db keys whose type is right: lengths, line breaks, the port range."""
    for key, value in db.items():
        if key == "port" and isinstance(value, int) and not isinstance(value, bool) and not 1 <= value <= 65535:
            problems.append(f"{where}: db: port: must be between 1 and 65535, got {_json_shown(value)}")
        elif key in FROM_WP_CONFIG or key == "socket":
            problem = db_value_problem(key, value) if isinstance(value, str) else None
            if problem:
                problems.append(f"{where}: db: {key}: {problem}")


def _site_path_problem(value: str) -> str | None:
    """Why a site's path cannot be a WordPress root's path, or None."""
    why = path_problem(value)
    if why:
        return why
    if not is_text(value):
        return "is not valid UTF-8 text"
    if _CONTROL_RE.search(value):
        return "holds a control character such as a line break"
    if not value.startswith("/"):
        return "must be an absolute path"
    if ".." in value.split("/"):
        return "must not go through '..' (give the folder it leads to)"
    return None


def _exclude_problem(item: object) -> bool:
    """True when an exclude entry is no pattern relative to the site's path."""
    if not isinstance(item, str) or not item.strip("/") or item.startswith("/"):
        return True
    return ".." in item.split("/") or bool(_CONTROL_RE.search(item)) or len(item) > 4096 or not is_text(item)


def _check_entry(entry: dict, where: str, problems: list[str]) -> None:
    """Everything of one site but its name: keys, path, files, exclude, db."""
    _check_keys(entry, _SITE_KEYS, where, problems)
    path = entry.get("path")
    if "path" not in entry:
        problems.append(f"{where}: path: required (the WordPress root, holding wp-load.php)")
    elif isinstance(path, str) and (why := _site_path_problem(path)):
        problems.append(f"{where}: path: {why}, got {shown(path)}")
    if isinstance(entry.get("files"), str) and entry["files"] not in ("wp-content", "all"):
        problems.append(f"{where}: files: must be \"wp-content\" or \"all\", got {_json_shown(entry['files'])}")
    exclude = entry.get("exclude", [])
    if isinstance(exclude, list):
        for item in exclude:
            if _exclude_problem(item):
                problems.append(f"{where}: exclude: {_json_shown(item)} must be a pattern relative to path")
    db = entry.get("db", {})
    if isinstance(db, dict):
        _check_keys({k: v for k, v in db.items() if k != "tables"}, _DB_KEYS, f"{where}: db", problems,
                    nullable=True, secret=True)
        for key in getattr(db, "duplicates", ()):  # the filtered copy above no longer knows them
            problems.append(f"{where}: db: {_key_shown(key)}: given more than once")
        _check_tables(db, where, problems)
        _check_db_values(db, where, problems)


def _check_name(name: object, index: int, seen: dict[str, int], where: str, problems: list[str]) -> None:
    if isinstance(name, str) and not SITE_NAME_RE.fullmatch(name):
        problems.append(
            f"{where}: name: {shown(name)} must match ^[a-z0-9][a-z0-9._-]{{0,62}}$ "
            "(it becomes part of file names and S3 keys)"
        )
    elif isinstance(name, str) and name in seen:
        problems.append(f"{where}: name: duplicate of sites[{seen[name]}]")
    if isinstance(name, str):
        seen.setdefault(name, index)


def parse_sites(data: object, source: str) -> list[Site]:
    """Validate the decoded sites.json; raise ConfigError naming file, site and key."""
    problems: list[str] = []
    if not isinstance(data, dict) or set(data) - {"sites"} or not isinstance(data.get("sites"), list):
        raise ConfigError([f'{source}: expected an object {{"sites": [...]}} with a list of sites'])
    if getattr(data, "duplicates", ()):
        problems.append(f'{source}: "sites" is given more than once')
    sites: list[Site] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(data["sites"]):
        if not isinstance(entry, dict):
            problems.append(f"{source}: sites[{index}]: expected an object, got {_json_shown(entry)}")
            continue
        name = entry.get("name")
        where = f"{source}: " + (f"site {shown(name)}" if isinstance(name, str) else f"sites[{index}]")
        before = len(problems)
        if "name" not in entry:
            problems.append(f"{where}: name: required")
        _check_name(name, index, seen, where, problems)
        _check_entry(entry, where, problems)
        if len(problems) == before:
            sites.append(Site(
                name=name,
                path=Path(entry["path"]),
                enabled=entry.get("enabled", True),
                files=entry.get("files", "wp-content"),
                exclude=tuple(p.strip("/") for p in entry.get("exclude", [])),
                db=dict(entry.get("db", {})),
            ))
    if problems:
        raise ConfigError(problems)
    return sites


def _read_sites_file(path: Path) -> str:
    """The text of sites.json, or a ConfigError saying why it cannot be read as text."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_SITES_FILE + 1)
    except FileNotFoundError:
        raise ConfigError([
            f"{path}: not found (copy sites.json.sample to {path.name} and describe your sites, "
            "or set SITES_FILE)"
        ]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    if len(data) > MAX_SITES_FILE:
        raise ConfigError([f"{path}: larger than {MAX_SITES_FILE >> 20} MiB: not a sites.json"])
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start}): "
                           "save it as UTF-8"]) from None


def read_sites_document(path: Path) -> object:
    """sites.json decoded but not yet validated (what a tool that adds a site edits, keeping
    every key the user wrote); a missing, unreadable or undecodable file is a ConfigError."""
    text = _read_sites_file(path)
    try:
        return json.loads(text, object_pairs_hook=_json_object)
    except json.JSONDecodeError as exc:
        raise ConfigError([f"{path}: line {exc.lineno} column {exc.colno}: invalid JSON: {exc.msg}"]) from None
    except RecursionError:
        raise ConfigError([f"{path}: nested too deeply to be a sites.json"]) from None
    except ValueError:  # an integer of more digits than Python converts
        raise ConfigError([f"{path}: holds a number too long to read"]) from None


def load_sites(path: Path) -> list[Site]:
    """Read and validate sites.json; a missing, unreadable or undecodable file is a
    ConfigError too."""
    return parse_sites(read_sites_document(path), str(path))


def save_sites(path: Path, document: dict) -> list[Site]:
    """Write a sites.json document that every run accepts: validated first (a ConfigError,
    nothing written), then atomically with mode 0600 (it may hold database passwords), the
    previous file kept as ``sites.json.bak`` (0600 too). Returns the sites it describes."""
    sites = parse_sites(document, str(path))
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    try:
        previous = path.read_bytes()
    except FileNotFoundError:
        previous = None
    except OSError as exc:
        raise disk_error(path, exc) from None
    if previous is not None:
        write_atomic(path.with_name(path.name + ".bak"), previous)
    write_atomic(path, text.encode("utf-8"))
    return sites

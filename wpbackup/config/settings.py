"""Settings: `.env` (found at $WPBACKUP_ENV, else next to dodo.py) overlaid by the process
environment, turned into one typed, validated ``Settings`` value.

    .env file ---+
                 +-- KEYS (name, kind, default, bounds) --> Settings  (or every problem at once)
    environment -+          +-- keys that look like ours but are not one --> warnings

``KEYS`` is the one list of what this tool reads: only those keys are taken from the process
environment, and the tests strip exactly those from the environment they inherit. Every path
defaults to a place next to the `.env` file, so a second instance (or a test) needs nothing
but ``WPBACKUP_ENV=/some/dir/.env``.
"""

from __future__ import annotations

import difflib
import functools
import io
import math
import os
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from email.utils import parseaddr
from pathlib import Path
from urllib.parse import urlsplit

from dotenv import dotenv_values
from dotenv.parser import parse_stream

from wpbackup.errors import ConfigError

SERVER_ID_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")  # always matched whole (fullmatch)
PROJECT_DIR = Path(__file__).resolve().parents[2]  # the install: dodo.py, tasks/, templates/, wpbackup/


@dataclass(frozen=True)
class Key:
    """One `.env` key: how its text becomes a value (``kind``), its default and bounds.

    ``auto`` is one more allowed value outside the bounds (S3_PART_SIZE_MB=0: pick a size);
    ``attr`` names the Settings field it fills (keys of features still to come have none
    and are read through ``Settings.value``); a ``secret`` value is never shown."""

    name: str
    kind: str
    default: object = None
    low: float | None = None
    high: float | None = None
    auto: int | None = None
    choices: tuple[str, ...] = ()
    attr: str | None = None
    secret: bool = False


KEYS: tuple[Key, ...] = (
    Key("SERVER_ID", "server_id"),
    Key("SITES_FILE", "path", "sites.json"),
    Key("DB_PATH", "path", "backups.db"),
    Key("BACKUP_DIR", "path", "backups"),
    Key("ZSTD_LEVEL", "int", 3, 1, 22, attr="zstd_level"),
    Key("ZSTD_THREADS", "int", 0, 0, 256, attr="zstd_threads"),
    Key("LOCAL_KEEP", "int", 2, 1, 10_000, attr="local_keep"),
    Key("STALE_RUN_HOURS", "hours", 20.0, 0, 8760, attr="stale_run_hours"),
    Key("BACKUP_MAX_AGE_HOURS", "hours", 26.0, 0, 8760, attr="backup_max_age_hours"),
    Key("S3_ENDPOINT_URL", "url", attr="s3_endpoint_url"),
    Key("S3_BUCKET", "bucket", attr="s3_bucket"),
    Key("S3_REGION", "region", "us-east-1", attr="s3_region"),
    Key("S3_ACCESS_KEY_ID", "token", attr="s3_access_key_id"),
    Key("S3_SECRET_ACCESS_KEY", "token", attr="s3_secret_access_key", secret=True),
    Key("S3_PREFIX", "prefix", attr="s3_prefix"),
    Key("S3_STORAGE_CLASS", "storage_class", attr="s3_storage_class"),
    Key("S3_MAX_ATTEMPTS", "int", 5, 1, 20, attr="s3_max_attempts"),
    Key("S3_PART_SIZE_MB", "int", 0, 5, 5120, auto=0, attr="s3_part_size_mb"),
    Key("S3_CHECKSUM", "choice", "none", choices=("none", "crc32"), attr="s3_checksum"),
    Key("D1_ACCOUNT_ID", "token", attr="d1_account_id"),
    Key("D1_DATABASE_ID", "token", attr="d1_database_id"),
    Key("D1_API_TOKEN", "token", attr="d1_api_token", secret=True),
    Key("D1_API_BASE", "url", "https://api.cloudflare.com/client/v4", attr="d1_api_base"),
    Key("SMTP_HOST", "host"),
    Key("SMTP_PORT", "int", 587, 1, 65535),
    Key("SMTP_USERNAME", "text"),
    Key("SMTP_PASSWORD", "text", secret=True),
    Key("SMTP_SECURITY", "choice", "starttls", choices=("starttls", "ssl", "none")),
    Key("REPORT_FROM", "address"),
    Key("REPORT_TO", "addresses"),
    Key("KEEP_DAILY", "int", 7, 0, 10_000, attr="keep_daily"),
    Key("KEEP_WEEKLY", "int", 4, 0, 10_000, attr="keep_weekly"),
    Key("KEEP_MONTHLY", "int", 6, 0, 10_000, attr="keep_monthly"),
    Key("BACKUP_ON_CALENDAR", "calendar", "*-*-* 03:00:00"),
    Key("REPORT_ON_CALENDAR", "calendar", "*-*-* 08:00:00"),
    Key("VERIFY_ON_CALENDAR", "calendar", "Sun *-*-* 05:00:00"),
    Key("DEPLOY_HOSTS", "ssh_hosts"),
    Key("DEPLOY_PATH", "remote_path", "/opt/wordpress-backup"),
    Key("DEPLOY_SSH_KEY", "text"),
    Key("DEPLOY_KNOWN_HOSTS", "text"),
    Key("HEALTHCHECK_URL", "url", secret=True),  # its path is the check's key
    Key("NOTIFY_URLS", "urls", secret=True),
    Key("NOTIFY_ON", "choice", "failure", choices=("failure", "all")),
)
BY_NAME = {key.name: key for key in KEYS}
#: Read from the process environment only: where the `.env` file is.
ENV_FILE_VARIABLE = "WPBACKUP_ENV"
#: Every variable this tool reads from the environment (the tests strip these).
ENVIRONMENT_KEYS = frozenset(BY_NAME) | {ENV_FILE_VARIABLE}
#: Any of these set without S3_BUCKET means S3 was meant: an error, not local-only mode.
S3_SETTINGS = ("S3_ENDPOINT_URL", "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY", "S3_REGION", "S3_PREFIX",
               "S3_STORAGE_CLASS")
S3_KEY_PAIR = ("S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY")
D1_SETTINGS = ("D1_ACCOUNT_ID", "D1_DATABASE_ID", "D1_API_TOKEN")
#: What our keys start with: an unknown key with one of these is probably meant for us.
PREFIXES = tuple(sorted({name.split("_")[0] + "_" for name in BY_NAME}))
MAX_VALUE = 4096  # characters; nothing this tool reads is longer
PATH_MAX, NAME_MAX = 4095, 255  # bytes, Linux's limits for a whole path and one component


def env_file_path(environ: dict[str, str] | None = None) -> Path:
    """Where the install's `.env` lives: $WPBACKUP_ENV, else beside dodo.py."""
    environ = os.environ if environ is None else environ
    explicit = environ.get(ENV_FILE_VARIABLE)
    if explicit:
        return Path(explicit).expanduser().absolute()
    return PROJECT_DIR / ".env"


def default_server_id(hostname: str | None = None) -> str:
    """The host name made into a valid SERVER_ID (lowercase, [a-z0-9-], at most 63)."""
    name = (hostname or socket.gethostname()).split(".")[0].lower()
    name = re.sub(r"[^a-z0-9-]+", "-", name).strip("-")[:63].strip("-")
    return name or "server"


@dataclass(frozen=True)
class Settings:
    """Everything a run needs to know about this install (never printed whole: secrets)."""

    env_path: Path
    server_id: str
    sites_file: Path
    db_path: Path
    backup_dir: Path
    zstd_level: int = 3
    zstd_threads: int = 0
    local_keep: int = 2
    stale_run_hours: float = 20
    backup_max_age_hours: float = 26
    s3_endpoint_url: str | None = None
    s3_bucket: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = field(default=None, repr=False)
    s3_prefix: str | None = None
    s3_storage_class: str | None = None
    keep_daily: int = 7
    keep_weekly: int = 4
    keep_monthly: int = 6
    s3_max_attempts: int = 5
    s3_part_size_mb: int = 0
    s3_checksum: str = "none"
    d1_account_id: str | None = None
    d1_database_id: str | None = None
    d1_api_token: str | None = field(default=None, repr=False)
    d1_api_base: str = "https://api.cloudflare.com/client/v4"
    raw: dict[str, str] = field(default_factory=dict, repr=False)
    values: dict[str, object] = field(default_factory=dict, repr=False)  # every key of KEYS, typed
    warnings: tuple[str, ...] = ()  # keys that look like ours but are not one (see unknown_keys)

    def value(self, name: str) -> object:
        """The typed value of any key of KEYS (its default when unset), for the features
        that have no field of their own yet (SMTP_*, REPORT_*, DEPLOY_*, NOTIFY_*, ...)."""
        return self.values[name] if name in self.values else BY_NAME[name].default

    @property
    def state_dir(self) -> Path:
        """The folder holding `.env`: doit's state file and the lock live here."""
        return self.env_path.parent

    @property
    def work_dir(self) -> Path:
        """Per-site run state and intermediates; inside BACKUP_DIR so renames stay atomic."""
        return self.backup_dir / ".work"

    @property
    def s3_enabled(self) -> bool:
        return bool(self.s3_bucket)

    @property
    def d1_enabled(self) -> bool:
        return bool(self.d1_account_id and self.d1_database_id and self.d1_api_token)



class SettingsError(ConfigError):
    """Bad settings, with the unknown-key warnings that may explain them (printed too)."""

    def __init__(self, problems: list[str], warnings: list[str] | None = None):
        super().__init__(problems)
        self.warnings = list(warnings or [])


def shown(value: str, limit: int = 60) -> str:
    """A value as it may appear in a message: quoted, escaped (a stray newline is visible)
    and cut short (a 100,000-character value must not flood the terminal)."""
    if len(value) > limit:
        return repr(value[:limit]) + f"... ({len(value)} characters)"
    return repr(value)


_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_INT_RE = re.compile(r"-?[0-9]{1,30}")
_HOURS_RE = re.compile(r"-?(?:[0-9]{1,30}(?:\.[0-9]{0,30})?|\.[0-9]{1,30})")
_BUCKET_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,253}[A-Za-z0-9]")
_REGION_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_STORAGE_CLASS_RE = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
_TOKEN_RE = re.compile(r"[!-~]+")  # printable ASCII, no space: it travels in HTTP headers
_HOST_RE = re.compile(r"[A-Za-z0-9_\[:][A-Za-z0-9_.:\[\]-]{0,252}")
_ADDRESS_RE = re.compile(r"[^@\s,<>\"]+@[^@\s,<>\"]+")
_SSH_HOST_RE = re.compile(
    r"(?P<user>[A-Za-z0-9_][A-Za-z0-9._-]{0,31})@"
    r"(?P<host>[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]{2,45}\])"
    r"(?::(?P<port>[0-9]{1,5}))?"
)


def _within(key: Key, number: float, text: str) -> float:
    """The bounds check shared by whole numbers and hours."""
    low_ok = number > key.low if key.kind == "hours" else number >= key.low
    if key.auto is not None and number == key.auto:
        return number
    if not (low_ok and number <= key.high):
        auto = f" (or {key.auto}: automatic)" if key.auto is not None else ""
        low = f"more than {key.low:g}" if key.kind == "hours" else f"{key.low:g}"
        raise ValueError(f"must be between {low} and {key.high:g}{auto}, got {shown(text)}")
    return number


def _whole(key: Key, text: str) -> int:
    if not _INT_RE.fullmatch(text):
        raise ValueError(f"expected a number (a whole one, {key.low:g} to {key.high:g}), got {shown(text)}")
    return int(_within(key, int(text), text))


def _hours(key: Key, text: str) -> float:
    if not _HOURS_RE.fullmatch(text) or not math.isfinite(float(text)):
        raise ValueError(f"expected a number of hours, got {shown(text)}")
    return float(_within(key, float(text), text))


def _choice(key: Key, text: str) -> str:
    if text.lower() not in key.choices:
        raise ValueError(f"expected {' or '.join(key.choices)}, got {shown(text)}")
    return text.lower()


def _pattern(regex: re.Pattern, what: str):
    """A parser accepting only values the pattern matches whole."""
    def parse(key: Key, text: str) -> str:
        if not regex.fullmatch(text):
            raise ValueError(("is" if key.secret else f"{shown(text)} is") + f" not valid ({what})")
        return text
    return parse


def _url(key: Key, text: str) -> str:
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a port that is no number or out of range
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or " " in text:
        got = "a value that is not one" if key.secret else shown(text)
        raise ValueError(f"expected an http:// or https:// URL with a host, got {got}")
    return text


def _urls(key: Key, text: str) -> tuple[str, ...]:
    """Apprise-style URLs, comma-separated: each at least `scheme://something`."""
    items = tuple(item.strip() for item in text.split(","))
    for item in items:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*://\S+", item):
            got = "an item that is not one" if key.secret else shown(item)  # NOTIFY_URLS hold tokens
            raise ValueError(f"expected comma-separated URLs (scheme://...), got {got}")
    return items


def _address(key: Key, text: str) -> str:
    if not _ADDRESS_RE.fullmatch(parseaddr(text)[1]) or text.count("@") != 1:
        raise ValueError(f"expected one e-mail address, got {shown(text)}")
    return text


def _addresses(key: Key, text: str) -> tuple[str, ...]:
    items = tuple(item.strip() for item in text.split(","))
    for item in items:
        _address(key, item)
    return items


def _ssh_hosts(key: Key, text: str) -> tuple[str, ...]:
    """DEPLOY_HOSTS: comma-separated user@host[:port]; nothing that ssh could read as an option."""
    items = tuple(item.strip() for item in text.split(","))
    for item in items:
        match = _SSH_HOST_RE.fullmatch(item)
        if not match or (match["port"] and not 1 <= int(match["port"]) <= 65535):
            raise ValueError(f"expected comma-separated user@host or user@host:port, got {shown(item)}")
    return items


def _prefix(key: Key, text: str) -> str | None:
    """S3_PREFIX without its outer slashes; no empty, '.' or '..' segment (a key S3 would
    store under another name than the one we list it by)."""
    prefix = text.strip("/")
    if len(prefix) > 512 or any(part in ("", ".", "..") for part in prefix.split("/")) or "\\" in prefix:
        raise ValueError(f"must be a key prefix like 'backups' or 'team/backups' (no '.', '..', "
                         f"'//' or backslash, at most 512 characters), got {shown(text)}")
    return prefix or None


def _remote_path(key: Key, text: str) -> str:
    if not text.startswith("/") or ".." in text.split("/"):
        raise ValueError(f"expected an absolute path without '..', got {shown(text)}")
    return text


CALENDAR_EXAMPLES = "e.g. '*-*-* 03:00:00', 'daily' or 'Sun *-*-* 05:00:00' (man systemd.time)"
_CALENDAR_CHARS_RE = re.compile(r"[A-Za-z0-9*:/.,~ _+-]+")
_WEEKDAYS = frozenset({"mon", "tue", "wed", "thu", "fri", "sat", "sun", "monday", "tuesday", "wednesday",
                       "thursday", "friday", "saturday", "sunday"})
_CALENDAR_SHORTHANDS = frozenset({"minutely", "hourly", "daily", "weekly", "monthly", "yearly", "annually",
                                  "quarterly", "semiannually"})


def _calendar(key: Key, text: str) -> str:
    """A timer's OnCalendar= value (`doit systemd`), refused now with the reason rather than
    by systemd when the timer is installed, or by a timer that never fires. The defaults are
    known good and cost no subprocess, so loading the settings stays fast."""
    if text != key.default:
        problem = calendar_problem(text)
        if problem:
            raise ValueError(f"{shown(text)} {problem}; {CALENDAR_EXAMPLES}")
    return text


@functools.lru_cache(maxsize=64)
def calendar_problem(text: str) -> str | None:
    """Why systemd would not take ``text`` as OnCalendar= (None: it does). `systemd-analyze
    calendar` decides where it is installed; elsewhere a light check of the words."""
    tool = shutil.which("systemd-analyze")
    if tool:
        try:
            result = subprocess.run([tool, "calendar", "--", text], capture_output=True, text=True, timeout=15)
        except (OSError, subprocess.TimeoutExpired):
            result = None
        if result is not None and result.returncode != 0:
            said = (result.stderr.strip().splitlines() or ["refused"])[0].rsplit(": ", 1)[-1]
            return f"is not a calendar expression systemd accepts (systemd-analyze calendar: {said})"
        if result is not None:
            never = "Next elapse: never" in result.stdout
            return "never elapses, so the timer would never fire (a time in the past?)" if never else None
    problem = _calendar_words(text)
    return f"is not a calendar expression systemd accepts ({problem}; checked without systemd-analyze)" \
        if problem else None


def _calendar_words(text: str) -> str | None:
    """Without systemd-analyze: only the characters and words a calendar expression can
    hold (weekdays, shorthands such as daily, a trailing time zone). Light on purpose: the
    host's own systemd-analyze has the last word."""
    if not _CALENDAR_CHARS_RE.fullmatch(text):
        return "it holds characters no calendar expression has"
    words = text.split()
    if len(words) > 1 and _is_timezone(words[-1]):
        words = words[:-1]
    if len(words) == 1 and words[0].lower() in _CALENDAR_SHORTHANDS:
        return None
    for word in re.findall(r"[A-Za-z]+", " ".join(words)):
        if word.lower() in _CALENDAR_SHORTHANDS:
            return f"a shorthand such as {word} stands alone"
        if word.lower() not in _WEEKDAYS:
            return f"{shown(word, 20)} is neither a weekday nor a shorthand such as daily"
    if len(words) > 3 or not words:
        return "expected [weekday] [date] [time], such as 'Mon *-*-* 03:00:00'"
    return None


def _is_timezone(word: str) -> bool:
    import zoneinfo

    return word.upper() in ("UTC", "GMT") or word in zoneinfo.available_timezones()


def is_text(value: str) -> bool:
    """False for a string holding lone surrogates (bytes that were not UTF-8): such a value
    cannot be written to a log, the catalog or an option file."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def path_problem(path: str) -> str | None:
    """Why a path cannot be a file name on Linux (None when it can): NUL, not encodable,
    longer than PATH_MAX or a component longer than NAME_MAX."""
    if "\x00" in path:
        return "holds a NUL byte"
    try:
        raw = os.fsencode(path)
    except UnicodeError:
        return "is not a valid file name (an unpaired surrogate)"
    if len(raw) > PATH_MAX:
        return f"is {len(raw)} bytes long; a path has at most {PATH_MAX}"
    if any(len(part) > NAME_MAX for part in raw.split(b"/")):
        return f"has a component longer than {NAME_MAX} bytes"
    return None


def _path(key: Key, text: str) -> Path:
    try:
        return Path(text).expanduser()
    except RuntimeError:  # ~user that does not exist, or no home directory at all
        raise ValueError(f"cannot expand {shown(text)}: no such user or home directory") from None


PARSERS = {
    "int": _whole, "hours": _hours, "choice": _choice, "url": _url, "urls": _urls, "path": _path,
    "text": lambda key, text: text, "prefix": _prefix, "remote_path": _remote_path,
    "address": _address, "addresses": _addresses, "ssh_hosts": _ssh_hosts, "calendar": _calendar,
    "server_id": _pattern(SERVER_ID_RE, "lowercase letters, digits and '-', starting with a letter "
                          "or digit, at most 63 (^[a-z0-9][a-z0-9-]{0,62}$)"),
    "bucket": _pattern(_BUCKET_RE, "a bucket name: 3 to 255 letters, digits, '.', '-' or '_'"),
    "region": _pattern(_REGION_RE, "a region name: letters, digits and '-', at most 63"),
    "storage_class": _pattern(_STORAGE_CLASS_RE, "a storage class like STANDARD or STANDARD_IA"),
    "token": _pattern(_TOKEN_RE, "printable ASCII without spaces"),
    "host": _pattern(_HOST_RE, "a host name or address"),
}


def parse_value(key: Key, text: str) -> object:
    """One stripped, non-empty value turned into its typed form, or ValueError saying why
    (never quoting a secret). Rules every key shares come first."""
    if len(text) > MAX_VALUE:
        raise ValueError(f"is {len(text)} characters long; at most {MAX_VALUE}")
    if _CONTROL_RE.search(text):
        what = "" if key.secret else f" ({shown(text)})"
        raise ValueError(f"holds a control character such as a line break or tab{what}")
    if not is_text(text):
        raise ValueError("is not valid UTF-8 text")
    return PARSERS[key.kind](key, text)


def read_env_file(env_path: Path, explicit: bool, problems: list[str]) -> dict[str, str]:
    """The `.env` file's KEY=value pairs. Missing is fine unless $WPBACKUP_ENV named it;
    unreadable, not UTF-8, or a line that is no KEY=value is a problem (a line skipped in
    silence would be a setting silently lost)."""
    try:
        if not env_path.exists():
            if explicit:
                problems.append(f"{env_path}: {ENV_FILE_VARIABLE} points to a file that does not exist")
            return {}
        data = env_path.read_bytes()
    except OSError as exc:
        problems.append(f"{shown(str(env_path), 200)}: cannot read: {exc.strerror}")
        return {}
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        problems.append(f"{env_path}: not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start})")
        return {}
    bad = [binding.original.line for binding in parse_stream(io.StringIO(text)) if binding.error]
    if bad:
        lines = ", ".join(str(line) for line in bad[:10]) + (" ..." if len(bad) > 10 else "")
        problems.append(f"{env_path}: line {lines}: not KEY=value (quote a value with spaces or '#')")
        return {}
    # no ${VAR} expansion: a password holding "${" must reach the server as it was written
    return {k: v for k, v in dotenv_values(stream=io.StringIO(text), interpolate=False).items() if v is not None}


def merged(file_values: dict[str, str], environ: dict[str, str]) -> tuple[dict[str, str], set[str]]:
    """The file's values with every key of KEYS that the environment sets on top, and the
    names that came from the environment (their messages say so). Only spaces and tabs
    are stripped: a line break inside a value is a mistake to report, not to hide."""
    values = {key: value.strip(" \t") for key, value in file_values.items()}
    from_env = {name for name in BY_NAME if name in environ}
    values.update({name: environ[name].strip(" \t") for name in from_env})
    return values, from_env


def unknown_keys(file_keys: list[str], environ: dict[str, str], env_path: Path) -> list[str]:
    """Warnings for keys that look like ours but are not one (S3_BUKET, KEEP_DAYLY), with
    the closest real key. In `.env` a key with one of our prefixes or close to a real one
    is warned about; in the environment (which holds everybody's variables) only one that
    has our prefix and is close to a real key."""
    names = list(BY_NAME)
    warnings = []
    sources = [(key, env_path, False) for key in file_keys] + [(key, "environment", True) for key in environ]
    for key, where, from_env in sources:
        if key in BY_NAME or (key == ENV_FILE_VARIABLE and from_env):
            continue
        upper = key.upper()
        plain = re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", key)
        ours = upper.startswith(PREFIXES) and plain
        if from_env and not (ours and key == upper):  # asked before difflib, which costs ~0.25 ms a key
            continue
        close = difflib.get_close_matches(upper, names, n=1, cutoff=0.8)
        if from_env and not close:
            continue
        name = key if plain else shown(key)
        if key == ENV_FILE_VARIABLE:
            warnings.append(f"{where}: {key}: only read from the environment (it says where this file is)")
        elif upper in BY_NAME:
            warnings.append(f"{where}: {name}: keys are upper case; did you mean {upper}?")
        elif close:
            warnings.append(f"{where}: {name}: not a key this tool reads; did you mean {close[0]}?")
        elif ours:
            warnings.append(f"{where}: {key}: not a key this tool reads (.env.sample lists them all)")
    return warnings


def parse_all(values: dict[str, str], from_env: set[str], env_path: Path,
              problems: list[str]) -> dict[str, object]:
    """Every key of KEYS typed: its default when unset or empty, else its parsed value."""
    parsed: dict[str, object] = {}
    for key in KEYS:
        text = values.get(key.name, "")
        parsed[key.name] = key.default
        if text == "":
            continue
        try:
            parsed[key.name] = parse_value(key, text)
        except ValueError as exc:
            where = "environment" if key.name in from_env else str(env_path)
            problems.append(f"{where}: {key.name}: {exc}")
    return parsed


def check_together(values: dict[str, str], where: str, problems: list[str]) -> None:
    """Keys that only mean something together: S3 without a bucket, one S3 key of two, part
    of the D1 settings. Each would otherwise silently mean another mode of running."""
    given = [name for name in S3_SETTINGS if values.get(name)]
    if given and not values.get("S3_BUCKET"):
        problems.append(f"{where}: S3_BUCKET: not set, while {', '.join(given)} {'is' if len(given) == 1 else 'are'}"
                        ": set S3_BUCKET to store archives in S3, or remove every S3_* key for local-only mode")
    keys = [name for name in S3_KEY_PAIR if values.get(name)]
    if len(keys) == 1:
        missing = next(name for name in S3_KEY_PAIR if name not in keys)
        problems.append(f"{where}: {missing}: not set, while {keys[0]} is: set both, or neither to use "
                        "boto3's own credential chain (environment, ~/.aws, instance role)")
    d1 = [name for name in D1_SETTINGS if values.get(name)]
    if d1 and len(d1) < len(D1_SETTINGS):
        missing = [name for name in D1_SETTINGS if name not in d1]
        problems.append(f"{where}: {', '.join(missing)}: not set, while {', '.join(d1)} "
                        f"{'is' if len(d1) == 1 else 'are'}: set all three for the fleet catalog, or none")
    if values.get("SMTP_HOST") and not values.get("REPORT_TO"):
        problems.append(f"{where}: REPORT_TO: not set, while SMTP_HOST is: the daily report needs at least one "
                        "recipient (comma-separated addresses), or remove SMTP_HOST to write it under "
                        "BACKUP_DIR/reports/")
    if (values.get("SMTP_USERNAME") or values.get("SMTP_PASSWORD")) and not values.get("SMTP_HOST"):
        problems.append(f"{where}: SMTP_HOST: not set, while "
                        f"{'SMTP_USERNAME' if values.get('SMTP_USERNAME') else 'SMTP_PASSWORD'} is: set the mail "
                        "server to send the report by email")


def resolve_path(name: str, parsed: dict[str, object], env_path: Path, where: str,
                 problems: list[str]) -> Path:
    """SITES_FILE, DB_PATH, BACKUP_DIR: relative ones are relative to the `.env` folder."""
    candidate = Path(parsed[name])
    resolved = candidate if candidate.is_absolute() else env_path.parent / candidate
    why = path_problem(str(resolved))
    if why:
        problems.append(f"{where}: {name}: {shown(str(resolved))} {why}")
    return resolved


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    """Read `.env` and the environment; raise SettingsError listing every bad value."""
    environ = dict(os.environ if environ is None else environ)
    try:
        env_path = env_file_path(environ)
    except (RuntimeError, ValueError) as exc:
        raise SettingsError([f"{ENV_FILE_VARIABLE}: {shown(environ[ENV_FILE_VARIABLE])}: {exc}"]) from None
    problems: list[str] = []
    file_values = read_env_file(env_path, bool(environ.get(ENV_FILE_VARIABLE)), problems)
    values, from_env = merged(file_values, environ)
    warnings = unknown_keys(list(file_values), environ, env_path)
    parsed = parse_all(values, from_env, env_path, problems)
    check_together(values, str(env_path), problems)
    paths = {name: resolve_path(name, parsed, env_path, "environment" if name in from_env else str(env_path),
                                problems) for name in ("SITES_FILE", "DB_PATH", "BACKUP_DIR")}
    if problems:
        raise SettingsError(problems, warnings)
    return Settings(
        env_path=env_path,
        server_id=parsed["SERVER_ID"] or default_server_id(),
        sites_file=paths["SITES_FILE"], db_path=paths["DB_PATH"], backup_dir=paths["BACKUP_DIR"],
        **{key.attr: parsed[key.name] for key in KEYS if key.attr},
        raw=values,
        values=parsed,
        warnings=tuple(warnings),
    )

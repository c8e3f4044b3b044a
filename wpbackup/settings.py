"""Settings: `.env` (found at $WPBACKUP_ENV, else next to dodo.py) overlaid by the process
environment, turned into one typed, validated ``Settings`` value.

Every path defaults to a place next to the `.env` file, so a second instance (or a test)
needs nothing but ``WPBACKUP_ENV=/some/dir/.env``.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

from dotenv import dotenv_values

from .errors import ConfigError

SERVER_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
PROJECT_DIR = Path(__file__).resolve().parent.parent


def env_file_path(environ: dict[str, str] | None = None) -> Path:
    """Where the install's `.env` lives: $WPBACKUP_ENV, else beside dodo.py."""
    environ = os.environ if environ is None else environ
    explicit = environ.get("WPBACKUP_ENV")
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


def _merged(env_path: Path, environ: dict[str, str]) -> dict[str, str]:
    values = {k: v for k, v in dotenv_values(env_path).items() if v is not None} if env_path.is_file() else {}
    for key in list(values) + [k for k in environ if k.isupper()]:
        if key in environ:
            values[key] = environ[key]
    return {k: v.strip() for k, v in values.items()}


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    """Read `.env` and the environment; raise ConfigError listing every bad value."""
    environ = dict(os.environ if environ is None else environ)
    env_path = env_file_path(environ)
    problems: list[str] = []
    if environ.get("WPBACKUP_ENV") and not env_path.is_file():
        problems.append(f"{env_path}: WPBACKUP_ENV points to a file that does not exist")
    values = _merged(env_path, environ)
    where = str(env_path)

    def text(key: str, default: str | None = None) -> str | None:
        value = values.get(key, "")
        return value if value != "" else default

    def number(key: str, default, kind=int, minimum=0):
        value = text(key)
        if value is None:
            return default
        try:
            parsed = kind(value)
        except ValueError:
            problems.append(f"{where}: {key}: expected a number, got {value!r}")
            return default
        if parsed < minimum:
            problems.append(f"{where}: {key}: must be at least {minimum}, got {value!r}")
            return default
        return parsed

    def path(key: str, default_name: str) -> Path:
        value = text(key)
        candidate = Path(value).expanduser() if value else Path(default_name)
        return candidate if candidate.is_absolute() else env_path.parent / candidate

    server_id = text("SERVER_ID")
    if server_id is None:
        server_id = default_server_id()
    elif not SERVER_ID_RE.match(server_id):
        problems.append(
            f"{where}: SERVER_ID: {server_id!r} is not valid "
            "(lowercase letters, digits and '-', starting with a letter or digit, at most 63)"
        )
    level = number("ZSTD_LEVEL", 3, minimum=1)
    if level > 22:
        problems.append(f"{where}: ZSTD_LEVEL: must be between 1 and 22, got {level}")
    prefix = text("S3_PREFIX")
    settings = Settings(
        env_path=env_path,
        server_id=server_id,
        sites_file=path("SITES_FILE", "sites.json"),
        db_path=path("DB_PATH", "backups.db"),
        backup_dir=path("BACKUP_DIR", "backups"),
        zstd_level=level,
        zstd_threads=number("ZSTD_THREADS", 0),
        local_keep=number("LOCAL_KEEP", 2, minimum=1),
        stale_run_hours=number("STALE_RUN_HOURS", 20.0, float),
        backup_max_age_hours=number("BACKUP_MAX_AGE_HOURS", 26.0, float),
        s3_endpoint_url=text("S3_ENDPOINT_URL"),
        s3_bucket=text("S3_BUCKET"),
        s3_region=text("S3_REGION", "us-east-1"),
        s3_access_key_id=text("S3_ACCESS_KEY_ID"),
        s3_secret_access_key=text("S3_SECRET_ACCESS_KEY"),
        s3_prefix=prefix.strip("/") if prefix else None,
        s3_storage_class=text("S3_STORAGE_CLASS"),
        keep_daily=number("KEEP_DAILY", 7),
        keep_weekly=number("KEEP_WEEKLY", 4),
        keep_monthly=number("KEEP_MONTHLY", 6),
        s3_max_attempts=number("S3_MAX_ATTEMPTS", 5, minimum=1),
        s3_part_size_mb=number("S3_PART_SIZE_MB", 0),
        s3_checksum=(text("S3_CHECKSUM", "none") or "none").lower(),
        d1_account_id=text("D1_ACCOUNT_ID"),
        d1_database_id=text("D1_DATABASE_ID"),
        d1_api_token=text("D1_API_TOKEN"),
        d1_api_base=text("D1_API_BASE", "https://api.cloudflare.com/client/v4"),
        raw=values,
    )
    if settings.s3_part_size_mb and settings.s3_part_size_mb < 5:
        problems.append(f"{where}: S3_PART_SIZE_MB: S3 needs parts of at least 5 MiB")
    if settings.s3_checksum not in ("none", "crc32"):
        problems.append(f"{where}: S3_CHECKSUM: expected none or crc32, got {values['S3_CHECKSUM']!r}")
    if problems:
        raise ConfigError(problems)
    return settings

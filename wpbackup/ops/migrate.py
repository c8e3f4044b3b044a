"""`doit migrate`: a predecessor install (run.sh + lib/*.py, one site) turned into this layout.

    .env (legacy keys) --read_legacy--> Legacy --plan--> Plan (every step, nothing changed)
        --run: each step done once, in order, recorded in the journal (.migrate.json beside .env):
           keep-env       .env copied byte for byte to .env.legacy (the way back)
           keep-catalog   backups.db copied to backups.db.legacy before anything opens it
           sites          sites.json with the one site
           catalog        old rows filled with site_name / server_id (in place, once)
           env            the new .env, translated (validated before it is written)
           local          wp-backup-STAMP.tar.zst -> {site}-backup-STAMP.tar.zst + .sha256
           s3             YYYY/MM/wp-backup-STAMP.tar.zst -> [PREFIX/]SERVER/YYYY/MM/DD/{site}-backup-...
                          copy, verify (size, sha256), catalog row, then delete the old key
           finish         the journal marked done: a later run changes nothing

Every step looks at what is there before it acts (a file already renamed, an object already
copied), so a run killed at any point continues where it stopped. The legacy values are read
from .env.legacy once it exists: the new .env may already be in place. No value of a secret
key is ever printed; keys without a counterpart are listed by name.
"""

from __future__ import annotations

import hashlib
import io
import ipaddress
import json
import os
import re
import sqlite3
from contextlib import closing
from dataclasses import dataclass, field, replace
from pathlib import Path

from dotenv import dotenv_values

from wpbackup.atomic import write_atomic
from wpbackup.backup.archive import archive_name, write_sidecar
from wpbackup.config.settings import (
    BY_NAME,
    SERVER_ID_RE,
    Settings,
    check_together,
    default_server_id,
    parse_all,
)
from wpbackup.config.sites import parse_sites, save_sites
from wpbackup.errors import BackupError, ConfigError, disk_error
from wpbackup.fleet import catalog
from wpbackup.ops.envfile import EnvFile
from wpbackup.storage import s3
from wpbackup.storage.reader import file_sha256

JOURNAL = ".migrate.json"
SITE_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
LEGACY_ARCHIVE = re.compile(r"wp-backup-(\d{8}-\d{6})\.tar\.zst")
LEGACY_KEY = re.compile(r"(\d{4})/(\d{2})/wp-backup-(\d{8}-\d{6})\.tar\.zst")
MIB = 1 << 20

#: legacy key -> this tool's key, where the value carries over as it is
SAME_VALUE = {
    "S3_SERVER_1_REGION": "S3_REGION", "S3_SERVER_1_ACCESS_KEY": "S3_ACCESS_KEY_ID",
    "S3_SERVER_1_SECRET_KEY": "S3_SECRET_ACCESS_KEY", "S3_SERVER_1_BUCKET": "S3_BUCKET",
    "SMTP_SERVER": "SMTP_HOST", "SMTP_PORT": "SMTP_PORT", "SMTP_USER": "SMTP_USERNAME",
    "SMTP_PASSWORD": "SMTP_PASSWORD", "SMTP_SENDER_EMAIL": "REPORT_FROM",
    "CLOUDFLARE_ACCOUNT_ID": "D1_ACCOUNT_ID", "CLOUDFLARE_API_TOKEN": "D1_API_TOKEN",
    "CLOUDFLARE_D1_DATABASE_ID": "D1_DATABASE_ID", "REMOTE_DIR": "DEPLOY_PATH", "BACKUP_DIR": "BACKUP_DIR",
}
#: legacy keys translated by a rule of their own (below) or taken into sites.json
RULES = ("S3_SERVER_1_ENDPOINT", "REMOTE_HOST", "REMOTE_USER", "REMOTE_PORT", "RETENTION_LOCAL_DAYS",
         "RETENTION_S3_DAYS", "SERVER_ID")
INTO_SITES = ("WP_CONFIG_PATH", "WP_CONTENT_PATH", "DB_HOST", "DB_NAME", "DB_USER", "DB_PASSWORD")
#: what tells a legacy .env from one of this tool
MARKERS = ("WP_CONTENT_PATH", "WP_CONFIG_PATH", "S3_SERVER_1_BUCKET", "S3_SERVER_1_ENDPOINT")
LEGACY_NAMES = frozenset(SAME_VALUE) | frozenset(RULES) | frozenset(INTO_SITES)


@dataclass
class Legacy:
    """What the predecessor's install holds (values of its .env, read as it read them)."""

    env_path: Path
    values: dict[str, str]
    text: bytes


@dataclass
class S3Move:
    old: str
    new: str
    name: str
    stamp: str
    size: int
    etag: str


@dataclass
class Plan:
    """Every step of the migration, decided before any of them runs."""

    site: str
    server_id: str
    root: Path
    db: dict
    env: dict[str, str]             # the new .env's values
    notes: list[str]                # what the translation decided (no secret value)
    unmapped: list[str]             # legacy keys with no counterpart (names only)
    local: list[tuple[Path, Path]]  # (old, new) archive paths
    moves: list[S3Move] = field(default_factory=list)
    s3_problem: str = ""


# --- journal -----------------------------------------------------------------------------------

def journal_path(settings: Settings) -> Path:
    return settings.state_dir / JOURNAL


def read_journal(settings: Settings) -> dict:
    """The steps done so far ({} before the first run)."""
    path = journal_path(settings)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise BackupError(f"{path}: cannot read the migration journal ({exc}); move it aside only if no "
                          "migration is under way") from None


def mark(settings: Settings, journal: dict, step: str) -> None:
    """Record one finished step (atomically: a kill leaves the old journal or the new one)."""
    journal.setdefault("done", [])
    if step not in journal["done"]:
        journal["done"].append(step)
    write_atomic(journal_path(settings), (json.dumps(journal, indent=1) + "\n").encode())


# --- reading the legacy install ------------------------------------------------------------------

def read_legacy(settings: Settings) -> Legacy:
    """The legacy .env: .env.legacy once the first run kept it, else .env itself."""
    kept = settings.env_path.with_name(".env.legacy")
    path = kept if kept.exists() else settings.env_path
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BackupError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BackupError(f"{path}: not UTF-8 text") from None
    values = {k: v.strip() for k, v in dotenv_values(stream=io.StringIO(text), interpolate=False).items()
              if v is not None}
    if not any(values.get(key) for key in MARKERS):
        raise BackupError(f"{path}: not a legacy install's .env (none of {', '.join(MARKERS)} is set); "
                          "nothing to migrate")
    return Legacy(path, values, data)


def wordpress_root(values: dict[str, str]) -> Path:
    """The WordPress root: WP_CONTENT_PATH's parent, else the folder of WP_CONFIG_PATH, or the
    one folder below it holding wp-load.php (WordPress finds wp-config.php one level up)."""
    content, config = values.get("WP_CONTENT_PATH", ""), values.get("WP_CONFIG_PATH", "")
    if content:
        root = Path(content.rstrip("/")).parent
        if config and Path(config).parent not in (root, root.parent):
            raise BackupError(f"WP_CONFIG_PATH {config} is neither in {root} nor in its parent folder, "
                              "where WordPress looks for it: fix the legacy .env")
        return root
    if not config:
        raise BackupError("neither WP_CONTENT_PATH nor WP_CONFIG_PATH is set in the legacy .env: "
                          "cannot tell where the site is")
    folder = Path(config).parent
    if (folder / "wp-load.php").exists() or not folder.is_dir():
        return folder
    below = [p.parent for p in folder.glob("*/wp-load.php")]
    return below[0] if len(below) == 1 else folder


def site_db(values: dict[str, str]) -> dict:
    """sites.json's db: only what the old .env really set (empty means: read wp-config.php)."""
    db = {field: values[key] for key, field in (("DB_NAME", "name"), ("DB_USER", "user"),
                                                 ("DB_PASSWORD", "password")) if values.get(key)}
    host = values.get("DB_HOST", "")
    if ":/" in host:
        host, db["socket"] = host.split(":", 1)
    elif re.fullmatch(r"[^:]+:\d{1,5}", host):
        host, port = host.rsplit(":", 1)
        db["port"] = int(port)
    if host:
        db["host"] = host
    return db


def with_scheme(endpoint: str) -> str:
    """An endpoint without scheme gets https://; a loopback host (a local MinIO or test
    server, which serves plain HTTP) gets http://."""
    if "://" in endpoint:
        return endpoint
    host = endpoint.split("/")[0].rsplit(":", 1)[0].strip("[]")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    return ("http://" if loopback else "https://") + endpoint


# --- translating .env --------------------------------------------------------------------------

def _rules(values: dict[str, str], env: dict[str, str], notes: list[str]) -> None:
    """The translations that are more than a new name."""
    if values.get("S3_SERVER_1_ENDPOINT"):
        env["S3_ENDPOINT_URL"] = with_scheme(values["S3_SERVER_1_ENDPOINT"])
        notes.append(f"S3_SERVER_1_ENDPOINT -> S3_ENDPOINT_URL={env['S3_ENDPOINT_URL']}")
    if env.get("SMTP_PORT") == "465":
        env["SMTP_SECURITY"] = "ssl"
        notes.append("SMTP_PORT 465 -> SMTP_SECURITY=ssl")
    if env.get("SMTP_HOST") and env.get("REPORT_FROM") and not values.get("REPORT_TO"):
        env["REPORT_TO"] = env["REPORT_FROM"]
        notes.append("REPORT_TO set to the old sender address (the old tool had no recipient key): "
                     "change it to who should read the daily report")
    if values.get("REMOTE_HOST"):
        host = values["REMOTE_HOST"]
        user, port = values.get("REMOTE_USER"), values.get("REMOTE_PORT")
        env["DEPLOY_HOSTS"] = (f"{user}@" if user else "") + host + (f":{port}" if port and port != "22" else "")
        notes.append(f"REMOTE_HOST/USER/PORT -> DEPLOY_HOSTS={env['DEPLOY_HOSTS']}")
    days = {key: values.get(key, "") for key in ("RETENTION_LOCAL_DAYS", "RETENTION_S3_DAYS")}
    if days["RETENTION_LOCAL_DAYS"].isdigit() and int(days["RETENTION_LOCAL_DAYS"]) > 0:
        env["LOCAL_KEEP"] = str(int(days["RETENTION_LOCAL_DAYS"]))
        notes.append(f"RETENTION_LOCAL_DAYS={env['LOCAL_KEEP']} -> LOCAL_KEEP={env['LOCAL_KEEP']} "
                     "(one backup a day: as many archives as days)")
    if days["RETENTION_S3_DAYS"].isdigit() and int(days["RETENTION_S3_DAYS"]) > 0:
        env.update(KEEP_DAILY=str(int(days["RETENTION_S3_DAYS"])), KEEP_WEEKLY="0", KEEP_MONTHLY="0")
        notes.append(f"RETENTION_S3_DAYS={env['KEEP_DAILY']} -> KEEP_DAILY={env['KEEP_DAILY']}, KEEP_WEEKLY=0, "
                     "KEEP_MONTHLY=0 (the same window; raise KEEP_WEEKLY/KEEP_MONTHLY to keep older ones)")
    for key, text in days.items():
        if text and not (text.isdigit() and int(text) > 0):
            notes.append(f"{key}: not a number of days above 0, not translated (this tool's defaults apply)")


def translate(values: dict[str, str], server_id: str) -> tuple[dict[str, str], list[str], list[str]]:
    """(new .env values, notes, legacy keys without a counterpart). Keys this tool reads under
    the same name (ZSTD_LEVEL...) carry over; anything else is listed, never dropped silently."""
    env: dict[str, str] = {"SERVER_ID": server_id}
    notes: list[str] = []
    for old, new in SAME_VALUE.items():
        if values.get(old):
            env[new] = values[old]
    _rules(values, env, notes)
    unmapped = []
    for key, value in values.items():
        if key in LEGACY_NAMES:
            continue
        if key in BY_NAME and value:
            env.setdefault(key, value)
        elif key not in BY_NAME:
            unmapped.append(key)
    if values.get("DB_PASSWORD"):
        notes.append("DB_PASSWORD -> sites.json db.password (sites.json is 0600)")
    return env, notes, unmapped


def env_text(env: dict[str, str], unmapped: list[str]) -> str:
    """The new .env's text (values encoded as envfile writes them)."""
    document = EnvFile(Path(".env"))
    document.entries = []
    head = "# written by doit migrate from .env.legacy (the predecessor's .env, kept as it was)\n"
    if unmapped:
        head += "# legacy keys without a counterpart here (see .env.legacy): " + ", ".join(unmapped) + "\n"
    for key in [k for k in BY_NAME if k in env]:
        try:
            document.set(key, env[key])
        except ValueError as exc:
            raise BackupError(f"{key}: the legacy value {exc}") from None
    return head + document.text()


def check_env(env: dict[str, str], where: Path) -> None:
    """The new .env as the settings loader will read it: every problem at once, or nothing."""
    problems: list[str] = []
    parse_all(env, set(), where, problems)
    check_together(env, str(where), problems)
    if problems:
        raise BackupError("the translated .env would not load: " + "; ".join(problems)
                          + " (fix the legacy .env, or add the key this tool reads to it, such as REPORT_TO; "
                            "then run doit migrate again)")


# --- planning ----------------------------------------------------------------------------------

def pick_server_id(given: str, values: dict[str, str]) -> str:
    """--server-id, else the old SERVER_ID, else the host name made valid."""
    server_id = given or values.get("SERVER_ID", "") or default_server_id()
    if not SERVER_ID_RE.fullmatch(server_id):
        raise BackupError(f"server id {server_id!r} is not valid: ^[a-z0-9][a-z0-9-]{{0,62}}$")
    return server_id


def new_settings(settings: Settings, env: dict[str, str], server_id: str) -> Settings:
    """The settings the migrated install will have, as far as the S3 and catalog steps need."""
    backup_dir = Path(env.get("BACKUP_DIR") or settings.backup_dir)
    if not backup_dir.is_absolute():
        backup_dir = settings.state_dir / backup_dir
    return replace(settings, server_id=server_id, backup_dir=backup_dir,
                   s3_endpoint_url=env.get("S3_ENDPOINT_URL"), s3_bucket=env.get("S3_BUCKET"),
                   s3_region=env.get("S3_REGION") or "us-east-1", s3_access_key_id=env.get("S3_ACCESS_KEY_ID"),
                   s3_secret_access_key=env.get("S3_SECRET_ACCESS_KEY"))


def local_moves(backup_dir: Path, site: str) -> list[tuple[Path, Path]]:
    """Legacy archives in BACKUP_DIR, and those renamed already whose old sidecar or new one
    is still to be dealt with (a run cut off between the rename and the .sha256)."""
    moves = []
    if not backup_dir.is_dir():
        return moves
    for path in sorted(backup_dir.iterdir()):
        match = LEGACY_ARCHIVE.fullmatch(path.name)
        if match:
            moves.append((path, backup_dir / archive_name(site, match.group(1))))
    return moves


def legacy_keys(db_path: Path) -> set[str] | None:
    """The keys (and names) of the objects the legacy catalog says this install uploaded, read
    from its untouched copy when there is one; None when it records none. Several legacy
    servers may have shared one bucket, and its key layout names no server: only what this
    install's own catalog lists is its own."""
    source = db_path.with_name(db_path.name + ".legacy")
    source = source if source.exists() else db_path
    if not source.exists():
        return None
    try:
        with closing(sqlite3.connect(f"file:{source}?mode=ro", uri=True)) as conn:
            rows = conn.execute("SELECT filename FROM s3_archives WHERE filename IS NOT NULL").fetchall()
    except sqlite3.Error:
        return None
    keys = {str(row[0]) for row in rows}
    return keys | {key.rsplit("/", 1)[-1] for key in keys} if keys else None


def s3_moves(settings: Settings, site: str, known: set[str] | None = None) -> list[S3Move]:
    """The predecessor's archives in the bucket (YYYY/MM/wp-backup-STAMP.tar.zst whose date
    matches its stamp), only those the legacy catalog lists when it lists any (``known``):
    nothing else is ever touched."""
    client = s3.make_client(settings)
    moves = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=settings.s3_bucket):
        for obj in page.get("Contents", []):
            match = LEGACY_KEY.fullmatch(obj["Key"])
            if not match or match.group(3)[:6] != match.group(1) + match.group(2):
                continue
            if known is not None and obj["Key"] not in known and obj["Key"].rsplit("/", 1)[-1] not in known:
                continue  # another legacy server's archive in a shared bucket
            stamp = match.group(3)
            name = archive_name(site, stamp)
            new = s3.object_key(settings.s3_prefix, settings.server_id, stamp, name)
            moves.append(S3Move(obj["Key"], new, name, stamp, obj["Size"], obj.get("ETag", "").strip('"')))
    return moves


def plan(settings: Settings, site: str, server_id: str = "") -> tuple[Plan, Legacy, Settings]:
    """Everything the migration will do; changes nothing (the bucket is only listed)."""
    if not SITE_RE.fullmatch(site or ""):
        raise BackupError(f"--site {site!r}: give the site's name, ^[a-z0-9][a-z0-9._-]{{0,62}}$ "
                          "(it becomes part of archive names and keys)")
    legacy = read_legacy(settings)
    server_id = pick_server_id(server_id, legacy.values)
    env, notes, unmapped = translate(legacy.values, server_id)
    check_env(env, settings.env_path)
    target = new_settings(settings, env, server_id)
    the_plan = Plan(site, server_id, wordpress_root(legacy.values), site_db(legacy.values), env, notes, unmapped,
                    local_moves(target.backup_dir, site))
    check_site(settings, the_plan)
    env_text(env, unmapped)  # a value .env cannot carry is found by a dry run too
    if target.s3_enabled:
        try:
            known = legacy_keys(settings.db_path)
            the_plan.moves = s3_moves(target, site, known)
            if known is None and the_plan.moves:
                the_plan.notes.append("the legacy catalog lists no S3 upload: every legacy-named archive in the "
                                      "bucket is taken as this install's (one legacy server per bucket)")
        except BackupError as exc:
            the_plan.s3_problem = str(exc)
        except Exception as exc:
            the_plan.s3_problem = str(s3.describe(exc, target.s3_endpoint_url, target.s3_bucket))
    return the_plan, legacy, target


def describe_plan(the_plan: Plan, settings: Settings, target: Settings) -> list[str]:
    """The plan as lines for the operator (names and paths; never a secret value)."""
    lines = [f"migrate the legacy install at {settings.state_dir} to site {the_plan.site} on server "
             f"{the_plan.server_id}:",
             f"  keep {settings.env_path} as .env.legacy (byte for byte)"]
    if settings.db_path.exists():
        lines.append(f"  keep {settings.db_path} as {settings.db_path.name}.legacy, then fill its rows with "
                     f"site_name={the_plan.site} and server_id={the_plan.server_id}")
    db = ", ".join(sorted(the_plan.db)) or "none: all read from wp-config.php"
    lines.append(f"  write {settings.sites_file}: site {the_plan.site} at {the_plan.root} (db values: {db})")
    lines.append(f"  write the new {settings.env_path}: " + ", ".join(k for k in BY_NAME if k in the_plan.env))
    lines += [f"    {note}" for note in the_plan.notes]
    for key in the_plan.unmapped:
        lines.append(f"    not translated (no counterpart): {key}")
    for old, new in the_plan.local:
        lines.append(f"  rename {old} -> {new.name} (+ .sha256)")
    if the_plan.s3_problem:
        lines.append(f"  S3: cannot list the old objects: {the_plan.s3_problem}")
    for move in the_plan.moves:
        lines.append(f"  copy s3://{target.s3_bucket}/{move.old} -> {move.new}, verify it, then delete the old key")
    return lines


# --- the steps ---------------------------------------------------------------------------------

def keep_copy(source: Path, target: Path) -> None:
    """A 0600 copy kept aside, written once (a later run never overwrites the original's copy);
    a .env is small, so it is read whole and written with write_atomic."""
    if target.exists():
        return
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise disk_error(source, exc) from None
    write_atomic(target, data, 0o600)


def keep_catalog(db_path: Path) -> None:
    """backups.db.legacy: a consistent copy through SQLite's backup API, before any open of
    ours migrates the schema."""
    target = db_path.with_name(db_path.name + ".legacy")
    if target.exists() or not db_path.exists():
        return
    partial = target.with_name(target.name + ".tmp")
    partial.unlink(missing_ok=True)
    with closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as src, \
            closing(sqlite3.connect(partial)) as out:
        src.backup(out)
    os.chmod(partial, 0o600)
    os.replace(partial, target)


def site_document(the_plan: Plan) -> dict:
    entry = {"name": the_plan.site, "path": str(the_plan.root), "enabled": True}
    if the_plan.db:
        entry["db"] = the_plan.db
    return {"sites": [entry]}


def check_site(settings: Settings, the_plan: Plan) -> None:
    """The sites.json the legacy values give, checked while planning (a dry run says it too)."""
    try:
        parse_sites(site_document(the_plan), str(settings.sites_file))
    except ConfigError as exc:
        raise BackupError("the legacy .env gives a site that would not load: " + "; ".join(exc.problems)
                          + " (fix it in the legacy .env, then run doit migrate again)") from None


def write_sites(settings: Settings, the_plan: Plan) -> None:
    save_sites(settings.sites_file, site_document(the_plan))


def fill_catalog(db_path: Path, site: str, server_id: str) -> None:
    """The old rows, once each, get the site and server they belong to (connect() has added
    the columns); the s3_archives rows also their archive name and stamp when the key says."""
    with closing(catalog.connect(db_path)) as conn, conn:
        conn.execute("UPDATE backup_log SET site_name = ?, server_id = ? WHERE server_id IS NULL", (site, server_id))
        conn.execute("UPDATE daily_emails SET server_id = ? WHERE server_id IS NULL", (server_id,))
        rows = conn.execute("SELECT id, filename FROM s3_archives WHERE server_id IS NULL").fetchall()
        for row_id, filename in rows:
            match = LEGACY_ARCHIVE.search(filename or "")
            stamp = match.group(1) if match else None
            conn.execute("UPDATE s3_archives SET site_name = ?, server_id = ?, run_stamp = ?, archive_name = ?, "
                         "deleted_at = CASE WHEN ? IS NULL THEN datetime('now') ELSE deleted_at END WHERE id = ?",
                         (site, server_id, stamp, archive_name(site, stamp) if stamp else None, stamp, row_id))


def record_archive(db_path: Path, site: str, server_id: str, name: str, stamp: str, size: int, sha256: str) -> None:
    """One SUCCESS line per migrated archive (once), so status, restore and prune know it."""
    with closing(catalog.connect(db_path)) as conn, conn:
        conn.execute(
            "INSERT OR IGNORE INTO backup_log (timestamp, status, details, site_name, server_id, uid, run_stamp, "
            "archive_name, archive_size, archive_sha256) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]} {stamp[9:11]}:{stamp[11:13]}:{stamp[13:15]}", "SUCCESS",
             f"migrated from the legacy install: {name}", site, server_id, f"{server_id}:migrated:{name}", stamp,
             name, size, sha256))


def move_local(the_plan: Plan, db_path: Path, settings: Settings, journal: dict) -> list[str]:
    """Rename each legacy archive (same bytes), write its .sha256, drop the old sidecar. The
    list is journaled first: a rerun after a kill still knows the ones renamed already."""
    if "local" not in journal:
        journal["local"] = [[str(old), str(new)] for old, new in the_plan.local]
        mark(settings, journal, "local-planned")
    lines = []
    for old, new in ((Path(a), Path(b)) for a, b in journal["local"]):
        if not old.exists() and not new.exists():
            lines.append(f"{old.name}: gone meanwhile, skipped")
            continue
        if old.exists() and not new.exists():
            os.rename(old, new)
        elif old.exists():  # both: a copy of the same archive or a clash; never overwrite
            if file_sha256(old) != file_sha256(new):
                raise BackupError(f"{new} exists and differs from {old}: move one of them away")
            old.unlink()
        sha256 = file_sha256(new)
        write_sidecar(new, sha256)
        old.with_name(old.name + ".sha256").unlink(missing_ok=True)
        os.chmod(new, 0o600)
        stamp = LEGACY_ARCHIVE.fullmatch(old.name).group(1)
        record_archive(db_path, the_plan.site, the_plan.server_id, new.name, stamp, new.stat().st_size, sha256)
        lines.append(f"renamed {old.name} -> {new.name}")
    return lines


def object_sha256(client, bucket: str, key: str) -> str:
    """The stored sha256 metadata, else the object's content hashed as it streams."""
    head = client.head_object(Bucket=bucket, Key=key)
    if re.fullmatch(r"[0-9a-f]{64}", head.get("Metadata", {}).get("sha256", "")):
        return head["Metadata"]["sha256"]
    digest = hashlib.sha256()
    for chunk in client.get_object(Bucket=bucket, Key=key)["Body"].iter_chunks(MIB):
        digest.update(chunk)
    return digest.hexdigest()


def _exists(client, bucket: str, key: str) -> dict | None:
    from botocore.exceptions import ClientError

    try:
        return client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
            return None
        raise


def copy_object(client, bucket: str, move: S3Move, sha256: str, site: str, server_id: str) -> None:
    """Server-side copy with this tool's metadata (multipart for the very large ones)."""
    from boto3.s3.transfer import TransferConfig

    extra = {"Metadata": {"sha256": sha256, "site": site, "server-id": server_id}, "MetadataDirective": "REPLACE"}
    client.copy({"Bucket": bucket, "Key": move.old}, bucket, move.new, ExtraArgs=extra,
                Config=TransferConfig(multipart_threshold=4 << 30, multipart_chunksize=512 * MIB))


def move_object(client, target: Settings, move: S3Move, site: str, db_path: Path) -> str:
    """One object: copy (unless done), verify size and sha256, record, delete the old key."""
    bucket = target.s3_bucket
    old, new = _exists(client, bucket, move.old), _exists(client, bucket, move.new)
    if old is None and new is None:
        return f"s3: {move.old} is gone and {move.new} does not exist: skipped"
    if old is not None:
        sha256 = object_sha256(client, bucket, move.old)
        if new is None or new.get("Metadata", {}).get("sha256") != sha256 or new["ContentLength"] != move.size:
            copy_object(client, bucket, move, sha256, site, target.server_id)
        s3.verify_object(client, bucket, move.new, move.size, sha256, move.etag or None)
    else:  # copied and the old one deleted by a run cut off before its catalog update
        sha256 = new.get("Metadata", {}).get("sha256", "")
        s3.verify_object(client, bucket, move.new, new["ContentLength"], sha256, None)
    size = (new or old)["ContentLength"] if old is None else move.size
    update_s3_row(db_path, target, move, site, size, sha256)
    record_archive(db_path, site, target.server_id, move.name, move.stamp, size, sha256)
    if old is not None:
        client.delete_object(Bucket=bucket, Key=move.old)
    return f"s3: {move.old} -> {move.new} (verified)"


def update_s3_row(db_path: Path, target: Settings, move: S3Move, site: str, size: int, sha256: str) -> None:
    """The legacy row of this archive now names the new key; none: one row as an upload writes."""
    with closing(catalog.connect(db_path)) as conn, conn:
        updated = conn.execute(
            "UPDATE s3_archives SET filename = ?, s3_bucket = ?, s3_endpoint = ?, file_size = ?, sha256 = ?, "
            "site_name = ?, server_id = ?, archive_name = ?, run_stamp = ?, deleted_at = NULL "
            "WHERE (filename = ? OR filename = ? OR filename = ?) AND (server_id IS NULL OR server_id = ?)",
            (move.new, target.s3_bucket, target.s3_endpoint_url, size, sha256, site, target.server_id, move.name,
             move.stamp, move.old, move.old.rsplit("/", 1)[1], move.new, target.server_id)).rowcount
    if not updated:
        catalog.record_upload(db_path, key=move.new, endpoint=target.s3_endpoint_url, bucket=target.s3_bucket,
                              size=size, sha256=sha256, site=site, server_id=target.server_id, stamp=move.stamp,
                              archive_name=move.name, uploaded_at=catalog.now_utc())


def move_s3(the_plan: Plan, target: Settings, db_path: Path, settings: Settings, journal: dict) -> list[str]:
    """Every old object, each recorded in the journal once it is done."""
    if the_plan.s3_problem:
        raise BackupError(f"S3: {the_plan.s3_problem}; nothing in the bucket was changed: run doit migrate "
                          "again once S3 is reachable")
    client = s3.make_client(target)
    done = journal.setdefault("objects", [])
    lines = []
    for move in the_plan.moves:
        if move.old in done:
            continue
        try:
            lines.append(move_object(client, target, move, the_plan.site, db_path))
        except BackupError:
            raise
        except Exception as exc:
            raise s3.describe(exc, target.s3_endpoint_url, target.s3_bucket) from None
        done.append(move.old)
        mark(settings, journal, "s3-progress")
    retire_old_rows(db_path, target.server_id)
    return lines


def retire_old_rows(db_path: Path, server_id: str) -> None:
    """Legacy s3_archives rows whose object was not in the bucket (the old tool's retention
    deleted it): kept, marked deleted, so that nothing looks for it."""
    with closing(catalog.connect(db_path)) as conn, conn:
        rows = conn.execute("SELECT id, filename FROM s3_archives WHERE server_id = ? AND deleted_at IS NULL",
                            (server_id,)).fetchall()
        gone = [(row_id,) for row_id, name in rows
                if LEGACY_KEY.fullmatch(name or "") or LEGACY_ARCHIVE.fullmatch(name or "")]
        conn.executemany("UPDATE s3_archives SET deleted_at = datetime('now') WHERE id = ?", gone)


def write_env(settings: Settings, the_plan: Plan) -> None:
    text = env_text(the_plan.env, the_plan.unmapped).encode()
    if settings.env_path.exists() and (old := settings.env_path.read_bytes()) != text:  # the one it replaces
        write_atomic(settings.env_path.with_name(".env.bak"), old, 0o600)
    write_atomic(settings.env_path, text, 0o600)


# --- the whole -----------------------------------------------------------------------------------

def _start(settings: Settings, site: str) -> tuple[dict, list[str] | None]:
    """The journal, or the lines to print when there is nothing to do."""
    journal = read_journal(settings)
    if journal.get("finished"):
        return journal, [f"already migrated (site {journal['site']}, server {journal['server_id']}, "
                         f"{journal['finished']}): nothing to do"]
    if journal and journal.get("site") != site:
        raise BackupError(f"a migration to site {journal.get('site')} is under way ({journal_path(settings)}): "
                          f"run doit migrate --site {journal.get('site')} to finish it")
    return journal, None


def migrate(settings: Settings, site: str, server_id: str = "", dry_run: bool = False) -> list[str]:
    """Plan, then (unless ``dry_run``) do every step not yet done; the lines to print."""
    journal, nothing = _start(settings, site)
    if nothing:
        return nothing
    server_id = server_id or journal.get("server_id", "")
    the_plan, legacy, target = plan(settings, site, server_id)
    lines = describe_plan(the_plan, settings, target)
    if dry_run:
        return ["dry run, nothing changed:", *lines]
    journal.update(site=site, server_id=the_plan.server_id)
    steps = [
        ("keep-env", lambda: keep_copy(legacy.env_path, settings.env_path.with_name(".env.legacy"))),
        ("keep-catalog", lambda: keep_catalog(settings.db_path)),
        ("sites", lambda: write_sites(settings, the_plan)),
        ("catalog", lambda: fill_catalog(settings.db_path, site, the_plan.server_id)),
        ("env", lambda: write_env(settings, the_plan)),
        ("local", lambda: lines.extend(move_local(the_plan, settings.db_path, settings, journal))),
        ("s3", lambda: lines.extend(move_s3(the_plan, target, settings.db_path, settings, journal))
         if target.s3_enabled else None),
    ]
    for name, step in steps:
        if name not in journal.get("done", []):
            step()
            mark(settings, journal, name)
    journal["finished"] = catalog.now_utc()
    mark(settings, journal, "finish")
    return [*lines, f"migrated: doit status, doit backup and doit prune now work on site {site} "
                    "(the way back: docs/migration.md)"]

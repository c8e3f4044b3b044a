"""What `doit configure` tries before it saves: each part of the configuration, for real.

    each enabled site   -> SELECT 1 with its login, through a 0600 option file (database.mysql)
    S3_BUCKET           -> HEAD the bucket, PUT and DELETE a small probe under this server's
                           prefix, with the client every upload uses (storage.s3)
    D1_*                -> SELECT 1 through the fleet's D1 client (fleet.d1)
    SMTP_HOST           -> connect and log in as the report does, send nothing (fleet.mail)
    *_ON_CALENDAR       -> systemd-analyze calendar (config.settings.calendar_problem)

Every check is a plain function returning (ok, reason): on success what was confirmed, on
failure the one line the operator acts on. None of them lets a secret into its reason: the
messages come from the same modules a backup uses, which scrub them.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from botocore.exceptions import BotoCoreError, ClientError

from wpbackup.config.settings import BY_NAME, Settings, calendar_problem
from wpbackup.config.sites import Site
from wpbackup.errors import BackupError

Result = tuple[bool, str]
CALENDAR_KEYS = ("BACKUP_ON_CALENDAR", "REPORT_ON_CALENDAR", "VERIFY_ON_CALENDAR")
PROBE_BODY = b"wordpress-backup: doit configure checks that it may write here; deleted at once\n"


def database(site: Site) -> Result:
    """A real `SELECT 1` with the site's login (sites.json's db values, the rest from its
    wp-config.php), as every dump logs in."""
    from wpbackup.database.mysql import run_query, where

    try:
        db = site.database()
        rows = run_query(db, "SELECT 1")
    except BackupError as exc:
        return False, str(exc)
    except OSError as exc:  # the client could not be started, or no room for the option file
        return False, f"cannot run the database client: {exc.strerror or exc}"
    if rows != [["1"]]:
        return False, f"the server at {where(db)} did not answer SELECT 1 with 1"
    return True, f"login works ({db.user} on database {db.name} at {where(db)})"


def _s3_problem(exc: Exception, settings: Settings) -> str:
    """A failed S3 call as the upload would word it; a HEAD's bare 404 named plainly (it
    carries no message saying it is the bucket that is missing)."""
    from wpbackup.storage.s3 import describe

    if isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket"):
        return f"S3 bucket {settings.s3_bucket} does not exist at {settings.s3_endpoint_url or 'AWS S3'}"
    return str(describe(exc, settings.s3_endpoint_url, settings.s3_bucket))


def s3_bucket(settings: Settings) -> Result:
    """HEAD the bucket, then PUT and DELETE a small probe object where this server's archives
    go ([S3_PREFIX/]SERVER_ID/), in S3_STORAGE_CLASS when set: the permissions a backup needs.
    Built like every upload's client (so provider quirks match), with fewer retries."""
    from wpbackup.storage.s3 import make_client, server_prefix

    client = make_client(dataclasses.replace(settings, s3_max_attempts=min(settings.s3_max_attempts, 2)))
    bucket = settings.s3_bucket
    key = server_prefix(settings.s3_prefix, settings.server_id) + f".configure-probe-{secrets.token_hex(6)}"
    extra = {"StorageClass": settings.s3_storage_class} if settings.s3_storage_class else {}
    step = "HEAD bucket"
    try:
        client.head_bucket(Bucket=bucket)
        step = "PUT probe object"
        client.put_object(Bucket=bucket, Key=key, Body=PROBE_BODY, **extra)
        step = "DELETE probe object"
        client.delete_object(Bucket=bucket, Key=key)
    except (ClientError, BotoCoreError) as exc:
        after = "" if step == "HEAD bucket" else f" (at {step} {key}; the bucket itself answered)"
        return False, _s3_problem(exc, settings) + after
    return True, f"bucket {bucket} answers; a probe object was written and deleted under {key.rsplit('/', 1)[0]}/"


def d1(settings: Settings) -> Result:
    """`SELECT 1` through the D1 client the sync uses (token, account and database checked
    by Cloudflare itself), with a short retry budget."""
    from wpbackup.fleet.d1 import D1Client

    client = D1Client.from_settings(settings, attempts=2, budget=20.0)
    try:
        [rows] = client.batch([("SELECT 1 AS one", [])])
    except BackupError as exc:
        return False, str(exc)
    finally:
        client.close()
    if rows != [{"one": 1}]:
        return False, f"D1 answered SELECT 1 with {str(rows)[:80]}"
    return True, f"D1 database {settings.d1_database_id} answers"


def smtp(settings: Settings) -> Result:
    """Connect to SMTP_HOST and log in as the daily report would; nothing is sent."""
    from wpbackup.fleet.mail import try_login

    try:
        where = try_login(settings)
    except BackupError as exc:
        return False, str(exc)
    return True, f"{'logged in to' if settings.value('SMTP_USERNAME') else 'connected to'} {where}"


def calendar(key: str, expression: str) -> Result:
    """One OnCalendar= value, as systemd-analyze calendar sees it."""
    problem = calendar_problem(expression)
    if problem:
        return False, f"{key}: {expression!r} {problem}"
    return True, f"{key}={expression} is a calendar expression systemd accepts"


@dataclass(frozen=True)
class Check:
    """One check to run: ``kind`` (database, s3, d1, smtp, calendar: what --from's
    skip_checks names), a label for people, and what a fix edits (a section of the
    wizard, or the site named ``site``)."""

    kind: str
    label: str
    run: Callable[[], Result]
    section: str = ""
    site: str = ""


def planned(settings: Settings, sites: list[Site]) -> list[Check]:
    """The checks the configuration calls for: every enabled site's database, and S3, D1,
    SMTP and the calendars where they are set."""
    checks = [Check("database", f"database of site {site.name}", lambda site=site: database(site), site=site.name)
              for site in sites if site.enabled]
    if settings.s3_enabled:
        checks.append(Check("s3", f"S3 bucket {settings.s3_bucket}", lambda: s3_bucket(settings), "storage"))
    if settings.d1_enabled:
        checks.append(Check("d1", "D1 fleet catalog", lambda: d1(settings), "d1"))
    if settings.value("SMTP_HOST"):
        checks.append(Check("smtp", f"SMTP server {settings.value('SMTP_HOST')}", lambda: smtp(settings), "smtp"))
    for key in CALENDAR_KEYS:
        value = str(settings.value(key))
        if value != BY_NAME[key].default:  # the defaults are known good
            checks.append(Check("calendar", key, lambda key=key, value=value: calendar(key, value), "schedules"))
    return checks

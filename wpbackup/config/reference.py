"""The settings explained: what every `.env` key and `sites.json` field means, and the
renderers that turn them into `.env.sample`, `sites.json.sample` and the reference in
docs/configuration.md.

    KEYS (settings.py: name, kind, default, bounds, choices, secret) --+
    DOCS, SECTIONS, KINDS here (section, meaning, example)            --+--> .env.sample
    sites.py's allowed keys + SITE_FIELDS, SAMPLE_SITES here          --+--> docs/configuration.md
                                                                      +--> sites.json.sample

settings.py stays the one place that says what is read and how it is checked; this module
only adds the words. After a key or a field changes, run ``python -m wpbackup.config.reference``
(``--check`` only compares); tests/test_reference.py fails while the files differ from what it
would write, so the documentation cannot drift from the code.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

from wpbackup.config.settings import ENV_FILE_VARIABLE, KEYS, MAX_VALUE, NAME_MAX, PATH_MAX, PROJECT_DIR, Key
from wpbackup.config.sites import (
    _DB_KEYS,
    _DB_LENGTHS,
    _SITE_KEYS,
    _TYPE_NAMES,
    DEFAULT_EXCLUDES,
    FROM_WP_CONFIG,
    SITE_NAME_RE,
    SOCKET_MAX,
    TABLE_PREFIX_RE,
    TABLE_SELECTIONS,
    parse_sites,
)
from wpbackup.errors import ConfigError

ENV_SAMPLE = PROJECT_DIR / ".env.sample"
SITES_SAMPLE = PROJECT_DIR / "sites.json.sample"
CONFIGURATION_DOC = PROJECT_DIR / "docs" / "configuration.md"
REGENERATE = "python -m wpbackup.config.reference"
WIDTH = 100  # of a comment line in .env.sample


@dataclass(frozen=True)
class Section:
    """A group of keys, in the order a reader (and the configure wizard) meets them."""

    id: str
    title: str
    intro: str = ""


@dataclass(frozen=True)
class KeyDoc:
    """The words for one key. ``default`` describes the default where KEYS' own value does
    not say it all (SERVER_ID: the host name); ``example`` is shown for a key without a
    default (and beside the default in the docs)."""

    section: str
    meaning: str
    example: str | None = None
    default: str | None = None


@dataclass(frozen=True)
class KindDoc:
    """How a kind of value reads in prose: its name and what it accepts (for a number or a
    choice, the Key's bounds or choices say what it accepts instead)."""

    name: str
    rule: str = ""


SECTIONS: tuple[Section, ...] = (
    Section("server", "This server"),
    Section("paths", "Where state lives",
            "Relative paths are relative to the folder holding `.env`, and so are the defaults."),
    Section("compression", "Compression"),
    Section("local", "Local copies"),
    Section("runs", "Runs"),
    Section("s3", "S3-compatible storage",
            "No `S3_*` key at all means local-only mode; any of `S3_ENDPOINT_URL`, `S3_REGION`, the access keys, "
            "`S3_PREFIX` or `S3_STORAGE_CLASS` set without `S3_BUCKET` is an error. Providers: docs/s3-storage.md."),
    Section("d1", "Cloudflare D1 fleet catalog",
            "All three of `D1_ACCOUNT_ID`, `D1_DATABASE_ID`, `D1_API_TOKEN` (sync on) or none (sync off). "
            "Setting it up: docs/cloudflare-d1.md."),
    Section("report", "Daily report e-mail",
            "`doit report` sends it once a day (docs/report.md); without `SMTP_HOST` it is written under "
            "`BACKUP_DIR/reports/` instead."),
    Section("alerts", "Alerts", "Sent through Apprise (docs/notifications.md)."),
    Section("schedules", "Schedules", "The systemd timers' `OnCalendar=` values."),
    Section("retention", "Retention", "Applied to the copies in S3 by `doit prune` (docs/backup.md)."),
    Section("deploy", "Deployment over SSH"),
    Section("monitoring", "Monitoring"),
)

#: kind -> how it reads; a kind missing here is described by its name (see kind_doc).
KINDS: dict[str, KindDoc] = {
    "int": KindDoc("whole number"),
    "hours": KindDoc("hours", "a decimal number; `nan`, `inf` and exponents are refused"),
    "choice": KindDoc("choice", "any case"),
    "text": KindDoc("text"),
    "path": KindDoc("path", f"a local path, `~` expanded; at most {PATH_MAX} bytes, each name at most {NAME_MAX}"),
    "server_id": KindDoc("name", "`^[a-z0-9][a-z0-9-]{0,62}$`"),
    "bucket": KindDoc("bucket name", "3 to 255 letters, digits, `.`, `-` or `_`"),
    "region": KindDoc("region name", "letters, digits and `-`, at most 63"),
    "storage_class": KindDoc("storage class", "upper case, like `STANDARD_IA`"),
    "prefix": KindDoc("key prefix", "outer `/` dropped; no empty, `.` or `..` segment, no backslash, "
                      "at most 512 characters"),
    "token": KindDoc("token", "printable ASCII without spaces (it travels in HTTP headers)"),
    "url": KindDoc("URL", "`http://` or `https://` with a host"),
    "urls": KindDoc("URLs", "comma-separated, each `scheme://...`"),
    "host": KindDoc("host", "a host name or address"),
    "address": KindDoc("address", "`a@example.com` or `Name <a@example.com>`"),
    "addresses": KindDoc("addresses", "comma-separated, each `a@example.com` or `Name <a@example.com>`"),
    "ssh_hosts": KindDoc("SSH hosts", "comma-separated `user@host` or `user@host:port` (port 1 to 65535); "
                         "nothing ssh could read as an option"),
    "remote_path": KindDoc("remote path", "absolute, without a `..` segment"),
    "calendar": KindDoc("calendar", "a systemd calendar expression (`OnCalendar=`, man systemd.time) such as "
                        "`daily` or `Mon..Fri 02:30`, checked with `systemd-analyze calendar` where installed"),
}

DOCS: dict[str, KeyDoc] = {
    "SERVER_ID": KeyDoc("server", "This server's name in S3 keys, the catalog, D1 and the report; an explicit "
                        "invalid value is an error, never silently changed.", "web-1",
                        default="the host name, lowercased and made valid"),
    "SITES_FILE": KeyDoc("paths", "The WordPress sites to back up (see `sites.json` below)."),
    "DB_PATH": KeyDoc("paths", "The local catalog (SQLite): every run, archive and upload of this server."),
    "BACKUP_DIR": KeyDoc("paths", "Where archives are written (mode 0700), with the runs' work files in `.work/` "
                         "and unsent reports in `reports/`."),
    "ZSTD_LEVEL": KeyDoc("compression", "zstd compression level: higher is smaller and slower."),
    "ZSTD_THREADS": KeyDoc("compression", "zstd worker threads; 0 uses every core."),
    "LOCAL_KEEP": KeyDoc("local", "Archives per site kept on local disk; an older one is deleted only once its "
                         "S3 copy is verified. In local-only mode this is the retention."),
    "STALE_RUN_HOURS": KeyDoc("runs", "An unfinished run older than this is abandoned and the site's next run "
                              "starts a new one; a younger one is resumed."),
    "BACKUP_MAX_AGE_HOURS": KeyDoc("monitoring", "A site without a success newer than this (or a server that "
                                   "wrote nothing for as long) is flagged by `doit status` and the report, and "
                                   "alerted."),
    "S3_ENDPOINT_URL": KeyDoc("s3", "The provider's S3 endpoint (iDrive E2, Backblaze B2, Wasabi, Cloudflare R2, "
                              "MinIO, ...); left out, AWS.", "https://s3.eu-central-1.idrivee2.com"),
    "S3_BUCKET": KeyDoc("s3", "The bucket archives are uploaded to; set, every archive is kept in S3 too.",
                        "wp-backups"),
    "S3_REGION": KeyDoc("s3", "The bucket's region, as the provider names it."),
    "S3_ACCESS_KEY_ID": KeyDoc("s3", "The access key. Both keys or neither: without them boto3's own credential "
                               "chain applies (environment, `~/.aws`, instance role); one without the other is "
                               "an error."),
    "S3_SECRET_ACCESS_KEY": KeyDoc("s3", "The secret key belonging to `S3_ACCESS_KEY_ID`."),
    "S3_PREFIX": KeyDoc("s3", "A prefix for every key: archives go to `[S3_PREFIX/]SERVER_ID/YYYY/MM/DD/NAME`.",
                        "backups"),
    "S3_STORAGE_CLASS": KeyDoc("s3", "The storage class every upload asks for, as the provider names it; left "
                               "out, the bucket's default.", "STANDARD_IA"),
    "S3_MAX_ATTEMPTS": KeyDoc("s3", "Attempts per S3 request: retries with backoff on errors and throttling."),
    "S3_PART_SIZE_MB": KeyDoc("s3", "Multipart part size in MiB; 0 means 8 MiB, grown as needed to stay under "
                              "10,000 parts."),
    "S3_CHECKSUM": KeyDoc("s3", "The integrity check sent with every upload: `none` (Content-MD5 only, works "
                          "everywhere) or `crc32` (x-amz-checksum-crc32 too: AWS, R2 and others that accept it, "
                          "not B2)."),
    "D1_ACCOUNT_ID": KeyDoc("d1", "The Cloudflare account holding the D1 database."),
    "D1_DATABASE_ID": KeyDoc("d1", "The D1 database of the fleet catalog (its UUID)."),
    "D1_API_TOKEN": KeyDoc("d1", "An API token allowed to edit that D1 database, and nothing more."),
    "D1_API_BASE": KeyDoc("d1", "The Cloudflare API's base URL (the tests point it at a local server)."),
    "SMTP_HOST": KeyDoc("report", "The mail server the daily report is sent through; it needs `REPORT_TO`.",
                        "smtp.example.com"),
    "SMTP_PORT": KeyDoc("report", "The mail server's port.", default="587, or 465 with `SMTP_SECURITY=ssl`"),
    "SMTP_USERNAME": KeyDoc("report", "The login at the mail server; left out, no login is tried. Needs "
                            "`SMTP_HOST`."),
    "SMTP_PASSWORD": KeyDoc("report", "The password of `SMTP_USERNAME`."),
    "SMTP_SECURITY": KeyDoc("report", "`starttls` (encrypt after connecting, usually port 587), `ssl` (TLS from "
                            "the start, usually 465) or `none` (plain text: no login is sent over a network "
                            "then)."),
    "REPORT_FROM": KeyDoc("report", "The report's sender.", "backups@example.com",
                          default="`SMTP_USERNAME` when it is an address, else `wordpress-backup@` and this "
                                  "host's name"),
    "REPORT_TO": KeyDoc("report", "The report's recipients, comma-separated.", "ops@example.com"),
    "KEEP_DAILY": KeyDoc("retention", "Daily archives kept per site (the newest of each day)."),
    "KEEP_WEEKLY": KeyDoc("retention", "Weekly archives kept per site (the newest of each ISO week)."),
    "KEEP_MONTHLY": KeyDoc("retention", "Monthly archives kept per site (the newest of each month)."),
    "BACKUP_ON_CALENDAR": KeyDoc("schedules", "When the backup timer runs `doit backup`."),
    "REPORT_ON_CALENDAR": KeyDoc("schedules", "When the report timer runs `doit report`."),
    "VERIFY_ON_CALENDAR": KeyDoc("schedules", "When the verify timer restores every site's latest archive into "
                                 "scratch space to prove it can be restored."),
    "DEPLOY_HOSTS": KeyDoc("deploy", "The servers `doit deploy` installs this folder on.",
                           "deploy@web-1.example.com,deploy@web-2.example.com:2222"),
    "DEPLOY_PATH": KeyDoc("deploy", "Where on those servers the install goes."),
    "DEPLOY_SSH_KEY": KeyDoc("deploy", "The private key ssh logs in with; left out, ssh's own choice.",
                             "~/.ssh/wpbackup_deploy"),
    "DEPLOY_KNOWN_HOSTS": KeyDoc("deploy", "The known_hosts file the servers' host keys are always checked "
                                 "against.", default="the user's `~/.ssh/known_hosts`"),
    "HEALTHCHECK_URL": KeyDoc("monitoring", "Pinged at `/start` when a backup begins, then on success or at "
                              "`/fail` (healthchecks.io style; docs/notifications.md). A ping that fails is "
                              "named by scheme and host only: the path is the check's key.",
                              "https://hc-ping.com/your-check-uuid"),
    "NOTIFY_URLS": KeyDoc("alerts", "Apprise URLs, comma-separated, alerted at once when a backup fails or is "
                          "incomplete, a verify fails or a site goes stale. Quote the value when one holds `#`.",
                          "ntfys://ntfy.sh/your-hard-to-guess-topic"),
    "NOTIFY_ON": KeyDoc("alerts", "`failure`, or `all` to be told of every successful backup too."),
}


@dataclass(frozen=True)
class SiteField:
    """One sites.json field: where it sits (``db.port`` is ``port`` inside ``db``), its
    default (None: required) and meaning. Its type comes from sites.py's allowed keys."""

    name: str
    default: str | None
    meaning: str


def _longest(regex: re.Pattern) -> str:
    """The N of a pattern ending in {1,N}: the longest value it accepts."""
    return regex.pattern.rsplit(",", 1)[-1].rstrip("}")


def _lengths(*keys: str) -> str:
    return ", ".join(str(_DB_LENGTHS[key]) for key in keys)


SITE_FIELDS: tuple[SiteField, ...] = (
    SiteField("name", None, f"Unique, `^{SITE_NAME_RE.pattern}$` matched whole (`\"blog\\n\"` is refused): part of "
              "file names and S3 keys."),
    SiteField("path", None, "Absolute path of the WordPress root (holding `wp-load.php` and `wp-content/`); no "
              f"`..`, control character or NUL; at most {PATH_MAX} bytes, each name at most {NAME_MAX}."),
    SiteField("enabled", "`true`", "`false` keeps the site configured but out of `doit backup`."),
    SiteField("files", '`"wp-content"`', '`"wp-content"`, or `"all"` for the whole WordPress root.'),
    SiteField("exclude", "`[]`", "Glob patterns relative to `path` (no leading `/`, no `..`), skipped on top of "
              "the default excludes; a match excludes the folder below it too."),
    SiteField("db", "from `wp-config.php`", "How to reach the site's database: each key left out (or `null`) "
              "is read from the site's `wp-config.php`."),
    SiteField("db.name", None, f"The database; not empty, no control character, at most {_lengths('name')}."),
    SiteField("db.user", None, f"The database user; same rules, at most {_lengths('user')}."),
    SiteField("db.password", None, "No NUL or line break (no client option file can carry them), at most "
              f"{_lengths('password')} characters; never shown in a message."),
    SiteField("db.host", None, f"A host name or address, also `host:port` or `host:/path/to.sock` as in "
              f"`DB_HOST`; at most {_lengths('host')} characters."),
    SiteField("db.port", "from `DB_HOST`, else 3306", "1 to 65535."),
    SiteField("db.socket", None, f"The server's unix socket: an absolute path of at most {SOCKET_MAX} bytes."),
    SiteField("db.table_prefix", None, f"Letters, digits and `_`, at most {_longest(TABLE_PREFIX_RE)}, as "
              "WordPress requires."),
    SiteField("db.tables", "detected", " or ".join(f"`{choice}`" for choice in TABLE_SELECTIONS) + ": the "
              "whole database, or only this site's tables. Left out: the whole database, unless it also "
              "holds another WordPress install."),
)


# --- what the renderers share ---------------------------------------------------------------

def kind_doc(kind: str) -> KindDoc:
    """How a kind reads; an unknown one (added to settings.py since) by its name."""
    return KINDS.get(kind) or KindDoc(kind.replace("_", " "))


def key_doc(key: Key) -> KeyDoc:
    """A key's words; an undocumented key still renders (the tests then fail, naming it)."""
    return DOCS.get(key.name) or KeyDoc("other", "(not documented yet: add it to DOCS in "
                                                 "wpbackup/config/reference.py)")


def grouped() -> list[tuple[Section, list[Key]]]:
    """Every key of KEYS under its section, in SECTIONS' order and then KEYS' order; keys
    of an unknown section (or none) come last, under "Other"."""
    known = {section.id for section in SECTIONS}
    sections = list(SECTIONS) + [Section("other", "Other")]
    groups = [(section, [key for key in KEYS if key_doc(key).section == section.id
                         or (section.id == "other" and key_doc(key).section not in known)])
              for section in sections]
    return [(section, keys) for section, keys in groups if keys]


def env_text(value: object) -> str:
    """A typed value (a default) as it is written in `.env`."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (tuple, list)):
        return ",".join(str(item) for item in value)
    return str(value)


def env_quoted(text: str) -> str:
    """A value as a `.env` line carries it: quoted where dotenv would cut it short (a `#`
    starts a comment) or change it."""
    if text and (re.search(r"[#'\"\\]", text) or text != text.strip()):
        return "'" + text + "'" if "'" not in text else '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def bounds(key: Key) -> str:
    """What a key accepts (Markdown), from its bounds or choices, else from its kind."""
    if key.choices:
        return ", ".join(f"`{choice}`" for choice in key.choices) + f" ({kind_doc(key.kind).rule or 'any case'})"
    if key.low is not None and key.high is not None:
        span = (f"more than {key.low:g}, at most {key.high:g}" if key.kind == "hours"
                else f"{key.low:g} to {key.high:g}")
        auto = f"{key.auto:g} (automatic) or " if key.auto is not None else ""
        return auto + span
    return kind_doc(key.kind).rule


def shown_default(key: Key) -> str:
    """The default as a reader should understand it (Markdown)."""
    words = key_doc(key).default
    if words:
        return words
    return f"`{env_text(key.default)}`" if key.default is not None else "none"


def _for_sample(text: str) -> str:
    """Markdown-flavoured words as a plain comment reads them: `code` loses its backticks,
    but bare punctuation (`.`, `..`, `~`) is quoted so that it still reads as a literal."""
    return re.sub(r"`([^`]*)`", lambda m: m[1] if re.search(r"[A-Za-z0-9]", m[1]) else f"'{m[1]}'", text)


def _for_markdown(text: str) -> str:
    """Words as a table cell shows them: `docs/x.md` becomes a link, `|` is escaped."""
    text = re.sub(r"docs/([a-z0-9-]+\.md)", r"[\1](\1)", text)
    return text.replace("|", "\\|")


# --- .env.sample ------------------------------------------------------------------------------

SAMPLE_HEADER = f"""\
# wordpress-backup settings: copy to .env (or point {ENV_FILE_VARIABLE} at another file) and edit.
# Generated by `{REGENERATE}` from the keys in wpbackup/config/settings.py and
# their words in wpbackup/config/reference.py: edit those, not this file (docs/configuration.md
# explains every key too).
#
# Every key is optional: `#KEY=value` shows its default or, for a key without one, an example.
# An empty value means the default; variables set in the process environment win over the file.
# A .env holds secrets: keep it mode 0600.
"""


def _comment(text: str) -> list[str]:
    return textwrap.wrap(_for_sample(text), WIDTH - 2, initial_indent="# ", subsequent_indent="# ",
                         break_on_hyphens=False, break_long_words=False)


def _rule_line(key: Key) -> str:
    """The second comment line of a key: what it accepts, then its default when the
    `#KEY=` line below cannot show it."""
    kind, rule = kind_doc(key.kind), bounds(key)
    line = kind.name[0].upper() + kind.name[1:] + (f": {rule}" if rule else "")
    line += "" if _for_sample(line).endswith(".") else "."
    doc = key_doc(key)
    if doc.default:
        line += f" Default: {doc.default}."
    elif key.default is None:
        line += " Default: none."
    if key.secret:
        line += " A secret: never shown in a message."
    return line


def sample_key(key: Key) -> list[str]:
    """One key's lines in .env.sample: its meaning, what it accepts, the commented line."""
    doc = key_doc(key)
    value = env_text(key.default) if key.default is not None else (doc.example or "")
    return _comment(doc.meaning) + _comment(_rule_line(key)) + [f"#{key.name}={env_quoted(value)}"]


def render_env_sample() -> str:
    """The whole .env.sample: the header, then every section and key."""
    lines = SAMPLE_HEADER.splitlines()
    for section, keys in grouped():
        title = f"# --- {section.title} "
        lines += ["", "", title + "-" * max(3, WIDTH - len(title))]
        lines += _comment(section.intro) if section.intro else []
        for key in keys:
            lines += [""] + sample_key(key)
    return "\n".join(lines) + "\n"


# --- sites.json.sample -----------------------------------------------------------------------

#: The sample's sites, simplest first: a first-time user copies the first entry and changes its
#: path. None carries database credentials: a `db` value given here overrides the site's
#: wp-config.php, so a placeholder password would break a login that works (issue 16).
SAMPLE_SITES: tuple[dict, ...] = (
    {"name": "blog", "path": "/var/www/blog"},
    {"name": "shop", "path": "/var/www/shop/public", "files": "all", "exclude": ["wp-content/cache", "exports"]},
    {"name": "old-blog", "path": "/var/www/old-blog", "enabled": False, "db": {"tables": "prefix"}},
)


def _sample_entry(entry: dict) -> str:
    """One site as the sample shows it: a key per line, a list or object kept on its line."""
    keys = [f'      {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}' for key, value in entry.items()]
    return "    {\n" + ",\n".join(keys) + "\n    }"


def render_sites_sample() -> str:
    """sites.json.sample: SAMPLE_SITES as a sites.json that every run accepts (checked here
    with sites.py's own validation, so a sample that would not load is never written)."""
    text = '{\n  "sites": [\n' + ",\n".join(_sample_entry(entry) for entry in SAMPLE_SITES) + "\n  ]\n}\n"
    parse_sites(json.loads(text), str(SITES_SAMPLE))
    return text


# --- docs/configuration.md ----------------------------------------------------------------------

def generated_note(source: str) -> str:
    """The comment opening a generated block, saying where its words come from."""
    return (f"<!-- Generated by `{REGENERATE}` from {source} and wpbackup/config/reference.py: "
            "edit those, then run it. -->")


def _markdown_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def key_row(key: Key) -> str:
    doc = key_doc(key)
    meaning = doc.meaning
    if doc.example:
        meaning += f" Example: `{doc.example}`."
    if key.secret:
        meaning += " A secret: never shown in a message."
    accepts = bounds(key) or kind_doc(key.kind).name
    cells = [f"`{key.name}`", shown_default(key), accepts, meaning]
    return _markdown_row([_for_markdown(cell) for cell in cells])


def render_keys_reference() -> str:
    """The `.env` reference: one table per section."""
    lines = [generated_note("KEYS in wpbackup/config/settings.py")]
    for section, keys in grouped():
        lines += ["", f"#### {section.title}", ""]
        lines += [_for_markdown(section.intro), ""] if section.intro else []
        lines += [_markdown_row(["key", "default", "accepts", "meaning"]), "| --- | --- | --- | --- |"]
        lines += [key_row(key) for key in keys]
    lines += ["", f"Every value: at most {MAX_VALUE} characters, valid UTF-8, no control character (a line "
                  "break, a tab, a NUL); spaces and tabs around it are trimmed."]
    return "\n".join(lines)


def site_field_type(name: str) -> str:
    """A field's JSON type, from the keys sites.py allows (a db key may also be null)."""
    spec = _DB_KEYS if name.startswith("db.") else _SITE_KEYS
    expected = spec.get(name.removeprefix("db."))
    words = _TYPE_NAMES.get(expected, "?") if expected else "?"
    words = re.sub(r"^an? ", "", words) + (" of strings" if expected is list else "")
    return words + (" or null" if name.startswith("db.") else "")


def site_field_default(field: SiteField) -> str:
    """Required, the written default, or what wp-config.php gives it."""
    key = field.name.removeprefix("db.")
    if field.name.startswith("db.") and key in FROM_WP_CONFIG and field.default is None:
        const = FROM_WP_CONFIG[key]
        fallback = " (else `wp_`)" if key == "table_prefix" else ""
        return f"`{'$' + const if key == 'table_prefix' else const}` from `wp-config.php`{fallback}"
    if field.name.startswith("db.") and field.default is None:
        return "from `DB_HOST`" if key == "socket" else "none"
    if field.default is None:
        return "required"
    return field.default


def render_sites_reference() -> str:
    """The sites.json reference: one row per field, then the default excludes."""
    lines = [generated_note("the allowed keys in wpbackup/config/sites.py"), "",
             _markdown_row(["field", "type", "default", "meaning"]),
             "| --- | --- | --- | --- |"]
    lines += [_markdown_row([f"`{f.name}`", site_field_type(f.name), site_field_default(f),
                             _for_markdown(f.meaning)]) for f in SITE_FIELDS]
    excludes = ", ".join(f"`{pattern}`" for pattern in DEFAULT_EXCLUDES)
    lines += ["", f"Default excludes, always applied: {excludes}."]
    return "\n".join(lines)


# --- checks and writing ---------------------------------------------------------------------------

def undocumented() -> list[str]:
    """What the words here miss or invent, one line each (empty when complete)."""
    names = {key.name for key in KEYS}
    sections = {section.id for section in SECTIONS}
    problems = [f"{name}: in KEYS but not documented: add it to DOCS in wpbackup/config/reference.py"
                for name in sorted(names - DOCS.keys())]
    problems += [f"{name}: documented in DOCS but not a key of KEYS in wpbackup/config/settings.py"
                 for name in sorted(DOCS.keys() - names)]
    problems += [f"{name}: section {doc.section!r} is none of SECTIONS" for name, doc in DOCS.items()
                 if doc.section not in sections]
    fields = {f.name for f in SITE_FIELDS}
    allowed = set(_SITE_KEYS) | {f"db.{key}" for key in _DB_KEYS}
    problems += [f"sites.json {name}: allowed by sites.py but not in SITE_FIELDS" for name in sorted(allowed - fields)]
    problems += [f"sites.json {name}: in SITE_FIELDS but not allowed by sites.py" for name in sorted(fields - allowed)]
    return problems


BLOCKS = {"keys": render_keys_reference, "sites": render_sites_reference}


def replace_block(text: str, name: str, content: str, source: str) -> str:
    """``text`` with what lies between <!-- NAME:begin --> and <!-- NAME:end --> replaced."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise ValueError(f"{source}: needs exactly one {begin} followed by one {end}")
    head, rest = text.split(begin)
    _, tail = rest.split(end)
    return f"{head}{begin}\n{content}\n{end}{tail}"


def render_configuration_doc(current: str, source: str = "docs/configuration.md") -> str:
    """docs/configuration.md with its generated blocks brought up to date, the prose kept."""
    for name, render in BLOCKS.items():
        current = replace_block(current, name, render(), source)
    return current


def expected_files() -> dict[Path, str]:
    """Each generated file and the text it must hold now."""
    return {ENV_SAMPLE: render_env_sample(),
            SITES_SAMPLE: render_sites_sample(),
            CONFIGURATION_DOC: render_configuration_doc(CONFIGURATION_DOC.read_text(encoding="utf-8"),
                                                        str(CONFIGURATION_DOC))}


def diff(path: Path, want: str, limit: int = 40) -> str:
    """The first lines of what regenerating would change in ``path``."""
    have = path.read_text(encoding="utf-8") if path.exists() else ""
    lines = list(difflib.unified_diff(have.splitlines(), want.splitlines(), str(path), "generated", lineterm=""))
    return "\n".join(lines[:limit] + (["..."] if len(lines) > limit else []))


def main(argv: list[str] | None = None) -> int:
    """Write (or with --check, compare) .env.sample, sites.json.sample and docs/configuration.md."""
    parser = argparse.ArgumentParser(prog=REGENERATE, description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only say whether the files are up to date")
    args = parser.parse_args(argv)
    problems = undocumented()
    try:
        files = expected_files()
    except (OSError, ValueError) as exc:
        problems.append(str(exc))
    except ConfigError as exc:  # SAMPLE_SITES no longer passes sites.py's validation
        problems += exc.problems
    if problems:
        print("\n".join(f"reference: {problem}" for problem in problems), file=sys.stderr)
        return 1
    stale = [path for path, text in files.items()
             if not path.exists() or path.read_text(encoding="utf-8") != text]
    for path in stale:
        if args.check:
            print(f"{path}: out of date: run `{REGENERATE}`", file=sys.stderr)
        else:
            path.write_text(files[path], encoding="utf-8")
            print(f"wrote {path}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())

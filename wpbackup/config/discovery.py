"""Finding the WordPress sites on this machine, so a first backup needs no sites.json written
by hand (and `doit configure --discover` can add the sites that appeared since).

    roots (/var/www, /srv/www, ... or $WPBACKUP_DISCOVER_ROOTS)
      -> each a few levels deep: a folder holding wp-includes/ or wp-content/ whose
         wp-config.php WordPress would load (in it or in its parent) is a site
      -> Found(name, path, db_name, db_ok, problem)  -> sites.json entries {name, path}

The walk never follows a link out of its root, never goes into wp-content (a copy of a site
in there is no site of its own) or into a site it found, and reads wp-config.php without
running PHP. The database check logs in with the site's own settings through a 0600 option
file, like every backup does; no password ever reaches a message.
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from wpbackup.config.sites import SITE_NAME_RE, DbSettings, Site, load_sites, read_sites_document, save_sites
from wpbackup.config.wpconfig import MAX_WP_CONFIG, find_wp_config, parse_wp_config, php_tokens
from wpbackup.errors import BackupError, ConfigError

DEFAULT_ROOTS = ("/var/www", "/srv/www", "/srv", "/home/*/public_html", "/usr/share/nginx")
#: Roots to search instead of DEFAULT_ROOTS, separated by ':' (globs allowed); read only when
#: discover() is given no roots, so a test or an unusual machine can point the first run at
#: its own folders.
ROOTS_VARIABLE = "WPBACKUP_DISCOVER_ROOTS"
MAX_DEPTH = 4
CONNECT_TIMEOUT = 5  # seconds the client waits for the server
CHECK_TIMEOUT = 20  # seconds the whole login check may take
#: Never searched: WordPress' own folders (a site's uploads can hold a copy of another
#: site, which is no site of its own), and places no site lives in.
SKIPPED = frozenset({"wp-content", "wp-admin", "wp-includes", "node_modules", "lost+found"})
#: Folder names that say nothing about which site it is: the name comes from the folder
#: above, or from the site's URL.
GENERIC = frozenset({"public", "public_html", "htdocs", "httpdocs", "html", "www", "web", "webroot",
                     "docroot", "wordpress", "wp", "current", "root", "http", "https"})
#: Folder names a walk up for a name stops at: the system's, not a site's.
SYSTEM = frozenset({"", "var", "srv", "home", "usr", "share", "nginx", "opt", "data"})
_URL_CONSTANTS = ("WP_HOME", "WP_SITEURL")


@dataclass
class Found:
    """One WordPress install found on disk."""

    name: str  # proposed site name: valid and unique among the found ones and `taken`
    path: Path  # the WordPress root (holds wp-includes/ or wp-content/)
    db_name: str | None  # DB_NAME from wp-config.php (never the password)
    db_ok: bool | None  # the database login works (None: not checked)
    problem: str = ""  # why not, one line without any secret


def default_roots() -> tuple[str, ...]:
    """$WPBACKUP_DISCOVER_ROOTS (':'-separated) if set and not empty, else DEFAULT_ROOTS."""
    value = os.environ.get(ROOTS_VARIABLE, "")
    given = tuple(part for part in value.split(os.pathsep) if part.strip())
    return given or DEFAULT_ROOTS


def _is_glob(text: str) -> bool:
    return any(char in text for char in "*?[")


def _expand(root: str | Path) -> list[Path]:
    """A root as folders: a glob gives every folder it matches (sorted), a plain path itself."""
    text = str(root)
    if _is_glob(text):
        return [Path(match) for match in sorted(glob.glob(text)) if os.path.isdir(match)]
    return [Path(text)]


def looked_in(roots: Sequence[str | Path] | None = None) -> str:
    """'looked in /var/www, /srv/www (missing), ...': where a search found nothing, said so
    that the operator sees which roots even exist."""
    parts = []
    for root in default_roots() if roots is None else roots:
        text = str(root)
        if _is_glob(text):
            count = len(_expand(text))
            parts.append(text if count else f"{text} (no match)")
        elif not os.path.lexists(text):
            parts.append(f"{text} (missing)")
        elif not os.path.isdir(text):
            parts.append(f"{text} (not a folder)")
        elif not os.access(text, os.R_OK | os.X_OK):
            parts.append(f"{text} (not readable)")
        else:
            parts.append(text)
    return "looked in " + ", ".join(parts)


def is_wordpress(path: Path) -> bool:
    """True when ``path`` is a WordPress root: wp-includes/ or wp-content/ in it, and a
    wp-config.php where WordPress looks for one (in it, or in its parent)."""
    try:
        if not ((path / "wp-includes").is_dir() or (path / "wp-content").is_dir()):
            return False
        return find_wp_config(path) is not None
    except OSError:
        return False


def _inside(path: str, real_root: str) -> bool:
    real = os.path.realpath(path)
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def _subfolders(folder: Path, real_root: str) -> list[Path]:
    """The folders in ``folder`` worth a look, sorted: no hidden or SKIPPED ones, and a link
    only when it leads to a place inside the root."""
    found = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith(".") or entry.name in SKIPPED:
                    continue
                try:
                    if not entry.is_dir():  # follows a link: checked against the root below
                        continue
                    if entry.is_symlink() and not _inside(entry.path, real_root):
                        continue
                except OSError:
                    continue
                found.append(Path(entry.path))
    except OSError:  # unreadable folders are passed over, like `find` does
        return []
    return sorted(found)


def site_folders(root: Path, max_depth: int = MAX_DEPTH, seen: set[str] | None = None) -> Iterator[Path]:
    """Every WordPress root under ``root`` (the root itself included), up to ``max_depth``
    levels down, in sorted order. ``seen`` holds the real paths already searched (shared
    between roots such as /srv and /srv/www, so no site is found twice)."""
    seen = set() if seen is None else seen
    real_root = os.path.realpath(root)
    stack = [(root, 0)]
    while stack:
        folder, depth = stack.pop()
        real = os.path.realpath(folder)
        if real in seen:
            continue
        seen.add(real)
        if is_wordpress(folder):
            yield folder  # and never into it: its subfolders are this site's
            continue
        if depth < max_depth:
            stack.extend((child, depth + 1) for child in reversed(_subfolders(folder, real_root)))


def valid_name(text: str) -> str:
    """``text`` made a valid site name (lower case, accents dropped, anything else '-'), or
    '' when nothing usable is left."""
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
    name = re.sub(r"[^a-z0-9._-]+", "-", plain)
    name = re.sub(r"^[^a-z0-9]+", "", name)[:63]
    return name.rstrip("-._") or name


def unique_name(name: str, taken: set[str]) -> str:
    """``name``, or ``name-2``, ``name-3``... (cut to stay valid) when it is taken."""
    if name not in taken:
        return name
    number = 2
    while True:
        suffix = f"-{number}"
        candidate = name[:63 - len(suffix)].rstrip("-._") + suffix
        if candidate not in taken:
            return candidate
        number += 1


def folder_name(path: Path) -> str | None:
    """The name a site's folders give: its own, or the one above when it is a generic
    one like public_html or htdocs (up to two levels, never a system folder such as /var)."""
    for part in (path.name, path.parent.name, path.parent.parent.name):
        if part.lower() in SYSTEM:
            return None
        if part.lower() not in GENERIC and (name := valid_name(part)):
            return name
    return None


def url_name(url: str) -> str | None:
    """A site name from its URL: the host without 'www.', and its path if any
    ('https://www.example.com/blog' -> 'example.com-blog')."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    try:
        host = (parts.hostname or "").removeprefix("www.")
    except ValueError:
        return None
    path = "-".join(piece for piece in parts.path.split("/") if piece)
    return valid_name(f"{host}-{path}" if path else host) or None


def _simple_string(text: str) -> str | None:
    """The value of a quoted PHP string token without escapes or interpolation, else None."""
    body = text[1:-1]
    return None if "\\" in body or "$" in body else body


def config_urls(config: Path) -> dict[str, str]:
    """WP_HOME and WP_SITEURL when wp-config.php defines them as plain strings."""
    try:
        with open(config, "rb") as handle:
            data = handle.read(MAX_WP_CONFIG)
    except OSError:
        return {}
    tokens = php_tokens(data.decode("utf-8", "surrogateescape"))
    found: dict[str, str] = {}
    for index in range(len(tokens) - 5):
        window = tokens[index:index + 6]
        if (window[0].kind == "name" and window[0].text.lstrip("\\").lower() == "define"
                and [t.text for t in window[1::2]] == ["(", ",", ")"]
                and window[2].kind in ("single", "double") and window[4].kind in ("single", "double")):
            name, value = _simple_string(window[2].text), _simple_string(window[4].text)
            if name in _URL_CONSTANTS and value:
                found.setdefault(name, value)
    return found


def _mysql():
    """The database room's client module. That room sits above this one (it imports config),
    so it is imported where a login is checked: the config room stays importable alone."""
    from wpbackup.database import mysql

    return mysql


def _client_argv(options: str, db: DbSettings, sql: str) -> list[str]:
    return [_mysql().client_binary(), f"--defaults-file={options}", f"--connect-timeout={CONNECT_TIMEOUT}",
            "--batch", "--skip-column-names", "--raw", "-e", sql, "--", db.name]


def _query(options: str, db: DbSettings, sql: str) -> list[str]:
    """One query's output lines, or a BackupError saying why (never with the password)."""
    mysql = _mysql()
    try:
        result = subprocess.run(_client_argv(options, db, sql), capture_output=True, text=True,
                                timeout=CHECK_TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise BackupError(f"database server at {mysql.where(db)} did not answer within {CHECK_TIMEOUT}s") from None
    if result.returncode != 0:
        raise mysql.explain(result.stderr, db, "log in to the database")
    return result.stdout.splitlines()


def check_login(db: DbSettings, want_url: bool = False) -> tuple[bool | None, str, str | None]:
    """(works, why not, the site's URL from its options table when ``want_url``): a real
    `SELECT 1` with the site's own login, through a 0600 option file, with a short timeout;
    works is None when no database client is installed to try with."""
    mysql = _mysql()
    try:
        mysql.client_binary()
    except BackupError as exc:
        return None, str(exc), None
    try:
        with mysql.option_file(db) as options:
            if _query(options, db, "SELECT 1") != ["1"]:
                return False, "the server did not answer SELECT 1 with 1", None
            url = None
            if want_url:
                table = mysql.quote_identifier(f"{db.table_prefix}options")
                try:
                    rows = _query(options, db, f"SELECT option_value FROM {table} WHERE option_name "
                                               "IN ('home', 'siteurl') ORDER BY option_name = 'home' DESC")
                    url = rows[0] if rows else None
                except BackupError:  # no options table yet: the login works all the same
                    pass
            return True, "", url
    except BackupError as exc:
        return False, _one_line(str(exc), db), None
    except OSError as exc:  # no room for the option file, or the client cannot start
        return False, f"cannot run the database client: {exc.strerror or exc}", None


def _one_line(text: str, db: DbSettings | None = None) -> str:
    if db is not None and db.password:
        text = text.replace(db.password, "***")
    line = " ".join(text.split())
    return line if len(line) <= 300 else line[:297] + "..."


def _database(path: Path, config: Path | None) -> tuple[str | None, DbSettings | None, str]:
    """DB_NAME from the site's wp-config.php, the login it configures, and why there is none
    (a value this tool does not guess, such as a password computed by PHP)."""
    db_name = None
    if config is not None:
        try:
            db_name = parse_wp_config(config).values.get("DB_NAME")
        except BackupError:  # unreadable: Site.database below says so
            pass
    try:
        return db_name, Site(name="found", path=path).database(), ""
    except BackupError as exc:
        return db_name, None, _one_line(str(exc).removeprefix("site found: "))


def _inspect(path: Path, check_db: bool, taken: set[str]) -> Found:
    """One found site: its database, whether the login works, and a name nobody has yet."""
    config = find_wp_config(path)
    db_name, db, problem = _database(path, config)
    db_ok: bool | None = None
    urls = config_urls(config) if config else {}
    name = folder_name(path) or next((n for c in _URL_CONSTANTS if c in urls and (n := url_name(urls[c]))), None)
    url = None
    if check_db and db is not None:
        db_ok, problem, url = check_login(db, want_url=name is None)
    name = name or (url_name(url) if url else None) or valid_name(path.name) or "wordpress"
    name = unique_name(name if SITE_NAME_RE.fullmatch(name) else "wordpress", taken)
    taken.add(name)
    return Found(name, path, db_name, db_ok, problem)


def discover(roots: Sequence[str | Path] | None = None, *, max_depth: int = MAX_DEPTH, check_db: bool = True,
             taken: Iterable[str] = ()) -> list[Found]:
    """The WordPress sites under ``roots`` (default: $WPBACKUP_DISCOVER_ROOTS, else
    DEFAULT_ROOTS), in the order of the roots, each found once (the same folder reached from
    two roots, or through a link, counts once). Names avoid ``taken`` (the configured ones)."""
    names = set(taken)
    seen: set[str] = set()
    found = []
    for root in default_roots() if roots is None else roots:
        for folder in _expand(root):
            for path in site_folders(folder, max_depth, seen):
                found.append(_inspect(path, check_db, names))
    return found


def site_entry(found: Found) -> dict:
    """The sites.json entry of a found site: its name and path, nothing more (the database
    settings stay in wp-config.php, where the site itself reads them)."""
    return {"name": found.name, "path": str(found.path)}


def describe(found: Found) -> str:
    """One line per found site for a person: name, path, database and whether it works."""
    database = f"database {found.db_name}" if found.db_name else "database unknown"
    if found.db_ok:
        state = "login works"
    elif found.problem:
        state = found.problem
    else:
        state = "login not checked"
    return f"{found.name}: {found.path} ({database}: {state})"


def nothing_found(sites_file: Path, roots: Sequence[str | Path] | None = None) -> list[str]:
    """What a first run that found no site says: where it looked, and the two ways to go on."""
    return [
        f"{sites_file}: not found, and no WordPress site was found to back up "
        f"({looked_in(roots)}; up to {MAX_DEPTH} levels deep)",
        f"to search elsewhere: {ROOTS_VARIABLE}=/path/to/sites ./run.sh backup "
        "(folders separated by ':')",
        f"or describe your sites yourself: copy sites.json.sample to {sites_file} and give each "
        "site's name and path (the WordPress root, the folder holding wp-content)",
    ]


def first_run(sites_file: Path, roots: Sequence[str | Path] | None = None) -> list[Found]:
    """No sites.json at all: find the sites and write a sites.json listing them (0600). A
    ConfigError when none is found (nothing is written then), a BackupError when the file
    cannot be written."""
    found = discover(roots)
    if not found:
        raise ConfigError(nothing_found(sites_file, roots))
    save_sites(sites_file, {"sites": [site_entry(site) for site in found]})
    return found


def refresh(sites_file: Path, found: list[Found]) -> tuple[list[str], list[str]]:
    """For `doit configure --discover`: add the found sites sites.json does not have yet (by
    their real path; enabled, with a name not taken) and write it atomically (0600, the
    previous file as sites.json.bak); nothing is written when nothing is new. Returns the
    added names and the vanished ones: configured sites whose path no longer holds a
    WordPress, which are left as they are (a site moved away is the operator's call)."""
    exists = os.path.lexists(sites_file)
    configured = load_sites(sites_file) if exists else []
    document = read_sites_document(sites_file) if exists else {"sites": []}
    known = {os.path.realpath(site.path) for site in configured}
    names = {site.name for site in configured}
    added = []
    for site in found:
        if os.path.realpath(site.path) in known:
            continue
        entry = site_entry(site)
        entry["name"] = unique_name(entry["name"], names)
        document["sites"].append(entry)
        names.add(entry["name"])
        known.add(os.path.realpath(site.path))
        added.append(entry["name"])
    if added:
        save_sites(sites_file, document)
    vanished = [site.name for site in configured if not is_wordpress(site.path)]
    return added, vanished

"""Reading a WordPress install the way WordPress does: wp-config.php (in the root, else its
parent folder), the DB_* constants, $table_prefix, and the core version.

We parse PHP text with regular expressions instead of running PHP: the backup host may have
no php-cli, and executing a site's config just to read five constants is a risk we don't need.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .errors import BackupError

_STRING = r"""(?:'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)")"""
_DEFINE_RE = re.compile(r"define\s*\(\s*" + _STRING + r"\s*,\s*" + _STRING + r"\s*(?:,[^)]*)?\)", re.S)
_PREFIX_RE = re.compile(r"\$table_prefix\s*=\s*" + _STRING + r"\s*;")
_VERSION_RE = re.compile(r"\$wp_version\s*=\s*" + _STRING + r"\s*;")
# strings are matched (and kept) so that '//' or '/*' inside a value is not taken for a comment
_STRINGS_OR_COMMENTS_RE = re.compile(r"""('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")|/\*.*?\*/|//[^\n]*|#[^\n]*""", re.S)


@dataclass(frozen=True)
class DbHost:
    """Where MySQL listens: a TCP host and port, or a unix socket."""

    host: str = "localhost"
    port: int | None = None
    socket: str | None = None


def _unquote(single: str | None, double: str | None) -> str:
    if single is not None:
        return re.sub(r"\\([\\'])", r"\1", single)
    return re.sub(r"\\(.)", r"\1", double or "")


def find_wp_config(root: Path) -> Path | None:
    """wp-config.php in the root, else in the parent (if that one is not another site's root).

    The parent is that of the root's real location: WordPress looks in dirname(ABSPATH), and
    ABSPATH comes from PHP's __DIR__, which is resolved (a `current -> releases/5` root finds
    releases/wp-config.php, not the one beside `current`)."""
    own = root / "wp-config.php"
    if own.is_file():
        return own
    parent = root.resolve().parent
    if (parent / "wp-config.php").is_file() and not (parent / "wp-settings.php").exists():
        return parent / "wp-config.php"
    return None


def parse_wp_config(path: Path) -> dict[str, str]:
    """Return DB_NAME, DB_USER, DB_PASSWORD, DB_HOST, DB_CHARSET and table_prefix found."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise BackupError(f"cannot read {path}: {exc.strerror}") from None
    code = _STRINGS_OR_COMMENTS_RE.sub(lambda m: m.group(1) or "", text)
    found: dict[str, str] = {}
    for match in _DEFINE_RE.finditer(code):
        name = _unquote(match.group(1), match.group(2))
        if name.startswith("DB_"):
            found.setdefault(name, _unquote(match.group(3), match.group(4)))
    prefix = _PREFIX_RE.search(code)
    if prefix:
        found["table_prefix"] = _unquote(prefix.group(1), prefix.group(2))
    return found


def parse_db_host(value: str) -> DbHost:
    """Split DB_HOST as WordPress does: host, host:port, host:/socket, [v6]:port, /socket."""
    value = value.strip() or "localhost"
    if value.startswith("/"):
        return DbHost("localhost", None, value)
    if value.startswith("["):
        end = value.find("]")
        host, rest = value[1:end], value[end + 1:]
        port = rest[1:] if rest.startswith(":") else ""
        return DbHost(host, int(port) if port.isdigit() else None, None)
    if value.count(":") == 1:
        host, tail = value.split(":", 1)
        host = host or "localhost"
        if tail.startswith("/"):
            return DbHost(host, None, tail)
        if tail.isdigit():
            return DbHost(host, int(tail), None)
        raise BackupError(f"DB_HOST {value!r}: port {tail!r} is not a number")
    return DbHost(value, None, None)


def wordpress_version(root: Path) -> str | None:
    """The core version from wp-includes/version.php, or None when it cannot be read."""
    try:
        text = (root / "wp-includes" / "version.php").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    match = _VERSION_RE.search(text)
    return _unquote(match.group(1), match.group(2)) if match else None

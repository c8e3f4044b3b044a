"""Reading a WordPress install the way WordPress does: wp-config.php (in the root, else its
parent folder), the DB_* constants, $table_prefix, and the core version.

We read the PHP text with a small tokenizer instead of running PHP: the backup host may have
no php-cli, and executing a site's config just to read five constants is a risk we don't need.

    wp-config.php --tokens--> define('DB_X', ...), const DB_X = ..., $table_prefix = ...
                  --> WpConfig: values (one plain string each, unescaped as PHP does)
                                unclear (defined in several places, or through an expression)

A value this reader cannot be sure of is never guessed: it is reported as unclear, and the
site's `db` settings in sites.json must give it (see Site.database).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from wpbackup.errors import BackupError

_STRING = r"""(?:'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)")"""
_VERSION_RE = re.compile(r"\$wp_version\s*=\s*" + _STRING + r"\s*;")
#: PHP's identifier characters: ASCII letters, digits (not first) and _, and every non-ASCII
#: character. Written as "no other ASCII character": a class spanning to U+10FFFF costs the re
#: module ~1 ms to compile each time it appears (~13 ms for this module, on every doit start).
_IDENT_START = r"[^\x00-\x40\x5b-\x5e\x60\x7b-\x7f]"
_IDENT_CHAR = r"[^\x00-\x2f\x3a-\x40\x5b-\x5e\x60\x7b-\x7f]"
_IDENT = _IDENT_START + _IDENT_CHAR + "*"
_PHP_OPEN_RE = re.compile(r"<\?(?:php(?=\s)|=)?", re.I)
#: One PHP token (inside <?php ... ?>); an unterminated string or comment ends the scan.
_TOKEN_RE = re.compile(r"""
    (?P<space>\s+)
  | (?P<comment>(?://|\#)[^\n]*?(?=\?>|\n|\Z) | /\*.*?\*/)
  | (?P<single>'(?:[^'\\]|\\.)*')
  | (?P<double>"(?:[^"\\]|\\.)*")
  | (?P<heredoc><<<[ \t]*(?P<quote>["']?)(?P<label>""" + _IDENT + r""")(?P=quote)\r?\n
                 (?:.*?\n)??[ \t]*(?P=label)(?!""" + _IDENT_CHAR + r"""))
  | (?P<unterminated>['"]|/\*|<<<)
  | (?P<close>\?>)
  | (?P<variable>\$""" + _IDENT + r""")
  | (?P<name>\\?""" + _IDENT + r"""(?:\\""" + _IDENT + r""")*)
  | (?P<number>[0-9][0-9A-Za-z_.]*)
  | (?P<op>===|!==|==|!=|<=>|=>|->|::|\?\?=|\?\?|\.=|[-+*/%|&^]=|<<=|>>=|\*\*=|.)
""", re.S | re.X)
#: The parts of a double-quoted string's body: PHP's escapes, the start of an interpolation,
#: plain text, and any other single character (an unknown escape keeps its backslash).
_DOUBLE_PART_RE = re.compile(
    r"""\\(?:[nrtvef\\$"]|[0-7]{1,3}|x[0-9A-Fa-f]{1,2}|u\{[0-9A-Fa-f]{1,8}\})"""
    r"""|(?P<interpolation>\$(?=""" + _IDENT_START + r"""|\{)|\{(?=\$))|[^\\${]+|.""", re.S)
_SIMPLE_ESCAPES = {"n": b"\n", "r": b"\r", "t": b"\t", "v": b"\v", "e": b"\x1b", "f": b"\f",
                   "\\": b"\\", "$": b"$", '"': b'"'}
_INCLUDES = ("include", "include_once", "require", "require_once")
MAX_WP_CONFIG = 16 << 20  # bytes; a wp-config.php is a few KiB


@dataclass(frozen=True)
class DbHost:
    """Where MySQL listens: a TCP host and port, or a unix socket."""

    host: str = "localhost"
    port: int | None = None
    socket: str | None = None


def _unquote_single(body: str) -> str:
    r"""A single-quoted PHP string: only \\ and \' are escapes, every other backslash stays."""
    return re.sub(r"\\([\\'])", r"\1", body)


def _unquote_double(body: str) -> str | None:
    r"""A double-quoted PHP string as PHP reads it (\n \t \r \v \e \f \\ \$ \" octal \xHH
    \u{...}; an unknown escape such as \q keeps its backslash), or None when it
    interpolates a variable: then its value is only known by running PHP."""
    out = bytearray()
    for match in _DOUBLE_PART_RE.finditer(body):
        if match["interpolation"]:
            return None
        part = match[0]
        if part[0] != "\\" or len(part) == 1:
            out += part.encode("utf-8", "surrogateescape")
        elif part[1] in _SIMPLE_ESCAPES:
            out += _SIMPLE_ESCAPES[part[1]]
        elif part[1] == "x":
            out.append(int(part[2:], 16))
        elif part[1] == "u":
            code = int(part[3:-1], 16)
            if code > 0x10FFFF:
                return None  # PHP refuses the file ("Codepoint too large")
            out += chr(code).encode("utf-8", "surrogatepass")
        else:
            out.append(int(part[1:], 8) & 0xFF)  # PHP wraps \400..\777 to one byte
    return out.decode("utf-8", "surrogateescape")


def _unquote(single: str | None, double: str | None) -> str:
    """The value of a string literal matched by _STRING (a double-quoted one that
    interpolates is taken as written)."""
    if single is not None:
        return _unquote_single(single)
    value = _unquote_double(double or "")
    return (double or "") if value is None else value


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


@dataclass(frozen=True)
class Token:
    kind: str  # a group name of _TOKEN_RE
    text: str
    line: int


@dataclass(frozen=True)
class Definition:
    """One place that sets a DB_* constant or $table_prefix; value None when it is not one
    plain string (``why`` says what it is instead)."""

    name: str
    value: str | None
    line: int
    why: str = ""


@dataclass(frozen=True)
class WpConfig:
    """What wp-config.php sets, as far as a reader that does not run PHP can be sure:
    ``values`` holds DB_* constants and "table_prefix" set to one plain string, ``unclear``
    those set in several places to different values or through an expression."""

    values: dict[str, str] = field(repr=False)  # holds DB_PASSWORD
    unclear: dict[str, str]
    computed: tuple[int, ...] = ()  # lines of define() calls whose constant name is computed
    includes: tuple[int, ...] = ()  # lines of include/require (a value may live there)

    def lookup(self, name: str) -> tuple[str | None, str | None]:
        """(value, None); (None, why it cannot be known); or (None, None): not set here."""
        if name in self.unclear:
            return None, self.unclear[name]
        if name.startswith("DB_") and self.computed:
            return None, f"may be set by a define() whose constant name is computed (line {self.computed[0]})"
        return self.values.get(name), None


def php_tokens(text: str) -> list[Token]:
    """The tokens of the PHP code in ``text`` (outside <?php ... ?> is not code), without
    whitespace and comments; ``?>`` counts as ``;``. An unterminated string or comment ends
    the list: PHP itself would refuse the file."""
    tokens: list[Token] = []
    pos, line, in_php = 0, 1, False
    while pos < len(text):
        if not in_php:
            opening = _PHP_OPEN_RE.search(text, pos)
            if opening is None:
                break
            line += text.count("\n", pos, opening.end())
            pos, in_php = opening.end(), True
            continue
        match = _TOKEN_RE.match(text, pos)
        kind = match.lastgroup
        if kind == "unterminated":
            break
        if kind == "close":
            tokens.append(Token("op", ";", line))
            in_php = False
        elif kind not in ("space", "comment"):
            tokens.append(Token(kind, match[0], line))
        line += match[0].count("\n")
        pos = match.end()
    return tokens


def _is_op(token: Token, *texts: str) -> bool:
    return token.kind == "op" and token.text in texts


def _arguments(tokens: list[Token], start: int) -> tuple[list[list[Token]], int]:
    """The comma-separated arguments of a call whose '(' is just before ``start``, and the
    index after its ')'."""
    args: list[list[Token]] = []
    current: list[Token] = []
    depth = 0
    for index in range(start, len(tokens)):
        token = tokens[index]
        if _is_op(token, "(", "[", "{"):
            depth += 1
        elif _is_op(token, ")", "]", "}"):
            if depth == 0:
                return args + [current], index + 1
            depth -= 1
        elif _is_op(token, ",") and depth == 0:
            args.append(current)
            current = []
            continue
        current.append(token)
    return args + [current], len(tokens)


def _expression(tokens: list[Token], start: int, stops: tuple[str, ...]) -> tuple[list[Token], int]:
    """Tokens from ``start`` up to a top-level stop operator, and that operator's index."""
    depth = 0
    for index in range(start, len(tokens)):
        token = tokens[index]
        if _is_op(token, "(", "[", "{"):
            depth += 1
        elif _is_op(token, ")", "]", "}"):
            depth -= 1
        elif depth <= 0 and _is_op(token, *stops):
            return tokens[start:index], index
    return tokens[start:], len(tokens)


def _literal(expression: list[Token]) -> tuple[str | None, str]:
    """The value of an expression that is one plain string literal, else (None, why)."""
    line = expression[0].line if expression else 0
    if len(expression) != 1 or expression[0].kind not in ("single", "double"):
        return None, f"is set through an expression (line {line}), not a plain string"
    body = expression[0].text[1:-1]
    value = _unquote_single(body) if expression[0].kind == "single" else _unquote_double(body)
    if value is None:
        return None, f"is set through a string that interpolates a variable (line {line})"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None, f"is not UTF-8 text (line {line})"
    return value, ""


_ASSIGNMENTS = ("=", ".=", "??=", "+=", "-=", "*=", "/=", "%=", "|=", "&=", "^=", "<<=", ">>=", "**=")


def _prefix_assignment(tokens: list[Token], index: int) -> tuple[Definition | None, int]:
    """`$table_prefix = ...;` (or `$GLOBALS['table_prefix'] = ...;`) at ``index``."""
    token = tokens[index]
    after = index + 1
    if token.text == "$GLOBALS":
        target = tokens[index + 1:index + 4]
        if len(target) < 3 or not (_is_op(target[0], "[") and _is_op(target[2], "]")) \
                or _literal(target[1:2])[0] != "table_prefix":
            return None, index + 1
        after = index + 4
    elif token.text != "$table_prefix":
        return None, index + 1
    if after >= len(tokens) or not _is_op(tokens[after], *_ASSIGNMENTS):
        return None, index + 1
    expression, end = _expression(tokens, after + 1, (";",))
    if tokens[after].text != "=":
        return Definition("table_prefix", None, token.line, f"is changed by '{tokens[after].text}' "
                          f"(line {token.line}), not set to a plain string"), end
    value, why = _literal(expression) if expression else (None, f"has no value (line {token.line})")
    return Definition("table_prefix", value, token.line, why), end


def _define_call(tokens: list[Token], index: int, computed: list[int]) -> tuple[Definition | None, int]:
    """`define('DB_X', value)` at ``index`` (also Config::define and ->define: they set it too)."""
    args, end = _arguments(tokens, index + 2)
    name, _ = _literal(args[0]) if args and args[0] else (None, "")
    if name is None:
        computed.append(tokens[index].line)
        return None, end
    if not name.startswith("DB_"):
        return None, end
    value, why = _literal(args[1]) if len(args) > 1 and args[1] else (None, f"has no value (line {tokens[index].line})")
    return Definition(name, value, tokens[index].line, why), end


def _const_statement(tokens: list[Token], index: int) -> tuple[list[Definition], int]:
    """`const DB_X = value, DB_Y = value;` at ``index``."""
    found: list[Definition] = []
    position = index + 1
    while position + 1 < len(tokens) and tokens[position].kind == "name" and _is_op(tokens[position + 1], "="):
        expression, stop = _expression(tokens, position + 2, (",", ";"))
        name = tokens[position].text
        if name.startswith("DB_"):
            value, why = _literal(expression) if expression else (None, f"has no value (line {tokens[position].line})")
            found.append(Definition(name, value, tokens[position].line, why))
        position = stop + 1
        if stop >= len(tokens) or tokens[stop].text == ";":
            break
    return found, max(position, index + 1)


def definitions(tokens: list[Token]) -> tuple[list[Definition], list[int], list[int]]:
    """Every place the tokens set a DB_* constant or the table prefix; the lines of define()
    calls with a computed name; the lines of include/require."""
    found: list[Definition] = []
    computed: list[int] = []
    includes: list[int] = []
    index = 0
    while index < len(tokens):
        token = tokens[index]
        word = token.text.lstrip("\\").lower() if token.kind == "name" else ""
        after_function = index > 0 and tokens[index - 1].text.lower() == "function"
        if word == "define" and index + 1 < len(tokens) and _is_op(tokens[index + 1], "(") and not after_function:
            definition, index = _define_call(tokens, index, computed)
            found += [definition] if definition else []
        elif word == "const":
            constants, index = _const_statement(tokens, index)
            found += constants
        elif token.kind == "variable":
            definition, index = _prefix_assignment(tokens, index)
            found += [definition] if definition else []
        else:
            if word in _INCLUDES:
                includes.append(token.line)
            index += 1
    return found, computed, includes


def _collapse(found: list[Definition]) -> tuple[dict[str, str], dict[str, str]]:
    """One value per name when every place agrees on one plain string; else why not."""
    values: dict[str, str] = {}
    unclear: dict[str, str] = {}
    by_name: dict[str, list[Definition]] = {}
    for definition in found:
        by_name.setdefault(definition.name, []).append(definition)
    for name, group in by_name.items():
        odd = next((d for d in group if d.value is None), None)
        if odd is not None:
            unclear[name] = odd.why
        elif len({d.value for d in group}) > 1:
            lines = ", ".join(str(d.line) for d in group)
            unclear[name] = f"is set in {len(group)} places to different values (lines {lines})"
        else:
            values[name] = group[0].value
    return values, unclear


def parse_wp_config(path: Path) -> WpConfig:
    """The DB_* constants and $table_prefix of a wp-config.php, read as PHP reads them."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_WP_CONFIG + 1)
    except OSError as exc:
        raise BackupError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_WP_CONFIG:
        raise BackupError(f"{path} is larger than {MAX_WP_CONFIG >> 20} MiB: not a wp-config.php")
    found, computed, includes = definitions(php_tokens(data.decode("utf-8", "surrogateescape")))
    values, unclear = _collapse(found)
    return WpConfig(values, unclear, tuple(computed), tuple(includes))


def _is_port(text: str) -> bool:
    return re.fullmatch(r"[0-9]{1,5}", text) is not None and 1 <= int(text) <= 65535


def parse_db_host(value: str) -> DbHost:
    """Split DB_HOST as WordPress does: host, host:port, host:/socket, [v6]:port, /socket."""
    value = value.strip() or "localhost"
    if value.startswith("/"):
        return DbHost("localhost", None, value)
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise BackupError(f"DB_HOST {value!r}: no ']' after the IPv6 address")
        host, rest = value[1:end], value[end + 1:]
        port = rest[1:] if rest.startswith(":") else ""
        return DbHost(host, int(port) if _is_port(port) else None, None)
    if value.count(":") == 1:
        host, tail = value.split(":", 1)
        host = host or "localhost"
        if tail.startswith("/"):
            return DbHost(host, None, tail)
        if _is_port(tail):
            return DbHost(host, int(tail), None)
        raise BackupError(f"DB_HOST {value!r}: port {tail!r} is not a number from 1 to 65535")
    return DbHost(value, None, None)


def wordpress_version(root: Path) -> str | None:
    """The core version from wp-includes/version.php, or None when it cannot be read."""
    try:
        text = (root / "wp-includes" / "version.php").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    match = _VERSION_RE.search(text)
    return _unquote(match.group(1), match.group(2)) if match else None

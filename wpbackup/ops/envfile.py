"""Editing `.env` and `sites.json` the way a person would: only what changed is rewritten.

    .env text --parse (python-dotenv, as the settings loader)--> entries (line text, key)
              --set(KEY, value)--> the key's own line replaced, a new key added beside its
                                   section's keys, comments and unknown keys left as they were
    save(path, data): the previous file copied to PATH.bak (0600), then the new one written
                      under a temporary name, fsynced and renamed (0600)
    sites.json: read as written (read_sites), saved by config.sites.save_sites (validated,
                atomic, 0600, sites.json.bak)
    lenient_settings(): Settings from whatever parses, so `doit configure` starts on an
                install whose `.env` does not load

A value is written so that python-dotenv reads it back exactly: bare when it is plain, else in
single quotes (inside which only ``\\`` and ``\\'`` are escapes). One thing no quoting can carry:
``${`` (python-dotenv expands ``${NAME}`` wherever it appears), so such a value is refused.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from dotenv import dotenv_values
from dotenv.parser import parse_stream

from wpbackup.atomic import write_atomic
from wpbackup.config.settings import (
    ENV_FILE_VARIABLE,
    KEYS,
    Settings,
    SettingsError,
    default_server_id,
    env_file_path,
    merged,
    parse_value,
    resolve_path,
)
from wpbackup.config.sites import read_sites_document
from wpbackup.errors import BackupError, ConfigError, disk_error

_PLAIN = re.compile(r"[A-Za-z0-9_./:@,+%=~^*-]*")  # read back bare, as it is


def encode(value: str) -> str:
    """A value as it goes after ``KEY=``; ValueError for what `.env` cannot carry."""
    if re.search(r"[\r\n\x00]", value):
        raise ValueError("holds a line break or NUL, which .env cannot carry")
    if _PLAIN.fullmatch(value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass
class Entry:
    """One statement of the file as it was written: its text (with its line break), the key it
    sets (None for comments and blank lines) and whether it is no KEY=value at all."""

    text: str
    key: str | None = None
    broken: bool = False


@dataclass
class EnvFile:
    """The lines of one `.env` file, editable key by key."""

    path: Path
    entries: list[Entry] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path) -> EnvFile:
        """The file as it is (empty when missing); BackupError when unreadable or not UTF-8."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return cls(path)
        except OSError as exc:
            raise BackupError(f"{path}: cannot read: {exc.strerror}") from None
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise BackupError(f"{path}: not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start}): "
                              "save it as UTF-8 (or move it away) and run doit configure again") from None
        return cls.parse(path, text)

    @classmethod
    def parse(cls, path: Path, text: str) -> EnvFile:
        entries = [Entry(b.original.string, b.key, b.error) for b in parse_stream(io.StringIO(text))]
        return cls(path, entries)

    @property
    def broken_lines(self) -> list[int]:
        """Where the statements that are no KEY=value start (line numbers; each is written
        back as a comment). Numbers only: such a line may well hold a secret."""
        numbers, line = [], 1
        for entry in self.entries:
            if entry.broken:
                numbers.append(line + entry.text[:len(entry.text) - len(entry.text.lstrip())].count("\n"))
            line += entry.text.count("\n")
        return numbers

    def values(self) -> dict[str, str]:
        """KEY -> value as the settings loader reads them (broken lines left out)."""
        text = "".join(entry.text for entry in self.entries if not entry.broken)
        # as the settings loader reads them: no ${VAR} expansion
        return {k: v for k, v in dotenv_values(stream=io.StringIO(text), interpolate=False).items()
                if v is not None}

    def set(self, key: str, value: str | None, after: tuple[str, ...] = (), title: str = "") -> None:
        """Give ``key`` this value (None or "": remove it). An existing line is replaced in
        place (earlier duplicates, which the loader ignored, go); a new key goes after the
        last line of one of ``after`` (its section's keys), else at the end under ``title``."""
        mine = [i for i, entry in enumerate(self.entries) if entry.key == key and not entry.broken]
        if not value:
            self.entries = [entry for i, entry in enumerate(self.entries) if i not in mine]
            return
        line = f"{key}={encode(value)}\n"
        if mine:
            last = self.entries[mine[-1]]
            lead = "\n" * last.text[:len(last.text) - len(last.text.lstrip())].count("\n")
            self.entries[mine[-1]] = Entry(lead + line, key)
            self.entries = [entry for i, entry in enumerate(self.entries) if i not in mine[:-1]]
            return
        near = [i for i, entry in enumerate(self.entries) if entry.key in after and not entry.broken]
        if near:
            self.entries.insert(near[-1] + 1, Entry(line, key))
            return
        self._end_line()
        head = (("\n" if self.entries else "") + f"# {title}\n") if title else ""
        self.entries.append(Entry(head + line, key))

    def _end_line(self) -> None:
        """The last statement ends with a line break, so that an appended one starts a line."""
        if self.entries and not self.entries[-1].text.endswith("\n"):
            self.entries[-1].text += "\n"

    def text(self) -> str:
        """The file's new text: statements that were no KEY=value are kept as comments, so
        that the result loads and nothing the person wrote is lost."""
        out = []
        for entry in self.entries:
            if entry.broken:
                body = entry.text.strip("\n")
                out.append("# doit configure: not KEY=value, kept as a comment:\n"
                           + "".join(f"# {line}\n" for line in body.splitlines()))
            else:
                out.append(entry.text)
        text = "".join(out)
        return text if not text or text.endswith("\n") else text + "\n"


def backup_path(path: Path) -> Path:
    return path.with_name(path.name + ".bak")


def _copy_backup(path: Path) -> Path:
    """PATH.bak, a 0600 copy of the file as it was, written atomically too (a copy cut off
    half-way must never replace a good .bak); .env and sites.json are small."""
    target = backup_path(path)
    write_atomic(target, path.read_bytes(), 0o600)
    return target


def save(path: Path, data: bytes) -> Path | None:
    """Write ``data`` to ``path`` atomically with mode 0600, the previous file kept as
    PATH.bak; the .bak's path, or None when there was no previous file. Its folder is made
    (0700) when missing."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        previous = _copy_backup(path) if path.exists() else None
    except OSError as exc:
        raise disk_error(path, exc) from None
    write_atomic(path, data, 0o600)
    return previous


def read_sites(path: Path) -> tuple[list[dict], str | None]:
    """The entries of sites.json as they are written (not validated: the wizard shows and
    fixes what is wrong), and why the file could not be read as a list of sites, if so.
    A missing file is an empty list and no problem; sites.json is written back with
    wpbackup.config.sites.save_sites, which validates it first and keeps sites.json.bak."""
    if not os.path.lexists(path):
        return [], None
    try:
        document = read_sites_document(path)
    except ConfigError as exc:
        return [], "; ".join(exc.problems)
    entries = document.get("sites") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        return [], f'{path}: not a sites.json (expected {{"sites": [ {{...}}, ... ]}})'
    return [dict(entry) for entry in entries], None


def lenient_settings(environ: dict[str, str] | None = None) -> Settings:
    """Settings from what parses, for `doit configure` on an install whose `.env` does not
    load (the wizard is how it gets fixed): every value of ours that parses on its own is
    taken, the others and the rules between keys are left to the wizard. Paths resolve as
    load_settings resolves them; the install's folder is made (0700) when missing, as doit
    keeps its state file there. A SettingsError only when $WPBACKUP_ENV is unusable."""
    environ = dict(os.environ if environ is None else environ)
    try:
        env_path = env_file_path(environ)
    except (RuntimeError, ValueError) as exc:
        raise SettingsError([f"{ENV_FILE_VARIABLE}: {exc}"]) from None
    try:
        env_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise SettingsError([f"{env_path.parent}: cannot make the install's folder: {exc.strerror}"]) from None
    try:
        file_values = EnvFile.read(env_path).values()
    except BackupError:
        file_values = {}
    values, _ = merged(file_values, environ)
    parsed: dict[str, object] = {}
    for key in KEYS:
        parsed[key.name] = key.default
        try:
            if values.get(key.name):
                parsed[key.name] = parse_value(key, values[key.name])
        except ValueError:
            pass
    paths = {name: resolve_path(name, parsed, env_path, "", []) for name in ("SITES_FILE", "DB_PATH", "BACKUP_DIR")}
    return Settings(env_path=env_path, server_id=str(parsed["SERVER_ID"] or default_server_id()),
                    sites_file=paths["SITES_FILE"], db_path=paths["DB_PATH"], backup_dir=paths["BACKUP_DIR"],
                    **{key.attr: parsed[key.name] for key in KEYS if key.attr}, raw=values, values=parsed)

"""`doit configure`: write `.env` and `sites.json` by answering questions, for a person at a
terminal, or from an answers file for a scripted install; `--discover` adds new sites alone.

    current .env + sites.json + the sites found on this machine
      -> the sections of .env, each skippable (Enter keeps the value shown; '-' removes it)
      -> the sites: add, edit (path, files, exclude, db), disable, remove
      -> the whole checked by the loader every run uses (re-asked until it passes)
      -> the checks (ops/checks.py: database logins, S3, D1, SMTP, calendars): fix or keep
      -> .env and sites.json written atomically, 0600, the previous ones kept as .bak

Every value is checked by the parser a run uses (settings.parse_value), and the files by
load_settings and parse_sites, so what the wizard writes is what `doit backup` accepts.
Secrets are read without echo (getpass) and never shown again: "(set)" stands for them.
"""

from __future__ import annotations

import copy
import dataclasses
import getpass
import json
import os
import re
import sys
import tempfile
import textwrap
import threading
from dataclasses import dataclass, field
from difflib import get_close_matches
from pathlib import Path

from wpbackup.config import discovery, reference
from wpbackup.config.settings import (
    BY_NAME,
    ENV_FILE_VARIABLE,
    Settings,
    default_server_id,
    load_settings,
    parse_value,
)
from wpbackup.config.sites import Site, parse_sites, save_sites
from wpbackup.errors import BackupError, ConfigError
from wpbackup.ops import checks
from wpbackup.ops.envfile import EnvFile, encode, read_sites, save

#: Shown as "(set)" and typed without echo: the keys settings.py marks secret.
SECRET_KEYS = frozenset(key.name for key in BY_NAME.values() if key.secret)


@dataclass(frozen=True)
class Section:
    """One part of `.env` the wizard walks through. When ``switch`` is not set, the keys in
    ``needs_switch`` are not asked and are removed (S3 keys without a bucket are an error)."""

    id: str
    title: str
    keys: tuple[str, ...]
    switch: str = ""
    needs_switch: tuple[str, ...] = ()
    intro: str = ""


_S3 = ("S3_BUCKET", "S3_ENDPOINT_URL", "S3_REGION", "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY", "S3_PREFIX",
       "S3_STORAGE_CLASS")
_SMTP = ("SMTP_HOST", "SMTP_PORT", "SMTP_SECURITY", "SMTP_USERNAME", "SMTP_PASSWORD")
SECTIONS: tuple[Section, ...] = (
    Section("server", "Server", ("SERVER_ID",)),
    Section("storage", "Storage (S3-compatible)", _S3, "S3_BUCKET", _S3[1:],
            "No bucket means local-only mode: archives stay on this disk."),
    Section("d1", "Fleet catalog (Cloudflare D1)", ("D1_ACCOUNT_ID", "D1_DATABASE_ID", "D1_API_TOKEN"),
            "D1_ACCOUNT_ID", ("D1_DATABASE_ID", "D1_API_TOKEN"), "No account means the sync is off."),
    Section("smtp", "Daily report (SMTP)", (*_SMTP, "REPORT_FROM", "REPORT_TO"), "SMTP_HOST", _SMTP[1:],
            "No mail server means the report is written under BACKUP_DIR/reports/."),
    Section("alerts", "Alerts", ("NOTIFY_URLS", "NOTIFY_ON", "HEALTHCHECK_URL")),
    Section("schedules", "Schedules (systemd timers)", ("BACKUP_ON_CALENDAR", "REPORT_ON_CALENDAR",
                                                         "VERIFY_ON_CALENDAR")),
    Section("retention", "Retention", ("KEEP_DAILY", "KEEP_WEEKLY", "KEEP_MONTHLY", "LOCAL_KEEP")),
    Section("deploy", "Deploy (SSH)", ("DEPLOY_HOSTS", "DEPLOY_PATH", "DEPLOY_SSH_KEY", "DEPLOY_KNOWN_HOSTS")),
)
SECTION_OF = {key: section for section in SECTIONS for key in section.keys}
_DB_FIELDS = ("name", "user", "password", "host", "port", "socket", "tables")
#: Set while files are written (the candidate `.env` being checked, then the real ones):
#: Ctrl-C waits until they are complete or gone and sets STOP (tasks/configure.py).
WRITING = threading.Event()
STOP = threading.Event()


class Abort(Exception):
    """The person stopped the wizard (Ctrl-D, or no to a question that ends it)."""


class Terminal:
    """Questions and answers on the terminal; end of input (Ctrl-D) stops the wizard."""

    def say(self, text: str = "") -> None:
        print(text, flush=True)

    def ask(self, prompt: str) -> str:
        try:
            return input(prompt)
        except (EOFError, KeyboardInterrupt):
            self.say()
            raise Abort() from None

    def secret(self, prompt: str) -> str:
        """A line typed without echo (getpass reads the terminal itself)."""
        try:
            return getpass.getpass(prompt)
        except (EOFError, KeyboardInterrupt):
            self.say()
            raise Abort() from None

    def yes(self, question: str, default: bool) -> bool:
        hint = "[Y/n]" if default else "[y/N]"
        while True:
            answer = self.ask(f"{question} {hint} ").strip().lower()
            if not answer:
                return default
            if answer in ("y", "yes", "n", "no"):
                return answer.startswith("y")
            self.say("  answer y or n")


# --- the state being edited ----------------------------------------------------------------


@dataclass
class State:
    """What the wizard edits: `.env` (as a document, and our keys' values) and sites.json's
    entries, with what each was when it started (only what changed is written)."""

    env: EnvFile
    original: dict[str, str]
    values: dict[str, str]
    sites_file: Path
    sites: list[dict]
    sites_before: list[dict]
    sites_problem: str | None = None
    found: list[discovery.Found] = field(default_factory=list)
    kept: set[str] = field(default_factory=set)  # checks whose failure the person accepted

    @classmethod
    def load(cls, settings: Settings) -> State:
        env = EnvFile.read(settings.env_path)
        ours = {key: value for key, value in env.values().items() if key in BY_NAME and value != ""}
        entries, problem = read_sites(settings.sites_file)
        return cls(env, ours, dict(ours), settings.sites_file, entries, copy.deepcopy(entries), problem)

    def set(self, key: str, value: str | None) -> None:
        if value:
            self.values[key] = value
        else:
            self.values.pop(key, None)

    def changed(self) -> list[str]:
        """The keys whose value changes, in the wizard's order (new lines are added so)."""
        order = [key for section in SECTIONS for key in section.keys]
        order += [key for key in BY_NAME if key not in SECTION_OF]
        return [key for key in order if self.values.get(key) != self.original.get(key)]

    def env_text(self) -> str:
        """The new `.env`: the old file with each changed key's line replaced, added or gone."""
        document = copy.deepcopy(self.env)
        for key in self.changed():
            section = SECTION_OF.get(key)
            document.set(key, self.values.get(key), section.keys if section else (),
                         section.title if section else "")
        return document.text()


def load_candidate(state: State) -> tuple[Settings | None, list[str]]:
    """The settings the new `.env` gives, through load_settings itself (a temporary copy in
    the same folder, so relative paths mean the same); its problems named by the real path."""
    WRITING.set()
    try:
        settings, problems = _load_copy(state.env.path, state.env_text())
    finally:
        WRITING.clear()
    if STOP.is_set():
        raise Abort()
    if settings is None:
        return None, problems
    unread = [key for key in state.changed() if settings.raw.get(key, "") != state.values.get(key, "")]
    if unread:  # a safety net under envfile.encode: never write what would read back otherwise
        return None, [f"{state.env.path}: {key}: would not read back as typed (please report this)" for key in unread]
    return dataclasses.replace(settings, env_path=state.env.path), []


def _load_copy(env_path: Path, text: str) -> tuple[Settings | None, list[str]]:
    """load_settings on ``text`` written to a 0600 temporary file beside ``env_path``
    (removed again), its problems named by ``env_path``."""
    folder = env_path.parent
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".env.configure-", dir=folder)
    except OSError as exc:
        raise BackupError(f"cannot write in {folder}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        return load_settings({ENV_FILE_VARIABLE: name}), []
    except ConfigError as exc:
        return None, [problem.replace(name, str(env_path)) for problem in exc.problems]
    finally:
        os.unlink(name)


def site_problems(state: State) -> list[str]:
    try:
        parse_sites({"sites": state.sites}, str(state.sites_file))
    except ConfigError as exc:
        return exc.problems
    return []


def validated(state: State) -> tuple[Settings, list[Site]]:
    """Settings and sites as a run would load them; BackupError listing what is wrong."""
    settings, problems = load_candidate(state)
    problems += site_problems(state)
    if problems or settings is None:
        raise BackupError("the configuration is not valid: " + "; ".join(problems))
    return settings, parse_sites({"sites": state.sites}, str(state.sites_file))


def problem_key(problem: str, env_path: Path) -> str | None:
    """The first key of ours a settings problem names (after the file's path)."""
    text = problem.removeprefix(f"{env_path}: ").removeprefix("environment: ")
    return next((word for word in re.findall(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b", text) if word in BY_NAME), None)


# --- one value -----------------------------------------------------------------------------


def value_problem(name: str, text: str) -> str | None:
    """Why ``text`` cannot be KEY's value (the parser every run uses, then what `.env` can
    carry), or None. The reason never quotes a secret."""
    key = BY_NAME[name]
    try:
        parse_value(key, text)
        encode(text)
    except ValueError as exc:
        return str(exc)
    return None


def _help(name: str) -> str:
    """The key's meaning (from the configuration reference) and its default, wrapped."""
    key, words = BY_NAME[name], reference.key_doc(BY_NAME[name])
    default = words.default or (reference.env_text(key.default) if key.default is not None else "")
    if name == "SERVER_ID":
        default = f"{default}: {default_server_id()}"
    text = words.meaning.replace("`", "") + (f" Default: {default.replace('`', '')}." if default else "")
    return textwrap.fill(text, 96, initial_indent="    ", subsequent_indent="    ")


def _shown(name: str, value: str | None) -> str:
    if value is None:
        return "not set"
    return "(set)" if name in SECRET_KEYS else value


def ask_value(term: Terminal, name: str, current: str | None) -> str | None:
    """Ask for one key until the answer is valid: Enter keeps the current value (when it is
    valid), '-' removes it (the default applies). None: not set."""
    secret = name in SECRET_KEYS
    term.say(_help(name))
    while True:
        prompt = f"  {name} [{_shown(name, current)}]: "
        answer = (term.secret(prompt) if secret else term.ask(prompt)).strip(" \t")
        if answer == "-":
            return None
        if answer == "":
            why = value_problem(name, current) if current is not None else None
            if why is None:
                return current
            term.say(f"  {name}: the current value is refused ({why}): type another, or - to remove it")
            continue
        why = value_problem(name, answer)
        if why is None:
            return answer
        term.say(f"  {name}: {why}")


# --- the sections of .env -----------------------------------------------------------------


def section_summary(state: State, section: Section) -> str:
    shown = [f"{key}={_shown(key, state.values[key])}" for key in section.keys if key in state.values]
    return "  now: " + (", ".join(shown) if shown else "nothing set (defaults)")


def edit_section(term: Terminal, state: State, section: Section) -> None:
    """Ask every key of the section; without its switch the keys that need it are removed."""
    if section.intro:
        term.say(f"  {section.intro}")
    for name in section.keys:
        if name in section.needs_switch and not state.values.get(section.switch):
            if name in state.values:
                term.say(f"  {name}: removed ({section.switch} is not set)")
            state.set(name, None)
            continue
        state.set(name, ask_value(term, name, state.values.get(name)))


def section_problems(state: State, section: Section) -> list[str]:
    _, problems = load_candidate(state)
    return [p for p in problems if problem_key(p, state.env.path) in section.keys]


def settle_section(term: Terminal, state: State, section: Section) -> None:
    """Keys that only mean something together (S3 keys without a bucket, REPORT_TO for an
    SMTP_HOST...): shown right after the section, which may be edited again."""
    while problems := section_problems(state, section):
        for problem in problems:
            term.say(f"  problem: {problem}")
        if not term.yes(f"Edit {section.title} again?", True):
            return
        edit_section(term, state, section)


def walk_sections(term: Terminal, state: State) -> None:
    for number, section in enumerate(SECTIONS, 1):
        term.say(f"\n== {number}/{len(SECTIONS)} {section.title} ==")
        term.say(section_summary(state, section))
        if term.yes(f"Edit {section.title}?", False):
            edit_section(term, state, section)
            settle_section(term, state, section)


# --- the sites -----------------------------------------------------------------------------


def _real(path: object) -> str:
    return os.path.realpath(str(path))


def unlisted(state: State) -> list[discovery.Found]:
    """The sites found on this machine that sites.json does not list (by real path)."""
    listed = {_real(entry.get("path", "")) for entry in state.sites}
    return [found for found in state.found if _real(found.path) not in listed]


def _entry_line(entry: dict) -> str:
    status = "enabled" if entry.get("enabled", True) is not False else "DISABLED"
    extra = [f"files={entry['files']}"] if "files" in entry else []
    extra += ["db: " + ", ".join(sorted(entry["db"]))] if isinstance(entry.get("db"), dict) and entry["db"] else []
    return f"{entry.get('name', '?')}  {entry.get('path', '?')}  ({', '.join([status, *extra])})"


def show_sites(term: Terminal, state: State) -> None:
    term.say(f"\n== Sites: {state.sites_file} ==")
    for number, entry in enumerate(state.sites, 1):
        term.say(f"  {number}. {_entry_line(entry)}")
    offset = len(state.sites)
    for number, found in enumerate(unlisted(state), offset + 1):
        term.say(f"  {number}. found, not in sites.json: {discovery.describe(found)}")
    if not state.sites and not unlisted(state):
        term.say(f"  no site yet, and none found ({discovery.looked_in()})")
    term.say("  a N / a all / a FOLDER: add;  e N: edit;  d N: disable or enable;  r N: remove;  Enter: done")


def _number(text: str, limit: int) -> int | None:
    return int(text) - 1 if text.isdigit() and 1 <= int(text) <= limit else None


def add_site(term: Terminal, state: State, arg: str) -> None:
    """Add found sites (by number, or all of them) or a folder given by its path."""
    found = unlisted(state)
    offset = len(state.sites)
    names = {entry.get("name") for entry in state.sites}
    if arg == "all":
        picked = found
    elif (index := _number(arg, offset + len(found))) is not None and index >= offset:
        picked = [found[index - offset]]
    elif arg.startswith(("/", "~")):
        picked = discovery.discover([os.path.expanduser(arg)], max_depth=0, taken=names)
        if not picked:
            term.say(f"  no WordPress at {arg} (wp-config.php beside wp-includes/ or wp-content/)")
            return
    else:
        term.say("  add what? a number of a found site, all, or a folder (an absolute path)")
        return
    for site in picked:
        entry = discovery.site_entry(site)
        entry["name"] = discovery.unique_name(entry["name"], {str(n) for n in names})
        names.add(entry["name"])
        state.sites.append(entry)
        term.say(f"  added {entry['name']} ({entry['path']})")


def _field_problem(entry: dict, others: list[dict], marker: str) -> str | None:
    """The problem parse_sites sees with one field of the entry (``marker``: 'path',
    'db: port', ...), or a name another site already has."""
    if marker == "name" and entry.get("name") in {other.get("name") for other in others}:
        return "another site has this name"
    try:
        parse_sites({"sites": [entry]}, "sites.json")
    except ConfigError as exc:
        hits = [p.split(f": {marker}: ", 1)[1] for p in exc.problems if f": {marker}: " in p]
        return hits[0] if hits else None
    return None


def _parse_field(name: str, text: str) -> object:
    """The typed value of a site field as sites.json holds it."""
    if name == "exclude":
        return [item.strip() for item in text.split(",") if item.strip()]
    if name == "port":
        return int(text) if re.fullmatch(r"[0-9]{1,5}", text) else text
    return text


def _field_shown(name: str, value: object, db: bool) -> str:
    if value is None:
        return "from wp-config.php" if db and name != "socket" and name != "tables" else "not set"
    if name == "password":
        return "(set)"
    return ", ".join(value) if isinstance(value, list) else str(value)


def ask_field(term: Terminal, entry: dict, others: list[dict], name: str, db: bool = False) -> None:
    """One field of a site (``db``: inside its "db" object), asked until parse_sites takes it;
    Enter keeps it, '-' removes it (its default, or wp-config.php's value, applies)."""
    holder = entry.setdefault("db", {}) if db else entry
    marker = f"db: {name}" if db else name
    while True:
        label = f"db.{name}" if db else name
        prompt = f"  {label} [{_field_shown(name, holder.get(name), db)}]: "
        answer = (term.secret(prompt) if name == "password" else term.ask(prompt)).strip(" \t")
        if answer == "":
            return
        previous = holder.get(name)
        if answer == "-" and name != "name" and name != "path":
            holder.pop(name, None)
        else:
            holder[name] = _parse_field(name, answer)
        why = _field_problem(entry, others, marker)
        if why is None:
            return
        term.say(f"  {label}: {why}")
        if previous is None:
            holder.pop(name, None)
        else:
            holder[name] = previous


def edit_site(term: Terminal, state: State, index: int, db_first: bool = False) -> None:
    """Name, path, files, exclude and, when asked for, the database settings of one site."""
    entry = copy.deepcopy(state.sites[index])
    others = state.sites[:index] + state.sites[index + 1:]
    term.say(f"  editing {entry.get('name')}: Enter keeps a value, - removes it")
    for name in ("name", "path", "files", "exclude"):
        ask_field(term, entry, others, name)
    if entry.get("path") and not discovery.is_wordpress(Path(str(entry["path"]))):
        term.say(f"  note: no WordPress at {entry['path']} (wp-config.php beside wp-includes/ or wp-content/)")
    if term.yes("  Edit its database settings (left out, they are read from wp-config.php)?", db_first):
        for name in _DB_FIELDS:
            ask_field(term, entry, others, name, db=True)
    if not entry.get("db"):
        entry.pop("db", None)
    state.sites[index] = entry


def toggle_site(term: Terminal, state: State, index: int) -> None:
    entry = state.sites[index]
    if entry.get("enabled", True) is False:
        entry.pop("enabled")
        term.say(f"  {entry.get('name')}: enabled")
    else:
        entry["enabled"] = False
        term.say(f"  {entry.get('name')}: disabled (kept in sites.json; its archives stay)")


def remove_site(term: Terminal, state: State, index: int) -> None:
    entry = state.sites[index]
    if term.yes(f"  Remove {entry.get('name')} from sites.json (its archives stay)?", False):
        state.sites.pop(index)


def site_command(term: Terminal, state: State, answer: str) -> None:
    """One command of the sites menu."""
    command, _, arg = answer.partition(" ")
    arg = arg.strip()
    if command == "a":
        return add_site(term, state, arg)
    index = _number(arg, len(state.sites))
    actions = {"e": edit_site, "d": toggle_site, "r": remove_site}
    if command not in actions:
        term.say("  unknown command: a, e, d or r followed by a number (a also takes all or a folder)")
    elif index is None:
        term.say(f"  {command} needs the number of a site in sites.json (1 to {len(state.sites)})")
    else:
        actions[command](term, state, index)


def edit_sites(term: Terminal, state: State) -> None:
    """The sites menu, until Enter with every entry valid."""
    while True:
        show_sites(term, state)
        answer = term.ask("sites> ").strip()
        if answer:
            site_command(term, state, answer)
            continue
        problems = site_problems(state)
        if not problems:
            return
        for problem in problems:
            term.say(f"  problem: {problem}")
        term.say("  fix these (e N) or remove the site (r N) first")


# --- the whole, the checks, saving ---------------------------------------------------------


def settle(term: Terminal, state: State) -> None:
    """Until the whole configuration loads as a run loads it: each problem shown, and the
    section (or key, or the sites) it names asked again."""
    while True:
        _, problems = load_candidate(state)
        sites = site_problems(state)
        if not problems and not sites:
            return
        for problem in problems + sites:
            term.say(f"  problem: {problem}")
        if not problems:
            edit_sites(term, state)
            continue
        name = problem_key(problems[0], state.env.path)
        if name is None:
            raise BackupError("cannot continue: " + "; ".join(problems))
        section = SECTION_OF.get(name)
        if not term.yes(f"Fix {section.title if section else name} now?", True):
            raise Abort()
        if section:
            edit_section(term, state, section)
        else:
            state.set(name, ask_value(term, name, state.values.get(name)))


def fix(term: Terminal, state: State, check: checks.Check) -> None:
    """Ask again what a failed check depends on: its section, or its site."""
    if check.section:
        section = next(s for s in SECTIONS if s.id == check.section)
        term.say(f"\n== {section.title} ==")
        edit_section(term, state, section)
        settle_section(term, state, section)
        return
    index = next((i for i, entry in enumerate(state.sites) if entry.get("name") == check.site), None)
    if index is not None:
        edit_site(term, state, index, db_first=check.kind == "database")


def run_checks(term: Terminal, state: State) -> None:
    """Every check; each failure fixed (then all run again) or kept, as the person says."""
    while True:
        settle(term, state)
        settings, sites = validated(state)
        term.say("\n== Checks ==")
        failed = []
        for check in checks.planned(settings, sites):
            ok, reason = check.run()
            mark = "ok" if ok else ("kept" if check.label in state.kept else "FAILED")
            term.say(f"  {mark:6}  {check.label}: {reason}")
            if not ok and check.label not in state.kept:
                failed.append(check)
        fixed = False
        for check in failed:
            answer = ""
            while answer not in ("f", "k"):
                answer = term.ask(f"{check.label} failed: f to fix it, k to keep it as it is [f]: ").strip() or "f"
            if answer == "k":
                state.kept.add(check.label)
            else:
                fix(term, state, check)
                fixed = True
        if not fixed:
            return


def write(state: State) -> list[str]:
    """sites.json (validated again by save_sites), then `.env`: each only when it changed,
    atomically, 0600, the previous file kept as .bak. What was written, one line each.
    WRITING is set meanwhile: Ctrl-C waits for both files (tasks/configure.py)."""
    settings, _ = validated(state)
    WRITING.set()
    try:
        return _write(state, settings)
    finally:
        WRITING.clear()


def _write(state: State, settings: Settings) -> list[str]:
    lines = []
    exists = os.path.lexists(settings.sites_file)
    if not exists and not state.sites:  # so that the first `doit backup` still looks for sites
        lines.append(f"no site configured: {settings.sites_file} not written (the first doit backup "
                     "looks for sites by itself)")
    elif state.sites != state.sites_before or state.sites_problem:
        save_sites(settings.sites_file, {"sites": state.sites})
        lines.append(f"wrote {settings.sites_file}" + (f" (the previous one: {settings.sites_file}.bak)"
                                                       if exists else ""))
    if state.changed() or state.env.broken_lines:
        previous = save(state.env.path, state.env_text().encode("utf-8"))
        lines.append(f"wrote {state.env.path}" + (f" (the previous one: {previous})" if previous else ""))
    return lines or ["nothing changed: nothing written"]


def introduce(term: Terminal, state: State) -> None:
    term.say(f"wordpress-backup configuration: {state.env.path} and {state.sites_file}")
    term.say("Enter keeps the value in [brackets]; - removes a value (its default applies); "
             "secrets are typed without echo; Ctrl-D stops without writing anything.")
    if state.env.broken_lines:
        lines = ", ".join(map(str, state.env.broken_lines))
        term.say(f"  note: {state.env.path}: line {lines}: not KEY=value, kept as a comment when saving")
    if state.sites_problem:
        term.say(f"  note: {state.sites_problem}: starting from no sites (the old file is kept as .bak)")
    overridden = sorted(name for name in BY_NAME if name in os.environ)
    if overridden:
        term.say(f"  note: set in the environment, which wins over .env: {', '.join(overridden)}")


def wizard(settings: Settings, term: Terminal | None = None) -> list[str]:
    """The interactive wizard; what was written. Abort when the person stops it."""
    term = term or Terminal()
    state = State.load(settings)
    introduce(term, state)
    term.say(f"looking for WordPress sites ({discovery.looked_in()}) ...")
    state.found = discovery.discover(taken=[str(entry.get("name")) for entry in state.sites])
    walk_sections(term, state)
    edit_sites(term, state)
    run_checks(term, state)
    changes = [f"{key}={_shown(key, state.values.get(key)) if key in state.values else '(removed)'}"
               for key in state.changed()]
    if not changes and not state.env.broken_lines and state.sites == state.sites_before and not state.sites_problem:
        return ["nothing changed: nothing written"]
    term.say("\nchanges to .env: " + (", ".join(changes) if changes else "none"))
    if not term.yes(f"Write {state.env.path} and {state.sites_file}?", True):
        raise Abort()
    return write(state)


# --- without questions: --from answers.json, --discover -------------------------------------

ANSWER_KEYS = ("env", "sites", "discover", "skip_checks")
CHECK_KINDS = ("database", "s3", "d1", "smtp", "calendar")


def read_answers(path: Path) -> dict:
    """The answers file: a JSON object of ANSWER_KEYS (docs/configure.md)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BackupError(f"{path}: not found") from None
    except OSError as exc:
        raise BackupError(f"{path}: cannot read: {exc.strerror}") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise BackupError(f"{path}: not a JSON answers file ({str(exc)[:80]})") from None
    if not isinstance(data, dict):
        raise BackupError(f'{path}: expected an object such as {{"env": {{...}}, "sites": [...]}}')
    unknown = [key for key in data if key not in ANSWER_KEYS]
    if unknown:
        raise BackupError(f"{path}: unknown key {', '.join(map(repr, unknown))} (allowed: {', '.join(ANSWER_KEYS)})")
    return data


def _answer_value(name: str, value: object, where: str, problems: list[str]) -> str | None:
    """One env answer as .env text: a string or number, null or "" to remove the key."""
    if name not in BY_NAME:
        close = get_close_matches(name, list(BY_NAME), n=1, cutoff=0.8)
        guess = f"; did you mean {close[0]}?" if close else ""
        problems.append(f"{where}: {name}: not a key this tool reads{guess}")
        return None
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        problems.append(f"{where}: {name}: expected a string or a number")
        return None
    text = str(value).strip(" \t")
    why = value_problem(name, text)
    if why:
        problems.append(f"{where}: {name}: {why}")
    return text


def apply_answers(state: State, answers: dict, source: str) -> list[str]:
    """The answers put into the state; the problems with them (nothing is applied twice)."""
    problems: list[str] = []
    env = answers.get("env", {})
    if not isinstance(env, dict):
        problems.append(f"{source}: env: expected an object of KEY: value")
        env = {}
    for name, value in env.items():
        state.set(name, _answer_value(name, value, f"{source}: env", problems))
    sites = answers.get("sites")
    if sites is not None:
        if isinstance(sites, list) and all(isinstance(entry, dict) for entry in sites):
            state.sites = copy.deepcopy(sites)
        else:
            problems.append(f"{source}: sites: expected a list of site objects, as in sites.json")
    if not isinstance(answers.get("discover", False), bool):
        problems.append(f"{source}: discover: expected true or false")
    skip = answers.get("skip_checks", [])
    if not isinstance(skip, list) or any(kind not in CHECK_KINDS for kind in skip):
        problems.append(f"{source}: skip_checks: expected a list of {', '.join(CHECK_KINDS)}")
    return problems


def from_answers(settings: Settings, path: Path, say=print) -> list[str]:
    """`--from answers.json`: the answers applied, validated and checked like the wizard's;
    nothing is written unless every check passes (or is skipped). BackupError otherwise."""
    answers = read_answers(path)
    state = State.load(settings)
    problems = apply_answers(state, answers, str(path))
    if answers.get("discover") is True and not problems:
        state.found = discovery.discover(taken=[str(entry.get("name")) for entry in state.sites])
        if unlisted(state):
            add_site(_Quiet(say), state, "all")
    if not problems:
        _, problems = load_candidate(state)
        problems += site_problems(state)
    if problems:
        raise BackupError("the answers are not valid, nothing was written: " + "; ".join(problems))
    settings, sites = validated(state)
    failed = []
    for check in checks.planned(settings, sites):
        if check.kind in answers.get("skip_checks", []):
            say(f"  skipped {check.label}")
            continue
        ok, reason = check.run()
        say(f"  {'ok' if ok else 'FAILED':6}  {check.label}: {reason}")
        if not ok:
            failed.append(f"{check.label} ({reason})")
    if failed:
        raise BackupError(f"{len(failed)} check{'s' if len(failed) > 1 else ''} failed, nothing was written: "
                          + "; ".join(failed))
    return write(state)


class _Quiet(Terminal):
    """A terminal that only says (for the parts of the wizard --from reuses)."""

    def __init__(self, say):
        self._say = say

    def say(self, text: str = "") -> None:
        self._say(text)


def refresh_sites(settings: Settings, say=print) -> None:
    """`--discover`: add the sites found since (enabled), report the vanished ones, ask
    nothing. sites.json is written only when a site was added."""
    try:
        entries, problem = read_sites(settings.sites_file)
        if problem:
            raise BackupError(f"{problem}: fix it first (doit configure)")
        found = discovery.discover(taken=[str(entry.get("name")) for entry in entries])
        added, vanished = discovery.refresh(settings.sites_file, found)
    except ConfigError as exc:
        raise BackupError("; ".join(exc.problems)) from None
    by_name = {site.name: site for site in found}
    say(f"found {len(found)} WordPress site{'s' if len(found) != 1 else ''} ({discovery.looked_in()})")
    for name in added:
        site = by_name.get(name)
        say(f"added {discovery.describe(site) if site else name}")
    if added:
        say(f"wrote {settings.sites_file} (the previous one, if any: {settings.sites_file}.bak)")
    else:
        say(f"no new site: {settings.sites_file} unchanged")
    for name in vanished:
        say(f"vanished: {name}: its path holds no WordPress any more; left in sites.json as it is "
            "(disable or remove it with doit configure)")


def interactive() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()

"""What a database holds, and how to make each object again: the inventory of a schema, the
definitions SHOW CREATE gives back, what a dump file creates, and the views' definers on
their way into a scratch database.

    information_schema -> Inventory (tables, views, triggers, routines, events)
    SHOW CREATE ...    -> Definition (the statement and the session settings it needs)
    database.sql       -> DumpObjects (top-level DROP/CREATE lines)  |  ViewDefiners (stream)

The swap (dbswap.py) reads everything it may have to create again before it changes anything.
"""

from __future__ import annotations

import mmap
import re
from dataclasses import dataclass, field
from pathlib import Path

from wpbackup.database.mysql import Session, quote_identifier
from wpbackup.errors import BackupError


def q(name: str) -> str:
    return quote_identifier(name)


def literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


@dataclass
class Inventory:
    """Tables and views (name -> TABLE_TYPE), triggers ((name, table), in firing order),
    routines and events ((kind, name)) of one schema."""

    tables: dict[str, str] = field(default_factory=dict)
    triggers: list[tuple[str, str]] = field(default_factory=list)
    objects: list[tuple[str, str]] = field(default_factory=list)

    @property
    def views(self) -> list[str]:
        return [name for name, kind in self.tables.items() if kind == "VIEW"]

    @property
    def base(self) -> list[str]:
        return [name for name, kind in self.tables.items() if kind != "VIEW"]


def inventory(session: Session, schema: str) -> Inventory:
    s = literal(schema)
    rows = session.query(
        f"SELECT 't', TABLE_NAME, TABLE_TYPE FROM information_schema.TABLES WHERE TABLE_SCHEMA = {s} "
        "ORDER BY TABLE_NAME",
        f"SELECT 'g', TRIGGER_NAME, EVENT_OBJECT_TABLE FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = {s} "
        "ORDER BY EVENT_OBJECT_TABLE, EVENT_MANIPULATION, ACTION_TIMING, ACTION_ORDER",
        f"SELECT 'o', ROUTINE_TYPE, ROUTINE_NAME FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = {s}",
        f"SELECT 'o', 'EVENT', EVENT_NAME FROM information_schema.EVENTS WHERE EVENT_SCHEMA = {s}")
    found = Inventory()
    for row in rows:
        if row[0] == "t":
            found.tables[row[1]] = row[2]
        elif row[0] == "g":
            found.triggers.append((row[1], row[2]))
        else:
            found.objects.append((row[1], row[2]))
    return found


# where SHOW CREATE puts the statement, sql_mode, time_zone and collation_connection
_SHOW_COLUMNS = {"VIEW": (1, None, None, 3), "TRIGGER": (2, 1, None, 4), "PROCEDURE": (2, 1, None, 4),
                 "FUNCTION": (2, 1, None, 4), "EVENT": (3, 1, 2, 5)}
_DEFINER_RE = re.compile(r"DEFINER=(`(?:[^`]|``)*`@`(?:[^`]|``)*`)")


@dataclass
class Definition:
    """One trigger, view, routine or event as SHOW CREATE gives it back, with the session
    settings it was created under."""

    kind: str
    name: str
    create: str
    sql_mode: str | None = None
    time_zone: str | None = None
    collation: str | None = None
    table: str = ""

    def statements(self) -> list[str]:
        sets = []
        if self.sql_mode is not None:
            sets.append(f"SET SESSION sql_mode = {literal(self.sql_mode)}")
        if self.time_zone:
            sets.append(f"SET SESSION time_zone = {literal(self.time_zone)}")
        if self.collation:
            sets.append(f"SET SESSION collation_connection = {literal(self.collation)}")
        return [*sets, self.create]

    def drop(self, schema: str | None = None) -> str:
        where_ = f"{q(schema)}." if schema else ""
        return f"DROP {self.kind} IF EXISTS {where_}{q(self.name)}"

    @property
    def definer(self) -> str | None:
        found = _DEFINER_RE.search(self.create)
        return found.group(1) if found else None


def read_definitions(session: Session, schema: str, items: list[tuple[str, str]],
                     tables: dict[str, str] | None = None) -> list[Definition]:
    """SHOW CREATE for each (kind, name) of ``schema``; refused when one comes back empty (a
    routine of another definer): it could not be made again if the restore had to be undone."""
    if not items:
        return []
    rows = session.query(*[f"SHOW CREATE {kind} {q(schema)}.{q(name)}" for kind, name in items])
    if len(rows) != len(items):
        raise BackupError(f"SHOW CREATE gave {len(rows)} rows for {len(items)} objects of database {schema}")
    found = []
    for (kind, name), row in zip(items, rows, strict=True):
        at, mode, zone, collation = _SHOW_COLUMNS[kind]
        create = row[at] if len(row) > at else "NULL"
        if create == "NULL":
            raise BackupError(f"cannot read the definition of {kind.lower()} {name} in database {schema}: its "
                              "definer is another user; run the restore as root on the database server with "
                              "--admin")
        found.append(Definition(kind, name, create, row[mode] if mode else None, row[zone] if zone else None,
                                row[collation] if len(row) > collation else None,
                                (tables or {}).get(name, "")))
    return found


def in_dependency_order(views: list[Definition], schema: str) -> list[Definition]:
    """Views that select from other views come after them (SHOW CREATE VIEW qualifies every
    name with ``schema``)."""
    by_name = {v.name: v for v in views}
    needs = {v.name: {n for n in by_name if n != v.name and f"{q(schema)}.{q(n)}" in v.create} for v in views}
    ordered: list[Definition] = []
    while needs:
        ready = sorted(n for n, deps in needs.items() if not deps - {v.name for v in ordered})
        if not ready:  # a cycle cannot exist in a server's views; keep going anyway
            ready = sorted(needs)
        for name in ready:
            ordered.append(by_name[name])
            del needs[name]
    return ordered


class ViewDefiners:
    """Takes the DEFINER clause out of the dump's views on their way into the scratch
    database, keeping each view's definer: the server refuses a view whose definer may not
    read the tables under it (ERROR 1356), and the site's user (the usual definer) has no
    rights on a scratch database that --admin's root created. Without the clause the login is
    the definer; the original one is put back when the view is created in live.

    Works on a stream: holds back only what could be the start of such a pair of lines."""

    START = b"\n/*!50013 DEFINER="
    PAIR = re.compile(rb"\n/\*!50013 DEFINER=(`(?:[^`\n]|``)*`@`(?:[^`\n]|``)*`) (SQL SECURITY \w+) \*/\n"
                      rb"/\*!50001 VIEW `((?:[^`\n]|``)+)` AS ")

    def __init__(self) -> None:
        self.held = b""
        self.definers: dict[str, str] = {}

    def feed(self, chunk: bytes) -> bytes:
        data, out, pos = self.held + chunk, bytearray(), 0
        while True:
            at = data.find(self.START, pos)
            if at < 0:
                keep = max(len(data) - (len(self.START) - 1), pos)
                out += data[pos:keep]
                self.held = data[keep:]
                return bytes(out)
            pair = self.PAIR.match(data, at)
            if pair:
                name = pair.group(3).decode("utf-8", "replace").replace("``", "`")
                self.definers[name] = pair.group(1).decode("utf-8", "replace")
                out += data[pos:at] + b"\n/*!50013 " + pair.group(2) + b" */\n/*!50001 VIEW `" + pair.group(3)
                out += b"` AS "
                pos = pair.end()
                continue
            end = data.find(b"\n", at + 1)
            if end < 0 or (len(data) - end < 512 and b"` AS " not in data[end:]):  # may go on in the next chunk
                out += data[pos:at]
                self.held = data[at:]
                return bytes(out)
            out += data[pos:at + 1]  # a DEFINER line of no view: unchanged
            pos = at + 1

    def close(self) -> bytes:
        held, self.held = self.held, b""
        return held

    def put_back(self, view: Definition) -> None:
        """The definer the dump gave ``view``, instead of the login that created it in scratch."""
        original = self.definers.get(view.name)
        if original:
            view.create = _DEFINER_RE.sub(lambda _: f"DEFINER={original}", view.create, count=1)


_NAME = rb"`((?:[^`\n]|``)+)`"
_DUMP_STATEMENT = re.compile(
    rb"^(?:DROP TABLE IF EXISTS " + _NAME + rb";"
    rb"|CREATE TABLE " + _NAME + rb" \("
    rb"|/\*!50001 DROP VIEW IF EXISTS " + _NAME + rb"\*/;"
    rb"|/\*!50003 DROP (PROCEDURE|FUNCTION) IF EXISTS " + _NAME + rb" \*/;"
    rb"|/\*!50106 DROP EVENT IF EXISTS " + _NAME + rb" \*/;"
    rb"|DELIMITER (\S+))\r?$", re.M)


@dataclass
class DumpObjects:
    """What loading a dump file drops and creates, read from its top-level statements (the
    bodies of routines and triggers, between DELIMITER lines, are skipped)."""

    tables: set[str] = field(default_factory=set)
    objects: set[tuple[str, str]] = field(default_factory=set)


def dump_objects(path: Path) -> DumpObjects:
    found = DumpObjects()
    if path.stat().st_size == 0:
        return found

    def name(raw: bytes) -> str:
        return raw.decode("utf-8", "replace").replace("``", "`")

    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        top_level = True
        for match in _DUMP_STATEMENT.finditer(data):
            table, created, view, kind, routine, event, delimiter = match.groups()
            if delimiter is not None:
                top_level = delimiter == b";"
            elif not top_level:
                continue
            elif table or created or view:
                found.tables.add(name(table or created or view))
            elif routine:
                found.objects.add((kind.decode(), name(routine)))
            elif event:
                found.objects.add(("EVENT", name(event)))
    return found

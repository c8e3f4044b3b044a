"""Who loads the database, and what that login may do there.

    the site's login (wp-config.php / sites.json)  |  --admin: the server's root over its socket
      -> survey: CURRENT_USER, its privileges on the database (global and database grants,
         as information_schema shows them), the database's charset and table count

A restore refuses before anything changes when the login may not use the database, with the
GRANT that would let it (what_to_run).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, replace

from wpbackup.config.sites import DbSettings
from wpbackup.config.wpconfig import DbHost
from wpbackup.database.dbobjects import literal, q
from wpbackup.database.mysql import ServerError, Session, where
from wpbackup.errors import BackupError

LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


def grant_pattern(name: str) -> str:
    """The database name as GRANT matches it exactly ('_' and '%' are wildcards there)."""
    return name.replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%")


def default_socket() -> str:
    """The socket a plain `mariadb` on this machine uses: $MYSQL_UNIX_PORT, else the option
    files' setting (my_print_defaults), else Debian's default."""
    if os.environ.get("MYSQL_UNIX_PORT"):
        return os.environ["MYSQL_UNIX_PORT"]
    tool = shutil.which("my_print_defaults")
    if tool:
        out = subprocess.run([tool, "client", "client-server", "client-mariadb", "mysqld", "server", "mariadb"],
                             capture_output=True, text=True).stdout
        found = re.search(r"^--socket=(.+)$", out, re.M)
        if found:
            return found.group(1).strip()
    return "/run/mysqld/mysqld.sock"


def admin_login(db: DbSettings) -> DbSettings:
    """--admin: the database server's own root over its unix socket (on Debian root@localhost
    logs in by unix_socket, so no password exists anywhere), for the database in ``db``."""
    if os.geteuid() != 0:
        raise BackupError("--admin logs in as the database server's own root over its unix socket, which only "
                          "root may do: run the restore as root, or leave --admin out")
    if not db.host.socket and db.host.host not in LOCAL_HOSTS:
        raise BackupError(f"--admin uses the database server of this machine, but the site's database is on "
                          f"{where(db)}: run the restore there, or leave --admin out")
    socket = db.host.socket or default_socket()
    if not os.path.exists(socket):
        raise BackupError(f"--admin: no database server socket at {socket} (set MYSQL_UNIX_PORT to the "
                          "server's socket)")
    return replace(db, user="root", password="", host=DbHost("localhost", None, socket))


_ME = ("CONCAT('''', SUBSTRING_INDEX(CURRENT_USER(), '@', 1), '''@''', "
       "SUBSTRING_INDEX(CURRENT_USER(), '@', -1), '''')")


@dataclass
class Grants:
    """The login's privileges on one database (global ones included), as information_schema
    shows them. With roles active that view is incomplete, so nothing is refused on it."""

    account: str
    privileges: set[str]
    roles: bool = False

    def missing(self, needed: set[str] | frozenset[str]) -> list[str]:
        return [] if self.roles else sorted(set(needed) - self.privileges)

    @property
    def definer(self) -> str:
        user, _, host = self.account.strip("'").partition("'@'")
        return f"{q(user)}@{q(host)}"

    @property
    def may_set_definer(self) -> bool:
        return self.roles or bool({"SUPER", "SET USER"} & self.privileges)


def what_to_run(grants: Grants, name: str, create: bool = False) -> str:
    """The statements that give the login what a restore needs, and the other way out."""
    created = (f"CREATE DATABASE IF NOT EXISTS {q(name)} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci; "
               if create else "")
    return (f"as the database admin, run: {created}GRANT ALL ON {q(grant_pattern(name))}.* TO {grants.account}; "
            "or run the restore as root on the database server with --admin")


@dataclass
class DatabaseState:
    charset: str
    collation: str
    tables: int


def survey(login: DbSettings, options: str) -> tuple[Grants, DatabaseState | None, int]:
    """The login's grants on ``login.name``, the database as this login sees it (None: not
    there, or invisible to it), and the server's port, in one connection."""
    name = literal(login.name)
    with Session(replace(login, name="information_schema"), options, "check the database") as session:
        rows = session.query(
            f"SELECT 'a', {_ME}, @@port",
            f"SELECT 'p', PRIVILEGE_TYPE FROM information_schema.USER_PRIVILEGES WHERE GRANTEE = {_ME}",
            f"SELECT 'p', PRIVILEGE_TYPE FROM information_schema.SCHEMA_PRIVILEGES WHERE GRANTEE = {_ME} "
            f"AND {name} LIKE TABLE_SCHEMA",
            f"SELECT 's', DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA "
            f"WHERE SCHEMA_NAME = {name}",
            f"SELECT 'n', COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = {name}")
        try:
            roles = session.query("SELECT COUNT(ROLE_NAME) FROM information_schema.ENABLED_ROLES")  # NULL: none
        except ServerError:  # a server without roles
            roles = [["0"]]
    account, port = next((r[1], int(r[2] or 0)) for r in rows if r[0] == "a")
    grants = Grants(account, {r[1] for r in rows if r[0] == "p"}, int(roles[0][0]) > 0)
    found = next((r for r in rows if r[0] == "s"), None)
    tables = next(int(r[1]) for r in rows if r[0] == "n")
    return grants, (DatabaseState(found[1], found[2], tables) if found else None), port

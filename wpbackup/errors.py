"""Exceptions that carry a message meant for the operator, not a traceback."""

from __future__ import annotations

from pathlib import Path


class BackupError(Exception):
    """A step failed for a reason the operator can act on (the message says which)."""


class Incomplete(BackupError):
    """The backup was written and stored, but without files or folders it could not read."""


class ConfigError(Exception):
    """Configuration is wrong; ``problems`` holds one readable line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def disk_error(path: Path, exc: OSError) -> BackupError:
    """A write failure, saying plainly when the disk is full."""
    full = " (disk full)" if exc.errno in (28, 122) else ""  # ENOSPC, EDQUOT
    return BackupError(f"cannot write {path}: {exc.strerror}{full}")

"""Exceptions that carry a message meant for the operator, not a traceback."""

from __future__ import annotations


class BackupError(Exception):
    """A step failed for a reason the operator can act on (the message says which)."""


class ConfigError(Exception):
    """Configuration is wrong; ``problems`` holds one readable line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))

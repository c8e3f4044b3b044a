"""The member check that restore and verify share: may this archive be extracted?

    every tar member -> MemberCheck.check (name, type, link target, by name alone)
    end of listing   -> MemberCheck.finish (nothing goes through a symbolic link)

It refuses what tarfile's 'data' filter refuses (absolute names, '..' leaving the tree,
devices and FIFOs, absolute link targets, links leading out of the tree), written here
because Debian 12's Python 3.11.2 and Ubuntu 22.04's 3.10 predate that filter (3.11.4,
3.10.12). Everything is decided by the names in the archive, never by the disk: the target
folder is being written while the check runs, so what is on disk proves nothing. On top of
the filter, no member and no link target may pass through a symbolic link of the archive.
"""

from __future__ import annotations

import posixpath
import re
import tarfile

from wpbackup.errors import BackupError


def _refused(name: str, why: str) -> BackupError:
    return BackupError(f"refused archive member {name!r}: {why}; nothing was changed")


def _leaves(relative: str) -> bool:
    """Does this relative path, normalised by name, end up outside the tree?"""
    normal = posixpath.normpath(relative)
    return normal == ".." or normal.startswith("../") or normal.startswith("/")


def check_member(member: tarfile.TarInfo) -> None:
    """Refuse one member the 'data' filter would refuse, or whose name is absolute."""
    name = member.name
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise _refused(name, "absolute path")
    if _leaves(name):
        raise _refused(name, "its path leads outside the restored tree")
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
        raise _refused(name, "a device, FIFO or other special file")
    if member.issym() or member.islnk():
        if member.linkname.startswith("/"):
            raise _refused(name, f"link to the absolute path {member.linkname!r}")
        base = posixpath.dirname(name) if member.issym() else ""
        if _leaves(posixpath.join(base, member.linkname)):
            raise _refused(name, f"its link target {member.linkname!r} leads outside the restored tree")


def _walk_target(base: str, target: str, symlinks: set[str]) -> bool:
    """Follow a link target component by component, by name only: False when it leaves the
    tree, or goes on through a component that is itself a symbolic link."""
    if target.startswith("/"):
        return False
    stack = [p for p in base.split("/") if p not in ("", ".")]
    parts = [p for p in target.split("/") if p not in ("", ".")]
    for index, part in enumerate(parts):
        if part == "..":
            if not stack:
                return False
            stack.pop()
            continue
        stack.append(part)
        if index < len(parts) - 1 and "/".join(stack) in symlinks:
            return False
    return True


class MemberCheck:
    """Checks each member as it streams by, then the links once the whole listing is known."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.links: dict[str, tuple[bool, str]] = {}

    def check(self, member: tarfile.TarInfo) -> None:
        check_member(member)
        name = posixpath.normpath(member.name)  # ./a/ and a are one path (tar writes ./NAME too)
        self.names.append(name)
        if member.issym() or member.islnk():
            self.links[name] = (member.issym(), member.linkname)

    def finish(self) -> None:
        """No member and no link target may pass through a symbolic link, and no link may
        lead out of the tree (a later link can redirect an earlier one's target)."""
        symlinks = {name for name, (symbolic, _) in self.links.items() if symbolic}
        for name in self.names:
            parts = name.split("/")
            if any("/".join(parts[:n]) in symlinks for n in range(1, len(parts))):
                raise _refused(name, "it goes through a symbolic link")
        for name, (symbolic, target) in self.links.items():
            base = posixpath.dirname(name) if symbolic else ""
            if not _walk_target(base, target, symlinks):
                raise _refused(name, f"its link target {target!r} leaves the restored tree or goes "
                                     "through another link")

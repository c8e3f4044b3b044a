"""Writing POSIX (pax) tar members straight into a byte stream, without tarfile's own
buffering and without ending the archive, so one archive can be built in several pieces:

    files part: members...            (tar stage)
    rest:       members... + end      (compress stage, appended later)

The walk (one site tree, sorted, depth first) and what it does with symbolic links:

    archived top (root, or root/wp-content)   followed when it is a link: a real folder member
    link -> inside the archived tree          a relative link member to that archive name
    link -> folder already archived           a relative link member to it (no loop, no copy)
    link -> outside the tree (file/folder)    followed: archived in the link's place, recorded
    dangling link                             a link when its target is inside, else left out

So every link member is relative, stays in the tree and goes through no other link: restore's
member check (members.py) accepts every archive written here, and stock tar extracts it.

Files that cannot be read (or vanish, or shrink while read) are recorded as unreadable and
archived around; files that grow or change are warnings. A member always keeps the size its
header announced (zero-padded or cut), so the tar stays readable.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import posixpath
import re
import stat
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, NamedTuple

BLOCK = 512
RECORD = BLOCK * 20
CHUNK = 1 << 20


def padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


def header(info: tarfile.TarInfo) -> bytes:
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")


def end_of_archive(written: int) -> bytes:
    """The two zero blocks that end a tar, padded to a whole record like GNU tar does."""
    total = written + 2 * BLOCK
    return b"\0" * (2 * BLOCK + (-total % RECORD))


#: the archive's own members, written after the site's (archive.py)
OWN_MEMBERS = ("database.sql", "manifest.json")


def member_name(name: str) -> str:
    """The tar name of a site path. With `files: all` the site root may hold its own
    database.sql or manifest.json (a stale dump, a web app manifest): those, and anything in
    a folder of that name, go in as ``./database.sql``, so no reader takes them for the
    archive's members, and GNU tar's ``--anchored --exclude=database.sql`` keeps them."""
    return f"./{name}" if name.split("/", 1)[0] in OWN_MEMBERS else name


def bytes_member(name: str, data: bytes, mtime: float, mode: int = 0o600) -> bytes:
    """A whole member (header, data, padding) for small in-memory content."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(mtime), mode
    return header(info) + data + padding(len(data))


LISTED = 200  # entries kept per list (the counts go on)


@dataclass
class TreeStats:
    """What went into the files part: counted for the manifest and the summary.

    ``unreadable`` (files and folders whose content is missing from the archive) makes the
    backup incomplete; ``warnings`` do not. ``followed`` names the links whose outside target
    was archived in their place, ``left_out`` the links that could not be stored."""

    files: int = 0
    bytes: int = 0
    dirs: int = 0
    links: int = 0
    written: int = 0
    warnings: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    unreadable_count: int = 0
    followed: list[dict[str, str]] = field(default_factory=list)
    followed_count: int = 0
    left_out: list[dict[str, str]] = field(default_factory=list)
    left_out_count: int = 0

    def warn(self, message: str) -> None:
        if len(self.warnings) < LISTED:
            self.warnings.append(message)

    def cannot_read(self, name: str, reason: str) -> None:
        self.unreadable_count += 1
        if len(self.unreadable) < LISTED:
            self.unreadable.append(f"{name}: {reason}")

    def follow(self, name: str, target: str) -> None:
        self.followed_count += 1
        if len(self.followed) < LISTED:
            self.followed.append({"name": name, "target": target})

    def leave_out(self, name: str, target: str, reason: str) -> None:
        self.left_out_count += 1
        if len(self.left_out) < LISTED:
            self.left_out.append({"name": name, "target": target, "reason": reason})


def exclusion_matcher(patterns: Iterable[str]) -> Callable[[str], bool]:
    """One compiled regex for all patterns: is this relative path itself excluded?"""
    patterns = tuple(patterns)
    if not patterns:
        return lambda relative: False
    regex = re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))
    return lambda relative: regex.match(relative) is not None


def is_excluded(relative: str, patterns: Iterable[str]) -> bool:
    """True when the path, or any folder above it, matches one of the patterns."""
    matches = exclusion_matcher(patterns)
    parts = relative.split("/")
    return any(matches("/".join(parts[:depth])) for depth in range(1, len(parts) + 1))


def _info(name: str, st: os.stat_result) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.mtime = int(st.st_mtime)
    return info


class Entry(NamedTuple):
    """One member to write. ``path`` is where its content is read: for a followed link, its
    resolved target. ``outside``: the content lies outside the archived real tree."""

    name: str
    path: Path
    st: os.stat_result
    linkname: str | None = None
    outside: bool = False


_DANGLING = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)


class _Tree:
    """The archived tree as the walk knows it: its real location, the archive name that
    location has, and the folders archived from outside it (by device and inode) so that a
    second link to one, or a link back up to one, becomes a link instead of a loop or a copy.
    Folders inside the tree need no such map: their archive name follows from their path."""

    def __init__(self, real: str, prefix: str, skip: set[tuple[int, int]], stats: TreeStats):
        self.real, self.prefix, self.skip, self.stats = real, prefix, skip, stats
        self.real_slash = real.rstrip("/") + "/"
        self.outside_dirs: dict[tuple[int, int], str] = {}

    def archive_name(self, real: str) -> str | None:
        """The archive name of a resolved path inside the archived tree (None outside it)."""
        if real == self.real:
            return self.prefix or "."
        if not real.startswith(self.real_slash):
            return None
        rel = real[len(self.real_slash):]
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def link_to(self, name: str, lst: os.stat_result, target: str) -> Entry:
        """A link member at ``name`` to the archive name ``target``, written relative."""
        return Entry(name, Path(), lst, posixpath.relpath(target, posixpath.dirname(name) or "."))

    def as_written(self, name: str, path: Path, text: str) -> str | None:
        """The link's own text, when it is relative, names its target by plain folder names
        (only leading '..'), and means the same by archive names as on disk: then the link is
        kept byte for byte (even a link to a link). None when it must be rewritten."""
        if not text or text.startswith("/"):
            return None
        parts = text.split("/")
        ups = 0
        while ups < len(parts) and parts[ups] == "..":
            ups += 1
        if any(part in ("", ".", "..") for part in parts[ups:]):
            return None
        target = os.path.normpath(os.path.join(os.path.realpath(path.parent), text))
        folder = os.path.dirname(target)
        if os.path.realpath(folder) != folder:  # goes through a link on disk
            return None
        inside = self.archive_name(target)
        if inside is None or posixpath.normpath(posixpath.join(posixpath.dirname(name), text)) != inside:
            return None
        return text

    def link(self, name: str, path: Path, lst: os.stat_result) -> Entry | None:
        """What a symbolic link met at archive name ``name`` becomes (see the module docstring)."""
        try:
            text = os.readlink(path)
        except OSError as exc:
            self.stats.cannot_read(name, f"vanished before it was read ({exc.strerror})")
            return None
        kept = self.as_written(name, path, text)
        if kept is not None:
            return Entry(name, path, lst, kept)
        real = os.path.realpath(path)
        inside = self.archive_name(real)  # existing or not: its name in the archive is known
        if inside is not None:
            return self.link_to(name, lst, inside)
        try:
            st = os.stat(real)
        except OSError as exc:
            return self.dangling(name, lst, text, real, exc)
        known = self.outside_dirs.get((st.st_dev, st.st_ino)) if stat.S_ISDIR(st.st_mode) else None
        if known is not None:
            return self.link_to(name, lst, known)
        if (st.st_dev, st.st_ino) in self.skip:
            return None
        if stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode):
            self.stats.follow(name, real)
            return Entry(name, Path(real), st, outside=True)
        self.stats.warn(f"{name}: skipped (link to {real}, not a regular file or folder)")
        self.stats.leave_out(name, text, "its target is not a regular file or folder")
        return None

    def dangling(self, name: str, lst: os.stat_result, text: str, real: str, exc: OSError) -> Entry | None:
        """A link to outside the tree whose target cannot be reached: kept when it points into
        a folder archived from outside, else left out and named."""
        if exc.errno not in _DANGLING:
            self.stats.cannot_read(name, f"cannot read its target {real}: {exc.strerror}")
            self.stats.leave_out(name, text, f"its target cannot be read: {exc.strerror}")
            return None
        inside = self.below_outside_dir(real) if self.outside_dirs else None
        if inside is not None:
            return self.link_to(name, lst, inside)
        self.stats.leave_out(name, text, "dangling link to outside the site")
        return None

    def below_outside_dir(self, real: str) -> str | None:
        """Archive name of a missing path whose nearest existing folder was archived from outside."""
        head, rest = real, []
        while head != os.path.dirname(head):
            head, tail = os.path.split(head)
            rest.insert(0, tail)
            try:
                st = os.stat(head)
            except OSError:
                continue
            found = self.outside_dirs.get((st.st_dev, st.st_ino))
            return posixpath.join(found, *rest) if found else None
        return None

    def outside_dir(self, name: str, path: Path, st: os.stat_result) -> Entry:
        """A real folder met below a followed link: a link when it is the archived tree (a
        followed link to an ancestor of it) or was archived already, else a folder."""
        inside = self.archive_name(str(path)) or self.outside_dirs.get((st.st_dev, st.st_ino))
        if inside is not None:
            return self.link_to(name, st, inside)
        return Entry(name, path, st, outside=True)

    def entered(self, entry: Entry) -> None:
        if entry.outside:
            self.outside_dirs[(entry.st.st_dev, entry.st.st_ino)] = entry.name


def _listing(folder: Path, rel: str, stats: TreeStats) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as iterator:
            return sorted(iterator, key=lambda e: e.name)
    except OSError as exc:
        stats.cannot_read(rel or ".", f"cannot list: {exc.strerror}")
        return []


def _entry(tree: _Tree, name: str, dir_entry: os.DirEntry, outside: bool) -> Entry | None:
    """What one directory entry becomes (None: nothing is written for it)."""
    try:
        st = dir_entry.stat(follow_symlinks=False)
    except OSError as exc:
        tree.stats.cannot_read(name, f"vanished before it was read ({exc.strerror})")
        return None
    if (st.st_dev, st.st_ino) in tree.skip:
        return None
    path = Path(dir_entry.path)
    if stat.S_ISLNK(st.st_mode):
        return tree.link(name, path, st)
    if outside and stat.S_ISDIR(st.st_mode):
        return tree.outside_dir(name, path, st)
    return Entry(name, path, st, outside=outside)


def walk(root: Path, start: str, excludes: Iterable[str], skip: set[tuple[int, int]],
         stats: TreeStats) -> Iterator[Entry]:
    """Yield the members below root/start, depth first, sorted, pruned; root/start itself is
    followed when it is a link (a folder member ``start``, or the root's contents)."""
    excluded = exclusion_matcher(excludes)  # folders are pruned, so each path is tested once
    top = root / start if start else root
    try:
        st = top.stat()
    except OSError as exc:
        stats.cannot_read(start or ".", exc.strerror)
        return
    tree = _Tree(os.path.realpath(top), start, skip, stats)
    if top.is_symlink():
        stats.follow(start or ".", tree.real)
    if start:
        yield Entry(start, top, st)
    stack = [(top, start, False)]
    while stack:
        folder, rel, outside = stack.pop()
        subdirs = []
        for dir_entry in _listing(folder, rel, stats):
            name = f"{rel}/{dir_entry.name}" if rel else dir_entry.name
            if excluded(name):
                continue
            entry = _entry(tree, name, dir_entry, outside)
            if entry is None:
                continue
            is_folder = entry.linkname is None and stat.S_ISDIR(entry.st.st_mode)
            if is_folder:
                tree.entered(entry)
            yield entry
            if is_folder:
                subdirs.append((entry.path, name, entry.outside))
        stack.extend(reversed(subdirs))


def write_tree(out: BinaryIO, root: Path, start: str, excludes: Iterable[str],
               skip: set[tuple[int, int]], stats: TreeStats,
               progress: Callable[[int], None] | None = None) -> None:
    """Write every member below root/start to ``out`` (no end-of-archive blocks)."""
    for entry in walk(root, start, excludes, skip, stats):
        write_entry(out, entry, stats, progress)


def write_entry(out: BinaryIO, entry: Entry, stats: TreeStats,
                progress: Callable[[int], None] | None = None) -> os.stat_result | None:
    """One member of the walk; for a regular file, the stat its header was made from (None
    when it could not be opened, or for other members)."""
    mode = entry.st.st_mode
    if entry.linkname is not None:
        info = _info(member_name(entry.name), entry.st)
        info.type, info.mode, info.linkname = tarfile.SYMTYPE, 0o777, entry.linkname
        chunk = header(info)
        out.write(chunk)
        stats.links += 1
        stats.written += len(chunk)
    elif stat.S_ISDIR(mode):
        info = _info(member_name(entry.name), entry.st)
        info.type = tarfile.DIRTYPE
        chunk = header(info)
        out.write(chunk)
        stats.dirs += 1
        stats.written += len(chunk)
    elif stat.S_ISREG(mode):  # the walk saw a regular file there: never follow what replaced it
        return write_file(out, entry.path, member_name(entry.name), stats, progress, nofollow=True)
    else:
        stats.warn(f"{entry.name}: skipped (not a regular file, folder or link)")
    return None


def write_file(out: BinaryIO, path: Path, name: str, stats: TreeStats,
               progress: Callable[[int], None] | None = None, nofollow: bool = False) -> os.stat_result | None:
    """One regular file as a member; its size is fixed by fstat of the opened file (returned;
    None when the file could not be opened). ``nofollow``: a symbolic link put in its place
    since it was seen is not followed (it cannot be read as this member)."""
    try:
        handle = open(os.open(path, os.O_RDONLY | (os.O_NOFOLLOW if nofollow else 0)), "rb", buffering=0)
    except FileNotFoundError:
        stats.cannot_read(name, "vanished before it was read")
        return None
    except OSError as exc:
        stats.cannot_read(name, f"cannot read: {exc.strerror}")
        return None
    with handle:
        st = os.fstat(handle.fileno())
        info = _info(name, st)
        info.size = size = st.st_size
        head = header(info)
        out.write(head)
        _copy_body(out, handle, name, size, stats, progress)
        if _read_more(handle):
            stats.warn(f"{name}: grew while being read; stored the first {size} bytes")
        if os.fstat(handle.fileno()).st_mtime != st.st_mtime:
            stats.warn(f"{name}: changed while being read")
    pad = padding(size)
    out.write(pad)
    stats.files += 1
    stats.bytes += size
    stats.written += len(head) + size + len(pad)
    return st


def _copy_body(out: BinaryIO, handle: BinaryIO, name: str, size: int, stats: TreeStats,
               progress: Callable[[int], None] | None) -> None:
    """Exactly ``size`` bytes of the member: the file's, then zeros if it shrank or a read
    failed (its header is written already; the tar must stay readable)."""
    remaining = size
    while remaining:
        try:
            chunk = handle.read(min(CHUNK, remaining))
        except OSError as exc:
            stats.cannot_read(name, f"read failed after {size - remaining} bytes ({exc.strerror}); "
                                    "padded with zeros")
            break
        if not chunk:
            stats.cannot_read(name, "shrank while being read; padded with zeros")
            break
        out.write(chunk)
        remaining -= len(chunk)
        if progress:
            progress(len(chunk))
    filler = b"\0" * min(CHUNK, remaining)
    while remaining:
        piece = filler[:remaining]
        out.write(piece)
        remaining -= len(piece)


def _read_more(handle: BinaryIO) -> bool:
    try:
        return bool(handle.read(1))
    except OSError:
        return False

"""The files side of a restore: where GNU tar extracts, and how the result replaces the
live folder, each step undone when a later one fails.

    check    the folder to replace: TARGET (files: all) or TARGET/wp-content, links resolved
             a mount point        -> its contents are replaced, entry by entry (a mount
                                     point cannot be renamed)
             otherwise            -> the folder itself is renamed, in its own directory
             refused: a mount point inside it, a place we may not write, immutable entries
    extract  into .NAME.restore-PID beside the folder (inside it, for a mount point); what a
             killed restore left there first: its extraction removed, the old tree named
    swap     live -> .NAME.old-PID, restored -> live   (undo: the same renames, backwards)
    finish   the old tree removed;  discard: the temporary folder and what we created
"""

from __future__ import annotations

import fcntl
import glob
import os
import shutil
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path

from wpbackup.backup.children import pid_gone
from wpbackup.config.wpconfig import find_wp_config
from wpbackup.console import log
from wpbackup.errors import BackupError

FS_IOC_GETFLAGS = 0x80086601
PINNED_FLAGS = 0x10 | 0x20  # FS_IMMUTABLE_FL, FS_APPEND_FL: not even root may rename such an entry


def _unescape_mount(raw: bytes) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    out, i = bytearray(), 0
    while i < len(raw):
        if raw[i:i + 1] == b"\\" and raw[i + 1:i + 4].isdigit():
            out.append(int(raw[i + 1:i + 4], 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return os.fsdecode(bytes(out))


def mount_points() -> set[str]:
    """Every mount point of this process's view (bind mounts of one filesystem included,
    which st_dev cannot tell apart)."""
    try:
        with open("/proc/self/mountinfo", "rb") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return set()
    return {_unescape_mount(line.split(b" ")[4]) for line in lines if len(line.split(b" ")) > 4}


def is_mount(path: Path, points: set[str]) -> bool:
    return str(path) in points or os.path.ismount(path)


def mount_of(path: Path, points: set[str]) -> str:
    """The mount point that holds ``path`` (the longest one it lies under)."""
    text = str(path)
    return max((p for p in points if text == p or text.startswith(p.rstrip("/") + "/")), key=len, default="/")


def pinned(path: Path) -> bool:
    """Immutable or append-only (chattr +i / +a): a rename of it fails even for root."""
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode) and not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        flags = struct.unpack("I", fcntl.ioctl(fd, FS_IOC_GETFLAGS, b"\0" * 8)[:4])[0]
    except OSError:  # a filesystem without such flags
        return False
    finally:
        os.close(fd)
    return bool(flags & PINNED_FLAGS)


def _refused(why: str) -> BackupError:
    return BackupError(f"{why}; nothing was changed")


def folder_to_replace(root: Path, mode: str) -> Path:
    """TARGET for a whole-root archive, else TARGET/wp-content; a link is followed, so the
    folder it points to is replaced and the link stays."""
    if mode == "all":
        return root
    content = root / "wp-content"
    return Path(os.path.realpath(content)) if content.is_symlink() else content


@dataclass
class FilesPlan:
    """Where the restored tree is extracted, checked before the archive is read."""

    target: Path                 # the site root, as given
    root: Path                   # the same, links resolved
    tmp: Path                    # GNU tar extracts here
    created: list[Path] = field(default_factory=list)  # folders made for this restore

    def discard(self) -> None:
        """Remove the temporary folder, and the folders made for it (the restore failed)."""
        shutil.rmtree(self.tmp, ignore_errors=True)
        for folder in reversed(self.created):
            try:
                folder.rmdir()
            except OSError:
                pass


def _check_place(folder: Path, contents: bool, points: set[str]) -> None:
    """What can be known before anything changes: no mount point inside the folder (its
    filesystem would be moved away, then emptied), writable, nothing pinned."""
    if folder.exists() and not folder.is_dir():
        raise _refused(f"{folder} is not a folder")
    inside = sorted(p for p in points if p.startswith(str(folder).rstrip("/") + "/"))
    if inside:
        raise _refused(f"{inside[0]} is a mount point inside {folder}, which this restore replaces: unmount it "
                       "first, or restore into another --target")
    where = folder if contents else folder.parent
    if where.exists() and not os.access(where, os.W_OK | os.X_OK):
        raise _refused(f"cannot write to {where}, where the restored files are swapped in (run the restore as "
                       "the site files' owner, or as root)")
    stuck = [where] if pinned(where) else []
    if contents:
        stuck += [folder / name for name in sorted(os.listdir(folder)) if pinned(folder / name)]
    elif folder.exists() and pinned(folder):
        stuck.append(folder)
    if stuck:
        raise _refused(f"{stuck[0]} is immutable or append-only (lsattr shows it): the restore could not move it; "
                       "clear it with chattr -i / chattr -a first")


def _left_by_killed(place: Path, prefix: str) -> list[Path]:
    """What restores killed outright named ``PREFIX-PID`` in ``place`` (a running one's, or
    a link, is not theirs)."""
    return sorted(path for path in place.glob(f"{glob.escape(prefix)}-*")
                  if pid_gone(path.name.rsplit("-", 1)[1]) and not path.is_symlink())


def _name_kept(tree: Path) -> None:
    log.warning("%s holds the files a restore that was killed had moved out of the way (the site as it was "
                "before that restore); it is kept: remove it once you no longer need it", tree)


def clear_leftovers(place: Path, partial: str, moved: str | None) -> None:
    """What a restore killed outright (SIGKILL, a crash, a reboot) left in ``place``: its
    partial extraction ``PARTIAL-PID`` is removed, since it never was the live site; the live
    files it had moved aside, ``MOVED-PID``, are kept and named, since they may be the only copy
    of the site as it was before. Names of a restore still running are not touched."""
    for path in _left_by_killed(place, partial):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        log.info("removed %s, left half-written by a restore that was killed", path)
    for tree in _left_by_killed(place, moved) if moved else []:
        if tree.is_dir():
            _name_kept(tree)


#: names a restore gives what it moves aside or extracts inside a folder (a mount point, or a
#: root holding wp-content): a later restore leaves them where they are
_LEFT_INSIDE = (".wpbackup-old-", ".wpbackup-restore-", ".wp-content.old-", ".wp-content.restore-")


def _keep_moved_aside(folder: Path, contents: bool) -> None:
    """A tree a killed restore moved aside inside the folder this one replaces: left in place
    (and named) when only the folder's contents are swapped, else the restore is refused,
    since the folder goes with everything in it."""
    inside = [tree for prefix in (".wpbackup-old", ".wp-content.old") for tree in _left_by_killed(folder, prefix)
              if tree.is_dir()] if folder.is_dir() else []
    for tree in inside:
        if not contents:
            raise _refused(f"{tree} holds the files a restore that was killed had moved out of the way (maybe the "
                           f"only copy of the site as it was before it), and this restore replaces {folder} with "
                           f"everything in it: move it out of {folder}, or remove it, then restore again")
        _name_kept(tree)


def plan_files(target: Path, mode: str) -> FilesPlan:
    """Decide where GNU tar extracts for the site's configured ``mode``, checking the swap
    can work there. Creates the folders the extraction needs (undone by discard())."""
    root = Path(os.path.realpath(target))
    folder = folder_to_replace(root, mode)
    points = mount_points()
    contents = folder.is_dir() and is_mount(folder, points)
    _check_place(folder, contents, points)
    _keep_moved_aside(folder, contents)
    place = folder if contents else folder.parent
    created: list[Path] = []
    if not place.exists():
        missing = [p for p in [place, *place.parents] if not p.exists()]
        place.mkdir(parents=True)
        created = [p for p in reversed(missing) if p == root or root in p.parents]  # kept: parents of the root
    name = ".wpbackup-restore" if contents else f".{folder.name}.restore"
    clear_leftovers(place, name, None if contents else f".{folder.name}.old")
    clear_leftovers(root, ".wp-config.php.restore", None)
    tmp = place / f"{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=0o700)
    return FilesPlan(target, root, tmp, created)


class FilesSwap:
    """The swap for the archive's own mode (it may differ from the site's configuration)."""

    def __init__(self, plan: FilesPlan, mode: str):
        self.plan, self.mode = plan, mode
        self.folder = folder_to_replace(plan.root, mode)
        points = mount_points()
        self.contents = plan.tmp.parent == self.folder  # the temporary folder lies inside it
        if not self.contents:
            if self.folder.is_dir() and is_mount(self.folder, points):
                raise _refused(f"{self.folder} is a mount point, but the restored files were extracted outside it "
                               "(the archive's files mode differs from the site's); restore into another --target")
            if mount_of(plan.tmp.parent, points) != mount_of(self.folder.parent, points):
                raise _refused(f"{self.folder} is on another filesystem than the restored files (the archive's "
                               "files mode differs from the site's); restore into another --target")
        _check_place(self.folder, self.contents, points)
        self.done: list[tuple[Path, Path]] = []
        self.old: Path | None = None
        self.placed: Path | None = None

    @property
    def source(self) -> Path:
        return self.plan.tmp if self.mode == "all" else self.plan.tmp / "wp-content"

    def _rename(self, src: Path, dst: Path) -> None:
        os.rename(src, dst)
        self.done.append((src, dst))

    def apply(self) -> None:
        """Swap the restored files in; what was done is recorded for undo()."""
        if self.source.exists():
            (self._swap_contents if self.contents else self._swap_folder)()
        if self.mode != "all":
            self._place_config()

    def _swap_folder(self) -> None:
        if self.folder.exists():
            if self.mode == "all":  # the root itself is not an archive member: keep its mode and owner
                st = os.stat(self.folder)
                os.chmod(self.source, stat.S_IMODE(st.st_mode))
                if os.geteuid() == 0:
                    os.chown(self.source, st.st_uid, st.st_gid)
            self.old = self.folder.with_name(f".{self.folder.name}.old-{os.getpid()}")
            self._rename(self.folder, self.old)
        elif self.mode == "all":
            os.chmod(self.source, 0o755)
        self._rename(self.source, self.folder)

    def _swap_contents(self) -> None:
        """A mount point stays; what is in it moves aside, entry by entry, and the restored
        entries move in."""
        self.old = self.folder / f".wpbackup-old-{os.getpid()}"
        self.old.mkdir(mode=0o700)
        for name in sorted(os.listdir(self.folder)):
            if name not in (self.plan.tmp.name, self.old.name) and not name.startswith(_LEFT_INSIDE):
                self._rename(self.folder / name, self.old / name)
        for name in sorted(os.listdir(self.source)):
            self._rename(self.source / name, self.folder / name)

    def _place_config(self) -> None:
        """The archived wp-config.php only where the site has none (the live one holds the
        current credentials); a copy when it lies on another filesystem."""
        config = self.plan.tmp / "wp-config.php"
        if not config.exists():
            return
        if find_wp_config(self.plan.root) is not None:
            log.info("kept the existing wp-config.php of %s (the archived one holds the old credentials)",
                     self.plan.root)
            return
        live = self.plan.root / "wp-config.php"
        partial = live.with_name(f".wp-config.php.restore-{os.getpid()}")
        shutil.copy2(config, partial)
        os.rename(partial, live)
        self.placed = live

    def undo(self) -> None:
        """The renames backwards. Raises when something could not be put back, naming it."""
        failures = []
        if self.placed is not None:
            self.placed.unlink(missing_ok=True)
            self.placed = None
        for src, dst in reversed(self.done):
            try:
                os.rename(dst, src)
            except OSError as exc:
                failures.append(f"{dst} -> {src}: {exc.strerror}")
        self.done.clear()
        if self.contents and self.old is not None and not failures:
            try:
                self.old.rmdir()
            except OSError:
                pass
        if failures:
            raise BackupError("the files could not be put back completely (" + "; ".join(failures)
                              + f"); the old files are in {self.old}")

    def finish(self) -> None:
        """The restored files are in: remove the old ones and the temporary folder."""
        self.done.clear()
        for leftover in (self.old, self.plan.tmp):
            if leftover is not None and leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)
                if leftover.exists():
                    log.warning("restored, but %s could not be removed completely", leftover)

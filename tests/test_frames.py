"""The stable frame layout (wpbackup/backup/frames.py): the same site state gives the same
archive bytes whether its frames were compressed tonight or copied from last night's
archive, stock tar reads every archive, and nothing of a changed file is ever reused."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from wpbackup.backup import archive
from wpbackup.backup.frames import BIG, RACY, index_path, load_index

LEVEL = 3


def _site(root: Path) -> Path:
    """A small site: many small code files (runs of members) and some big uploads (frames of
    their own), in several folders."""
    (root / "wp-content" / "plugins").mkdir(parents=True)
    (root / "wp-config.php").write_text("<?php define('DB_NAME', 'x');\n")
    for plugin in range(6):
        folder = root / "wp-content" / "plugins" / f"plugin-{plugin}"
        folder.mkdir()
        for n in range(60):
            (folder / f"file-{n:03d}.php").write_text(f"<?php // plugin {plugin} file {n}\n" + "echo 'x';\n" * (n * 30))
    for year in (2024, 2025):
        folder = root / "wp-content" / "uploads" / str(year)
        folder.mkdir(parents=True)
        for n in range(8):
            (folder / f"image-{n}.jpg").write_bytes(os.urandom(BIG + n * 50_000 if n % 2 else 40_000))
    _settle()
    return root


def _settle() -> None:
    """Files changed less than RACY seconds before they are read are never reused: wait."""
    time.sleep(RACY + 0.1)


def _build(root: Path, out: Path, previous: Path | None = None, stamp: str = "20261201-000000",
           sql: bytes = b"CREATE TABLE t (a INT);\nINSERT INTO t VALUES (1);\n") -> tuple[Path, object]:
    """A whole archive (files part, a dump, the manifest) as the backup stages make it."""
    work = out / stamp
    work.mkdir(parents=True)
    part = archive.write_files_part(root, "wp-content", root / "wp-config.php", (), set(), work / "files.part.zst",
                                    LEVEL, 0, previous=previous)
    dump = work / "database.sql"
    dump.write_bytes(sql)
    os.utime(dump, (1_700_000_000, 1_700_000_000))
    target = out / f"blog-backup-{stamp}.tar.zst"
    finished = archive.finish_archive(work / "files.part.zst", part.size, part.stats.written, dump,
                                      {"site": "blog"}, target, LEVEL, 0, previous=previous)
    part.dump_pieces_copied = finished.dump_pieces_copied
    return target, part


def _sql(rows: int, edited: int | None = None) -> bytes:
    """An extended INSERT as mariadb-dump writes it, in statements of about 1 MiB."""
    out, statement = [b"CREATE TABLE wp_posts (ID INT, post_content TEXT);\n"], []
    for n in range(rows):
        text = "edited " * 40 if n == edited else f"post {n} " + "lorem ipsum " * (n % 50)
        statement.append(f"({n},'{text}')".encode())
        if sum(map(len, statement)) > 1 << 20:
            out.append(b"INSERT INTO wp_posts VALUES " + b",".join(statement) + b";\n")
            statement = []
    if statement:
        out.append(b"INSERT INTO wp_posts VALUES " + b",".join(statement) + b";\n")
    return b"".join(out)


def _members(path: Path) -> list[str]:
    listing = subprocess.run(["tar", "--zstd", "-tf", str(path)], capture_output=True, text=True, check=True)
    return listing.stdout.split()


def _same_state_fresh(root: Path, tmp: Path, stamp: str) -> Path:
    fresh, part = _build(root, tmp / "fresh", stamp=stamp)
    assert part.reuse.frames == 0
    return fresh


def test_unchanged_site_copies_every_frame_and_gives_the_same_bytes(tmp_path):
    root = _site(tmp_path / "site")
    first, _ = _build(root, tmp_path / "out")
    second, part = _build(root, tmp_path / "out", previous=first, stamp="20261202-000000")
    assert part.reuse.files == part.stats.files and part.reuse.files > 0
    assert second.read_bytes() == first.read_bytes()
    assert second.read_bytes() == _same_state_fresh(root, tmp_path, "20261202-000000").read_bytes()
    index = load_index(index_path(second))
    assert index is not None and index.source == first.name and index.sha256
    copied = [f for f in index.frames if f.source is not None]
    assert copied and all(f.key for f in copied)
    assert "wp-content/plugins/plugin-3/file-010.php" in _members(second)


@pytest.mark.parametrize("change", ["changed", "deleted", "renamed", "new plugin", "touched"])
def test_a_change_rewrites_only_its_frames_and_the_archive_equals_a_fresh_one(tmp_path, change):
    root = _site(tmp_path / "site")
    first, first_part = _build(root, tmp_path / "out")
    plugin = root / "wp-content" / "plugins" / "plugin-2"
    if change == "changed":
        (plugin / "file-030.php").write_text("<?php // rewritten\n")
        (root / "wp-content" / "uploads" / "2024" / "image-3.jpg").write_bytes(os.urandom(BIG + 10))
    elif change == "deleted":
        (plugin / "file-030.php").unlink()
    elif change == "renamed":
        (plugin / "file-030.php").rename(plugin / "file-030-renamed.php")
    elif change == "new plugin":
        shutil.copytree(plugin, root / "wp-content" / "plugins" / "plugin-2b")
    else:  # same content, new mtime: read again, never trusted
        os.utime(plugin / "file-030.php", (1_800_000_000, 1_800_000_000))
    second, part = _build(root, tmp_path / "out", previous=first, stamp="20261202-000000")
    fresh = _same_state_fresh(root, tmp_path, "20261202-000000")
    assert second.read_bytes() == fresh.read_bytes()
    assert 0 < part.reuse.files < part.stats.files
    assert part.reuse.frames >= len(load_index(index_path(first)).frames) // 2  # most runs survive
    names = _members(second)
    assert ("wp-content/plugins/plugin-2/file-030.php" in names) == (change in ("changed", "new plugin", "touched"))
    assert ("wp-content/plugins/plugin-2/file-030-renamed.php" in names) == (change == "renamed")
    extracted = tmp_path / "x"
    extracted.mkdir()
    subprocess.run(["tar", "--zstd", "-xf", str(second), "-C", str(extracted)], check=True)
    for path in root.rglob("*"):
        if path.is_file() and path.name != "wp-config.php":
            assert (extracted / path.relative_to(root)).read_bytes() == path.read_bytes()
    assert first_part.stats.files - part.stats.files == {"deleted": 1, "new plugin": -60}.get(change, 0)


def test_a_damaged_previous_archive_is_not_copied_from(tmp_path):
    root = _site(tmp_path / "site")
    first, _ = _build(root, tmp_path / "out")
    index = load_index(index_path(first))
    victim = next(f for f in index.frames if f.key)
    data = bytearray(first.read_bytes())
    data[victim.offset + victim.length // 2] ^= 0xFF
    first.write_bytes(bytes(data))
    second, part = _build(root, tmp_path / "out", previous=first, stamp="20261202-000000")
    assert part.reuse.frames == 0  # once the archive is found damaged, nothing more of it is used
    assert second.read_bytes() == _same_state_fresh(root, tmp_path, "20261202-000000").read_bytes()


def test_without_the_previous_archive_its_index_still_names_the_same_frames(tmp_path):
    root = _site(tmp_path / "site")
    first, _ = _build(root, tmp_path / "out")
    first.unlink()  # the index stays: compressed again, the frames match last night's bytes
    second, part = _build(root, tmp_path / "out", previous=first, stamp="20261202-000000")
    assert part.reuse.frames == 0 and part.reuse.matched > 0
    index = load_index(index_path(second))
    site_frames = [f for f in index.frames if f.key and f.key.startswith("f:")]
    assert sum(1 for f in site_frames if f.source is not None) == part.reuse.matched


def test_the_index_lists_every_frame_in_order_and_only_site_members_are_reusable(tmp_path):
    root = _site(tmp_path / "site")
    first, _ = _build(root, tmp_path / "out")
    index = load_index(index_path(first))
    assert all(f.key is None for f in index.frames[:1])  # wp-config.php: always compressed again
    assert index.frames[-1].key is None  # the manifest and the end
    dump = [f for f in index.frames if f.key and f.key.startswith("d:")]
    assert dump and index.frames[index.frames.index(dump[0]) - 1].key is None  # the dump's header alone
    assert index.size == first.stat().st_size
    assert [f.offset for f in index.frames] == sorted(f.offset for f in index.frames)
    assert index.frames[-1].offset + index.frames[-1].length == index.size


def test_an_edited_row_changes_only_the_dump_pieces_around_it(tmp_path):
    root = _site(tmp_path / "site")
    first, _ = _build(root, tmp_path / "out", sql=_sql(40_000))
    pieces = [f for f in load_index(index_path(first)).frames if f.key and f.key.startswith("d:")]
    assert len(pieces) > 6
    sql = _sql(40_000, edited=20_000) + b"INSERT INTO wp_posts VALUES (40000,'new');\n"
    second, part = _build(root, tmp_path / "out", previous=first, stamp="20261202-000000", sql=sql)
    assert len(pieces) - 4 <= part.dump_pieces_copied < len(pieces)
    assert second.read_bytes() == _build(root, tmp_path / "fresh", stamp="20261202-000000", sql=sql)[0].read_bytes()
    extracted = tmp_path / "x"
    extracted.mkdir()
    subprocess.run(["tar", "--zstd", "-xf", str(second), "-C", str(extracted), "database.sql"], check=True)
    assert (extracted / "database.sql").read_bytes() == sql


def test_a_file_changed_just_before_it_was_read_is_read_again_the_next_night(tmp_path):
    root = _site(tmp_path / "site")
    fresh = root / "wp-content" / "uploads" / "2024" / "image-1.jpg"
    fresh.write_bytes(os.urandom(BIG + 50_000))  # a write in the same tick as the read goes unseen
    first, _ = _build(root, tmp_path / "out")
    second, part = _build(root, tmp_path / "out", previous=first, stamp="20261202-000000")
    assert part.reuse.files == part.stats.files - 1
    assert second.read_bytes() == first.read_bytes()

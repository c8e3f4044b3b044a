"""The copy-built upload's plan (wpbackup/storage/partplan.py): parts that S3 accepts (in
order, covering the archive, none but the last under 5 MiB, at most 10,000), copied parts
that copy exactly the bytes tonight's archive shares with last night's, and as little sent as
S3's minimum part size allows."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from wpbackup.storage.partplan import MIB, MIN_PART, copy_runs, plain_parts, plan_parts, sent_bytes, valid

PART = 8 * MIB


@st.composite
def archives(draw):
    """Frames of tonight's archive, each either new or a copy of last night's at some offset
    (last night's frames in order, some left out: deleted or changed files)."""
    count = draw(st.integers(1, 60))
    frames, at, source = [], 0, 0
    for _ in range(count):
        length = draw(st.sampled_from([1, 4096, 300_000, 2 * MIB, 5 * MIB, 9 * MIB, 40 * MIB]))
        kind = draw(st.sampled_from(["copy", "copy", "new", "skip"]))
        if kind == "skip":  # a frame of last night's that is gone tonight
            source += draw(st.integers(1, 10 * MIB))
            continue
        frames.append((at, length, source if kind == "copy" else None))
        at += length
        if kind == "copy":
            source += length
    return (at, frames) if at else (1, [(0, 1, None)])


def _source_of(frames, offset):
    for start, length, source in frames:
        if start <= offset < start + length:
            return None if source is None else source + offset - start
    raise AssertionError(offset)


@settings(max_examples=300, deadline=None)
@given(archives())
def test_every_plan_is_one_s3_accepts_and_copies_only_shared_bytes(archive):
    size, frames = archive
    parts = plan_parts(size, copy_runs(frames), PART)
    assert valid(parts, size)
    for part in parts:
        if part.source is None:
            continue
        for probe in (part.start, part.start + part.length // 2, part.start + part.length - 1):
            assert _source_of(frames, probe) == part.source + probe - part.start


@settings(max_examples=200, deadline=None)
@given(archives())
def test_new_bytes_are_sent_and_each_change_costs_at_most_one_minimum_part_more(archive):
    size, frames = archive
    runs = copy_runs(frames)
    parts = plan_parts(size, runs, PART)
    new = size - sum(length for _, length, _ in runs)
    gaps = len(runs) + 1
    assert new <= sent_bytes(parts) <= new + gaps * 2 * MIN_PART + sum(r[1] for r in runs if r[1] < MIN_PART)


def test_an_unchanged_archive_with_a_new_tail_copies_all_but_the_tail():
    size = 700 * MIB
    frames = [(0, 690 * MIB, 0), (690 * MIB, 10 * MIB, None)]
    parts = plan_parts(size, copy_runs(frames), PART)
    assert sent_bytes(parts) == 10 * MIB
    assert [p.source is not None for p in parts][-1] is False


def test_a_small_change_in_the_middle_sends_one_minimum_part():
    size = 100 * MIB + 4096
    frames = [(0, 50 * MIB, 0), (50 * MIB, 4096, None), (50 * MIB + 4096, 50 * MIB, 50 * MIB + 8192)]
    parts = plan_parts(size, copy_runs(frames), PART)
    assert valid(parts, size) and sent_bytes(parts) == MIN_PART


def test_plain_parts_cover_the_archive():
    assert [(p.start, p.length) for p in plain_parts(20 * MIB + 1, PART)] == [
        (0, PART), (PART, PART), (2 * PART, 4 * MIB + 1)]

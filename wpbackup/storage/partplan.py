"""Which parts a multipart upload sends, and which it copies inside S3 from last night's object.

    tonight's archive:  [copied run][new bytes][copied run ...][new: dump, manifest]
    parts:              copy(src range)  upload  copy(src range) ... upload

Every part but the last must hold at least MIN_PART bytes (S3's rule, for copied parts too),
so new bytes shorter than that take the bytes after them (or before, at the end) into their
part: each separate change costs at least MIN_PART of upload, however small it is. Copied runs
shorter than MIN_PART are uploaded. Uploaded stretches go in parts of ``part_size`` (up to
twice that, so no part but the last is short); copied ones in parts of up to MAX_COPY.
Pure functions: no I/O, the same plan for the same input (a resumed upload must find it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MIB = 1 << 20
MIN_PART = 5 * MIB
MAX_COPY = 128 * MIB  # S3 copies up to 5 GiB a part, but parts side by side copy faster, and
# the MD5 of each copied part (the proof it holds tonight's bytes) is computed on every core
MAX_PARTS = 10000


@dataclass(frozen=True)
class Part:
    """Bytes [start, start + length) of the archive; ``source``: where the same bytes start in
    the copy source object (an UploadPartCopy), or None (uploaded)."""

    number: int
    start: int
    length: int
    source: int | None = None

    def row(self) -> list:
        return [self.number, self.start, self.length, self.source]


def plain_parts(size: int, part_size: int) -> list[Part]:
    return [Part(n + 1, n * part_size, min(part_size, size - n * part_size))
            for n in range(math.ceil(size / part_size))]


def copy_runs(frames: list[tuple[int, int, int | None]]) -> list[tuple[int, int, int]]:
    """(start, length, source) stretches of frames whose bytes are last night's, joined where
    both tonight's and last night's bytes run on; ``frames`` are (offset, length, source)."""
    runs: list[list[int]] = []
    for offset, length, source in frames:
        if source is None or length <= 0:
            continue
        if runs and runs[-1][0] + runs[-1][1] == offset and runs[-1][2] + runs[-1][1] == source:
            runs[-1][1] += length
        else:
            runs.append([offset, length, source])
    return [(a, b, c) for a, b, c in runs]


def _segments(size: int, runs: list[tuple[int, int, int]]) -> list[list]:
    """[start, length, source|None] covering the archive, copies of at least MIN_PART only."""
    segments: list[list] = []
    at = 0
    for start, length, source in runs:
        if start < at or start + length > size:
            raise ValueError("copy runs overlap or lie outside the archive")
        if length < MIN_PART:
            continue
        if start > at:
            segments.append([at, start - at, None])
        segments.append([start, length, source])
        at = start + length
    if at < size:
        segments.append([at, size - at, None])
    return _join_uploads(segments)


def _join_uploads(segments: list[list]) -> list[list]:
    joined: list[list] = []
    for segment in segments:
        if joined and joined[-1][2] is None and segment[2] is None:
            joined[-1][1] += segment[1]
        else:
            joined.append(list(segment))
    return joined


def _widen_short_uploads(segments: list[list]) -> list[list]:
    """An upload stretch under MIN_PART takes bytes from the copy after it (or, at the very
    end, from the copy before it); a copy left under MIN_PART is uploaded whole."""
    i = 0
    while i < len(segments):
        start, length, source = segments[i]
        if source is not None or length >= MIN_PART or len(segments) == 1:
            i += 1
            continue
        if i + 1 < len(segments):  # a copy follows
            after = segments[i + 1]
            need = MIN_PART - length
            if after[1] - need >= MIN_PART:
                segments[i][1] += need
                segments[i + 1] = [after[0] + need, after[1] - need, after[2] + need]
                i += 1
            else:
                segments[i][1] += after[1]
                del segments[i + 1]
                segments = _join_uploads(segments)
            continue
        if i == len(segments) - 1 and i > 0:  # the archive's end: allowed short, as the last part
            i += 1
            continue
        i += 1
    return segments


def _split(start: int, length: int, source: int | None, pieces: int) -> list[tuple[int, int, int | None]]:
    base, extra = divmod(length, pieces)
    out, at = [], 0
    for n in range(pieces):
        size = base + (1 if n < extra else 0)
        out.append((start + at, size, None if source is None else source + at))
        at += size
    return out


def plan_parts(size: int, runs: list[tuple[int, int, int]], part_size: int) -> list[Part]:
    """The parts of an upload of ``size`` bytes that copies ``runs`` (start, length, source)."""
    pieces: list[tuple[int, int, int | None]] = []
    for start, length, source in _widen_short_uploads(_segments(size, runs)):
        if source is None:
            pieces += _split(start, length, None, max(1, length // part_size))
        else:
            pieces += _split(start, length, source, math.ceil(length / MAX_COPY))
    return [Part(n + 1, start, length, source) for n, (start, length, source) in enumerate(pieces)]


def valid(parts: list[Part], size: int) -> bool:
    """Parts that cover the archive in order, none but the last under MIN_PART, at most 10,000."""
    if not parts or len(parts) > MAX_PARTS:
        return False
    at = 0
    for part in parts:
        if part.start != at or part.length <= 0:
            return False
        at += part.length
    return at == size and all(p.length >= MIN_PART for p in parts[:-1])


def sent_bytes(parts: list[Part]) -> int:
    return sum(p.length for p in parts if p.source is None)

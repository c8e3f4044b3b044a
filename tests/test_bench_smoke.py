"""The benchmark still runs (at a tiny size); its numbers are not checked here."""

from __future__ import annotations

import subprocess
import sys

from .conftest import REPO, need


def test_benchmark_runs_at_a_tiny_size():
    need("mariadbd", "zstd", "aws", "restic")
    result = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--size", "30M", "--repeat", "1",
                             "--skip-scale"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for line in ("ours/shell: wall", "wall without moto's join", "ours/restic: wall", "machine limit:", "resume:",
                 "dumps 1, tar passes 1",
                 "restore: ours"):
        assert line in result.stdout, result.stdout[-3000:]

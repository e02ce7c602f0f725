"""bench.compare runs a benchmark on a pinned revision and on the working tree, and reports both series."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[1]


def test_compare_runs_the_benchmark_on_both_trees_and_prints_the_ratio_of_their_medians() -> None:
    tiny = ["bench.engine", "--runs", "1", "--seconds", "0.2", "--seq", "50", "--callers", "4", "--layer", "actor"]
    out = subprocess.run(
        [sys.executable, "-m", "bench.compare", "--against", "HEAD", "--rounds", "2", "--", *tiny],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr
    row = next(line for line in out.stdout.splitlines() if line.startswith("ops_per_s"))
    values = [float(v) for v in re.findall(r"\d+(?:\.\d+)?", row)]
    # two baseline runs, two working-tree runs, then the ratio of the medians
    baseline, working, ratio = values[:2], values[2:4], values[4]
    assert all(v > 0 for v in baseline + working)
    # the median of two values is their mean; the printed values are rounded, hence the tolerance
    assert ratio == pytest.approx((sum(working) / 2) / (sum(baseline) / 2), rel=5e-3)
    assert "round 2/2" in out.stderr
    listed = subprocess.run(["git", "worktree", "list"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "mcp-locks-compare-" not in listed.stdout  # the temporary worktree is gone


def test_compare_without_a_benchmark_says_how_to_name_one() -> None:
    cmd = [sys.executable, "-m", "bench.compare", "--against", "HEAD"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "name the benchmark after --" in out.stderr
    assert "Traceback" not in out.stderr


def test_compare_against_the_working_tree_adds_the_baseline_flags_to_the_baseline_side_only() -> None:
    # tests/bench_echo.py prints {"marked": 1} when it was given --marked, else {"marked": 0}
    cmd = [sys.executable, "-m", "bench.compare", "--against", ".", "--baseline-args=--marked", "--rounds", "2"]
    out = subprocess.run([*cmd, "--", "tests.bench_echo"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    row = next(line for line in out.stdout.splitlines() if line.startswith("marked"))
    assert row.split()[1:5] == ["1,", "1", "0,", "0"]  # baseline runs got the flag, working-tree runs did not

"""Run one benchmark alternately on a pinned revision and on the working tree; print both series and their ratio.

    python -m bench.compare --against REV [--rounds 3] -- bench.engine --runs 1 --seconds 3 --layer actor
    python -m bench.compare --against . --baseline-args="--audit off" -- bench.engine --runs 1 --layer actor

The revision is checked out into a temporary git worktree; each round runs the benchmark once there and
once here, in alternating order (so drift of the machine falls on both sides alike), each in its own
process with that tree first on ``PYTHONPATH``. A benchmark is any module that prints one JSON object per
run on a line of its own (``median …`` summary lines are ignored: the medians here are taken over all runs
of all rounds). For every numeric field both series are printed, with the median of each and the ratio
working tree ÷ baseline.

``--against .`` runs both sides from the working tree; with ``--baseline-args`` the baseline side gets
those flags added (the second form above measures the cost of the audit log: audit on ÷ audit off).

Same-run comparison is the point: figures measured on different days or under different load are not
comparable on a shared 2-vCPU machine, and the ratio within one run is what docs/benchmarks.md records.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
#: Longest one benchmark run may take before the comparison gives up on it.
RUN_TIMEOUT = 1800


def worktree(rev: str, into: Path) -> Path:
    """A detached worktree of ``rev`` (the caller removes it)."""
    subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(into), rev], cwd=HERE, check=True)
    return into


def run_once(tree: Path, bench: list[str]) -> list[dict[str, float]]:
    """The per-run JSON objects one process of the benchmark prints, run from ``tree``."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, "-m", *bench], cwd=tree, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT
    )
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(bench)} failed in {tree}:\n{out.stderr[-2000:]}")
    runs = []
    for line in out.stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            doc = json.loads(line)
            runs.append({k: float(v) for k, v in doc.items() if isinstance(v, int | float)})
    if not runs:
        raise SystemExit(f"{' '.join(bench)} printed no JSON object per run in {tree}:\n{out.stdout[-2000:]}")
    return runs


def compare(
    base: Path, work: Path, bench: list[str], rounds: int, baseline_args: Sequence[str] = ()
) -> dict[str, dict[str, list[float]]]:
    """Run ``rounds`` rounds, alternating which side goes first; returns metric -> side -> values."""
    series: dict[str, dict[str, list[float]]] = {}
    for r in range(rounds):
        order = [("baseline", base, [*bench, *baseline_args]), ("working", work, bench)]
        for side, tree, cmd in order if r % 2 == 0 else reversed(order):
            for run in run_once(tree, cmd):
                for k, v in run.items():
                    series.setdefault(k, {"baseline": [], "working": []})[side].append(v)
            print(f"round {r + 1}/{rounds}: {side} done", file=sys.stderr)
    return series


def report(series: dict[str, dict[str, list[float]]], rev: str) -> None:
    """Both series of every metric, their medians and the ratio working ÷ baseline."""
    print(f"baseline: {rev}")
    print(f"{'metric':<16} {'baseline':<34} {'working tree':<34} ratio")
    for k, s in series.items():
        if not s["baseline"] or not s["working"]:
            continue
        b, w = statistics.median(s["baseline"]), statistics.median(s["working"])
        shown = [", ".join(f"{v:g}" for v in s[side]) for side in ("baseline", "working")]
        print(f"{k:<16} {shown[0]:<34} {shown[1]:<34} {w / b if b else float('nan'):.3f}")
        print(f"{'':<16} median {b:<27g} median {w:<27g}")


def main() -> None:
    """Parse ``--against REV [--rounds N] -- MODULE ARGS…`` and print the comparison."""
    argv = sys.argv[1:]
    bench = argv[argv.index("--") + 1 :] if "--" in argv else []
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--against", required=True, help="the baseline revision (commit, tag or branch; . = working tree)")
    ap.add_argument("--baseline-args", default="", help="flags added to the baseline side's benchmark command")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; each runs the benchmark once on each side")
    a = ap.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    if not bench:
        ap.error("name the benchmark after --, e.g. -- bench.engine --runs 1 --seconds 3 --layer actor")
    if not 1 <= a.rounds <= 50:
        ap.error("--rounds must be from 1 to 50")
    extra = shlex.split(a.baseline_args)
    if a.against == ".":
        report(
            compare(HERE, HERE, bench, a.rounds, extra), f"the working tree with {a.baseline_args or 'no flags added'}"
        )
        return
    with tempfile.TemporaryDirectory(prefix="mcp-locks-compare-") as tmp:
        base = worktree(a.against, Path(tmp) / "base")
        try:
            report(compare(base, HERE, bench, a.rounds, extra), a.against)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=HERE, check=False)


if __name__ == "__main__":
    main()

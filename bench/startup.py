"""How long one ``mcp-locks`` process takes, start to exit, against a bare ``python -c pass``.

A host hook may run one ``mcp-locks`` process per edit, so the start of a process is the cost an agent pays
on every edit. This measures the wall time of N runs each of:

* ``python -c pass`` (the baseline: the interpreter and the venv's site-packages),
* one round trip (``GET /healthz``) written straight on the libraries a client command loads (click, anyio,
  httpx2, stamina), without mcp-locks: the floor of any client command on this stack,
* ``python -c "import mcp_locks.client"``,
* ``mcp-locks --version``,
* ``mcp-locks status bench/startup.md --url URL``: one REST round trip to a real server this bench starts
  on a free loopback port (``--store memory --insecure-no-auth``),

and prints each one's wall-time median and p90, its median CPU time (user + system), and both medians'
ratios to the baseline's. The runs are interleaved
(one of each per round, in a rotating order) so that load from elsewhere on the machine falls on all of them
alike. ``mcp-locks`` is run as its console script does (the tree's ``[project.scripts]`` entry point, via
``python -c``), so ``--tree`` can point at another checkout (a ``git worktree`` of an older commit) run with
the same interpreter and libraries: only the package's own code differs.

    python -m bench.startup --runs 30
    python -m bench.startup --runs 30 --tree /tmp/wt-before

Bounded: at most ``--runs`` rounds (≤ 200) and ``--budget`` seconds of measuring; the server gets 30 s to
start. The last line is the result as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

from bench.cluster import Node, running

ROOT = Path(__file__).resolve().parents[1]


def launcher(tree: Path) -> list[str]:
    """``python -c`` running the tree's ``mcp-locks`` entry point, as the console script pip writes does."""
    with open(tree / "pyproject.toml", "rb") as f:
        module, attr = tomllib.load(f)["project"]["scripts"]["mcp-locks"].split(":")
    code = f"import sys; from {module} import {attr}; sys.argv[0] = 'mcp-locks'; sys.exit({attr}())"
    return [sys.executable, "-c", code]


def bare_get(url: str) -> str:
    """``python -c`` code: what a client command's round trip costs with no mcp-locks code at all."""
    return (
        "import anyio, click, httpx2, ssl, stamina\n"
        "async def get():\n"
        # Like the client: a plain-http client loads no CA certificates.
        "    async with httpx2.AsyncClient(verify=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), trust_env=False) as c:\n"
        f"        (await c.get('{url}/healthz')).raise_for_status()\n"
        "anyio.run(get)\n"
    )


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(cmd: list[str], env: dict[str, str], cwd: str) -> tuple[float, float]:
    """Wall time and CPU time (user + system) of one run of ``cmd``, which must succeed.

    The CPU time is the process's own work: on a shared machine it moves less than the wall time, which
    also counts the waits for a core. (The server is a child too, but it is reaped only at the end.)
    """
    cpu, start = _children_cpu(), time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    # Bounded by a timer, not by wait(timeout=...): that one polls every 50 ms and would round every time up.
    killer = threading.Timer(60, proc.kill)
    killer.start()
    try:
        code = proc.wait()
    finally:
        killer.cancel()
    wall, cpu = time.perf_counter() - start, _children_cpu() - cpu
    if code != 0:
        raise subprocess.CalledProcessError(code, cmd)
    return wall, cpu


def percentile(xs: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank)."""
    ordered = sorted(xs)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def interleave(
    names: list[str], run: Callable[[str], tuple[float, float]], runs: int, budget: float
) -> dict[str, list[tuple[float, float]]]:
    """``run`` each name once untimed (warm-up), then rounds of all of them, each round starting one later
    (so drift falls on all alike), until ``runs`` rounds or ``budget`` seconds."""
    for name in names:
        run(name)  # compiles .pyc files and warms the page cache
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    deadline = time.monotonic() + budget
    for i in range(runs):
        if time.monotonic() > deadline:
            break
        for name in names[i % len(names) :] + names[: i % len(names)]:
            times[name].append(run(name))
    return times


def measure(
    commands: dict[str, list[str]], runs: int, budget: float, env: dict[str, str], cwd: str
) -> dict[str, list[tuple[float, float]]]:
    """Interleaved runs of every command (see :func:`interleave`)."""
    return interleave(list(commands), lambda name: timed(commands[name], env, cwd), runs, budget)


def summary(times: dict[str, list[tuple[float, float]]]) -> dict[str, dict[str, float]]:
    """Per command: runs, wall median and p90, CPU median, and both medians as multiples of the baseline's."""
    walls = {name: [w for w, _ in xs] for name, xs in times.items()}
    cpus = {name: [c for _, c in xs] for name, xs in times.items()}
    base_wall, base_cpu = statistics.median(walls["python -c pass"]), statistics.median(cpus["python -c pass"])
    return {
        name: {
            "runs": len(walls[name]),
            "median_ms": round(statistics.median(walls[name]) * 1000, 1),
            "p90_ms": round(percentile(walls[name], 0.9) * 1000, 1),
            "ratio": round(statistics.median(walls[name]) / base_wall, 2),
            "cpu_median_ms": round(statistics.median(cpus[name]) * 1000, 1),
            "cpu_ratio": round(statistics.median(cpus[name]) / base_cpu, 2),
        }
        for name in times
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="rounds (one run of each command per round, ≤ 200)")
    parser.add_argument("--budget", type=float, default=120.0, help="seconds of measuring at most")
    parser.add_argument("--tree", type=Path, default=ROOT, help="the checkout whose mcp_locks is measured")
    opts = parser.parse_args()
    runs = max(1, min(opts.runs, 200))
    tree = opts.tree.resolve()
    cli = launcher(tree)
    data = Path(tempfile.mkdtemp(prefix="mcp-locks-startup-"))
    # Every process (the server's too) finds the tree's package first, and runs in a folder that holds none
    # (``python -m`` and ``-c`` put the working folder first on the path).
    os.environ["PYTHONPATH"] = str(tree)
    os.chdir(data)
    env, cwd = dict(os.environ), str(data)
    try:
        with running([Node("server", None, None, data, ("--store", "memory"))]) as (node,):
            commands = {
                "python -c pass": [sys.executable, "-c", "pass"],
                "one GET, libraries only": [sys.executable, "-c", bare_get(node.url)],
                "import mcp_locks.client": [sys.executable, "-c", "import mcp_locks.client"],
                "mcp-locks --version": [*cli, "--version"],
                "mcp-locks status": [*cli, "status", "bench/startup.md", "--url", node.url],
            }
            times = measure(commands, runs, opts.budget, env, cwd)
    finally:
        shutil.rmtree(data, ignore_errors=True)
    result = summary(times)
    print(f"tree {tree}  python {sys.version.split()[0]}")
    print(f"{'command':<25}{'runs':>5}{'median ms':>11}{'p90 ms':>8}{'× base':>8}{'CPU ms':>8}{'× base':>8}")
    for name, r in result.items():
        print(
            f"{name:<25}{r['runs']:>5}{r['median_ms']:>11}{r['p90_ms']:>8}{r['ratio']:>8}"
            f"{r['cpu_median_ms']:>8}{r['cpu_ratio']:>8}"
        )
    print("result " + json.dumps({"tree": str(tree), "commands": result}))


if __name__ == "__main__":
    main()

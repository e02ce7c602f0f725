"""How long one ``mcp-locks hook claude-code`` process takes, start to exit, against a bare ``python -c pass``.

A host runs the hook before every edit, so this is what an agent pays per edit. The bench starts a real server
(``bench.server --auth --store memory``) on a free loopback port, makes an agent key, writes a project with
``.mcp-locks.toml`` in a temporary folder, and times N interleaved rounds of:

* ``python -c pass`` (the baseline: the interpreter and the venv's site-packages);
* ``hook: read-only``: a Claude Code ``Read`` call (allowed before any configuration or HTTP library is loaded);
* ``hook: take``: a ``Write`` of a new file each run (one ``lock_files`` round trip);
* ``hook: renew``: a ``Write`` of the same file by the same session (one ``renew`` round trip);
* ``hook: denied``: a ``Write`` of a file another session holds (``lock_files`` refused, then one status
  lookup for the holder's note: two round trips).

Each process reads the payload on stdin, answers on stdout (checked: exactly one JSON object) and exits.
It prints per command the wall-time median, p90 and p99, the median CPU time, and the median's ratio to the
baseline's; the last line is the result as JSON.

    python -m bench.hook --runs 100

Bounded: at most ``--runs`` rounds (≤ 1000) and ``--budget`` seconds of measuring.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench._proc import bench_server
from bench.startup import ROOT, launcher

FIXTURES = ROOT / "tests" / "fixtures" / "hooks" / "claude-code"


def percentile(xs: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank)."""
    ordered = sorted(xs)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def agent_key(url: str, admin: str) -> str:
    """A fresh agent key for workspace ``default`` (POST /v1/admin/keys)."""
    body = json.dumps({"agent": "bench", "workspaces": ["default"], "role": "agent"}).encode()
    request = urllib.request.Request(
        f"{url}/v1/admin/keys",
        data=body,
        headers={"Authorization": f"Bearer {admin}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as r:
        key: str = json.load(r)["key"]
    return key


def payload(name: str, root: Path, session: str, file: str | None = None) -> bytes:
    """A recorded Claude Code payload moved into ``root``, for ``session`` (and ``file``)."""
    recorded = json.loads((FIXTURES / f"{name}.json").read_text())["payload"]
    body: dict[str, Any] = json.loads(json.dumps(recorded).replace("/home/dev/project", str(root)))
    body["session_id"] = session
    if file is not None:
        body["tool_input"]["file_path"] = str(root / file)
    return json.dumps(body).encode()


def timed(cmd: list[str], stdin: bytes, env: dict[str, str], cwd: str) -> tuple[float, float]:
    """Wall and CPU time (user + system) of one run; it must exit 0 (a hook: with one JSON object on stdout)."""
    usage = os.times()
    cpu, start = usage.children_user + usage.children_system, time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=env, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    killer = threading.Timer(60, proc.kill)  # bounded without polling (wait(timeout) rounds up by 50 ms)
    killer.start()
    try:
        out, _ = proc.communicate(stdin)
    finally:
        killer.cancel()
    wall = time.perf_counter() - start
    usage = os.times()
    if proc.returncode != 0 or (stdin and not isinstance(json.loads(out), dict)):  # the baseline prints nothing
        raise RuntimeError(f"{cmd} failed: {proc.returncode} {out!r}")
    return wall, usage.children_user + usage.children_system - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50, help="rounds (one run of each command per round, ≤ 1000)")
    parser.add_argument("--budget", type=float, default=300.0, help="seconds of measuring at most")
    opts = parser.parse_args()
    runs = max(1, min(opts.runs, 1000))
    work = Path(tempfile.mkdtemp(prefix="mcp-locks-bench-hook-"))
    try:
        with bench_server("--auth", "--store", "memory") as server:
            assert server.key is not None
            result = measure(server.url, agent_key(server.url, server.key), work, runs, opts.budget)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(result)


def measure(url: str, key: str, work: Path, runs: int, budget: float) -> dict[str, list[tuple[float, float]]]:
    """Interleaved rounds (one untimed warm-up each) until ``runs`` rounds or ``budget`` seconds."""
    root = work / "project"
    (root / ".git").mkdir(parents=True)
    (root / ".mcp-locks.toml").write_text(f'url = "{url}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_LOCKS_")}
    env |= {"MCP_LOCKS_KEY": key, "MCP_LOCKS_HOOK_STATE": str(work / "state"), "PYTHONPATH": str(ROOT)}
    hook = [*launcher(ROOT), "hook", "claude-code"]
    counter = iter(range(10**6))
    commands = {
        "python -c pass": lambda: ([sys.executable, "-c", "pass"], b""),
        "hook: read-only": lambda: (hook, payload("pretooluse_read", root, "s-read")),
        "hook: take": lambda: (hook, payload("pretooluse_write", root, "s-take", f"new/{next(counter)}.py")),
        "hook: renew": lambda: (hook, payload("pretooluse_write", root, "s-renew", "same.py")),
        "hook: denied": lambda: (hook, payload("pretooluse_write", root, "s-denied", "same.py")),
    }
    names = list(commands)
    for name in names:
        timed(*commands[name](), env, str(root))  # warm-up: .pyc files, page cache; "renew" takes same.py here
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    deadline = time.monotonic() + budget
    for i in range(runs):
        if time.monotonic() > deadline:
            break
        for name in names[i % len(names) :] + names[: i % len(names)]:
            times[name].append(timed(*commands[name](), env, str(root)))
    return times


def report(times: dict[str, list[tuple[float, float]]]) -> None:
    """Print the table and the JSON line."""
    base = statistics.median(w for w, _ in times["python -c pass"])
    result = {}
    for name, xs in times.items():
        walls, cpus = [w for w, _ in xs], [c for _, c in xs]
        result[name] = {
            "runs": len(xs),
            "median_ms": round(statistics.median(walls) * 1000, 1),
            "p90_ms": round(percentile(walls, 0.9) * 1000, 1),
            "p99_ms": round(percentile(walls, 0.99) * 1000, 1),
            "cpu_median_ms": round(statistics.median(cpus) * 1000, 1),
            "ratio": round(statistics.median(walls) / base, 2),
        }
    print(f"python {sys.version.split()[0]}, load average {os.getloadavg()[0]:.2f}")
    print(f"{'command':<18}{'runs':>5}{'median ms':>11}{'p90 ms':>8}{'p99 ms':>8}{'CPU ms':>8}{'× base':>8}")
    for name, r in result.items():
        print(
            f"{name:<18}{r['runs']:>5}{r['median_ms']:>11}{r['p90_ms']:>8}{r['p99_ms']:>8}"
            f"{r['cpu_median_ms']:>8}{r['ratio']:>8}"
        )
    print("result " + json.dumps(result))


if __name__ == "__main__":
    main()

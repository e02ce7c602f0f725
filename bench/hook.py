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

``--before DIR`` times the same four hook commands of another copy of the package too (``DIR`` holding its
``mcp_locks/`` and ``pyproject.toml``, run as its own console script with the same interpreter and
libraries; say a copy of the tree before a change), interleaved with this tree's in the same rounds, so
both see the same load. Its rows are named ``before: ...``.

    python -m bench.hook --runs 100
    python -m bench.hook --runs 60 --before /tmp/hook-before

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._proc import bench_server
from bench.startup import ROOT, interleave, launcher, percentile

FIXTURES = ROOT / "tests" / "fixtures" / "hooks" / "claude-code"


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
    parser.add_argument("--before", type=Path, default=None, help="another copy of the package to time alike")
    opts = parser.parse_args()
    runs = max(1, min(opts.runs, 1000))
    work = Path(tempfile.mkdtemp(prefix="mcp-locks-bench-hook-"))
    try:
        with bench_server("--auth", "--store", "memory") as server:
            assert server.key is not None
            key = agent_key(server.url, server.key)
            result = measure(server.url, key, work, runs, opts.budget, opts.before)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(result)


Command = Callable[[], tuple[list[str], bytes, dict[str, str]]]


def hook_commands(tree: Path, prefix: str, root: Path, env: dict[str, str]) -> dict[str, Command]:
    """The four hook runs of the package in ``tree``, named ``PREFIX: ...``; each takes files of its own."""
    hook, tree_env = [*launcher(tree), "hook", "claude-code"], env | {"PYTHONPATH": str(tree)}
    counter = iter(range(10**6))
    tag = prefix.replace(" ", "-")
    return {
        f"{prefix}: read-only": lambda: (hook, payload("pretooluse_read", root, f"{tag}-read"), tree_env),
        f"{prefix}: take": lambda: (
            hook,
            payload("pretooluse_write", root, f"{tag}-take", f"new-{tag}/{next(counter)}.py"),
            tree_env,
        ),
        f"{prefix}: renew": lambda: (hook, payload("pretooluse_write", root, f"{tag}-renew", f"{tag}.py"), tree_env),
        # the renew session took {tag}.py in the warm-up: another session is refused it
        f"{prefix}: denied": lambda: (hook, payload("pretooluse_write", root, f"{tag}-denied", f"{tag}.py"), tree_env),
    }


def measure(
    url: str, key: str, work: Path, runs: int, budget: float, before: Path | None = None
) -> dict[str, list[tuple[float, float]]]:
    """Interleaved rounds (one untimed warm-up each) until ``runs`` rounds or ``budget`` seconds."""
    root = work / "project"
    (root / ".git").mkdir(parents=True)
    (root / ".mcp-locks.toml").write_text(f'url = "{url}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_LOCKS_")}
    env |= {"MCP_LOCKS_KEY": key, "MCP_LOCKS_HOOK_STATE": str(work / "state")}
    commands: dict[str, Command] = {"python -c pass": lambda: ([sys.executable, "-c", "pass"], b"", env)}
    commands |= hook_commands(ROOT, "hook", root, env)
    if before is not None:
        commands |= hook_commands(before.resolve(), "before", root, env)
    # "renew" takes its file in the warm-up round
    return interleave(list(commands), lambda name: timed(*commands[name](), str(root)), runs, budget)


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

"""Every MCP host reads every answer: real clients of two SDKs, over every transport, held to one table.

The official TypeScript SDK client (``tests/interop/driver.mjs``, ``@modelcontextprotocol/sdk`` pinned in
``tests/interop/package.json``) is what Claude Code, Claude Desktop, VS Code and most hosts embed. Its
``callTool`` checks ``structuredContent`` against the tool's ``outputSchema`` whenever it is present, error or
not, and throws instead of showing the tool's text when it does not match. The Python SDK client
(``tests/interop/driver.py``) runs the very same plans. Both are driven against real servers started with the
``mcp-locks`` CLI, over four transports:

* ``streamable-http``: ``mcp-locks serve`` at ``/mcp``;
* ``sse``: the same server's legacy HTTP+SSE transport at ``/sse``;
* ``stdio-bridge``: ``mcp-locks stdio`` forwarding to that server (``MCP_LOCKS_URL`` / ``MCP_LOCKS_KEY``);
* ``stdio-embedded``: ``mcp-locks stdio --embedded`` (the engine in the stdio process; ``agent`` names owners).

Each (client, transport) cell is one run of one driver over the whole scenario table (a group of steps per
scenario), and all cells run at once, so Node and every server start once; the tests then read the recorded
outcomes, one scenario per test. Every wait is bounded: driver steps, driver runs and subprocesses.

Node and ``tests/interop/node_modules`` (``npm ci --prefix tests/interop``) are needed for the TypeScript
cells: without them those tests skip, and fail under ``CI=true``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import jsonschema
import pytest

from .interop.driver import run_plan

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

INTEROP = Path(__file__).parent / "interop"
DRIVER = INTEROP / "driver.mjs"
SDK_PACKAGE = "@modelcontextprotocol/sdk"

CLIENTS = ("ts", "python")
TRANSPORTS = ("streamable-http", "sse", "stdio-bridge", "stdio-embedded")
HTTP_TRANSPORTS = ("streamable-http", "sse")
#: Short names for node ids and agents: "ts-http", "py-emb", ...
SHORT = {
    "ts": "ts",
    "python": "py",
    "streamable-http": "http",
    "sse": "sse",
    "stdio-bridge": "bridge",
    "stdio-embedded": "emb",
}

#: The codes every client must read as a tool result whose text starts with the code.
ERROR_CODES = (
    "LOCKED",
    "LOCK_NOT_FOUND",
    "LOCK_EXPIRED",
    "INVALID_ARGUMENT",
    "FORBIDDEN",
    "NOT_FOUND",
    "VERSION_MISMATCH",
    "STALE_FENCE",
    "DEADLOCK",
)
#: Where the fixed server is expected to put the machine-readable error body (what structuredContent["error"] held).
ERROR_META_KEY = "io.github.mcp-locks/error"

#: The shortest lease lock_file accepts (its ``timeout`` is at least 1 s). The servers are separate processes on
#: the real clock (no manual clock reaches them), so LOCK_EXPIRED needs a lease that really runs out.
SHORT_LEASE_S = 1
#: How long to wait before using the short lease's token: the lease, plus a margin for the workspace's timer
#: (expiry happens at the deadline, by the actor's timer) on a loaded 2-core machine.
EXPIRY_WAIT_MS = 1800
#: A waiting lock call that asked for progress hears about it every 5 s (documented with the waiting rules); the
#: step that waits for the first notification and then cancels gets three times that.
PROGRESS_WAIT_MS = 15_000
#: A wait long enough never to run out while a scenario needs it waiting.
LONG_WAIT_S = 20
#: The bound on one driver run (every scenario of one cell), and the grace on top before it is killed.
RUN_DEADLINE_MS = 75_000
RUN_GRACE_S = 20
#: A well-formed key that no server issued.
WRONG_KEY = "mlk_0123456789ab_" + "A" * 43
#: The per-key MCP session cap of the interop server (``MCP_LOCKS_MAX_SESSIONS_PER_KEY``; 32 by default). Small, so
#: that a group can go over it; no other key here comes near it: each key of a cell holds one session (one per
#: named session), the bridge and the Python client's streamable HTTP speak the sessionless 2026 protocol, and
#: the cap group has a key of its own per cell.
SESSION_CAP = 2
#: The cells that go over the cap: the TypeScript client over both HTTP transports (each opens a session).
CAP_CELLS = {("ts", "streamable-http"), ("ts", "sse")}

#: Tools whose ``agent`` argument names the owner on the embedded transport (and is only a label with keys).
OWNER_TOOLS = {"lock_file", "lock_files", "write_file", "delete_file"}

NOT_APPLICABLE = {
    ("stdio-embedded", "FORBIDDEN"): "the embedded engine trusts the local user as admin: no call of it is forbidden",
}


def cli() -> str:
    """The installed ``mcp-locks`` console script (the one beside this interpreter first)."""
    here = Path(sys.executable).parent / "mcp-locks"
    found = str(here) if here.exists() else shutil.which("mcp-locks")
    if found is None:
        pytest.fail("the mcp-locks console script is not installed (pip install -e .)")
    return found


def clean_env() -> dict[str, str]:
    """This environment without MCP_LOCKS_* settings (the servers here are configured by flags, see serve)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MCP_LOCKS_")}


# ---------------------------------------------------------------------------------------------- Node


def pinned_sdk_version() -> str:
    deps: dict[str, str] = json.loads((INTEROP / "package.json").read_text())["dependencies"]
    return deps[SDK_PACKAGE]


def node_problem() -> str | None:
    """None if the TypeScript client can run, else why not."""
    if shutil.which("node") is None:
        return "node is not installed"
    installed = INTEROP / "node_modules" / SDK_PACKAGE / "package.json"
    if not installed.exists():
        return "tests/interop/node_modules is missing: run `npm ci --prefix tests/interop`"
    version = json.loads(installed.read_text())["version"]
    if version != pinned_sdk_version():
        return f"tests/interop/node_modules has {SDK_PACKAGE} {version}, not the pinned {pinned_sdk_version()}"
    return None


def need_node() -> None:
    why = node_problem()
    if why is not None:
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(f"{why} (CI must run the TypeScript client)")
        pytest.skip(why)


# ---------------------------------------------------------------------------------------------- servers


@contextmanager
def serve(data_dir: Path, log: Path) -> Iterator[str]:
    """``mcp-locks serve`` on a free loopback port; yields its base URL, stops it (SIGTERM) at the end.

    Flags configure it, except the per-key session cap (:data:`SESSION_CAP`), given by its environment variable.
    """
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [cli(), "serve", "--host", "127.0.0.1", "--port", "0", "--data-dir", str(data_dir)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**clean_env(), "MCP_LOCKS_MAX_SESSIONS_PER_KEY": str(SESSION_CAP)},  # the setting as deployed
        )
    try:
        deadline = time.monotonic() + 30
        url = None
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            found = re.search(r"listening on (http://127\.0\.0\.1:\d+)/mcp", log.read_text(errors="replace"))
            url = found.group(1) if found else None
            if url is None:
                time.sleep(0.05)
        if url is None:
            pytest.fail(f"mcp-locks serve did not start:\n{log.read_text(errors='replace')[-3000:]}")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            stop(proc)


def stop(proc: subprocess.Popen[Any]) -> None:
    """End a process this module started, if it still runs."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(5)


def seed_restored_tombstones(db: Path, workspace: str, node_ids: list[str]) -> None:
    """Record ``node_ids`` as files deleted under a fence far above any this store has handed out.

    This is data restored from elsewhere (a backup, another server): within one lock table a live write lock
    always has the newest fence, so STALE_FENCE cannot be provoked through one server's tools alone. The
    workspace's actor must not have started yet (it reads the file records when it starts).
    """
    con = sqlite3.connect(db, timeout=10)
    try:
        with con:
            con.executemany(
                "INSERT INTO files (workspace_id, node_id, version, size, sha256, modified_at, modified_by, fence,"
                " deleted, pending, mtime_ns) VALUES (?, ?, 1, 0, NULL, ?, 'restored', 1000000000, 1, NULL, 0)",
                [(workspace, n, time.time()) for n in node_ids],
            )
    finally:
        con.close()


# ---------------------------------------------------------------------------------------------- the scenario table


@dataclass
class Cell:
    """One (client, transport) pair: its sessions and the names it uses."""

    client: str
    transport: str
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    fenced_workspace: str = "fenced"

    @property
    def cid(self) -> str:
        return f"{SHORT[self.client]}-{SHORT[self.transport]}"

    def node(self, scenario: str, name: str) -> str:
        return f"{self.cid}/{scenario}/{name}"


def call(session: str, name: str, arguments: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {"op": "callTool", "session": session, "name": name, "arguments": arguments or {}, **extra}


def take(session: str, node_id: str, var: str, **arguments: Any) -> dict[str, Any]:
    """lock_file(node_id, **arguments) as ``session``, keeping the grant's token as ``${var}``."""
    args = {"node_id": node_id, "timeout": 60, **arguments}
    return call(session, "lock_file", args, save={var: "structuredContent.token"})


def tools_steps(c: Cell) -> list[dict[str, Any]]:
    return [{"op": "listTools", "session": "alice", "tag": "probe"}]


def success_steps(c: Cell) -> list[dict[str, Any]]:
    """A valid call of every tool (the test checks that this covers everything tools/list shows)."""
    a, b, e = (c.node("ok", n) for n in ("a.md", "b.md", "e.md"))
    items = [{"node_id": c.node("ok", "c.md"), "mode": "write"}, {"node_id": c.node("ok", "d.md"), "mode": "read"}]
    both = {"t1": "structuredContent.locks.0.token", "t2": "structuredContent.locks.1.token"}
    return [
        call("alice", "list_workspaces"),
        call("root", "create_workspace", {"workspace_id": f"made-{c.cid}", "description": "interop"}),
        take("alice", a, "tok", mode="write", timeout=120),
        call("alice", "renew_lock", {"token": "${tok}", "timeout": 120}),
        call("alice", "check_lock_status", {"node_id": a, "token": "${tok}"}),
        call("alice", "list_locks", {"prefix": f"{c.cid}/ok/"}),
        call("alice", "write_file", {"node_id": a, "content": "hello from interop", "token": "${tok}"}),
        call("alice", "read_file", {"node_id": a, "token": "${tok}"}),
        call("alice", "file_info", {"node_id": a}),
        call("alice", "list_files", {"prefix": f"{c.cid}/ok/"}),
        call("alice", "unlock_file", {"token": "${tok}"}),
        call("alice", "write_file", {"node_id": b, "content": "optimistic", "if_version": 0}),
        call("alice", "delete_file", {"node_id": b, "if_version": 1}),
        call("alice", "lock_files", {"items": items, "timeout": 60}, save=both),
        call("alice", "unlock_files", {"tokens": ["${t1}", "${t2}"]}),
        call("alice", "lock_file", {"node_id": e, "timeout": 60}, save={"lock": "structuredContent.lock_id"}),
        call("root", "force_unlock", {"lock_id": "${lock}", "reason": "interop test"}),
        call("alice", "get_audit_log", {"node_id": a}),
    ]


def error_steps(c: Cell, code: str) -> list[dict[str, Any]]:
    """Steps that end in a call refused with ``code``: the step tagged "probe"."""
    n = c.node(code.lower(), "f.md")
    if code == "LOCKED":
        return [
            take("bob", n, "held"),
            call("alice", "lock_file", {"node_id": n}, tag="probe"),
            call("bob", "unlock_file", {"token": "${held}"}),
        ]
    if code == "LOCK_NOT_FOUND":
        return [
            take("alice", n, "tok"),
            call("alice", "unlock_file", {"token": "${tok}"}),
            call("alice", "unlock_file", {"token": "${tok}"}, tag="probe"),
        ]
    if code == "LOCK_EXPIRED":
        return [
            take("alice", n, "tok", timeout=SHORT_LEASE_S),
            {"op": "sleep", "ms": EXPIRY_WAIT_MS},
            call("alice", "renew_lock", {"token": "${tok}"}, tag="probe"),
        ]
    if code == "INVALID_ARGUMENT":
        return [call("alice", "lock_file", {"node_id": "../outside.md"}, tag="probe")]
    if code == "FORBIDDEN":  # a token works only with the key that took its lock
        return [
            take("alice", n, "tok"),
            call("bob", "unlock_file", {"token": "${tok}"}, tag="probe"),
            call("alice", "unlock_file", {"token": "${tok}"}),
        ]
    if code == "NOT_FOUND":  # only an admin hears NOT_FOUND for a workspace (others: FORBIDDEN)
        return [call("root", "lock_file", {"node_id": n, "workspace_id": f"missing-{c.cid}"}, tag="probe")]
    if code == "VERSION_MISMATCH":
        return [
            call("alice", "write_file", {"node_id": n, "content": "v1", "if_version": 0}),
            call("alice", "write_file", {"node_id": n, "content": "v2", "if_version": 0}, tag="probe"),
        ]
    if code == "STALE_FENCE":  # the node was seeded as written under a newer fence (seed_restored_tombstones)
        ws, old = c.fenced_workspace, stale_node(c)
        return [
            take("alice", old, "tok", workspace_id=ws),
            call(
                "alice",
                "write_file",
                {"node_id": old, "content": "late", "token": "${tok}", "workspace_id": ws},
                tag="probe",
            ),
            call("alice", "unlock_file", {"token": "${tok}", "workspace_id": ws}),
        ]
    if code == "DEADLOCK":  # alice holds x and waits for y; bob holds y and asks for x
        x, y = c.node("deadlock", "x.md"), c.node("deadlock", "y.md")
        return [
            take("alice", x, "ta"),
            take("bob", y, "tb"),
            call("alice", "lock_file", {"node_id": y, "wait": 10, "timeout": 60}, tag="alice waits", **{"async": "aw"}),
            call("bob", "check_lock_status", {"node_id": y}, until="structuredContent.waiters.0", untilMs=5000),
            call("bob", "lock_file", {"node_id": x, "wait": 10, "timeout": 60}, tag="probe"),
            call("bob", "unlock_file", {"token": "${tb}"}),
            {"op": "join", "label": "aw", "timeoutMs": 12_000},
            call("alice", "unlock_file", {"token": "${ta}"}),
        ]  # fmt: skip
    raise AssertionError(code)


def stale_node(c: Cell) -> str:
    return c.node("stale_fence", "old.md")


def progress_steps(c: Cell) -> list[dict[str, Any]]:
    """Bob holds the node; alice waits for it asking for progress, and cancels at the first notification."""
    n = c.node("progress", "f.md")
    return [
        take("bob", n, "held"),
        call(
            "alice", "lock_file", {"node_id": n, "wait": LONG_WAIT_S, "timeout": 60},
            progress=True, cancelAfterProgress=True, timeoutMs=PROGRESS_WAIT_MS, tag="wait",
        ),
        # The cancellation is a notification, handled a moment later: ask until the line is empty (at most 5 s).
        call("bob", "check_lock_status", {"node_id": n}, until="!structuredContent.waiters.0", untilMs=5000,
             tag="line after cancel"),
        call("bob", "unlock_file", {"token": "${held}"}),
        # A waiter left in line would be granted in the release's own step; the status after it shows who holds it.
        call("bob", "check_lock_status", {"node_id": n}, tag="after release"),
    ]  # fmt: skip


def resources_steps(c: Cell) -> list[dict[str, Any]]:
    held, watched = c.node("res", "held.md"), c.node("res", "watched.md")
    uri = f"locks://default/{watched}"
    return [
        take("alice", held, "ta"),
        {"op": "listResources", "session": "alice", "tag": "list"},
        {"op": "listResourceTemplates", "session": "alice", "tag": "templates"},
        {"op": "readResource", "session": "alice", "uri": "locks://default", "tag": "workspace"},
        {"op": "readResource", "session": "alice", "uri": f"locks://default/{held}", "tag": "node"},
        {"op": "subscribe", "session": "alice", "uri": uri, "tag": "subscribe"},
        take("bob", watched, "tb"),
        {"op": "waitUpdate", "session": "alice", "uri": uri, "timeoutMs": 8000, "tag": "update"},
        call("bob", "unlock_file", {"token": "${tb}"}),
        call("alice", "unlock_file", {"token": "${ta}"}),
    ]


def strict_steps(c: Cell) -> list[dict[str, Any]]:
    """Arguments of the wrong JSON type, which the server once coerced: a string for seconds, false for a version."""
    n = c.node("strict", "f.md")
    return [
        call("alice", "lock_file", {"node_id": n, "timeout": "60"}, tag="probe"),
        call("alice", "write_file", {"node_id": n, "content": "x", "if_version": False}, tag="probe bool"),
        call("alice", "check_lock_status", {"node_id": n}, tag="lock after"),
        call("alice", "file_info", {"node_id": n}, tag="file after"),
    ]


def auth_steps(c: Cell) -> list[dict[str, Any]]:
    return [{"op": "connect", "session": "intruder", "tag": "probe", "timeoutMs": 8000}]


#: The sessions of the cap group, all on one key of their own (kept open until the run ends): the last is over.
CAP_SESSIONS = tuple(f"cap{i}" for i in range(1, SESSION_CAP + 2))


def session_cap_steps(c: Cell) -> list[dict[str, Any]]:
    """As many sessions as the key may hold, then one more on the same key: the one tagged "probe"."""
    *within, over = CAP_SESSIONS
    steps = [{"op": "connect", "session": s, "tag": "within"} for s in within]
    return [*steps, {"op": "connect", "session": over, "tag": "probe", "timeoutMs": 8000}]


def scenario_groups(c: Cell) -> list[dict[str, Any]]:
    """The table: one group per scenario that applies to this cell's transport."""
    groups = [{"name": "tools", "steps": tools_steps(c)}, {"name": "success", "steps": success_steps(c)}]
    groups += [
        {"name": f"error:{code}", "steps": error_steps(c, code)}
        for code in ERROR_CODES
        if (c.transport, code) not in NOT_APPLICABLE
    ]
    groups.append({"name": "progress", "steps": progress_steps(c)})
    groups.append({"name": "strict", "steps": strict_steps(c)})
    if (c.transport, "resources") not in NOT_APPLICABLE:
        groups.append({"name": "resources", "steps": resources_steps(c)})
    if c.transport in HTTP_TRANSPORTS:
        groups.append({"name": "auth", "steps": auth_steps(c)})
    if (c.client, c.transport) in CAP_CELLS:
        groups.append({"name": "session cap", "steps": session_cap_steps(c)})
    if c.transport == "stdio-embedded":  # owners are named by `agent` here (with keys it is only a label)
        for g in groups:
            for s in g["steps"]:
                if s["op"] == "callTool" and s["name"] in OWNER_TOOLS:
                    s["arguments"].setdefault("agent", s["session"])
    return groups


# ---------------------------------------------------------------------------------------------- running the cells


@dataclass
class Table:
    """The recorded outcome of every cell."""

    outcomes: dict[tuple[str, str], dict[str, Any]]
    node_problem: str | None
    seconds: float

    def group(self, client: str, transport: str, name: str) -> list[dict[str, Any]]:
        if client == "ts":
            need_node()
        out = self.outcomes[(client, transport)]
        if "groups" not in out or name not in out["groups"]:
            pytest.fail(f"the {client} driver recorded no group {name!r} over {transport}: {json.dumps(out)[:3000]}")
        records: list[dict[str, Any]] = out["groups"][name]
        return records


def tagged(records: list[dict[str, Any]], tag: str) -> dict[str, Any]:
    found = [r for r in records if r.get("tag") == tag]
    assert found, f"no step tagged {tag!r} in {records}"
    return found[-1]


def run_ts(plan: dict[str, Any]) -> dict[str, Any]:
    """Run driver.mjs on ``plan``; its one JSON document (the process is killed if it outlives the bound)."""
    try:
        done = subprocess.run(
            [shutil.which("node") or "node", str(DRIVER)],
            cwd=INTEROP,
            input=json.dumps(plan),
            capture_output=True,
            text=True,
            timeout=RUN_DEADLINE_MS / 1000 + RUN_GRACE_S,
            env=clean_env(),
        )
    except subprocess.TimeoutExpired as e:
        return {"fatal": {"name": "Timeout", "message": f"driver.mjs ran past its bound; stderr: {e.stderr!r}"}}
    try:
        outcome: dict[str, Any] = json.loads(done.stdout)
    except ValueError:
        return {"fatal": {"name": "BadOutput", "message": f"rc={done.returncode} {done.stdout[-2000:]!r}"}}
    outcome["driver_stderr"] = done.stderr[-4000:]
    return outcome


async def run_cells(plans: dict[tuple[str, str], dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    results: dict[tuple[str, str], dict[str, Any]] = {}

    async def one(key: tuple[str, str], plan: dict[str, Any]) -> None:
        if key[0] == "ts":
            results[key] = await anyio.to_thread.run_sync(run_ts, plan)
        else:
            try:
                with anyio.move_on_after(RUN_DEADLINE_MS / 1000 + RUN_GRACE_S):
                    results[key] = await run_plan(plan)
            except Exception as e:  # recorded for this cell's tests, so the other cells still report
                results[key] = {"fatal": {"name": type(e).__name__, "message": repr(e)}}
            results.setdefault(key, {"fatal": {"name": "Timeout", "message": "the Python driver ran past its bound"}})

    async with anyio.create_task_group() as tg:
        for key, plan in plans.items():
            tg.start_soon(one, key, plan)
    return results


def agent_key(http: httpx.Client, url: str, admin: str, agent: str, workspaces: list[str], role: str) -> str:
    r = http.post(
        f"{url}/v1/admin/keys",
        json={"agent": agent, "workspaces": workspaces, "role": role},
        headers={"Authorization": f"Bearer {admin}"},
    )
    assert r.status_code in (200, 201), r.text
    key: str = r.json()["key"]
    return key


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Table:
    """Start the servers, run every cell's driver at once, and keep what they recorded."""
    started = time.monotonic()
    base = tmp_path_factory.mktemp("interop")
    problem = node_problem()
    clients = [c for c in CLIENTS if c != "ts" or problem is None]
    cells = [Cell(c, t) for c in clients for t in TRANSPORTS]
    with ExitStack() as stack:
        # The embedded engine's data dirs: one prepared (its database created, STALE_FENCE seeded), then copied.
        prep = base / "embedded-prep"
        first_start = subprocess.Popen(
            [cli(), "stdio", "--embedded", "--data-dir", str(prep)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=clean_env(),
        )
        stack.callback(stop, first_start)
        url = stack.enter_context(serve(base / "server", base / "server.log"))
        _, err = first_start.communicate(timeout=30)
        assert first_start.returncode == 0, err
        seed_restored_tombstones(prep / "locks.db", "default", [stale_node(c) for c in cells])

        admin = (base / "server" / "admin.key").read_text().strip()
        with httpx.Client(timeout=10) as http:
            r = http.post(
                f"{url}/v1/workspaces",
                json={"workspace_id": "fenced", "description": "STALE_FENCE"},
                headers={"Authorization": f"Bearer {admin}"},
            )
            assert r.status_code in (200, 201), r.text
            seed_restored_tombstones(
                base / "server" / "locks.db",
                "fenced",
                [stale_node(c) for c in cells if c.transport != "stdio-embedded"],
            )
            for c in cells:
                if c.transport == "stdio-embedded":
                    data = base / f"embedded-{c.cid}"
                    shutil.copytree(prep, data, ignore=shutil.ignore_patterns("server.lock"))
                    c.fenced_workspace = "default"
                    local = {
                        "transport": "stdio",
                        "command": cli(),
                        "args": ["stdio", "--embedded", "--data-dir", str(data)],
                    }
                    c.sessions = {"local": local, **{s: {"alias": "local"} for s in ("alice", "bob", "root")}}
                    continue
                keys = {
                    "alice": agent_key(http, url, admin, f"alice-{c.cid}", ["default", "fenced"], "agent"),
                    "bob": agent_key(http, url, admin, f"bob-{c.cid}", ["default"], "agent"),
                    "root": agent_key(http, url, admin, f"root-{c.cid}", [], "admin"),
                }
                if c.transport == "stdio-bridge":
                    c.sessions = {
                        s: {"transport": "stdio", "command": cli(), "args": ["stdio"],
                            "env": {"MCP_LOCKS_URL": url, "MCP_LOCKS_KEY": k}}
                        for s, k in keys.items()
                    }  # fmt: skip
                    continue
                endpoint = f"{url}/mcp" if c.transport == "streamable-http" else f"{url}/sse"
                if (c.client, c.transport) in CAP_CELLS:  # a key of the cell's own, so no other cell adds to its count
                    cap_key = agent_key(http, url, admin, f"cap-{c.cid}", ["default"], "agent")
                    keys.update(dict.fromkeys(CAP_SESSIONS, cap_key))
                c.sessions = {
                    s: {"transport": c.transport, "url": endpoint, "headers": {"Authorization": f"Bearer {k}"}}
                    for s, k in {**keys, "intruder": WRONG_KEY}.items()
                }
        plans = {
            (c.client, c.transport): {
                "deadlineMs": RUN_DEADLINE_MS,
                "sessions": c.sessions,
                "groups": scenario_groups(c),
            }
            for c in cells
        }
        outcomes = anyio.run(run_cells, plans)
    dump = os.environ.get("INTEROP_OUTCOMES")  # a file to keep every recorded step in, to read when a cell fails
    if dump:
        Path(dump).write_text(json.dumps({f"{c}/{t}": o for (c, t), o in outcomes.items()}, indent=1))
    return Table(outcomes, problem, time.monotonic() - started)


# ---------------------------------------------------------------------------------------------- the tests

CELLS = [pytest.param(c, t, id=f"{c}-{t}") for c in CLIENTS for t in TRANSPORTS]
CELL_ARGS = ("client", "transport")


def result_of(rec: dict[str, Any]) -> dict[str, Any]:
    """The tool result a step got; a thrown error fails the test with what the client said."""
    assert rec.get("ok"), f"the client threw instead of returning a result: {rec.get('error')}"
    result: dict[str, Any] = rec["result"]
    return result


def setup_succeeded(records: list[dict[str, Any]]) -> None:
    """The steps before the probe (taking the locks it runs into, ...) all succeeded, or the probe means nothing."""
    for r in records:
        if r.get("tag") == "probe":
            return
        if r["op"] == "callTool" and "started" not in r:
            assert r.get("ok"), f"a setup step threw: {r}"
            assert not r["result"]["isError"], f"a setup step failed: {r}"


def not_applicable(transport: str, scenario: str) -> None:
    why = NOT_APPLICABLE.get((transport, scenario))
    if why:
        pytest.skip(why)


@pytest.mark.parametrize(CELL_ARGS, CELLS)
def test_every_tool_is_listed_with_an_input_schema(table: Table, client: str, transport: str) -> None:
    tools = result_of(tagged(table.group(client, transport, "tools"), "probe"))["tools"]
    assert tools, "tools/list is empty"
    for t in tools:
        assert isinstance(t["inputSchema"], dict), t
        assert t["inputSchema"].get("type") == "object", t
        assert isinstance(t["outputSchema"], dict), f"{t['name']} declares no outputSchema"


@pytest.mark.parametrize(CELL_ARGS, CELLS)
def test_every_transport_lists_the_same_tools_with_the_same_schemas(table: Table, client: str, transport: str) -> None:
    def listing(client: str, transport: str) -> dict[str, Any]:
        tools = result_of(tagged(table.group(client, transport, "tools"), "probe"))["tools"]
        return {t["name"]: t for t in tools}

    reference = listing("python", "streamable-http")
    mine = listing(client, transport)
    assert sorted(mine) == sorted(reference)
    for name, tool in mine.items():
        assert tool == reference[name], f"{name} is listed differently over {transport} to the {client} client"


@pytest.mark.parametrize(CELL_ARGS, CELLS)
def test_a_valid_call_of_every_listed_tool_succeeds_and_passes_the_clients_schema_check(
    table: Table, client: str, transport: str
) -> None:
    listed = {t["name"] for t in result_of(tagged(table.group(client, transport, "tools"), "probe"))["tools"]}
    records = table.group(client, transport, "success")
    called = {r["name"] for r in records}
    assert listed <= called, f"tools the table does not call yet (add them to success_steps): {listed - called}"
    failures = []
    for r in records:
        if not r.get("ok"):
            failures.append(f"{r['name']}: the client threw {r.get('error')}")
        elif r["result"]["isError"] or r["result"]["structuredContent"] is None:
            failures.append(f"{r['name']}: {r['result']['text']}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("code", ERROR_CODES)
@pytest.mark.parametrize(CELL_ARGS, CELLS)
def test_an_error_reaches_the_client_as_a_tool_result_that_starts_with_its_code(
    table: Table, client: str, transport: str, code: str
) -> None:
    not_applicable(transport, code)
    records = table.group(client, transport, f"error:{code}")
    setup_succeeded(records)
    result = result_of(tagged(records, "probe"))
    assert result["isError"] is True, result
    assert (result["text"] or "").startswith(f"{code}: "), result["text"]


@pytest.mark.parametrize(CELL_ARGS, CELLS)
def test_an_error_result_carries_its_body_in_meta_and_no_structured_content_the_schema_rejects(
    table: Table, client: str, transport: str
) -> None:
    schemas = {
        t["name"]: t["outputSchema"]
        for t in result_of(tagged(table.group(client, transport, "tools"), "probe"))["tools"]
    }
    failures = []
    for code in ERROR_CODES:
        if (transport, code) in NOT_APPLICABLE:
            continue
        rec = tagged(table.group(client, transport, f"error:{code}"), "probe")
        if not rec.get("ok"):
            failures.append(f"{code}: the client threw {rec.get('error')}")
            continue
        result = rec["result"]
        leading = (result["text"] or "").split(":", 1)[0]
        body = (result["_meta"] or {}).get(ERROR_META_KEY)
        if not isinstance(body, dict) or body.get("code") != leading or not body.get("message"):
            failures.append(f"{code}: _meta[{ERROR_META_KEY!r}] is {body!r}, text starts with {leading!r}")
        sc = result["structuredContent"]
        if sc is not None:
            try:
                jsonschema.validate(sc, schemas[rec["name"]])
            except jsonschema.ValidationError as e:
                failures.append(
                    f"{code}: structuredContent {sc!r} does not match {rec['name']}'s outputSchema: {e.message}"
                )
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(("tag", "field"), [("probe", "timeout"), ("probe bool", "if_version")])
@pytest.mark.parametrize(CELL_ARGS, CELLS)
def test_an_argument_of_the_wrong_type_is_an_invalid_argument_result_the_client_accepts(
    table: Table, client: str, transport: str, tag: str, field: str
) -> None:
    # lock_file(timeout="60") once took a 60 s lease and write_file(if_version=false) created the file.
    records = table.group(client, transport, "strict")
    result = result_of(tagged(records, tag))  # the client threw instead (e.g. its output-schema check)?
    assert result["isError"] is True, result
    assert (result["text"] or "").startswith("INVALID_ARGUMENT: "), result["text"]
    body = (result["_meta"] or {}).get(ERROR_META_KEY) or {}
    assert body.get("details", {}).get("field") == field, body
    assert result["structuredContent"] is None, result["structuredContent"]


@pytest.mark.parametrize(CELL_ARGS, CELLS)
def test_an_argument_of_the_wrong_type_takes_no_lock_and_writes_no_file(
    table: Table, client: str, transport: str
) -> None:
    records = table.group(client, transport, "strict")
    assert result_of(tagged(records, "lock after"))["structuredContent"]["holders"] == []
    assert result_of(tagged(records, "file after"))["structuredContent"]["exists"] is False


@pytest.mark.parametrize(CELL_ARGS, CELLS)
def test_a_waiting_lock_file_reports_progress_to_the_client(table: Table, client: str, transport: str) -> None:
    rec = tagged(table.group(client, transport, "progress"), "wait")
    progress = rec.get("progress") or []
    assert progress, f"no progress notification while waiting: {rec}"
    first = progress[0]
    assert first["total"] == LONG_WAIT_S, first
    assert "waiting for" in (first["message"] or ""), first


@pytest.mark.parametrize(CELL_ARGS, CELLS)
def test_a_cancelled_wait_leaves_the_line_and_the_lock_never_goes_to_the_canceller(
    table: Table, client: str, transport: str
) -> None:
    records = table.group(client, transport, "progress")
    wait = tagged(records, "wait")
    assert wait.get("cancelled"), f"the call was not cancelled (no progress came?): {wait}"
    assert not wait.get("ok"), f"a cancelled call still returned a result: {wait}"
    line = result_of(tagged(records, "line after cancel"))["structuredContent"]
    assert line["waiters"] == [], f"the cancelled request is still in line: {line['waiters']}"
    after = result_of(tagged(records, "after release"))["structuredContent"]
    assert after["holders"] == [], f"the lock went to someone after the holder let go: {after}"
    assert after["waiters"] == [], f"someone still waits after the holder let go: {after}"


@pytest.mark.parametrize(CELL_ARGS, CELLS)
def test_the_locks_resources_are_listed_and_read_as_json(table: Table, client: str, transport: str) -> None:
    not_applicable(transport, "resources")
    records = table.group(client, transport, "resources")
    templates = {t["uriTemplate"] for t in result_of(tagged(records, "templates"))["resourceTemplates"]}
    assert {"locks://{workspace_id}", "locks://{workspace_id}/{+node_id}"} <= templates
    result_of(tagged(records, "list"))  # listing concrete resources answers (it may be empty)
    for tag in ("workspace", "node"):
        contents = result_of(tagged(records, tag))["contents"]
        assert contents, f"{tag} read as nothing"
        assert contents[0]["mimeType"] == "application/json", contents
        doc = json.loads(contents[0]["text"])
        assert doc["workspace_id"] == "default", doc
    held = json.loads(result_of(tagged(records, "node"))["contents"][0]["text"])
    assert held["locked"] is True, held


@pytest.mark.parametrize(CELL_ARGS, CELLS)
def test_a_subscriber_hears_when_the_node_it_watches_changes(table: Table, client: str, transport: str) -> None:
    not_applicable(transport, "resources")
    records = table.group(client, transport, "resources")
    result_of(tagged(records, "subscribe"))
    update = result_of(tagged(records, "update"))
    assert update["uri"] in update["updates"]


HTTP_CELLS = [p for p in CELLS if p.values[1] in HTTP_TRANSPORTS]


@pytest.mark.parametrize(CELL_ARGS, HTTP_CELLS)
def test_a_wrong_key_cannot_connect(table: Table, client: str, transport: str) -> None:
    rec = tagged(table.group(client, transport, "auth"), "probe")
    assert not rec.get("ok"), f"a wrong key connected: {rec}"


@pytest.mark.parametrize(CELL_ARGS, HTTP_CELLS)
def test_the_client_is_told_a_wrong_key_was_refused_with_401_unauthenticated(
    table: Table, client: str, transport: str
) -> None:
    rec = tagged(table.group(client, transport, "auth"), "probe")
    assert not rec.get("ok"), f"a wrong key connected: {rec}"
    err = rec["error"]
    said = f"{err['code']} {err['message']}"
    assert err["code"] == 401 or "401" in said or "UNAUTHENTICATED" in said, (
        f"the client cannot tell its key was refused: {err}"
    )


CAP_PARAMS = [p for p in CELLS if tuple(p.values) in CAP_CELLS]


@pytest.mark.parametrize(CELL_ARGS, CAP_PARAMS)
def test_a_key_opens_as_many_sessions_as_its_cap_allows(table: Table, client: str, transport: str) -> None:
    within = [r for r in table.group(client, transport, "session cap") if r.get("tag") == "within"]
    assert len(within) == SESSION_CAP
    assert all(r.get("ok") for r in within), f"a session within the cap was refused: {within}"


@pytest.mark.parametrize(CELL_ARGS, CAP_PARAMS)
def test_a_session_over_the_keys_cap_is_refused_and_the_client_is_told_429_limit_exceeded(
    table: Table, client: str, transport: str
) -> None:
    rec = tagged(table.group(client, transport, "session cap"), "probe")
    assert not rec.get("ok"), f"a session over the cap of {SESSION_CAP} connected: {rec}"
    err = rec["error"]
    said = f"{err['code']} {err['message']} {json.dumps(err.get('data'))}"
    assert "429" in said or "LIMIT_EXCEEDED" in said, f"the client cannot tell the key is over its session cap: {err}"

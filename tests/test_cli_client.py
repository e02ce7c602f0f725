"""`mcp-locks exec`, `status` and `locks` against a real server, run as the processes scripts would run."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import pytest

from mcp_locks import Settings, build_app
from mcp_locks.cli.remote.exec import EXIT_BUSY, parse_lock_spec
from mcp_locks.engine.lock_service import LockService
from mcp_locks.stores.base import MemoryStore

from .servers import serve_in_thread

pytestmark = pytest.mark.slow


@dataclass
class Env:
    url: str
    service: LockService
    key: str

    def lock_as(self, agent: str, node_id: str) -> None:
        """Take a lock over REST with a key of its own (the service's actors live in the server's thread)."""
        key, _ = anyio.run(lambda: self.service.create_key(agent, ["default"]))
        r = httpx.post(
            f"{self.url}/v1/workspaces/default/nodes/{node_id}/lock",
            json={"note": "editing"},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert r.status_code == 200, r.text

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "MCP_LOCKS_URL": self.url, "MCP_LOCKS_KEY": self.key}
        return subprocess.run(
            [sys.executable, "-m", "mcp_locks", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    service = LockService(MemoryStore())
    app = build_app(Settings(store="memory", data_dir=tmp_path), service)
    with serve_in_thread(app) as url:
        # Keys live only in the store (plain dicts here): one can be made from this thread while the
        # server runs. Locks cannot: they belong to actors on the server's own event loop.
        key, _ = anyio.run(lambda: service.create_key("script", ["default"]))
        yield Env(url, service, key)


@pytest.mark.parametrize(
    ("spec", "item"),
    [
        ("a.md", {"node_id": "a.md", "mode": "write", "depth": "node"}),
        ("data:read:tree", {"node_id": "data", "mode": "read", "depth": "tree"}),
        ("data:write", {"node_id": "data", "mode": "write", "depth": "node"}),
        ("odd:name.md", {"node_id": "odd:name.md", "mode": "write", "depth": "node"}),
    ],
)
def test_lock_specs_name_a_path_and_optionally_a_mode_and_depth(spec: str, item: dict[str, str]) -> None:
    assert parse_lock_spec(spec) == item


def test_exec_holds_the_locks_while_the_command_runs_and_passes_its_status_through(env: Env) -> None:
    probe = (
        "import json, os, sys, urllib.request;"
        "req = urllib.request.Request(os.environ['MCP_LOCKS_URL'] + '/v1/workspaces/default/nodes/report.md/lock',"
        " headers={'Authorization': 'Bearer ' + os.environ['MCP_LOCKS_KEY']});"
        "st = json.load(urllib.request.urlopen(req));"
        "print(os.environ['MCP_LOCKS_FENCE'], st['locked'], st['holders'][0]['owner']);"
        "sys.exit(3)"
    )
    done = env.run("exec", "--lock", "report.md", "--", sys.executable, "-c", probe)
    assert done.returncode == 3, done.stderr
    fence, locked, owner = done.stdout.split()
    assert (int(fence) >= 1, locked, owner) == (True, "True", "script")
    after = env.run("status", "report.md")
    assert after.stdout.startswith("report.md: free"), after.stdout


def test_exec_exits_75_when_the_locks_are_busy_and_does_not_run_the_command(env: Env, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    held = env.run("exec", "--lock", "data:read:tree", "--", sys.executable, "-c", "print('ok')")
    assert held.returncode == 0, held.stderr
    env.lock_as("other", "data/x.csv")  # someone else now holds a file below
    busy = env.run("exec", "--lock", "data:write:tree", "--", sys.executable, "-c", f"open({str(marker)!r}, 'w')")
    assert busy.returncode == EXIT_BUSY
    assert "LOCKED" in busy.stderr
    assert not marker.exists()


def test_status_and_locks_print_the_holders(env: Env) -> None:
    env.lock_as("alice", "reports/q3.md")
    status = env.run("status", "reports/q3.md")
    assert status.returncode == 0, status.stderr
    assert "reports/q3.md: locked (write)" in status.stdout
    assert "held: alice write/node" in status.stdout
    listed = env.run("locks", "reports/")
    assert listed.stdout.startswith("reports/q3.md\theld: alice")


def test_client_commands_without_a_server_say_so() -> None:
    from .servers import free_socket

    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    done = subprocess.run(
        [sys.executable, "-m", "mcp_locks", "status", "a.md", "--url", f"http://127.0.0.1:{port}", "--key", "k"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "UNAVAILABLE" in done.stderr
    assert "Traceback" not in done.stderr


def test_exec_passes_a_sigterm_to_the_command_then_releases_its_locks(env: Env, tmp_path: Path) -> None:
    import signal
    import time

    started = tmp_path / "started"
    child = (
        "import signal, sys, time;"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(7));"
        f"open({str(started)!r}, 'w').close();"
        "time.sleep(60)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "mcp_locks", "exec", "--lock", "job.lock", "--", sys.executable, "-c", child],
        env={**os.environ, "MCP_LOCKS_URL": env.url, "MCP_LOCKS_KEY": env.key},
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not started.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)  # a file the child makes: no event crosses these process boundaries
        assert started.exists()
        proc.send_signal(signal.SIGTERM)  # what a harness sends to the PID it started
        assert proc.wait(30) == 7  # the command stopped on its own terms; its status comes through
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert env.run("status", "job.lock").stdout.startswith("job.lock: free")


def test_everything_after_the_command_belongs_to_the_command(env: Env) -> None:
    shown = "import sys; print(' '.join(sys.argv[1:]))"
    done = env.run("exec", "--lock", "a.md", sys.executable, "-c", shown, "--url", "http://elsewhere", "--timeout", "5")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "--url http://elsewhere --timeout 5"


def test_audit_tail_prints_the_last_events_oldest_first(env: Env) -> None:
    env.lock_as("alice", "a.md")
    env.lock_as("bob", "b.md")
    out = env.run("audit", "tail", "-n", "3")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [line.split()[2] for line in lines] == ["granted", "requested", "granted"]
    assert "b.md  bob" in lines[-1]
    assert "fence=2" in lines[-1]
    only = env.run("audit", "tail", "--agent", "alice").stdout.splitlines()
    assert len(only) == 2
    assert all("alice" in line for line in only)


def test_audit_tail_follow_prints_new_events_as_they_happen(env: Env) -> None:
    cmd = [sys.executable, "-m", "mcp_locks", "audit", "tail", "-f"]
    envvars = {**os.environ, "MCP_LOCKS_URL": env.url, "MCP_LOCKS_KEY": env.key}
    with subprocess.Popen(cmd, env=envvars, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            env.lock_as("carol", "c.md")  # taken after the tail started (its log was empty)
            seen = [proc.stdout.readline(), proc.stdout.readline()]  # bounded by the test's timeout
        finally:
            proc.terminate()
            proc.wait(10)
    assert [line.split()[2] for line in seen] == ["requested", "granted"]
    assert all("c.md  carol" in line for line in seen)


def test_webhooks_commands_need_an_admin_key_and_manage_webhooks(env: Env) -> None:
    refused = env.run("webhooks", "create", "https://example.com/h", "--event", "lock.granted")
    assert refused.returncode == 1
    assert "FORBIDDEN" in refused.stderr
    admin, _ = anyio.run(lambda: env.service.create_key("root", [], "admin"))
    env.key = admin
    made = env.run("webhooks", "create", "https://example.com/h", "--event", "lock.granted", "--event", "file.written")
    assert made.returncode == 0, made.stderr
    wid = made.stdout.split()[0]
    assert "secret: whsec_" in made.stdout
    assert env.run("webhooks", "list").stdout.split() == [wid, "https://example.com/h", "lock.granted,file.written"]
    assert env.run("webhooks", "delete", wid).stdout.strip() == f"deleted {wid}"
    assert env.run("webhooks", "list").stdout == ""

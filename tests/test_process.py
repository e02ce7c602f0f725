"""The real ``mcp-locks serve`` process: start-up, kill -9 and restart, clean shutdown."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

# The shortest lease the API allows: this test is about real time passing while the server is down.
SHORT_LEASE = 1


@contextmanager
def server_process(data_dir: Path, *extra: str) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    """Start ``mcp-locks serve`` on a free port; yield the process, its /mcp URL and its log file."""
    log = data_dir / f"server-{time.monotonic_ns()}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mcp_locks", "serve", "--port", "0", "--data-dir", str(data_dir), *extra],
            stderr=out,
            stdin=subprocess.DEVNULL,
        )
    try:
        url = None
        deadline = time.monotonic() + 20
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            m = re.search(r"listening on (http://\S+/mcp)", log.read_text())
            if m:
                url = m.group(1)
            else:
                time.sleep(0.02)
        assert url is not None, f"server did not announce its URL: {log.read_text()}"
        health = url.removesuffix("/mcp") + "/healthz"
        while time.monotonic() < deadline and proc.poll() is None:  # up once its lifespan has run
            try:
                if httpx.get(health, timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.02)
        yield proc, url, log
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def admin_key(data_dir: Path) -> str:
    """The admin key the server wrote on first start."""
    return (data_dir / "admin.key").read_text().strip()


async def call(url: str, tool: str, args: dict[str, Any], key: str) -> Any:
    async with (
        httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}) as h,
        Client(streamable_http_client(url, http_client=h)) as c,
    ):
        r = await c.call_tool(tool, args)
    return r


async def test_first_start_writes_an_admin_key_readable_only_by_its_owner_and_never_logs_it(tmp_path: Path) -> None:
    with server_process(tmp_path) as (_proc, url, log):
        key = admin_key(tmp_path)
        assert (tmp_path / "admin.key").stat().st_mode & 0o777 == 0o600
        r = await call(url, "list_workspaces", {}, key)
        assert [w["workspace_id"] for w in r.structured_content["workspaces"]] == ["default"]
        assert str(tmp_path / "admin.key") in log.read_text()
        assert key not in log.read_text()
    with server_process(tmp_path) as (_proc, url, _log):
        assert admin_key(tmp_path) == key  # a restart keeps the admin key


async def test_a_request_without_a_key_is_refused_with_401(tmp_path: Path) -> None:
    with server_process(tmp_path) as (_proc, url, _log):
        async with httpx.AsyncClient() as h:
            r = await h.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert r.status_code == 401
        # On the MCP endpoint the refusal is a JSON-RPC error (MCP clients read only that) carrying the body.
        assert r.json()["error"]["data"]["error"]["code"] == "UNAUTHENTICATED"


async def test_locks_survive_kill_9_and_expired_ones_are_expired_at_restart(tmp_path: Path) -> None:
    with server_process(tmp_path) as (proc, url, _log):
        key = admin_key(tmp_path)
        long = (await call(url, "lock_file", {"node_id": "long.md", "timeout": 600}, key)).structured_content
        short = (await call(url, "lock_file", {"node_id": "short.md", "timeout": SHORT_LEASE}, key)).structured_content
        rid = {"node_id": "retry.md", "agent": "alice", "request_id": "req-42"}
        retried = (await call(url, "lock_file", rid, key)).structured_content
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    # Let the short lease's deadline pass while the server is down.
    remaining = datetime.fromisoformat(short["expires_at"]).timestamp() - time.time()
    await anyio.sleep(max(0.0, remaining) + 0.05)
    with server_process(tmp_path) as (_proc, url, _log):
        status = (await call(url, "check_lock_status", {"node_id": "long.md"}, key)).structured_content
        assert status["holders"][0]["lock_id"] == long["lock_id"]
        assert status["holders"][0]["expires_at"] == long["expires_at"]
        gone = await call(url, "renew_lock", {"token": short["token"]}, key)
        assert gone.is_error
        assert gone.content[0].text.startswith("LOCK_EXPIRED")
        again = (await call(url, "lock_file", rid, key)).structured_content
        assert (again["token"], again["replayed"]) == (retried["token"], True)
        fresh = (await call(url, "lock_file", {"node_id": "new.md"}, key)).structured_content
        assert fresh["fence"] > max(long["fence"], short["fence"], retried["fence"])


async def test_sigterm_shuts_the_server_down_cleanly(tmp_path: Path) -> None:
    with server_process(tmp_path) as (proc, url, log):
        async with httpx.AsyncClient() as h:
            r = await h.get(url.removesuffix("/mcp") + "/healthz")
        assert r.status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert "mcp-locks stopped" in log.read_text()
        assert "Traceback" not in log.read_text()


async def test_keys_and_tokens_never_reach_the_servers_log_even_at_debug_level(tmp_path: Path) -> None:
    with server_process(tmp_path, "--log-level", "debug") as (proc, url, log):
        admin = admin_key(tmp_path)
        base = url.removesuffix("/mcp")
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {admin}"}) as h:
            made = (await h.post(f"{base}/v1/admin/keys", json={"agent": "eve", "workspaces": ["default"]})).json()
            key = made["key"]
            eve = {"Authorization": f"Bearer {key}"}
            grant = (await call(url, "lock_file", {"node_id": "secret.md"}, key)).structured_content
            await call(url, "renew_lock", {"token": grant["token"]}, key)
            rest = (await h.post(f"{base}/v1/workspaces/default/nodes/other.md/lock", json={}, headers=eve)).json()
            await h.delete(f"{base}/v1/workspaces/default/nodes/other.md/lock/{rest['token']}", headers=eve)
            await h.post(f"{base}/v1/workspaces/default/locks/{grant['lock_id']}/force-unlock", json={"reason": "t"})
            gone = await call(url, "unlock_file", {"token": grant["token"]}, key)
            assert gone.is_error
            await h.delete(f"{base}/v1/admin/keys/{made['key_id']}")
            refused = await h.get(f"{base}/v1/workspaces", headers=eve)
            assert refused.status_code == 401
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        text = log.read_text()
    assert "DEBUG" in text  # it did log at length ...
    assert made["key_id"] in text  # ... naming keys by their public id
    for secret in (admin, key, grant["token"], rest["token"]):
        assert secret not in text
        assert secret[-24:] not in text  # nor any long piece of it

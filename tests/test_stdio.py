"""`mcp-locks stdio`: the bridge to a running server, and the embedded engine, driven by the SDK's stdio client."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client

from mcp_locks.faces.mcp.tools import PROGRESS_EVERY

from .helpers import STEP, until_event
from .servers import KeyedServer, keyed_server

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


def stdio(*args: str) -> Client:
    """A client of ``python -m mcp_locks stdio ARGS`` (a subprocess speaking MCP on its stdin/stdout)."""
    return Client(stdio_client(StdioServerParameters(command=sys.executable, args=["-m", "mcp_locks", "stdio", *args])))


Env = KeyedServer


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with keyed_server(tmp_path, agent="desktop-agent") as server:
        yield server


def ok(result: Any) -> dict[str, Any]:
    assert not result.is_error, result.content
    content: dict[str, Any] = result.structured_content
    return content


async def test_the_bridge_offers_the_servers_tools_and_locks_as_the_keys_agent(env: Env) -> None:
    with anyio.fail_after(STEP * 3):
        async with stdio("--url", env.url, "--key", env.key) as c:
            names = {t.name for t in (await c.list_tools()).tools}
            assert {"lock_file", "unlock_file", "check_lock_status", "force_unlock"} <= names
            grant = ok(await c.call_tool("lock_file", {"node_id": "notes.md", "agent": "desktop"}))
            assert (grant["owner"], grant["label"]) == ("desktop-agent/desktop", "desktop")
            assert (await env.service.status(None, "notes.md")).holders[0].lock_id == grant["lock_id"]
            refused = await c.call_tool("lock_file", {"node_id": "notes.md"})
            assert refused.is_error
            assert refused.content[0].text.startswith("LOCKED: ")  # type: ignore[union-attr]
            # Forwarded as the server answered: the body in _meta, no structuredContent for hosts to reject.
            assert refused.structured_content is None
            assert refused.meta is not None
            assert refused.meta["io.github.mcp-locks/error"]["code"] == "LOCKED"
            ok(await c.call_tool("unlock_file", {"token": grant["token"]}))


async def test_the_bridge_passes_progress_back_and_a_cancelled_wait_leaves_the_line(env: Env) -> None:
    holder = await env.service.lock(None, "doc.md", agent="other")
    progressed = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        progressed.set()

    with anyio.fail_after(STEP * 3):
        async with stdio("--url", env.url, "--key", env.key) as c, env.service.subscribe() as events:
            async with anyio.create_task_group() as tg:
                args = {"node_id": "doc.md", "wait": 600}
                tg.start_soon(lambda: c.call_tool("lock_file", args, progress_callback=on_progress))
                await until_event(events, "queued", "doc.md")
                env.clock.advance(PROGRESS_EVERY)
                await progressed.wait()
                tg.cancel_scope.cancel()
            left = await until_event(events, "left", "doc.md")
    assert left.code == "CANCELLED"
    assert (await env.service.status(None, "doc.md")).holders[0].lock_id == holder.lock_id


def test_the_bridge_says_how_to_start_a_server_when_none_answers() -> None:
    from .servers import free_socket

    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    done = subprocess.run(
        [sys.executable, "-m", "mcp_locks", "stdio", "--url", f"http://127.0.0.1:{port}", "--key", "mlk_x"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert f"mcp-locks serve --port {port}" in done.stderr.decode()
    assert "Traceback" not in done.stderr.decode()


async def test_embedded_mode_runs_the_engine_for_one_client_and_claims_the_data_dir(tmp_path: Path) -> None:
    with anyio.fail_after(STEP * 3):
        async with stdio("--embedded", "--data-dir", str(tmp_path)) as c:
            grant = ok(await c.call_tool("lock_file", {"node_id": "a.md", "agent": "solo"}))
            assert grant["owner"] == "solo"  # the local user: the agent argument names the owner
            second = await anyio.run_process(
                [sys.executable, "-m", "mcp_locks", "stdio", "--embedded", "--data-dir", str(tmp_path)],
                stdin=subprocess.DEVNULL,
                check=False,
            )
            assert second.returncode != 0
            assert "is using" in second.stderr.decode()
        async with stdio("--embedded", "--data-dir", str(tmp_path)) as c:  # the lock survived the restart
            status = ok(await c.call_tool("check_lock_status", {"node_id": "a.md"}))
            assert status["holders"][0]["lock_id"] == grant["lock_id"]


async def test_the_claude_desktop_example_config_starts_a_working_bridge(env: Env) -> None:
    import json
    import shutil

    config = json.loads((Path(__file__).parents[1] / "examples" / "claude_desktop_config.json").read_text())
    entry = config["mcpServers"]["locks"]
    args = [env.url if a == "http://127.0.0.1:8765" else a for a in entry["args"]]  # this test's server
    command = shutil.which(entry["command"])
    if command is None:  # not on PATH (the package is not installed in this interpreter's scripts)
        command, args = sys.executable, ["-m", "mcp_locks", *args]
    params = StdioServerParameters(command=command, args=args, env={**entry["env"], "MCP_LOCKS_KEY": env.key})
    with anyio.fail_after(STEP * 3):
        async with Client(stdio_client(params)) as c:
            grant = ok(await c.call_tool("lock_file", {"node_id": "from-desktop.md"}))
    assert grant["owner"] == "desktop-agent"

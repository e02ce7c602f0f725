"""Starting ``mcp-locks stdio``: the bridge once the server and the key are known good, or the embedded engine."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.stdio import stdio_server
from mcp.server.subscriptions import InMemorySubscriptionBus

from mcp_locks.core.errors import LockError, Unauthenticated
from mcp_locks.core.keys import parse_key_id
from mcp_locks.engine.lock_service import LockService
from mcp_locks.faces.mcp.tools import INSTRUCTIONS, build_mcp
from mcp_locks.faces.stdio.bridge import Bridge
from mcp_locks.faces.stdio.link import Link
from mcp_locks.faces.stdio.relay import Relay

__all__ = ["KeyRefused", "NoServer", "linked", "run_bridge", "run_embedded"]


class NoServer(Exception):
    """The bridge cannot start; the message (one line or a few) says what to do."""


class KeyRefused(NoServer):
    """The server refused the key (wrong, revoked or a placeholder): one line saying which and what to do."""


def _no_server(url: str, why: str) -> NoServer:
    base = url.removesuffix("/mcp")
    port = base.rsplit(":", 1)[-1] if base.count(":") == 2 else "8765"
    return NoServer(
        f"no mcp-locks server answers at {url} ({why}).\n"
        f"Start one in another terminal:   mcp-locks serve --port {port}\n"
        "then give this agent a key:      mcp-locks keys create --agent NAME --workspace default\n"
        "and pass it here with --key (or MCP_LOCKS_KEY). For one client without a server,\n"
        "use:                             mcp-locks stdio --embedded --data-dir PATH"
    )


def _key_refused(key: str) -> KeyRefused:
    """The one line for a refused key: its public id (never the secret), or that it is not a key at all."""
    key_id = parse_key_id(key)
    which = f"key {key_id} (unknown or revoked)" if key_id else "a malformed key (not an mcp-locks API key)"
    return KeyRefused(
        f"UNAUTHENTICATED: the server refused {which}; create one with 'mcp-locks keys create --agent NAME'"
        " and put it in MCP_LOCKS_KEY (or pass --key)."
    )


async def _check_server(http: httpx2.AsyncClient, endpoint: str) -> None:
    """NoServer unless an mcp-locks server answers its health check."""
    try:
        probe = await http.get(endpoint.removesuffix("/mcp") + "/healthz")
        healthy = probe.status_code == 200 and probe.json().get("status") == "ok"
    except httpx2.TransportError as e:
        raise _no_server(endpoint, str(e) or type(e).__name__) from None
    except ValueError:
        healthy = False
    if not healthy:
        raise _no_server(endpoint, f"/healthz answered {probe.status_code}, not an mcp-locks server")


def _startup_failure(err: LockError | None, key: str, endpoint: str) -> NoServer:
    if isinstance(err, Unauthenticated):
        return _key_refused(key)
    return _no_server(endpoint, err.message if err is not None else "no answer")


@asynccontextmanager
async def linked(endpoint: str, key: str) -> AsyncIterator[Relay]:
    """The link to the server at ``endpoint`` (``relay.link``), kept open while inside; NoServer if none answers.

    Yields once the first attempt to connect settled (``relay.link.client`` says how).
    """
    # trust_env=False: the key must never go to a proxy named in the environment. No read timeout: a listen
    # stream is silent for as long as nothing changes; each forwarded request has a budget of its own instead.
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=None), trust_env=False) as http:
        await _check_server(http, endpoint)
        relay = Relay(InMemorySubscriptionBus())

        def connect() -> Client:
            transport = streamable_http_client(endpoint, http_client=http)
            return Client(transport, cache=None, logging_callback=relay.log)

        link = relay.link = Link(endpoint, connect, relay.run)
        async with anyio.create_task_group() as tg:
            await tg.start(link.run)
            yield relay
            tg.cancel_scope.cancel()


async def run_bridge(url: str, key: str | None, version: str) -> None:
    """Serve stdio until the host hangs up, forwarding everything to the server at ``url``.

    Raises NoServer (KeyRefused for a refused key) when it cannot start.
    """
    endpoint = url.rstrip("/")
    if not endpoint.endswith("/mcp"):
        endpoint += "/mcp"
    if not key:
        raise NoServer("the server needs an API key: pass --key KEY (or set MCP_LOCKS_KEY).")
    if not key.isascii() or not key.isprintable():  # a placeholder such as 'mlk_…' cannot even be sent
        raise _key_refused(key)
    failed: NoServer | None = None
    async with linked(endpoint, key) as relay:
        link = relay.link
        assert link is not None
        client = link.client
        if client is None:
            failed = _startup_failure(link.error, key, endpoint)
        else:
            bridge = Bridge(link, relay, instructions=client.instructions or INSTRUCTIONS, version=version)
            await bridge.warm()
            async with stdio_server() as (read, write):
                await bridge.server.run(read, write, bridge.server.create_initialization_options())
    if failed is not None:
        raise failed


async def run_embedded(service: LockService, version: str) -> None:
    """Serve stdio with the engine in this process (the caller is trusted: it is the local user)."""
    async with service:
        await build_mcp(service, version=version).run_stdio_async()

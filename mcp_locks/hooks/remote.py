"""The server calls a hook makes, over the REST client (:class:`~mcp_locks.client.LockClient`).

One attempt per call and a short timeout: a hook runs on every edit, and the host waits for it, so a
server that does not answer is reported at once (``UNAVAILABLE``) rather than retried with back-off. Errors
are the client's: the server's refusals decoded by :func:`~mcp_locks.client.errors.decode_error` into the
:class:`~mcp_locks.LockError` classes of ``ERROR_TABLE``.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import quote

from mcp_locks.client.rest import LockClient
from mcp_locks.core.errors import LockBroken, LockExpired, LockNotFound
from mcp_locks.hooks.config import HookConfig

__all__ = ["CALL_TIMEOUT", "Remote", "connect"]

#: Longest one server call of a hook may take (seconds): well inside every host's hook timeout.
CALL_TIMEOUT = 10.0


class Remote:
    """A session's view of the server: take, renew, release and inspect locks as ``<agent>/<session>``."""

    def __init__(self, client: LockClient, session: str) -> None:
        self.client = client
        self.session = session
        self.ws = quote(client.workspace_id, safe="")

    async def take(self, nodes: Sequence[str], lease: float, note: str) -> list[dict[str, Any]]:
        """Write locks on every node for this session, all or none, without waiting (LOCKED if one is held)."""
        # LockClient.acquire_many names no session (`agent`); the same call with it, on the client's plumbing.
        args = {
            "items": [{"node_id": n, "mode": "write"} for n in nodes],
            "timeout": lease,
            "wait": 0,
            "note": note,
            "agent": self.session,
            "request_id": uuid.uuid4().hex,
        }
        result = await self.client._op("lock_files", self.client.workspace_id, args)
        grants: list[dict[str, Any]] = result["locks"]
        return grants

    async def renew(self, node: str, token: str, lease: float) -> dict[str, Any] | None:
        """Restart the lease of a lock this session holds; None when it is gone (expired, broken, released)."""
        try:
            renewed: dict[str, Any] = await self.client._op(
                "renew_lock", self.client.workspace_id, {"node_id": node, "token": token, "timeout": lease}
            )
        except (LockExpired, LockBroken, LockNotFound):
            return None
        return renewed

    async def release(self, tokens: Sequence[str]) -> int:
        """Release the locks of ``tokens`` (each on its own); how many were released."""
        released = 0
        for start in range(0, len(tokens), 100):  # the server takes 100 tokens per call
            body = {"tokens": list(tokens[start : start + 100])}
            result = await self.client._call("POST", f"/v1/workspaces/{self.ws}/locks/unlock", body)
            released += int(result.get("released", 0))
        return released

    async def status(self, node: str) -> dict[str, Any]:
        """Who holds ``node`` (its own locks and tree locks above it), as check_lock_status answers."""
        return await self.client.status(node)


@contextlib.asynccontextmanager
async def connect(cfg: HookConfig, session: str) -> AsyncIterator[Remote]:
    """A :class:`Remote` for ``cfg``'s server and workspace, acting for ``session``."""
    client = LockClient(cfg.url, cfg.key, workspace_id=cfg.workspace, timeout=CALL_TIMEOUT, attempts=1)
    async with client:
        yield Remote(client, session)

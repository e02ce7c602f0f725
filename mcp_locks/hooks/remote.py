"""The server calls a hook (and the git guard) makes, over the one-shot transport of :mod:`mcp_locks.hooks.http`.

Each answer is the dict the REST API answers; each refusal raises the server's :class:`~mcp_locks.LockError`
(decoded by :func:`~mcp_locks.client.errors.decode_error`), and a server that does not answer raises
:class:`~mcp_locks.core.errors.Unavailable` at once, never retried (the host is waiting).
Why not :class:`~mcp_locks.client.LockClient`: see :mod:`mcp_locks.hooks.http`.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import quote, urlencode

from mcp_locks.core.errors import LockBroken, LockExpired, LockNotFound
from mcp_locks.core.names import check_node_id
from mcp_locks.hooks.config import HookConfig
from mcp_locks.hooks.http import Http

__all__ = ["MAX_TOKENS", "Remote", "connect"]

#: Tokens the server releases per unlock_files call.
MAX_TOKENS = 100


class Remote:
    """A session's view of one workspace: take, renew, release and inspect locks as ``<agent>/<session>``."""

    def __init__(self, http: Http, workspace: str, session: str) -> None:
        self.http = http
        self.session = session
        self._ws = f"/v1/workspaces/{quote(workspace, safe='')}"
        self._holder: str | None = None

    def holder(self) -> str:
        """The owner name this session's locks carry.

        ``<key's agent>/<session>``, or just ``<session>`` on a server without authentication; asked of
        /v1/me the first time only (only a refusal or a holder needs it).
        """
        if self._holder is None:
            me = self.me()
            agent = me.get("agent")
            self._holder = f"{agent}/{self.session}" if me.get("authenticated") and agent else self.session
        return self._holder

    def ours(self, owner: object) -> bool:
        """Whether a lock's owner is this very session (same key's agent, same session label)."""
        return isinstance(owner, str) and owner == self.holder()

    def take(self, nodes: Sequence[str], lease: float, note: str) -> list[dict[str, Any]]:
        """Write locks on every node for this session, all or none, without waiting (LOCKED if one is held)."""
        body = {
            "items": [{"node_id": check_node_id(n), "mode": "write"} for n in nodes],
            "timeout": lease,
            "wait": 0,
            "note": note,
            "agent": self.session,
            "request_id": uuid.uuid4().hex,
        }
        grants: list[dict[str, Any]] = self.http.request("POST", f"{self._ws}/locks/batch", body)["locks"]
        return grants

    def renew(self, node: str, token: str, lease: float) -> dict[str, Any] | None:
        """Restart the lease of a lock this session holds; None when it is gone (expired, broken, released)."""
        try:
            renewed: dict[str, Any] = self.http.request(
                "POST", self._lock_path(node) + "/renew", {"token": token, "timeout": lease}
            )
        except (LockExpired, LockBroken, LockNotFound):
            return None
        return renewed

    def release(self, tokens: Sequence[str]) -> int:
        """Release the locks of ``tokens`` (each on its own, ``MAX_TOKENS`` per call); how many were released."""
        released = 0
        for start in range(0, len(tokens), MAX_TOKENS):
            body = {"tokens": list(tokens[start : start + MAX_TOKENS])}
            released += int(self.http.request("POST", f"{self._ws}/locks/unlock", body).get("released", 0))
        return released

    def status(self, node: str) -> dict[str, Any]:
        """Who holds ``node`` (its own locks and tree locks above it), as check_lock_status answers."""
        answer: dict[str, Any] = self.http.request("GET", self._lock_path(node))
        return answer

    def list_locks(self, prefix: str = "", *, cursor: str | None = None, limit: int = 1000) -> dict[str, Any]:
        """One page of the workspace's held locks (``locks`` and ``next_cursor``), as list_locks answers."""
        query = {"limit": str(limit)} | ({"prefix": prefix} if prefix else {}) | ({"cursor": cursor} if cursor else {})
        page: dict[str, Any] = self.http.request("GET", f"{self._ws}/locks?{urlencode(query)}")
        return page

    def me(self) -> dict[str, Any]:
        """Who the key speaks for: ``key_id``, ``agent``, ``role`` and the ``workspaces`` it reaches."""
        answer: dict[str, Any] = self.http.request("GET", "/v1/me")
        return answer

    def _lock_path(self, node: str) -> str:
        # Checked here too: a node id with '..' segments would name another URL path.
        return f"{self._ws}/nodes/{quote(check_node_id(node), safe='/')}/lock"


@contextlib.contextmanager
def connect(cfg: HookConfig, session: str) -> Iterator[Remote]:
    """A :class:`Remote` for ``cfg``'s server and workspace, acting for ``session``; closed on leaving."""
    http = Http(cfg.url, cfg.key)
    try:
        yield Remote(http, cfg.workspace, session)
    finally:
        http.close()

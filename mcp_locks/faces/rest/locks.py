"""The lock routes: one node's lock (by workspace, or under /v1/storage), and a workspace's locks together."""

from __future__ import annotations

from functools import partial

from pydantic import BaseModel

from mcp_locks.core.errors import InvalidArgument
from mcp_locks.core.keys import Identity
from mcp_locks.core.models import (
    ForceUnlockRequest,
    LockFilesRequest,
    LockFilesResult,
    LockGrant,
    LockPage,
    LockRequest,
    LockStatus,
    RenewRequest,
    RenewResult,
    UnlockFilesRequest,
    UnlockFilesResult,
    UnlockRequest,
    UnlockResult,
)
from mcp_locks.engine.lock_service import LockService
from mcp_locks.faces.rest.hints import REST_WORDS
from mcp_locks.faces.rest.operation import Call, Op, header_token, int_param

__all__ = ["node_ops", "workspace_ops"]

#: Where a node's lock routes sit, and what their operation names end with.
_NODE_BASES = (
    ("/v1/workspaces/{workspace_id}/nodes/{node_id:path}", ""),
    ("/v1/storage/nodes/{node_id:path}", "_storage"),
)


def _storage_workspace(caller: Identity) -> str | None:
    """The workspace of the /v1/storage paths: the key's only workspace (the default one for admins)."""
    if caller.authenticated and caller.role != "admin":
        if len(caller.workspaces) != 1:
            raise InvalidArgument(
                "/v1/storage/... needs a key bound to exactly one workspace;"
                f" this key reaches {len(caller.workspaces)}.",
                hint="Use /v1/workspaces/{workspace_id}/nodes/{node_id}/lock and name the workspace.",
                details={"your_workspaces": list(caller.workspaces)},
            )
        return caller.workspaces[0]
    return None


def _workspace(call: Call) -> str | None:
    """The workspace a node route names, else the /v1/storage one."""
    if "workspace_id" in call.params:
        return call.params["workspace_id"]
    return _storage_workspace(call.caller)


def _lock_token(call: Call) -> str | None:
    """The token to release: the ``Lock-Token`` header's, else the body's."""
    header = header_token(call.request)
    if header is not None:
        return header
    body: UnlockRequest | None = call.body
    return body.token if body is not None else None


async def lock(service: LockService, call: Call) -> BaseModel:
    """Take (or change) a lock on the node."""
    b: LockRequest = call.body
    ws = _workspace(call)
    return await service.lock(
        ws,
        call.params["node_id"],
        b.mode,
        b.timeout,
        b.wait,
        b.depth,
        b.note,
        b.agent,
        b.request_id,
        b.token,
        caller=call.caller,
    )


async def status(service: LockService, call: Call) -> BaseModel:
    """Who holds the node; with a Lock-Token, whether that lock is still held."""
    token = header_token(call.request)  # "do I still hold it?"
    return await service.status(_workspace(call), call.params["node_id"], token, caller=call.caller)


async def renew(service: LockService, call: Call) -> BaseModel:
    """Restart a lock's lease."""
    b: RenewRequest = call.body
    node = call.params["node_id"]
    return await service.renew(_workspace(call), b.token, b.timeout, caller=call.caller, node_id=node)


async def unlock_path(service: LockService, call: Call) -> BaseModel:
    """Release the lock whose token is in the path."""
    return await service.unlock(_workspace(call), call.params["token"], call.params["node_id"], caller=call.caller)


async def unlock_header(service: LockService, call: Call) -> BaseModel:
    """Release the lock whose token is in the Lock-Token header (or the body)."""
    token = _lock_token(call)
    if token is None:
        raise InvalidArgument(
            'send the lock\'s token in the Lock-Token header (or as {"token": ...} in the body).',
            details={"field": "token"},
        )
    return await service.unlock(_workspace(call), token, call.params["node_id"], caller=call.caller)


async def list_locks(service: LockService, call: Call) -> BaseModel:
    """A page of the workspace's held locks."""
    q = call.request.query_params
    return await service.list_locks(
        call.params["workspace_id"],
        q.get("prefix", ""),
        q.get("owner"),
        int_param(q.get("limit"), "limit", 100),
        q.get("cursor"),
        caller=call.caller,
    )


async def lock_files(service: LockService, call: Call) -> BaseModel:
    """Take several locks: all or none."""
    b: LockFilesRequest = call.body
    ws = call.params["workspace_id"]
    return await service.lock_many(ws, b.items, b.timeout, b.wait, b.note, b.agent, b.request_id, caller=call.caller)


async def unlock_files(service: LockService, call: Call) -> BaseModel:
    """Release several locks, each on its own."""
    b: UnlockFilesRequest = call.body
    result = await service.unlock_many(call.params["workspace_id"], b.tokens, caller=call.caller)
    return result.said(REST_WORDS)


async def force_unlock(service: LockService, call: Call) -> BaseModel:
    """Break someone's lock (admin)."""
    b: ForceUnlockRequest = call.body
    return await service.force_unlock(call.params["workspace_id"], call.params["lock_id"], b.reason, caller=call.caller)


def node_ops(service: LockService) -> list[Op]:
    """One node's lock routes, under /v1/workspaces/{workspace_id} and again under /v1/storage."""
    return [op for base, where in _NODE_BASES for op in _node_ops(service, base, where)]


def _node_ops(service: LockService, base: str, where: str) -> list[Op]:
    lock_token_header = (("Lock-Token", "The lock's token (keeps it out of URLs and access logs)."),)
    return [
        Op(
            "POST",
            f"{base}/lock",
            f"lock{where}",
            "Take a lock on a node (or upgrade/downgrade one you hold).",
            partial(lock, service),
            LockGrant,
            LockRequest,
            waits=True,
        ),
        Op(
            "GET",
            f"{base}/lock",
            f"status{where}",
            "Who holds the node, until when, and who waits (with Lock-Token: whether you still hold it).",
            partial(status, service),
            LockStatus,
            headers=(("Lock-Token", "Optional: your token, to ask whether you still hold its lock."),),
        ),
        Op(
            "POST",
            f"{base}/lock/renew",
            f"renew{where}",
            "Restart a lock's lease.",
            partial(renew, service),
            RenewResult,
            RenewRequest,
        ),
        Op(
            "DELETE",
            f"{base}/lock/{{token:locktoken}}",
            f"unlock{where}",
            "Release a lock (token in the path).",
            partial(unlock_path, service),
            UnlockResult,
        ),
        Op(
            "DELETE",
            f"{base}/lock",
            f"unlock_header{where}",
            "Release a lock, its token in the Lock-Token header.",
            partial(unlock_header, service),
            UnlockResult,
            UnlockRequest,
            headers=lock_token_header,
        ),
    ]


def workspace_ops(service: LockService) -> list[Op]:
    """The routes over a workspace's locks together: list, lock and release several, break one."""
    ws = "/v1/workspaces/{workspace_id}"
    return [
        Op("GET", f"{ws}/locks", "list_locks", "A page of held locks, by node_id.", partial(list_locks, service),
           LockPage, query=(("prefix", "string", "Only node_ids starting with this."),
                            ("owner", "string", "Only this agent's."), ("limit", "integer", "Page size, 1-1000."),
                            ("cursor", "string", "next_cursor of the last page."))),
        Op("POST", f"{ws}/locks/batch", "lock_files", "Take several locks together: all or none.",
           partial(lock_files, service), LockFilesResult, LockFilesRequest, waits=True),
        Op("POST", f"{ws}/locks/unlock", "unlock_files", "Release several locks; each token on its own.",
           partial(unlock_files, service), UnlockFilesResult, UnlockFilesRequest),
        Op("POST", f"{ws}/locks/{{lock_id}}/force-unlock", "force_unlock",
           "Break someone's lock (admin); its holder's next call gets LOCK_BROKEN with the reason.",
           partial(force_unlock, service), UnlockResult, ForceUnlockRequest, admin=True),
    ]  # fmt: skip

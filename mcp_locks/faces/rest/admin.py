"""The administration routes: workspaces, API keys, and who a key speaks for."""

from __future__ import annotations

from functools import partial

from pydantic import BaseModel

from mcp_locks.core.models import (
    CreatedKey,
    CreateKeyRequest,
    CreateWorkspaceRequest,
    KeyInfo,
    KeyList,
    Me,
    UpdateKeyRequest,
    WorkspaceInfo,
    WorkspaceList,
)
from mcp_locks.engine.lock_service import LockService
from mcp_locks.faces.rest.operation import Call, Op

__all__ = ["ops"]


async def list_workspaces(service: LockService, call: Call) -> BaseModel:
    """The workspaces the caller reaches."""
    return WorkspaceList(workspaces=await service.list_workspaces(caller=call.caller))


async def create_workspace(service: LockService, call: Call) -> BaseModel:
    """Create a workspace (admin)."""
    b: CreateWorkspaceRequest = call.body
    return await service.create_workspace(b.workspace_id, b.description, caller=call.caller)


async def delete_workspace(service: LockService, call: Call) -> BaseModel:
    """Delete a workspace that holds no lock (admin)."""
    return await service.delete_workspace(call.params["workspace_id"], caller=call.caller)


async def create_key(service: LockService, call: Call) -> BaseModel:
    """Create an API key; the key itself is in this answer only."""
    b: CreateKeyRequest = call.body
    key, r = await service.create_key(b.agent, b.workspaces, b.role, caller=call.caller)
    return CreatedKey(key=key, key_id=r.key_id, agent=r.agent, role=r.role, workspaces=list(r.workspaces))


async def list_keys(service: LockService, call: Call) -> BaseModel:
    """Every API key's public record."""
    return KeyList(keys=[KeyInfo.of(r) for r in await service.list_keys(caller=call.caller)])


async def revoke_key(service: LockService, call: Call) -> BaseModel:
    """Revoke a key."""
    return KeyInfo.of(await service.revoke_key(call.params["key_id"], caller=call.caller))


async def update_key(service: LockService, call: Call) -> BaseModel:
    """Add workspaces to a key and remove others; its next request sees the change."""
    b: UpdateKeyRequest = call.body
    r = await service.update_key(call.params["key_id"], b.add_workspaces, b.remove_workspaces, caller=call.caller)
    return KeyInfo.of(r)


async def me(call: Call) -> BaseModel:
    """Who the caller is."""
    c = call.caller
    return Me(
        authenticated=c.authenticated,
        key_id=c.key_id or None,
        agent=c.agent or None,
        role=c.role,
        workspaces=list(c.workspaces),
    )


def ops(service: LockService) -> list[Op]:
    """The workspace and key routes, then /v1/me, bound to ``service``."""
    ws = "/v1/workspaces/{workspace_id}"
    return [
        Op("GET", "/v1/workspaces", "list_workspaces", "The workspaces this key reaches.",
           partial(list_workspaces, service), WorkspaceList, tags=("workspaces",)),
        Op("POST", "/v1/workspaces", "create_workspace", "Create a workspace (admin).",
           partial(create_workspace, service), WorkspaceInfo, CreateWorkspaceRequest, status=201, admin=True,
           tags=("workspaces",)),
        Op("DELETE", ws, "delete_workspace",
           "Delete a workspace that holds no lock (admin); keys lose access to it.",
           partial(delete_workspace, service), WorkspaceInfo, admin=True, tags=("workspaces",)),
        Op("GET", "/v1/admin/keys", "list_keys", "Every API key (never the keys themselves).",
           partial(list_keys, service), KeyList, admin=True, tags=("admin",)),
        Op("POST", "/v1/admin/keys", "create_key", "Create an API key; the key is in this answer only.",
           partial(create_key, service), CreatedKey, CreateKeyRequest, status=201, admin=True, tags=("admin",)),
        Op("DELETE", "/v1/admin/keys/{key_id}", "revoke_key", "Revoke a key: it stops working at once.",
           partial(revoke_key, service), KeyInfo, admin=True, tags=("admin",)),
        Op("PATCH", "/v1/admin/keys/{key_id}", "update_key",
           "Add workspaces to a key and remove others (an agent key keeps one); its next request sees the change.",
           partial(update_key, service), KeyInfo, UpdateKeyRequest, admin=True, tags=("admin",)),
        Op("GET", "/v1/me", "me", "Who this key speaks for.", me, Me, tags=("workspaces",)),
    ]  # fmt: skip

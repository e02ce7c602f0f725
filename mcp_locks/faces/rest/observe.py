"""The observing routes: a workspace's audit log, its overview, its live events, and its webhooks."""

from __future__ import annotations

from functools import partial

from pydantic import BaseModel

from mcp_locks.core.models import (
    AuditEvent,
    AuditPage,
    CreatedWebhook,
    CreateWebhookRequest,
    WebhookInfo,
    WebhookList,
    WorkspaceOverview,
)
from mcp_locks.engine.lock_service import LockService
from mcp_locks.faces.rest import event_stream
from mcp_locks.faces.rest.operation import Call, Op, int_param
from mcp_locks.observe.observability import Observability

__all__ = ["ops"]

_WS = "/v1/workspaces/{workspace_id}"


async def audit_log(observe: Observability, call: Call) -> BaseModel:
    """A page of the workspace's event log, newest first."""
    q = call.request.query_params
    limit = int_param(q.get("limit"), "limit", 100)
    return await observe.audit_log(call.params["workspace_id"], q.get("node_id"), q.get("agent"), q.get("since"),
                                   limit, q.get("cursor"), caller=call.caller)  # fmt: skip


async def overview(service: LockService, call: Call) -> BaseModel:
    """Every held lock and waiter of the workspace."""
    return await service.overview(call.params["workspace_id"], caller=call.caller)


async def create_webhook(observe: Observability, call: Call) -> BaseModel:
    """Start sending the workspace's events to a URL."""
    b: CreateWebhookRequest = call.body
    return await observe.create_webhook(call.params["workspace_id"], b.url, b.events, caller=call.caller)


async def list_webhooks(observe: Observability, call: Call) -> BaseModel:
    """The workspace's webhooks."""
    return await observe.list_webhooks(call.params["workspace_id"], caller=call.caller)


async def delete_webhook(observe: Observability, call: Call) -> BaseModel:
    """Stop sending to a webhook."""
    return await observe.delete_webhook(call.params["workspace_id"], call.params["webhook_id"], caller=call.caller)


def ops(service: LockService) -> list[Op]:
    """The observing routes, bound to ``service`` (its event streams counted per key, per service)."""
    return [*_log_ops(service), *_webhook_ops(service.observe)]


def _log_ops(service: LockService) -> list[Op]:
    open_streams: dict[str, int] = {}  # key id -> event streams open now
    return [
        Op(
            "GET",
            f"{_WS}/audit",
            "get_audit_log",
            "The workspace's event log, newest first: every lock event and file write.",
            partial(audit_log, service.observe),
            AuditPage,
            query=(
                ("node_id", "string", "Only this node's events."),
                ("agent", "string", "Only this agent's."),
                ("since", "string", "Only events at or after this ISO 8601 time."),
                ("limit", "integer", "Page size, 1-1000."),
                ("cursor", "string", "next_cursor of the last page."),
            ),
            tags=("observe",),
        ),
        Op(
            "GET",
            f"{_WS}/overview",
            "overview",
            "Every held lock and every waiter, as of one instant.",
            partial(overview, service),
            WorkspaceOverview,
            tags=("observe",),
        ),
        Op(
            "GET",
            f"{_WS}/events",
            "events",
            "Live events as server-sent events (id: seq, event: kind, data: the event); resume with Last-Event-ID."
            f" A ': connected' comment at once, then a ': ping' comment every {event_stream.KEEPALIVE} s.",
            partial(event_stream.stream_events, service, open_streams),
            AuditEvent,
            stream=True,
            headers=(("Last-Event-ID", "The last id you received: events after it are sent first."),),
            query=(("after", "integer", "Last-Event-ID for clients that cannot set headers (EventSource)."),),
            tags=("observe",),
        ),
    ]


def _webhook_ops(observe: Observability) -> list[Op]:
    hooks = f"{_WS}/webhooks"
    return [
        Op("POST", hooks, "create_webhook",
           "Send events to a URL (Standard Webhooks signatures); the secret is in this answer only.",
           partial(create_webhook, observe), CreatedWebhook, CreateWebhookRequest, status=201, admin=True,
           tags=("observe",)),
        Op("GET", hooks, "list_webhooks", "The workspace's webhooks.", partial(list_webhooks, observe), WebhookList,
           admin=True, tags=("observe",)),
        Op("DELETE", f"{hooks}/{{webhook_id}}", "delete_webhook", "Stop sending to a webhook.",
           partial(delete_webhook, observe), WebhookInfo, admin=True, tags=("observe",)),
    ]  # fmt: skip

"""The REST routes: every domain's operations, in one order, and the OpenAPI document of them."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mcp_locks.core.keys import LOCAL, Identity
from mcp_locks.engine.lock_service import LockService
from mcp_locks.faces.rest import admin, files, locks, observe
from mcp_locks.faces.rest.openapi import openapi
from mcp_locks.faces.rest.operation import OPENAPI_PATH, Op, endpoint

__all__ = ["build_ops", "build_rest"]


def build_ops(service: LockService) -> list[Op]:
    """Every REST operation, bound to ``service``.

    The order is the routes' matching order and the OpenAPI document's order: keep it.
    """
    return [
        *locks.node_ops(service),
        *files.ops(service),
        *observe.ops(service),
        *locks.workspace_ops(service),
        *admin.ops(service),
    ]


def build_rest(service: LockService, *, version: str = "", local: Identity = LOCAL) -> list[Route]:
    """The REST routes (and the OpenAPI document at :data:`OPENAPI_PATH`), bound to ``service``.

    A request without a verified key acts as ``local`` (:data:`LOCAL` without authentication).
    """
    ops = build_ops(service)
    routes = [Route(op.path, endpoint(op, local), methods=[op.method], name=op.name) for op in ops]
    body = json.dumps(openapi(ops, version)).encode()

    async def openapi_json(request: Request) -> Response:
        return Response(body, media_type="application/json")

    routes.append(Route(OPENAPI_PATH, openapi_json, methods=["GET"], name="openapi"))
    return routes

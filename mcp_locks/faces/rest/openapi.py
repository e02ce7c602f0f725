"""The OpenAPI 3.1 document of the REST operations, with schemas from the same pydantic models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from mcp_locks.core.errors import ERROR_TABLE
from mcp_locks.core.models import ErrorBody
from mcp_locks.core.names import WORKSPACE_PATTERN
from mcp_locks.faces.rest.operation import OPENAPI_PATH, TOKEN_REGEX, Op

__all__ = ["openapi"]

_PARAMS = {
    "workspace_id": "Workspace id (1-63 of a-z 0-9 _ -).",
    "node_id": "Workspace-relative path; its '/' are sent as they are (e.g. reports/q3.md).",
    "token": "The lock's token (prefer the Lock-Token header: URLs end up in logs).",
    "lock_id": "The lock's public id (lk_...).",
    "key_id": "The key's public id (12 hex digits).",
    "upload_id": "The upload's id (32 hex digits).",
    "index": "Chunk number: 0, 1, 2, ...",
    "webhook_id": "The webhook's id (wh_...).",
}

_STRING: dict[str, Any] = {"type": "string", "minLength": 1}
#: What the routes and the service accept, so a client (or a fuzzer) can tell a bad id from an unknown one.
_PARAM_SCHEMAS: dict[str, dict[str, Any]] = {
    "workspace_id": {"type": "string", "pattern": WORKSPACE_PATTERN},
    "token": {"type": "string", "pattern": f"^{TOKEN_REGEX}$"},  # else the path names no route
    "index": {"type": "integer", "minimum": 0},
}

_OCTETS = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}


def openapi(ops: list[Op], version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``ops``, with schemas from the same pydantic models."""
    paths: dict[str, dict[str, Any]] = {}
    for op in ops:
        paths.setdefault(_doc_path(op.path), {})[op.method.lower()] = _operation(op)
    paths[OPENAPI_PATH] = _self_entry()
    codes = ", ".join(f"{code} ({cls.http_status})" for code, cls in ERROR_TABLE.items())
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "mcp-locks",
            "version": version or "0",
            "description": "Shared and exclusive file locks with leases and fencing numbers for teams of agents. "
            f'Every error is {{"error": {{code, message, hint, details}}}}; the codes are: {codes}.',
        },
        "components": {
            "schemas": _schemas(ops),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "An mcp-locks key."}},
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }


def _self_entry() -> dict[str, Any]:
    """The document's own entry: served without a key."""
    return {
        "get": {
            "operationId": "openapi",
            "summary": "This document.",
            "security": [],
            "responses": {"200": {"description": "The OpenAPI document.", "content": {"application/json": {}}}},
        }
    }


def _schemas(ops: list[Op]) -> dict[str, Any]:
    """The JSON schemas of every body and result (request bodies in their validation mode), and the error's."""
    models: set[type[BaseModel]] = {ErrorBody}
    for op in ops:
        models.add(op.result)
        if op.body is not None:
            models.add(op.body)
    ordered = sorted(models, key=lambda m: m.__name__)
    bodies = {op.body for op in ops}
    _, top = models_json_schema(
        [(m, "serialization" if m not in bodies else "validation") for m in ordered],
        ref_template="#/components/schemas/{model}",
    )
    schemas: dict[str, Any] = top.get("$defs", {})
    return schemas


def _operation(op: Op) -> dict[str, Any]:
    """The document's entry for ``op``."""
    entry: dict[str, Any] = {
        "operationId": op.name,
        "summary": op.summary,
        "tags": list(op.tags),
        "parameters": _parameters(op),
        "responses": _responses(op),
    }
    if op.raw_body:
        entry["requestBody"] = {"required": True, "content": _OCTETS}
    if op.body is not None:
        needed = any(f.is_required() for f in op.body.model_fields.values())  # else {} or no body will do
        entry["requestBody"] = {"required": needed, "content": _json_ref(op.body.__name__)}
    if op.admin:
        entry["description"] = "Needs an admin key."
    return entry


def _parameters(op: Op) -> list[dict[str, Any]]:
    """``op``'s path, query and header parameters, in that order."""
    params: list[dict[str, Any]] = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": _PARAM_SCHEMAS.get(name, _STRING),
            "description": _PARAMS[name],
        }
        for name in _path_names(_doc_path(op.path))
    ]
    params += [
        {"name": n, "in": "query", "required": False, "schema": {"type": t}, "description": d} for n, t, d in op.query
    ]
    params += [
        {"name": n, "in": "header", "required": False, "schema": {"type": "string"}, "description": d}
        for n, d in op.headers
    ]
    return params


def _responses(op: Op) -> dict[str, Any]:
    """``op``'s success answer (JSON, file content or an event stream) and the error body."""
    error = {"description": "An error with a stable code.", "content": _json_ref("ErrorBody")}
    success: dict[str, Any] = {"description": "Success.", "content": _json_ref(op.result.__name__)}
    responses: dict[str, Any] = {str(op.status): success, "4XX": error, "5XX": error}
    for other in op.also:
        responses[str(other)] = success
    if op.raw_result:
        responses[str(op.status)] = {"description": "The file's content.", "content": _OCTETS}
    if op.stream:
        responses[str(op.status)] = {
            "description": "A stream of server-sent events; each one's data is this schema.",
            "content": {"text/event-stream": {"schema": {"$ref": f"#/components/schemas/{op.result.__name__}"}}},
        }
    return responses


def _doc_path(path: str) -> str:
    return path.replace(":path}", "}").replace(":locktoken}", "}")


def _json_ref(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}


def _path_names(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{") and part.endswith("}")]

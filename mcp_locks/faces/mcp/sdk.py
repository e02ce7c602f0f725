"""The one place mcp-locks reaches into the MCP SDK's private attributes, and why.

``MCPServer`` (SDK 2.3) has no public accessor for the low-level server it wraps, and two things need it:
the ``subscriptions/listen`` and ``resources/(un)subscribe`` handlers, which the SDK serves without our
access checks, are replaced on it; and the legacy ``/sse`` endpoint drives it the way the SDK's own
``sse_app()`` does (whose route would answer a second time once the stream ends).

The streamable HTTP session manager has no public view of its sessions either, and the app needs one: to
count each key's sessions (its cap is global only), to refuse a key's session beyond its own cap in the
same step that would register it (so concurrent opens cannot slip past), and to end a revoked key's
sessions (which ends their GET streams).

It is also where tool arguments are made to follow REST's rule (:func:`strict_arguments`): the SDK validates
them in pydantic's lax mode, which would read ``timeout="60"`` as 60 s and ``if_version=false`` as 0.
"""

from __future__ import annotations

import json
import types
from collections.abc import Callable
from typing import Any, Union, get_args, get_origin

from mcp.server.auth.middleware.bearer_auth import AuthorizationContext
from mcp.server.lowlevel import Server
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.tools import Tool
from mcp.server.mcpserver.utilities.func_metadata import FuncMetadata
from mcp.server.streamable_http import StreamableHTTPServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

__all__ = ["check_new_sessions", "end_http_session", "http_sessions", "lowlevel", "strict_arguments"]


def lowlevel(server: MCPServer[Any]) -> Server[Any]:
    """The low-level server behind ``server`` (a private attribute: see the module docstring)."""
    return server._lowlevel_server


def http_sessions(manager: StreamableHTTPSessionManager) -> list[tuple[str, str | None]]:
    """Every open streamable HTTP session as ``(session id, id of the key that opened it)`` (None: no key)."""
    owners = manager._session_owners
    return [(sid, owners[sid]["client_id"] if sid in owners else None) for sid in list(manager._server_instances)]


async def end_http_session(manager: StreamableHTTPSessionManager, session_id: str) -> None:
    """End a session as a DELETE would: its GET stream and requests end, its id answers 404 from now on."""
    transport = manager._server_instances.get(session_id)
    if transport is not None:
        await manager._discard_session(session_id, transport)


def check_new_sessions(manager: StreamableHTTPSessionManager, check: Callable[[str | None], None]) -> None:
    """Call ``check(key id)`` before each new session is registered, under the manager's admission lock.

    ``check`` raising refuses the session: nothing is registered, and the exception leaves the request.
    """
    admit: Callable[[AuthorizationContext | None], StreamableHTTPServerTransport | None] = manager._admit_session

    def checked(requestor: AuthorizationContext | None) -> StreamableHTTPServerTransport | None:
        check(requestor["client_id"] if requestor is not None else None)
        return admit(requestor)

    manager._admit_session = checked  # type: ignore[method-assign]


def strict_arguments(tool: Tool) -> None:
    """Make ``tool`` check its arguments as REST checks its bodies: strictly, by JSON type, never coerced.

    The SDK's own check is lax (``"60"`` and ``true`` pass as numbers, ``1.0`` as an integer) and first parses
    every non-``str`` string argument as JSON (``note="null"`` became no note). Strict mode, as REST's bodies
    use it, refuses a value of the wrong JSON type with INVALID_ARGUMENT naming the field (see
    ``results.LockMCPServer``), and ``1.0`` for an integer as REST does.
    """
    meta = tool.fn_metadata
    tool.fn_metadata = _StrictArguments(**{name: getattr(meta, name) for name in type(meta).model_fields})


class _StrictArguments(FuncMetadata):
    """The SDK's function metadata with strict argument validation (``validate_arguments`` is its one entry)."""

    def validate_arguments(self, arguments_to_validate: dict[str, Any]) -> dict[str, Any]:
        """The arguments checked strictly, as keyword arguments for the tool function."""
        arguments = _arrays_from_json_text(self, arguments_to_validate)
        return self.arg_model.model_validate(arguments, strict=True).model_dump_one_level()


def _arrays_from_json_text(meta: FuncMetadata, arguments: dict[str, Any]) -> dict[str, Any]:
    """``arguments`` with an array or object argument sent as JSON text replaced by what the text holds.

    Kept from the SDK on purpose, for arrays and objects only: some hosts send them as JSON text, and no
    string is a valid array or object, so no valid call can be misread. The result is then checked strictly.
    """
    out = dict(arguments)
    fields = meta.arg_model.model_fields
    for name, value in arguments.items():
        kind = _container(fields[name].annotation) if name in fields and isinstance(value, str) else None
        if kind is None:
            continue
        try:
            parsed = json.loads(value)
        except (ValueError, RecursionError):
            continue  # left as it is: strict validation names the field
        if isinstance(parsed, kind):
            out[name] = parsed
    return out


def _container(annotation: Any) -> type | None:
    """``list`` or ``dict`` if ``annotation`` is an array or object type (or one of those or None), else None."""
    origin = get_origin(annotation)
    if origin in (list, dict):
        return origin  # type: ignore[no-any-return]
    if origin in (Union, types.UnionType):
        arms = [a for a in get_args(annotation) if a is not type(None)]
        return _container(arms[0]) if len(arms) == 1 else None
    return None

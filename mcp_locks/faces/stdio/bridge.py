"""The host's side of the bridge: a low-level MCP server whose every request is the server's, forwarded.

Tools (results untouched: ``isError``, content, structuredContent, ``_meta``), resources
(lists, templates, reads, subscriptions in both eras), prompts, and logging go to the
server through the :class:`~mcp_locks.faces.stdio.link.Link`; progress and cancellation
of a call travel with it (a host that sent a progress token gets the server's progress;
the host cancelling a call cancels it on the server, so a waiting lock call leaves the line).

While the server is away: a tool call answers the coded tool error UNAVAILABLE at once;
lists answer as the server last listed them (a host keeps its tools); reads and
subscriptions answer a JSON-RPC error carrying UNAVAILABLE's body. So does a request
the server leaves unanswered past its budget (a connection that stopped answering):
:data:`~mcp_locks.faces.stdio.link.CALL_BUDGET`, plus a lock call's ``wait``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from mcp import Client
from mcp.server import Server
from mcp.server.context import ServerRequestContext
from mcp.server.subscriptions import ListenHandler
from mcp.shared.exceptions import MCPError
from mcp_types import (
    LOG_LEVEL_META_KEY,
    CallToolRequestParams,
    CallToolResult,
    EmptyResult,
    GetPromptRequestParams,
    GetPromptResult,
    ListPromptsResult,
    ListResourcesResult,
    ListResourceTemplatesResult,
    ListToolsResult,
    LoggingLevel,
    PaginatedRequestParams,
    ReadResourceRequestParams,
    ReadResourceResult,
    RequestParamsMeta,
    SetLevelRequestParams,
    SubscribeRequestParams,
    SubscriptionsListenRequestParams,
    SubscriptionsListenResult,
    UnsubscribeRequestParams,
)

from mcp_locks.core.errors import Internal, LockError
from mcp_locks.faces.mcp.resources import mcp_error
from mcp_locks.faces.mcp.results import error_result
from mcp_locks.faces.stdio.link import CALL_BUDGET, Link
from mcp_locks.faces.stdio.relay import NotFollowed, Relay

__all__ = ["Bridge"]

_R = TypeVar("_R")
Ctx = ServerRequestContext[Any, Any]


class Bridge:
    """Forwards one host's requests to the server (see the module docstring); :attr:`server` serves the host."""

    def __init__(self, link: Link, relay: Relay, *, instructions: str, version: str) -> None:
        self.link = link
        self.relay = relay
        #: The level the host asked for with logging/setLevel (None: no log messages, as the server's default).
        self.log_level: LoggingLevel | None = None
        #: The last first page of each list, answered while the server is away.
        self._listed: dict[str, Any] = {}
        self._listen = ListenHandler(relay.bus)
        self.server: Server[Any] = Server(
            "mcp-locks",
            version=version,
            instructions=instructions,
            on_list_tools=self.list_tools,
            on_call_tool=self.call_tool,
            on_list_resources=self.list_resources,
            on_list_resource_templates=self.list_resource_templates,
            on_read_resource=self.read_resource,
            on_subscribe_resource=self.subscribe,
            on_unsubscribe_resource=self.unsubscribe,
            on_subscriptions_listen=self.listen,
            on_list_prompts=self.list_prompts,
            on_get_prompt=self.get_prompt,
        )
        # Registered by method name rather than on_set_logging_level=, which warns on every start (deprecated
        # in 2026-07-28, but 2025-era hosts still send it).
        self.server.add_request_handler("logging/setLevel", SetLevelRequestParams, self.set_level)

    def _meta(self, ctx: Ctx) -> RequestParamsMeta | None:
        """The ``_meta`` a forwarded request carries: the log level the host asked for, if any."""
        asked = (ctx.meta or {}).get(LOG_LEVEL_META_KEY) or self.log_level
        # An open map whose reserved keys the type cannot name (they are not identifiers).
        return cast(RequestParamsMeta, {LOG_LEVEL_META_KEY: asked}) if asked else None

    # ------------------------------------------------------------------ tools

    async def call_tool(self, ctx: Ctx, params: CallToolRequestParams) -> CallToolResult:
        """Forward the call; the answer comes back as the server gave it, a failure to reach it as UNAVAILABLE."""
        self.relay.host = ctx.session

        async def progress(progress: float, total: float | None, message: str | None) -> None:
            await ctx.session.report_progress(progress, total, message)

        # The server reports progress only when asked, so it is asked only when the host asked.
        asked = (ctx.meta or {}).get("progress_token") is not None
        try:
            return await self.link.forward(
                lambda c: c.call_tool(
                    params.name,
                    params.arguments,
                    progress_callback=progress if asked else None,
                    meta=self._meta(ctx),
                ),
                _budget(params.arguments),
            )
        except LockError as e:
            return error_result(e)
        except MCPError as e:  # a JSON-RPC error of the server's own, where a tool result was expected
            return error_result(Internal(f"the server answered {params.name[:64]} with MCP error {e.code}: {e}."))

    async def list_tools(self, ctx: Ctx, params: PaginatedRequestParams | None) -> ListToolsResult:
        """The server's tools (as last listed while it is away)."""
        cursor = params.cursor if params else None
        return await self._list("tools", cursor, lambda c: c.list_tools(cursor=cursor, meta=self._meta(ctx)))

    # ------------------------------------------------------------------ resources

    async def list_resources(self, ctx: Ctx, params: PaginatedRequestParams | None) -> ListResourcesResult:
        """The server's concrete resources (as last listed while it is away)."""
        cursor = params.cursor if params else None
        return await self._list("resources", cursor, lambda c: c.list_resources(cursor=cursor, meta=self._meta(ctx)))

    async def list_resource_templates(
        self, ctx: Ctx, params: PaginatedRequestParams | None
    ) -> ListResourceTemplatesResult:
        """The server's resource templates (as last listed while it is away)."""
        cursor = params.cursor if params else None
        return await self._list(
            "templates",
            cursor,
            lambda c: c.list_resource_templates(cursor=cursor, meta=self._meta(ctx)),
        )

    async def read_resource(self, ctx: Ctx, params: ReadResourceRequestParams) -> ReadResourceResult:
        """Read it on the server; a refusal keeps its code and body."""
        try:
            return await self.link.forward(lambda c: c.read_resource(params.uri, meta=self._meta(ctx)))
        except LockError as e:
            raise mcp_error(e, params.uri) from None

    async def subscribe(self, ctx: Ctx, params: SubscribeRequestParams) -> EmptyResult:
        """A 2025-era subscription: followed on the server; updates come as notifications/resources/updated."""
        self.relay.host = ctx.session
        if params.uri not in self.relay.legacy:
            self.relay.legacy.add(params.uri)  # before the wait: a second subscribe to it meanwhile is a no-op
            try:
                await self.relay.watch([params.uri])
            except BaseException as e:
                self.relay.legacy.discard(params.uri)
                if isinstance(e, NotFollowed):
                    raise mcp_error(e.error, e.uri) from None
                raise
        return EmptyResult()

    async def unsubscribe(self, ctx: Ctx, params: UnsubscribeRequestParams) -> EmptyResult:
        """End a 2025-era subscription (a URI not subscribed to is fine)."""
        if params.uri in self.relay.legacy:
            self.relay.legacy.discard(params.uri)
            self.relay.unwatch([params.uri])
        return EmptyResult()

    async def listen(self, ctx: Ctx, params: SubscriptionsListenRequestParams) -> SubscriptionsListenResult:
        """A 2026-era listen stream: its URIs followed on the server while it is open."""
        uris = list(dict.fromkeys(params.notifications.resource_subscriptions or ()))
        if uris:
            try:
                await self.relay.watch(uris)
            except NotFollowed as e:
                raise mcp_error(e.error, e.uri) from None
        try:
            return await self._listen(ctx, params)
        finally:
            self.relay.unwatch(uris)

    # ------------------------------------------------------------------ prompts and logging

    async def list_prompts(self, ctx: Ctx, params: PaginatedRequestParams | None) -> ListPromptsResult:
        """The server's prompts; none if it serves no prompts (as mcp-locks does today)."""
        cursor = params.cursor if params else None
        return await self._list("prompts", cursor, lambda c: _prompts(c, cursor, self._meta(ctx)))

    async def get_prompt(self, ctx: Ctx, params: GetPromptRequestParams) -> GetPromptResult:
        """Get it from the server; its refusal comes back as it sent it."""
        try:
            return await self.link.forward(lambda c: c.get_prompt(params.name, params.arguments, meta=self._meta(ctx)))
        except LockError as e:
            raise mcp_error(e, "") from None

    async def set_level(self, ctx: Ctx, params: SetLevelRequestParams) -> EmptyResult:
        """Log messages at ``level`` and above: asked of the server with each request, passed on to the host."""
        self.relay.host = ctx.session
        self.log_level = params.level
        return EmptyResult()

    # ------------------------------------------------------------------ shared

    async def warm(self) -> None:
        """List everything once, so that a host starting during an outage still gets the lists."""
        fetches: dict[str, Callable[[Client], Awaitable[Any]]] = {
            "tools": lambda c: c.list_tools(),
            "resources": lambda c: c.list_resources(),
            "templates": lambda c: c.list_resource_templates(),
            "prompts": lambda c: _prompts(c, None, None),
        }
        for kind, fetch in fetches.items():
            with contextlib.suppress(MCPError):  # the host's own request will say what is wrong
                await self._list(kind, None, fetch)

    async def _list(self, kind: str, cursor: str | None, fetch: Callable[[Client], Awaitable[_R]]) -> _R:
        """A list from the server; while it is away, the first page it last gave."""
        try:
            result = await self.link.forward(fetch)
        except LockError as e:
            if cursor is None and kind in self._listed:
                listed: _R = self._listed[kind]
                return listed
            raise mcp_error(e, "") from None
        if cursor is None:
            self._listed[kind] = result
        return result


def _budget(arguments: dict[str, Any] | None) -> float:
    """How long a tool call may go unanswered: CALL_BUDGET, plus its ``wait`` if it is a lock call that waits.

    The server answers WAIT_TIMEOUT itself once ``wait`` runs out, so the margin past it (CALL_BUDGET, as
    for any call) only covers the answer's trip and a busy server.
    """
    wait = (arguments or {}).get("wait")
    if isinstance(wait, int | float) and not isinstance(wait, bool) and math.isfinite(wait) and wait > 0:
        return CALL_BUDGET + wait
    return CALL_BUDGET


async def _prompts(client: Client, cursor: str | None, meta: RequestParamsMeta | None) -> ListPromptsResult:
    """The server's prompts, or none when it serves none (asking would be METHOD_NOT_FOUND)."""
    if client.server_capabilities.prompts is None:
        return ListPromptsResult(prompts=[])
    return await client.list_prompts(cursor=cursor, meta=meta)

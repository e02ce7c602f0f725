"""The Python twin of driver.mjs: the same plan, run with the Python MCP SDK's ``Client``, the same outcome.

``await run_plan(plan)`` takes the plan driver.mjs reads on stdin and returns the document it
prints, so tests/test_interop.py holds both clients to one scenario table. See driver.mjs for the
plan and outcome formats. Differences that come from the SDKs, not from this file:

* Over streamable HTTP the Python client speaks protocol 2026-07-28 by default (sessionless), so
  ``subscribe`` opens a ``subscriptions/listen`` stream there; on legacy sessions (SSE, and any
  connection that negotiated an older version) it sends ``resources/subscribe``.
* A cancelled call is cancelled with an anyio cancel scope (the SDK then tells the server).
"""

from __future__ import annotations

import re
import tempfile
import time
import warnings
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import IO, Any

import anyio
import httpx
from mcp import Client, MCPDeprecationWarning, StdioServerParameters
from mcp.client.sse import sse_client
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

__all__ = ["MODERN", "run_plan"]

DEFAULT_STEP_S = 15.0
#: The sessionless protocol version (subscriptions through ``subscriptions/listen``).
MODERN = "2026-07-28"
_VAR = re.compile(r"\$\{([A-Za-z0-9_]+)\}")


class DriverTimeout(Exception):
    """A step got no answer within its timeout."""


def describe_error(e: BaseException) -> dict[str, Any]:
    """``{name, code, message}`` of an exception; an exception group is described by its first leaf."""
    leaves: list[BaseException] = []

    def walk(x: BaseException) -> None:
        if isinstance(x, BaseExceptionGroup):
            for sub in x.exceptions:
                walk(sub)
        else:
            leaves.append(x)

    walk(e)
    first = leaves[0] if leaves else e
    code: Any = None
    if isinstance(first, MCPError):
        code = first.error.code
    elif isinstance(first, httpx.HTTPStatusError):
        code = first.response.status_code
    else:
        response = getattr(first, "response", None)
        code = getattr(response, "status_code", None)
    out: dict[str, Any] = {"name": type(first).__name__, "code": code, "message": str(first)}
    if isinstance(first, MCPError) and first.error.data is not None:
        out["data"] = first.error.data
    if len(leaves) > 1:
        out["others"] = [f"{type(x).__name__}: {x}" for x in leaves[1:]]
    return out


def lookup(value: Any, path: str) -> Any:
    """The value at a dotted path (numbers index lists), or None."""
    cur = value
    for part in path.split("."):
        if cur is None:
            return None
        if isinstance(cur, list):
            i = int(part) if part.isdigit() else None
            cur = cur[i] if i is not None and i < len(cur) else None
        elif isinstance(cur, dict):
            cur = cur.get(part)
        else:
            return None
    return cur


def until_met(result: Any, until: str) -> bool:
    """``"path"`` holds once the path resolves to a value, ``"!path"`` once it resolves to None."""
    if until.startswith("!"):
        return lookup(result, until[1:]) is None
    return lookup(result, until) is not None


def substitute(value: Any, variables: dict[str, Any]) -> Any:
    """``"${var}"`` replaced by the saved value (inside a longer string: by its text)."""
    if isinstance(value, str):
        whole = _VAR.fullmatch(value)
        if whole:
            return variables.get(whole.group(1))
        return _VAR.sub(lambda m: str(variables.get(m.group(1))), value)
    if isinstance(value, list):
        return [substitute(v, variables) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, variables) for k, v in value.items()}
    return value


def tool_result(r: Any) -> dict[str, Any]:
    """A CallToolResult as driver.mjs records it (wire names)."""
    first = r.content[0] if r.content else None
    return {
        "isError": bool(r.is_error),
        "text": getattr(first, "text", None) if getattr(first, "type", None) == "text" else None,
        "structuredContent": r.structured_content,
        "_meta": r.meta,
    }


def dump(model: Any) -> Any:
    """A result model as its JSON (camelCase) form."""
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


class Session:
    """One client connection, owned by a task of its own (an anyio context is left where it was entered)."""

    def __init__(self, name: str, spec: dict[str, Any], tg: anyio.abc.TaskGroup) -> None:
        self.name = name
        self.spec = spec
        self.tg = tg
        self.client: Client | None = None
        self.open_error: BaseException | None = None
        self.ready: anyio.Event | None = None
        self.closing = anyio.Event()
        self.closed = anyio.Event()
        self.scope = anyio.CancelScope()
        self.updates: list[str] = []
        self.updated = anyio.Event()
        self.listeners: list[anyio.CancelScope] = []
        self.errlog: IO[str] | None = None
        self.stderr = ""

    def _client(self, stack: AsyncExitStack) -> Client:
        s = self.spec
        headers = dict(s.get("headers") or {})
        if s["transport"] == "streamable-http":
            http = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(30, read=None))
            stack.push_async_callback(http.aclose)
            return Client(streamable_http_client(s["url"], http_client=http), message_handler=self._on_message)
        if s["transport"] == "sse":
            return Client(sse_client(s["url"], headers=headers), message_handler=self._on_message)
        if s["transport"] == "stdio":
            params = StdioServerParameters(
                command=s["command"], args=s.get("args", []), env=s.get("env"), cwd=s.get("cwd")
            )
            # The server's stderr goes to a file, kept (its tail) as the session's "stderr", as driver.mjs does.
            errlog = stack.enter_context(tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace"))  # noqa: SIM115
            self.errlog = errlog
            stack.callback(self._keep_stderr)  # unwound after the client: the server process has ended by then
            return Client(stdio_client(params, errlog=errlog), message_handler=self._on_message)
        raise ValueError(f"unknown transport {s['transport']}")

    async def _on_message(self, message: Any) -> None:
        if getattr(message, "method", None) == "notifications/resources/updated":
            self.note_update(message.params.uri)
        await anyio.lowlevel.checkpoint()

    def note_update(self, uri: str) -> None:
        self.updates.append(uri)
        self.updated.set()
        self.updated = anyio.Event()

    async def _own(self, ready: anyio.Event) -> None:
        try:
            with self.scope:
                async with AsyncExitStack() as stack:
                    client = await stack.enter_async_context(self._client(stack))
                    await client.list_tools()  # as hosts do, first thing
                    self.client = client
                    ready.set()
                    await self.closing.wait()
                    for scope in self.listeners:
                        scope.cancel()
        except Exception as e:
            self.open_error = e
        finally:
            ready.set()
            self.closed.set()

    def _keep_stderr(self) -> None:
        if self.errlog is not None and not self.errlog.closed:
            self.errlog.seek(0)
            self.stderr = self.errlog.read()[-4000:]

    async def open(self, timeout: float) -> Client:
        if self.ready is None:
            self.ready = anyio.Event()
            self.tg.start_soon(self._own, self.ready)
            with anyio.move_on_after(timeout):
                await self.ready.wait()
            if not self.ready.is_set():
                self.open_error = TimeoutError(f"no connection within {timeout:g} s")
                self.scope.cancel()
        await self.ready.wait()
        if self.client is None:
            raise self.open_error or RuntimeError("the session closed")
        return self.client

    async def close(self) -> None:
        self.closing.set()
        if self.ready is not None:
            with anyio.move_on_after(5):
                await self.closed.wait()

    async def listen(self, uri: str, timeout: float) -> None:
        """Open a ``subscriptions/listen`` stream for ``uri`` that feeds :attr:`updates` until the session closes."""
        client = self.client
        assert client is not None
        acked = anyio.Event()
        failure: list[BaseException] = []
        scope = anyio.CancelScope()
        self.listeners.append(scope)

        async def run() -> None:
            with scope:
                try:
                    async with client.listen(resource_subscriptions=[uri]) as sub:
                        acked.set()
                        async for event in sub:
                            got = getattr(event, "uri", None)
                            if got is not None:
                                self.note_update(got)
                except Exception as e:
                    failure.append(e)
                finally:
                    acked.set()

        self.tg.start_soon(run)
        with anyio.fail_after(timeout):
            await acked.wait()
        if failure:
            raise failure[0]


class Runner:
    """Runs groups of steps over named sessions, recording each step as driver.mjs does."""

    def __init__(self, sessions: dict[str, Session], deadline: float) -> None:
        self.sessions = sessions
        self.deadline = deadline

    async def step(self, step: dict[str, Any], variables: dict[str, Any], ctx: dict[str, Any]) -> dict[str, Any]:
        rec: dict[str, Any] = {"op": step["op"], "session": step.get("session")}
        if "name" in step:
            rec["name"] = step["name"]
        if "tag" in step:
            rec["tag"] = step["tag"]
        t0 = time.monotonic()
        timeout = step.get("timeoutMs", DEFAULT_STEP_S * 1000) / 1000
        try:
            await self._run(step, rec, variables, ctx, timeout, t0)
            rec["ok"] = True
        except TimeoutError:
            rec["ok"] = False
            rec["error"] = {"name": "DriverTimeout", "code": None, "message": f"no answer within {timeout:g} s"}
        except Exception as e:
            rec["ok"] = False
            rec["error"] = describe_error(e)
        rec["ms"] = round((time.monotonic() - t0) * 1000)
        return rec

    async def _run(
        self, step: dict[str, Any], rec: dict[str, Any], variables: dict[str, Any], ctx: dict[str, Any],
        timeout: float, t0: float,
    ) -> None:  # fmt: skip
        op = step["op"]
        if op == "sleep":
            await anyio.sleep(step["ms"] / 1000)
            return
        if op == "join":
            with anyio.fail_after(timeout):
                done: anyio.Event = ctx["events"][step["label"]]
                await done.wait()
            rec.update(ctx["records"][step["label"]], joined=step["label"])
            return
        session = self.sessions[step["session"]]
        client = await session.open(timeout)
        if op == "connect":
            info = client.server_info
            rec["result"] = {"serverVersion": dump(info) if info else None, "instructions": bool(client.instructions)}
        elif op == "listTools":
            with anyio.fail_after(timeout):
                r = await client.list_tools(cache_mode="refresh")
            rec["result"] = {
                "tools": [
                    {"name": t.name, "inputSchema": t.input_schema, "outputSchema": t.output_schema} for t in r.tools
                ]
            }
        elif op == "listResources":
            with anyio.fail_after(timeout):
                rec["result"] = dump(await client.list_resources(cache_mode="refresh"))
        elif op == "listResourceTemplates":
            with anyio.fail_after(timeout):
                rec["result"] = dump(await client.list_resource_templates(cache_mode="refresh"))
        elif op == "readResource":
            with anyio.fail_after(timeout):
                rec["result"] = dump(
                    await client.read_resource(substitute(step["uri"], variables), cache_mode="refresh")
                )
        elif op == "subscribe":
            uri = substitute(step["uri"], variables)
            ctx["subscribed_at"][(step["session"], uri)] = len(session.updates)
            if client.protocol_version == MODERN:
                await session.listen(uri, timeout)
                rec["result"] = {"via": "subscriptions/listen"}
            else:
                with anyio.fail_after(timeout), warnings.catch_warnings():
                    # resources/subscribe is how 2025-11-25 and older sessions subscribe (the SDK flags it for later).
                    warnings.simplefilter("ignore", MCPDeprecationWarning)
                    await client.subscribe_resource(uri)
                rec["result"] = {"via": "resources/subscribe"}
        elif op == "waitUpdate":
            uri = substitute(step["uri"], variables)
            since = ctx["subscribed_at"].get((step["session"], uri), 0)
            with anyio.fail_after(timeout):
                while uri not in session.updates[since:]:
                    await session.updated.wait()
            rec["result"] = {"uri": uri, "updates": session.updates[since:]}
        elif op == "callTool":
            await self._call(client, step, rec, variables, timeout, t0)
        else:
            raise ValueError(f"unknown op {op}")

    async def _call(
        self, client: Client, step: dict[str, Any], rec: dict[str, Any], variables: dict[str, Any], timeout: float,
        t0: float,
    ) -> None:  # fmt: skip
        args = substitute(step.get("arguments", {}), variables)
        progress: list[dict[str, Any]] = []
        current: list[anyio.CancelScope] = []  # the scope of the attempt in flight
        callback: Callable[[float, float | None, str | None], Awaitable[None]] | None = None
        if step.get("progress") or step.get("cancelAfterProgress"):
            rec["progress"] = progress

            async def on_progress(p: float, total: float | None, message: str | None) -> None:
                at = round((time.monotonic() - t0) * 1000)
                progress.append({"progress": p, "total": total, "message": message, "atMs": at})
                if step.get("cancelAfterProgress") and current:
                    current[-1].cancel()

            callback = on_progress
        until = step.get("until")
        until_end = time.monotonic() + step.get("untilMs", 0) / 1000
        attempts = 0
        while True:
            attempts += 1
            scope = anyio.CancelScope()
            current.append(scope)
            with scope, anyio.fail_after(timeout + 1):
                r = await client.call_tool(step["name"], args, read_timeout_seconds=timeout, progress_callback=callback)
            if scope.cancel_called:
                rec["cancelled"] = True
                raise CancelledByTest()
            rec["result"] = tool_result(r)
            if not until or until_met(rec["result"], until):
                break
            if time.monotonic() >= until_end or attempts >= 200:
                break
            await anyio.sleep(0.05)
        if until:
            rec["attempts"] = attempts
        for var, path in (step.get("save") or {}).items():
            variables[var] = lookup(rec["result"], path)

    async def group(self, group: dict[str, Any]) -> list[dict[str, Any]]:
        variables: dict[str, Any] = {}
        ctx: dict[str, Any] = {"events": {}, "records": {}, "subscribed_at": {}}
        records: list[dict[str, Any]] = []
        async with anyio.create_task_group() as tg:
            for step in group["steps"]:
                if time.monotonic() > self.deadline:
                    records.append(
                        {
                            "op": step["op"],
                            "session": step.get("session"),
                            "ok": False,
                            "error": {"name": "DriverDeadline", "code": None, "message": "the run deadline passed"},
                        }
                    )
                    continue
                label = step.get("async")
                if label:
                    done = ctx["events"][label] = anyio.Event()

                    async def background(
                        step: dict[str, Any] = step, label: str = label, done: anyio.Event = done
                    ) -> None:
                        ctx["records"][label] = await self.step(step, variables, ctx)
                        done.set()

                    tg.start_soon(background)
                    records.append(
                        {"op": step["op"], "session": step.get("session"), "name": step.get("name"), "ok": True,
                         "started": label}
                    )  # fmt: skip
                    continue
                records.append(await self.step(step, variables, ctx))
        return records


class CancelledByTest(Exception):
    """The test cancelled this call (after its first progress notification)."""

    def __init__(self) -> None:
        super().__init__("cancelled by the interop test")


async def run_plan(plan: dict[str, Any]) -> dict[str, Any]:
    """Run ``plan`` (driver.mjs's format) with the Python SDK client; the outcome as driver.mjs prints it."""
    deadline = time.monotonic() + plan.get("deadlineMs", 60000) / 1000
    out: dict[str, Any] = {"groups": {}, "sessions": {}}
    async with anyio.create_task_group() as tg:
        sessions: dict[str, Session] = {}
        specs: dict[str, dict[str, Any]] = plan.get("sessions", {})
        for name, spec in specs.items():
            if "alias" not in spec:
                sessions[name] = Session(name, spec, tg)
        for name, spec in specs.items():
            if "alias" in spec:
                sessions[name] = sessions[spec["alias"]]
        runner = Runner(sessions, deadline)
        with anyio.move_on_after(max(1.0, deadline - time.monotonic() + 5)) as scope:
            for group in plan.get("groups", []):
                out["groups"][group["name"]] = await runner.group(group)
        if scope.cancelled_caught:
            out["fatal"] = {"name": "DriverDeadline", "code": None, "message": "the run deadline passed"}
        unique = list({id(s): s for s in sessions.values()}.values())
        for s in unique:
            await s.close()
        for name, s in sessions.items():
            out["sessions"][name] = {"connected": s.client is not None, "stderr": s.stderr}
        tg.cancel_scope.cancel()
    return out

"""The torture's two ways in: REST (httpx) and MCP over streamable HTTP (the MCP SDK's own client).

Each face offers the same calls and answers them alike, so a torture client's logic (and the history it
records) is the same whichever face it speaks:

- ``(True, out)``: answered, ``out`` normalised (a grant, a new version, ...);
- ``(False, code)``: refused with that error code, certainly without effect (``NO_CONNECTION`` when the
  request never left);
- :class:`Gone`: the outcome is unknown (the connection broke, a timeout, a 5xx or ``UNAVAILABLE``).

Neither face retries: a retry would hide an unknown outcome from the history. Each call carries the
client's current key (:class:`Keys`), which a nemesis may revoke and replace mid-run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import anyio.from_thread
import httpx
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult

from mcp_locks.client.errors import decode_error
from mcp_locks.core.errors import ERROR_META_KEY
from mcp_locks.core.keys import parse_key_id

WS = "default"
Answer = tuple[bool, Any]
#: Codes whose call may have taken effect: the server says it could not finish, not that it did nothing.
MAYBE_CODES = frozenset({"UNAVAILABLE", "INTERNAL"})


class Gone(Exception):
    """The call's outcome is unknown (connection lost, server gone mid-call)."""


def when(text: str) -> float:
    """An answer's timestamp as the wall clock's seconds."""
    return datetime.fromisoformat(text).timestamp()


def grant_of(body: dict[str, Any]) -> dict[str, Any]:
    """What the history keeps of a grant."""
    return {
        "token": body["token"],
        "lock_id": body["lock_id"],
        "fence": body["fence"],
        "expires_at": when(body["expires_at"]),
        "node": body["node_id"],
        "mode": body["mode"],
        "depth": body["depth"],
        "owner": body["owner"],
    }


class Keys:
    """A client's API key, read from a file a nemesis rewrites when it revokes the key and issues a new one."""

    def __init__(self, path: Path | None, key: str = "") -> None:
        self.path = path
        self.key = key
        self.reload()

    def reload(self) -> bool:
        """Read the file again; True if the key changed."""
        if self.path is None:
            return False
        key = self.path.read_text().strip()
        changed, self.key = key != self.key, key
        return changed

    @property
    def key_id(self) -> str:
        """The key's public id ('' without keys)."""
        return parse_key_id(self.key) or "" if self.key else ""

    def headers(self) -> dict[str, str]:
        """The Authorization header (none without keys)."""
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}


# ---------------------------------------------------------------- REST


class RestFace:
    """The calls over the REST API."""

    name = "rest"

    def __init__(self, url: str, keys: Keys, timeout: float) -> None:
        self.keys = keys
        self.http = httpx.Client(base_url=url, timeout=httpx.Timeout(timeout))

    def _send(self, method: str, path: str, **kw: Any) -> Answer:
        headers = {**self.keys.headers(), **(kw.pop("headers", None) or {})}
        try:
            r = self.http.request(method, path, headers=headers, **kw)
        except httpx.ConnectError:
            return False, "NO_CONNECTION"  # refused before anything was sent
        except httpx.HTTPError as e:
            raise Gone(str(e)) from None
        if r.status_code >= 500:
            raise Gone(f"HTTP {r.status_code}")  # the server may have got as far as committing
        if r.status_code >= 400:
            return False, r.json()["error"]["code"]
        return True, r

    def lock(self, node: str, body: dict[str, Any]) -> Answer:
        """Take (or, with ``token`` in the body, change) a lock."""
        ok, r = self._send("POST", f"/v1/workspaces/{WS}/nodes/{quote(node)}/lock", json=body)
        return (True, grant_of(r.json())) if ok else (ok, r)

    def lock_files(self, body: dict[str, Any]) -> Answer:
        """Several write locks, all or none."""
        ok, r = self._send("POST", f"/v1/workspaces/{WS}/locks/batch", json=body)
        return (True, [grant_of(x) for x in r.json()["locks"]]) if ok else (ok, r)

    def renew(self, node: str, token: str, timeout: float) -> Answer:
        """A new lease: its deadline."""
        ok, r = self._send("POST", f"/v1/workspaces/{WS}/nodes/{quote(node)}/lock/renew",
                           json={"token": token, "timeout": timeout})  # fmt: skip
        return (True, {"expires_at": when(r.json()["expires_at"])}) if ok else (ok, r)

    def unlock(self, node: str, token: str) -> Answer:
        """Release."""
        ok, r = self._send("DELETE", f"/v1/workspaces/{WS}/nodes/{quote(node)}/lock", headers={"Lock-Token": token})
        return (True, {}) if ok else (ok, r)

    def write(self, node: str, content: bytes, token: str | None, if_version: int | None, agent: str) -> Answer:
        """Write the whole file, under a lock or over a version."""
        path = f"/v1/workspaces/{WS}/files/{quote(node)}"
        if token is not None:
            ok, r = self._send("PUT", path, headers={"Lock-Token": token}, content=content)
        else:
            ok, r = self._send("PUT", f"{path}?if_version={if_version}&agent={agent}", content=content)
        if not ok:
            return ok, r
        f = r.json()["file"]
        return True, {"version": f["version"], "fence": f["fence"]}

    def read(self, node: str, token: str | None) -> Answer:
        """The file's version and (JSON) value."""
        headers = {"Lock-Token": token} if token else None
        ok, r = self._send("GET", f"/v1/workspaces/{WS}/files/{quote(node)}", headers=headers)
        if not ok:
            return ok, r
        return True, {"version": int(r.headers["X-Version"]), "value": json.loads(r.content)}

    def start_upload(self, node: str, chunks: list[bytes]) -> str | None:
        """Create an upload and send its chunks; its id, or None if any step failed (nothing to record)."""
        try:
            ok, r = self._send("POST", f"/v1/workspaces/{WS}/uploads", json={"node_id": node})
            if not ok:
                return None
            uid = str(r.json()["upload_id"])
            for i, chunk in enumerate(chunks):
                ok, _ = self._send("PUT", f"/v1/workspaces/{WS}/uploads/{uid}/chunks/{i}", content=chunk)
                if not ok:
                    return None
        except Gone:
            return None
        return uid

    def complete_upload(self, upload_id: str, node: str, token: str, content: bytes) -> Answer:
        """Commit the upload's chunks as the file, under the lock."""
        body = {"node_id": node, "token": token, "sha256": hashlib.sha256(content).hexdigest()}
        ok, r = self._send("POST", f"/v1/workspaces/{WS}/uploads/{upload_id}/complete", json=body)
        if not ok:
            return ok, r
        f = r.json()["file"]
        return True, {"version": f["version"], "fence": f["fence"]}

    def close(self) -> None:
        """Close the connections."""
        self.http.close()


# ---------------------------------------------------------------- MCP


class _Session:
    """One MCP client (sessionless 2026-07-28 protocol), held open by a task of its own in the portal's loop."""

    def __init__(self) -> None:
        self.client: Client | None = None
        self.error: BaseException | None = None
        self.ready = anyio.Event()
        self.stop = anyio.Event()


class McpFace:
    """The calls as MCP tool calls over streamable HTTP (``<url>/mcp``), from synchronous code.

    An event loop runs in a thread (an anyio portal); the SDK ``Client`` lives in a task there and is
    opened again after it fails. Uploads have no tool (large files go over REST), so they use REST with
    the same key.
    """

    name = "mcp"

    def __init__(self, url: str, keys: Keys, timeout: float) -> None:
        self.url = url
        self.keys = keys
        self.timeout = timeout
        self.rest = RestFace(url, keys, timeout)
        self._portal_cm = anyio.from_thread.start_blocking_portal()
        self._portal = self._portal_cm.__enter__()
        self._session: _Session | None = None
        self._refusal: dict[str, Any] | None = None  # the last HTTP refusal's body (the SDK hides it)

    # ---------------------------------------------------------- the session (in the portal's loop)

    async def _hook(self, response: httpx2.Response) -> None:
        if response.status_code >= 400 and response.status_code < 500:
            await response.aread()
            try:
                self._refusal = response.json()
            except ValueError:
                self._refusal = None

    async def _run(self, s: _Session, key: dict[str, str]) -> None:
        try:
            http = httpx2.AsyncClient(headers=key, timeout=httpx2.Timeout(self.timeout), trust_env=False,
                                      event_hooks={"response": [self._hook]})  # fmt: skip
            async with http, Client(streamable_http_client(f"{self.url}/mcp", http_client=http),
                                    read_timeout_seconds=self.timeout) as client:  # fmt: skip
                s.client = client
                s.ready.set()
                await s.stop.wait()
        except Exception as e:  # the session (and only it) ends; the next call opens another
            s.error = e
        finally:
            s.client = None
            s.ready.set()

    def _connected(self) -> Answer | _Session:
        """The open session, opening one if needed; or the answer for a call that could not be sent."""
        s = self._session
        if s is not None and s.client is not None:
            return s
        self._refusal = None
        s = self._session = self._portal.call(_Session)  # its events belong to the portal's loop
        self._portal.start_task_soon(self._run, s, self.keys.headers())
        self._portal.call(s.ready.wait)
        if s.client is not None:
            return s
        self._session = None
        err = decode_error(self._refusal)
        if err is not None:
            return False, err.code  # e.g. UNAUTHENTICATED: the tool call was never sent
        if isinstance(s.error, BaseExceptionGroup) and _connect_error(s.error):
            return False, "NO_CONNECTION"
        raise Gone(f"could not open an MCP session: {s.error!r}")

    async def _call(self, s: _Session, name: str, args: dict[str, Any], read_timeout: float) -> Answer:
        assert s.client is not None
        self._refusal = None
        try:
            with anyio.fail_after(read_timeout + 1):
                result = await s.client.call_tool(name, args, read_timeout_seconds=read_timeout)
        except MCPError as e:
            err = decode_error(e.error.data) or decode_error(self._refusal)
            if err is not None and err.code not in MAYBE_CODES:
                return False, err.code
            self._retire(s)
            raise Gone(f"MCP error {e.code}: {e.error.message}") from None
        except Exception as e:  # a broken transport, a timeout: the outcome is unknown
            self._retire(s)
            raise Gone(repr(e)) from None
        return _result(name, result)

    async def _retire_soon(self, s: _Session) -> None:
        self._retire(s)

    def _retire(self, s: _Session) -> None:
        s.stop.set()
        if self._session is s:
            self._session = None

    def _tool(self, name: str, args: dict[str, Any], wait: float = 0) -> Answer:
        args = {"workspace_id": WS, **{k: v for k, v in args.items() if v is not None}}
        s = self._connected()
        if not isinstance(s, _Session):
            return s
        answer: Answer = self._portal.call(self._call, s, name, args, self.timeout + wait)
        return answer

    def reset(self) -> None:
        """Drop the session (its key changed): the next call opens one with the current key."""
        s = self._session
        if s is not None:
            self._portal.call(self._retire_soon, s)

    # ---------------------------------------------------------- the calls

    def lock(self, node: str, body: dict[str, Any]) -> Answer:
        """lock_file (an upgrade or downgrade when the body names a token)."""
        ok, out = self._tool("lock_file", {"node_id": node, **body}, wait=float(body.get("wait", 0)))
        return (True, grant_of(out)) if ok else (ok, out)

    def lock_files(self, body: dict[str, Any]) -> Answer:
        """lock_files."""
        ok, out = self._tool("lock_files", body, wait=float(body.get("wait", 0)))
        return (True, [grant_of(x) for x in out["locks"]]) if ok else (ok, out)

    def renew(self, node: str, token: str, timeout: float) -> Answer:
        """renew_lock."""
        ok, out = self._tool("renew_lock", {"token": token, "timeout": timeout})
        return (True, {"expires_at": when(out["expires_at"])}) if ok else (ok, out)

    def unlock(self, node: str, token: str) -> Answer:
        """unlock_file."""
        ok, out = self._tool("unlock_file", {"token": token})
        return (True, {}) if ok else (ok, out)

    def write(self, node: str, content: bytes, token: str | None, if_version: int | None, agent: str) -> Answer:
        """write_file (under a lock, or over a version)."""
        args = {"node_id": node, "content": content.decode(), "token": token, "if_version": if_version}
        if token is None:
            args["agent"] = agent
        ok, out = self._tool("write_file", args)
        return (True, {"version": out["file"]["version"], "fence": out["file"]["fence"]}) if ok else (ok, out)

    def read(self, node: str, token: str | None) -> Answer:
        """read_file: the file's version and (JSON) value."""
        ok, out = self._tool("read_file", {"node_id": node, "token": token})
        if not ok:
            return ok, out
        if not out["eof"]:
            raise ValueError(f"read_file of {node} did not reach the end: {out}")
        return True, {"version": out["file"]["version"], "value": json.loads(out["content"])}

    def start_upload(self, node: str, chunks: list[bytes]) -> str | None:
        """Uploads go over REST (no tool takes them)."""
        return self.rest.start_upload(node, chunks)

    def complete_upload(self, upload_id: str, node: str, token: str, content: bytes) -> Answer:
        """Over REST, with the same key."""
        return self.rest.complete_upload(upload_id, node, token, content)

    def close(self) -> None:
        """End the session and the loop."""
        self.reset()
        self.rest.close()
        self._portal_cm.__exit__(None, None, None)


def _connect_error(group: BaseExceptionGroup[Any]) -> bool:
    """True if the group holds only connection refusals (nothing was sent)."""
    leaves: list[BaseException] = []

    def walk(e: BaseException) -> None:
        if isinstance(e, BaseExceptionGroup):
            for x in e.exceptions:
                walk(x)
        else:
            leaves.append(e)

    walk(group)
    return bool(leaves) and all(isinstance(e, httpx2.ConnectError) for e in leaves)


def _result(name: str, result: CallToolResult) -> Answer:
    """A tool's result as an answer: its structured content, or the refusal's code."""
    if result.is_error:
        err = decode_error((result.meta or {}).get(ERROR_META_KEY))
        if err is None:
            raise Gone(f"{name} answered an error without a code: {result.content!r}")
        if err.code in MAYBE_CODES:
            raise Gone(f"{name}: {err.code}")
        return False, err.code
    if result.structured_content is None:
        raise Gone(f"{name} answered without a structured result")
    return True, result.structured_content


Face = RestFace | McpFace
FACES: dict[str, Callable[[str, Keys, float], Face]] = {"rest": RestFace, "mcp": McpFace}

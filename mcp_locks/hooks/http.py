"""A synchronous, one-shot HTTP transport for the hook and the git guard, on the standard library only.

This is a deliberate exception to "one HTTP client stack" (:class:`~mcp_locks.client.LockClient`, on httpx2):
a host starts one hook process per edit, which makes one or two requests to the server and exits. Importing
the async client (httpx2, httpcore2, anyio with asyncio, stamina) alone takes ~100 ms of CPU, most of the
hook's budget (p50 ≤ 120 ms, docs/hooks.md); ``http.client`` takes ~20 ms and needs no event loop.
What the two share is the meaning of an answer: every error body is read by
:func:`~mcp_locks.client.errors.decode_error`, so codes, messages and hints are the server's.

One attempt per request, never retried: the host waits for the hook, so a server that does not answer is
said at once (:class:`~mcp_locks.core.errors.Unavailable`), and the policy's ``fail`` setting decides.
"""

from __future__ import annotations

import http.client
import json
from typing import Any
from urllib.parse import urlsplit

from mcp_locks.client.errors import decode_error, error_of
from mcp_locks.core.errors import Internal, InvalidArgument, LockError, Unavailable

__all__ = ["CALL_TIMEOUT", "MAX_ANSWER", "Http"]

#: Seconds to connect, and to wait for each read, per request: a loopback server answers in milliseconds, and
#: the host waits for the hook (Claude Code gives a session-end hook 1.5 s), so a stuck server must not hold
#: an edit for long; 5 s still covers a busy or remote server.
CALL_TIMEOUT = 5.0
#: Largest answer read (bytes): a page of 1,000 locks is well under 1 MB; more is not the lock server.
MAX_ANSWER = 16 * 1024 * 1024
#: Statuses a proxy gives for a server behind it that does not answer (said as UNAVAILABLE without a body).
_GATEWAY = frozenset({502, 503, 504})


class Http:
    """Requests to one server (``url``, with any path prefix), as the bearer of ``key``; one kept-alive connection."""

    def __init__(self, url: str, key: str | None, timeout: float = CALL_TIMEOUT) -> None:
        self.url = url.rstrip("/")
        parts = urlsplit(self.url)
        try:
            port = parts.port
        except ValueError:  # "host:abc": no server can be there
            raise self._unreachable(Exception("its address has no valid port")) from None
        self._prefix = parts.path
        self._headers = {"Accept": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
        self._conn = _connection(parts.scheme.lower(), parts.hostname or "", port, timeout)

    def close(self) -> None:
        """Close the connection (if one is open)."""
        self._conn.close()

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        """The JSON answer of ``method path`` (``body`` sent as JSON); a refusal raises the server's LockError."""
        data = None if body is None else json.dumps(body).encode()
        sent = self._headers | (headers or {}) | ({"Content-Type": "application/json"} if data is not None else {})
        try:
            self._conn.request(method, self._prefix + path, body=data, headers=sent)
            response = self._conn.getresponse()
            raw = response.read(MAX_ANSWER + 1)
        except (OSError, http.client.HTTPException) as e:  # refused, timed out, DNS, TLS, connection dropped
            self._conn.close()
            raise self._unreachable(e) from None
        except ValueError:  # a header http.client refuses; its text would quote the header (the key): never said
            self._conn.close()
            raise InvalidArgument(
                f"the request to the lock server at {self.url} could not be sent: a header (the API key) holds "
                "characters HTTP does not allow.",
                hint="Check the key: one line, shaped mlk_<id>_<secret>.",
            ) from None
        if len(raw) > MAX_ANSWER:
            self._conn.close()
            raise Internal(f"the server at {self.url} answered with more than {MAX_ANSWER} bytes.")
        answer = _json(raw)
        if 200 <= response.status < 300:
            if answer is _NOT_JSON:
                raise Internal(f"the server at {self.url} answered {response.status} with a body that is not JSON.")
            return answer
        raise self._refusal(response.status, answer)

    def _unreachable(self, e: BaseException) -> Unavailable:
        why = str(e) or type(e).__name__
        return Unavailable(
            f"the lock server at {self.url} did not answer: {why}.", hint="Check that it runs, then retry."
        )

    def _refusal(self, status: int, answer: Any) -> LockError:
        """The server's own error (decoded from its body), else what a body-less status means."""
        error = decode_error(answer)
        if error is None and status in _GATEWAY:  # a proxy's page: the server behind it is what did not answer
            return self._unreachable(Exception(f"HTTP {status}"))
        return error or error_of(status, answer)


#: What :func:`_json` gives for a body that is not JSON (``None`` is a JSON value).
_NOT_JSON = object()


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:  # not JSON (a proxy's page, say); UnicodeDecodeError is a ValueError too
        return _NOT_JSON


def _connection(scheme: str, host: str, port: int | None, timeout: float) -> http.client.HTTPConnection:
    """A connection to ``host``; for https, verified against the system's trust store (host name included)."""
    if scheme != "https":
        return http.client.HTTPConnection(host, port, timeout=timeout)
    import ssl  # the trust store takes ~18 ms to load: only an https server pays for it

    return http.client.HTTPSConnection(host, port, timeout=timeout, context=ssl.create_default_context())

"""Server logging: one stderr handler that never lets a key or a token through."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import secrets
import sys
from datetime import UTC, datetime

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["JsonFormatter", "RedactSecrets", "RequestId", "configure_logging", "request_id"]

#: The id of the HTTP request being handled (in its task), for log lines.
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("mcp_locks_request_id", default=None)
_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,64}")

# Keys (mlk_<id>_<secret>) keep their public id; tokens (mlt_...) are hidden whole.
_KEY_RE = re.compile(r"(mlk_[0-9a-f]{12})_[A-Za-z0-9_-]{20,}")
_TOKEN_RE = re.compile(r"mlt_[A-Za-z0-9_-]{20,}")


def redact(text: str) -> str:
    """``text`` with every key's secret part and every token replaced."""
    return _TOKEN_RE.sub("mlt_<redacted>", _KEY_RE.sub(r"\1_<redacted>", text))


class RedactSecrets(logging.Filter):
    """A handler filter that removes keys and tokens from every record it passes, whoever logged it.

    Our own code never logs them; this also covers libraries that log request or
    response bodies at debug level (the SSE transport does).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record's message (and traceback text) without secrets; never drops a record."""
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class RequestId:
    """ASGI middleware: give each HTTP request an id (the client's X-Request-Id if sane), echo it, and log it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Give the request an id for its log lines (and echo it back)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), "")
        rid = given if _ID_RE.fullmatch(given) else secrets.token_hex(8)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["X-Request-Id"] = rid
            await send(message)

        token = request_id.set(rid)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)


class _WithRequestId(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id (and the traceback, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON line (its message already redacted by :class:`RedactSecrets`)."""
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None)
        if rid:
            out["request_id"] = rid
        if record.exc_text:
            out["exception"] = record.exc_text
        elif record.exc_info:
            out["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(out, ensure_ascii=False)


def configure_logging(level: str, fmt: str = "text") -> None:
    """Log to stderr at ``level`` through :class:`RedactSecrets`, as text lines or JSON lines (``fmt="json"``)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactSecrets())
    handler.addFilter(_WithRequestId())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())

"""Server logging: one stderr handler that never lets a key or a token through."""

from __future__ import annotations

import logging
import re
import sys

__all__ = ["RedactSecrets", "configure_logging"]

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


def configure_logging(level: str) -> None:
    """Log to stderr at ``level`` through :class:`RedactSecrets`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactSecrets())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())

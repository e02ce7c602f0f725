"""What every client command shares: the server options, and one client session whose refusals are one-line errors."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import click

from mcp_locks.cli.words import CLI_WORDS
from mcp_locks.client.rest import LockClient
from mcp_locks.core.errors import LockError

__all__ = ["client_options", "quiet_retries", "run", "session"]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., object])

_url = click.option(
    "--url",
    envvar="MCP_LOCKS_URL",
    default="http://127.0.0.1:8765",
    show_default=True,
    help="The server [env MCP_LOCKS_URL].",
)
_key = click.option("--key", envvar="MCP_LOCKS_KEY", default=None, help="Your API key [env MCP_LOCKS_KEY].")
_workspace = click.option("--workspace", "workspace_id", default="default", show_default=True)
_QUIET = logging.NullHandler()


def client_options(command: F) -> F:
    """Add ``--url``, ``--key`` and ``--workspace`` (passed as ``url``, ``key``, ``workspace_id``)."""
    return _url(_key(_workspace(command)))


def quiet_retries() -> None:
    """Keep the client's retries off the terminal: the command's own error says how it ended.

    stamina logs each retry it schedules; with no handler configured, Python would print the record's bare
    name (``stamina.retry_scheduled``) on stderr, once per retry, amid the output of the command ``exec`` runs.
    """
    logging.getLogger("stamina").addHandler(_QUIET)  # adding the same handler again is a no-op


def run(fn: Callable[[], Awaitable[T]]) -> T:
    """Run ``fn`` on an event loop; a refusal from the server is the command's one-line error (its code and hint)."""
    quiet_retries()
    try:
        return anyio.run(fn)
    except LockError as e:
        raise click.ClickException(e.text(CLI_WORDS)) from None


def session(url: str, key: str | None, workspace_id: str, call: Callable[[LockClient], Awaitable[T]]) -> T:
    """Open a client to ``url``, make ``call`` with it, close it, and hand back the answer (see :func:`run`)."""

    async def go() -> T:
        async with LockClient(url, key, workspace_id=workspace_id) as c:
            return await call(c)

    return run(go)

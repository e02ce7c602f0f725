"""The agent key ``mcp-locks connect`` puts in a host's config: one given, or a new one.

A new key is made through the running server's admin API (with ``MCP_LOCKS_ADMIN_KEY`` or the data dir's
``admin.key``), or, when no server answers at the URL or there is no admin key, in the data dir's store
directly, as ``mcp-locks keys create`` does. The server modules are imported only on that last path.

The data dir belongs to a server on this machine: its ``admin.key`` is sent, and its store used, only when the
URL is a loopback address or ``--data-dir`` names that server's data dir. Any other URL needs
``MCP_LOCKS_ADMIN_KEY`` (or a key given with ``--key``): the local admin key never leaves for another host,
and no key is made here that the server there would not know.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from urllib.parse import urlsplit

import click

from mcp_locks.core.keys import parse_key_id

__all__ = ["given_key", "is_loopback_url", "make_key"]


def given_key(key: str | None, key_file: Path | None) -> str | None:
    """The key from ``--key`` or ``--key-file`` (checked for shape, never echoed), or None if neither is given."""
    if key is not None and key_file is not None:
        raise click.UsageError("give the key with --key or with --key-file, not both.")
    if key_file is not None:
        try:
            key = key_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise click.ClickException(f"cannot read the key from {key_file}: {getattr(e, 'strerror', e)}.") from None
    if key is not None and parse_key_id(key.strip()) is None:
        where = f"{key_file}" if key_file is not None else "--key"
        raise click.ClickException(f"{where} does not hold an mcp-locks key (mlk_<12 hex>_<43 chars>).")
    return key.strip() if key is not None else None


def make_key(agent: str, workspaces: list[str], url: str, data_dir: Path | None) -> str:
    """A new key for ``agent``: through the server at ``url`` if an admin key is at hand, else in the data dir."""
    from mcp_locks.cli.config import settings_from  # the server's settings: only when a key is made

    settings = settings_from(data_dir=data_dir)
    env_admin = settings.admin_key.get_secret_value() if settings.admin_key else None
    if data_dir is None and not is_loopback_url(url):  # not this machine's server: its data dir is not ours to use
        return _remote_key(url, env_admin, agent, workspaces)
    admin, source = _admin_key(env_admin, settings.data_dir)
    if admin is not None:
        key = _over_rest(url, admin, source, agent, workspaces)
        if key is not None:
            return key
    from mcp_locks.cli.keys import create_in_data_dir

    key, record = create_in_data_dir(data_dir, agent, workspaces, "agent")
    where = settings.store if settings.postgres else settings.data_dir
    click.echo(f"created key {record.key_id} for agent {agent} in {where} (shown once, in what follows)", err=True)
    return key


def is_loopback_url(url: str) -> bool:
    """Whether ``url``'s host is this machine: ``localhost`` or a loopback address (127.0.0.0/8, ``::1``)."""
    try:
        host = (urlsplit(url).hostname or "").rstrip(".")
    except ValueError:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _remote_key(url: str, env_admin: str | None, agent: str, workspaces: list[str]) -> str:
    """A new key from the server at ``url`` (not this machine) with MCP_LOCKS_ADMIN_KEY; never from the data dir."""
    if env_admin is None:
        raise click.ClickException(
            f"{url} is not this machine, so this data directory's admin.key is not sent there and no key is made"
            f" here. Set MCP_LOCKS_ADMIN_KEY to that server's admin key, or pass an agent key made on it with --key"
            f" or --key-file (or its --data-dir, if that server's data directory is on this machine)."
        )
    key = _over_rest(url, env_admin, "MCP_LOCKS_ADMIN_KEY", agent, workspaces)
    if key is None:
        raise click.ClickException(
            f"nothing answers at {url}: check that the server runs there and the URL, then retry."
        )
    return key


def _admin_key(env_key: str | None, data_dir: Path) -> tuple[str | None, str]:
    """The admin key (MCP_LOCKS_ADMIN_KEY, else the data dir's admin.key) and where it came from."""
    if env_key:
        return env_key, "MCP_LOCKS_ADMIN_KEY"
    path = data_dir / "admin.key"
    try:
        return path.read_text(encoding="utf-8").strip() or None, str(path)
    except (OSError, UnicodeDecodeError):
        return None, str(path)  # no admin key here: the key is made in the data dir instead


def _over_rest(url: str, admin: str, source: str, agent: str, workspaces: list[str]) -> str | None:
    """POST /v1/admin/keys; None if nothing listens at ``url`` (the caller then uses the data dir)."""
    import anyio
    import httpx2

    from mcp_locks.cli.words import CLI_WORDS
    from mcp_locks.client.errors import decode_error

    async def post() -> httpx2.Response:
        async with httpx2.AsyncClient(base_url=url, timeout=15, trust_env=False) as c:
            body = {"agent": agent, "workspaces": workspaces}
            return await c.post("/v1/admin/keys", json=body, headers={"Authorization": f"Bearer {admin}"})

    try:
        r = anyio.run(post)
    except httpx2.ConnectError:
        return None
    except httpx2.TransportError as e:
        raise click.ClickException(
            f"the server at {url} did not answer: {e}. Check that it runs, then retry."
        ) from None
    try:
        answer = r.json()
    except ValueError:
        answer = None
    if r.is_success and isinstance(answer, dict) and isinstance(answer.get("key"), str):
        click.echo(
            f"created key {answer.get('key_id')} for agent {agent} through {url} (shown once, in what follows)",
            err=True,
        )
        return str(answer["key"])
    err = decode_error(answer)
    said = err.text(CLI_WORDS) if err is not None else f"HTTP {r.status_code} from {url}/v1/admin/keys."
    if r.status_code == 401:
        said += f" {url} does not know the admin key from {source}: pass its --data-dir, or set MCP_LOCKS_ADMIN_KEY."
    raise click.ClickException(said)

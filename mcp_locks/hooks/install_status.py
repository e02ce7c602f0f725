"""``mcp-locks hooks status``: what is installed where, with which policy, and whether the server answers.

Read-only: it parses each host's file for both scopes (a file it cannot read is reported, not fixed), reads
the project's settings, looks for the git guard, and asks the server's ``/healthz`` with a short timeout.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx2

from mcp_locks.core.errors import LockError
from mcp_locks.hooks import gitguard
from mcp_locks.hooks.config import DEFAULT_URL, HookConfig, find_project_root, load_config
from mcp_locks.hooks.gitguard_git import hooks_dir
from mcp_locks.hooks.install_files import SetupError, read_json
from mcp_locks.hooks.install_hosts import HOSTS, SCOPES, Host, Scope
from mcp_locks.hooks.install_merge import found

__all__ = ["HEALTH_TIMEOUT", "probe", "status_lines"]

#: Seconds ``status`` waits for the server's ``/healthz``.
HEALTH_TIMEOUT = 2.0


def probe(url: str, timeout: float = HEALTH_TIMEOUT) -> str | None:
    """None if ``GET url/healthz`` answers ok within ``timeout``, else why not (one line)."""
    try:
        r = httpx2.get(f"{url.rstrip('/')}/healthz", timeout=timeout, trust_env=False)
    except (httpx2.HTTPError, httpx2.InvalidURL) as e:
        return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    if r.status_code != 200:
        return f"/healthz answered HTTP {r.status_code}"
    return None


def _row(host: Host, scope: Scope, root: Path | None, policy: str) -> str:
    where = f"{host.name:<12} {scope:<8}"
    if root is None and scope == "project":
        return f"{where} no project here"
    path = host.config_file(scope, root or Path.home())
    try:
        config, text = read_json(path)
    except SetupError as e:
        return f"{where} {e}"
    events = found(config, host)
    if not events:
        return f"{where} not installed ({path}{'' if text is not None else ': no such file'})"
    command = next(iter(events.values()))[0]
    return f"{where} installed in {path}: {', '.join(events)}; policy {policy}; runs {command}"


#: A key-shaped stand-in (never sent: only the settings are read with it).
_PLACEHOLDER_KEY = "mlk_000000000000_" + "0" * 43


def _settings(cwd: Path) -> tuple[HookConfig | None, list[str]]:
    """The project's settings (read without needing the key), and lines on them and on the key."""
    try:
        # MCP_LOCKS_KEY wins over the file's key_env/key_file: set, it lets the rest be read without a key.
        cfg = load_config(cwd, {**os.environ, "MCP_LOCKS_KEY": _PLACEHOLDER_KEY})
    except LockError as e:
        return None, [f"settings: {e.text()}"]
    if cfg is None:
        return None, ["settings: no project here (no .mcp-locks.toml or .git in this folder or above)"]
    try:
        real = load_config(cwd)
        key = f"from {real.key_source}" if real and real.key else "none (enough only for an --insecure-no-auth server)"
    except LockError as e:
        key = e.text()
    source = cfg.config_file or "defaults: no .mcp-locks.toml"
    return cfg, [f"settings: {source}; workspace {cfg.workspace}; policy {cfg.policy}", f"key: {key}"]


def _guard(cwd: Path) -> str:
    try:
        mode = gitguard.installed_mode(cwd)
        hook = hooks_dir(cwd) / "pre-commit"
    except SetupError:
        return "git guard: no git repository here"
    return f"git guard: {mode} mode in {hook}" if mode else f"git guard: not installed ({hook})"


def status_lines(cwd: Path) -> list[str]:
    """Every line of ``hooks status`` for the project around ``cwd``."""
    cfg, lines = _settings(cwd)
    found_root = find_project_root(cwd)
    root = found_root.path if found_root else None
    policy = cfg.policy if cfg else "lock"
    rows = [_row(host, scope, root, policy) for host in HOSTS.values() for scope in SCOPES]
    url = cfg.url if cfg else os.environ.get("MCP_LOCKS_URL") or DEFAULT_URL
    why = probe(url)
    server = f"server: {url} answers" if why is None else f"server: {url} does not answer: {why}"
    return [*rows, *lines, _guard(cwd), server]

"""One run of ``mcp-locks hook HOST``: the host's input in, the host's answer out, never a traceback.

The order keeps the common cases cheap: a call that writes no file we know of (a read, a shell command, an
unknown tool) is allowed before any configuration is read or any HTTP library imported; only a call that
writes files inside a project loads the HTTP transport (:mod:`mcp_locks.hooks.http`, the standard library's
``http.client``) and asks the server. No event loop is started and no async client imported: see
:mod:`mcp_locks.hooks.http` for why.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from mcp_locks.core.errors import LockError
from mcp_locks.hooks import messages
from mcp_locks.hooks.answer import Reply, render
from mcp_locks.hooks.config import HookConfig, load_config
from mcp_locks.hooks.nodes import node_ids
from mcp_locks.hooks.paths import PayloadError, base_folder, written_paths
from mcp_locks.hooks.payload import EventKind, HookInput, parse_input, session_of
from mcp_locks.hooks.verdict import ALLOW, Verdict

__all__ = ["run_hook"]


def run_hook(host: str, text: str, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Reply:
    """Answer the host's hook input ``text`` (``env`` and ``cwd`` default to the process's own)."""
    kind: EventKind = "pre_tool"  # until the input says otherwise: an unreadable input is answered as a tool call
    cfg: HookConfig | None = None
    try:
        try:
            call = parse_input(host, text)
        except PayloadError as e:
            cfg = _quiet_config(cwd or Path.cwd(), env)
            return render(host, kind, messages.malformed(cfg, host, e))
        kind = call.kind
        if kind == "pre_tool":
            return render(host, kind, _pre_tool(call, env))
        if kind == "session_end":
            return render(host, kind, _session_end(call, env))
        return render(host, kind, ALLOW)
    except Exception as e:  # a fault of the hook itself: said in the host's format, still no traceback
        return render(host, kind, messages.failed(cfg, e))


def _pre_tool(call: HookInput, env: Mapping[str, str] | None) -> Verdict:
    cfg: HookConfig | None = None
    try:
        paths = written_paths(call.host, call.payload)
        if not paths:
            return ALLOW  # reads, shell commands, unknown tools: never blocked, the server never asked
        cfg = load_config(_start(call, paths[0]), env)
        if cfg is None:
            return Verdict("allow", log="mcp-locks: not in a project (no .mcp-locks.toml or .git); edit not checked")
        nodes = node_ids(cfg.root, paths)
        if not nodes:
            return ALLOW  # every file is outside the project: not ours to lock
        session = session_of(call.host, call.payload)
    except PayloadError as e:
        return messages.malformed(cfg, call.host, e)
    except LockError as e:  # .mcp-locks.toml or its key, or a file name no node id can hold
        return messages.config_broken(e) if cfg is None else messages.refused(cfg, e)
    return _ask(cfg, session, call.host, nodes, env)


def _ask(cfg: HookConfig, session: str, host: str, nodes: list[str], env: Mapping[str, str] | None) -> Verdict:
    from mcp_locks.hooks.policy import decide  # with http.client: only calls that write project files pay for it

    return decide(cfg, session, host, nodes, env)


def _session_end(call: HookInput, env: Mapping[str, str] | None) -> Verdict:
    """Release what the session took; problems are logged only (the host ignores a session end's answer)."""
    try:
        cfg = load_config(_start(call, None), env)
        if cfg is None:
            return ALLOW
        session = session_of(call.host, call.payload)
    except LockError as e:
        return Verdict("allow", log=f"mcp-locks: nothing released: {e.text()}")
    from mcp_locks.hooks.policy import end_session

    return end_session(cfg, session, env)


def _start(call: HookInput, path: str | None) -> Path:
    """The folder the project root is looked for from: the input's cwd, else the written file's folder."""
    base = base_folder(call.payload)
    if base:
        return Path(base)
    return Path(path).parent if path else Path.cwd()


def _quiet_config(cwd: Path, env: Mapping[str, str] | None) -> HookConfig | None:
    """The configuration around ``cwd`` if it is readable (to know the policy for an unreadable input)."""
    try:
        return load_config(cwd, env)
    except LockError:
        return None

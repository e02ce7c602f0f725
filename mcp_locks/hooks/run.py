"""One run of ``mcp-locks hook HOST``: the host's input in, the host's answer out, never a traceback.

The order keeps the common cases cheap: a call that writes no file we know of (a read, a shell command, an
unknown tool) is allowed before any configuration is read or any HTTP library imported; only a call that
writes files inside a project loads the HTTP transport (:mod:`mcp_locks.hooks.http`, the standard library's
``http.client``) and asks the server. No event loop is started and no async client imported: see
:mod:`mcp_locks.hooks.http` for why.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from mcp_locks.core.errors import LockError
from mcp_locks.hooks import messages
from mcp_locks.hooks.answer import Reply, render
from mcp_locks.hooks.config import HookConfig, find_project_root, load_config
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
        try:
            paths = written_paths(call.host, call.payload)
        except PayloadError as e:  # the files are unknown: the project around cwd says the policy
            return messages.malformed(_quiet_config(_start(call), env), call.host, e)
        if not paths:
            return ALLOW  # reads, shell commands, unknown tools: never blocked, the server never asked
        projects = _by_root(paths)
        if not projects:
            return Verdict("allow", log="mcp-locks: not in a project (no .mcp-locks.toml or .git); edit not checked")
        if len(projects) > 1:
            return messages.several_projects([_quiet_config(r, env) for r in projects], list(projects))
        ((root, inside),) = projects.items()
        cfg = load_config(root, env, strict_key=False)
        if cfg is None:  # pragma: no cover - root was found holding .mcp-locks.toml or .git a moment ago
            return ALLOW
        nodes = node_ids(cfg.root, inside)
        if not nodes:
            return ALLOW  # every file is outside the project: not ours to lock
        session = session_of(call.host, call.payload)
        if cfg.key_problem is not None:
            return messages.no_key(cfg, cfg.key_problem)
    except PayloadError as e:
        return messages.malformed(cfg, call.host, e)
    except LockError as e:  # .mcp-locks.toml, or a file name no node id can hold
        return messages.config_broken(e) if cfg is None else messages.refused(cfg, e)
    return _ask(cfg, session, call.host, nodes, env)


def _ask(cfg: HookConfig, session: str, host: str, nodes: list[str], env: Mapping[str, str] | None) -> Verdict:
    from mcp_locks.hooks.policy import decide  # with http.client: only calls that write project files pay for it

    return decide(cfg, session, host, nodes, env)


def _by_root(paths: list[str]) -> dict[Path, list[str]]:
    """The written paths by the project each lies in, paths in no project left out.

    The project is found from each file's own folder, not from the call's cwd; a folder that does not exist
    yet is walked up from.
    """
    out: dict[Path, list[str]] = {}
    for p in paths:
        found = find_project_root(Path(p).parent)
        if found is not None:
            out.setdefault(found.path, []).append(p)
    return out


def _session_end(call: HookInput, env: Mapping[str, str] | None) -> Verdict:
    """Release what the session took, as its state files recorded it (wherever the session's cwd is now).

    Problems are logged only (the host ignores a session end's answer).
    """
    try:
        session = session_of(call.host, call.payload)
    except LockError as e:
        return Verdict("allow", log=f"mcp-locks: nothing released: {e.text()}")
    from mcp_locks.hooks.policy import end_session
    from mcp_locks.hooks.state import recorded

    logs = []
    for url, workspace, root in recorded(session, env):
        try:
            cfg = load_config(Path(root), env)  # the key of the project the locks were taken for
        except LockError as e:
            logs.append(f"mcp-locks: the locks of session {session} were not released ({e.text()}); they expire")
            continue
        if cfg is None:
            logs.append(f"mcp-locks: the project {root} is gone; the locks of session {session} expire")
            continue
        logs.append(end_session(replace(cfg, url=url, workspace=workspace), session, env).log)
    return Verdict("allow", log="\n".join(line for line in logs if line))


def _start(call: HookInput) -> Path:
    """The folder the call runs in: the input's cwd (Cursor: its first workspace root), else the process's."""
    base = base_folder(call.payload)
    return Path(base) if base else Path.cwd()


def _quiet_config(start: Path, env: Mapping[str, str] | None) -> HookConfig | None:
    """The configuration around ``start`` if it is readable (to know the policy when the call cannot be checked)."""
    try:
        return load_config(start, env, strict_key=False)
    except LockError:
        return None

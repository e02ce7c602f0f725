"""The policies, run against the server: ``lock`` takes (or renews) leases, ``check`` and ``warn`` only look.

* ``lock``: every file of the call gets a write lease for the session, all or none. A lease the session's
  state file knows of is renewed with its token; the rest are taken together with one ``lock_files``
  (``wait=0``: a held file is refused at once, and the batch leaves nothing behind). A file already held by
  this very session without a token here (taken with the lock_file tool and ``agent`` = the session, or
  a state file lost) counts as the session's own: its owner is exactly ``<key's agent>/<session>`` (the key's
  agent asked of /v1/me once, and only when a refusal or a holder arrives), or ``<session>`` on a server
  without authentication.
* ``check``: nothing is taken; a file another holder has locked refuses the call.
* ``warn``: as ``check``, but the call goes ahead with the conflict said as a warning.

Server trouble is said by :mod:`mcp_locks.hooks.messages`: unreachable (``fail`` decides), key refused,
other refusals.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mcp_locks.core.errors import Forbidden, Locked, LockError, Unauthenticated, Unavailable
from mcp_locks.hooks import messages
from mcp_locks.hooks.config import HookConfig
from mcp_locks.hooks.messages import Conflict
from mcp_locks.hooks.remote import Remote, connect
from mcp_locks.hooks.state import SessionState, session_state
from mcp_locks.hooks.verdict import ALLOW, Verdict

__all__ = ["decide", "end_session"]


def decide(
    cfg: HookConfig, session: str, host: str, nodes: Sequence[str], env: Mapping[str, str] | None = None
) -> Verdict:
    """The verdict on a call that writes ``nodes``, under ``cfg.policy`` (``env`` locates the state folder)."""
    try:
        with connect(cfg, session) as remote:
            if cfg.policy == "lock":
                with session_state(cfg.url, cfg.workspace, session, env, str(cfg.root)) as st:
                    return _lock(cfg, remote, st, host, nodes)
            found = _conflicts(remote, nodes)
            return messages.conflict_verdict(cfg, found, session, len(nodes)) if found else ALLOW
    except Unavailable as e:
        return messages.unreachable(cfg, e)
    except (Unauthenticated, Forbidden) as e:
        return messages.key_refused(cfg, e)
    except LockError as e:
        return messages.server_error(cfg, e)


def end_session(cfg: HookConfig, session: str, env: Mapping[str, str] | None = None) -> Verdict:
    """Release every lock the session's hooks took, and forget the session."""
    with session_state(cfg.url, cfg.workspace, session, env) as st:
        tokens = [held["token"] for held in st.locks.values()]
        log = ""
        if tokens:
            try:
                with connect(cfg, session) as remote:
                    released = remote.release(tokens)
                log = f"mcp-locks: released {released} of {len(tokens)} locks of session {session}"
            except LockError as e:  # they end with their leases anyway
                log = f"mcp-locks: could not release the locks of session {session} ({e.text()}); they expire"
        st.end()
    return Verdict("allow", log=log)


def _lock(cfg: HookConfig, remote: Remote, st: SessionState, host: str, nodes: Sequence[str]) -> Verdict:
    try:
        missing = _renew(cfg, remote, st, nodes)
        grants = _take(remote, missing, cfg.lease, f"editing with {host} (mcp-locks hook)")
    except Locked as e:
        return messages.conflict_verdict(cfg, [_described(remote, e)], remote.session, len(nodes))
    finally:
        st.save()  # renewals and forgotten leases count even when the call is refused
    for g in grants:
        st.locks[g["node_id"]] = {"token": g["token"], "lock_id": g["lock_id"], "expires_at": g["expires_at"]}
    st.save()
    return ALLOW


def _renew(cfg: HookConfig, remote: Remote, st: SessionState, nodes: Sequence[str]) -> list[str]:
    """Renew the session's known leases on ``nodes``; the nodes still to take (never held, or the lease is gone)."""
    missing = []
    for node in nodes:
        held = st.locks.get(node)
        if held is not None and (renewed := remote.renew(node, held["token"], cfg.lease)) is not None:
            held["expires_at"] = renewed.get("expires_at")
            continue
        st.locks.pop(node, None)
        missing.append(node)
    return missing


def _take(remote: Remote, nodes: Sequence[str], lease: float, note: str) -> list[dict[str, Any]]:
    """lock_files on ``nodes``, leaving out (one per retry) nodes this session already holds without a token."""
    todo = list(nodes)
    for _ in range(len(nodes)):  # each retry drops one node: bounded by their number
        try:
            return remote.take(todo, lease, note)
        except Locked as e:
            node, holders = e.details.get("node_id"), e.details.get("holders") or []
            if node not in todo or not holders or not all(remote.ours(h.get("owner")) for h in holders):
                raise
            todo.remove(node)
            if not todo:
                break
    return []


def _described(remote: Remote, e: Locked) -> Conflict:
    """The holder a LOCKED refusal names, with their note (asked for: the refusal does not carry it)."""
    node = str(e.details.get("node_id", "?"))
    holders = e.details.get("holders") or [{"owner": "another agent", "expires_at": "?"}]
    try:
        status = remote.status(node)
        for info in [*status.get("holders", []), *status.get("covering", [])]:
            if not remote.ours(info.get("owner")):
                return Conflict.of(node, info)
    except LockError:
        pass  # the refusal's own details say enough
    return Conflict.of(node, holders[0])


def _conflicts(remote: Remote, nodes: Sequence[str]) -> list[Conflict]:
    """Other holders' locks on (or above) ``nodes``, one per node at most."""
    found = []
    for node in nodes:
        status = remote.status(node)
        for info in [*status.get("holders", []), *status.get("covering", [])]:
            if not remote.ours(info.get("owner")):
                found.append(Conflict.of(node, info))
                break
    return found

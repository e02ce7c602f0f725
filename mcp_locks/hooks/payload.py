"""A host's hook input read into what the hook acts on: which event, which session, which files.

Events, per host (names as each host spells them):

=============  ===================  ====================  =============  =============
kind           Claude Code          Cursor                Codex          Gemini CLI
=============  ===================  ====================  =============  =============
``pre_tool``   PreToolUse           preToolUse            PreToolUse     BeforeTool
``gate``       -                    beforeShellExecution,
                                    beforeReadFile,
                                    beforeMCPExecution
``session_end`` SessionEnd,         sessionEnd            -              SessionEnd
               SubagentStop
``other``      Stop, anything else  stop, afterFileEdit   Stop           anything else
=============  ===================  ====================  =============  =============

The session names the holder below the key's agent (``<agent>/<session>``): the host's id for the session
(Claude Code and Gemini ``session_id``, Cursor ``conversation_id``, Codex ``session_id``), prefixed by the host
and, for a Claude Code subagent, followed by its ``agent_id``: a subagent is a session of its own.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from mcp_locks.hooks.paths import PayloadError

__all__ = ["HOSTS", "MAX_SESSION", "EventKind", "HookInput", "event_kind", "parse_input", "session_of"]

HOSTS = ("claude-code", "cursor", "codex", "gemini")
#: Longest session label the server accepts as the ``agent`` argument.
MAX_SESSION = 64
#: Longest hook input read (a Write of a big file carries its whole content).
MAX_INPUT = 64 * 1024 * 1024

EventKind = Literal["pre_tool", "gate", "session_end", "other"]
_EVENTS: dict[str, dict[str, EventKind]] = {
    "claude-code": {"PreToolUse": "pre_tool", "SessionEnd": "session_end", "SubagentStop": "session_end"},
    "cursor": {
        "preToolUse": "pre_tool",
        "beforeShellExecution": "gate",
        "beforeReadFile": "gate",
        "beforeMCPExecution": "gate",
        "sessionEnd": "session_end",
    },
    "codex": {"PreToolUse": "pre_tool"},
    "gemini": {"BeforeTool": "pre_tool", "SessionEnd": "session_end"},
}
_SESSION_KEYS = {
    "claude-code": "session_id",
    "cursor": "conversation_id",
    "codex": "session_id",
    "gemini": "session_id",
}
_PREFIX = {"claude-code": "claude", "cursor": "cursor", "codex": "codex", "gemini": "gemini"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._:-]+")


@dataclass(frozen=True)
class HookInput:
    """One hook call: the host, the event's kind and name, and the raw payload."""

    host: str
    kind: EventKind
    event: str
    payload: Mapping[str, Any]


def parse_input(host: str, text: str) -> HookInput:
    """Read the host's stdin JSON; a PayloadError says what is wrong with it."""
    if not text.strip():
        raise PayloadError("the hook received no input on stdin (the host sends one JSON object).")
    try:
        payload = json.loads(text)
    except ValueError as e:
        raise PayloadError(f"the hook input is not JSON ({e}).", details={"field": "stdin"}) from None
    if not isinstance(payload, dict):
        raise PayloadError("the hook input is not a JSON object.", details={"field": "stdin"})
    event = payload.get("hook_event_name")
    if not isinstance(event, str) or not event:
        raise PayloadError("the hook input has no hook_event_name.", details={"field": "hook_event_name"})
    return HookInput(host, event_kind(host, event), event, payload)


def event_kind(host: str, event: str) -> EventKind:
    """What the hook does for ``event`` on ``host`` (see the module's table)."""
    return _EVENTS.get(host, {}).get(event, "other")


def session_of(host: str, payload: Mapping[str, Any]) -> str:
    """The session label of the call: ``<host>-<session id>[-<subagent id>]``, safe and at most 64 characters."""
    key = _SESSION_KEYS[host]
    raw = payload.get(key)
    if host == "cursor" and not raw:
        raw = payload.get("session_id")  # sessionEnd carries it as session_id (equal to conversation_id)
    if not isinstance(raw, str) or not raw.strip():
        raise PayloadError(
            f"the hook input has no {key}, so the hook cannot tell whose edit this is.", details={"field": key}
        )
    label = f"{_PREFIX[host]}-{raw.strip()}"
    agent = payload.get("agent_id") if host == "claude-code" else None
    if isinstance(agent, str) and agent.strip():
        label += f"-{agent.strip()}"
    return _shorten(_UNSAFE.sub("_", label))


def _shorten(label: str) -> str:
    """``label`` if short enough, else its start and a hash of the whole (still unique, still readable)."""
    if len(label) <= MAX_SESSION:
        return label
    digest = hashlib.sha256(label.encode()).hexdigest()[:16]
    return f"{label[: MAX_SESSION - 17]}-{digest}"

"""A :class:`~mcp_locks.hooks.verdict.Verdict` said in a host's own hook output format.

Every answer is exit code 0 and exactly one JSON object on stdout (Gemini CLI and Claude Code read stdout as
JSON only; Codex's Stop wants JSON too); anything else goes to stderr. Per host (``tests/fixtures/hooks/README.md``):

* Claude Code and Codex: deny = ``hookSpecificOutput`` with ``permissionDecision: "deny"`` and the reason
  (shown to the model); warn = ``hookSpecificOutput.additionalContext`` (to the model) and ``systemMessage``
  (to the human); allow = ``{}`` (no ``permissionDecision``: the host's own permission prompts still apply).
* Cursor: ``{"permission": "deny", "user_message", "agent_message"}``; allow = ``{"permission": "allow"}``.
  preToolUse has no channel for context, so a warning goes to stderr (Cursor's hook log) only.
* Gemini CLI: deny = ``{"decision": "deny", "reason"}`` (the reason reaches the model as the tool's error);
  warn = ``{"systemMessage"}`` (shown to the human; BeforeTool has no model context); allow = ``{}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mcp_locks.hooks.payload import EventKind
from mcp_locks.hooks.verdict import Verdict

__all__ = ["Reply", "render"]


@dataclass(frozen=True)
class Reply:
    """What the hook process prints and how it exits."""

    stdout: str
    stderr: str = ""
    exit_code: int = 0


def render(host: str, kind: EventKind, verdict: Verdict) -> Reply:
    """The host's answer to a ``kind`` event with ``verdict``."""
    if kind == "gate":  # Cursor's older before* events: never blocked by mcp-locks
        return _reply({"permission": "allow"}, verdict.log)
    if kind != "pre_tool":  # session end, turn end, observers: no decision to give
        return _reply({}, verdict.log)
    if host == "cursor":
        return _cursor(verdict)
    if host == "gemini":
        return _gemini(verdict)
    return _claude_like(verdict)


def _reply(body: dict[str, Any], *stderr: str) -> Reply:
    # ASCII only: any stdout encoding (Windows' cp1252 too) can print it; JSON readers decode the \u escapes.
    return Reply(json.dumps(body, ensure_ascii=True), "\n".join(s for s in stderr if s))


def _claude_like(v: Verdict) -> Reply:
    """Claude Code's PreToolUse output; Codex reads the same."""
    if v.action == "deny":
        out = {"permissionDecision": "deny", "permissionDecisionReason": v.reason}
        return _reply({"hookSpecificOutput": {"hookEventName": "PreToolUse", **out}}, v.summary, v.log)
    if v.action == "warn":
        body = {"hookSpecificOutput": {"hookEventName": "PreToolUse", "additionalContext": v.reason}}
        return _reply({**body, "systemMessage": v.summary}, v.summary, v.log)
    return _reply({}, v.log)


def _cursor(v: Verdict) -> Reply:
    if v.action == "deny":
        return _reply({"permission": "deny", "user_message": v.summary, "agent_message": v.reason}, v.summary, v.log)
    return _reply({"permission": "allow"}, v.reason if v.action == "warn" else "", v.log)


def _gemini(v: Verdict) -> Reply:
    if v.action == "deny":
        return _reply({"decision": "deny", "reason": v.reason}, v.summary, v.log)
    if v.action == "warn":
        return _reply({"systemMessage": v.reason}, v.summary, v.log)
    return _reply({}, v.log)

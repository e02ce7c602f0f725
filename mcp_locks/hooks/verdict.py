"""What a hook decided about one call, before it is said in a host's own format (:mod:`mcp_locks.hooks.answer`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["ALLOW", "Verdict"]


@dataclass(frozen=True)
class Verdict:
    """``allow`` (silently), ``deny`` (with a reason) or ``warn`` (allow, and tell the model and the human).

    ``reason`` is written for the model (what happened and what to do next); ``summary`` is one line for the
    human; ``log`` goes to stderr only (hosts keep it in their hook logs).
    """

    action: Literal["allow", "deny", "warn"]
    reason: str = ""
    summary: str = ""
    log: str = ""


ALLOW = Verdict("allow")

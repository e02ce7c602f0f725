"""The words a hook's decisions are said in: for the model (what happened, what to do) and for the human.

Every text starts with ``mcp-locks`` and names its error code where there is one, so a person reading a
transcript knows which tool spoke and can look the code up in docs/errors.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mcp_locks.core.errors import LockError
from mcp_locks.hooks.config import HookConfig
from mcp_locks.hooks.verdict import Verdict

__all__ = [
    "Conflict",
    "config_broken",
    "conflict_verdict",
    "failed",
    "key_refused",
    "malformed",
    "no_key",
    "refused",
    "server_error",
    "several_projects",
    "unreachable",
]


@dataclass(frozen=True)
class Conflict:
    """Another holder's lock on a file the call writes."""

    node_id: str
    owner: str
    expires_at: str
    note: str | None = None
    #: Where the lock was taken, when it is a tree lock on a folder above the file.
    on: str | None = None

    @classmethod
    def of(cls, node_id: str, info: Mapping[str, Any]) -> Conflict:
        """From a holder as check_lock_status or a LOCKED error's details describe it."""
        on = info.get("node_id")
        return cls(node_id, str(info.get("owner")), str(info.get("expires_at", "?")), info.get("note"),
                   on if isinstance(on, str) and on != node_id else None)  # fmt: skip

    def said(self) -> str:
        """``'a.py' is locked by alice/x until 2027-01-15 08:01:00 UTC (note: "...")``."""
        where = f" (by a lock on the folder '{self.on}')" if self.on else ""
        note = f' (their note: "{self.note}")' if self.note else ""
        return f"'{self.node_id}' is locked{where} by {self.owner} until {_when(self.expires_at)}{note}"


def _when(iso: str) -> str:
    """``2027-01-15 08:01:00 UTC`` from the server's ISO time (to the second), or the text as it came."""
    try:
        at = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if at.tzinfo else iso


def conflict_verdict(cfg: HookConfig, conflicts: Sequence[Conflict], session: str, files: int) -> Verdict:
    """Deny (lock, check) or warn (warn) about files another holder has locked."""
    first = conflicts[0]
    held = "; ".join(c.said() for c in conflicts[:5]) + (
        f"; and {len(conflicts) - 5} more" if len(conflicts) > 5 else ""
    )
    summary = f"mcp-locks: {first.said()}"
    if cfg.policy == "warn":
        reason = (
            f'mcp-locks warning (LOCKED): {held}. The edit goes ahead (policy "warn"), but another agent is '
            "working on this file: coordinate with them, or edit something else to avoid conflicting changes."
        )
        return Verdict("warn", reason, summary)
    kept = "nothing was locked for you" if cfg.policy == "lock" else 'the hook locks nothing in policy "check"'
    scope = f"all {files} files of this call were left alone" if files > 1 else "the file was left alone"
    reason = (
        f"mcp-locks refused this edit (LOCKED): {held}. Nothing was written: {scope}, and {kept}. "
        "What to do: work on other files now and come back to this one later; or wait for it with the "
        f'lock_file tool (node_id "{first.node_id}", wait 120, agent "{session}") and retry the edit once '
        f"you hold it; or ask {first.owner} to release it (unlock_file)."
    )
    return Verdict("deny", reason, summary)


def _blocked(cfg: HookConfig | None, reason: str, summary: str) -> Verdict:
    """Deny, or in policy "warn" allow with the same text as a warning."""
    if cfg is not None and cfg.policy == "warn":
        return Verdict("warn", reason.replace("refused this edit", "could not check this edit", 1), summary)
    return Verdict("deny", reason, summary)


def unreachable(cfg: HookConfig, e: LockError) -> Verdict:
    """The server did not answer: fail = "closed" denies, fail = "open" (or policy "warn") lets the edit through."""
    why = e.message.rstrip(".")
    if cfg.fail == "open" or cfg.policy == "warn":
        reason = (
            f"mcp-locks warning ({e.code}): {why}, so this edit was NOT checked against other agents' locks "
            f'(fail = "open" in {cfg.where()}). Start the server with `mcp-locks serve` to protect edits again.'
        )
        return Verdict("warn", reason, f"mcp-locks: lock server {cfg.url} unreachable; edit not checked")
    reason = (
        f'mcp-locks refused this edit ({e.code}): {why}, and {cfg.where()} says fail = "closed". '
        f'Start the lock server (`mcp-locks serve`) and retry, or set fail = "open" in {cfg.where()} to let '
        "edits through unchecked while it is down."
    )
    return Verdict("deny", reason, f"mcp-locks: lock server {cfg.url} unreachable; edit refused")


def key_refused(cfg: HookConfig, e: LockError) -> Verdict:
    """The server refused the key (UNAUTHENTICATED, FORBIDDEN): a setup problem, never a reason to let edits by."""
    source = "no API key was given" if cfg.key is None else f"the key came from {cfg.key_source}"
    reason = (
        f"mcp-locks refused this edit ({e.code}): the lock server at {cfg.url} refused the hook's API key for "
        f"workspace '{cfg.workspace}': {e.message} ({source}). Ask the human to set MCP_LOCKS_KEY, or key_file / "
        f"key_env in {cfg.where()}, to a valid key of that workspace (an admin makes one with "
        f"`mcp-locks keys create --agent NAME --workspace {cfg.workspace}`)."
    )
    return _blocked(cfg, reason, f"mcp-locks: API key refused ({e.code}); edit refused")


def server_error(cfg: HookConfig, e: LockError) -> Verdict:
    """Any other refusal from the server, said as the server said it."""
    return _blocked(cfg, f"mcp-locks refused this edit: the lock server answered {e.text()}", f"mcp-locks: {e.code}")


def refused(cfg: HookConfig, e: LockError) -> Verdict:
    """A file of the call cannot be locked as it is named (a name no node id can hold)."""
    return _blocked(cfg, f"mcp-locks refused this edit: {e.text()}", f"mcp-locks: {e.code}")


def config_broken(e: LockError) -> Verdict:
    """``.mcp-locks.toml`` (or its key) is unusable: no policy is known, so the edit is refused."""
    reason = f"mcp-locks refused this edit ({e.code}): {e.message} {e.hint}".rstrip()
    return Verdict("deny", reason, f"mcp-locks: configuration problem: {e.message}")


def no_key(cfg: HookConfig, e: LockError) -> Verdict:
    """The key named by the settings cannot be used.

    Refused (lock, check); allowed with a warning in policy "warn", and under fail = "open" when it is simply
    not set.
    """
    said = f"{e.message} {e.hint}".rstrip()
    if cfg.policy == "warn" or (cfg.fail == "open" and cfg.key_missing):
        why = 'policy = "warn"' if cfg.policy == "warn" else 'fail = "open"'
        reason = (
            f"mcp-locks warning ({e.code}): {said} So this edit was NOT checked against other agents' locks "
            f"({why} in {cfg.where()})."
        )
        return Verdict("warn", reason, "mcp-locks: no usable API key; edit not checked")
    reason = f"mcp-locks refused this edit ({e.code}): {said}"
    return Verdict("deny", reason, f"mcp-locks: no usable API key ({e.code}); edit refused")


def several_projects(cfgs: Sequence[HookConfig | None], roots: Sequence[Any]) -> Verdict:
    """One call writes files of several projects: each has its own settings, so the call is not checked whole."""
    reason = (
        f"mcp-locks refused this edit (INVALID_ARGUMENT): this call writes files of {len(roots)} projects "
        f"({', '.join(map(str, roots))}), each with its own lock settings; the hook checks one project per call. "
        "Split the edit into one call per project."
    )
    warn_all = all(c is not None and c.policy == "warn" for c in cfgs)
    return _blocked(cfgs[0] if warn_all else None, reason, "mcp-locks: one call writes files of several projects")


def malformed(cfg: HookConfig | None, host: str, e: LockError) -> Verdict:
    """The host's input could not be read: the files of the call are unknown, so it cannot be checked."""
    where = cfg.where() if cfg is not None else ".mcp-locks.toml"
    reason = (
        f"mcp-locks refused this edit ({e.code}): {e.message} The hook cannot tell which files this call writes, "
        f"so it cannot check their locks. If the {host} hook input changed, update mcp-locks; meanwhile "
        f'policy = "warn" in {where} lets such calls through with a warning.'
    )
    return _blocked(cfg, reason, f"mcp-locks: unreadable {host} hook input; edit refused")


def failed(cfg: HookConfig | None, e: BaseException) -> Verdict:
    """A fault in the hook itself: said plainly, never as a traceback."""
    # Only the exception's type: its text may quote anything (a header, so the key; a file's content).
    reason = (
        f"mcp-locks refused this edit (INTERNAL): the hook failed unexpectedly ({type(e).__name__}). "
        "Check the project's .mcp-locks.toml and the API key it names, then retry; if it goes on, report it "
        'with the host\'s hook input (run the hook by hand to see more); policy = "warn" in .mcp-locks.toml '
        "lets edits through meanwhile."
    )
    return _blocked(cfg, reason, "mcp-locks: the hook failed; edit refused")

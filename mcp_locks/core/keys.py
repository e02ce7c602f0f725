"""Per-agent API keys: generation, storage form and verification (no I/O).

A key looks like ``mlk_<key_id>_<secret>``: ``key_id`` (12 hex digits) is public
and names the record; ``secret`` is 256 random bits from :mod:`secrets`. Only a
SHA-256 digest of the whole key is stored (keys are high-entropy, so a fast
hash is enough), and checking compares digests in constant time. A revoked key
stops working as soon as its record says so.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from typing import Literal, NamedTuple

from mcp_locks.core.errors import Forbidden

__all__ = [
    "KEY_PREFIX",
    "LOCAL",
    "NOBODY",
    "Identity",
    "KeyRecord",
    "key_digest",
    "new_key",
    "parse_key_id",
    "record_for",
    "require_admin",
    "verify_key",
]

KEY_PREFIX = "mlk_"
_KEY_RE = re.compile(r"mlk_([0-9a-f]{12})_[A-Za-z0-9_-]{43}")

Role = Literal["agent", "admin"]


class KeyRecord(NamedTuple):
    """A key as the store keeps it: never the key itself."""

    key_id: str
    agent: str
    workspaces: tuple[str, ...]
    role: Role
    created_at: float
    digest: bytes
    revoked_at: float | None = None

    def __repr__(self) -> str:
        return (
            f"KeyRecord(key_id={self.key_id!r}, agent={self.agent!r}, workspaces={self.workspaces!r},"
            f" role={self.role!r}, revoked_at={self.revoked_at!r})"
        )


class Identity(NamedTuple):
    """Who a call speaks for: the verified key's agent, or :data:`LOCAL` when nothing is checked."""

    key_id: str
    agent: str
    role: Role
    workspaces: tuple[str, ...]

    def reaches(self, workspace_id: str) -> bool:
        """Whether this identity may use ``workspace_id`` (an admin reaches every workspace)."""
        return self.role == "admin" or workspace_id in self.workspaces

    @property
    def authenticated(self) -> bool:
        """Whether a key proved this identity (False for :data:`LOCAL`)."""
        return bool(self.key_id)


#: The caller in-process, or over a server started with ``--insecure-no-auth``: it may do
#: everything, and the ``agent`` argument names the owner of what it takes.
LOCAL = Identity("", "", "admin", ())
#: The fallback when keys are checked but a call carries none: it reaches nothing and may do nothing.
NOBODY = Identity("-", "nobody", "agent", ())


def key_digest(key: str) -> bytes:
    """The SHA-256 digest stored for ``key`` (keys are 256-bit random: a fast hash is enough)."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def new_key(agent: str, workspaces: tuple[str, ...], role: Role, now: float) -> tuple[str, KeyRecord]:
    """A new key (to show once) and the record to store for it."""
    key = f"{KEY_PREFIX}{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"
    return key, record_for(key, agent, workspaces, role, now)


def record_for(key: str, agent: str, workspaces: tuple[str, ...], role: Role, now: float) -> KeyRecord:
    """The record to store for an existing, well-formed ``key`` (e.g. one an operator set in the environment)."""
    key_id = parse_key_id(key)
    if key_id is None:
        raise ValueError("not an mcp-locks key")
    return KeyRecord(key_id, agent, tuple(workspaces), role, now, key_digest(key))


def parse_key_id(key: str) -> str | None:
    """The public key id inside ``key``, or None if it is not shaped like one of our keys."""
    m = _KEY_RE.fullmatch(key)
    return m.group(1) if m else None


def verify_key(key: str, record: KeyRecord | None) -> Identity | None:
    """The identity ``key`` proves, or None (unknown, wrong, or revoked). Compares in constant time."""
    if record is None:
        # Compare anyway, so an unknown key id takes as long as a wrong secret.
        hmac.compare_digest(key_digest(key), b"\0" * 32)
        return None
    if not hmac.compare_digest(key_digest(key), record.digest) or record.revoked_at is not None:
        return None
    return Identity(record.key_id, record.agent, record.role, record.workspaces)


def require_admin(caller: Identity, what: str) -> None:
    """FORBIDDEN unless ``caller`` holds an admin key (or the server runs without authentication)."""
    if caller.role != "admin":
        raise Forbidden(
            f"{what} needs an admin key; this key (agent '{caller.agent}') is an agent key.",
            hint="Ask whoever runs the server to do it, or to give you an admin key.",
        )

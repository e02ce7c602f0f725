"""Where a hook's project starts, and which server, workspace, key and policy it uses.

The stable API other client-side tools build on (``mcp-locks hook``, ``mcp-locks hooks install``, the git
guard)::

    root = find_project_root(Path.cwd())          # ProjectRoot(path, config_file) or None
    cfg = load_config(Path.cwd())                 # HookConfig, or None outside any project
    cfg = load_config(Path.cwd(), env={...})      # env defaults to os.environ

* The project root is the nearest folder, from the start folder upwards, holding ``.mcp-locks.toml``; without
  one, the nearest folder holding ``.git`` (a folder, or a file in worktrees and submodules). The walk
  reads the file system only: no ``git`` process is started (a hook runs on every edit).
* ``.mcp-locks.toml`` (committed with the project, so it never holds a key)::

      url = "http://127.0.0.1:8765"   # the server (default as shown)
      workspace = "default"           # the workspace the project's files are locked in
      key_file = "~/.config/mcp-locks/alice.key"   # or: key_env = "MCP_LOCKS_TEAM_KEY"
      policy = "lock"                 # lock | check | warn
      fail = "closed"                 # closed | open: may an edit go ahead while the server is down?
      lease = 900                     # seconds a hook's lock lasts without another edit of the file

  Tables (``[section]``) are left to other tools; an unknown top-level setting is refused (a typo must not
  quietly fall back to a default), and so is ``key = ...``.
* The environment wins over the file, as for every other ``mcp-locks`` command: ``MCP_LOCKS_URL`` over
  ``url``, ``MCP_LOCKS_KEY`` over ``key_file``/``key_env`` (a person's own setting beats the project's
  shared one). A relative ``key_file`` is relative to the project root; ``~`` is expanded.
* The file is the repository's, so it may choose the server's URL, but only an mcp-locks key is ever sent
  there: ``key_env`` must name a ``MCP_LOCKS_*`` variable, and a key from ``MCP_LOCKS_KEY``, ``key_env`` or
  ``key_file`` (one trailing newline dropped) must have the shape of one (``mlk_<id>_<secret>``), else it is
  refused without being shown.

Every problem is a :class:`ConfigError` (code ``INVALID_ARGUMENT``, ``details["field"]`` names the setting).
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mcp_locks.core.errors import InvalidArgument
from mcp_locks.core.names import check_workspace_id

__all__ = [
    "CONFIG_FILE",
    "DEFAULT_URL",
    "ConfigError",
    "HookConfig",
    "ProjectRoot",
    "find_project_root",
    "load_config",
    "read_config_file",
]

CONFIG_FILE = ".mcp-locks.toml"
DEFAULT_URL = "http://127.0.0.1:8765"
DEFAULT_LEASE = 900.0
#: Bounds on ``lease``: long enough to outlast a slow edit, short enough that a dead session's locks end.
LEASE_RANGE = (10.0, 86_400.0)
#: How many folders the root walk climbs at most (a path deeper than this is pathological).
MAX_DEPTH = 256

Policy = Literal["lock", "check", "warn"]
Fail = Literal["open", "closed"]
_POLICIES: tuple[Policy, ...] = ("lock", "check", "warn")
_FAILS: tuple[Fail, ...] = ("closed", "open")
_SETTINGS = ("url", "workspace", "key_file", "key_env", "policy", "fail", "lease")


class ConfigError(InvalidArgument):
    """``.mcp-locks.toml`` (or the key it points to) is unusable; the message says what to change."""


@dataclass(frozen=True)
class ProjectRoot:
    """A project's root folder, and its ``.mcp-locks.toml`` if it has one (else it was found by ``.git``)."""

    path: Path
    config_file: Path | None


@dataclass(frozen=True)
class HookConfig:
    """Everything a hook needs to know about its project; see the module docstring for each setting."""

    root: Path
    config_file: Path | None
    url: str
    workspace: str
    key: str | None = None
    #: Where the key came from, for messages ("MCP_LOCKS_KEY", "key_file ~/.k", ...); never the key itself.
    key_source: str = "none"
    policy: Policy = "lock"
    fail: Fail = "closed"
    lease: float = DEFAULT_LEASE
    #: Why no key could be read (``load_config(..., strict_key=False)`` only): the rest is still usable.
    key_problem: ConfigError | None = None
    #: Whether that problem is a key that is simply not there (a variable not set, no key file).
    key_missing: bool = False

    def where(self) -> str:
        """The file a person edits to change these settings (or where to create it)."""
        return str(self.config_file or self.root / CONFIG_FILE)


def find_project_root(start: Path) -> ProjectRoot | None:
    """The nearest folder at or above ``start`` with ``.mcp-locks.toml``, else with ``.git``; None if neither."""
    here = Path(os.path.abspath(start))
    git: Path | None = None
    for folder in [here, *here.parents][:MAX_DEPTH]:
        candidate = folder / CONFIG_FILE
        if candidate.is_file():
            return ProjectRoot(folder, candidate)
        if git is None and (folder / ".git").exists():
            git = folder
    return ProjectRoot(git, None) if git is not None else None


def read_config_file(path: Path) -> dict[str, Any]:
    """The settings of one ``.mcp-locks.toml``, checked (unknown settings and ``key`` are refused)."""
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}.", details={"field": "file"}) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}.", hint="Fix the file.", details={"field": "file"}) from None
    if "key" in raw:
        raise ConfigError(
            f"{path} holds an API key ('key = ...'): a key never goes in this file, which is shared with the project.",
            hint="Remove the line and revoke that key if the file was ever committed; then set key_file = "
            "'~/.config/mcp-locks/<you>.key' or key_env = 'NAME_OF_A_VARIABLE', or export MCP_LOCKS_KEY.",
            details={"field": "key"},
        )
    unknown = sorted(k for k, v in raw.items() if k not in _SETTINGS and not isinstance(v, dict))
    if unknown:
        raise ConfigError(
            f"{path}: unknown setting {', '.join(map(repr, unknown))}.",
            hint=f"The settings are {', '.join(_SETTINGS)}.",
            details={"field": unknown[0]},
        )
    return {k: raw[k] for k in _SETTINGS if k in raw}


def load_config(start: Path, env: Mapping[str, str] | None = None, *, strict_key: bool = True) -> HookConfig | None:
    """The configuration of the project around ``start``; None when ``start`` is in no project.

    With ``strict_key=False`` a key that cannot be read does not raise: it is said in ``key_problem`` (and
    ``key_missing``), so the caller still knows the policy and ``fail`` setting.
    """
    env = os.environ if env is None else env
    found = find_project_root(start)
    if found is None:
        return None
    raw = read_config_file(found.config_file) if found.config_file else {}
    where = found.config_file or found.path / CONFIG_FILE
    key_problem: ConfigError | None = None
    try:
        key, key_source = _key(raw, found.path, env, where)
    except ConfigError as e:
        if strict_key:
            raise
        key, key_source, key_problem = None, "none", e
    return HookConfig(
        root=found.path,
        config_file=found.config_file,
        url=_url(env.get("MCP_LOCKS_URL") or raw.get("url", DEFAULT_URL), where),
        workspace=_workspace(raw.get("workspace", "default"), where),
        key=key,
        key_source=key_source,
        policy=_choice(raw.get("policy", "lock"), "policy", _POLICIES, where),
        fail=_choice(raw.get("fail", "closed"), "fail", _FAILS, where),
        lease=_lease(raw.get("lease", DEFAULT_LEASE), where),
        key_problem=key_problem,
        key_missing=isinstance(key_problem, _MissingKey),
    )


def _url(value: object, where: Path) -> str:
    if not isinstance(value, str) or not value.lower().startswith(("http://", "https://")):
        raise ConfigError(
            f"url must be an http:// or https:// address (got {value!r}; from MCP_LOCKS_URL or {where}).",
            hint=f"For a server on this machine: url = '{DEFAULT_URL}'.",
            details={"field": "url"},
        )
    return value.rstrip("/")


def _workspace(value: object, where: Path) -> str:
    try:
        return check_workspace_id(value, "workspace")
    except InvalidArgument as e:
        raise ConfigError(f"{where}: {e.message}", hint=e.hint, details={"field": "workspace"}) from None


def _choice(value: object, field: str, allowed: tuple[str, ...], where: Path) -> Any:
    if value not in allowed:
        raise ConfigError(
            f"{where}: {field} must be one of {', '.join(map(repr, allowed))} (got {value!r}).",
            details={"field": field},
        )
    return value


def _lease(value: object, where: Path) -> float:
    lo, hi = LEASE_RANGE
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not lo <= value <= hi
    ):
        raise ConfigError(
            f"{where}: lease must be a number of seconds from {lo:g} to {hi:g} (got {value!r}).",
            hint="A hook's lock is renewed by each edit of the file; the lease is how long it outlives the last one.",
            details={"field": "lease"},
        )
    return float(value)


class _MissingKey(ConfigError):
    """The key is simply not there (its variable is not set, its file does not exist or is empty)."""


def _checked(key: str, source: str, where: Path) -> tuple[str, str]:
    """``key`` if it has the shape of an mcp-locks key; else refused, without ever showing it."""
    from mcp_locks.core.keys import parse_key_id  # (with secrets, hmac): only a call that needs a key pays

    if parse_key_id(key) is None:
        raise ConfigError(
            f"the API key from {source} is not an mcp-locks key (mlk_<12 hex digits>_<secret>, on one line); "
            "it was not sent anywhere.",
            hint=f"Put your own mcp-locks key there (an admin makes one with `mcp-locks keys create`), or fix "
            f"key_file / key_env in {where}.",
            details={"field": source.split()[0]},
        )
    return key, source


def _key(raw: Mapping[str, Any], root: Path, env: Mapping[str, str], where: Path) -> tuple[str | None, str]:
    """The API key and where it came from: MCP_LOCKS_KEY, else key_env, else key_file, else none."""
    if env.get("MCP_LOCKS_KEY"):
        return _checked(env["MCP_LOCKS_KEY"].strip(), "MCP_LOCKS_KEY", where)
    if "key_env" in raw:
        name = raw["key_env"]
        if not isinstance(name, str) or not name.startswith(_KEY_ENV_PREFIX) or name == _KEY_ENV_PREFIX:
            raise ConfigError(
                f"{where}: key_env must name an environment variable whose name starts with {_KEY_ENV_PREFIX} "
                f"(got {name!r}): the project's file may not choose which of your variables is sent to its server.",
                hint=f"key_env = '{_KEY_ENV_PREFIX}KEY', or another {_KEY_ENV_PREFIX}* name.",
                details={"field": "key_env"},
            )
        value = env.get(name, "").strip()
        if not value:
            raise _MissingKey(
                f"{where} says the API key is in the environment variable {name}, which is not set.",
                hint=f"export {name}=mlk_... (your own key), or export MCP_LOCKS_KEY.",
                details={"field": "key_env"},
            )
        return _checked(value, f"key_env {name}", where)
    if "key_file" in raw:
        return _key_file(raw["key_file"], root, where)
    return None, "none"


#: What a ``key_env`` variable's name must start with.
_KEY_ENV_PREFIX = "MCP_LOCKS_"


def _key_file(value: object, root: Path, where: Path) -> tuple[str, str]:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: key_file must be a path.", details={"field": "key_file"})
    path = root / Path(value).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        kind = _MissingKey if isinstance(e, FileNotFoundError) else ConfigError
        raise kind(
            f"cannot read the API key file {path} named by {where}: {reason}.",
            hint="Put your key in that file (mode 0600), point key_file elsewhere, or export MCP_LOCKS_KEY.",
            details={"field": "key_file"},
        ) from None
    key = text.removesuffix("\n").removesuffix("\r")  # one trailing newline, as editors and `echo` leave it
    if not key:
        raise _MissingKey(f"the API key file {path} is empty.", details={"field": "key_file"})
    return _checked(key, f"key_file {value}", where)

"""Helpers for running ``mcp-locks hook HOST`` as the hosts do: a subprocess, the fixture payload on stdin."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

FIXTURES = Path(__file__).parent / "fixtures" / "hooks"
#: The project folder every fixture payload was recorded in.
RECORDED_ROOT = "/home/dev/project"


def fixture(host: str, name: str) -> dict[str, Any]:
    """The whole fixture file ``tests/fixtures/hooks/HOST/NAME.json``."""
    loaded: dict[str, Any] = json.loads((FIXTURES / host / f"{name}.json").read_text())
    return loaded


def all_fixtures() -> list[tuple[str, str]]:
    """Every (host, fixture name) recorded."""
    return sorted((p.parent.name, p.stem) for p in FIXTURES.glob("*/*.json"))


def payload(host: str, name: str, root: Path, **changes: Any) -> dict[str, Any]:
    """The fixture's payload moved into ``root`` (every recorded project path rewritten), with ``changes``."""
    text = json.dumps(fixture(host, name)["payload"]).replace(RECORDED_ROOT, str(root))
    moved: dict[str, Any] = json.loads(text)
    for key, value in changes.items():
        if value is None:
            moved.pop(key, None)
        else:
            moved[key] = value
    return moved


def project(tmp_path: Path, url: str, **settings: Any) -> Path:
    """A git project under ``tmp_path`` with a ``.mcp-locks.toml`` naming ``url`` and ``settings``."""
    root = tmp_path / "project"
    (root / ".git").mkdir(parents=True, exist_ok=True)
    lines = [f'url = "{url}"'] + [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    (root / ".mcp-locks.toml").write_text("\n".join(lines) + "\n")
    return root


@dataclass
class HookRun:
    """One finished hook process."""

    stdout: str
    stderr: str
    exit_code: int

    @property
    def answer(self) -> dict[str, Any]:
        """stdout as the host reads it: exactly one JSON object."""
        body: dict[str, Any] = json.loads(self.stdout)
        assert isinstance(body, dict), self.stdout
        return body


def hook_env(state: Path, key: str | None, **extra: str) -> dict[str, str]:
    """The process environment without the caller's MCP_LOCKS_* settings, plus the key and a state folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_LOCKS_")}
    env["MCP_LOCKS_HOOK_STATE"] = str(state)
    if key is not None:
        env["MCP_LOCKS_KEY"] = key
    return env | extra


async def run_hook(host: str, body: dict[str, Any] | str, env: dict[str, str], cwd: Path | None = None) -> HookRun:
    """Run ``python -m mcp_locks hook HOST`` with ``body`` on stdin (bounded: 30 s)."""
    data = body if isinstance(body, str) else json.dumps(body)
    with anyio.fail_after(30):
        done = await anyio.run_process(
            [sys.executable, "-m", "mcp_locks", "hook", host], input=data.encode(), env=env, cwd=cwd, check=False
        )
    return HookRun(done.stdout.decode(), done.stderr.decode(errors="replace"), done.returncode)  # stderr: any codec

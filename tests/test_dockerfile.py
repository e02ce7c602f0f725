"""The Dockerfile, without a Docker engine: what it declares, and the very command it runs, run here."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from fnmatch import fnmatch
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
# Every wait on the server process ends by this many seconds; a healthy run takes well under one.
DEADLINE = 20


def instructions(text: str) -> list[tuple[str, str]]:
    """The Dockerfile's (INSTRUCTION, arguments), continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # also inside a continued instruction, as Docker does
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        word, _, args = (pending + line).partition(" ")
        out.append((word.upper(), args.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued instruction"
    return out


STEPS = instructions(DOCKERFILE)


def last(name: str) -> str:
    found = [args for word, args in STEPS if word == name]
    assert found, f"no {name} in the Dockerfile"
    return found[-1]


def exec_form(args: str) -> list[str]:
    """An instruction's JSON argv; the shell form would run under /bin/sh, which would get the signals."""
    argv = json.loads(args)
    assert isinstance(argv, list)
    assert all(isinstance(a, str) for a in argv)
    return argv


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, args in STEPS:
        if word == "ENV":
            env |= dict(pair.split("=", 1) for pair in shlex.split(args))
    return env


def image_command() -> list[str]:
    return exec_form(last("ENTRYPOINT")) + exec_form(last("CMD"))


def healthcheck_command() -> list[str]:
    m = re.fullmatch(r"(?:--\S+\s+)*CMD\s+(.+)", last("HEALTHCHECK"))
    assert m, "HEALTHCHECK has no CMD"
    return exec_form(m[1])


def here(argv: list[str]) -> list[str]:
    """``argv`` with its program taken from this interpreter's environment (the image has it on PATH).

    ``python`` is this interpreter; ``mcp-locks`` the script installed beside it, not another one on PATH.
    """
    if argv[0] == "python":
        return [sys.executable, *argv[1:]]
    beside = Path(sys.executable).with_name(argv[0])
    program = str(beside) if beside.exists() else shutil.which(argv[0])
    assert program is not None, f"{argv[0]} is not installed beside {sys.executable}"
    return [program, *argv[1:]]


def without_our_settings() -> dict[str, str]:
    """This process's environment without MCP_LOCKS_* (a developer's admin key or no-auth flag must not leak in)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MCP_LOCKS_")}


def test_the_image_runs_as_a_user_other_than_root_keeps_its_data_in_a_volume_and_requires_keys() -> None:
    assert last("FROM").startswith("python:3.11-slim")
    user = last("USER").split(":")[0]
    assert user not in ("root", "0")
    words = [w for w, _ in STEPS]
    assert words.index("USER") < min(words.index("ENTRYPOINT"), words.index("CMD"))
    volumes = [v for w, args in STEPS if w == "VOLUME" for v in (json.loads(args) if args[0] == "[" else args.split())]
    env = image_env()
    assert env["MCP_LOCKS_DATA_DIR"] in volumes  # the database and admin.key live in the volume
    for word, args in STEPS:  # neither --insecure-no-auth nor MCP_LOCKS_INSECURE_NO_AUTH, anywhere
        assert "insecure" not in args.lower(), word
    assert "MCP_LOCKS_ADMIN_KEY" not in env  # no key baked into the image
    assert last("EXPOSE") == env["MCP_LOCKS_PORT"]  # the port the server takes from its environment
    assert any(w == "RUN" and "pip install --no-cache-dir ." in args for w, args in STEPS)


def test_the_build_context_holds_what_pip_install_needs_and_leaves_out_the_venv_git_and_caches() -> None:
    patterns = [p for p in (ROOT / ".dockerignore").read_text().splitlines() if p and not p.startswith("#")]

    def ignored(path: str) -> bool:
        return any(fnmatch(path, p) or fnmatch(path, p.removeprefix("**/")) for p in patterns) or any(
            ignored(str(parent)) for parent in Path(path).parents if str(parent) != "."
        )

    for name in (".venv", ".git", ".pytest_cache", ".ruff_cache", "mcp_locks/__pycache__"):
        assert ignored(name), name
    copied = [src for w, args in STEPS if w == "COPY" for src in args.split()[:-1]]
    assert {"pyproject.toml", "README.md", "mcp_locks"} <= set(copied)  # the build reads all three
    for src in copied:
        files = [src] if (ROOT / src).is_file() else [str(p.relative_to(ROOT)) for p in (ROOT / src).rglob("*.py")]
        assert files
        assert not [f for f in files if ignored(f)], src


@contextmanager
def image_server(data_dir: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """Run the image's command here; yield the process and the port it listens on, once /healthz answers."""
    argv = image_command()
    # The image binds every interface (--host 0.0.0.0) so that a published port reaches it; a test
    # must listen on loopback only. That one argument is swapped; the rest of the command is the image's.
    assert argv.count("0.0.0.0") == 1
    assert argv[argv.index("0.0.0.0") - 1] == "--host"
    argv[argv.index("0.0.0.0")] = "127.0.0.1"
    env = without_our_settings() | image_env()
    # The data dir is a temporary one, and port 0 lets the kernel pick a free port (the server says which).
    env |= {"MCP_LOCKS_DATA_DIR": str(data_dir), "MCP_LOCKS_PORT": "0"}
    log = data_dir.parent / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(here(argv), env=env, stdin=subprocess.DEVNULL, stderr=out)
    try:
        deadline = time.monotonic() + DEADLINE
        port = None
        while port is None and time.monotonic() < deadline and proc.poll() is None:
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)/mcp", log.read_text())
            if m:
                port = int(m[1])
            else:
                time.sleep(0.02)
        assert port is not None, f"the server did not say where it listens: {log.read_text()}"
        while time.monotonic() < deadline and proc.poll() is None:  # up once its lifespan has run
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.02)
        assert proc.poll() is None, log.read_text()
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def healthcheck(port: int) -> int:
    """The HEALTHCHECK's exit status, run with the port the server took (in the image both read MCP_LOCKS_PORT)."""
    env = without_our_settings() | image_env() | {"MCP_LOCKS_PORT": str(port)}
    argv = here(healthcheck_command())
    return subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=DEADLINE).returncode


@pytest.mark.slow
def test_the_images_command_serves_with_keys_required_and_passes_its_own_healthcheck(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    with image_server(data) as (proc, port):
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/healthz").json()["status"] == "ok"
        refused = httpx.get(f"{base}/v1/workspaces")
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "UNAUTHENTICATED"
        assert httpx.post(f"{base}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).status_code == 401
        # First start wrote the admin key into the data dir (the image's volume), and it works.
        admin = (data / "admin.key").read_text().strip()
        me = httpx.get(f"{base}/v1/me", headers={"Authorization": f"Bearer {admin}"})
        assert me.json()["role"] == "admin"
        assert (data / "locks.db").exists()
        assert healthcheck(port) == 0
        proc.send_signal(signal.SIGTERM)  # what `docker stop` sends
        assert proc.wait(DEADLINE) == 0
    assert healthcheck(port) != 0  # and it notices when the server is gone

"""The Dockerfile, without a Docker engine: what it declares, and the very command it runs, run here."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from fnmatch import fnmatch
from importlib import metadata
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

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


def copied() -> dict[str, Path]:
    """Each file the Dockerfile copies into the image, by its path there: the file here it comes from."""
    out: dict[str, Path] = {}
    for word, args in STEPS:
        if word == "COPY":
            *sources, dest = args.split()
            for src in sources:
                if (ROOT / src).is_file():
                    out[dest if not dest.endswith("/") else dest + Path(src).name] = ROOT / src
    return out


def here(argv: list[str]) -> list[str]:
    """``argv`` with its program taken from this interpreter's environment (the image has it on PATH).

    ``python`` is this interpreter; ``mcp-locks`` the script installed beside it, not another one on PATH;
    a file the image was given by COPY is that file here.
    """
    files = copied()
    argv = [str(files[a]) if a in files else a for a in argv]
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
    made = re.search(
        r"useradd .*--uid (\d+) .*\b" + re.escape(user) + r"\b", " ".join(a for w, a in STEPS if w == "RUN")
    )
    assert made, f"USER {user} is not made by useradd with a uid"
    assert int(made[1]) != 0
    # Any other uid (docker run --user, for a bind mount's owner) has a home it may write: the data dir.
    assert env["HOME"] == env["MCP_LOCKS_DATA_DIR"]


def test_the_image_takes_its_host_from_the_environment_so_docker_run_arguments_only_add_flags() -> None:
    env = image_env()
    assert env["MCP_LOCKS_HOST"] == "0.0.0.0"  # the published port reaches it; keys stay required
    assert exec_form(last("ENTRYPOINT")) == ["mcp-locks", "serve"]
    assert exec_form(last("CMD")) == []  # `docker run IMAGE --port 9000` replaces nothing the image needs


def pinned() -> dict[str, str]:
    """docker/constraints.txt as {canonical name: version}; every line a comment or ``name==version``."""
    pins: dict[str, str] = {}
    for line in (ROOT / "docker" / "constraints.txt").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!-]+)", line)
        assert m, f"not an exact pin: {line!r}"
        pins[canonicalize_name(m[1])] = m[2]
    return pins


def runtime_requirements() -> list[Requirement]:
    """pyproject's dependencies that apply in the image (Linux, its Python), with what their extras bring."""
    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    out = []
    for line in listed:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate():
            out.append(req)
            for extra in req.extras:  # psycopg[binary,pool]: the packages those extras name are pinned too
                for dep in metadata.requires(req.name) or ():
                    sub = Requirement(dep)
                    if sub.marker is not None and sub.marker.evaluate({"extra": extra}):
                        out.append(sub)
    return out


def test_the_image_installs_with_pins_that_cover_every_runtime_dependency() -> None:
    constraints = "docker/constraints.txt"
    words = [w for w, _ in STEPS]
    install = next(i for i, (w, a) in enumerate(STEPS) if w == "RUN" and "pip install" in a)
    assert f"pip install --no-cache-dir --constraint {constraints} ." in STEPS[install][1]
    brought = [i for i, (w, a) in enumerate(STEPS) if w == "COPY" and a.split()[0] == constraints]
    assert brought, f"{constraints} is not copied into the image"
    assert brought[0] < install
    assert words.count("FROM") == 1
    pins = pinned()
    for req in runtime_requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} (a runtime dependency) is not pinned in {constraints}"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} breaks {req}"
    assert "mcp-locks" not in pins  # the project itself is what is installed, not a pin


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


def free_port() -> int:
    """A port nothing listens on right now (the kernel's pick), for a server told its port in advance."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def container_env(data_dir: Path, **settings: str) -> dict[str, str]:
    """The image's environment as a container would have it, with ``settings`` (``docker run -e``) on top.

    The image binds every interface (MCP_LOCKS_HOST=0.0.0.0) so that a published port reaches it; a test
    must listen on loopback only, so that one variable is swapped. The data dir is a temporary one.
    """
    env = without_our_settings() | image_env()
    assert env["MCP_LOCKS_HOST"] == "0.0.0.0"
    return env | {"MCP_LOCKS_HOST": "127.0.0.1", "MCP_LOCKS_DATA_DIR": str(data_dir)} | settings


@contextmanager
def image_server(env: dict[str, str], args: tuple[str, ...] = ()) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """Run the image's command (with ``args`` after the image name) here, in ``env``; yield the process and the
    port it listens on, once /healthz answers."""
    argv = [*image_command(), *args]
    log = Path(env["MCP_LOCKS_DATA_DIR"]).parent / "server.log"
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


def healthcheck(env: dict[str, str], pid: int) -> int:
    """The HEALTHCHECK's exit status, run in the server's environment (a container shares one) about ``pid``.

    In the image the server is the container's first process, which the check reads by default; here it
    is told the server's pid.
    """
    argv = [*here(healthcheck_command()), str(pid)]
    return subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=DEADLINE).returncode


@pytest.mark.slow
def test_the_images_command_serves_with_keys_required_and_passes_its_own_healthcheck(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    port = free_port()
    env = container_env(data, MCP_LOCKS_PORT=str(port))  # docker run -e MCP_LOCKS_PORT=...
    with image_server(env) as (proc, listening):
        assert listening == port
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
        assert healthcheck(env, proc.pid) == 0
        proc.send_signal(signal.SIGTERM)  # what `docker stop` sends
        assert proc.wait(DEADLINE) == 0
    assert healthcheck(env, proc.pid) != 0  # and it notices when the server is gone


@pytest.mark.slow
def test_a_port_given_after_the_image_name_is_the_one_its_healthcheck_asks(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    port = free_port()
    env = container_env(data)  # MCP_LOCKS_PORT stays the image's 8765: the flag wins, as in the server
    assert env["MCP_LOCKS_PORT"] != str(port)
    with image_server(env, ("--port", str(port))) as (proc, listening):  # docker run IMAGE --port ...
        assert listening == port
        assert healthcheck(env, proc.pid) == 0


def load_healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docker_healthcheck", ROOT / "docker" / "healthcheck.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("argv", "flags"),
    [
        (["mcp-locks", "serve"], {}),
        (["/usr/local/bin/python", "/usr/local/bin/mcp-locks", "serve", "--port", "9000"], {"port": "9000"}),
        (["/sbin/docker-init", "--", "mcp-locks", "serve", "--host=::", "--port=9001"], {"host": "::", "port": "9001"}),
        (["mcp-locks", "--config", "/etc/l.toml", "serve", "--port", "1", "--port", "2"],
         {"config": "/etc/l.toml", "port": "2"}),
        (["mcp-locks", "keys", "list"], {}),
        (["python3"], {}),
    ],
)  # fmt: skip
def test_the_healthcheck_reads_the_flags_of_the_server_however_it_was_started(
    argv: list[str], flags: dict[str, str]
) -> None:
    assert load_healthcheck().flags_of(argv) == flags

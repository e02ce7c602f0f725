"""The public surface stays thin and cheap: what importing it loads, what it names, and what it must declare."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import mcp_locks
import mcp_locks.client

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mcp_locks"

#: Modules a client process must never load: the server's layers and the libraries only a server needs.
SERVER_MODULES = (
    "mcp_locks.faces",
    "mcp_locks.engine",
    "mcp_locks.stores",
    "mcp_locks.observe",
    "mcp_locks.settings",
    "starlette",
    "uvicorn",
    "psycopg",
    "prometheus_client",
)

#: What ``mcp_locks`` offers: the clients, what they hand back or raise, and what embeds the server.
PUBLIC = {
    "LockClient",
    "SyncLockClient",
    "McpLockClient",
    "Lease",
    "LeaseLost",
    "LockError",
    "ERROR_TABLE",
    *(cls.__name__ for cls in mcp_locks.ERROR_TABLE.values()),
    "build_app",
    "Settings",
    "__version__",
}


def loaded_after(code: str) -> list[str]:
    """The modules a fresh interpreter holds once ``code`` has run."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    modules: list[str] = json.loads(done.stdout.splitlines()[-1])
    return modules


def server_modules_in(modules: list[str]) -> list[str]:
    return [m for m in modules if any(m == s or m.startswith(s + ".") for s in SERVER_MODULES)]


@pytest.mark.parametrize(
    "code",
    [
        "import mcp_locks.client",
        "from mcp_locks.client import LockClient, SyncLockClient, Lease, LeaseLost",
        "import mcp_locks",
        "from mcp_locks import LockClient, LockError, Locked",
    ],
)
def test_importing_the_client_or_the_package_loads_no_server_module(code: str) -> None:
    assert server_modules_in(loaded_after(code)) == []


def test_mcp_locks_version_runs_no_command_module_and_no_server_module() -> None:
    code = "from mcp_locks.cli.main import main\nmain(['--version'], standalone_mode=False)"
    modules = loaded_after(code)
    assert server_modules_in(modules) == []
    assert [m for m in modules if m.startswith(("mcp_locks.cli.remote", "mcp_locks.client", "httpx"))] == []


#: What ``mcp-locks hook`` must never load: the CLI framework, the event loop, the async HTTP client.
HOOK_FORBIDDEN = ("click", "asyncio", "anyio", "httpx2", "httpcore2", "stamina")
FIXTURES = ROOT / "tests" / "fixtures" / "hooks" / "claude-code"


def run_entry(args: list[str], stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``mcp-locks ARGS`` through the console script's ``main`` in a fresh interpreter; the process lives on
    after ``main`` (its SystemExit caught) to print its exit code and ``sys.modules`` as the last line."""
    code = (
        "import json, sys\n"
        f"sys.argv = ['mcp-locks', *{args!r}]\n"
        "from mcp_locks.cli.entry import main\n"
        "try:\n    main()\n    code = 0\n"
        "except SystemExit as e:\n    code = e.code\n"
        "print(json.dumps({'exit': code, 'modules': sorted(sys.modules)}))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], input=stdin, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def hook_payload(name: str, root: Path) -> str:
    """A recorded Claude Code payload moved into ``root``."""
    return json.dumps(json.loads((FIXTURES / f"{name}.json").read_text())["payload"]).replace(
        "/home/dev/project", str(root)
    )


def test_importing_the_error_decoder_loads_no_http_library() -> None:
    modules = loaded_after("import mcp_locks.client.errors")
    assert [m for m in modules if m.split(".")[0] in ("httpx2", "httpcore2", "anyio", "asyncio")] == []
    assert "mcp_locks.client.rest" not in modules


@pytest.mark.parametrize("name", ["pretooluse_read", "pretooluse_write"])
def test_the_hook_loads_no_click_no_event_loop_and_no_async_http_client(name: str, tmp_path: Path) -> None:
    root = tmp_path / "project"
    (root / ".git").mkdir(parents=True)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there: a write is answered "unreachable", after a real connection attempt
    (root / ".mcp-locks.toml").write_text(f'url = "http://127.0.0.1:{port}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_LOCKS_")}
    env |= {"MCP_LOCKS_HOOK_STATE": str(tmp_path / "state"), "MCP_LOCKS_KEY": "mlk_000000000000_" + "A" * 43}
    done = run_entry(["hook", "claude-code"], hook_payload(name, root), env)
    answer, last = done.stdout.splitlines()[0], json.loads(done.stdout.splitlines()[-1])
    assert last["exit"] == 0, done.stderr
    if name == "pretooluse_write":
        assert "UNAVAILABLE" in json.loads(answer)["hookSpecificOutput"]["permissionDecisionReason"]
        assert "mcp_locks.hooks.http" in last["modules"]
    else:
        assert json.loads(answer) == {}
    assert [m for m in last["modules"] if m.split(".")[0] in HOOK_FORBIDDEN] == []
    assert server_modules_in(last["modules"]) == []


@pytest.mark.parametrize("args", [["hook"], ["hook", "vim"], ["hook", "claude-code", "extra"], ["hook", "--help"]])
def test_any_other_hook_command_line_is_clicks_own_answer(args: list[str]) -> None:
    direct = f"import sys\nsys.argv = ['mcp-locks', *{args!r}]\nfrom mcp_locks.cli.main import main\nmain()\n"
    clicks = subprocess.run([sys.executable, "-c", direct], cwd=ROOT, capture_output=True, text=True, timeout=60)
    ours = run_entry(args)
    assert ours.stderr == clicks.stderr
    assert ours.stdout.splitlines()[:-1] == clicks.stdout.splitlines()
    assert json.loads(ours.stdout.splitlines()[-1])["exit"] == clicks.returncode == (0 if "--help" in args else 2)


def test_the_console_script_is_the_entry_point_that_runs_the_hook_without_click() -> None:
    with open(ROOT / "pyproject.toml", "rb") as f:
        assert tomllib.load(f)["project"]["scripts"] == {"mcp-locks": "mcp_locks.cli.entry:main"}


def test_the_client_commands_load_no_server_module() -> None:
    from mcp_locks.cli.main import COMMANDS

    remote = [name for name, where in COMMANDS.items() if where.startswith("mcp_locks.cli.remote.")]
    assert set(remote) == {"exec", "status", "locks", "audit", "webhooks"}
    code = (
        "import click\nfrom mcp_locks.cli.main import main\n"
        f"ctx = click.Context(main)\nfor name in {remote!r}: main.get_command(ctx, name)"
    )
    assert server_modules_in(loaded_after(code)) == []


def test_every_command_in_the_table_is_a_click_command_of_that_name() -> None:
    import click

    from mcp_locks.cli.main import COMMANDS, main

    ctx = click.Context(main)
    for name in COMMANDS:
        command = main.get_command(ctx, name)
        assert isinstance(command, click.Command)
        assert command.name == name


def test_the_package_names_exactly_its_public_surface_and_each_name_resolves() -> None:
    assert set(mcp_locks.__all__) == PUBLIC
    assert len(mcp_locks.__all__) == len(PUBLIC)
    for name in mcp_locks.__all__:
        assert getattr(mcp_locks, name) is not None
    assert set(dir(mcp_locks)) == PUBLIC


def test_the_package_hands_out_the_clients_own_classes() -> None:
    assert mcp_locks.Lease is mcp_locks.client.Lease
    assert mcp_locks.LeaseLost is mcp_locks.client.LeaseLost
    assert mcp_locks.LockClient is mcp_locks.client.LockClient
    assert mcp_locks.SyncLockClient is mcp_locks.client.SyncLockClient
    assert mcp_locks.McpLockClient is mcp_locks.client.McpLockClient


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = mcp_locks.Nope  # type: ignore[attr-defined]


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared(pyproject: Path = ROOT / "pyproject.toml") -> set[str]:
    """The distributions [project] dependencies declare, with those their extras (``psycopg[pool]``) bring."""
    with open(pyproject, "rb") as f:
        requirements = tomllib.load(f)["project"]["dependencies"]
    out: set[str] = set()
    for req in requirements:
        m = re.match(r"\s*([A-Za-z0-9._-]+)\s*(?:\[([^\]]*)\])?", req)
        assert m is not None, req
        name, extras = m.group(1), [e.strip() for e in (m.group(2) or "").split(",") if e.strip()]
        out.add(_normal(name))
        for dep in importlib.metadata.requires(name) or []:
            for extra in extras:
                if re.search(rf"extra\s*==\s*['\"]{re.escape(extra)}['\"]", dep):
                    out.add(_normal(re.match(r"[A-Za-z0-9._-]+", dep).group(0)))  # type: ignore[union-attr]
    return out


def _imported_top_level_modules() -> dict[str, str]:
    """Each top-level module the package's code imports (typing-only imports too), with a file that does."""
    found: dict[str, str] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(PACKAGE.parent)))
    return found


def test_every_distribution_the_package_imports_is_declared_in_its_dependencies() -> None:
    owners = importlib.metadata.packages_distributions()
    declared = _declared()
    undeclared = []
    for module, where in sorted(_imported_top_level_modules().items()):
        if module in sys.stdlib_module_names or module == "mcp_locks":
            continue
        distributions = {_normal(d) for d in owners.get(module, [])}
        assert distributions, f"{module} (imported in {where}) is not installed"
        if not distributions & declared:
            undeclared.append(f"{module} ({'/'.join(sorted(distributions))}, imported in {where})")
    assert undeclared == []

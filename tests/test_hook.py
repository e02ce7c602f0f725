"""`mcp-locks hook HOST`: the hosts' recorded payloads, run as the hosts run them, against a real server."""

from __future__ import annotations

import fcntl
import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anyio.to_thread
import httpx2
import pytest

from mcp_locks import Settings, build_app
from mcp_locks.core.errors import Internal, InvalidArgument, Locked, Unauthenticated, Unavailable
from mcp_locks.engine.lock_service import LockService
from mcp_locks.hooks import messages
from mcp_locks.hooks.config import ConfigError, HookConfig, find_project_root, load_config
from mcp_locks.hooks.http import CALL_TIMEOUT, Http
from mcp_locks.hooks.paths import PayloadError, written_paths
from mcp_locks.hooks.payload import session_of
from mcp_locks.hooks.remote import connect
from mcp_locks.hooks.state import session_state
from mcp_locks.stores.base import MemoryStore

from .hooks_e2e import all_fixtures, fixture, hook_env, payload, project, run_hook
from .servers import KeyedServer, free_socket, keyed_server, serve_app

pytestmark = pytest.mark.anyio

SESSION_A = "11111111-aaaa-4aaa-8aaa-111111111111"
SESSION_B = "22222222-bbbb-4bbb-8bbb-222222222222"


def shaped(tag: str) -> str:
    """A string with the shape of an mcp-locks key that no server knows (``tag``: 1 to 12 hex digits)."""
    return f"mlk_{tag:0>12}_" + "A" * 43


FILE_KEY, ENV_KEY, UNKNOWN_KEY = shaped("f11e"), shaped("e1"), shaped("bad")


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[KeyedServer]:
    async with keyed_server(tmp_path / "server", agent="alice") as s:
        yield s


def closed_port_url() -> str:
    """A loopback address where nothing listens (the port was free a moment ago)."""
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"


async def held(server: KeyedServer) -> list[tuple[str, str]]:
    """Every held lock of the workspace as (node id, owner)."""
    return [(lk.node_id, lk.owner) for lk in (await server.service.list_locks("default")).locks]


def deny_reason(answer: dict[str, object]) -> str:
    out = answer["hookSpecificOutput"]
    assert isinstance(out, dict), answer
    assert out["permissionDecision"] == "deny", answer
    return str(out["permissionDecisionReason"])


# ---------------------------------------------------------------------- parsing, config (no server)


@pytest.mark.parametrize(("host", "name"), all_fixtures())
def test_every_fixture_yields_exactly_its_expected_paths(host: str, name: str) -> None:
    recorded = fixture(host, name)
    assert written_paths(host, recorded["payload"]) == recorded["expect_paths"]


def test_a_subagent_and_each_host_get_a_session_label_of_their_own() -> None:
    main = session_of("claude-code", fixture("claude-code", "pretooluse_write")["payload"])
    sub = session_of("claude-code", fixture("claude-code", "pretooluse_write_subagent")["payload"])
    ended = session_of("claude-code", fixture("claude-code", "subagent_stop")["payload"])
    assert main == "claude-5f0c2a9e-8b1d-4c3e-9a7f-2d6b1e4c8a10"
    assert sub == ended == main + "-a4d2c8f1e0b3a297"
    cursor = fixture("cursor", "pretooluse_write")["payload"]
    assert session_of("cursor", cursor) == session_of("cursor", fixture("cursor", "session_end")["payload"])
    long = session_of("codex", {"session_id": "x" * 200 + "/../é"})
    assert len(long) == 64
    assert long.startswith("codex-xxx")


def test_a_patch_without_files_and_an_edit_without_a_path_are_malformed() -> None:
    patch = {"tool_name": "apply_patch", "tool_input": {"command": "*** Begin Patch\n*** End Patch"}, "cwd": "/p"}
    with pytest.raises(PayloadError, match="names no file"):
        written_paths("codex", patch)
    with pytest.raises(PayloadError, match="no file_path or notebook_path"):
        written_paths("claude-code", {"tool_name": "Write", "tool_input": {"content": "x"}})


def test_an_indented_codex_patch_header_still_names_its_file(tmp_path: Path) -> None:
    recorded = payload("codex", "pretooluse_apply_patch", tmp_path)
    patch = recorded["tool_input"]["command"]
    recorded["tool_input"]["command"] = "\n".join(
        "  " + line if line.startswith("***") else line for line in patch.splitlines()
    )
    expected = [
        p.replace("/home/dev/project", str(tmp_path))
        for p in fixture("codex", "pretooluse_apply_patch")["expect_paths"]
    ]
    assert written_paths("codex", recorded) == expected


def test_a_dot_dot_after_a_symlinked_cwd_is_resolved_from_the_links_target(tmp_path: Path) -> None:
    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real" / "sub")
    call = {"tool_name": "Write", "tool_input": {"file_path": "../x.py"}, "cwd": str(tmp_path / "link")}
    assert written_paths("claude-code", call) == [str(tmp_path / "real" / "x.py")]


def test_a_key_env_outside_mcp_locks_and_a_key_not_shaped_like_one_are_refused_without_showing_it(
    tmp_path: Path,
) -> None:
    root = project(tmp_path, "http://attacker.example", key_env="AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ConfigError, match="MCP_LOCKS_") as e:
        load_config(root, {"AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG"})
    assert (e.value.code, e.value.details["field"]) == ("INVALID_ARGUMENT", "key_env")
    assert "wJalrXUtnFEMI" not in e.value.text()
    project(tmp_path, "http://attacker.example", key_env="MCP_LOCKS_TEAM_KEY")
    with pytest.raises(ConfigError, match="not an mcp-locks key") as e:
        load_config(root, {"MCP_LOCKS_TEAM_KEY": "ghp_a_github_token"})
    assert "ghp_a_github_token" not in e.value.text()
    with pytest.raises(ConfigError, match="from MCP_LOCKS_KEY is not an mcp-locks key") as e:
        load_config(root, {"MCP_LOCKS_KEY": "hunter2"})
    assert "hunter2" not in e.value.text()
    project(tmp_path, "http://attacker.example", key_file="~/.ssh/id_ed25519")
    (tmp_path / "home" / ".ssh").mkdir(parents=True)
    (tmp_path / "home" / ".ssh" / "id_ed25519").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nb3Bl\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(tmp_path / "home"))
        with pytest.raises(ConfigError, match="not an mcp-locks key") as e:
            load_config(root, {})
    assert "OPENSSH" not in e.value.text()
    project(tmp_path, "http://127.0.0.1:1", key_file="me.key")
    (root / "me.key").write_text(FILE_KEY + "\r\n")  # one trailing newline is fine
    cfg = load_config(root, {})
    assert cfg is not None
    assert cfg.key == FILE_KEY


def test_no_exception_text_reaches_a_reason_and_the_transport_never_quotes_a_header(tmp_path: Path) -> None:
    reason = messages.failed(None, ValueError("Invalid header value b'Bearer mlk_secret'")).reason
    assert "mlk_secret" not in reason
    assert "ValueError" in reason
    http = Http(closed_port_url(), "mlk_secret\nsecond line")
    with pytest.raises(InvalidArgument) as e:
        http.request("GET", "/v1/me")
    assert "mlk_secret" not in e.value.text()
    assert "second line" not in e.value.text()


def test_ending_a_session_keeps_the_file_its_hook_processes_take_turns_on(tmp_path: Path) -> None:
    env = {"MCP_LOCKS_HOOK_STATE": str(tmp_path / "state")}
    with session_state("http://x", "default", "s1", env) as st:
        st.end()
        assert st.turn_file is not None
        fd = os.open(st.turn_file, os.O_RDWR | os.O_CREAT, 0o600)  # another process of the session, arriving now
        try:
            with pytest.raises(BlockingIOError):  # it waits for its turn: the one held is still the file there
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)


def test_the_config_refuses_a_key_in_the_file_and_unknown_settings(tmp_path: Path) -> None:
    root = project(tmp_path, "http://127.0.0.1:1")
    (root / ".mcp-locks.toml").write_text('key = "mlk_secret"\n')
    with pytest.raises(ConfigError, match="never goes in this file") as e:
        load_config(root, {})
    assert "mlk_secret" not in e.value.text()
    (root / ".mcp-locks.toml").write_text('polcy = "check"\n[gitguard]\nanything = 1\n')
    with pytest.raises(ConfigError, match="unknown setting 'polcy'"):
        load_config(root, {})


def test_the_environment_key_wins_over_the_files_key_file_and_the_root_falls_back_to_git(tmp_path: Path) -> None:
    root = project(tmp_path, "http://127.0.0.1:1", key_file="alice.key", policy="check", lease=60)
    (root / "alice.key").write_text(FILE_KEY + "\n")
    (root / "src").mkdir()
    cfg = load_config(root / "src", {})
    assert cfg is not None
    assert (cfg.root, cfg.key, cfg.key_source) == (root, FILE_KEY, "key_file alice.key")
    assert (cfg.policy, cfg.fail, cfg.lease, cfg.workspace) == ("check", "closed", 60.0, "default")
    cfg = load_config(root / "src", {"MCP_LOCKS_KEY": ENV_KEY, "MCP_LOCKS_URL": "http://127.0.0.1:2/"})
    assert cfg is not None
    assert (cfg.key, cfg.key_source, cfg.url) == (ENV_KEY, "MCP_LOCKS_KEY", "http://127.0.0.1:2")
    (root / ".mcp-locks.toml").unlink()
    found = find_project_root(root / "src")
    assert found is not None
    assert (found.path, found.config_file) == (root, None)
    assert find_project_root(Path("/")) is None


def test_importing_the_hook_command_loads_no_server_module_nor_the_http_client() -> None:
    code = (
        "import sys, mcp_locks.cli.main, mcp_locks.cli.hook\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('starlette', 'uvicorn', 'psycopg', 'httpx2', 'anyio')"
        " or m.startswith(('mcp_locks.faces', 'mcp_locks.engine', 'mcp_locks.stores', 'mcp_locks.observe',"
        " 'mcp_locks.settings'))]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout


# ---------------------------------------------------------------------- policy "lock" (the default)


async def test_two_claude_code_sessions_of_one_key_exclude_each_other_until_the_first_ends(
    server: KeyedServer, tmp_path: Path
) -> None:
    root = project(tmp_path, server.url)
    env = hook_env(tmp_path / "state", server.key)
    first = await run_hook("claude-code", payload("claude-code", "pretooluse_write", root, session_id=SESSION_A), env)
    assert (first.exit_code, first.answer) == (0, {})
    assert await held(server) == [("src/app/config.py", f"alice/claude-{SESSION_A}")]

    second = await run_hook("claude-code", payload("claude-code", "pretooluse_write", root, session_id=SESSION_B), env)
    assert second.exit_code == 0
    reason = deny_reason(second.answer)
    assert f"'src/app/config.py' is locked by alice/claude-{SESSION_A} until 2027-01-15 08:15:00 UTC" in reason
    assert '(their note: "editing with claude-code (mcp-locks hook)")' in reason
    assert "lock_file tool" in reason
    assert f'agent "claude-{SESSION_B}"' in reason
    print("\nCLAUDE CODE DENY:", reason)  # the docs quote this text

    end = await run_hook("claude-code", payload("claude-code", "session_end", root, session_id=SESSION_A), env)
    assert (end.exit_code, end.answer) == (0, {})
    assert "released 1 of 1" in end.stderr
    assert await held(server) == []
    again = await run_hook("claude-code", payload("claude-code", "pretooluse_write", root, session_id=SESSION_B), env)
    assert again.answer == {}
    assert await held(server) == [("src/app/config.py", f"alice/claude-{SESSION_B}")]


async def test_a_sessions_repeated_edits_renew_its_lease_and_an_expired_lease_is_taken_again(
    server: KeyedServer, tmp_path: Path
) -> None:
    root = project(tmp_path, server.url, lease=60)
    env = hook_env(tmp_path / "state", server.key)
    edit = payload("claude-code", "pretooluse_edit", root, session_id=SESSION_A)
    assert (await run_hook("claude-code", edit, env)).answer == {}
    (lock,) = (await server.service.list_locks("default")).locks
    server.clock.advance(30)
    assert (await run_hook("claude-code", edit, env)).answer == {}  # never blocked by itself
    (renewed,) = (await server.service.list_locks("default")).locks
    assert renewed.lock_id == lock.lock_id
    assert (renewed.expires_at - lock.expires_at).total_seconds() == 30
    files = list((tmp_path / "state").glob("*.json"))
    assert len(files) == 1
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700

    server.clock.advance(120)  # the lease ran out: the next edit takes a new one
    assert (await run_hook("claude-code", edit, env)).answer == {}
    (retaken,) = (await server.service.list_locks("default")).locks
    assert retaken.lock_id != lock.lock_id
    assert retaken.owner == f"alice/claude-{SESSION_A}"


async def test_a_subagent_is_a_session_of_its_own_released_by_subagent_stop(
    server: KeyedServer, tmp_path: Path
) -> None:
    root = project(tmp_path, server.url)
    env = hook_env(tmp_path / "state", server.key)
    sub = await run_hook("claude-code", payload("claude-code", "pretooluse_write_subagent", root), env)
    assert sub.answer == {}
    main = payload("claude-code", "pretooluse_write_subagent", root, agent_id=None, agent_type=None)
    refused = deny_reason((await run_hook("claude-code", main, env)).answer)
    assert "locked by alice/claude-5f0c2a9e-8b1d-4c3e-9a7f-2d6b1e4c8a10-a4d2c8f1e0b3a297" in refused
    stop = await run_hook("claude-code", payload("claude-code", "subagent_stop", root), env)
    assert (stop.answer, await held(server)) == ({}, [])
    assert (await run_hook("claude-code", main, env)).answer == {}


async def test_a_codex_patch_over_files_one_held_by_another_session_is_denied_whole_and_leaves_no_lease(
    server: KeyedServer, tmp_path: Path
) -> None:
    root = project(tmp_path, server.url)
    env = hook_env(tmp_path / "state", server.key)
    await server.service.lock(None, "src/app/server.py", note="fixing the port", agent="bob")
    patch = payload("codex", "pretooluse_apply_patch", root)
    run = await run_hook("codex", patch, env)
    reason = deny_reason(run.answer)
    assert "'src/app/server.py' is locked by bob until" in reason
    assert '"fixing the port"' in reason
    assert "all 5 files of this call were left alone" in reason
    print("\nCODEX DENY:", reason)
    assert await held(server) == [("src/app/server.py", "bob")]  # lock_files is all or nothing

    absolute = payload("codex", "pretooluse_apply_patch_absolute", root)
    assert (await run_hook("codex", absolute, env)).answer == {}
    assert sorted(n for n, _ in await held(server)) == [
        "notes/a.txt",
        "notes/new.txt",
        "scratch/f1.txt",
        "src/app/server.py",
    ]


async def test_a_lock_the_session_took_itself_with_lock_file_and_its_session_name_does_not_block_it(
    server: KeyedServer, tmp_path: Path
) -> None:
    root = project(tmp_path, server.url)
    env = hook_env(tmp_path / "state", server.key)
    headers = {"Authorization": f"Bearer {server.key}"}
    async with httpx2.AsyncClient(base_url=server.url, headers=headers) as http:
        body = {"mode": "write", "timeout": 60, "agent": f"claude-{SESSION_A}"}
        (await http.post("/v1/workspaces/default/nodes/src/app/config.py/lock", json=body)).raise_for_status()
    mine = payload("claude-code", "pretooluse_write", root, session_id=SESSION_A)
    assert (await run_hook("claude-code", mine, env)).answer == {}
    theirs = payload("claude-code", "pretooluse_write", root, session_id=SESSION_B)
    assert "locked by alice/claude-1111" in deny_reason((await run_hook("claude-code", theirs, env)).answer)


async def test_a_path_outside_the_root_is_allowed_untouched(server: KeyedServer, tmp_path: Path) -> None:
    root = project(tmp_path, server.url)
    env = hook_env(tmp_path / "state", server.key)
    outside = payload("gemini", "beforetool_write_file", root, tool_input={"file_path": "/etc/elsewhere.conf"})
    assert (await run_hook("gemini", outside, env)).answer == {}
    assert await held(server) == []


async def test_another_keys_lock_taken_with_this_sessions_label_is_not_this_sessions(
    server: KeyedServer, tmp_path: Path
) -> None:
    root = project(tmp_path, server.url)
    env = hook_env(tmp_path / "state", server.key)
    bob, _ = await server.service.create_key("bob", ["default"])
    async with httpx2.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {bob}"}) as http:
        body = {"mode": "write", "timeout": 60, "agent": f"claude-{SESSION_A}"}
        (await http.post("/v1/workspaces/default/nodes/src/app/config.py/lock", json=body)).raise_for_status()
    mine = payload("claude-code", "pretooluse_write", root, session_id=SESSION_A)
    reason = deny_reason((await run_hook("claude-code", mine, env)).answer)
    assert f"locked by bob/claude-{SESSION_A}" in reason
    assert await held(server) == [("src/app/config.py", f"bob/claude-{SESSION_A}")]


async def test_on_a_server_without_keys_a_sessions_own_lock_does_not_block_it(tmp_path: Path) -> None:
    service = LockService(MemoryStore())
    app = build_app(Settings(store="memory", data_dir=tmp_path / "server", insecure_no_auth=True), service)
    async with serve_app(app) as url:
        root = project(tmp_path, url)
        env = hook_env(tmp_path / "state", None)
        await service.lock(None, "src/app/config.py", agent=f"claude-{SESSION_A}")  # lock_file, agent = session
        mine = payload("claude-code", "pretooluse_write", root, session_id=SESSION_A)
        assert (await run_hook("claude-code", mine, env)).answer == {}
        theirs = payload("claude-code", "pretooluse_write", root, session_id=SESSION_B)
        reason = deny_reason((await run_hook("claude-code", theirs, env)).answer)
        assert f"locked by claude-{SESSION_A} until" in reason


async def test_the_project_is_found_from_the_written_file_not_the_cwd_and_its_session_end_releases_from_anywhere(
    server: KeyedServer, tmp_path: Path
) -> None:
    root = project(tmp_path, server.url)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = hook_env(tmp_path / "state", server.key)
    away = payload("claude-code", "pretooluse_write", root, session_id=SESSION_A, cwd=str(elsewhere))
    assert (await run_hook("claude-code", away, env)).answer == {}
    assert await held(server) == [("src/app/config.py", f"alice/claude-{SESSION_A}")]
    end = payload("claude-code", "session_end", root, session_id=SESSION_A, cwd=str(elsewhere))
    ended = await run_hook("claude-code", end, env)
    assert (ended.answer, await held(server)) == ({}, [])
    assert "released 1 of 1" in ended.stderr


async def test_a_patch_over_two_projects_is_refused_saying_to_split_it(server: KeyedServer, tmp_path: Path) -> None:
    first = project(tmp_path / "one", server.url)
    second = project(tmp_path / "two", server.url)
    env = hook_env(tmp_path / "state", server.key)
    patch = f"*** Begin Patch\n*** Add File: {first}/a.py\n+x\n*** Add File: {second}/b.py\n+y\n*** End Patch"
    call = payload("codex", "pretooluse_apply_patch", first, tool_input={"command": patch})
    reason = deny_reason((await run_hook("codex", call, env)).answer)
    assert "2 projects" in reason
    assert "one call per project" in reason
    assert await held(server) == []


# ---------------------------------------------------------------------- policies "check" and "warn"


async def test_check_takes_nothing_and_denies_only_a_held_path(server: KeyedServer, tmp_path: Path) -> None:
    root = project(tmp_path, server.url, policy="check")
    env = hook_env(tmp_path / "state", server.key)
    free = payload("claude-code", "pretooluse_edit", root)
    assert (await run_hook("claude-code", free, env)).answer == {}
    assert await held(server) == []
    await server.service.lock(None, "src/app/config.py", agent="bob")
    busy = payload("claude-code", "pretooluse_write", root)
    reason = deny_reason((await run_hook("claude-code", busy, env)).answer)
    assert "'src/app/config.py' is locked by bob" in reason
    assert 'policy "check"' in reason
    assert await held(server) == [("src/app/config.py", "bob")]


async def test_warn_allows_a_held_path_with_the_conflict_as_context(server: KeyedServer, tmp_path: Path) -> None:
    root = project(tmp_path, server.url, policy="warn")
    env = hook_env(tmp_path / "state", server.key)
    await server.service.lock(None, "src/app/config.py", agent="bob")
    claude = (await run_hook("claude-code", payload("claude-code", "pretooluse_write", root), env)).answer
    context = claude["hookSpecificOutput"]["additionalContext"]
    assert "permissionDecision" not in claude["hookSpecificOutput"]
    assert "'src/app/config.py' is locked by bob" in context
    assert "goes ahead" in context
    assert "locked by bob" in claude["systemMessage"]
    gemini = (await run_hook("gemini", payload("gemini", "beforetool_write_file", root), env)).answer
    assert set(gemini) == {"systemMessage"}
    assert "locked by bob" in gemini["systemMessage"]
    cursor = await run_hook("cursor", payload("cursor", "pretooluse_write", root), env)
    assert cursor.answer == {"permission": "allow"}
    assert "locked by bob" in cursor.stderr
    assert await held(server) == [("src/app/config.py", "bob")]


# ---------------------------------------------------------------------- the hosts' deny formats


async def test_gemini_and_cursor_are_denied_in_their_own_formats(server: KeyedServer, tmp_path: Path) -> None:
    root = project(tmp_path, server.url)
    env = hook_env(tmp_path / "state", server.key)
    await server.service.lock(None, "src/app/config.py", agent="bob")
    gemini = await run_hook("gemini", payload("gemini", "beforetool_write_file", root), env)
    assert set(gemini.answer) == {"decision", "reason"}
    assert gemini.answer["decision"] == "deny"
    assert "'src/app/config.py' is locked by bob" in gemini.answer["reason"]
    print("\nGEMINI DENY:", json.dumps(gemini.answer))
    cursor = await run_hook("cursor", payload("cursor", "pretooluse_write", root), env)
    assert set(cursor.answer) == {"permission", "user_message", "agent_message"}
    assert cursor.answer["permission"] == "deny"
    assert "locked by bob" in cursor.answer["user_message"]
    assert "lock_file tool" in cursor.answer["agent_message"]
    print("\nCURSOR DENY:", json.dumps(cursor.answer))
    ended = await run_hook("cursor", payload("cursor", "session_end", root), env)
    assert (ended.exit_code, ended.answer) == (0, {})


# ---------------------------------------------------------------------- failures


async def test_an_unreachable_server_denies_under_fail_closed_and_warns_under_fail_open(tmp_path: Path) -> None:
    url = closed_port_url()
    env = hook_env(tmp_path / "state", UNKNOWN_KEY)
    closed = project(tmp_path, url)
    reason = deny_reason(
        (await run_hook("claude-code", payload("claude-code", "pretooluse_write", closed), env)).answer
    )
    assert "UNAVAILABLE" in reason
    assert "`mcp-locks serve`" in reason
    assert 'fail = "open"' in reason
    print("\nUNREACHABLE DENY:", reason)
    project(tmp_path, url, fail="open")
    run = await run_hook("codex", payload("codex", "pretooluse_apply_patch", closed), env)
    context = run.answer["hookSpecificOutput"]["additionalContext"]
    assert "NOT checked" in context
    assert "permissionDecision" not in run.answer["hookSpecificOutput"]


async def test_a_refused_key_denies_and_says_how_to_set_one(server: KeyedServer, tmp_path: Path) -> None:
    root = project(tmp_path, server.url)
    env = hook_env(tmp_path / "state", UNKNOWN_KEY)
    reason = deny_reason((await run_hook("claude-code", payload("claude-code", "pretooluse_write", root), env)).answer)
    assert "UNAUTHENTICATED" in reason
    assert "MCP_LOCKS_KEY" in reason
    assert "mcp-locks keys create" in reason
    assert UNKNOWN_KEY not in reason


async def test_a_malformed_payload_is_denied_with_a_reason_in_each_hosts_format(tmp_path: Path) -> None:
    root = project(tmp_path, closed_port_url())
    env = hook_env(tmp_path / "state", None)
    run = await run_hook("claude-code", "{not json", env, cwd=root)
    assert run.exit_code == 0
    assert "not JSON" in deny_reason(run.answer)
    assert "Traceback" not in run.stderr
    no_path = payload("gemini", "beforetool_replace", root, tool_input={"old_string": "a"})
    gemini = (await run_hook("gemini", no_path, env)).answer
    assert gemini["decision"] == "deny"
    assert "names no file" in gemini["reason"]
    no_session = payload("cursor", "pretooluse_write", root, conversation_id=None)
    cursor = (await run_hook("cursor", no_session, env)).answer
    assert cursor["permission"] == "deny"
    assert "conversation_id" in cursor["agent_message"]


async def test_read_only_and_unknown_tools_are_allowed_without_asking_the_server(tmp_path: Path) -> None:
    root = project(tmp_path, closed_port_url())  # fail closed: asking would deny
    env = hook_env(tmp_path / "state", None)
    for host, name in [
        ("claude-code", "pretooluse_read"),
        ("claude-code", "pretooluse_bash"),
        ("claude-code", "pretooluse_mcp_tool"),
        ("codex", "pretooluse_bash"),
        ("gemini", "beforetool_read_file"),
        ("cursor", "pretooluse_shell"),
    ]:
        run = await run_hook(host, payload(host, name, root), env)
        assert run.answer == ({"permission": "allow"} if host == "cursor" else {}), (host, name, run.stdout)
    for host, name in [("claude-code", "stop"), ("codex", "stop"), ("cursor", "stop"), ("cursor", "after_file_edit")]:
        assert (await run_hook(host, payload(host, name, root), env)).answer == {}


async def test_a_key_file_of_two_lines_is_refused_without_echoing_the_key(server: KeyedServer, tmp_path: Path) -> None:
    root = project(tmp_path, server.url, key_file="alice.key")
    (root / "alice.key").write_text(server.key + "\nmy second key\n")
    run = await run_hook(
        "claude-code", payload("claude-code", "pretooluse_write", root), hook_env(tmp_path / "s", None)
    )
    reason = deny_reason(run.answer)
    assert "INVALID_ARGUMENT" in reason
    assert "not an mcp-locks key" in reason
    assert server.key not in run.stdout + run.stderr
    assert await held(server) == []


async def test_under_warn_an_unreadable_call_and_a_missing_key_are_allowed_with_a_warning(tmp_path: Path) -> None:
    root = project(tmp_path, closed_port_url(), policy="warn", key_env="MCP_LOCKS_TEAM_KEY")
    env = hook_env(tmp_path / "state", None)
    no_path = payload("gemini", "beforetool_replace", root, tool_input={"old_string": "a"})
    gemini = (await run_hook("gemini", no_path, env)).answer
    assert set(gemini) == {"systemMessage"}
    assert "names no file" in gemini["systemMessage"]
    claude = (await run_hook("claude-code", payload("claude-code", "pretooluse_write", root), env)).answer
    assert "permissionDecision" not in claude["hookSpecificOutput"]
    assert "MCP_LOCKS_TEAM_KEY" in claude["hookSpecificOutput"]["additionalContext"]


async def test_a_missing_key_is_allowed_under_fail_open_and_refused_with_the_how_to_under_fail_closed(
    tmp_path: Path,
) -> None:
    env = hook_env(tmp_path / "state", None)
    root = project(tmp_path, closed_port_url(), fail="open", key_env="MCP_LOCKS_TEAM_KEY")
    opened = (await run_hook("claude-code", payload("claude-code", "pretooluse_write", root), env)).answer
    assert "NOT checked" in opened["hookSpecificOutput"]["additionalContext"]
    assert "permissionDecision" not in opened["hookSpecificOutput"]
    project(tmp_path, closed_port_url(), key_env="MCP_LOCKS_TEAM_KEY")
    reason = deny_reason((await run_hook("claude-code", payload("claude-code", "pretooluse_write", root), env)).answer)
    assert "INVALID_ARGUMENT" in reason
    assert "export MCP_LOCKS_TEAM_KEY=mlk_..." in reason


async def test_a_deny_with_non_ascii_text_is_printed_on_a_cp1252_stdout(server: KeyedServer, tmp_path: Path) -> None:
    root = project(tmp_path, server.url)
    env = hook_env(tmp_path / "state", server.key, PYTHONIOENCODING="cp1252")
    await server.service.lock(None, "src/app/config.py", note="déjà vu ☃ 編集中", agent="bob")
    run = await run_hook("claude-code", payload("claude-code", "pretooluse_write", root), env)
    assert run.exit_code == 0, run.stderr
    assert "déjà vu ☃ 編集中" in deny_reason(run.answer)


# ---------------------------------------------------------------------- the one-shot transport (hooks/http.py)


def cfg_for(url: str, key: str | None, tmp_path: Path) -> HookConfig:
    cfg = load_config(project(tmp_path, url), {"MCP_LOCKS_KEY": key} if key else {})
    assert cfg is not None
    return cfg


async def test_the_transport_answers_the_rest_apis_dicts_and_the_servers_own_refusals(
    server: KeyedServer, tmp_path: Path
) -> None:
    await server.service.lock(None, "held.py", note="mine", agent="bob")
    cfg = cfg_for(server.url, server.key, tmp_path)
    refused_cfg = cfg_for(server.url, UNKNOWN_KEY, tmp_path)
    # The transport blocks: it runs in a thread, so the server (on this test's event loop) can answer it.
    await anyio.to_thread.run_sync(session_calls, cfg, refused_cfg)


def session_calls(cfg: HookConfig, refused_cfg: HookConfig) -> None:
    with connect(cfg, "s1") as remote:
        (grant,) = remote.take(["a.py"], 60, "note")
        assert (grant["node_id"], grant["mode"]) == ("a.py", "write")
        assert remote.renew("a.py", grant["token"], 60) is not None
        assert remote.status("a.py")["holders"][0]["owner"] == "alice/s1"
        assert remote.me()["agent"] == "alice"
        page = remote.list_locks()
        assert sorted(lk["node_id"] for lk in page["locks"]) == ["a.py", "held.py"]
        assert page["next_cursor"] is None
        with pytest.raises(Locked) as refused:
            remote.take(["b.py", "held.py"], 60, "note")
        assert refused.value.details["holders"][0]["owner"] == "bob"
        assert refused.value.hint  # the server's hint, decoded by decode_error
        assert remote.release([grant["token"]]) == 1
        assert remote.renew("a.py", grant["token"], 60) is None  # gone: to be taken again
    with connect(refused_cfg, "s1") as remote, pytest.raises(Unauthenticated):
        remote.me()


def test_no_answer_a_proxys_page_and_junk_are_said_plainly(tmp_path: Path) -> None:
    silent = free_socket()  # accepts connections (the kernel does) and never answers
    try:
        http = Http(f"http://127.0.0.1:{silent.getsockname()[1]}", "k", timeout=0.2)
        with pytest.raises(Unavailable, match="did not answer"):
            http.request("GET", "/v1/me")
    finally:
        silent.close()
    answers = {"/gateway": (502, b"<html>bad gateway</html>"), "/teapot": (418, b"<html>no</html>"),
               "/junk": (200, b"not json")}  # fmt: skip

    class Canned(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = answers[self.path]
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    with ThreadingHTTPServer(("127.0.0.1", 0), Canned) as canned:
        thread = threading.Thread(target=canned.serve_forever, daemon=True)
        thread.start()
        try:
            http = Http(f"http://127.0.0.1:{canned.server_address[1]}", None)
            with pytest.raises(Unavailable, match="HTTP 502"):
                http.request("GET", "/gateway")
            with pytest.raises(Internal, match="answered 418 without an error body"):
                http.request("GET", "/teapot")
            with pytest.raises(Internal, match="not JSON"):
                http.request("GET", "/junk")
            http.close()
        finally:
            canned.shutdown()
            thread.join(10)
    assert CALL_TIMEOUT <= 10  # well inside every host's hook timeout

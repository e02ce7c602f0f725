"""Per-agent API keys: their shape, verification, storage and the `mcp-locks keys` commands."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import httpx
import pytest
from click.testing import CliRunner, Result

from mcp_locks.cli.main import main
from mcp_locks.core.keys import KEY_PREFIX, new_key, parse_key_id, verify_key
from mcp_locks.engine.lock_service import LockService
from mcp_locks.stores.base import Store
from mcp_locks.stores.sqlite import SqliteStore

T0 = 1_800_000_000.0


def test_a_key_has_a_recognisable_prefix_a_public_id_and_256_secret_bits() -> None:
    key, record = new_key("alice", ("default",), "agent", T0)
    assert key.startswith(KEY_PREFIX)
    assert parse_key_id(key) == record.key_id
    secret = key[len(KEY_PREFIX) + len(record.key_id) + 1 :]
    assert len(secret) == 43  # 32 bytes, base64url without padding
    assert key not in repr(record)
    assert record.digest not in key.encode()


def test_two_keys_never_repeat() -> None:
    keys = {new_key("a", ("default",), "agent", T0)[0] for _ in range(200)}
    assert len(keys) == 200


def test_the_right_key_proves_its_identity_and_a_wrong_one_does_not() -> None:
    key, record = new_key("alice", ("default", "team-a"), "agent", T0)
    ident = verify_key(key, record)
    assert ident is not None
    assert (ident.agent, ident.role, ident.workspaces) == ("alice", "agent", ("default", "team-a"))
    forged = key[:-1] + ("A" if key[-1] != "A" else "B")
    assert verify_key(forged, record) is None
    assert verify_key(key, None) is None


def test_a_revoked_key_stops_working() -> None:
    key, record = new_key("alice", ("default",), "agent", T0)
    assert verify_key(key, record._replace(revoked_at=T0 + 1)) is None


@pytest.mark.parametrize("junk", ["", "mlk_", "mlk_xyz_abc", "Bearer mlk_123", "mlk_0123456789ab_short", "x" * 500])
def test_junk_is_not_shaped_like_a_key(junk: str) -> None:
    assert parse_key_id(junk) is None


def test_an_agent_key_reaches_its_workspaces_and_an_admin_key_all() -> None:
    agent_key, agent = new_key("alice", ("team-a",), "agent", T0)
    admin_key, admin = new_key("root", (), "admin", T0)
    a = verify_key(agent_key, agent)
    r = verify_key(admin_key, admin)
    assert a is not None
    assert r is not None
    assert a.reaches("team-a")
    assert not a.reaches("team-b")
    assert r.reaches("anything")


@pytest.mark.anyio
async def test_stores_keep_key_records_and_revoke_them_once(store: Store) -> None:
    await store.open()
    try:
        key, record = new_key("alice", ("default",), "agent", T0)
        await store.put_key(record)
        got = await store.get_key(record.key_id)
        assert got == record
        assert verify_key(key, got) is not None
        assert [r.key_id for r in await store.list_keys()] == [record.key_id]
        assert await store.revoke_key(record.key_id, T0 + 5) is True
        assert await store.revoke_key(record.key_id, T0 + 6) is False
        revoked = await store.get_key(record.key_id)
        assert revoked is not None
        assert revoked.revoked_at == T0 + 5
        assert verify_key(key, revoked) is None
    finally:
        await store.close()


def _first_start(data_dir: Path) -> None:
    async def start() -> None:
        async with LockService(SqliteStore(data_dir / "locks.db")):
            pass

    anyio.run(start)


def create_key(data_dir: Path, agent: str, workspace: str) -> Result:
    """``mcp-locks keys create`` for one agent and one workspace."""
    return CliRunner().invoke(
        main, ["keys", "create", "--agent", agent, "--workspace", workspace, "--data-dir", str(data_dir)]
    )


def test_keys_create_prints_the_key_once_and_stores_only_a_digest(tmp_path: Path) -> None:
    _first_start(tmp_path)
    runner = CliRunner()
    created = create_key(tmp_path, "alice", "default")
    assert created.exit_code == 0, created.output
    key = created.stdout.strip()
    assert parse_key_id(key) is not None
    listed = runner.invoke(main, ["keys", "list", "--data-dir", str(tmp_path)])
    assert key not in listed.output
    assert "alice" in listed.output
    for f in tmp_path.iterdir():
        assert key.encode() not in f.read_bytes()


def test_keys_create_refuses_an_unknown_workspace(tmp_path: Path) -> None:
    _first_start(tmp_path)
    result = create_key(tmp_path, "alice", "ghost")
    assert result.exit_code != 0
    assert "workspaces create ghost" in result.output


def test_keys_revoke_marks_the_key_and_says_so_twice_over(tmp_path: Path) -> None:
    _first_start(tmp_path)
    runner = CliRunner()
    key = create_key(tmp_path, "bob", "default").stdout.strip()
    key_id = parse_key_id(key)
    assert key_id is not None
    assert runner.invoke(main, ["keys", "revoke", key_id, "--data-dir", str(tmp_path)]).exit_code == 0
    again = runner.invoke(main, ["keys", "revoke", key_id, "--data-dir", str(tmp_path)])
    assert again.exit_code != 0
    assert "revoked" in runner.invoke(main, ["keys", "list", "--all", "--data-dir", str(tmp_path)]).output


def test_keys_create_refuses_a_bad_agent_name_with_the_rule(tmp_path: Path) -> None:
    _first_start(tmp_path)
    result = create_key(tmp_path, "two words", "default")
    assert result.exit_code != 0
    assert "INVALID_ARGUMENT: agent must be 1-64 characters" in result.output


def test_a_new_key_works_against_a_running_server_at_once(tmp_path: Path) -> None:
    from mcp_locks import Settings, build_app

    from .servers import serve_in_thread

    _first_start(tmp_path)
    app = build_app(Settings(data_dir=tmp_path))
    with serve_in_thread(app) as url:
        key = create_key(tmp_path, "carol", "default").stdout.strip()
        me = httpx.get(f"{url}/v1/me", headers={"Authorization": f"Bearer {key}"}).json()
        key_id = parse_key_id(key)
        assert key_id is not None
        assert CliRunner().invoke(main, ["keys", "revoke", key_id, "--data-dir", str(tmp_path)]).exit_code == 0
        after = httpx.get(f"{url}/v1/me", headers={"Authorization": f"Bearer {key}"})
    assert (me["agent"], me["workspaces"]) == ("carol", ["default"])
    assert after.status_code == 401  # revoked by another process, refused on the very next request


def test_workspaces_delete_removes_an_idle_workspace_and_keys_lose_it(tmp_path: Path) -> None:
    _first_start(tmp_path)
    runner = CliRunner()
    d = ["--data-dir", str(tmp_path)]
    assert runner.invoke(main, ["workspaces", "create", "scratch", *d]).exit_code == 0
    assert create_key(tmp_path, "al", "scratch").exit_code == 0
    deleted = runner.invoke(main, ["workspaces", "delete", "scratch", *d])
    assert deleted.exit_code == 0, deleted.output
    assert "scratch" not in runner.invoke(main, ["workspaces", "list", *d]).output
    assert "\tal\tagent\t-\tactive" in runner.invoke(main, ["keys", "list", *d]).output
    again = runner.invoke(main, ["workspaces", "delete", "scratch", *d])
    assert "NOT_FOUND" in again.output
    assert "cannot be deleted" in runner.invoke(main, ["workspaces", "delete", "default", *d]).output


def test_workspaces_delete_refuses_a_workspace_with_live_locks(tmp_path: Path) -> None:
    async def lock_one() -> None:
        async with LockService(SqliteStore(tmp_path / "locks.db")) as svc:
            await svc.create_workspace("busy")
            await svc.lock("busy", "a.md", timeout=600)

    anyio.run(lock_one)
    result = CliRunner().invoke(main, ["workspaces", "delete", "busy", "--data-dir", str(tmp_path)])
    assert result.exit_code != 0
    assert "LOCKED: workspace 'busy' still holds 1 live lock(s)." in result.output


def test_workspaces_delete_refuses_while_a_server_uses_the_data_dir(tmp_path: Path) -> None:
    from mcp_locks.cli.datadir import claim_data_dir

    _first_start(tmp_path)
    claim = claim_data_dir(tmp_path)  # what a running server holds
    try:
        result = CliRunner().invoke(main, ["workspaces", "delete", "x", "--data-dir", str(tmp_path)])
        second = CliRunner().invoke(main, ["serve", "--port", "0", "--data-dir", str(tmp_path)])
    finally:
        os.close(claim)
    assert "a server is running" in result.output
    assert second.exit_code != 0
    assert f"another mcp-locks server (pid {os.getpid()})" in second.output


def test_serve_refuses_insecure_no_auth_off_loopback(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["serve", "--insecure-no-auth", "--host", "0.0.0.0", "--port", "0", "--data-dir", str(tmp_path)]
    )
    assert result.exit_code != 0
    assert "--insecure-no-auth is refused on 0.0.0.0" in result.output


def test_a_refusal_printed_by_the_cli_names_the_command_to_run_not_the_tool(tmp_path: Path) -> None:
    _first_start(tmp_path)
    result = create_key(tmp_path, "zed", "nope")
    assert result.exit_code != 0
    assert "NOT_FOUND: workspace 'nope' does not exist." in result.output
    assert "Create it first (mcp-locks workspaces create nope)." in result.output
    assert "{op:" not in result.output


@pytest.mark.anyio
async def test_stores_change_a_live_keys_workspaces_and_move_the_key_version(store: Store) -> None:
    await store.open()
    try:
        key, record = new_key("alice", ("default",), "agent", T0)
        await store.put_key(record)
        before = await store.keys_version()
        assert await store.set_key_workspaces(record.key_id, ("default", "team-a")) is True
        assert await store.keys_version() != before  # a server's key verifier forgets what it proved
        got = await store.get_key(record.key_id)
        assert got is not None
        assert got.workspaces == ("default", "team-a")
        assert verify_key(key, got) is not None
        await store.revoke_key(record.key_id, T0 + 1)
        assert await store.set_key_workspaces(record.key_id, ("team-a",)) is False
        assert await store.set_key_workspaces("000000000000", ("team-a",)) is False
    finally:
        await store.close()


def _keys(data_dir: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["keys", *args, "--data-dir", str(data_dir)])


def test_keys_update_adds_and_removes_workspaces_without_revoking(tmp_path: Path) -> None:
    _first_start(tmp_path)
    for ws in ("team-a", "team-b"):
        assert CliRunner().invoke(main, ["workspaces", "create", ws, "--data-dir", str(tmp_path)]).exit_code == 0
    key_id = parse_key_id(create_key(tmp_path, "dora", "default").stdout.strip())
    assert key_id is not None
    added = _keys(tmp_path, "update", key_id, "--add-workspace", "team-a", "--add-workspace", "team-b")
    assert added.exit_code == 0, added.output
    assert f"key {key_id} (dora) reaches default,team-a,team-b" in added.output
    removed = _keys(tmp_path, "update", key_id, "--remove-workspace", "default", "--remove-workspace", "team-b")
    assert removed.exit_code == 0, removed.output
    assert f"{key_id}\tdora\tagent\tteam-a\tactive" in _keys(tmp_path, "list").output


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--remove-workspace", "default"], "INVALID_ARGUMENT: key {kid} (agent 'erin') would reach no workspace"),
        (["--add-workspace", "ghost"], "NOT_FOUND: workspace 'ghost' does not exist."),
        ([], "INVALID_ARGUMENT: nothing to change"),
        (["--add-workspace", "default", "--remove-workspace", "default"], "is both added and removed"),
    ],
)
def test_keys_update_refuses_what_would_leave_a_bad_key(tmp_path: Path, args: list[str], said: str) -> None:
    _first_start(tmp_path)
    key_id = parse_key_id(create_key(tmp_path, "erin", "default").stdout.strip())
    assert key_id is not None
    result = _keys(tmp_path, "update", key_id, *args)
    assert result.exit_code != 0
    assert said.format(kid=key_id) in result.output
    assert "Traceback" not in result.output
    assert f"{key_id}\terin\tagent\tdefault\tactive" in _keys(tmp_path, "list").output


def test_keys_update_refuses_a_revoked_or_unknown_key(tmp_path: Path) -> None:
    _first_start(tmp_path)
    key_id = parse_key_id(create_key(tmp_path, "fred", "default").stdout.strip())
    assert key_id is not None
    assert _keys(tmp_path, "revoke", key_id).exit_code == 0
    for kid in (key_id, "0123456789ab"):
        result = _keys(tmp_path, "update", kid, "--add-workspace", "default")
        assert result.exit_code != 0
        assert f"NOT_FOUND: no live key has the id '{kid}'." in result.output
        assert "(mcp-locks keys list)" in result.output


def test_keys_list_hides_revoked_keys_unless_all(tmp_path: Path) -> None:
    _first_start(tmp_path)
    gone = parse_key_id(create_key(tmp_path, "gone", "default").stdout.strip())
    kept = parse_key_id(create_key(tmp_path, "kept", "default").stdout.strip())
    assert gone is not None
    assert kept is not None
    assert _keys(tmp_path, "revoke", gone).exit_code == 0
    live = _keys(tmp_path, "list").output
    assert kept in live
    assert gone not in live
    everything = _keys(tmp_path, "list", "--all").output
    assert f"{gone}\tgone\tagent\tdefault\trevoked" in everything
    assert kept in everything


def test_a_key_changed_from_the_cli_reaches_its_new_workspaces_on_the_next_request(tmp_path: Path) -> None:
    from mcp_locks import Settings, build_app

    from .servers import serve_in_thread

    _first_start(tmp_path)
    assert CliRunner().invoke(main, ["workspaces", "create", "team-a", "--data-dir", str(tmp_path)]).exit_code == 0
    app = build_app(Settings(data_dir=tmp_path))
    with serve_in_thread(app) as url:
        key = create_key(tmp_path, "gina", "default").stdout.strip()
        auth = {"Authorization": f"Bearer {key}"}
        before = httpx.get(f"{url}/v1/me", headers=auth).json()  # the server now remembers the key
        key_id = parse_key_id(key)
        assert key_id is not None
        changed = _keys(tmp_path, "update", key_id, "--add-workspace", "team-a", "--remove-workspace", "default")
        assert changed.exit_code == 0, changed.output
        after = httpx.get(f"{url}/v1/me", headers=auth).json()
        locks = httpx.get(f"{url}/v1/workspaces/default/locks", headers=auth)
    assert before["workspaces"] == ["default"]
    assert after["workspaces"] == ["team-a"]
    assert locks.status_code == 403


def test_the_admin_api_adds_and_removes_a_keys_workspaces(tmp_path: Path) -> None:
    from mcp_locks import Settings, build_app

    from .servers import serve_in_thread

    _first_start(tmp_path)
    app = build_app(Settings(data_dir=tmp_path))
    with serve_in_thread(app) as url:
        admin = {"Authorization": f"Bearer {(tmp_path / 'admin.key').read_text().strip()}"}
        assert httpx.post(f"{url}/v1/workspaces", headers=admin, json={"workspace_id": "team-b"}).status_code == 201
        made = httpx.post(
            f"{url}/v1/admin/keys", headers=admin, json={"agent": "hal", "workspaces": ["default"]}
        ).json()
        agent = {"Authorization": f"Bearer {made['key']}"}
        path = f"{url}/v1/admin/keys/{made['key_id']}"
        assert httpx.get(f"{url}/v1/me", headers=agent).json()["workspaces"] == ["default"]
        added = httpx.patch(path, headers=admin, json={"add_workspaces": ["team-b"]})
        me_added = httpx.get(f"{url}/v1/me", headers=agent).json()
        moved = httpx.patch(path, headers=admin, json={"remove_workspaces": ["default"]})
        me_moved = httpx.get(f"{url}/v1/me", headers=agent).json()
        last = httpx.patch(path, headers=admin, json={"remove_workspaces": ["team-b"]})
        ghost = httpx.patch(path, headers=admin, json={"add_workspaces": ["ghost"]})
        by_agent = httpx.patch(path, headers=agent, json={"add_workspaces": ["default"]})
        typo = httpx.patch(path, headers=admin, json={"add_workspace": ["default"]})
        unknown = httpx.patch(f"{url}/v1/admin/keys/0123456789ab", headers=admin, json={"add_workspaces": ["default"]})
        spec = httpx.get(f"{url}/v1/openapi.json").json()
    assert added.status_code == 200, added.text
    assert added.json()["workspaces"] == ["default", "team-b"]
    assert me_added["workspaces"] == ["default", "team-b"]  # at once, for the key's very next request
    assert moved.json()["workspaces"] == ["team-b"]
    assert me_moved["workspaces"] == ["team-b"]
    assert (last.status_code, last.json()["error"]["code"]) == (422, "INVALID_ARGUMENT")
    assert "would reach no workspace" in last.json()["error"]["message"]
    assert (ghost.status_code, ghost.json()["error"]["code"]) == (404, "NOT_FOUND")
    assert (by_agent.status_code, by_agent.json()["error"]["code"]) == (403, "FORBIDDEN")
    assert (typo.status_code, typo.json()["error"]["code"]) == (422, "INVALID_ARGUMENT")
    assert "add_workspaces" in typo.json()["error"]["message"]  # did you mean...
    assert unknown.status_code == 404
    assert "patch" in spec["paths"]["/v1/admin/keys/{key_id}"]


@pytest.mark.anyio
async def test_an_admin_key_has_no_workspaces_to_change() -> None:
    from mcp_locks.core.errors import InvalidArgument
    from mcp_locks.stores.base import MemoryStore

    async with LockService(MemoryStore()) as svc:
        _, admin = await svc.create_key("ops", role="admin")
        with pytest.raises(InvalidArgument, match="an admin key reaches every workspace"):
            await svc.update_key(admin.key_id, ["default"])

"""Per-agent API keys: their shape, verification, storage and the `mcp-locks keys` commands."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner

from mcp_locks import LockService, SqliteStore
from mcp_locks._cli import main
from mcp_locks._keys import KEY_PREFIX, new_key, parse_key_id, verify_key
from mcp_locks._store import Store

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


def test_keys_create_prints_the_key_once_and_stores_only_a_digest(tmp_path: Path) -> None:
    _first_start(tmp_path)
    runner = CliRunner()
    created = runner.invoke(
        main, ["keys", "create", "--agent", "alice", "--workspace", "default", "--data-dir", str(tmp_path)]
    )
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
    result = CliRunner().invoke(
        main, ["keys", "create", "--agent", "alice", "--workspace", "ghost", "--data-dir", str(tmp_path)]
    )
    assert result.exit_code != 0
    assert "workspaces create ghost" in result.output


def test_keys_revoke_marks_the_key_and_says_so_twice_over(tmp_path: Path) -> None:
    _first_start(tmp_path)
    runner = CliRunner()
    key = runner.invoke(
        main, ["keys", "create", "--agent", "bob", "--workspace", "default", "--data-dir", str(tmp_path)]
    ).stdout.strip()
    key_id = parse_key_id(key)
    assert key_id is not None
    assert runner.invoke(main, ["keys", "revoke", key_id, "--data-dir", str(tmp_path)]).exit_code == 0
    again = runner.invoke(main, ["keys", "revoke", key_id, "--data-dir", str(tmp_path)])
    assert again.exit_code != 0
    assert "revoked" in runner.invoke(main, ["keys", "list", "--data-dir", str(tmp_path)]).output

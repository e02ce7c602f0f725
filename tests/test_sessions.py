"""Sessions below one key: subagents sharing a key are separate holders who queue, never one who blocks itself."""

from __future__ import annotations

import anyio
import pytest

from .faces import Face

pytestmark = pytest.mark.anyio


async def test_two_sessions_of_one_key_exclude_each_other_and_see_each_other_in_status(face: Face) -> None:
    first = (await face(face.env.alice, "lock", node_id="s.md", mode="write", agent="sub-1")).ok
    assert first["owner"] == "alice/sub-1"
    refused = await face(face.env.alice, "lock", node_id="s.md", mode="write", agent="sub-2")
    assert refused.code == "LOCKED"  # not DEADLOCK: another session holds it, not the caller itself
    assert "alice/sub-1" in refused.message
    status = (await face(face.env.alice, "status", node_id="s.md")).ok
    assert [h["owner"] for h in status["holders"]] == ["alice/sub-1"]


async def test_a_session_waiting_for_another_session_of_its_key_is_granted_when_that_one_lets_go(face: Face) -> None:
    first = (await face(face.env.alice, "lock", node_id="q.md", mode="write", agent="sub-1")).ok
    got: dict[str, object] = {}

    async def second() -> None:
        got["grant"] = (await face(face.env.alice, "lock", node_id="q.md", mode="write", agent="sub-2", wait=30)).ok

    with anyio.fail_after(20):
        async with face.env.service.subscribe() as events, anyio.create_task_group() as tg:
            tg.start_soon(second)
            # Let go only once the second session is in line, so the grant is a hand-off between sessions.
            async for _ws, ev in events:
                if ev.kind == "queued":
                    break
            assert (await face(face.env.alice, "unlock", node_id="q.md", token=first["token"])).ok["released"]
    assert got["grant"]["owner"] == "alice/sub-2"  # type: ignore[index]


async def test_one_session_asking_again_for_a_lock_it_holds_is_told_it_would_wait_for_itself(face: Face) -> None:
    await face(face.env.alice, "lock", node_id="d.md", mode="write", agent="sub-1")
    again = await face(face.env.alice, "lock", node_id="d.md", mode="write", agent="sub-1", wait=5)
    assert again.code == "DEADLOCK"


async def test_an_agent_filter_on_list_locks_shows_the_locks_of_its_sessions(face: Face) -> None:
    await face(face.env.alice, "lock", node_id="l1.md", agent="sub-1")
    await face(face.env.alice, "lock", node_id="l2.md")
    await face(face.env.bob, "lock", node_id="l3.md")
    mine = (await face(face.env.bob, "list_locks", owner="alice")).ok
    assert sorted(lk["node_id"] for lk in mine["locks"]) == ["l1.md", "l2.md"]

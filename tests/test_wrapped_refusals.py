"""A refusal that reaches a face wrapped in an ExceptionGroup (a task group wrapped it) is answered as itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from mcp_locks import Settings, build_app
from mcp_locks.core.clock import ManualClock
from mcp_locks.core.errors import Internal, Unavailable, refusal_in
from mcp_locks.engine.lock_service import LockService
from mcp_locks.stores.base import MemoryStore

from .helpers import STEP
from .servers import serve_app

pytestmark = pytest.mark.anyio


def test_refusal_in_finds_the_refusal_a_group_holds_and_nothing_in_a_group_of_bugs() -> None:
    down = Unavailable("the lock database cannot be reached.")
    assert refusal_in(ExceptionGroup("tasks", [ValueError("x"), ExceptionGroup("inner", [down])])) is down
    assert refusal_in(ExceptionGroup("tasks", [ValueError("x")])) is None
    assert refusal_in(down) is down


async def test_a_lock_refused_inside_a_task_group_answers_503_not_500(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = LockService(MemoryStore(), clock=ManualClock())

    async def wrapped(*args: Any, **kwargs: Any) -> Any:
        raise ExceptionGroup("a task group", [Unavailable("the lock database cannot be reached.")])

    monkeypatch.setattr(service, "lock", wrapped)
    app = build_app(Settings(store="memory", data_dir=tmp_path, insecure_no_auth=True), service)
    async with serve_app(app) as url, httpx.AsyncClient(base_url=url, timeout=STEP) as http:
        r = await http.post("/v1/workspaces/default/nodes/a.md/lock", json={"mode": "write"})
    assert (r.status_code, r.json()["error"]["code"]) == (503, "UNAVAILABLE")
    assert Internal.code not in r.text

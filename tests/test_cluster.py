"""Three ``mcp-locks serve`` processes on one PostgreSQL database behave as one server.

Real processes, real HTTP, real time: waits are bounded by ``fail_after`` and polls of the
servers' own status (there is no event to await across processes).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench.cluster import Node, cluster
from bench.torture import Proxy

from .pg import PG_URL, pg_schema
from .servers import serve_app

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

WS = "default"
# Leases long enough to outlast every step of a test; only the dead-server test waits for one to end.
LEASE = 30
# The shortest lease the API allows, for the test about a lease ending after its server died.
SHORT_LEASE = 1
STEP = 15  # upper bound on any one wait


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Node]]:
    """One cluster of three for the module: each test uses node names of its own."""
    data = tmp_path_factory.mktemp("cluster")
    with pg_schema() as schema, cluster(PG_URL, schema, data, extra=("--webhooks-allow-private",)) as ns:
        yield ns


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=STEP + 5) as h:
        yield h


def _node() -> str:
    return f"n-{secrets.token_hex(4)}.txt"


async def lock(
    http: httpx.AsyncClient, node: Node, path: str, *, agent: str = "a", wait: float = 0, mode: str = "write",
    timeout: float = LEASE,
) -> httpx.Response:  # fmt: skip
    body = {"mode": mode, "timeout": timeout, "wait": wait, "agent": agent}
    return await http.post(f"{node.url}/v1/workspaces/{WS}/nodes/{quote(path)}/lock", json=body)


async def unlock(http: httpx.AsyncClient, node: Node, path: str, token: str) -> None:
    r = await http.request(
        "DELETE", f"{node.url}/v1/workspaces/{WS}/nodes/{quote(path)}/lock", headers={"Lock-Token": token}
    )
    assert r.status_code == 200, r.text


async def status(http: httpx.AsyncClient, node: Node, path: str) -> dict[str, Any]:
    r = await http.get(f"{node.url}/v1/workspaces/{WS}/nodes/{quote(path)}/lock")
    assert r.status_code == 200, r.text
    return dict(r.json())


async def eventually(check: Callable[[], Awaitable[bool]], every: float = 0.02) -> None:
    """Poll ``check`` until it holds (another process's state has no event to await), for at most STEP seconds."""
    with anyio.fail_after(STEP):
        for _ in range(int(STEP / every) + 1):
            if await check():
                return
            await anyio.sleep(every)
    raise AssertionError("the condition never held")


async def until_waiters(http: httpx.AsyncClient, node: Node, path: str, n: int) -> None:
    """Poll ``node``'s view of ``path`` until ``n`` requests wait in line there."""

    async def seen() -> bool:
        return len((await status(http, node, path))["waiters"]) == n

    await eventually(seen)


async def hand_over(
    http: httpx.AsyncClient, holder: Node, token: str, waiter: Node, path: str, agent: str
) -> dict[str, Any]:
    """Queue ``agent`` for ``path`` on ``waiter``; once ``holder`` shows it in line, release ``token`` there.

    Returns the waiter's grant. ``holder`` seeing the waiter proves the line is shared.
    """
    got: dict[str, Any] = {}

    async def wait() -> None:
        r = await lock(http, waiter, path, agent=agent, wait=STEP)
        assert r.status_code == 200, r.text
        got.update(r.json())

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait)
        await until_waiters(http, holder, path, 1)
        await unlock(http, holder, path, token)
    return got


async def test_a_lock_taken_through_one_server_conflicts_on_the_others(
    nodes: list[Node], http: httpx.AsyncClient
) -> None:
    a, b, c = nodes
    path = _node()
    r = await lock(http, a, path)
    assert r.status_code == 200, r.text
    for other in (b, c):
        refused = await lock(http, other, path, agent="b")
        assert refused.status_code == 423
        assert refused.json()["error"]["code"] == "LOCKED"
        st = await status(http, other, path)
        assert [h["lock_id"] for h in st["holders"]] == [r.json()["lock_id"]]


async def test_a_release_on_one_server_hands_the_lock_to_a_waiter_on_another(
    nodes: list[Node], http: httpx.AsyncClient
) -> None:
    a, b, _ = nodes
    path = _node()
    first = (await lock(http, a, path)).json()
    got = await hand_over(http, a, first["token"], b, path, "b")
    assert got["owner"] == "b"
    assert got["fence"] > first["fence"]  # fences grow across servers


async def test_waiters_on_different_servers_are_served_in_the_order_they_queued(
    nodes: list[Node], http: httpx.AsyncClient
) -> None:
    path = _node()
    holder = (await lock(http, nodes[0], path, agent="h")).json()
    order: list[str] = []
    fences: list[int] = []

    async def wait(node: Node, agent: str) -> None:
        r = await lock(http, node, path, agent=agent, wait=STEP)
        assert r.status_code == 200, r.text
        order.append(agent)
        fences.append(r.json()["fence"])
        await unlock(http, node, path, r.json()["token"])  # hands on to the next in line

    async with anyio.create_task_group() as tg:
        # Queued on servers 2, 3, 1, 2 in that order (each seen in line before the next joins).
        for i, node in enumerate([nodes[1], nodes[2], nodes[0], nodes[1]]):
            tg.start_soon(wait, node, f"w{i}")
            await until_waiters(http, nodes[(i + 1) % 3], path, i + 1)
        await unlock(http, nodes[2], path, holder["token"])
    assert order == ["w0", "w1", "w2", "w3"]
    assert fences == sorted(fences)


async def test_a_deadlock_across_servers_is_refused(nodes: list[Node], http: httpx.AsyncClient) -> None:
    a, b, c = nodes
    f1, f2 = _node(), _node()
    x1 = (await lock(http, a, f1, agent="x")).json()
    y2 = (await lock(http, b, f2, agent="y")).json()
    async with anyio.create_task_group() as tg:

        async def x_waits_for_f2() -> None:
            r = await lock(http, c, f2, agent="x", wait=STEP)
            assert r.status_code == 200, r.text  # granted once y gives up f2

        tg.start_soon(x_waits_for_f2)
        await until_waiters(http, a, f2, 1)
        r = await lock(http, a, f1, agent="y", wait=STEP)  # y would wait for x, who waits for y
        assert r.status_code == 409, r.text
        assert r.json()["error"]["code"] == "DEADLOCK"
        await unlock(http, b, f2, y2["token"])
    await unlock(http, a, f1, x1["token"])


async def test_no_increment_is_lost_on_a_counter_written_through_every_server(
    nodes: list[Node], http: httpx.AsyncClient
) -> None:
    path = f"counter-{secrets.token_hex(4)}.json"
    rounds, workers = 8, 6

    async def worker(i: int) -> None:
        node = nodes[i % 3]
        for _ in range(rounds):
            g = (await lock(http, node, path, agent=f"w{i}", wait=STEP)).json()
            url = f"{node.url}/v1/workspaces/{WS}/files/{quote(path)}"
            r = await http.get(url, headers={"Lock-Token": g["token"]})
            assert r.status_code in (200, 404), r.text
            value = json.loads(r.content) if r.status_code == 200 else 0
            w = await http.put(url, content=json.dumps(value + 1).encode(), headers={"Lock-Token": g["token"]})
            assert w.status_code in (200, 201), w.text
            await unlock(http, node, path, g["token"])

    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            for i in range(workers):
                tg.start_soon(worker, i)
    for node in nodes:  # every server reads the same content and version
        r = await http.get(f"{node.url}/v1/workspaces/{WS}/files/{quote(path)}")
        assert json.loads(r.content) == rounds * workers
        info = await http.get(f"{node.url}/v1/workspaces/{WS}/file-info/{quote(path)}")
        assert info.json()["file"]["version"] == rounds * workers


async def test_a_file_written_through_one_server_reads_the_same_through_the_others(
    nodes: list[Node], http: httpx.AsyncClient
) -> None:
    a, b, c = nodes  # each with a folder of its own: the content travels through the database
    path = f"big-{secrets.token_hex(4)}.bin"
    big = secrets.token_bytes(2_500_000)  # several of the store's chunks

    def url(node: Node) -> str:
        return f"{node.url}/v1/workspaces/{WS}/files/{quote(path)}"

    r = await http.put(url(a), content=big, headers={"If-None-Match": "*"})  # create only
    assert r.status_code == 201, r.text
    for node in (b, c, a):
        r = await http.get(url(node))
        assert r.status_code == 200, r.text
        assert r.content == big
    r = await http.put(url(c), content=b"second", headers={"If-Match": '"1"'})  # optimistic, by version
    assert r.status_code in (200, 201), r.text
    for node in (a, b):
        r = await http.get(url(node))
        assert (r.content, r.headers["etag"].split("-")[0]) == (b"second", '"2')
    r = await http.delete(url(b), headers={"If-Match": '"2"'})
    assert r.status_code == 200, r.text
    for node in (a, c):
        assert (await http.get(url(node))).status_code == 404


async def test_servers_sharing_one_folder_write_and_read_one_copy(tmp_path: Path, http: httpx.AsyncClient) -> None:
    with pg_schema() as schema, cluster(PG_URL, schema, tmp_path, n=2, shared_folder=True) as (a, b):
        r = await http.put(
            f"{a.url}/v1/workspaces/{WS}/files/shared.txt", content=b"one copy", headers={"If-None-Match": "*"}
        )
        assert r.status_code == 201, r.text
        assert (await http.get(f"{b.url}/v1/workspaces/{WS}/files/shared.txt")).content == b"one copy"
        assert (tmp_path / "files" / WS / "shared.txt").read_bytes() == b"one copy"
        assert not (tmp_path / "s2").exists()


async def test_a_write_with_a_stale_token_is_refused_on_every_server(
    nodes: list[Node], http: httpx.AsyncClient
) -> None:
    a, b, c = nodes
    path = _node()
    old = (await lock(http, a, path, timeout=SHORT_LEASE)).json()

    async def taken() -> bool:  # real time: the lease must end
        return (await lock(http, b, path, agent="b")).status_code == 200

    await eventually(taken, 0.1)
    r = await http.put(
        f"{c.url}/v1/workspaces/{WS}/files/{quote(path)}", content=b"late", headers={"Lock-Token": old["token"]}
    )
    assert r.status_code == 410, r.text
    assert r.json()["error"]["code"] == "LOCK_EXPIRED"


async def test_a_server_that_dies_leaves_the_line_and_its_clients_locks_end_by_lease(
    tmp_path: Path, http: httpx.AsyncClient
) -> None:
    with pg_schema() as schema, cluster(PG_URL, schema, tmp_path) as (a, b, c):
        path = _node()
        holder = (await lock(http, a, path)).json()
        dead_lease = (await lock(http, b, "other.txt", timeout=SHORT_LEASE)).json()

        async def wait_on_b() -> None:
            with pytest.raises(httpx.TransportError):  # its server is killed under it
                await lock(http, b, path, agent="doomed", wait=STEP)

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_on_b)
            await until_waiters(http, c, path, 1)
            await anyio.to_thread.run_sync(b.kill)
        # The dead server's waiter is gone: a sees only c's, and c gets the lock.
        granted = await hand_over(http, a, holder["token"], c, path, "c")
        assert granted["owner"] == "c"

        async def ended() -> bool:  # the dead server's client's lock ends by lease, on the servers left
            return not (await status(http, a, "other.txt"))["locked"]

        await eventually(ended, 0.1)
        r = await http.get(
            f"{c.url}/v1/workspaces/{WS}/nodes/other.txt/lock", headers={"Lock-Token": dead_lease["token"]}
        )
        assert r.json()["yours"]["held"] is False


async def test_webhooks_get_every_servers_events_exactly_once(nodes: list[Node], http: httpx.AsyncClient) -> None:
    got: list[dict[str, Any]] = []
    arrived = anyio.Event()

    async def hook(request: Request) -> Response:
        nonlocal arrived
        got.append(json.loads(await request.body()))
        arrived.set()
        return Response(status_code=204)

    async with serve_app(Starlette(routes=[Route("/hook", hook, methods=["POST"])])) as url:
        ws = f"hooks-{secrets.token_hex(3)}"
        r = await http.post(f"{nodes[0].url}/v1/workspaces", json={"workspace_id": ws})
        assert r.status_code == 201, r.text
        r = await http.post(  # registered on the second server
            f"{nodes[1].url}/v1/workspaces/{ws}/webhooks", json={"url": f"{url}/hook", "events": ["lock.granted"]}
        )
        assert r.status_code == 201, r.text
        fences = []
        for node in nodes:  # a grant through every server
            r = await http.post(f"{node.url}/v1/workspaces/{ws}/nodes/{_node()}/lock", json={"timeout": LEASE})
            assert r.status_code == 200, r.text
            fences.append(r.json()["fence"])
        with anyio.fail_after(STEP):
            while len(got) < len(nodes):
                arrived = anyio.Event()
                await arrived.wait()
        # Give a second deliverer (there must be none) the time the first one took, then count.
        await anyio.sleep(2)
    assert sorted(p["data"]["fence"] for p in got) == sorted(fences)


async def test_a_server_cut_off_from_the_database_answers_503_and_recovers_when_it_is_back(
    tmp_path: Path, http: httpx.AsyncClient
) -> None:
    reachable = True  # the database, through the proxy
    db = urlsplit(PG_URL)
    proxy = Proxy(lambda: (db.port or 5432) if reachable else None)
    async with anyio.create_task_group() as tg:
        await tg.start(proxy.serve)
        via = PG_URL.replace(db.netloc.rsplit("@", 1)[-1], f"127.0.0.1:{proxy.port}")
        with pg_schema() as schema:
            (node,) = [Node("cut", via, schema, tmp_path)]
            await anyio.to_thread.run_sync(node.start)
            try:
                path = _node()
                held = await lock(http, node, path)
                assert held.status_code == 200, held.text
                reachable = False
                proxy.cut()
                r = await lock(http, node, _node())
                assert r.status_code == 503, r.text
                assert r.json()["error"]["code"] == "UNAVAILABLE"
                reachable = True  # the database is back: the server reconnects, and nothing acknowledged is lost
                answers: list[httpx.Response] = []

                async def back() -> bool:
                    answers.append(await lock(http, node, path, agent="b"))
                    return answers[-1].status_code != 503

                await eventually(back, 0.1)
                r = answers[-1]
                assert r.status_code == 423, r.text  # the lock granted before the cut still holds
                assert r.json()["error"]["code"] == "LOCKED"
            finally:
                await anyio.to_thread.run_sync(node.stop)
        tg.cancel_scope.cancel()

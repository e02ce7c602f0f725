"""The file store over REST: streamed bodies, ETag / If-Match, size limits and resumable uploads, on a real server."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from mcp_locks import Settings, build_app
from mcp_locks.core.clock import ManualClock
from mcp_locks.engine.file_service import FileLimits
from mcp_locks.engine.lock_service import LockService
from mcp_locks.stores.base import MemoryStore

from .faces import Env
from .servers import serve_app

pytestmark = pytest.mark.anyio


def auth(key: str, **more: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", **more}


@pytest.fixture
async def http(env: Env) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"{env.url}/v1/workspaces/default", timeout=30) as h:
        yield h


async def test_a_put_streams_a_body_larger_than_max_body_and_get_returns_it_with_its_version(
    env: Env, http: httpx.AsyncClient
) -> None:
    data = bytes(range(256)) * (3 * 4096)  # 3 MiB, above the 1 MiB JSON body limit

    async def pieces() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 65536):
            yield data[i : i + 65536]

    r = await http.put("/files/big/blob.bin", content=pieces(), headers=auth(env.alice, **{"If-None-Match": "*"}))
    assert r.status_code == 201, r.text
    assert r.json()["file"]["sha256"] == hashlib.sha256(data).hexdigest()
    got = await http.get("/files/big/blob.bin", headers=auth(env.bob))
    assert got.status_code == 200
    assert got.content == data
    assert got.headers["x-version"] == "1"
    assert got.headers["etag"] == r.headers["etag"]
    assert got.headers["x-sha256"] == hashlib.sha256(data).hexdigest()
    assert got.headers["content-type"] == "application/octet-stream"


async def test_head_answers_the_headers_of_a_file_without_its_body(env: Env, http: httpx.AsyncClient) -> None:
    await http.put("/files/h.bin", content=b"x" * 5000, headers=auth(env.alice, **{"If-None-Match": "*"}))
    r = await http.head("/files/h.bin", headers=auth(env.alice))
    assert r.status_code == 200
    assert r.headers["content-length"] == "5000"
    assert r.headers["x-version"] == "1"
    assert r.content == b""


async def test_if_match_with_the_etag_read_guards_a_put(env: Env, http: httpx.AsyncClient) -> None:
    await http.put("/files/a.md", content=b"one", headers=auth(env.alice, **{"If-None-Match": "*"}))
    etag = (await http.get("/files/a.md", headers=auth(env.alice))).headers["etag"]
    ok = await http.put("/files/a.md", content=b"two", headers=auth(env.bob, **{"If-Match": etag}))
    assert ok.status_code == 200
    assert ok.json()["file"]["version"] == 2
    late = await http.put("/files/a.md", content=b"three", headers=auth(env.alice, **{"If-Match": etag}))
    assert late.status_code == 412
    assert late.json()["error"]["code"] == "VERSION_MISMATCH"
    assert (await http.get("/files/a.md", headers=auth(env.alice))).content == b"two"


async def test_an_if_match_whose_version_is_right_but_whose_tag_is_not_fails_with_412(
    env: Env, http: httpx.AsyncClient
) -> None:
    await http.put("/files/a.md", content=b"one", headers=auth(env.alice, **{"If-None-Match": "*"}))
    etag = (await http.get("/files/a.md", headers=auth(env.alice))).headers["etag"]
    forged = etag[:-2] + ("0" if etag[-2] != "0" else "1") + '"'  # version 1, another content hash
    for method in ("PUT", "DELETE"):
        r = await http.request(method, "/files/a.md", content=b"x", headers=auth(env.alice, **{"If-Match": forged}))
        assert (r.status_code, r.json()["error"]["code"]) == (412, "VERSION_MISMATCH")
        assert r.json()["error"]["details"]["etag"] == etag
    assert (await http.get("/files/a.md", headers=auth(env.alice))).content == b"one"


async def test_a_weak_if_match_never_matches_even_the_current_tag(env: Env, http: httpx.AsyncClient) -> None:
    await http.put("/files/a.md", content=b"one", headers=auth(env.alice, **{"If-None-Match": "*"}))
    etag = (await http.get("/files/a.md", headers=auth(env.alice))).headers["etag"]
    r = await http.put("/files/a.md", content=b"two", headers=auth(env.alice, **{"If-Match": f"W/{etag}"}))
    assert (r.status_code, r.json()["error"]["code"]) == (412, "VERSION_MISMATCH")
    listed = await http.put("/files/a.md", content=b"two", headers=auth(env.alice, **{"If-Match": f'"9-ab", {etag}'}))
    assert listed.status_code == 200  # a list matches if any of its strong tags does


async def test_if_match_star_writes_over_whatever_version_exists(env: Env, http: httpx.AsyncClient) -> None:
    await http.put("/files/a.md", content=b"one", headers=auth(env.alice, **{"If-None-Match": "*"}))
    await http.put("/files/a.md", content=b"two", headers=auth(env.bob, **{"If-Match": '"1"'}))
    r = await http.put("/files/a.md", content=b"three", headers=auth(env.alice, **{"If-Match": "*"}))
    assert r.status_code == 200, r.text
    assert r.json()["file"]["version"] == 3
    gone = await http.delete("/files/a.md", headers=auth(env.alice, **{"If-Match": "*"}))
    assert gone.status_code == 200, gone.text


async def test_if_match_star_on_a_missing_file_fails_with_412_and_creates_nothing(
    env: Env, http: httpx.AsyncClient
) -> None:
    for method in ("PUT", "DELETE"):
        r = await http.request(method, "/files/none.md", content=b"x", headers=auth(env.alice, **{"If-Match": "*"}))
        assert (r.status_code, r.json()["error"]["code"]) == (412, "VERSION_MISMATCH"), r.text
        assert r.json()["error"]["details"]["current_version"] == 0
    assert (await http.get("/files/none.md", headers=auth(env.alice))).status_code == 404


async def test_a_put_without_lock_token_or_precondition_is_refused(env: Env, http: httpx.AsyncClient) -> None:
    r = await http.put("/files/a.md", content=b"blind", headers=auth(env.alice))
    assert r.status_code == 422
    assert "if_version" in r.json()["error"]["hint"]
    assert "token" in r.json()["error"]["hint"]


async def test_a_malformed_if_match_is_an_invalid_argument(env: Env, http: httpx.AsyncClient) -> None:
    r = await http.put("/files/a.md", content=b"x", headers=auth(env.alice, **{"If-Match": '"abc"'}))
    assert r.status_code == 422
    assert r.json()["error"]["details"]["field"] == "if-match"


@pytest.mark.parametrize(
    "value",
    [b"\xb2", b"9" * 5000, b'"' + b"9" * 5000 + b'-abc"'],
    ids=["superscript-two", "5000-digits", "5000-digit-etag"],
)
async def test_an_if_match_that_int_cannot_read_is_an_invalid_argument_not_a_crash(
    env: Env, http: httpx.AsyncClient, value: bytes
) -> None:
    # str.isdigit() says yes to '²' and int() refuses numbers of over 4300 digits: both once gave a 500.
    for method in ("PUT", "DELETE"):
        r = await http.request(method, "/files/a.md", content=b"x", headers=auth(env.alice, **{"If-Match": value}))
        assert (r.status_code, r.json()["error"]["code"]) == (422, "INVALID_ARGUMENT")
        assert r.json()["error"]["details"]["field"] == "if-match"


async def test_a_put_with_the_lock_token_header_writes_under_the_lock(env: Env, http: httpx.AsyncClient) -> None:
    grant = (await http.post("/nodes/r.md/lock", json={"mode": "write"}, headers=auth(env.alice))).json()
    r = await http.put(
        "/files/r.md", content=b"locked write", headers=auth(env.alice, **{"Lock-Token": grant["token"]})
    )
    assert r.status_code == 201
    assert r.headers["x-fence"] == str(grant["fence"])
    refused = await http.get("/files/r.md", headers=auth(env.bob))
    assert refused.status_code == 423


async def test_a_body_over_max_file_size_is_refused_with_413(tmp_path: Path) -> None:
    limit = 64 * 1024
    service = LockService(MemoryStore(), clock=ManualClock(), file_limits=FileLimits(max_file_size=limit))
    settings = Settings(store="memory", data_dir=tmp_path, insecure_no_auth=True, max_file_size=limit)
    async with serve_app(build_app(settings, service)) as url, httpx.AsyncClient(base_url=url) as h:

        async def pieces() -> AsyncIterator[bytes]:  # no Content-Length: the size is counted as it arrives
            for _ in range(4):
                yield b"x" * 32 * 1024

        for body in (b"x" * (limit + 1), pieces()):
            r = await h.put("/v1/workspaces/default/files/big.bin", content=body, headers={"If-None-Match": "*"})
            assert r.status_code == 413
            assert r.json()["error"]["details"]["limit"] == limit
        assert (await h.get("/v1/workspaces/default/files/big.bin")).status_code == 404


async def test_an_upload_over_rest_resumes_after_a_missing_chunk_and_completes(
    env: Env, http: httpx.AsyncClient
) -> None:
    h = auth(env.alice)
    up = (await http.post("/uploads", json={"node_id": "data/set.bin"}, headers=h)).json()
    uid = up["upload_id"]
    parts = [b"A" * 1000, b"B" * 1000, b"C" * 10]
    for i in (0, 2):
        assert (await http.put(f"/uploads/{uid}/chunks/{i}", content=parts[i], headers=h)).status_code == 200
    status = (await http.get(f"/uploads/{uid}", headers=h)).json()
    assert status["received"] == [0, 2]
    sha = hashlib.sha256(b"".join(parts)).hexdigest()
    gap = await http.post(f"/uploads/{uid}/complete", json={"node_id": "data/set.bin", "sha256": sha,
                                                             "if_version": 0}, headers=h)  # fmt: skip
    assert gap.status_code == 422
    assert gap.json()["error"]["details"]["missing"] == [1]
    await http.put(f"/uploads/{uid}/chunks/1", content=parts[1], headers=h)
    done = await http.post(f"/uploads/{uid}/complete", json={"node_id": "data/set.bin", "sha256": sha,
                                                              "if_version": 0}, headers=h)  # fmt: skip
    assert done.status_code == 200, done.text
    assert done.json()["file"]["size"] == 2010
    assert (await http.get("/files/data/set.bin", headers=h)).content == b"".join(parts)


async def test_another_agents_upload_is_not_found(env: Env, http: httpx.AsyncClient) -> None:
    uid = (await http.post("/uploads", headers=auth(env.alice))).json()["upload_id"]
    for r in (
        await http.get(f"/uploads/{uid}", headers=auth(env.bob)),
        await http.put(f"/uploads/{uid}/chunks/0", content=b"x", headers=auth(env.bob)),
        await http.delete(f"/uploads/{uid}", headers=auth(env.bob)),
    ):
        assert r.status_code == 404
    assert (await http.get(f"/uploads/{uid}", headers=auth(env.alice))).status_code == 200


async def test_an_aborted_upload_is_gone(env: Env, http: httpx.AsyncClient) -> None:
    uid = (await http.post("/uploads", headers=auth(env.alice))).json()["upload_id"]
    assert (await http.delete(f"/uploads/{uid}", headers=auth(env.alice))).status_code == 200
    assert (await http.get(f"/uploads/{uid}", headers=auth(env.alice))).status_code == 404


@pytest.mark.parametrize("path", ["/files/%2e%2e/x", "/files/.mcp-locks/staging/x", "/files/a%00b"])
async def test_hostile_file_paths_over_rest_are_clear_errors(env: Env, http: httpx.AsyncClient, path: str) -> None:
    r = await http.put(path, content=b"x", headers=auth(env.alice, **{"If-None-Match": "*"}))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "INVALID_ARGUMENT"

"""The file store against real processes: a paused holder's late write is fenced off; kill -9 loses no acked write."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import httpx
import pytest

from .test_process import admin_key, server_process

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

# The shortest lease the API allows: the holder must really be paused past it, so real time passes.
SHORT_LEASE = 1
# Bounds on waits for child processes; a correct run is far inside them.
WITHIN = 30


def make_keys(base: str, admin: str, *agents: str) -> dict[str, str]:
    keys = {}
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {admin}"}) as h:
        for agent in agents:
            r = h.post("/v1/admin/keys", json={"agent": agent, "workspaces": ["default"]})
            r.raise_for_status()
            keys[agent] = r.json()["key"]
    return keys


HOLDER = textwrap.dedent(
    """
    import sys, httpx
    base, key, lease = sys.argv[1], sys.argv[2], float(sys.argv[3])
    with httpx.Client(base_url=base + "/v1/workspaces/default", headers={"Authorization": "Bearer " + key}) as h:
        grant = h.post("/nodes/report.md/lock", json={"mode": "write", "timeout": lease}).json()
        print("locked", grant["fence"], flush=True)
        sys.stdin.readline()  # paused here (SIGSTOP) until told to go on
        r = h.put("/files/report.md", content=b"the paused holder's late write",
                  headers={"Lock-Token": grant["token"]})
        print("wrote", r.status_code, r.json().get("error", {}).get("code"), flush=True)
    """
)


async def test_a_holder_paused_past_its_lease_is_refused_when_it_resumes_and_writes(tmp_path: Path) -> None:
    with server_process(tmp_path) as (_proc, url, _log):
        base = url.removesuffix("/mcp")
        keys = make_keys(base, admin_key(tmp_path), "slow", "fast")
        with subprocess.Popen(  # noqa: ASYNC220 - a child we pause and resume by signal, not just wait for
            [sys.executable, "-c", HOLDER, base, keys["slow"], str(SHORT_LEASE)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        ) as holder:
            await _fenced_off(base, keys, holder)


async def _fenced_off(base: str, keys: dict[str, str], holder: subprocess.Popen[str]) -> None:
    try:
        assert holder.stdout is not None
        assert holder.stdin is not None
        first = holder.stdout.readline().split()
        assert first[0] == "locked", first
        os.kill(holder.pid, signal.SIGSTOP)  # a GC pause, a swapped-out VM, a laptop lid
        auth = {"Authorization": f"Bearer {keys['fast']}"}
        async with httpx.AsyncClient(base_url=f"{base}/v1/workspaces/default", headers=auth, timeout=WITHIN) as h:
            # Waits in line until the paused holder's lease runs out, then writes.
            grant = (await h.post("/nodes/report.md/lock", json={"mode": "write", "wait": 10})).json()
            assert grant["fence"] > int(first[1])
            w = await h.put("/files/report.md", content=b"the new holder's write",
                                headers={"Lock-Token": grant["token"]})  # fmt: skip
            assert w.status_code == 201
            os.kill(holder.pid, signal.SIGCONT)
            holder.stdin.write("go\n")
            holder.stdin.flush()
            with anyio.fail_after(WITHIN):
                line = await anyio.to_thread.run_sync(holder.stdout.readline)
            assert line.split() == ["wrote", "410", "LOCK_EXPIRED"]
            got = await h.get("/files/report.md", headers={"Lock-Token": grant["token"]})
            assert got.content == b"the new holder's write"
            assert got.headers["x-fence"] == str(grant["fence"])
    finally:
        os.kill(holder.pid, signal.SIGCONT)
        holder.kill()
        holder.wait(10)


WRITER = textwrap.dedent(
    """
    import hashlib, json, sys, httpx
    base, key, acks, nodes = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    h = httpx.Client(base_url=base + "/v1/workspaces/default", headers={"Authorization": "Bearer " + key})
    version = {}
    with open(acks, "a") as log:
        up = h.post("/uploads").json()["upload_id"]
        log.write(json.dumps({"upload": up}) + "\\n")
        for i in range(100000):
            node = f"stream/f{i % nodes}.bin"
            body = (f"write {i:08d};" * 4000).encode()  # ~56 KiB: a torn write would show
            headers = {"If-Match": f'"{version[node]}"'} if node in version else {"If-None-Match": "*"}
            try:
                r = h.put("/files/" + node, content=body, headers=headers)
                if i % 5 == 0:
                    c = h.put(f"/uploads/{up}/chunks/{i // 5}", content=body)
            except httpx.TransportError:
                break  # the server was killed
            if r.status_code not in (200, 201):
                sys.exit(f"unexpected {r.status_code} {r.text}")
            version[node] = int(r.headers["x-version"])
            log.write(json.dumps({"node": node, "version": version[node], "sha": hashlib.sha256(body).hexdigest()})
                      + "\\n")
            if i % 5 == 0 and c.status_code == 200:
                log.write(json.dumps({"chunk": i // 5, "sha": hashlib.sha256(body).hexdigest()}) + "\\n")
            log.flush()
    """
)


async def test_kill_9_during_writes_and_uploads_loses_no_acknowledged_write_and_leaves_no_partial_file(
    tmp_path: Path,
) -> None:
    data, acks = tmp_path / "data", tmp_path / "acks.jsonl"
    data.mkdir()
    with server_process(data) as (proc, url, _log):
        base = url.removesuffix("/mcp")
        key = make_keys(base, admin_key(data), "writer")["writer"]
        # Killed at a chosen moment, not just awaited: a plain Popen.
        writer = subprocess.Popen([sys.executable, "-c", WRITER, base, key, str(acks), "4"])  # noqa: ASYNC220
        try:
            deadline = time.monotonic() + WITHIN
            while time.monotonic() < deadline and writer.poll() is None:
                if acks.exists() and acks.read_text().count("\n") >= 60:
                    break
                await anyio.sleep(0.05)  # polling a file another process writes; bounded by WITHIN
            assert writer.poll() is None, "the writer stopped early"
            proc.kill()  # kill -9 in the middle of the stream
            proc.wait(10)
            assert writer.wait(WITHIN) == 0
        finally:
            writer.kill()
    records = [json.loads(line) for line in acks.read_text().splitlines()]
    last: dict[str, dict[str, object]] = {}
    for r in records:
        if "node" in r:
            last[str(r["node"])] = r
    chunks = {int(r["chunk"]): r["sha"] for r in records if "chunk" in r}
    upload = next(r["upload"] for r in records if "upload" in r)
    assert last
    assert chunks

    with server_process(data) as (_proc, url, _log):
        base = url.removesuffix("/mcp")
        async with httpx.AsyncClient(base_url=f"{base}/v1/workspaces/default",
                                     headers={"Authorization": f"Bearer {key}"}, timeout=WITHIN) as h:  # fmt: skip
            for node, ack in last.items():
                got = await h.get(f"/files/{node}")
                assert got.status_code == 200
                version = int(got.headers["x-version"])
                assert version >= int(str(ack["version"])), f"{node}: acknowledged version lost"
                sha = hashlib.sha256(got.content).hexdigest()
                assert sha == got.headers["x-sha256"], f"{node}: content does not match its record"
                n = got.content[:15]
                assert n.startswith(b"write "), f"{node} is torn"
                assert got.content == n * 4000, f"{node} is torn"
                if version == ack["version"]:
                    assert sha == ack["sha"]
            status = (await h.get(f"/uploads/{upload}")).json()
            received = status["received"]
            assert set(chunks) <= set(received)  # every acknowledged chunk is there, whole
            assert received == list(range(len(received)))  # plus at most the one in flight
            # The upload resumes where it stopped: complete it with what arrived.
            whole = b"".join((f"write {5 * c:08d};" * 4000).encode() for c in received)
            done = await h.post(f"/uploads/{upload}/complete", json={"node_id": "stream/upload.bin",
                                "sha256": hashlib.sha256(whole).hexdigest(), "if_version": 0})  # fmt: skip
            assert done.status_code == 200, done.text
            assert (await h.get("/files/stream/upload.bin")).content == whole
        staging = data / "files" / "default" / ".mcp-locks" / "staging"
        assert len(os.listdir(staging)) <= 2  # at most the killed write's and chunk's own staging, swept later

"""The file store: 4 KiB locked writes vs a bare atomic write loop, and large uploads (throughput, peak RSS).

    python -m bench.files [--writes 400] [--rounds 5] [--concurrency 1,8] [--upload-mib 64,256]

1. Writes. ``FileService.write`` (what the write_file tool and PUT call) with a
   write lock's token, on the durable SQLite store and a real folder, against a
   bare loop doing the same atomic write by hand (temp file, write, fsync,
   rename) in the same run, on the same file system. Each round runs both, in
   alternating blocks, at each concurrency: 1 writer, and N writers on N files
   (the bare loop then runs N threads). Ours also fsyncs the folder after the
   rename (group-committed per actor batch) and commits the metadata, so a
   third series, the bare loop plus a folder fsync per write, shows the cost of
   that durability alone. Target: ours/bare >= 0.7. Figures: medians over
   rounds of per-round rates and ratios.

2. Uploads. A real ``mcp-locks serve`` process; one resumable upload per size
   (16 MiB chunks generated on the fly, never held whole by the client), then
   complete. MiB/s from the first chunk to the completed write, and the server's
   peak RSS (VmHWM) after each size: it must not grow with the file size.

One JSON line per measurement, then a JSON summary. Only loopback addresses are
used; every loop is bounded by its count.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx

from mcp_locks.engine.lock_service import LockService
from mcp_locks.stores.sqlite import SqliteStore

PAYLOAD = os.urandom(4096)
CHUNK = 16 << 20


def bare_writes(folder: Path, count: int, threads: int, dir_sync: bool = False) -> float:
    """Writes/s of temp + write + fsync + rename (+ fsync of the folder), ``threads`` at a time on their own files."""
    per = count // threads

    def one(t: int) -> None:
        target = folder / f"bare-{t}.bin"
        dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        for i in range(per):
            tmp = folder / f".tmp-{t}-{i}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, PAYLOAD)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, target)
            if dir_sync:
                os.fsync(dfd)
        os.close(dfd)

    start = time.perf_counter()
    workers = [threading.Thread(target=one, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return per * threads / (time.perf_counter() - start)


def node(conc: int, t: int) -> str:
    return f"bench/c{conc}/f{t}.bin"


async def our_writes(svc: LockService, tokens: list[str], count: int) -> float:
    """Writes/s through FileService.write with a token, one task per token (each on its own file)."""
    per = count // len(tokens)

    async def one(t: int) -> None:
        for _ in range(per):
            await svc.files.write(None, node(len(tokens), t), PAYLOAD, token=tokens[t])

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for t in range(len(tokens)):
            tg.start_soon(one, t)
    return per * len(tokens) / (time.perf_counter() - start)


async def writes(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="mcp-locks-bench-files-", dir=args.dir) as tmp:
        root = Path(tmp)
        (root / "bare").mkdir()
        async with LockService(SqliteStore(root / "locks.db"), files_dir=root / "files") as svc:
            for conc in args.concurrency:
                tokens = [(await svc.lock(None, node(conc, t), "write", timeout=3600)).token for t in range(conc)]
                await our_writes(svc, tokens, 50 * conc)  # warm up
                bare_writes(root / "bare", 50 * conc, conc)
                rounds = []
                for r in range(args.rounds):
                    ours_s: list[float] = []
                    bare_s: list[float] = []
                    synced_s: list[float] = []
                    for block in range(4):  # rotate which goes first
                        series = [
                            (ours_s, partial(our_writes, svc, tokens, args.writes)),
                            (bare_s, partial(anyio.to_thread.run_sync, bare_writes, root / "bare", args.writes, conc)),
                            (synced_s, partial(anyio.to_thread.run_sync, bare_writes, root / "bare", args.writes, conc,
                                               True)),
                        ]  # fmt: skip
                        k = (block + r) % 3
                        for sink, run in series[k:] + series[:k]:
                            sink.append(await run())
                    row = {"part": "writes", "concurrency": conc, "round": r, "ours_per_s": statistics.median(ours_s),
                           "bare_per_s": statistics.median(bare_s),
                           "bare_dirsync_per_s": statistics.median(synced_s)}  # fmt: skip
                    row["ratio"] = row["ours_per_s"] / row["bare_per_s"]
                    row["ratio_vs_dirsync"] = row["ours_per_s"] / row["bare_dirsync_per_s"]
                    print(json.dumps(row), flush=True)
                    rounds.append(row)
                keys = ("ours_per_s", "bare_per_s", "bare_dirsync_per_s", "ratio", "ratio_vs_dirsync")
                out[str(conc)] = {k: round(statistics.median(x[k] for x in rounds), 3) for k in keys}
    return out


@contextmanager
def _server(data_dir: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, str]]:
    log = data_dir / "server.log"
    with log.open("wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mcp_locks", "serve", "--port", "0", "--data-dir", str(data_dir)],
            stderr=f,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + 30
        url = None
        while url is None and time.monotonic() < deadline:
            m = re.search(r"listening on (http://\S+)/mcp", log.read_text())
            url = m.group(1) if m else None
            time.sleep(0.05)
        assert url is not None, log.read_text()
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        yield proc, url, (data_dir / "admin.key").read_text().strip()
    finally:
        proc.terminate()
        proc.wait(30)


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def upload(url: str, key: str, mib: int, node: str) -> float:
    """MiB/s of one resumable upload of ``mib`` MiB, chunks generated as they are sent."""
    block = os.urandom(1 << 20)
    sha = hashlib.sha256()
    with httpx.Client(base_url=f"{url}/v1/workspaces/default", headers={"Authorization": f"Bearer {key}"},
                      timeout=300) as h:  # fmt: skip
        uid = h.post("/uploads", json={"node_id": node}).raise_for_status().json()["upload_id"]
        start = time.perf_counter()
        per_chunk = CHUNK >> 20
        for c in range(mib // per_chunk):

            def body(c: int = c) -> Iterator[bytes]:
                for i in range(per_chunk):
                    piece = bytes([(c * per_chunk + i) % 251]) + block[1:]
                    sha.update(piece)
                    yield piece

            h.put(f"/uploads/{uid}/chunks/{c}", content=body()).raise_for_status()
        h.post(f"/uploads/{uid}/complete", json={"node_id": node, "sha256": sha.hexdigest(), "if_version": 0}
               ).raise_for_status()  # fmt: skip
        return mib / (time.perf_counter() - start)


def uploads(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with (
        tempfile.TemporaryDirectory(prefix="mcp-locks-bench-up-", dir=args.dir) as tmp,
        _server(Path(tmp)) as (
            proc,
            url,
            key,
        ),
    ):
        out["rss_mib_at_start"] = round(peak_rss_mib(proc.pid), 1)
        for mib in args.upload_mib:
            rates = [upload(url, key, mib, f"big/{mib}-{r}.bin") for r in range(args.upload_runs)]
            row = {"part": "upload", "mib": mib, "mib_per_s": round(statistics.median(rates), 1),
                       "server_peak_rss_mib": round(peak_rss_mib(proc.pid), 1)}  # fmt: skip
            print(json.dumps(row), flush=True)
            out[str(mib)] = row
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--writes", type=int, default=400, help="Writes per block.")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8])
    p.add_argument("--upload-mib", type=lambda s: [int(x) for x in s.split(",")], default=[64, 256])
    p.add_argument("--upload-runs", type=int, default=3)
    p.add_argument("--dir", default=None, help="Where the temporary folders go (default: the system's temp dir).")
    p.add_argument("--skip-uploads", action="store_true")
    args = p.parse_args()
    summary: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {os.cpu_count()} cpu, {platform.python_implementation()} "
        f"{platform.python_version()}",
        "writes": anyio.run(writes, args),
    }
    if not args.skip_uploads:
        summary["uploads"] = uploads(args)
    print(json.dumps({"summary": summary}), flush=True)


if __name__ == "__main__":
    main()

"""The examples, run as a user runs them: processes talking to a real server on a free loopback port."""

from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import anyio
import pytest

from mcp_locks import Settings, build_app
from mcp_locks.engine.lock_service import LockService
from mcp_locks.stores.base import MemoryStore

from .servers import serve_app

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

EXAMPLES = Path(__file__).parents[1] / "examples"
# Each example takes a second or two (crash.py: about its 2 s lease); this bound is for a broken run.
RUN_WITHIN = 30


@dataclass
class Server:
    url: str
    service: LockService
    admin: str


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    """A real server on the real clock (crash.py needs a lease to run out) and an admin key for the examples."""
    service = LockService(MemoryStore())
    async with serve_app(build_app(Settings(store="memory", data_dir=tmp_path), service)) as url:
        admin, _ = await service.create_key("root", [], "admin")
        yield Server(url, service, admin)


async def run_example(
    server: Server,
    name: str,
    *args: str,
    key: str | None = None,
    key_in_env: bool = False,
    within: float = RUN_WITHIN,
) -> subprocess.CompletedProcess[str]:
    """``python examples/NAME ARGS`` with the URL and key (the admin's) as flags, or as MCP_LOCKS_URL/KEY."""
    key = key or server.admin
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_LOCKS_")}
    if key_in_env:
        env |= {"MCP_LOCKS_URL": server.url, "MCP_LOCKS_KEY": key}
    else:
        args = ("--url", server.url, "--key", key, *args)
    with anyio.fail_after(within):
        done = await anyio.run_process(
            [sys.executable, str(EXAMPLES / name), *args], env=env, stdin=subprocess.DEVNULL, check=False
        )
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())


async def assert_left_clean(server: Server) -> None:
    """No lock is left behind, and every key the example made for its agents is revoked."""
    assert (await server.service.list_locks(None)).locks == []
    made = [r for r in await server.service.list_keys() if r.role == "agent"]
    assert made
    assert all(r.revoked_at is not None for r in made)


async def test_the_pipelines_analyst_waits_its_turn_and_only_ever_reads_complete_batches(
    server: Server, tmp_path: Path
) -> None:
    done = await run_example(server, "pipeline.py", "--workdir", str(tmp_path / "work"), key_in_env=True)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "OK: the analyst only ever read complete batches" in out
    # Each time, the analyst was in line while the scraper was halfway through a batch ...
    assert len(re.findall(r"halfway through batch \d; waiting for me: analyst-\w+ \(read\)", out)) == 3
    # ... and read after the batch was whole: 6, then 12, then 18 rows.
    reads = re.findall(r"analyst: read (\d+) rows after waiting \d+ ms for a read lock: every batch complete", out)
    assert reads == ["6", "12", "18"]
    rows = list(csv.DictReader(io.StringIO((tmp_path / "work" / "data" / "dataset.csv").read_text())))
    assert [(r["batch"], r["row"]) for r in rows] == [(str(b), str(i)) for b in range(3) for i in range(6)]
    fences = [int(rows[b * 6]["fence"]) for b in range(3)]
    assert all(r["fence"] == str(fences[int(r["batch"])]) for r in rows)  # one write lock per batch
    assert fences == sorted(set(fences))  # each later grant has a larger fence
    await assert_left_clean(server)


async def test_without_locks_the_pipelines_analyst_reads_half_appended_batches_and_the_example_fails(
    server: Server, tmp_path: Path
) -> None:
    done = await run_example(server, "pipeline.py", "--workdir", str(tmp_path), "--unsafe")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "batch 0 has 3 of 6 rows (half-appended)" in done.stdout
    assert "INCONSISTENT" in done.stdout


async def test_every_report_section_lands_exactly_once_rendered_from_the_whole_template(
    server: Server, tmp_path: Path
) -> None:
    done = await run_example(server, "report.py", "--workdir", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    report = (tmp_path / "reports" / "q3.md").read_text()
    assert report.startswith("# Q3 report\n")
    for slug, title in [("summary", "Summary"), ("revenue", "Revenue"), ("costs", "Costs"), ("outlook", "Outlook")]:
        assert report.count(f"## {title}\n") == 1
        # Rendered from the template the charts agent finished: its chart slot and then its body.
        assert re.search(rf"## {title}\n\n!\[{title} chart\]\(charts/{slug}\.svg\)\n\n\S", report)
        assert f"{slug}: added its section" in done.stdout
    assert report in done.stdout  # the example prints the final report
    # The charts agent held the template until all four writers were in line for it.
    assert re.search(r"waiting for it: (\w+-\w+ \(read\)(, )?){4}$", done.stdout, re.MULTILINE)
    await assert_left_clean(server)


async def test_without_locks_report_sections_are_lost_and_the_example_fails(server: Server, tmp_path: Path) -> None:
    done = await run_example(server, "report.py", "--workdir", str(tmp_path), "--unsafe")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "BROKEN REPORT" in done.stdout
    assert "appears 0 times" in done.stdout  # a lost update


async def test_a_killed_agents_lock_passes_on_when_its_lease_runs_out_and_its_token_answers_lock_expired(
    server: Server,
) -> None:
    done = await run_example(server, "crash.py", within=15)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "worker: killed by SIGKILL (exit status -9); it never released the lock" in out
    held_until = re.search(r"still held by worker-\w+ until (\S+);", out)
    got_at = re.search(r"successor: got the lock at (\S+) after waiting", out)
    assert held_until, out
    assert got_at, out
    assert datetime.fromisoformat(got_at[1]) >= datetime.fromisoformat(held_until[1])  # not a moment before
    assert re.search(r"the worker's token: held=False, LOCK_EXPIRED: lock lk_\w+ on 'jobs/nightly.lock' expired", out)
    await assert_left_clean(server)


async def test_an_example_without_an_admin_key_says_what_it_needs_and_exits_2(server: Server, tmp_path: Path) -> None:
    agent_key, _ = await server.service.create_key("someone", ["default"])
    done = await run_example(server, "pipeline.py", "--workdir", str(tmp_path), key=agent_key)
    assert done.returncode == 2
    assert "pass an admin key with --key" in done.stderr


@pytest.mark.timeout(300)
async def test_lost_updates_16_agents_by_200_increments_lose_nothing_through_mcp_locks(tmp_path: Path) -> None:
    # The workload: 16 agent processes x 200 increments, half under locks, half optimistic,
    # against a real `mcp-locks serve` process (its own event loop, as deployed).
    from .test_process import admin_key, server_process

    with server_process(tmp_path) as (_proc, url, _log):
        base = url.removesuffix("/mcp")
        args = ["--url", base, "--key", admin_key(tmp_path), "--agents", "16", "--increments", "200",
                "--workdir", str(tmp_path)]  # fmt: skip
        with anyio.fail_after(280):
            done = await anyio.run_process([sys.executable, str(EXAMPLES / "lost_updates.py"), *args], check=False)
    out = done.stdout.decode()
    assert done.returncode == 0, out + done.stderr.decode()
    assert "guarded (mcp-locks, half locked, half optimistic): 3200 of 3200 (0 increments lost)" in out
    assert "unguarded (plain read/write" in out  # shown beside it; how many it loses is up to the scheduler

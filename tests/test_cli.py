"""The command line: help, version, bad flags, and the benchmark scripts still run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner

from mcp_locks import __version__
from mcp_locks.cli.main import main
from mcp_locks.stores.sqlite import SqliteStore

from .pg import PG_URL, need_pg

ROOT = Path(__file__).resolve().parents[1]


def test_version_prints_the_package_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


@pytest.mark.parametrize("args", [["--help"], ["serve", "--help"]])
def test_help_says_what_it_does_with_an_example(args: list[str]) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0
    assert "Example:" in result.output


def test_serve_refuses_a_port_in_use_with_a_clear_message(tmp_path: Path) -> None:
    from tests.servers import free_socket

    taken = free_socket()
    try:
        port = taken.getsockname()[1]
        result = CliRunner().invoke(main, ["serve", "--port", str(port), "--data-dir", str(tmp_path)])
    finally:
        taken.close()
    assert result.exit_code != 0
    assert "Pick another --port" in result.output


def test_serve_refuses_a_data_dir_that_holds_no_lock_database(tmp_path: Path) -> None:
    (tmp_path / "locks.db").write_bytes(b"this is not an SQLite database, and it is long enough to tell" * 4)
    result = CliRunner().invoke(main, ["serve", "--port", "0", "--data-dir", str(tmp_path)])
    assert result.exit_code != 0
    assert "cannot use the lock database" in result.output
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_the_engine_benchmark_runs_end_to_end() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.engine", "--runs", "1", "--seconds", "0.2", "--seq", "50", "--callers", "4"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "ops_per_s" in out.stdout


@pytest.mark.slow
def test_the_file_store_benchmark_runs_end_to_end(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.files", "--writes", "16", "--rounds", "1", "--concurrency", "1,2",
         "--upload-mib", "16", "--upload-runs", "1", "--dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    summary = json.loads(out.stdout.splitlines()[-1])["summary"]
    assert set(summary["writes"]) == {"1", "2"}
    assert summary["uploads"]["16"]["mib_per_s"] > 0


@pytest.mark.slow
def test_the_observability_benchmark_runs_end_to_end() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.observe", "--pairs", "40", "--runs", "1", "--delay", "0.05"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    result = json.loads(out.stdout.splitlines()[-1])
    assert set(result["median_pairs_per_s"]) == {"plain", "audit", "quiet", "hook"}
    assert result["median_drain_s"] >= 0


@pytest.mark.slow
def test_the_scale_benchmark_runs_end_to_end() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.scale", "--runs", "1", "--held", "2000", "--waiters", "200", "--expiring", "200",
         "--expire-batch", "50"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    medians = {
        line.split(" ", 2)[0]: json.loads(line.split(" ", 2)[2])
        for line in out.stdout.splitlines()
        if line.split(" ", 2)[1:2] == ["median"]
    }
    assert medians["waiters"]["granted"] == 200
    assert medians["expiry"]["granted"] == 200
    # In parts of 50, the first waiter is answered before the storm's last commit.
    assert medians["expiry"]["first_grant_s"] < medians["expiry"]["expire_to_committed_s"]
    assert medians["held"]["restart_s"] > 0


@pytest.mark.slow
def test_the_storm_floor_benchmark_runs_end_to_end() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.storm_floor", "--runs", "1", "--leases", "500"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    median = json.loads(out.stdout.splitlines()[-1].removeprefix("median "))
    assert median["records_s"] > 0
    assert median["commit_s"] > 0
    assert median["table_s"] > 0
    assert median["floor_s"] == pytest.approx(median["records_s"] + median["commit_s"], abs=0.002)


@pytest.mark.slow
def test_the_multinode_benchmark_runs_end_to_end() -> None:
    need_pg()
    out = subprocess.run(
        [sys.executable, "-m", "bench.multinode", "--runs", "1", "--seconds", "0.3", "--clients", "3", "--samples", "2",
         "--pg", PG_URL],
        cwd=ROOT, capture_output=True, text=True, timeout=240, check=True,
    )  # fmt: skip
    result = json.loads(out.stdout.rsplit("result ", 1)[1])
    assert set(result["throughput"]) == {
        f"{kind} x{n}, {where}"
        for kind, n in (("sqlite", 1), ("pg", 1), ("pg", 2), ("pg", 3))
        for where in ("one workspace", "64 workspaces")
    }
    assert all(v["median"] > 0 for v in result["throughput"].values())
    assert result["handoff_ms"]["pg x3, across servers"]["p50"] > 0


def test_workspaces_create_and_list_work_on_a_data_dir(tmp_path: Path) -> None:
    import anyio

    from mcp_locks.engine.lock_service import LockService
    from mcp_locks.stores.sqlite import SqliteStore

    async def first_start() -> None:
        async with LockService(SqliteStore(tmp_path / "locks.db")):
            pass

    anyio.run(first_start)
    runner = CliRunner()
    created = runner.invoke(main, ["workspaces", "create", "team-a", "--description", "A", "--data-dir", str(tmp_path)])
    assert created.exit_code == 0, created.output
    again = runner.invoke(main, ["workspaces", "create", "team-a", "--data-dir", str(tmp_path)])
    assert again.exit_code != 0
    assert "ALREADY_EXISTS" in again.output
    listed = runner.invoke(main, ["workspaces", "list", "--data-dir", str(tmp_path)])
    assert [line.split("\t")[0] for line in listed.output.splitlines()] == ["default", "team-a"]


def test_workspaces_list_without_a_database_says_how_to_make_one(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["workspaces", "list", "--data-dir", str(tmp_path)])
    assert result.exit_code != 0
    assert "mcp-locks serve" in result.output


@pytest.mark.parametrize("command", [["serve", "--port", "0"], ["stdio", "--embedded"]])
def test_a_malformed_admin_key_setting_is_a_clear_message_not_a_traceback(tmp_path: Path, command: list[str]) -> None:
    result = CliRunner().invoke(main, [*command, "--data-dir", str(tmp_path)], env={"MCP_LOCKS_ADMIN_KEY": "not-a-key"})
    assert result.exit_code != 0
    assert "MCP_LOCKS_ADMIN_KEY is not an mcp-locks key" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_a_workspace_bound_to_a_folder_serves_that_folders_files(tmp_path: Path) -> None:
    import anyio

    from mcp_locks.engine.lock_service import LockService
    from mcp_locks.stores.sqlite import SqliteStore

    project, data = tmp_path / "project", tmp_path / "data"
    project.mkdir()
    (project / "plan.md").write_text("the plan")

    async def first_start() -> None:
        async with LockService(SqliteStore(data / "locks.db")):
            pass

    anyio.run(first_start)
    made = CliRunner().invoke(main, ["workspaces", "create", "proj", "--root", str(project), "--data-dir", str(data)])
    assert made.exit_code == 0, made.output
    assert str(project.resolve()) in made.output
    missing = CliRunner().invoke(main, ["workspaces", "create", "x", "--root", str(tmp_path / "nope"), "--data-dir",
                                        str(data)])  # fmt: skip
    assert missing.exit_code != 0
    assert "does not exist" in missing.output

    async def use() -> None:
        async with LockService(SqliteStore(data / "locks.db"), files_dir=data / "files") as s:
            assert (await s.files.read("proj", "plan.md")).content == "the plan"
            await s.files.write("proj", "notes/new.md", b"written through", if_version=0)

    anyio.run(use)
    assert (project / "notes" / "new.md").read_text() == "written through"


def test_settings_come_from_flags_then_environment_then_a_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mcp_locks.settings import load_settings

    config = tmp_path / "mcp-locks.toml"
    config.write_text("port = 9001\nmax_file_size = 4096\nrate_limit = '10/second'\n")
    monkeypatch.setenv("MCP_LOCKS_KEY", "client commands read this; the server ignores it")
    from_file = load_settings(config)
    assert (from_file.port, from_file.max_file_size, from_file.rate_limit) == (9001, 4096, "10/second")
    monkeypatch.setenv("MCP_LOCKS_PORT", "9002")
    assert load_settings(config).port == 9002
    assert load_settings(config, port=9003).port == 9003
    monkeypatch.setenv("MCP_LOCKS_CONFIG", str(config))
    assert load_settings().max_file_size == 4096


@pytest.mark.parametrize(("text", "said"), [("prot = 1\n", "prot"), ("port = 'many'\n", "port")])
def test_a_config_file_with_an_unknown_or_bad_setting_is_a_clear_error(tmp_path: Path, text: str, said: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    result = CliRunner().invoke(main, ["--config", str(config), "workspaces", "list", "--data-dir", str(tmp_path)])
    assert result.exit_code != 0
    assert said in result.output
    assert "Traceback" not in result.output
    missing = CliRunner().invoke(main, ["--config", str(tmp_path / "nope.toml"), "workspaces", "list"])
    assert "does not exist" in missing.output


def test_an_admin_key_setting_naming_a_stored_key_without_its_secret_stops_the_server_with_one_line(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "locks.db")
    anyio.run(store.open)
    anyio.run(store.close)  # an existing database, as a first start leaves it
    runner = CliRunner()
    created = runner.invoke(main, ["keys", "create", "--role", "admin", "--agent", "ops", "--data-dir", str(tmp_path)])
    key = re.search(r"mlk_\S+", created.output)
    assert key is not None, created.output
    wrong = key.group()[:-4] + ("AAAA" if not key.group().endswith("AAAA") else "BBBB")
    out = subprocess.run(
        [sys.executable, "-m", "mcp_locks", "serve", "--port", "0", "--data-dir", str(tmp_path)],
        env={**os.environ, "MCP_LOCKS_ADMIN_KEY": wrong},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert "Error: MCP_LOCKS_ADMIN_KEY has the id of a stored key but not its secret" in out.stderr
    assert "Traceback" not in out.stderr

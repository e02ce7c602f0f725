"""The git guard in real repositories against a real server: commits of files others write-locked are refused."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from mcp_locks import Settings, build_app
from mcp_locks.engine.lock_service import LockService
from mcp_locks.stores.base import MemoryStore

from .servers import free_socket, serve_in_thread

pytestmark = pytest.mark.slow


@dataclass
class Repo:
    """A git repository whose commits are made by alice's key, beside a server where bob holds locks too."""

    path: Path
    url: str
    service: LockService
    alice: str
    bob: str
    env: dict[str, str]

    def run(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(args),
            cwd=self.path,
            env={**self.env, **(env or {})},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def git(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return self.run("git", *args, env=env)

    def mcp_locks(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(sys.executable, "-m", "mcp_locks", *args)

    def stage(self, name: str, text: str = "new\n") -> None:
        (self.path / name).parent.mkdir(parents=True, exist_ok=True)
        (self.path / name).write_text(text)
        assert self.git("add", name).returncode == 0

    def commit(self, env: dict[str, str] | None = None, *flags: str) -> subprocess.CompletedProcess[str]:
        return self.git("commit", "-q", "-m", "change", *flags, env=env)

    def lock(self, key: str, node: str, **body: Any) -> dict[str, Any]:
        r = httpx.post(
            f"{self.url}/v1/workspaces/default/nodes/{node}/lock",
            json={"note": "editing", "timeout": 600, **body},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert r.status_code == 200, r.text
        grant: dict[str, Any] = r.json()
        return grant

    def unlock(self, key: str, grant: dict[str, Any]) -> None:
        r = httpx.delete(
            f"{self.url}/v1/workspaces/default/nodes/{grant['node_id']}/lock",
            headers={"Authorization": f"Bearer {key}", "Lock-Token": grant["token"]},
        )
        assert r.status_code == 200, r.text

    def head_files(self) -> set[str]:
        return set(self.git("ls-tree", "-r", "--name-only", "HEAD").stdout.split())


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repo]:
    service = LockService(MemoryStore())
    with serve_in_thread(build_app(Settings(store="memory", data_dir=tmp_path / "data"), service)) as url:
        alice, _ = anyio.run(lambda: service.create_key("alice", ["default"]))
        bob, _ = anyio.run(lambda: service.create_key("bob", ["default"]))
        (tmp_path / "home").mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MCP_LOCKS_", "GIT_"))}
        env |= {
            "HOME": str(tmp_path / "home"),
            "GIT_CONFIG_GLOBAL": str(tmp_path / "home/.gitconfig"),
            "GIT_CONFIG_NOSYSTEM": "1",
            "MCP_LOCKS_URL": url,
            "MCP_LOCKS_KEY": alice,
        }
        r = Repo(tmp_path / "repo", url, service, alice, bob, env)
        r.path.mkdir()
        for args in (["init", "-q"], ["config", "user.name", "Alice"], ["config", "user.email", "alice@example.com"]):
            assert r.git(*args).returncode == 0
        r.stage("README.md", "hello\n")
        assert r.commit().returncode == 0
        yield r


def test_a_commit_of_a_file_another_agent_write_locked_is_refused_naming_the_holder_then_allowed_once_released(
    repo: Repo,
) -> None:
    installed = repo.mcp_locks("git-guard", "install")
    assert installed.returncode == 0, installed.stderr
    grant = repo.lock(repo.bob, "src/app.py", note="refactoring the app", agent="claude-1")
    repo.stage("src/app.py")
    refused = repo.commit()
    assert refused.returncode != 0
    assert "commit refused" in refused.stderr
    assert "src/app.py: write-locked by bob/claude-1" in refused.stderr
    assert "refactoring the app" in refused.stderr
    assert grant["expires_at"][:10] in refused.stderr
    assert "MCP_LOCKS_GUARD=off" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert "src/app.py" not in repo.head_files()
    repo.unlock(repo.bob, grant)
    allowed = repo.commit()
    assert allowed.returncode == 0, allowed.stderr
    assert "src/app.py" in repo.head_files()


def test_the_committers_own_locks_in_any_session_and_read_locks_do_not_block(repo: Repo) -> None:
    repo.mcp_locks("git-guard", "install")
    repo.lock(repo.alice, "mine.txt", agent="claude-session-9")
    repo.lock(repo.alice, "plain.txt")
    repo.lock(repo.bob, "shared.txt", mode="read")
    for name in ("mine.txt", "plain.txt", "shared.txt"):
        repo.stage(name)
    done = repo.commit()
    assert done.returncode == 0, done.stderr
    assert {"mine.txt", "plain.txt", "shared.txt"} <= repo.head_files()


def test_a_tree_lock_above_a_file_and_a_rename_or_deletion_of_a_locked_file_are_refused(repo: Repo) -> None:
    repo.stage("docs/guide.md")
    repo.stage("old.txt")
    assert repo.commit().returncode == 0
    repo.mcp_locks("git-guard", "install")
    repo.lock(repo.bob, "docs", depth="tree", note="docs freeze")
    repo.lock(repo.bob, "old.txt")
    repo.stage("docs/deep/new.md")
    assert repo.git("mv", "old.txt", "renamed.txt").returncode == 0
    refused = repo.commit()
    assert refused.returncode != 0
    assert "docs/deep/new.md: write-locked by bob" in refused.stderr
    assert "tree lock on docs/" in refused.stderr
    assert "old.txt: write-locked by bob" in refused.stderr
    assert repo.git("reset", "-q").returncode == 0
    assert repo.git("rm", "-q", "--cached", "old.txt").returncode == 0
    deleted = repo.commit()
    assert deleted.returncode != 0
    assert "old.txt: write-locked by bob" in deleted.stderr


def test_warn_mode_names_the_holder_and_commits(repo: Repo) -> None:
    installed = repo.mcp_locks("git-guard", "install", "--mode", "warn")
    assert installed.returncode == 0, installed.stderr
    repo.lock(repo.bob, "a.txt", note="halfway")
    repo.stage("a.txt")
    done = repo.commit()
    assert done.returncode == 0, done.stderr
    assert "warning" in done.stderr
    assert "a.txt: write-locked by bob" in done.stderr
    assert "a.txt" in repo.head_files()


def test_the_bypass_variable_and_no_verify_let_one_commit_through(repo: Repo) -> None:
    repo.mcp_locks("git-guard", "install")
    repo.lock(repo.bob, "a.txt")
    repo.lock(repo.bob, "b.txt")
    repo.stage("a.txt")
    bypassed = repo.commit({"MCP_LOCKS_GUARD": "off"})
    assert bypassed.returncode == 0, bypassed.stderr
    assert "skipped" in bypassed.stderr
    repo.stage("b.txt")
    assert repo.commit().returncode != 0
    assert repo.commit(None, "--no-verify").returncode == 0
    assert {"a.txt", "b.txt"} <= repo.head_files()


def test_with_the_server_down_block_mode_refuses_saying_how_and_warn_mode_commits(repo: Repo) -> None:
    sock = free_socket()
    down = {"MCP_LOCKS_URL": f"http://127.0.0.1:{sock.getsockname()[1]}"}
    sock.close()
    repo.mcp_locks("git-guard", "install")
    repo.stage("a.txt")
    refused = repo.commit(down)
    assert refused.returncode != 0
    assert "cannot check the locks" in refused.stderr
    assert "mcp-locks serve" in refused.stderr
    assert "MCP_LOCKS_GUARD=off" in refused.stderr
    repo.mcp_locks("git-guard", "install", "--mode", "warn")
    allowed = repo.commit(down)
    assert allowed.returncode == 0, allowed.stderr
    assert "warning: cannot check the locks" in allowed.stderr


def test_an_existing_pre_commit_hook_is_chained_run_first_and_restored_on_uninstall(repo: Repo) -> None:
    hook = repo.path / ".git/hooks/pre-commit"
    script = '#!/bin/sh\necho ran >> "$(git rev-parse --git-dir)/chained.log"\n[ ! -e stop ]\n'
    hook.write_text(script)
    hook.chmod(0o750)
    installed = repo.mcp_locks("git-guard", "install")
    assert installed.returncode == 0, installed.stderr
    assert "runs first" in installed.stdout
    again = repo.mcp_locks("git-guard", "install")
    assert "already in" in again.stdout
    assert (repo.path / ".git/hooks/pre-commit.mcp-locks-chained").read_text() == script
    repo.stage("a.txt")
    assert repo.commit().returncode == 0
    assert (repo.path / ".git/chained.log").read_text() == "ran\n"
    (repo.path / "stop").write_text("")  # the chained hook now fails: so does the commit
    repo.stage("b.txt")
    assert repo.commit().returncode != 0
    removed = repo.mcp_locks("git-guard", "uninstall")
    assert removed.returncode == 0, removed.stderr
    assert hook.read_text() == script
    assert stat.S_IMODE(hook.stat().st_mode) == 0o750
    assert not (repo.path / ".git/hooks/pre-commit.mcp-locks-chained").exists()
    assert "not installed" in repo.mcp_locks("git-guard", "uninstall").stdout


def test_uninstall_leaves_a_pre_commit_hook_it_did_not_write(repo: Repo) -> None:
    hook = repo.path / ".git/hooks/pre-commit"
    hook.write_text("#!/bin/sh\nexit 0\n")
    left = repo.mcp_locks("git-guard", "uninstall")
    assert left.returncode == 0, left.stderr
    assert "not installed" in left.stdout
    assert hook.read_text() == "#!/bin/sh\nexit 0\n"
    # With a chained hook waiting as well, which one to keep is the user's call: both stay, and it says so.
    (repo.path / ".git/hooks/pre-commit.mcp-locks-chained").write_text("#!/bin/sh\nexit 1\n")
    refused = repo.mcp_locks("git-guard", "uninstall")
    assert refused.returncode == 1
    assert "not the mcp-locks git guard" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert hook.read_text() == "#!/bin/sh\nexit 0\n"


def test_install_refuses_when_another_hook_and_a_chained_one_are_both_there(repo: Repo) -> None:
    hooks = repo.path / ".git/hooks"
    (hooks / "pre-commit").write_text("#!/bin/sh\nexit 0\n")
    (hooks / "pre-commit.mcp-locks-chained").write_text("#!/bin/sh\nexit 1\n")
    refused = repo.mcp_locks("git-guard", "install")
    assert refused.returncode == 1
    assert "pre-commit.mcp-locks-chained exists too" in refused.stderr
    assert (hooks / "pre-commit").read_text() == "#!/bin/sh\nexit 0\n"
    assert (hooks / "pre-commit.mcp-locks-chained").read_text() == "#!/bin/sh\nexit 1\n"


def test_the_guard_goes_where_core_hooks_path_points(repo: Repo) -> None:
    assert repo.git("config", "core.hooksPath", ".githooks").returncode == 0
    installed = repo.mcp_locks("git-guard", "install")
    assert installed.returncode == 0, installed.stderr
    assert (repo.path / ".githooks/pre-commit").is_file()
    assert not (repo.path / ".git/hooks/pre-commit").exists()
    repo.lock(repo.bob, "a.txt")
    repo.stage("a.txt")
    assert repo.commit().returncode != 0
    assert repo.mcp_locks("git-guard", "uninstall").returncode == 0
    assert not (repo.path / ".githooks/pre-commit").exists()


def test_hooks_status_reports_the_guard(repo: Repo) -> None:
    repo.mcp_locks("git-guard", "install", "--mode", "warn")
    status = repo.mcp_locks("hooks", "status")
    assert status.returncode == 0, status.stderr
    assert f"git guard: warn mode in {repo.path / '.git/hooks/pre-commit'}" in status.stdout
    assert f"server: {repo.url} answers" in status.stdout


def test_a_malformed_key_is_refused_without_echoing_it(repo: Repo) -> None:
    repo.mcp_locks("git-guard", "install")
    repo.stage("a.txt")
    refused = repo.commit({"MCP_LOCKS_KEY": repo.alice + "\nsecond line"})
    assert refused.returncode != 0
    assert "cannot check the locks: INVALID_ARGUMENT" in refused.stderr
    assert "not an mcp-locks key" in refused.stderr
    assert repo.alice not in refused.stderr
    assert "Traceback" not in refused.stderr
    assert "a.txt" not in repo.head_files()

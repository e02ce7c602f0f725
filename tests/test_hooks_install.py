"""`mcp-locks hooks install|uninstall|status`: host config files merged, unmerged and reported, never mangled."""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from mcp_locks import Settings, build_app
from mcp_locks.cli.main import COMMANDS, main
from mcp_locks.engine.lock_service import LockService
from mcp_locks.hooks.install_command import is_ours
from mcp_locks.hooks.install_hosts import HOSTS
from mcp_locks.hooks.install_merge import merge, unmerge
from mcp_locks.stores.base import MemoryStore

from .servers import free_socket, serve_in_thread

#: Each host's config as someone already has it: other hooks, other settings, keys in no sorted order.
SEEDS: dict[str, dict[str, Any]] = {
    "claude-code": {
        "model": "opus",
        "hooks": {
            "PreToolUse": [{"matcher": "Bash", "hooks": [{"type": "command", "command": "./lint.sh"}]}],
            "Stop": [{"hooks": [{"type": "command", "command": "notify-send done"}]}],
        },
        "permissions": {"allow": ["Bash(ls)"]},
    },
    "cursor": {
        "version": 1,
        "hooks": {"preToolUse": [{"command": "./audit.sh", "matcher": "Shell"}], "afterFileEdit": [{"command": "fmt"}]},
    },
    "codex": {"hooks": {"PreToolUse": [{"matcher": "^Bash$", "hooks": [{"type": "command", "command": "guard.sh"}]}]}},
    "gemini": {
        "theme": "GitHub",
        "hooks": {"BeforeTool": [{"matcher": "run_shell_command", "hooks": [{"type": "command", "command": "x"}]}]},
        "general": {"vimMode": True},
    },
}
ALL = [(host, scope) for host in HOSTS for scope in ("project", "user")]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder (found by its .git) as the working directory, and a fake HOME for the user scope."""
    home, proj = tmp_path / "home", tmp_path / "proj"
    home.mkdir()
    (proj / ".git").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    for name in ("CODEX_HOME", "CLAUDE_CONFIG_DIR", "MCP_LOCKS_URL", "MCP_LOCKS_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(proj)
    return proj


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def config_file(host: str, scope: str, project: Path) -> Path:
    return HOSTS[host].config_file(scope, project)  # type: ignore[arg-type]


def ours(config: dict[str, Any], host: str) -> dict[str, int]:
    """Event -> how many of our handlers it has."""
    counts: dict[str, int] = {}
    for event, entries in config.get("hooks", {}).items():
        for entry in entries:
            for handler in entry.get("hooks", [entry]):
                if is_ours(handler.get("command"), "hook", host):
                    counts[event] = counts.get(event, 0) + 1
    return counts


def dumped(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2) + "\n"


@pytest.mark.parametrize(("host", "scope"), ALL)
def test_installing_twice_leaves_one_entry_per_event_keeps_other_hooks_and_uninstall_restores_the_file(
    project: Path, host: str, scope: str
) -> None:
    path = config_file(host, scope, project)
    path.parent.mkdir(parents=True)
    seed = dumped(SEEDS[host])
    path.write_text(seed)
    first = cli("hooks", "install", host, "--scope", scope)
    after_first = path.read_bytes()
    second = cli("hooks", "install", host, "--scope", scope)
    assert first.exit_code == 0, first.output
    assert "installed in" in first.output
    assert second.exit_code == 0, second.output
    assert "already installed" in second.output
    assert path.read_bytes() == after_first
    config = json.loads(path.read_text())
    assert ours(config, host) == dict.fromkeys(HOSTS[host].entries, 1)
    # Every key of the seed is still there, in its order, and every hook of the seed too.
    assert list(config)[: len(SEEDS[host])] == list(SEEDS[host])
    for event, entries in SEEDS[host]["hooks"].items():
        assert config["hooks"][event][: len(entries)] == entries
    removed = cli("hooks", "uninstall", host, "--scope", scope)
    assert removed.exit_code == 0, removed.output
    assert "removed from" in removed.output
    assert path.read_text() == seed


@pytest.mark.parametrize(("host", "scope"), ALL)
def test_a_new_config_file_is_created_0644_and_uninstall_removes_the_file_it_alone_filled(
    project: Path, host: str, scope: str
) -> None:
    path = config_file(host, scope, project)
    assert cli("hooks", "install", host, "--scope", scope).exit_code == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    config = json.loads(path.read_text())
    assert path.read_text() == dumped(config)
    assert ours(config, host) == dict.fromkeys(HOSTS[host].entries, 1)
    if host == "cursor":
        assert list(config) == ["version", "hooks"]
    assert cli("hooks", "uninstall", host, "--scope", scope).exit_code == 0
    assert not path.exists()
    assert "not installed" in cli("hooks", "uninstall", host, "--scope", scope).output


def test_the_entries_match_each_hosts_edit_tools_and_gemini_counts_milliseconds(project: Path) -> None:
    for host in HOSTS:
        cli("hooks", "install", host)
    claude = json.loads((project / ".claude/settings.json").read_text())["hooks"]
    assert claude["PreToolUse"][0]["matcher"] == "Edit|MultiEdit|NotebookEdit|Write"
    assert set(claude) == {"PreToolUse", "SessionEnd", "SubagentStop"}
    cursor = json.loads((project / ".cursor/hooks.json").read_text())["hooks"]
    assert {"Write", "StrReplace", "Delete"} <= set(cursor["preToolUse"][0]["matcher"].split("|"))
    codex = json.loads((project / ".codex/hooks.json").read_text())["hooks"]
    assert codex["PreToolUse"][0]["matcher"] == "^(apply_patch)$"
    gemini = json.loads((project / ".gemini/settings.json").read_text())["hooks"]
    assert gemini["BeforeTool"][0]["matcher"] == "^(replace|write_file)$"
    assert gemini["BeforeTool"][0]["hooks"][0]["timeout"] == 30_000


def test_the_command_written_for_the_user_scope_is_absolute_and_runs_this_mcp_locks_hook(project: Path) -> None:
    cli("hooks", "install", "claude-code", "--scope", "user")
    path = config_file("claude-code", "user", project)
    command = json.loads(path.read_text())["hooks"]["PreToolUse"][0]["hooks"][0]
    words = shlex.split(command["command"])
    assert os.path.isabs(words[0])
    assert words[-2:] == ["hook", "claude-code"]
    # As a host runs it: through a shell, from elsewhere, without the venv on PATH.
    done = subprocess.run(
        ["/bin/sh", "-c", command["command"] + " --help"],
        env={"PATH": "/usr/bin:/bin", "HOME": os.environ["HOME"]},
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "claude-code" in done.stdout


@pytest.mark.parametrize("host", list(HOSTS))
def test_a_project_install_writes_the_plain_command_a_teammate_finds_on_path_and_says_it_must_be_there(
    project: Path, host: str
) -> None:
    path = config_file(host, "project", project)
    path.parent.mkdir()
    old = "/home/alice/.venv/bin/mcp-locks hook " + host  # this machine's path, from an earlier install
    first_event = next(iter(HOSTS[host].entries))
    handler = {"type": "command", "command": old}
    path.write_text(dumped({"hooks": {first_event: [handler if host == "cursor" else {"hooks": [handler]}]}}))
    result = cli("hooks", "install", host)
    assert result.exit_code == 0, result.output
    config = json.loads(path.read_text())
    commands = {h["command"] for entries in config["hooks"].values() for e in entries for h in e.get("hooks", [e])}
    assert commands == {f"mcp-locks hook {host}"}  # no path of this machine in the shared file
    assert "on PATH" in result.output
    assert "pipx install mcp-locks" in result.output
    status = cli("hooks", "status").output
    assert f"runs mcp-locks hook {host}" in next(line for line in status.splitlines() if line.startswith(f"{host} "))
    assert "removed from" in cli("hooks", "uninstall", host).output
    assert not path.exists()


def test_a_user_install_says_nothing_about_teammates_path(project: Path) -> None:
    result = cli("hooks", "install", "cursor", "--scope", "user")
    assert result.exit_code == 0, result.output
    assert "pipx" not in result.output


def test_an_existing_files_mode_is_kept(project: Path) -> None:
    path = project / ".claude/settings.json"
    path.parent.mkdir()
    path.write_text("{}\n")
    path.chmod(0o600)
    assert cli("hooks", "install", "claude-code").exit_code == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_an_entry_of_an_earlier_install_elsewhere_is_replaced_in_place(project: Path) -> None:
    path = project / ".gemini/settings.json"
    path.parent.mkdir()
    old = {"type": "command", "command": "/old/venv/bin/mcp-locks hook gemini", "name": "mcp-locks"}
    other = {"matcher": "run_shell_command", "hooks": [{"type": "command", "command": "x"}]}
    path.write_text(dumped({"hooks": {"BeforeTool": [{"matcher": "write_file", "hooks": [old]}, other]}}))
    cli("hooks", "install", "gemini")
    entries = json.loads(path.read_text())["hooks"]["BeforeTool"]
    assert len(entries) == 2
    assert entries[1] == other
    assert not entries[0]["hooks"][0]["command"].startswith("/old/")


def test_uninstall_keeps_a_hook_that_shares_a_group_with_ours() -> None:
    host = HOSTS["claude-code"]
    mine = {"type": "command", "command": "/x/mcp-locks hook claude-code"}
    theirs = {"type": "command", "command": "./check.sh"}
    config = {"hooks": {"PreToolUse": [{"matcher": "Write", "hooks": [theirs, mine]}]}}
    assert unmerge(config, host) == {"hooks": {"PreToolUse": [{"matcher": "Write", "hooks": [theirs]}]}}
    merged = merge(config, host, "/y/mcp-locks hook claude-code")
    assert merged["hooks"]["PreToolUse"][1] == {"matcher": "Write", "hooks": [theirs]}
    # Another host's entries, and commands that merely mention mcp-locks, are never ours.
    assert not is_ours("/x/mcp-locks hook cursor", "hook", "claude-code")
    assert not is_ours("echo mcp-locks hook claude-code", "hook", "claude-code")
    assert is_ours("/v/bin/python -m mcp_locks hook claude-code", "hook", "claude-code")


@pytest.mark.parametrize("text", ['{\n  "hooks": {\n    "PreToolUse": [,]\n  }\n}\n', "// a comment\n{}\n"])
def test_a_malformed_config_is_refused_naming_the_file_and_position_and_left_untouched(
    project: Path, text: str
) -> None:
    path = project / ".claude/settings.json"
    path.parent.mkdir()
    path.write_text(text)
    for args in (["install", "claude-code"], ["uninstall", "claude-code"]):
        result = cli("hooks", *args)
        assert result.exit_code == 1
        assert str(path) in result.output
        assert "line " in result.output
        assert "column " in result.output
        assert "Traceback" not in result.output
        assert path.read_text() == text


def test_hooks_of_the_wrong_shape_are_refused_and_left_untouched(project: Path) -> None:
    path = project / ".cursor/hooks.json"
    path.parent.mkdir()
    path.write_text('{"hooks": {"preToolUse": {"command": "x"}}}')
    result = cli("hooks", "install", "cursor")
    assert result.exit_code == 1
    assert '"hooks"."preToolUse" is a JSON dict, not a list' in result.output
    assert path.read_text() == '{"hooks": {"preToolUse": {"command": "x"}}}'


def test_install_writes_the_policy_into_a_keyless_project_file_and_keeps_its_other_lines(project: Path) -> None:
    result = cli("hooks", "install", "claude-code", "--policy", "check")
    assert result.exit_code == 0, result.output
    text = (project / ".mcp-locks.toml").read_text()
    assert 'policy = "check"' in text
    assert 'key_env = "MCP_LOCKS_KEY"' in text
    assert "mlk_" not in text
    mine = '# ours\nurl = "http://127.0.0.1:9"\npolicy = "check"\n\n[tool]\nx = 1\n'
    (project / ".mcp-locks.toml").write_text(mine)
    cli("hooks", "install", "cursor", "--policy", "warn")
    assert (project / ".mcp-locks.toml").read_text() == mine.replace('"check"', '"warn"')
    # A new top-level setting goes above the first table, where TOML keeps top-level keys.
    (project / ".mcp-locks.toml").write_text("[tool]\nx = 1\n")
    cli("hooks", "install", "cursor", "--policy", "lock")
    assert (project / ".mcp-locks.toml").read_text() == 'policy = "lock"\n[tool]\nx = 1\n'


def test_a_policy_for_the_user_scope_is_refused_with_what_to_do(project: Path) -> None:
    result = cli("hooks", "install", "codex", "--scope", "user", "--policy", "warn")
    assert result.exit_code == 1
    assert "--scope project" in result.output
    assert not (project.parent / "home/.codex/hooks.json").exists()


def test_codex_hooks_switched_off_are_switched_on_and_the_trust_step_is_named(project: Path) -> None:
    toml = project / ".codex/config.toml"
    toml.parent.mkdir()
    toml.write_text('model = "o5"\n\n[features]  # switches\nhooks = false  # off for now\nweb = true\n')
    result = cli("hooks", "install", "codex")
    assert result.exit_code == 0, result.output
    assert toml.read_text() == 'model = "o5"\n\n[features]  # switches\nhooks = true  # off for now\nweb = true\n'
    assert "/hooks" in result.output
    assert "turned them on" in result.output


def test_a_user_wide_codex_switch_that_turns_hooks_off_is_named_not_edited(project: Path) -> None:
    user = project.parent / "home/.codex/config.toml"
    user.parent.mkdir(parents=True)
    user.write_text("[features]\ncodex_hooks = false\n")
    result = cli("hooks", "install", "codex")
    assert result.exit_code == 0, result.output
    assert f"Codex hooks are turned off in {user}" in result.output
    assert user.read_text() == "[features]\ncodex_hooks = false\n"


def test_a_project_file_that_is_not_toml_is_refused_before_any_hook_is_written(project: Path) -> None:
    (project / ".mcp-locks.toml").write_text("policy = \n")
    result = cli("hooks", "install", "claude-code", "--policy", "warn")
    assert result.exit_code == 1
    assert f"{project / '.mcp-locks.toml'} is not valid TOML" in result.output
    assert (project / ".mcp-locks.toml").read_text() == "policy = \n"
    assert not (project / ".claude").exists()


def test_status_reports_each_host_and_scope_the_policy_and_a_server_that_answers(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli("hooks", "install", "claude-code", "--policy", "warn")
    cli("hooks", "install", "gemini", "--scope", "user")
    app = build_app(Settings(store="memory", data_dir=tmp_path / "data"), LockService(MemoryStore()))
    with serve_in_thread(app) as url:
        monkeypatch.setenv("MCP_LOCKS_URL", url)
        result = cli("hooks", "status")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len([line for line in lines if line.split()[0] in HOSTS]) == 8
    claude = next(line for line in lines if line.startswith("claude-code  project"))
    assert f"installed in {project / '.claude/settings.json'}: PreToolUse, SessionEnd, SubagentStop" in claude
    assert "policy warn" in claude
    assert "installed in" in next(line for line in lines if line.startswith("gemini       user"))
    assert "not installed" in next(line for line in lines if line.startswith("cursor       project"))
    assert f"server: {url} answers" in lines
    assert any(line.startswith("key: ") and "MCP_LOCKS_KEY" in line for line in lines)


def test_status_says_why_a_server_does_not_answer_and_names_an_unreadable_file(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sock = free_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()  # nothing listens there now
    monkeypatch.setenv("MCP_LOCKS_URL", url)
    (project / ".cursor").mkdir()
    (project / ".cursor/hooks.json").write_text("{")
    result = cli("hooks", "status")
    assert result.exit_code == 0, result.output
    assert f"server: {url} does not answer: ConnectError" in result.output
    assert f"{project / '.cursor/hooks.json'} is not valid JSON (line 1, column 2" in result.output


def test_outside_a_project_the_project_scope_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = cli("hooks", "install", "claude-code")
    assert result.exit_code == 1
    assert "no project" in result.output
    assert "Traceback" not in result.output


def test_the_commands_are_in_the_lazy_command_table() -> None:
    assert COMMANDS["hooks"] == "mcp_locks.cli.hooks_admin:hooks"
    assert COMMANDS["git-guard"] == "mcp_locks.cli.hooks_admin:git_guard"
    for args in (["hooks", "--help"], ["git-guard", "--help"], ["hooks", "install", "--help"]):
        result = cli(*args)
        assert result.exit_code == 0
        assert "Example:" in result.output

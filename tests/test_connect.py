"""`mcp-locks connect HOST`: each host's exact entry, merged into its config file safely, with a key made for it."""

from __future__ import annotations

import json
import os
import socket
import stat
import tomllib
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from click.testing import CliRunner, Result

from mcp_locks.cli.connect_hosts import HOSTS
from mcp_locks.cli.connect_key import is_loopback_url
from mcp_locks.cli.main import main
from mcp_locks.core.keys import new_key, parse_key_id
from mcp_locks.engine.lock_service import LockService
from mcp_locks.stores.sqlite import SqliteStore

KEY = new_key("alice", ("default",), "agent", 0.0)[0]
URL = "http://127.0.0.1:8765"

#: host -> (its config file, relative to the project folder or to HOME, and the table holding its servers)
FILES = {
    "claude-code": ("project", ".mcp.json", "mcpServers"),
    "claude-desktop": ("home", ".config/Claude/claude_desktop_config.json", "mcpServers"),
    "cursor": ("project", ".cursor/mcp.json", "mcpServers"),
    "vscode": ("project", ".vscode/mcp.json", "servers"),
    "codex": ("home", ".codex/config.toml", "mcp_servers"),
    "gemini": ("project", ".gemini/settings.json", "mcpServers"),
}
#: The hosts whose entry names the key's environment variable: the key is exported, never written.
KEY_IN_ENV = {"codex", "gemini"}


@pytest.fixture
def where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A project folder as the current directory, and a HOME of its own (user-scope files land there)."""
    dirs = {"project": tmp_path / "project", "home": tmp_path / "home"}
    for d in dirs.values():
        d.mkdir()
    monkeypatch.chdir(dirs["project"])
    monkeypatch.setenv("HOME", str(dirs["home"]))
    for name in ("CODEX_HOME", "MCP_LOCKS_URL", "MCP_LOCKS_ADMIN_KEY", "MCP_LOCKS_DATA_DIR", "MCP_LOCKS_STORE"):
        monkeypatch.delenv(name, raising=False)
    return dirs


def connect(*args: str) -> Result:
    return CliRunner().invoke(main, ["connect", *args])


def config_file(where: dict[str, Path], host: str) -> Path:
    scope, rel, _ = FILES[host]
    return where[scope] / rel


def parse(path: Path) -> dict[str, Any]:
    text = path.read_text()
    return tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)


def expected_entry(host: str, url: str = URL, key: str = KEY) -> dict[str, Any]:
    bearer = {"Authorization": f"Bearer {key}"}
    return {
        "claude-code": {"type": "http", "url": f"{url}/mcp", "headers": bearer},
        "cursor": {"url": f"{url}/mcp", "headers": bearer},
        "vscode": {"type": "http", "url": f"{url}/mcp", "headers": bearer},
        "codex": {"url": f"{url}/mcp", "bearer_token_env_var": "MCP_LOCKS_KEY"},
        "gemini": {"httpUrl": f"{url}/mcp", "headers": {"Authorization": "Bearer $MCP_LOCKS_KEY"}},
    }[host]


def test_every_host_the_table_knows_is_tested() -> None:
    assert set(HOSTS) == set(FILES)


def test_claude_code_gets_its_claude_mcp_add_line(where: dict[str, Path]) -> None:
    result = connect("claude-code", "--key", KEY)
    assert result.exit_code == 0, result.output
    line = f'claude mcp add --transport http locks {URL}/mcp --header "Authorization: Bearer {KEY}"'
    assert result.stdout == line + "\n"
    assert not (where["project"] / ".mcp.json").exists()  # printed only, without --write


@pytest.mark.parametrize("host", ["cursor", "vscode", "gemini", "codex"])
def test_each_host_gets_its_exact_entry_printed(where: dict[str, Path], host: str) -> None:
    result = connect(host, "--key", KEY, "--url", "http://127.0.0.1:9000/mcp")  # an MCP URL is cut to its base
    assert result.exit_code == 0, result.output
    _, rel, table = FILES[host]
    if host in KEY_IN_ENV:
        assert f"export MCP_LOCKS_KEY={KEY}" in result.stdout
        assert KEY not in result.stdout.split("export")[0]  # the file's entry names the variable, never the key
        entry = result.stdout.split("export")[0]
        got = tomllib.loads(entry) if host == "codex" else json.loads(entry)
    else:
        got = json.loads(result.stdout)
    assert got == {table: {"locks": expected_entry(host, "http://127.0.0.1:9000")}}
    assert rel.rsplit("/", 1)[-1] in result.stderr  # says which file it goes in


def test_claude_desktop_launches_mcp_locks_by_its_absolute_path(where: dict[str, Path]) -> None:
    result = connect("claude-desktop", "--key", KEY)
    assert result.exit_code == 0, result.output
    entry = json.loads(result.stdout)["mcpServers"]["locks"]
    assert os.path.isabs(entry["command"])
    assert os.access(entry["command"], os.X_OK)
    assert entry["args"][-3:] == ["stdio", "--url", URL]
    assert entry["env"] == {"MCP_LOCKS_KEY": KEY}
    assert ".config/Claude/claude_desktop_config.json" in result.stderr


def test_without_mcp_locks_on_path_claude_desktop_runs_this_python(
    where: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil
    import sys

    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(sys, "argv", ["pytest"])
    entry = json.loads(connect("claude-desktop", "--key", KEY).stdout)["mcpServers"]["locks"]
    assert entry["command"] == os.path.abspath(sys.executable)
    assert entry["args"] == ["-m", "mcp_locks", "stdio", "--url", URL]


OTHERS_JSON = {
    "theme": "dark",
    "mcpServers": {"other": {"command": "other-server"}, "locks": {"url": "http://old/mcp"}},
    "servers": {"other": {"type": "stdio", "command": "x"}},
    "zzz": [1, 2, 3],
}
OTHERS_TOML = """model = "o4"  # a comment that stays

[mcp_servers.other]
command = "other-server"
args = ["[not a header]"]

[mcp_servers.locks]
command = "old"

[mcp_servers.locks.env]
MCP_LOCKS_KEY = "old"

[profiles.fast]
model = "mini"
"""


@pytest.mark.parametrize("host", list(FILES))
def test_write_merges_into_the_hosts_file_idempotently_and_keeps_the_rest(where: dict[str, Path], host: str) -> None:
    path = config_file(where, host)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(OTHERS_TOML if host == "codex" else json.dumps(OTHERS_JSON, indent=4))
    before = parse(path)
    first = connect(host, "--key", KEY, "--write")
    assert first.exit_code == 0, first.output
    other = new_key("bob", ("default",), "agent", 0.0)[0]
    second = connect(host, "--key", other, "--write", "--url", "http://127.0.0.1:9001")
    assert second.exit_code == 0, second.output
    got = parse(path)
    table = FILES[host][2]
    entry = got[table]["locks"]
    if host == "claude-desktop":
        assert entry["args"][-3:] == ["stdio", "--url", "http://127.0.0.1:9001"]
        assert entry["env"] == {"MCP_LOCKS_KEY": other}
    else:
        assert entry == expected_entry(host, "http://127.0.0.1:9001", other)
    assert list(got) == list(before)  # other settings kept, in their order
    assert {k: v for k, v in got.items() if k != table} == {k: v for k, v in before.items() if k != table}
    assert list(got[table]) == list(before[table]) + ([] if "locks" in before[table] else ["locks"])
    assert got[table]["other"] == before[table]["other"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert str(path) in second.stderr
    assert "mode 0600" in second.stderr
    text = path.read_text()
    assert text.endswith("\n")
    if host == "codex":
        assert "# a comment that stays" in text
        assert text.count("[mcp_servers.locks]") == 1
    else:
        assert text == json.dumps(got, indent=2, ensure_ascii=False) + "\n"
    if host in KEY_IN_ENV:
        assert other not in text
        assert f"export MCP_LOCKS_KEY={other}" in second.stdout
    else:
        assert other not in second.stdout  # written, not printed


@pytest.mark.parametrize("host", list(FILES))
def test_write_creates_a_missing_file_that_holds_only_the_entry(where: dict[str, Path], host: str) -> None:
    result = connect(host, "--key", KEY, "--write")
    assert result.exit_code == 0, result.output
    path = config_file(where, host)
    assert list(parse(path)) == [FILES[host][2]]
    assert list(parse(path)[FILES[host][2]]) == ["locks"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("host", "text", "said"),
    [
        ("cursor", '{"mcpServers": {"a": {},}\n}',
         "not valid JSON: Expecting property name enclosed in double quotes at line 1, column 25"),
        ("vscode", "// my servers\n{}", "is not valid JSON: Expecting value at line 1, column 1 (comments"),
        ("gemini", "[1, 2]", "does not hold a JSON object"),
        ("claude-code", '{"mcpServers": []}', "'mcpServers' in .mcp.json is not a table of servers"),
        ("codex", "x = [1,\n  2\ny = 3\n", "is not valid TOML: Unclosed array (at line 3, column 1)"),
        ("codex", "mcp_servers = { locks = { url = 'x' } }\n",
         "defines mcp_servers.locks in a form this command does not"),
    ],
)  # fmt: skip
def test_a_file_it_cannot_merge_into_is_never_overwritten_and_no_key_is_made(
    where: dict[str, Path], tmp_path: Path, host: str, text: str, said: str
) -> None:
    data = _first_start(tmp_path / "data")
    path = config_file(where, host)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    result = connect(host, "--agent", "alice", "--write", "--data-dir", str(data))
    assert result.exit_code != 0
    assert said in result.output
    assert "Nothing was written" in result.output
    assert "Traceback" not in result.output
    assert path.read_text() == text
    assert "alice" not in CliRunner().invoke(main, ["keys", "list", "--all", "--data-dir", str(data)]).output


def test_a_project_file_through_a_symbolic_link_is_written_where_the_link_points(where: dict[str, Path]) -> None:
    real = where["home"] / "dotfiles" / "mcp.json"
    real.parent.mkdir()
    real.write_text('{"mcpServers": {"other": {"command": "x"}}}')
    (where["project"] / ".mcp.json").symlink_to(real)
    assert connect("claude-code", "--key", KEY, "--write").exit_code == 0
    assert (where["project"] / ".mcp.json").is_symlink()
    assert set(json.loads(real.read_text())["mcpServers"]) == {"other", "locks"}


def _first_start(data: Path) -> Path:
    async def start() -> None:
        async with LockService(SqliteStore(data / "locks.db")):
            pass

    anyio.run(start)
    return data


def test_a_key_is_made_in_the_data_dir_when_no_server_runs(where: dict[str, Path], tmp_path: Path) -> None:
    data = _first_start(tmp_path / "data")
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # a port nobody listens on
    url = f"http://127.0.0.1:{closed.getsockname()[1]}"
    (data / "admin.key").write_text(new_key("admin", (), "admin", 0.0)[0])  # tried first, over REST: nothing answers
    try:
        result = connect("cursor", "--agent", "alice", "--write", "--url", url, "--data-dir", str(data))
    finally:
        closed.close()
    assert result.exit_code == 0, result.output
    assert f"for agent alice in {data}" in result.stderr
    key = parse(config_file(where, "cursor"))["mcpServers"]["locks"]["headers"]["Authorization"].removeprefix("Bearer ")
    listed = CliRunner().invoke(main, ["keys", "list", "--data-dir", str(data)]).output
    assert f"{parse_key_id(key)}\talice\tagent\tdefault\tactive" in listed
    again = connect("cursor", "--agent", "alice", "--url", url, "--data-dir", str(data))
    assert again.exit_code != 0
    assert "ALREADY_EXISTS: agent 'alice' already has a live key" in again.output
    assert "--key KEY or --key-file FILE" in again.output


def test_a_key_is_made_through_a_running_servers_admin_api(where: dict[str, Path], tmp_path: Path) -> None:
    from mcp_locks import Settings, build_app

    from .servers import serve_in_thread

    data = _first_start(tmp_path / "data")
    with serve_in_thread(build_app(Settings(data_dir=data))) as url:
        assert (data / "admin.key").exists()
        made = connect("gemini", "--agent", "carol", "--workspace", "default", "--url", url, "--data-dir", str(data))
        assert made.exit_code == 0, made.output
        key = made.stdout.split("export MCP_LOCKS_KEY=")[1].strip()  # Gemini reads it from the environment
        me = httpx.get(f"{url}/v1/me", headers={"Authorization": f"Bearer {key}"}).json()
        stranger = tmp_path / "elsewhere"
        stranger.mkdir()
        (stranger / "admin.key").write_text(new_key("admin", (), "admin", 0.0)[0])
        refused = connect("vscode", "--agent", "dan", "--url", url, "--data-dir", str(stranger))
    assert f"through {url}" in made.stderr
    assert (me["agent"], me["workspaces"]) == ("carol", ["default"])
    assert refused.exit_code != 0
    assert "UNAUTHENTICATED" in refused.output
    assert "does not know the admin key from" in refused.output


def test_gemini_reads_the_key_from_the_environment_so_the_settings_file_the_team_commits_holds_none(
    where: dict[str, Path],
) -> None:
    (where["project"] / ".git").mkdir()
    result = connect("gemini", "--key", KEY, "--write")
    assert result.exit_code == 0, result.output
    path = where["project"] / ".gemini/settings.json"
    assert json.loads(path.read_text())["mcpServers"]["locks"]["headers"] == {"Authorization": "Bearer $MCP_LOCKS_KEY"}
    assert f"export MCP_LOCKS_KEY={KEY}" in result.stdout
    assert "out of version control" not in result.stderr
    # `hooks install gemini` fills the same file, to be committed: still no key in it.
    assert CliRunner().invoke(main, ["hooks", "install", "gemini"]).exit_code == 0
    assert "mlk_" not in path.read_text()
    assert "locks" in json.loads(path.read_text())["mcpServers"]


@pytest.mark.parametrize("host", [h for h in FILES if FILES[h][0] == "project" and h not in KEY_IN_ENV])
def test_a_project_file_written_with_the_key_comes_with_the_advice_to_keep_it_out_of_git(
    where: dict[str, Path], host: str
) -> None:
    result = connect(host, "--key", KEY, "--write")
    assert result.exit_code == 0, result.output
    assert KEY in config_file(where, host).read_text()
    assert f"keep {FILES[host][1]} out of version control (add it to .gitignore)" in result.stderr


@pytest.mark.parametrize(
    ("url", "local"),
    [("http://127.0.0.1:8765", True), ("http://localhost:8765", True), ("http://localhost.:1", True),
     ("http://[::1]:8765", True), ("http://127.3.2.1", True), ("https://locks.example.com", False),
     ("http://10.0.0.5:8765", False), ("http://0.0.0.0:8765", False), ("http://localhost.example.com", False)],
)  # fmt: skip
def test_only_a_loopback_url_is_this_machine(url: str, local: bool) -> None:
    assert is_loopback_url(url) is local


def _nothing_listens(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Every POST connect makes fails to connect; the list it returns gets each one's URL and bearer header."""
    import httpx2

    sent: list[tuple[str, str]] = []

    async def post(client: httpx2.AsyncClient, url: str, **kw: Any) -> httpx2.Response:
        sent.append((str(client.base_url).rstrip("/") + url, kw["headers"]["Authorization"]))
        raise httpx2.ConnectError("connection refused")

    monkeypatch.setattr(httpx2.AsyncClient, "post", post)
    return sent


def _keys_in(data: Path) -> str:
    return CliRunner().invoke(main, ["keys", "list", "--all", "--data-dir", str(data)]).output


def test_the_local_admin_key_is_never_sent_to_another_host_and_no_local_key_is_made_for_it(
    where: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _first_start(tmp_path / "data")
    admin = new_key("admin", (), "admin", 0.0)[0]
    (data / "admin.key").write_text(admin)
    monkeypatch.setenv("MCP_LOCKS_DATA_DIR", str(data))  # this machine's server, found without --data-dir
    sent = _nothing_listens(monkeypatch)
    remote = "http://locks.example.com:8765"
    refused = connect("cursor", "--agent", "alice", "--write", "--url", remote)
    assert refused.exit_code == 1
    assert "is not this machine" in refused.output
    assert "MCP_LOCKS_ADMIN_KEY" in refused.output
    assert "--key" in refused.output
    assert sent == []  # the admin key went nowhere
    assert "alice" not in _keys_in(data)
    assert not config_file(where, "cursor").exists()
    # With that server's own admin key: sent there, and when nothing answers, no key is made here instead.
    theirs = new_key("admin", (), "admin", 0.0)[0]
    monkeypatch.setenv("MCP_LOCKS_ADMIN_KEY", theirs)
    down = connect("cursor", "--agent", "alice", "--url", remote)
    assert down.exit_code == 1
    assert f"nothing answers at {remote}" in down.output
    assert sent == [(f"{remote}/v1/admin/keys", f"Bearer {theirs}")]
    assert "alice" not in _keys_in(data)
    # Naming the data dir says it is that server's: its admin key and store are used, as on this machine.
    monkeypatch.delenv("MCP_LOCKS_ADMIN_KEY")
    named = connect("cursor", "--agent", "alice", "--url", remote, "--data-dir", str(data))
    assert named.exit_code == 0, named.output
    assert sent[-1] == (f"{remote}/v1/admin/keys", f"Bearer {admin}")
    assert "alice" in _keys_in(data)


def test_a_key_file_is_read_and_a_bad_key_is_refused_without_echoing_it(where: dict[str, Path], tmp_path: Path) -> None:
    key_file = tmp_path / "alice.key"
    key_file.write_text(KEY + "\n")
    good = connect("cursor", "--key-file", str(key_file))
    assert good.exit_code == 0, good.output
    assert json.loads(good.stdout)["mcpServers"]["locks"]["headers"]["Authorization"] == f"Bearer {KEY}"
    key_file.write_text("hunter2-not-a-key\n")
    bad = connect("cursor", "--key-file", str(key_file))
    assert bad.exit_code != 0
    assert "does not hold an mcp-locks key" in bad.output
    assert "hunter2" not in bad.output
    both = connect("cursor", "--key", KEY, "--key-file", str(key_file))
    assert both.exit_code != 0
    assert "not both" in both.output
    nobody = connect("cursor")
    assert nobody.exit_code != 0
    assert "--agent NAME is needed" in nobody.output


def test_an_unknown_host_or_url_is_a_usage_error(where: dict[str, Path]) -> None:
    host = connect("emacs", "--key", KEY)
    assert host.exit_code == 2
    assert "claude-code" in host.output
    url = connect("cursor", "--key", KEY, "--url", "127.0.0.1:8765")
    assert url.exit_code == 2
    assert "is not an http:// or https:// URL" in url.output


def test_help_names_every_host_with_an_example() -> None:
    result = CliRunner().invoke(main, ["connect", "--help"])
    assert result.exit_code == 0
    assert "Example:" in result.output
    for host in FILES:
        assert host in result.output


def test_the_start_banner_gives_the_urls_and_the_next_step_and_no_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mcp_locks.cli.serve import _announce
    from mcp_locks.settings import Settings

    admin = new_key("admin", (), "admin", 0.0)[0]
    sock = socket.socket()
    sock.bind(("0.0.0.0", 0))  # a wildcard address is shown as loopback, which a client can reach
    try:
        _announce(Settings(data_dir=tmp_path, admin_key=admin), sock)
        port = sock.getsockname()[1]
    finally:
        sock.close()
    out = capsys.readouterr()
    assert out.out == ""
    base = f"http://127.0.0.1:{port}"
    for said in (f"listening on http://0.0.0.0:{port}/mcp", f"MCP:       {base}/mcp", f"REST:      {base}/v1",
                 f"dashboard: {base}/", f"Next: mcp-locks connect claude-code --agent NAME --url {base}"):  # fmt: skip
        assert said in out.err
    assert f"--data-dir {tmp_path}" in out.err
    assert admin not in out.err
    assert "mlk_" not in out.err


def test_loading_the_connect_command_loads_no_server_module() -> None:
    from .test_surface import loaded_after, server_modules_in

    code = "import click\nfrom mcp_locks.cli.main import main\nmain.get_command(click.Context(main), 'connect')"
    modules = loaded_after(code)
    assert server_modules_in(modules) == []  # `mcp-locks --help` loads it: it must stay cheap
    assert [m for m in modules if m.startswith(("httpx", "anyio"))] == []

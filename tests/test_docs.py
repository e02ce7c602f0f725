"""The README and docs/ cannot rot: their examples run against a real server, and their links resolve.

The convention, written down in docs/README.md:

* ```python blocks run: a page's python blocks in order, as one script, in a subprocess with a time
  limit, against a real server on a free loopback port, with MCP_LOCKS_URL, MCP_LOCKS_KEY (an agent
  key reaching ``default``) and MCP_LOCKS_DATA_DIR (the server's data directory) in the environment.
* ```console blocks run too: every ``$ mcp-locks ...`` line, without a shell, must exit 0; the lines
  after it are sample output, not compared.
* Every other tag (sh, json, toml, text, ...) is shown only; an untagged block is an error.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import pytest

from mcp_locks import Settings, build_app

from .servers import serve_app

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ROOT = Path(__file__).parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
# A page's examples take a few seconds; these bounds are for a broken or hanging one.
PAGE_WITHIN = 60
COMMAND_WITHIN = 30
README_MAX_LINES = 180
# The agent whose key the examples get (not a name the examples create keys for themselves).
AGENT = "docs-reader"

FENCE = re.compile(r"^```(?P<info>[^\n`]*)\n(?P<body>.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
HEADING = re.compile(r"^#{1,6}[ \t]+(?P<text>.+?)[ \t#]*$", re.MULTILINE)
CODE_SPAN = re.compile(r"`[^`\n]*`")
INLINE_LINK = re.compile(r"!?\[[^\]\n]*\]\((?P<target>[^)\s]+)(?:[ \t]+\"[^\"\n]*\")?\)")
REFERENCE_LINK = re.compile(r"^[ \t]*\[[^\]\n]+\]:[ \t]*(?P<target>\S+)", re.MULTILINE)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


@dataclass(frozen=True)
class Block:
    """One fenced code block: its tag (the info string's first word), body, and first body line (1-based)."""

    page: Path
    tag: str
    body: str
    line: int


def name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def blocks(page: Path) -> list[Block]:
    text = page.read_text(encoding="utf-8")
    found = []
    for m in FENCE.finditer(text):
        info = m["info"].strip()
        found.append(Block(page, info.split()[0] if info else "", m["body"], text.count("\n", 0, m.start("body")) + 1))
    return found


def prose(page: Path, *, code_spans: bool = False) -> str:
    """The page with its code blocks blanked out (line numbers kept) and, unless asked, its code spans removed."""
    text = FENCE.sub(lambda m: "\n" * m[0].count("\n"), page.read_text(encoding="utf-8"))
    return text if code_spans else CODE_SPAN.sub("", text)


def script(page: Path) -> str:
    """The page's python blocks as one script, each line at its line number in the page (so tracebacks point there)."""
    lines = [""] * (page.read_text(encoding="utf-8").count("\n") + 1)
    for b in blocks(page):
        if b.tag == "python":
            for i, line in enumerate(b.body.splitlines()):
                lines[b.line - 1 + i] = line
    return "\n".join(lines) + "\n"


def commands(page: Path) -> Iterator[tuple[int, list[str]]]:
    """Every ``$ mcp-locks ...`` line of the page's console blocks: its line number and its arguments."""
    for b in blocks(page):
        if b.tag != "console":
            continue
        for i, line in enumerate(b.body.splitlines()):
            if line.startswith("$"):
                words = shlex.split(line.removeprefix("$"), comments=True)
                assert words[:1] == ["mcp-locks"], f"{name(page)}:{b.line + i}: console lines run mcp-locks only"
                yield b.line + i, words[1:]


def slug(heading: str, seen: dict[str, int]) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens, repeats numbered."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text
    base = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
    n = seen.get(base, 0)
    seen[base] = n + 1
    return base if n == 0 else f"{base}-{n}"


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    return {slug(m["text"], seen) for m in HEADING.finditer(prose(page, code_spans=True))}


def links(page: Path) -> list[str]:
    text = prose(page)
    return [m["target"] for m in [*INLINE_LINK.finditer(text), *REFERENCE_LINK.finditer(text)]]


def with_python() -> list[Path]:
    return [p for p in PAGES if any(b.tag == "python" for b in blocks(p))]


def with_console() -> list[Path]:
    return [p for p in PAGES if any(True for _ in commands(p))]


@dataclass
class Server:
    url: str
    data_dir: Path
    key: str

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_LOCKS_")}
        return env | {"MCP_LOCKS_URL": self.url, "MCP_LOCKS_KEY": self.key, "MCP_LOCKS_DATA_DIR": str(self.data_dir)}


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    """A real server as `mcp-locks serve` runs it (SQLite in a data directory) and an agent key made by its admin."""
    data_dir = tmp_path / "data"
    async with serve_app(build_app(Settings(store="sqlite", data_dir=data_dir, admin_key=None))) as url:
        admin = (data_dir / "admin.key").read_text().strip()  # written on first start, as for a user
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {admin}"}) as http:
            made = await http.post("/v1/admin/keys", json={"agent": AGENT, "workspaces": ["default"]})
        assert made.status_code == 201, made.text
        yield Server(url, data_dir, made.json()["key"])


async def run(argv: list[str], server: Server, cwd: Path, within: float) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` with the server's environment; killed if it takes longer than ``within`` seconds."""
    try:
        with anyio.fail_after(within):
            done = await anyio.run_process(argv, cwd=cwd, env=server.env(), stdin=subprocess.DEVNULL, check=False)
    except TimeoutError:
        pytest.fail(f"{shlex.join(argv)} took longer than {within} s")
    return subprocess.CompletedProcess(argv, done.returncode, done.stdout.decode(), done.stderr.decode())


# ---------------------------------------------------------------------- the examples run


@pytest.mark.timeout(PAGE_WITHIN + 30)
@pytest.mark.parametrize("page", with_python(), ids=name)
async def test_every_python_example_on_the_page_runs_against_a_real_server(
    page: Path, server: Server, tmp_path: Path
) -> None:
    path = tmp_path / "scripts" / f"{name(page)}.py"  # tracebacks name the page, at the page's line numbers
    path.parent.mkdir(parents=True)
    path.write_text(script(page), encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()
    done = await run([sys.executable, str(path)], server, work, PAGE_WITHIN)
    assert done.returncode == 0, f"a python example in {name(page)} failed:\n{done.stdout}\n{done.stderr}"


@pytest.mark.timeout(PAGE_WITHIN + 30)
@pytest.mark.parametrize("page", with_console(), ids=name)
async def test_every_console_example_on_the_page_runs_against_a_real_server(
    page: Path, server: Server, tmp_path: Path
) -> None:
    mcp_locks = [sys.executable, "-m", "mcp_locks"]  # the `mcp-locks` script of whatever is installed
    with anyio.fail_after(PAGE_WITHIN):
        for line, args in commands(page):
            done = await run([*mcp_locks, *args], server, tmp_path, COMMAND_WITHIN)
            shown = f"{name(page)}:{line}: mcp-locks {shlex.join(args)}"
            assert done.returncode == 0, f"{shown} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"


# ---------------------------------------------------------------------- the pages hold together


@pytest.mark.parametrize("page", PAGES, ids=name)
def test_every_code_block_on_the_page_says_whether_it_runs(page: Path) -> None:
    untagged = [b.line - 1 for b in blocks(page) if not b.tag]
    assert not untagged, f"{name(page)}: code blocks without a tag (python, console, sh, json, text...) at {untagged}"


@pytest.mark.parametrize("page", PAGES, ids=name)
def test_every_relative_link_on_the_page_points_to_a_file_and_heading_that_exist(page: Path) -> None:
    broken = []
    for target in links(page):
        if SCHEME.match(target):
            continue  # http(s), mailto: not checked here
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with that anchor in {name(dest)}")
    assert not broken, f"{name(page)}: broken links:\n" + "\n".join(broken)


def test_every_page_in_docs_is_listed_on_the_contents_page() -> None:
    listed = {(DOCS / t.partition("#")[0]).resolve() for t in links(DOCS / "README.md") if not SCHEME.match(t)}
    missing = [p.name for p in DOCS.glob("*.md") if p.name != "README.md" and p.resolve() not in listed]
    assert not missing, f"docs/README.md does not link {missing}"


def test_the_readme_is_short_links_the_docs_and_keeps_the_ci_test_command() -> None:
    text = README.read_text(encoding="utf-8")
    assert text.count("\n") <= README_MAX_LINES
    assert "docs/README.md" in links(README)
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    test_cmd = re.search(r"^TEST_CMD='(?P<cmd>[^']+)'", ci, re.MULTILINE)
    assert test_cmd, ".ci/run no longer sets TEST_CMD='...'"
    shown = [b.body for b in blocks(README)]
    assert any(test_cmd["cmd"] in body for body in shown), "the README must show .ci/run's TEST_CMD verbatim"
    assert any("mcp-locks serve" in body for body in shown), "the README must show how to start the server"

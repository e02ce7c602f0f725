"""Several agents write one report: each adds its section under a write lock on the report.

    python examples/report.py --url http://127.0.0.1:8765 --key "$(cat ~/.local/share/mcp-locks/admin.key)"

* A charts agent holds a write lock on ``reports/template.md`` while it puts chart slots into
  the section template; halfway through it checks (check_lock_status) that every section
  writer is waiting in line for the template.
* Each section writer reads the template under a read lock (``wait=30``: it waits for the
  charts to go in; the writers then read it together, as read locks share), then takes a write
  lock on ``reports/q3.md`` to read the report, add its section and write the report back.
  The writers ask at the same moment and are served one at a time, in arrival order.

Every agent has a key of its own, made with the admin key for the run (see pipeline.py).
The files live in the working directory (``--workdir``, default a new temp dir). The script
prints the final report; exit status 0 if it has every section exactly once, each rendered
from the whole template, 1 if not, 2 if the server could not be used. ``--unsafe`` skips the
locks: the writers then overwrite each other's sections (lost updates) and read a half-written
template.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.lowlevel
from pipeline import agent_keys, example_main, until_waiting  # helpers shared by the examples

from mcp_locks.client import LockClient

REPORT = "reports/q3.md"
TEMPLATE = "reports/template.md"
SECTIONS = {
    "summary": ("Summary", "Q3 closed ahead of plan on every line."),
    "revenue": ("Revenue", "Revenue grew 12% on the quarter, led by the new API tier."),
    "costs": ("Costs", "Costs held flat; cloud spend fell 4% after the cache work."),
    "outlook": ("Outlook", "Q4 guidance is raised to 9-11% growth."),
}
PLAIN_TEMPLATE = "## {title}\n\n{body}\n"
# The charts agent writes the new template in two steps; a reader between them sees only the first.
CHARTS_TEMPLATE = ("## {title}\n\n![{title} chart](charts/{slug}.svg)\n\n", "{body}\n")


@dataclass
class Team:
    """What the agents tell each other in this demo (in real life: nothing; they only share the lock server)."""

    unsafe: bool
    charts_started: anyio.Event = field(default_factory=anyio.Event)
    template_read: int = 0  # --unsafe: writers that read the template mid-change
    all_read_template: anyio.Event = field(default_factory=anyio.Event)
    report_read: int = 0  # --unsafe: writers that read the report before anyone wrote it back
    all_read_report: anyio.Event = field(default_factory=anyio.Event)


async def charts(c: LockClient, root: Path, team: Team) -> None:
    path = anyio.Path(root / TEMPLATE)
    if team.unsafe:
        await charts_step(path, team)
        return
    async with c.lock(TEMPLATE, mode="write", timeout=30, note="adding chart slots") as lease:
        print(f"charts: write lock on {TEMPLATE} (fence {lease.fence})")
        await charts_step(path, team, c)
    print("charts: chart slots are in, template released")


async def charts_step(path: anyio.Path, team: Team, c: LockClient | None = None) -> None:
    async with await path.open("w") as f:
        await f.write(CHARTS_TEMPLATE[0])
        await f.flush()
        team.charts_started.set()  # the writers turn up now
        if c is None:
            await team.all_read_template.wait()
        else:
            waiting = await until_waiting(c, TEMPLATE, len(SECTIONS))
            print(f"charts: halfway through the template; waiting for it: {waiting}")
        await f.write(CHARTS_TEMPLATE[1])


async def writer(c: LockClient, root: Path, slug: str, team: Team) -> None:
    title, body = SECTIONS[slug]
    await team.charts_started.wait()
    if team.unsafe:
        template = await anyio.Path(root / TEMPLATE).read_text()
        team.template_read += 1
        if team.template_read == len(SECTIONS):
            team.all_read_template.set()
    else:
        async with c.lock(TEMPLATE, mode="read", timeout=30, wait=30):
            template = await anyio.Path(root / TEMPLATE).read_text()
    section = template.format(title=title, slug=slug, body=body)

    report = anyio.Path(root / REPORT)
    if team.unsafe:
        text = await report.read_text()
        team.report_read += 1
        if team.report_read == len(SECTIONS):
            team.all_read_report.set()
        await team.all_read_report.wait()  # everyone has read the old report: now each writes its copy back
        await report.write_text(text + "\n" + section)
        print(f"{slug}: wrote its section without a lock")
        return
    asked = time.monotonic()
    async with c.lock(REPORT, mode="write", timeout=30, wait=30, note=f"adding {title}") as lease:
        waited = time.monotonic() - asked
        text = await report.read_text()
        await anyio.lowlevel.checkpoint()  # composing the section; other agents run meanwhile
        await report.write_text(text + "\n" + section)
    print(f"{slug}: added its section (waited {waited * 1000:.0f} ms for {REPORT}, fence {lease.fence})")


def problems_in(report: str) -> list[str]:
    """Sections missing, repeated, or rendered from a half-written template."""
    found = []
    for slug, (title, body) in SECTIONS.items():
        count = report.count(f"## {title}\n")
        if count != 1:
            found.append(f"section {title!r} appears {count} times")
        elif f"![{title} chart](charts/{slug}.svg)" not in report or body not in report:
            found.append(f"section {title!r} was rendered from a half-written template")
    return found


async def run(url: str, key: str | None, root: Path, unsafe: bool) -> int:
    (root / "reports").mkdir(parents=True, exist_ok=True)
    # A fresh report and template each run, written before any agent starts.
    (root / TEMPLATE).write_text(PLAIN_TEMPLATE)
    (root / REPORT).write_text("# Q3 report\n")
    team = Team(unsafe)
    async with agent_keys(url, key, "charts", *SECTIONS) as keys, contextlib.AsyncExitStack() as stack:
        clients = {name: await stack.enter_async_context(LockClient(url, k)) for name, k in keys.items()}
        async with anyio.create_task_group() as tg:
            tg.start_soon(charts, clients["charts"], root, team)
            for slug in SECTIONS:
                tg.start_soon(writer, clients[slug], root, slug, team)
    report = (root / REPORT).read_text()
    print(f"\n----- {root / REPORT}\n{report}-----")
    problems = problems_in(report)
    if problems:
        print("BROKEN REPORT: " + "; ".join(problems))
        return 1
    print(f"OK: every one of the {len(SECTIONS)} sections is in the report exactly once, with its chart")
    return 0


def main() -> None:
    example_main("report", __doc__, "the agents skip the locks", run)


if __name__ == "__main__":
    main()

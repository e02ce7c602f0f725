"""The dashboard page at / in headless Chromium: live locks, waiters and events, on a desk and on a phone.

Needs the ``playwright`` package and Debian's ``chromium`` (never a browser that playwright downloads).
Without them the tests skip locally and fail under CI. Set ``MCP_LOCKS_SCREENSHOT=1`` to rewrite
``docs/dashboard.png`` from the first test.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import anyio
import pytest

from mcp_locks import McpLockClient

from .servers import KeyedServer, keyed_server

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page, Route

try:
    from playwright.async_api import async_playwright, expect
except ImportError:  # pragma: no cover - skipped (or failed under CI) by the browser fixture
    async_playwright = None  # type: ignore[assignment]

pytestmark = pytest.mark.anyio

CHROMIUM = "/usr/bin/chromium"
HAVE_CHROMIUM = os.path.exists(CHROMIUM)
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT = 10_000  # ms: the longest any expect() waits
PHONE = {"width": 390, "height": 844}
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "dashboard.png"


def missing(what: str) -> NoReturn:
    """Skip for a missing browser or package; under CI (which installs both) fail instead."""
    if os.environ.get("CI"):
        pytest.fail(f"{what}: CI must install it")
    pytest.skip(what)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if async_playwright is None:
        missing("the playwright package is not installed (pip install playwright)")
    if not HAVE_CHROMIUM:
        missing(f"{CHROMIUM} is missing (apt-get install chromium)")
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS, timeout=WAIT * 2)
        try:
            yield b
        finally:
            await b.close()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[KeyedServer]:
    async with keyed_server(tmp_path) as s:
        yield s


async def open_page(browser: Browser, server: KeyedServer, key: str, **context: Any) -> Page:
    """Open the dashboard, connect with ``key`` and wait until its event stream is live."""
    page = await browser.new_page(**context)
    page.set_default_timeout(WAIT)
    await page.goto(server.url + "/")
    await page.locator("#key").fill(key)
    await page.locator("#connect").click()
    await expect(page.locator("#status")).to_have_text("live", timeout=WAIT)
    return page


async def take_the_picture(page: Page, server: KeyedServer) -> None:
    """More locks, some time gone by and a waiter in line: a screenshot that shows what the page is for."""
    service = server.service
    await service.lock(None, "src/billing/invoice.py", "read", 600, note="reviewing the tax change", agent="bob")
    await service.lock(None, "data/sales.csv", "write", 120, agent="carol")
    server.clock.advance(40)
    async with anyio.create_task_group() as tg:
        # dave queues behind carol; his wait is called off once the picture is taken
        tg.start_soon(partial(service.lock, None, "data/sales.csv", "write", 60, 600, agent="dave"))
        await expect(page.locator('#waiters tr[data-node="data/sales.csv"]')).to_be_visible(timeout=WAIT)
        server.clock.advance(9)
        await service.lock(None, "docs/changelog.md", "write", 300, agent="erin")  # its event refreshes the view
        await expect(page.locator('#locks tr[data-node="docs/changelog.md"]')).to_be_visible(timeout=WAIT)
        await expect(page.locator("#waiters tbody tr")).to_contain_text("9 s", timeout=WAIT)
        await page.screenshot(path=str(SCREENSHOT))
        tg.cancel_scope.cancel()


async def test_a_lock_taken_over_mcp_appears_and_disappears_on_the_dashboard(
    server: KeyedServer, browser: Browser
) -> None:
    page = await open_page(browser, server, server.admin, viewport={"width": 1100, "height": 700})
    row = page.locator('#locks tr[data-node="reports/q3.md"]')
    async with McpLockClient(server.url, server.key, clock=server.clock) as alice:
        lease = await alice.acquire("reports/q3.md", mode="write", timeout=300, note="Q3 numbers")
        await expect(row).to_be_visible(timeout=WAIT)
        await expect(row).to_have_attribute("data-lock", lease.lock_id, timeout=WAIT)
        await expect(row).to_contain_text("alice", timeout=WAIT)
        await expect(page.locator('#feed li[data-kind="granted"]')).to_be_visible(timeout=WAIT)

        if os.environ.get("MCP_LOCKS_SCREENSHOT"):
            await take_the_picture(page, server)

        await alice.release(lease)
        await expect(row).to_have_count(0, timeout=WAIT)
        await expect(page.locator('#feed li[data-kind="released"]')).to_be_visible(timeout=WAIT)


async def test_the_dashboard_fits_a_phone_screen_without_scrolling_sideways(
    server: KeyedServer, browser: Browser
) -> None:
    long_node = "src/" + "very_long_directory_name/" * 6 + "module.py"
    await server.service.lock(None, long_node, "write", 300, note="a note " * 20, agent="alice")
    page = await open_page(browser, server, server.admin, viewport=PHONE, is_mobile=True, has_touch=True)
    await expect(page.locator(f'#locks tr[data-node="{long_node}"]')).to_be_visible(timeout=WAIT)
    # Compared with the screen's own width too: a mobile browser zooms out to fit a page that overflows.
    wide, inner = await page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert wide <= inner <= PHONE["width"], f"the page is {wide} px wide on a {PHONE['width']} px screen"


async def test_the_key_is_kept_out_of_local_storage_and_the_url_and_forgotten_on_disconnect(
    server: KeyedServer, browser: Browser
) -> None:
    page = await open_page(browser, server, server.admin)
    assert server.admin not in page.url
    assert server.admin not in await page.evaluate("JSON.stringify(Object.entries(localStorage))")
    assert server.admin in await page.evaluate("JSON.stringify(Object.entries(sessionStorage))")
    assert page.url.endswith("#ws=default")
    await page.locator("#disconnect").click()
    await expect(page.locator("#key")).to_be_visible(timeout=WAIT)
    assert server.admin not in await page.evaluate("JSON.stringify(Object.entries(sessionStorage))")
    assert server.admin not in page.url


async def test_a_wrong_key_is_refused_with_the_servers_message(server: KeyedServer, browser: Browser) -> None:
    page = await browser.new_page()
    await page.goto(server.url + "/")
    await page.locator("#key").fill("mlk_000000000000_" + "A" * 43)
    await page.locator("#connect").click()
    await expect(page.locator("#auth-error")).not_to_be_empty(timeout=WAIT)
    await expect(page.locator("#status")).not_to_have_text("live")
    assert await page.evaluate("sessionStorage.length") == 0


async def test_node_ids_and_labels_are_shown_as_text_never_as_html(server: KeyedServer, browser: Browser) -> None:
    hostile = "<img src=x onerror=window.pwned=1>.md"
    await server.service.lock(None, hostile, "write", 300, note="<b id=bold>hi</b>", agent="alice")
    page = await open_page(browser, server, server.admin)
    await expect(page.locator("#locks tbody tr")).to_have_count(1, timeout=WAIT)
    await expect(page.locator("#locks tbody tr")).to_contain_text(hostile)
    assert await page.locator("#locks img, #bold").count() == 0
    assert await page.evaluate("window.pwned") is None


async def test_a_dropped_event_stream_reconnects_and_resumes_after_the_last_event_it_saw(
    server: KeyedServer, browser: Browser
) -> None:
    await server.service.lock(None, "a.md", "write", 300, agent="alice")  # events 1 (requested) and 2 (granted)
    page = await browser.new_page()
    page.set_default_timeout(WAIT)
    asked: list[str | None] = []

    async def first_ends_after_one_event(route: Route) -> None:
        asked.append(route.request.headers.get("last-event-id"))
        if len(asked) > 1:
            await route.continue_()
            return
        first = {"seq": 1, "workspace_id": "default", "kind": "requested", "node_id": "a.md", "agent": "alice"}
        body = f"id: 1\nevent: requested\ndata: {json.dumps(first)}\n\n"
        await route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=body)

    await page.route("**/v1/workspaces/default/events", first_ends_after_one_event)
    await page.goto(server.url + "/")
    await page.locator("#key").fill(server.admin)
    await page.locator("#connect").click()
    await expect(page.locator('#feed li[data-kind="granted"]')).to_have_count(1, timeout=WAIT)
    await expect(page.locator("#status")).to_have_text("live", timeout=WAIT)
    await expect(page.locator("#feed li")).to_have_count(2)
    assert asked[:2] == [None, "1"]


# The parser the page uses for the event stream, fed one text cut into three pieces at every pair of places.
SSE_CUTS = """() => {
  const text = ": ping\\r\\n\\r\\nid: 7\\r\\nevent: granted\\r\\ndata: {\\"a\\":\\r\\ndata:1}\\r\\n\\r\\n"
    + "id: 8\\rdata:x\\r\\r: comment\\ndata\\n\\nevent: released\\ndata: y\\ndata: z\\n\\nid: 9\\ndata: unfinished";
  const results = new Set();
  for (let i = 0; i <= text.length; i++) {
    for (let j = i; j <= text.length; j++) {
      const got = [];
      const parser = new window.__mcpLocksSse((ev) => got.push(ev));
      parser.feed(text.slice(0, i));
      parser.feed(text.slice(i, j));
      parser.feed(text.slice(j));
      results.add(JSON.stringify([got, parser.id]));
    }
  }
  return [...results].map((r) => JSON.parse(r));
}"""


async def test_the_event_stream_parser_gives_the_same_events_however_the_text_is_cut(
    server: KeyedServer, browser: Browser
) -> None:
    page = await open_page(browser, server, server.admin)
    results = await page.evaluate(SSE_CUTS)
    assert results == [
        [
            [
                {"id": "7", "event": "granted", "data": '{"a":\n1}'},
                {"id": "8", "event": "message", "data": "x"},
                {"id": "8", "event": "message", "data": ""},
                {"id": "8", "event": "released", "data": "y\nz"},
            ],
            "9",
        ]
    ]

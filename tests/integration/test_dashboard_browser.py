"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

A real server, real WebSocket clients sending messages and acting on cards,
callbacks to a real HTTP stub; the page is watched changing without a
reload, drilled from the province to a village, shot at 1920x1080 (saved
under the test's tmp dir; ``IM_DASHBOARD_SCREENSHOT=docs/img/dashboard.png``
also writes the README's copy) and checked at a phone's 390 px width.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from tests.cards_support import ADMIN_KEY, CARD_SETTINGS, BusinessStub, business
from tests.conftest import StartServer
from tests.dashboard_support import act, grant_admin, load_org, push
from tests.support import Harness

CHROMIUM = "/usr/bin/chromium"  # `make chromium` installs it (apt-get install -y chromium)
TIMEOUT_MS = 15_000


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    assert os.access(CHROMIUM, os.X_OK), "run `make chromium` (apt-get install -y chromium)"
    async with async_playwright() as p:
        b = await p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-background-networking"],
        )
        yield b
        await b.close()


@pytest.fixture
async def dash_server(start_server: StartServer) -> Harness:
    server = await start_server(auth={"admin_api_key": ADMIN_KEY}, cards=CARD_SETTINGS)
    await load_org(server)
    return server


async def log_in(page: Page, base: str, credential: str) -> None:
    await page.goto(base + "/dashboard/")
    await expect(page).to_have_url(base + "/dashboard/login")
    await page.fill("#credential", credential)
    await page.click("#login-submit")
    await expect(page).to_have_url(base + "/dashboard/")
    await expect(page.locator("#status")).to_have_attribute("data-state", "live")


async def tile(page: Page, name: str) -> str:
    return (await page.locator(f"#tile-{name} .v").text_content()) or ""


async def cell(page: Page, unit: str, column: str) -> str:
    return (await page.locator(f'#units tr[data-unit="{unit}"] td.{column}').text_content()) or ""


async def test_live_dashboard_drill_down_and_screens(
    dash_server: Harness, stub: BusinessStub, browser: Browser, tmp_path: Path
) -> None:
    base = dash_server.world.http_url
    oa = await business(dash_server, stub)
    context = await browser.new_context(viewport={"width": 1920, "height": 1080}, locale="zh-CN")
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        # A wrong key is refused with a clear message, and nothing is logged in.
        await page.goto(base + "/dashboard/")
        await expect(page).to_have_url(base + "/dashboard/login")
        await page.fill("#credential", "not-the-key")
        await page.click("#login-submit")
        await expect(page.locator("#login-error")).to_have_text(
            "wrong admin key or token (token_invalid)"
        )
        await log_in(page, base, ADMIN_KEY)
        await page.evaluate("window.__noReload = true")  # gone if the page ever reloads

        # Live: connections and messages move as real clients connect and send.
        assert await tile(page, "connections") == "0"
        head = await dash_server.client("cq-head")
        mayor = await dash_server.client("nc-mayor")
        await expect(page.locator("#tile-connections .v")).to_have_text("2", timeout=TIMEOUT_MS)
        await expect(page.locator("#tile-users .v")).to_have_text("2")
        # The node table: one node here, this one, with the same numbers; tiles say so.
        me = page.locator("#nodes tbody tr.self-node")
        await expect(page.locator("#nodes tbody tr")).to_have_count(1)
        await expect(me.locator("td.connections")).to_have_text("2", timeout=TIMEOUT_MS)
        await expect(me.locator("td.users")).to_have_text("2")
        await expect(me.locator("td").first).to_contain_text("(本节点)")
        await expect(page.locator("#tile-connections .scope")).to_have_text("全部节点 (1)")
        await expect(page.locator("#tile-send-ack .sub")).to_contain_text("本节点")
        for i in range(30):
            await head.send("text", {"text": f"第{i}条"}, to="nc-mayor")
        await expect(page.locator("#tile-msg-rate .sub")).to_contain_text("30", timeout=TIMEOUT_MS)
        p50 = page.locator("#tile-send-ack .v")
        await expect(p50).not_to_have_text("— / — / —", timeout=TIMEOUT_MS)
        ack = await head.send("text", {"text": "紧急：请确认"}, to="nc-mayor", urgent=True)
        await mayor.confirm_ding(ack.conv, ack.seq)
        await expect(page.locator("#tile-dings .v")).to_have_text("1 / 1", timeout=TIMEOUT_MS)
        await expect(page.locator("#tile-audit .v")).to_have_text("完整")

        # Cards: pushed, then decided; the callback reaches the real stub.
        await expect(page.locator('#units tr[data-unit="jx"]')).to_be_visible()
        assert await cell(page, "jx", "pushed") == "0"
        card = await push(oa, "leave-1", ["cq-head"])
        await push(oa, "leave-2", ["sk-v1-sec"])
        await expect(page.locator('#units tr[data-unit="jx"] td.pushed')).to_have_text(
            "2", timeout=TIMEOUT_MS
        )
        await expect(page.locator('#units tr[data-unit="jx"] td.todo')).to_have_text("2")
        assert (await act(head, card))["state"] == "approved"
        await asyncio.wait_for(stub.got_action.wait(), 5)
        await expect(page.locator('#units tr[data-unit="jx"] td.decided')).to_have_text(
            "1", timeout=TIMEOUT_MS
        )
        await expect(page.locator('#units tr[data-unit="jx"] td.todo')).to_have_text("1")

        # A failed callback shows under its app; the retry button queues it again.
        stub.script = ["500"] * CARD_SETTINGS["callback_max_attempts"]
        stub.got_action.clear()
        failing = await push(oa, "leave-3", ["cq-head"])
        await act(head, failing)
        row = page.locator(f'#failed tr[data-card="{failing}"]')
        await expect(row).to_be_visible(timeout=TIMEOUT_MS)
        await expect(page.locator('#outbox tr[data-app="oa"] td.cb-failed')).to_have_text("1")
        await row.locator("button.retry").click()
        await expect(row.locator("button.retry")).to_have_text("已重新排队")
        await asyncio.wait_for(stub.got_action.wait(), 5)
        await expect(page.locator(f'#failed tr[data-card="{failing}"]')).to_have_count(
            0, timeout=TIMEOUT_MS
        )

        # Drill down province → city → county → township → village.
        for unit, level in [
            ("jx", "省"),
            ("nc", "市"),
            ("nc-xh", "县"),
            ("nc-xh-cq", "乡"),
            ("nc-xh-cq-v1", "村"),
        ]:
            await page.click(f'#units a.drill[data-unit="{unit}"]')
            await expect(page.locator("#breadcrumb .current")).to_be_visible(timeout=TIMEOUT_MS)
            self_row = page.locator(f'#units tr.self-row[data-unit="{unit}"]')
            await expect(self_row).to_be_visible(timeout=TIMEOUT_MS)
            await expect(self_row.locator("td").nth(1)).to_have_text(level)
            if unit == "nc-xh-cq":
                await expect(self_row.locator("td.pushed")).to_have_text("2")
        await expect(page.locator("#breadcrumb a.crumb")).to_have_count(5)  # 全部 + 4 levels
        await page.click('#breadcrumb a.crumb[data-unit="nc"]')
        await expect(page.locator('#units tr.self-row[data-unit="nc"]')).to_be_visible()
        await page.click('#units a.drill[data-unit="nc-xh"]')
        await expect(page.locator('#units tr.self-row[data-unit="nc-xh"]')).to_be_visible()
        await expect(page.locator('#units tr[data-unit="nc-xh-cq"] td.pushed')).to_have_text("2")

        # English on request; back to zh-CN.
        await page.click("#lang-toggle")
        await expect(page.locator("h1")).to_have_text("Operations dashboard")
        await expect(page.locator("#tile-audit .v")).to_have_text("intact")
        await page.click("#lang-toggle")
        await expect(page.locator("h1")).to_have_text("一屏统揽 · 运行看板")
        assert await page.evaluate("window.__noReload") is True

        # The wall screen, and the README's copy when asked for.
        await page.click('#breadcrumb a.crumb[data-unit=""]')
        await page.click('#units a.drill[data-unit="jx"]')
        await expect(page.locator('#units tr.self-row[data-unit="jx"]')).to_be_visible()
        await page.wait_for_timeout(2500)  # a few seconds of chart history
        # Numeric columns: headers right-aligned over their right-aligned numbers.
        aligns = await page.evaluate(
            "[...document.querySelectorAll('#units th, #nodes th')]"
            ".map(th => [th.className, getComputedStyle(th).textAlign])"
        )
        assert {a for c, a in aligns if c == "n"} == {"right"}, aligns
        assert {a for c, a in aligns if c != "n"} == {"left"}, aligns
        shot = tmp_path / "dashboard-1920x1080.png"
        await page.screenshot(path=str(shot))
        assert shot.stat().st_size > 20_000
        readme_copy = os.environ.get("IM_DASHBOARD_SCREENSHOT")
        if readme_copy:
            shutil.copyfile(shot, readme_copy)

        # A phone: 390 px wide, nothing sticks out sideways.
        await page.set_viewport_size({"width": 390, "height": 844})
        await page.wait_for_timeout(300)
        widths: dict[str, Any] = await page.evaluate(
            "({doc: document.documentElement.scrollWidth, body: document.body.scrollWidth,"
            " win: window.innerWidth})"
        )
        assert widths["doc"] <= widths["win"] and widths["body"] <= widths["win"], widths
        await page.screenshot(path=str(tmp_path / "dashboard-390.png"), full_page=True)

        # Logout ends the session: the page and the data both want a login again.
        await page.set_viewport_size({"width": 1920, "height": 1080})
        await page.click("#logout")
        await expect(page).to_have_url(base + "/dashboard/login")
        status = await page.evaluate("fetch('/dashboard/api/units').then(r => r.status)")
        assert status == 401
        assert errors == []
    finally:
        await context.close()
        await oa.close()


async def test_scoped_admin_cannot_see_another_subtree(
    dash_server: Harness, stub: BusinessStub, browser: Browser
) -> None:
    base = dash_server.world.http_url
    await grant_admin(dash_server, "nc-mayor", "nc")
    oa = await business(dash_server, stub)
    await push(oa, "jj-only", ["sk-v1-sec"])  # work in 九江, which 南昌's admin must not see
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    try:
        await log_in(page, base, dash_server.token("nc-mayor"))
        await expect(page.locator('#units tr[data-unit="nc"]')).to_be_visible()
        await expect(page.locator("#units tbody tr")).to_have_count(1)
        body = (await page.locator("body").text_content()) or ""
        assert "九江市" not in body and "江西省" not in body
        await expect(page.locator("#callbacks-panel")).to_be_hidden()
        await expect(page.locator("#nodes-panel")).to_be_hidden()  # the operator's only
        await expect(page.locator("#tile-connections .scope")).to_contain_text("本节点")
        await expect(page.locator("#tile-audit .sub")).to_have_text("仅超级管理员可见")
        # The data endpoints refuse it too, called from the page with its own cookie.
        for path in (
            "/dashboard/api/units?unit=jj",
            "/dashboard/api/units?unit=jx",
            "/dashboard/api/stream?unit=jj-ws-sk-v1",
            "/dashboard/api/callbacks",
        ):
            answer = await page.evaluate(
                "p => fetch(p).then(async r => [r.status, (await r.json()).error.code])", path
            )
            assert answer == [403, "forbidden"], path
        # Opening a foreign unit by URL shows the refusal, not its numbers.
        await page.goto(base + "/dashboard/?unit=jj")
        await expect(page.locator("#notice")).to_contain_text("forbidden", timeout=TIMEOUT_MS)
        assert "宋溪" not in ((await page.locator("body").text_content()) or "")
    finally:
        await context.close()
        await oa.close()

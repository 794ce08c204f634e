"""The dashboard in a real browser (Debian's Chromium, driven by Playwright) on the
service as a process, fed by a replay: the at-risk product first, its page with
rendered charts, nothing injectable, new risk shown without a reload."""

from __future__ import annotations

import asyncio
import csv
import shutil
from datetime import date, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from ml_analytics.cli.replay import replay_file
from ml_analytics.devstack import ServiceProcess
from ml_analytics.settings import Settings
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
SCRIPT_ID = "<script>alert(1)</script>"
IMAGE_ID = '<img src=x onerror="alert(2)">'
LAST_DAY = date(2026, 11, 20)
# A product sold weekly for 4,000 days before its 90 daily ones: longer than the
# demand endpoint serves at once (HTTP_MAX_HISTORY_DAYS, 3,660).
LONG_ID = "SKU-DECADE"
LONG_HISTORY_DAYS = 4_000
# product: (units a day, stock at the end of the last day, lead time)
PRODUCTS = {
    "SKU-URGENT": (20, 30, 10),
    "SKU-WATCH": (12, 150, 14),
    "SKU-SAFE": (5, 10_000, 14),
    SCRIPT_ID: (3, 5_000, 7),
    IMAGE_ID: (4, 5_000, 7),
    LONG_ID: (6, 10_000, 14),
    "SKU-EMPTIED": (8, 10_000, 14),
}
# SKU-EMPTIED's shelf was empty on these days of the 90 (counted every day): no sales.
EMPTIED = "SKU-EMPTIED"
EMPTY_DAYS = range(70, 77)


async def _order_units(url: str) -> str:
    async with httpx.AsyncClient(base_url=url) as client:
        risk = (await client.get("/products/SKU-URGENT/stockout-risk")).json()
    return f"{risk['recommended_order_units']:.0f}"


def write_replay_files(directory: Path) -> tuple[Path, Path]:
    transactions = directory / "transactions.csv"
    with transactions.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["event_id", "product_id", "occurred_at", "quantity_units"])
        for index, (product, (per_day, _, _)) in enumerate(PRODUCTS.items()):
            for back in range(90):
                day = LAST_DAY - timedelta(days=89 - back)
                units = per_day + (back % 3) - 1 if per_day > 1 else per_day
                if product == EMPTIED and back in EMPTY_DAYS:
                    continue
                writer.writerow([f"p{index}-d{back}", product, f"{day}T12:00:00Z", units])
        for back in range(90, LONG_HISTORY_DAYS, 7):
            day = LAST_DAY - timedelta(days=back)
            writer.writerow([f"long-d{back}", LONG_ID, f"{day}T12:00:00Z", 40])
    stock = directory / "stock_levels.csv"
    with stock.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["event_id", "product_id", "as_of", "stock_units", "lead_time_days"])
        for index, (product, (_, units, lead)) in enumerate(PRODUCTS.items()):
            writer.writerow([f"s{index}", product, f"{LAST_DAY}T18:00:00Z", units, lead])
        # SKU-EMPTIED counted at the end of every day: 0 on its empty days.
        for back in range(89):
            day = LAST_DAY - timedelta(days=89 - back)
            units = 0 if back in EMPTY_DAYS else 500
            writer.writerow([f"e{back}", EMPTIED, f"{day}T20:00:00Z", units, 14])
    return transactions, stock


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Chromium is not installed")
async def test_dashboard_shows_the_at_risk_product_first_and_its_charts(
    settings: Settings, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright, expect

    transactions, stock = write_replay_files(tmp_path)
    service = ServiceProcess(settings, tmp_path / "service.log").start()
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        await asyncio.to_thread(service.wait_healthy)
        await replay_file(transactions, settings, progress=False)
        await replay_file(stock, settings, progress=False)

        async def assessed() -> int:
            async with httpx.AsyncClient(base_url=service.url) as client:
                items = (await client.get("/products", params={"limit": 50})).json()["items"]
            return sum(item["risk_level"] is not None for item in items)

        await wait_until(assessed, lambda n: n == len(PRODUCTS), timeout=120, what="risk")

        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            page = await browser.new_page(viewport={"width": 1400, "height": 900})
            dialogs: list[str] = []
            page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))

            response = await page.goto(f"{service.url}/")  # the home page leads here
            assert response is not None and response.url.endswith("/dashboard")
            # No inline script and no eval may run: only the service's own files.
            assert "script-src 'self';" in response.headers["content-security-policy"]
            rows = page.locator("#products tbody tr")
            await rows.nth(len(PRODUCTS) - 1).wait_for()
            assert await rows.count() == len(PRODUCTS)
            assert await rows.first.get_attribute("data-product") == "SKU-URGENT"
            assert await rows.first.get_attribute("data-level") == "high"
            # Ids that look like markup are shown as text, and nothing runs.
            assert await page.get_by_role("link", name=SCRIPT_ID, exact=True).count() == 1
            assert await page.get_by_role("link", name=IMAGE_ID, exact=True).count() == 1
            assert await page.locator("#products img").count() == 0
            # What to order: the urgent product needs an order today, the safe one none.
            urgent_order = page.locator("#products tbody tr[data-product='SKU-URGENT'] td.order")
            assert (
                await urgent_order.inner_text()
                == f"order {await _order_units(service.url)} by {LAST_DAY}"
            )
            assert (
                await page.locator(
                    "#products tbody tr[data-product='SKU-SAFE'] td.order"
                ).inner_text()
                == "none needed"
            )
            await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
            await page.select_option("#sort", "order_by_date")
            await expect(page).to_have_url(f"{service.url}/dashboard?sort=order_by_date")
            await expect(rows.first).to_have_attribute("data-product", "SKU-URGENT")
            orders = [await row.get_attribute("data-order") for row in await rows.all()]
            needing = [float(value) > 0 for value in orders if value]
            assert needing == sorted(needing, reverse=True)  # those needing an order first
            await page.select_option("#sort", "risk")

            # (Selectors, not page scripts: the pages' CSP forbids evaluating strings.)
            await page.select_option("#level", "low")
            await expect(page.locator("#products tbody tr:not([data-level='low'])")).to_have_count(
                0
            )
            await expect(rows).to_have_count(5)
            await page.select_option("#level", "")
            await page.fill("#search", "SKU-SA")
            await expect(rows).to_have_count(1)
            assert await rows.first.get_attribute("data-product") == "SKU-SAFE"
            await page.fill("#search", "")
            await expect(rows).to_have_count(len(PRODUCTS))

            # A refill-gone-wrong: SKU-SAFE's stock drops to 0. The open page shows it
            # at high risk without a reload.
            await replay_file(_one_stock_level(tmp_path, "SKU-SAFE", 0), settings, progress=False)
            await expect(
                page.locator("#products tbody tr[data-product='SKU-SAFE']")
            ).to_have_attribute("data-level", "high", timeout=60_000)

            await page.get_by_role("link", name="SKU-URGENT", exact=True).click()
            await page.wait_for_url("**/dashboard/product?id=SKU-URGENT")
            demand_bars = page.locator("#demand-chart .bars .point")
            await demand_bars.first.wait_for()
            assert await demand_bars.count() == 90
            forecast_line = page.locator("#demand-chart .scatterlayer .trace")
            assert await forecast_line.count() >= 3
            stock_points = page.locator("#stock-chart .scatterlayer .point")
            await stock_points.first.wait_for()
            assert await stock_points.count() >= 2
            assert "high" in (await page.locator("#cards .badge").inner_text()).lower()
            order_card = page.locator("#cards .card", has_text="to order (95% service)")
            assert (await order_card.locator(".value").inner_text()).startswith("order ")
            await expect(page.locator("#stock-chart").get_by_text("order-up-to")).to_have_count(1)
            await page.screenshot(path=str(ARTIFACTS / "product.png"), full_page=True)

            # A history longer than the demand endpoint serves at once: the page asks
            # for the last year up to the product's last day, and draws it.
            demand_requests: list[str] = []
            page.on(
                "request",
                lambda request: (
                    demand_requests.append(request.url) if "/demand" in request.url else None
                ),
            )
            await page.goto(f"{service.url}/dashboard/product?id={LONG_ID}")
            # (Attached, not visible: the bars of days without sales have no height.)
            await page.locator("#demand-chart .bars .point").first.wait_for(state="attached")
            assert await page.locator("#demand-chart .bars .point").count() == 180
            await page.locator("#stock-chart .scatterlayer .point").first.wait_for()
            assert await page.locator("#error").inner_text() == ""
            asked = parse_qs(urlsplit(demand_requests[-1]).query)
            assert asked == {
                "from": [str(LAST_DAY - timedelta(days=364))],
                "to": [str(LAST_DAY)],
            }

            # Days the shelf was empty: counted as lost sales on the list, shaded on the
            # demand chart with their estimated demand.
            await page.goto(f"{service.url}/dashboard?search={EMPTIED}")
            lost = page.locator(f"#products tbody tr[data-product='{EMPTIED}'] td.lost")
            await expect(lost).not_to_have_text("–")
            assert float(await lost.inner_text()) > 7 * 8 * 0.5  # a week of about 8 a day
            await page.goto(f"{service.url}/dashboard/product?id={EMPTIED}")
            unmet = page.locator("#demand-chart .barlayer .trace").nth(1).locator(".point")
            await unmet.first.wait_for(state="attached")
            assert await unmet.count() == len(EMPTY_DAYS)
            await expect(
                page.locator("#demand-chart").get_by_text("estimated unmet demand")
            ).to_have_count(1)
            assert await page.locator("#demand-chart .shapelayer path").count() >= len(EMPTY_DAYS)
            lost_card = page.locator("#cards .card", has_text="lost sales (28 d)")
            assert float(await lost_card.locator(".value").inner_text()) > 28
            await page.screenshot(path=str(ARTIFACTS / "censored.png"), full_page=True)

            await page.goto(f"{service.url}/dashboard")
            await page.get_by_role("link", name=SCRIPT_ID, exact=True).click()
            await page.locator("#demand-chart .bars .point").first.wait_for()
            assert await page.locator("#title").inner_text() == SCRIPT_ID
            assert dialogs == []
            assert errors == []
            await browser.close()
    finally:
        service.stop()


def _one_stock_level(directory: Path, product: str, units: float) -> Path:
    path = directory / "refill.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["event_id", "product_id", "as_of", "stock_units", "lead_time_days"])
        writer.writerow(["s-late", product, f"{LAST_DAY}T20:00:00Z", units, 14])
    return path

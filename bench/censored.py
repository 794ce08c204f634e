"""Demand, not sales, in a closed loop: the service's own forecasts and orders on demand
it can only see through its sales (issue: "a benchmark that closes the loop").

True daily demand comes from a data set (the bundled sample's daily units, taken as
demand; and a synthetic panel of daily sellers, see `grocer_panel`). The history
before the simulation's first day is stored as sales, through the ingestion's own
write. Then, for WEEKS weeks, day by day:

- deliveries due that day arrive; sales = min(on hand, demand): demand that finds no
  stock is lost;
- the day's sales go to the service as transactions, and its closing stock as a stock
  level (every day, or on review days only), with `on_order_units`, through the real
  broker;
- on each review day (every 7th, the end of the day) the bench waits until the
  service has ingested everything, moved its clock, refitted what was due and assessed
  every product, then orders what the service recommends
  (`recommended_order_units` from `GET /replenishment.csv`); an order arrives LEAD
  days later; but suppliers fail as real ones do, so that shelves run empty also when
  the forecast was right: LATE_SHARE of the orders arrive LATE_DAYS later still, and
  SHORT_SHARE of them bring only SHORT_FILL of what was ordered (the same orders in
  every variant: drawn per product and week from a fixed seed).

At the origins (every 4 weeks after BURN_IN_WEEKS) each product's stored forecast is
kept and scored against the true demand of the 28 days that follow. Reported, pooled
over products and origins, for each variant (censoring on, with daily and with weekly
stock levels; censoring ignored, `DEMAND_CENSORING=false`; the latter also at a higher
service level, so that fill rates can be compared at equal average stock):

- forecast level: the 28-day forecast over the true 28-day demand, for all products
  and for those with a stockout (a day ending at zero) in the 28 days before;
- error of 28-day totals (WAPE) against true demand, also on product-origins with no
  stockout in the 91 days before in either run ("no harm where nothing was censored");
- fill rate (sales / demand), cycle service level (review weeks without lost demand),
  days ending at zero stock, average stock in days of demand, and the products
  "selling nothing" (no sale in the last 8 weeks while demand went on).

    python -m bench.censored [--data retail grocer] [--weeks 32] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import platform
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from aiokafka import AIOKafkaProducer
from sqlalchemy import text

from bench._stack import bench_stack
from bench.evaluate import load_panel
from ml_analytics.devstack import ServiceProcess
from ml_analytics.models.forecasters.panel import Panel
from ml_analytics.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data/online-retail-ii/daily_demand.csv.gz"
START = date(2011, 3, 7)  # a Monday; the history before it is stored as sales
LEAD = 7
REVIEW = 7
BURN_IN_WEEKS = 6
ORIGIN_EVERY_WEEKS = 4
MIN_HISTORY_DAYS = 91  # products with less history before START are left out
FRESH_TIMEOUT_SECONDS = 900
LATE_SHARE = 0.25  # orders that arrive LATE_DAYS late
LATE_DAYS = 14
SHORT_SHARE = 0.25  # orders of which only SHORT_FILL arrives
SHORT_FILL = 0.5
SUPPLY_SEED = 17


@dataclass(frozen=True)
class Variant:
    name: str
    censoring: bool
    snapshots: str  # "daily" or "weekly"
    service_level: float = 0.95


VARIANTS = (
    Variant("censoring, daily stock levels", True, "daily"),
    Variant("censoring, weekly stock levels", True, "weekly"),
    Variant("censoring ignored", False, "daily"),
    Variant("censoring ignored, 0.98", False, "daily", 0.98),
)


def grocer_panel(products: int = 300, seed: int = 5) -> Panel:
    """A synthetic grocer's daily sellers on the sample's calendar: gamma-Poisson daily
    demand around a level (log-normal across products), a weekday profile, a yearly
    swing of +-20% and a slow random drift per product."""
    retail = load_panel(SAMPLE)
    days = retail.days
    rng = np.random.default_rng(seed)
    level = rng.lognormal(1.5, 1.0, products)
    weekday = np.array([0.8, 0.9, 0.95, 1.0, 1.2, 1.4, 0.75])
    t = np.arange(days)
    season = 1 + 0.2 * np.sin(2 * np.pi * t / 365)
    drift = np.exp(np.cumsum(rng.normal(0, 0.02, (products, days)), axis=1))
    weekdays = np.array([(retail.day(int(i)).weekday()) for i in t])
    mean = level[:, None] * weekday[weekdays][None, :] * season[None, :] * drift
    shape = 5.0
    Y = rng.poisson(rng.gamma(shape, mean / shape)).astype(float)
    items = [f"G{index:04d}" for index in range(products)]
    return Panel(items, retail.start, Y, Y.sum(axis=0))


def dataset(name: str) -> Panel:
    return load_panel(SAMPLE) if name == "retail" else grocer_panel()


@dataclass
class Loop:
    """The simulation's state and what it records."""

    panel: Panel
    rows: np.ndarray  # the products simulated (enough history before START)
    start: int  # START's index in the panel
    weeks: int
    on_hand: np.ndarray
    pipeline: dict[int, np.ndarray] = field(default_factory=dict)  # arrival day -> units
    sales: np.ndarray = field(init=False)
    closing: np.ndarray = field(init=False)
    forecasts: dict[int, dict[str, float]] = field(default_factory=dict)  # origin -> 28-day
    timings: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        days = self.weeks * REVIEW
        self.sales = np.zeros((len(self.rows), days))
        self.closing = np.zeros((len(self.rows), days))

    @property
    def items(self) -> list[str]:
        return [self.panel.items[row] for row in self.rows]

    def demand(self, day: int) -> np.ndarray:
        return np.nan_to_num(self.panel.Y[self.rows, self.start + day])

    def on_order(self, day: int) -> np.ndarray:
        waiting = [units for arrival, units in self.pipeline.items() if arrival > day]
        return np.sum(waiting, axis=0) if waiting else np.zeros(len(self.rows))


async def store_history(settings: Settings, panel: Panel, rows: np.ndarray, start: int) -> None:
    """Every product-day before START as one transaction, through the ingestion's write,
    and the clock moved to START (its first event), as a live stream would have."""
    from ml_analytics.storage.clock import advance_clock
    from ml_analytics.storage.database import create_engine, migrate
    from ml_analytics.storage.ingest_writes import TransactionRow, record_transactions

    await migrate(settings.database_url)
    engine = create_engine(settings)
    records = [
        TransactionRow(f"h-{panel.items[row]}-{day}", panel.items[row], panel.day(int(day)),
                       float(panel.Y[row, day]))
        for row in rows
        for day in np.nonzero(np.nan_to_num(panel.Y[row, :start]) > 0)[0]
    ]  # fmt: skip
    async with engine.connect() as connection:
        driver = (await connection.get_raw_connection()).driver_connection
        for first in range(0, len(records), 20_000):
            await record_transactions(driver, records[first : first + 20_000])
    async with engine.begin() as connection:
        await advance_clock(connection, settings.clock_corroboration_products)
    await engine.dispose()


def supply_failures(products: int, week: int) -> tuple[np.ndarray, np.ndarray]:
    """Which products' orders of review `week` arrive late, and which short (the same in
    every run)."""
    draws = np.random.default_rng([SUPPLY_SEED, week]).random((2, products))
    return draws[0] < LATE_SHARE, draws[1] < SHORT_SHARE


def at(day: date, hour: int) -> str:
    return datetime(day.year, day.month, day.day, hour).isoformat() + "Z"


async def publish_day(
    producer: AIOKafkaProducer, settings: Settings, loop: Loop, day: int, stock: bool, level: float
) -> None:
    """The day's sales and (when `stock`) its closing stock levels."""
    calendar = loop.panel.day(loop.start + day)
    on_order = loop.on_order(day)
    sends = []
    for index, item in enumerate(loop.items):
        key = item.encode()
        sold = float(loop.sales[index, day])
        if sold > 0:
            event = {"event_id": f"s-{item}-{calendar}", "product_id": item,
                     "occurred_at": at(calendar, 12), "quantity_units": sold}  # fmt: skip
            sends.append(
                producer.send(settings.transactions_topic, json.dumps(event).encode(), key=key)
            )
        if stock:
            event = {"event_id": f"l-{item}-{calendar}", "product_id": item,
                     "as_of": at(calendar, 20), "stock_units": float(loop.closing[index, day]),
                     "lead_time_days": LEAD, "on_order_units": float(on_order[index]),
                     "target_service_level": level}  # fmt: skip
            sends.append(
                producer.send(settings.stock_levels_topic, json.dumps(event).encode(), key=key)
            )
    for future in await asyncio.gather(*sends):
        await future


async def fresh(engine: Any, items: list[str], stock_day: date | None) -> None:
    """Wait until the service has taken in everything sent: the stock levels of
    `stock_day` current, no product due for a refit on the clock, every product
    assessed with its newest model and stock."""
    deadline = time.monotonic() + FRESH_TIMEOUT_SECONDS
    query = text(
        """
WITH clock AS (SELECT (newest_event_at AT TIME ZONE 'UTC')::date - 1 AS through
               FROM stream_clock WHERE clock_id = 1)
SELECT
  (SELECT count(*) FROM products p WHERE p.product_id = ANY(:items)
     AND (CAST(:stock_day AS date) IS NULL
          OR (p.stock_as_of AT TIME ZONE 'UTC')::date = CAST(:stock_day AS date))) AS stocked,
  (SELECT count(*) FROM product_models m, clock WHERE m.product_id = ANY(:items)
     AND m.trained_through > clock.through - 7) AS trained,
  (SELECT count(*) FROM pending_assessments) AS pending,
  (SELECT count(*) FROM product_risk r JOIN product_models m USING (product_id)
     JOIN products p USING (product_id)
     WHERE r.product_id = ANY(:items) AND r.assessed_at >= m.trained_at
       AND r.assessed_at >= p.stock_updated_at) AS assessed
"""
    )
    want = len(items)
    while True:
        async with engine.connect() as connection:
            row = (await connection.execute(query, {"items": items, "stock_day": stock_day})).one()
        if (
            row.stocked == want
            and row.trained == want
            and row.pending == 0
            and (stock_day is None or row.assessed == want)
        ):
            return
        if time.monotonic() > deadline:
            print(f"    not fresh after {FRESH_TIMEOUT_SECONDS} s: {dict(row._mapping)}")
            return
        await asyncio.sleep(1.0)


async def orders(url: str, items: list[str]) -> np.ndarray:
    """The service's recommended orders (GET /replenishment.csv), in `items` order."""
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        answer = await client.get("/replenishment.csv")
    answer.raise_for_status()
    wanted = {row["product_id"]: row for row in csv.DictReader(io.StringIO(answer.text))}
    return np.array(
        [float(wanted[item]["recommended_order_units"] or 0) if item in wanted else 0.0
         for item in items]
    )  # fmt: skip


async def forecasts_28(engine: Any, items: list[str], first_day: date) -> dict[str, float]:
    """Each product's stored forecast over the 28 days from `first_day`."""
    async with engine.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT product_id, forecast_start, yhat FROM product_models "
                "WHERE product_id = ANY(:items)"
            ),
            {"items": items},
        )
        found = {}
        for row in rows:
            skip = (first_day - row.forecast_start).days
            if skip >= 0 and len(row.yhat) >= skip + 28:
                found[row.product_id] = float(sum(row.yhat[skip : skip + 28]))
        return found


async def run_variant(panel: Panel, variant: Variant, weeks: int, name: str) -> Loop:
    from ml_analytics.storage.database import create_engine

    start = (START - panel.start).days
    enough = np.nan_to_num(panel.Y[:, : start - MIN_HISTORY_DAYS]).sum(axis=1) > 0
    rows = np.nonzero(enough)[0]
    with bench_stack(f"censored-{name}") as settings:
        await store_history(settings, panel, rows, start)
        recent = np.nan_to_num(panel.Y[rows, start - 28 : start]).mean(axis=1)
        loop = Loop(panel, rows, start, weeks, on_hand=recent * (LEAD + REVIEW))
        log = Path(f"/tmp/{settings.kafka_group_id}.log")
        service = ServiceProcess(
            settings,
            log,
            DEMAND_CENSORING=str(variant.censoring).lower(),
            TARGET_SERVICE_LEVEL=str(variant.service_level),
            RISK_SWEEP_INTERVAL_SECONDS="5",
            LOG_LEVEL="WARNING",
        ).start()
        engine = create_engine(settings)
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            enable_idempotence=settings.kafka_enable_idempotence,
            linger_ms=20,
            max_batch_size=1024 * 1024,
        )
        try:
            await asyncio.to_thread(service.wait_healthy, 120)
            await producer.start()
            await fresh(engine, loop.items, None)
            for day in range(weeks * REVIEW):
                arriving = loop.pipeline.pop(day, None)
                if arriving is not None:
                    loop.on_hand = loop.on_hand + arriving
                demand = loop.demand(day)
                sold = np.minimum(loop.on_hand, demand)
                loop.on_hand = loop.on_hand - sold
                loop.sales[:, day] = sold
                loop.closing[:, day] = loop.on_hand
                review = day % REVIEW == REVIEW - 1
                stock = variant.snapshots == "daily" or review
                await publish_day(producer, settings, loop, day, stock, variant.service_level)
                if not review:
                    continue
                started = time.monotonic()
                await producer.flush()
                calendar = panel.day(start + day)
                await fresh(engine, loop.items, calendar)
                week = (day + 1) // REVIEW
                if week >= BURN_IN_WEEKS and (week - BURN_IN_WEEKS) % ORIGIN_EVERY_WEEKS == 0:
                    loop.forecasts[day + 1] = await forecasts_28(
                        engine, loop.items, calendar + timedelta(days=1)
                    )
                ordered = await orders(service.url, loop.items)
                late, short = supply_failures(len(loop.rows), week)
                delivered = np.where(short, ordered * SHORT_FILL, ordered)
                for delay, units in ((LEAD, np.where(late, 0.0, delivered)),
                                     (LEAD + LATE_DAYS, np.where(late, delivered, 0.0))):  # fmt: skip
                    loop.pipeline[day + delay] = loop.pipeline.get(day + delay, 0) + units
                loop.timings.append(time.monotonic() - started)
                print(
                    f"  {variant.name}: week {week}/{weeks} ({calendar}), "
                    f"{loop.timings[-1]:.0f} s, zero-stock {np.mean(loop.closing[:, day] <= 0):.2f}",
                    flush=True,
                )
        finally:
            await producer.stop()
            await engine.dispose()
            service.stop()
    return loop


def scores(loop: Loop) -> dict[str, Any]:
    """The variant's figures (see the module's docstring)."""
    days = loop.sales.shape[1]
    burn = min(BURN_IN_WEEKS * REVIEW, days - REVIEW)
    demand = np.stack([loop.demand(day) for day in range(days)], axis=1)
    after = slice(burn, days)
    lost = demand - loop.sales
    weekly_lost = lost[:, burn:].reshape(len(loop.rows), -1, REVIEW).sum(axis=2)
    mean_demand = demand[:, after].mean(axis=1)
    out: dict[str, Any] = {
        "fill_rate": float(loop.sales[:, after].sum() / demand[:, after].sum()),
        "cycle_service_level": float(np.mean(weekly_lost <= 1e-9)),
        "zero_stock_days": float(np.mean(loop.closing[:, after] <= 1e-9)),
        "average_stock_days": float(
            loop.closing[:, after].mean(axis=1).sum() / max(mean_demand.sum(), 1e-9)
        ),
        "selling_nothing": int(
            np.sum((loop.sales[:, -56:].sum(axis=1) == 0) & (demand[:, -56:].sum(axis=1) > 0))
        ),
        "seconds_per_week": float(np.mean(loop.timings)) if loop.timings else None,
    }
    level_all, level_out, cases = [], [], []
    for origin, forecast in loop.forecasts.items():
        if origin + 28 > days:
            continue
        for index, item in enumerate(loop.items):
            if item not in forecast:
                continue
            truth = float(demand[index, origin : origin + 28].sum())
            recent_out = bool((loop.closing[index, max(0, origin - 28) : origin] <= 1e-9).any())
            out_91 = bool((loop.closing[index, max(0, origin - 91) : origin] <= 1e-9).any())
            cases.append((origin, item, forecast[item], truth, recent_out, out_91))
            level_all.append((forecast[item], truth))
            if recent_out:
                level_out.append((forecast[item], truth))
    out["origins"] = sorted({c[0] for c in cases})
    out["level_all"] = _ratio(level_all)
    out["level_recent_stockout"] = _ratio(level_out)
    out["product_origins_recent_stockout"] = len(level_out)
    out["wape_28"] = _wape([(f, t) for _, _, f, t, _, _ in cases])
    out["cases"] = [list(c) for c in cases]
    return out


def _ratio(pairs: list[tuple[float, float]]) -> float | None:
    truth = sum(t for _, t in pairs)
    return round(sum(f for f, _ in pairs) / truth, 3) if truth > 0 else None


def _wape(pairs: list[tuple[float, float]]) -> float | None:
    truth = sum(t for _, t in pairs)
    return round(sum(abs(f - t) for f, t in pairs) / truth, 4) if truth > 0 else None


def no_harm(results: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """WAPE of 28-day totals on product-origins without a stockout in the 91 days
    before in both the censoring run (daily) and the ignored one."""
    on, off = results.get(VARIANTS[0].name), results.get(VARIANTS[2].name)
    if not on or not off:
        return {}
    clean_on = {(c[0], c[1]): c for c in on["cases"] if not c[5]}
    clean_off = {(c[0], c[1]): c for c in off["cases"] if not c[5]}
    both = sorted(set(clean_on) & set(clean_off))
    return {
        "product_origins": len(both),
        "wape_censoring": _wape([(clean_on[k][2], clean_on[k][3]) for k in both]),
        "wape_ignored": _wape([(clean_off[k][2], clean_off[k][3]) for k in both]),
    }


def at_equal_stock(results: dict[str, dict[str, Any]]) -> float | None:
    """The ignoring build's fill rate at the censoring build's average stock, read off
    the line through its two service levels."""
    on = results.get(VARIANTS[0].name)
    low, high = results.get(VARIANTS[2].name), results.get(VARIANTS[3].name)
    if not on or not low or not high:
        return None
    x0, x1 = low["average_stock_days"], high["average_stock_days"]
    y0, y1 = low["fill_rate"], high["fill_rate"]
    if abs(x1 - x0) < 1e-9:
        return None
    return round(y0 + (y1 - y0) * (on["average_stock_days"] - x0) / (x1 - x0), 4)


def print_table(name: str, results: dict[str, dict[str, Any]]) -> None:
    print(f"\n{name}")
    print(
        "| variant | level (all) | level (stockout in 28 d) | WAPE 28 | fill rate | "
        "cycle service | zero-stock days | average stock (days) | selling nothing | s/week |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for variant, r in results.items():
        print(
            f"| {variant} | {r['level_all']} | {r['level_recent_stockout']} "
            f"({r['product_origins_recent_stockout']}) | {r['wape_28']} | {r['fill_rate']:.3f} | "
            f"{r['cycle_service_level']:.3f} | {r['zero_stock_days']:.3f} | "
            f"{r['average_stock_days']:.1f} | {r['selling_nothing']} | "
            f"{r['seconds_per_week'] or 0:.0f} |"
        )
    harm = no_harm(results)
    if harm:
        print(
            f"no stockout in the 91 days before (either run, {harm['product_origins']} "
            f"product-origins): WAPE 28 {harm['wape_censoring']} with censoring, "
            f"{harm['wape_ignored']} ignored"
        )
    equal = at_equal_stock(results)
    if equal is not None:
        print(f"censoring ignored, at the censoring run's average stock: fill rate {equal:.3f}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", nargs="+", default=["retail", "grocer"])
    parser.add_argument("--weeks", type=int, default=30)
    parser.add_argument("--variants", nargs="+", type=int, default=list(range(len(VARIANTS))))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    print(
        f"bench/censored: {platform.machine()}, Python {platform.python_version()}, "
        f"{args.weeks} weeks from {START}, lead {LEAD} d, review {REVIEW} d"
    )
    everything: dict[str, dict[str, dict[str, Any]]] = {}
    for data in args.data:
        panel = dataset(data)
        results: dict[str, dict[str, Any]] = {}
        for index in args.variants:
            variant = VARIANTS[index]
            print(f"{data}: {variant.name}", flush=True)
            loop = await run_variant(panel, variant, args.weeks, f"{data}-{index}")
            results[variant.name] = scores(loop)
        everything[data] = results
        print_table(data, results)
        if args.json:
            args.json.write_text(json.dumps(everything, indent=1, default=str))
    print(f"\ncommand: python -m bench.censored --data {' '.join(args.data)} --weeks {args.weeks}")


if __name__ == "__main__":
    asyncio.run(main())

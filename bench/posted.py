"""Forecasts and stockout probabilities of histories the service has never stored,
asked through its HTTP API: what a user who posts `transaction_data` gets.

The sample's products are split in two by a hash of their id. One half is stored in
a fresh PostgreSQL with the ingestion's own write, and the stream's clock is moved
week by week to each origin as bench/evaluate moves it (the service's
GlobalModelService trains the global model on the stored half, backtests it and
calibrates the paths). At each origin every product of the other half with 30 days
of history posts its last `--days` days (every day, zeros included, through the day
before the origin) to the service's own app:

- `POST /forecast/demand`, 28 days: the 28- and 14-day totals and RMSSE against what
  followed, beside the moving average, seasonal naive, ADIDA and TSB of the same
  product's whole history;
- `POST /predict/stockout` with `current_stock_units` at 7, 14 and 21 days of the
  28-day mean and `lead_time_days` 14: `stockout_probability` and `risk_level`
  against whether the 14 days that followed ran out, beside the normal formula and
  the Poisson (the questions bench/evaluate asks of stored products).

The held-back half stands in for products the service never saw; the shop-wide
features come from the stored half, as they would from a live service's store.

    python -m bench.posted [--days 365 90] [--robustness] [--warmup-weeks 8]

On this 2-core machine: 35 min for `--days 90` (six 2011 origins), 60 min for
`--days 365 90 --robustness`; most of it the 54 (81) weekly global trainings.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import time
import zlib
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.evaluate import DATA, ORIGINS, ROBUSTNESS, load_panel, sample_database, train_at
from bench.scoring import (
    COVERS,
    HORIZON,
    LEAD_TIME,
    Answer,
    Scores,
    origin_probability_table,
    point_table,
    probability_tables,
    score_cases,
    stock_at_cover,
)
from ml_analytics.models.forecasters.panel import Panel

CONCURRENCY = 4
MIN_HISTORY_DAYS = 30


def split(panel: Panel) -> tuple[Panel, np.ndarray]:
    """The stored half of the panel (its own shop total), and the rows held back."""
    held = np.array([zlib.crc32(item.encode()) % 2 == 1 for item in panel.items])
    kept = np.nonzero(~held)[0]
    Y = panel.Y[kept]
    stored = Panel([panel.items[r] for r in kept], panel.start, Y, np.nansum(Y, axis=0))
    return stored, np.nonzero(held)[0]


@dataclass
class Posted:
    """What the API answered for one product at one origin."""

    yhat: np.ndarray
    model: str
    answers: dict[int, tuple[float, str]] = field(default_factory=dict)  # cover -> (p, level)


async def ask(api: httpx.AsyncClient, item: str, history: np.ndarray, origin: date) -> Posted:
    """The forecast and the stockout answers for one posted history ending the day
    before `origin`."""
    first = origin - timedelta(days=len(history))
    points = [
        {"date": (first + timedelta(days=d)).isoformat(), "quantity": float(q)}
        for d, q in enumerate(history)
    ]
    response = await api.post(
        "/forecast/demand",
        json={"product_id": item, "horizon_days": HORIZON, "transaction_data": points},
    )
    if response.status_code != 200:
        raise RuntimeError(f"{item} at {origin}: {response.status_code} {response.text[:300]}")
    body = response.json()
    assert body["predictions"][0]["ds"] == origin.isoformat()
    posted = Posted(
        np.array([p["yhat"] for p in body["predictions"]]), body["model_metrics"]["model"]
    )
    for cover in COVERS:
        stock = stock_at_cover(history, cover)
        if stock <= 0:
            break
        response = await api.post(
            "/predict/stockout",
            json={
                "product_id": item,
                "current_stock_units": stock,
                "horizon_days": HORIZON,
                "lead_time_days": LEAD_TIME,
                "transaction_data": points,
            },
        )
        if response.status_code != 200:
            raise RuntimeError(f"{item} at {origin}: {response.status_code} {response.text[:300]}")
        answer = response.json()
        posted.answers[cover] = (answer["stockout_probability"], answer["risk_level"])
    return posted


async def post_all(
    api: httpx.AsyncClient, panel: Panel, rows: list[int], origin: date, length: int
) -> dict[str, Posted]:
    """Each product's last `length` days before `origin` posted, CONCURRENCY at a time."""
    gate = asyncio.Semaphore(CONCURRENCY)
    t = panel.index(origin)

    async def one(row: int) -> Posted:
        async with gate:
            return await ask(api, panel.items[row], panel.history(row, t)[-length:], origin)

    answers = await asyncio.gather(*(one(r) for r in rows))
    return {panel.items[r]: a for r, a in zip(rows, answers, strict=True)}


async def run_service(
    panel: Panel, origins: list[date], warmup_weeks: int, lengths: list[int]
) -> dict[int, dict[date, dict[str, Posted]]]:
    """Per posted length and origin, each held-back product's answers."""
    from ml_analytics.consumers.broker import build_broker
    from ml_analytics.http.app import create_app
    from ml_analytics.services.global_model import GlobalModelService
    from ml_analytics.storage.database import create_engine

    stored, held = split(panel)
    steps = sorted({o - timedelta(days=7 * k) for o in origins for k in range(warmup_weeks + 1)})
    found: dict[int, dict[date, dict[str, Posted]]] = {n: {} for n in lengths}
    async with sample_database(stored, "posted") as settings:
        engine = create_engine(settings)
        global_models = GlobalModelService(engine, settings)
        app = create_app(settings, engine, build_broker(settings), manage_broker=False)
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(
                transport=transport, base_url="http://bench", timeout=600
            ) as api:
                for step in steps:
                    await train_at(engine, global_models, step)
                    if step not in origins:
                        continue
                    t = panel.index(step)
                    rows = [int(r) for r in held if panel.first[r] <= t - MIN_HISTORY_DAYS]
                    for length in lengths:
                        started = time.perf_counter()
                        found[length][step] = await post_all(api, panel, rows, step, length)
                        print(
                            f"  origin {step}: {len(rows)} held-back products posted "
                            f"({length} days) in {time.perf_counter() - started:.0f} s",
                            flush=True,
                        )
        finally:
            app.state.predictions.stop()
            await global_models.stop()
            await engine.dispose()
    return found


def given_answers(posted: Posted) -> Answer:
    """The API's answers, looked up by cover."""

    def answer(cover: int, stock: float) -> tuple[float, str]:
        return posted.answers[cover]

    return answer


def score_posted(panel: Panel, origin: date, posted: dict[str, Posted]) -> Scores:
    return score_cases(
        panel,
        origin,
        {item: answer.yhat for item, answer in posted.items()},
        {item: given_answers(answer) for item, answer in posted.items()},
        prophet=False,
    )


def report(panel: Panel, name: str, by_origin: dict[date, dict[str, Posted]]) -> dict[str, Any]:
    scores = {origin: score_posted(panel, origin, posted) for origin, posted in by_origin.items()}
    pooled = Scores()
    for origin_scores in scores.values():
        pooled.extend(origin_scores)
    methods = ("service", "moving average 28", "seasonal naive", "ADIDA", "TSB")
    per_origin = {
        origin: point_table(f"{name}, origin {origin}", s, methods)["total28"]
        for origin, s in scores.items()
    }
    ratios = point_table(f"{name}, pooled", pooled, methods)
    origin_probability_table(scores)
    probability = probability_tables(pooled)
    models: dict[str, int] = {}
    for posted in by_origin.values():
        for answer in posted.values():
            models[answer.model] = models.get(answer.model, 0) + 1
    print(
        "\nforecasters that answered: " + ", ".join(f"{m} {n}" for m, n in sorted(models.items()))
    )
    return {"ratios": ratios, "per_origin": per_origin, **probability}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--days", type=int, nargs="+", default=[365], help="days posted")
    parser.add_argument("--warmup-weeks", type=int, default=8)
    parser.add_argument("--robustness", action="store_true", help="also three 2010 origins")
    args = parser.parse_args()
    panel = load_panel(args.data)
    groups = {"2011 (six origins)": [date.fromisoformat(o) for g in ORIGINS.values() for o in g]}
    if args.robustness:
        groups["2010 (three origins)"] = [date.fromisoformat(o) for o in ROBUSTNESS["2010"]]
    origins = sorted(o for group in groups.values() for o in group)
    started = time.perf_counter()
    found = asyncio.run(run_service(panel, origins, args.warmup_weeks, args.days))
    stored, held = split(panel)
    print(
        f"\nbench/posted: {len(stored.items)} products stored, {len(held)} held back and "
        f"posted; {HORIZON}-day horizon; {(time.perf_counter() - started) / 60:.0f} min "
        f"({platform.machine()}, Python {platform.python_version()})"
    )
    summary = []
    for length in args.days:
        for name, group in groups.items():
            title = f"{length} days posted, {name}"
            print(f"\n## {title}")
            result = report(panel, title, {o: found[length][o] for o in group})
            summary.append((title, result))
    print(
        "\n| posted | 28-day total vs moving average | vs best simple baseline | worst origin "
        "| Brier skill 7 / 14 / 21 | high precision / recall | worst decile gap |"
    )
    print("|---|---:|---:|---:|---|---|---:|")
    for title, r in summary:
        skills = " / ".join(f"{r['skills'][c]:+.3f}" for c in COVERS)
        print(
            f"| {title} | {r['ratios']['total28_ma']:.3f} | {r['ratios']['total28']:.3f} | "
            f"{max(r['per_origin'].values()):.3f} | {skills} | "
            f"{r['precision']:.3f} / {r['recall']:.3f} | {r['worst_gap']:.3f} |"
        )
    days = " ".join(map(str, args.days))
    flags = f" --days {days}" + (" --robustness" if args.robustness else "")
    print(f"\ncommand: python -m bench.posted{flags}")


if __name__ == "__main__":
    main()

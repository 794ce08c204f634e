"""The global model on the real PostgreSQL: trained once per week of clock whatever the
number of replicas, stored with its backtest, loaded by every replica, and used by
their product forecasts; Prophet still answers when a request asks for it."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from ml_analytics.consumers.broker import build_broker
from ml_analytics.http.app import create_app
from ml_analytics.models import distribution
from ml_analytics.models.calibration import (
    BINS,
    FEATURES,
    POSTED_FEATURES,
    ConditionalCalibration,
)
from ml_analytics.services.global_model import GlobalModelService
from ml_analytics.services.training import ModelTrainer
from ml_analytics.services.training.trainer import CLOCK_POLL_SECONDS
from ml_analytics.settings import Settings
from ml_analytics.storage.ingest_writes import TransactionRow, record_transactions
from ml_analytics.storage.models_store import load_model
from ml_analytics.workers.pool import FitPool
from tests.helpers import scalar, unique, wait_until

pytestmark = pytest.mark.integration

START = date(2025, 1, 6)
DAYS = 240


async def store_history(engine: AsyncEngine, tag: str, products: int = 40) -> list[str]:
    """`products` products at levels from 0.5 to 20 a day over DAYS days."""
    rng = np.random.default_rng(9)
    levels = np.geomspace(0.5, 20, products)
    rows = []
    items = [f"{tag}-P{i:02d}" for i in range(products)]
    for item, level in zip(items, levels, strict=True):
        for offset, units in enumerate(rng.poisson(level, DAYS)):
            if units:
                rows.append(
                    TransactionRow(
                        f"{item}-{offset}", item, START + timedelta(days=offset), float(units)
                    )
                )
    async with engine.connect() as connection:
        driver = (await connection.get_raw_connection()).driver_connection
        await record_transactions(driver, rows)
    return items


async def set_clock(engine: AsyncEngine, day: date) -> None:
    async with engine.begin() as connection:
        await connection.execute(
            text("UPDATE stream_clock SET newest_event_at = :t WHERE clock_id = 1"),
            {"t": datetime(day.year, day.month, day.day, tzinfo=UTC)},
        )


async def versions(engine: AsyncEngine) -> list[tuple[int, date]]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT version, trained_through FROM global_models ORDER BY version")
        )
        return [(row.version, row.trained_through) for row in rows]


async def trained_once(engine: AsyncEngine, settings: Settings, tag: str) -> date:
    """Stores `tag`'s products, moves the clock to the day after them and trains one
    global model (with its backtest); that day."""
    await store_history(engine, tag)
    clock = START + timedelta(days=DAYS)
    await set_clock(engine, clock)
    global_models = GlobalModelService(engine, settings)
    try:
        assert await global_models.train_if_due() is not None
    finally:
        await global_models.stop()
    return clock


async def overwrite_newest_model(engine: AsyncEngine, column: str, value: Any) -> None:
    """Sets the newest stored global model's `column` (combination, calibration) to
    `value`, as a training that had learned it would have stored it."""
    assert column in ("combination", "calibration")
    async with engine.begin() as connection:
        await connection.execute(
            text(
                f"UPDATE global_models SET {column} = CAST(:value AS jsonb) "
                "WHERE version = (SELECT max(version) FROM global_models)"
            ),
            {"value": json.dumps(value)},
        )


def model_directories() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("ml-analytics-models-*"))


async def test_a_loaded_models_file_is_removed_when_its_service_stops_or_is_dropped(
    settings: Settings, engine: AsyncEngine
) -> None:
    """Each replica writes the model it loads to a file of its own for the forecasting
    workers; stopping the service removes it, and so does dropping a service nobody
    stopped (an HTTP app built without the service around it, a test's); one that
    loads no model writes nothing."""
    await trained_once(engine, settings, unique("files"))
    before = model_directories()
    idle = GlobalModelService(engine, settings)  # loads nothing: writes nothing
    assert model_directories() == before
    await idle.stop()
    stopped, dropped = GlobalModelService(engine, settings), GlobalModelService(engine, settings)
    files = []
    for service in (stopped, dropped):
        reference = (await service.refresh()).reference
        assert reference is not None and reference.path.is_file()
        files.append(reference.path)
    await stopped.stop()
    assert not files[0].parent.exists()
    assert files[1].is_file()
    del service, dropped
    gc.collect()
    assert not files[1].parent.exists()


async def test_the_global_model_is_trained_once_per_week_of_clock_across_three_replicas(
    settings: Settings, engine: AsyncEngine
) -> None:
    await store_history(engine, unique("g"))
    replicas = [GlobalModelService(engine, settings) for _ in range(3)]
    clock = START + timedelta(days=DAYS - 30)
    try:
        await set_clock(engine, clock)
        trained = await asyncio.gather(*(r.train_if_due() for r in replicas))
        assert sum(model is not None for model in trained) == 1
        (first,) = [model for model in trained if model is not None]
        assert first.model_text is not None and first.training_rows >= 500
        assert first.selection["backtest"]["cases"] == 40  # every product, four weeks back
        assert first.trained_through == clock - timedelta(days=1)

        await set_clock(engine, clock + timedelta(days=6))  # six days: not due
        assert not any(await asyncio.gather(*(r.train_if_due() for r in replicas)))
        await set_clock(engine, clock + timedelta(days=7))
        trained = await asyncio.gather(*(r.train_if_due() for r in replicas))
        assert sum(model is not None for model in trained) == 1
        stored = await versions(engine)
        assert [day for _, day in stored] == [clock - timedelta(days=1), clock + timedelta(days=6)]

        # Every replica loads the newest version.
        loaded = await asyncio.gather(*(r.refresh() for r in replicas))
        assert {model.version for model in loaded} == {stored[-1][0]}
        assert all(model.reference is not None for model in loaded)
        origins = await scalar(engine, "SELECT count(DISTINCT origin) FROM product_backtests")
        assert origins == 2
    finally:
        for replica in replicas:
            await replica.stop()


async def test_products_are_forecast_with_the_global_model_and_prophet_on_request(
    settings: Settings, engine: AsyncEngine
) -> None:
    items = await store_history(engine, unique("f"))
    clock = START + timedelta(days=DAYS)
    await set_clock(engine, clock)
    global_models = GlobalModelService(engine, settings)
    trainer = ModelTrainer(engine, settings, global_models=global_models)
    app = create_app(settings, engine, build_broker(settings), manage_broker=False)
    try:
        assert await global_models.train_if_due() is not None
        current = await global_models.refresh()
        stored = await trainer.train_now(items[-1], force=True)
        assert stored is not None
        assert stored.model_name == "combination:gbm+ma28+adida"
        assert stored.global_version == current.version
        assert stored.forecast_start == clock and stored.trained_through == clock - timedelta(1)
        assert 15 < float(np.mean(stored.yhat[:28])) < 25  # a level of 20 a day
        assert stored.metrics["skill_backtests"] == 1  # the backtest four weeks back
        async with engine.connect() as connection:
            model = await load_model(connection, items[-1])
        assert model is not None and model.weights == pytest.approx(
            {"gbm": 1 / 3, "ma28": 1 / 3, "adida": 1 / 3}, abs=1e-5
        )

        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as api:
            stored_answer = await api.post(
                "/forecast/demand", json={"product_id": items[-1], "horizon_days": 28}
            )
            assert stored_answer.status_code == 200, stored_answer.text
            body = stored_answer.json()
            assert body["model_metrics"]["model"] == "combination:gbm+ma28+adida"
            # The stored forecast itself: no second model.
            assert [p["yhat"] for p in body["predictions"]] == pytest.approx(
                list(stored.yhat[:28]), abs=1e-3
            )
            prophet = await api.post(
                "/forecast/demand",
                json={"product_id": items[-1], "horizon_days": 28, "model": "prophet"},
            )
            assert prophet.status_code == 200, prophet.text
            assert prophet.json()["model_metrics"]["model"] == "prophet"
            assert 15 < np.mean([p["yhat"] for p in prophet.json()["predictions"]]) < 25
            sent = await api.post(
                "/forecast/demand",
                json={
                    "product_id": "new",
                    "horizon_days": 14,
                    "transaction_data": [
                        {"date": (START + timedelta(days=d)).isoformat(), "quantity": 5}
                        for d in range(DAYS)
                    ],
                },
            )
            assert sent.status_code == 200, sent.text
            # History sent for days the stored data covers: the global model applies.
            assert sent.json()["model_metrics"]["model"] == "combination:gbm+ma28+adida"
            assert all(4 <= p["yhat"] <= 6.5 for p in sent.json()["predictions"] if p["yhat"] > 0.5)
    finally:
        app.state.predictions.stop()
        await trainer.stop()
        await global_models.stop()


class LoadsTheGlobalModelDuringTheFirstFit(FitPool):
    """The trainer's real pool; the replica loads a new global model while the first
    fit runs, and the trainer hears of it before that fit's models are stored."""

    def __init__(self, global_models: GlobalModelService) -> None:
        super().__init__(workers=2, max_jobs_per_worker=100)
        self.global_models = global_models
        self.loaded: int | None = None

    async def run(self, timeout_seconds: float, function: Any, *args: Any) -> Any:
        result = await super().run(timeout_seconds, function, *args)
        if self.loaded is None:
            self.loaded = (await self.global_models.refresh()).version
            await asyncio.sleep(3 * CLOCK_POLL_SECONDS)
        return result


async def test_products_due_at_once_are_forecast_together_each_with_the_newest_global_model(
    settings: Settings, engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    items = await store_history(engine, unique("b"))
    await set_clock(engine, START + timedelta(days=DAYS))
    global_models = GlobalModelService(engine, settings)
    assert await global_models.train_if_due() is not None  # stored, not loaded yet
    pool = LoadsTheGlobalModelDuringTheFirstFit(global_models)
    trainer = ModelTrainer(engine, settings, global_models=global_models, pool=pool)
    caplog.set_level(logging.INFO, logger="ml_analytics.services.training.trainer")
    loop = asyncio.get_running_loop()
    try:
        # Every product is due: forecast together with the local members, and the
        # global model arrives meanwhile; then each is forecast with it, also those
        # that had no model yet when it arrived.
        await trainer.start()
        deadline = loop.time() + 120
        while True:
            async with engine.connect() as connection:
                stored = (
                    await connection.execute(
                        text(
                            "SELECT product_id, global_version FROM product_models "
                            "WHERE product_id = ANY(:items)"
                        ),
                        {"items": items},
                    )
                ).all()
            if (
                pool.loaded is not None
                and len(stored) == len(items)
                and all(row.global_version == pool.loaded for row in stored)
            ):
                break
            assert loop.time() < deadline, f"not all on version {pool.loaded}: {stored}"
            await asyncio.sleep(0.5)
    finally:
        await trainer.stop()
        await global_models.stop()
    trained = [r for r in caplog.records if r.getMessage() == "model trained"]
    assert {r.product_id for r in trained} == set(items)  # type: ignore[attr-defined]
    # Products of one batch share one lock span: they were forecast together.
    spans: dict[float, int] = {}
    for record in trained:
        spans[record.locked_at] = spans.get(record.locked_at, 0) + 1  # type: ignore[attr-defined]
    assert max(spans.values()) > 1


async def test_the_sample_paths_calibration_is_learned_per_product_once_backtests_suffice(
    settings: Settings, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store_history(engine, unique("c"), products=60)
    service = GlobalModelService(engine, settings)
    clock = START + timedelta(days=DAYS - 60)
    try:
        calibrations = []
        for week in range(4):  # four backtest origins of 60 products: 240 cases
            await set_clock(engine, clock + timedelta(days=7 * week))
            trained = await service.train_if_due()
            assert trained is not None
            calibrations.append(trained.calibration)
        assert calibrations[:3] == [None, None, None]  # fewer than four origins
        learned = calibrations[-1]
        assert isinstance(learned, dict) and learned["kind"] == "ordinal"
        assert len(learned["slopes"]) == len(FEATURES) + 1
        described = await scalar(
            engine, "SELECT count(*) FROM product_backtests WHERE features IS NOT NULL"
        )
        assert described == 240
        # Beside it, the model for posted histories shorter than a year, learned from
        # the same products forecast from cut histories of 30 to 364 days.
        cut = await scalar(
            engine,
            "SELECT count(*) FROM product_backtests WHERE posted_pit_14 IS NOT NULL "
            "AND jsonb_array_length(posted_features) = :n "
            "AND (posted_features->>-1)::float BETWEEN 30 AND 364",
            n=len(POSTED_FEATURES),
        )
        assert cut == 240
        assert len(learned["posted"]["slopes"]) == len(POSTED_FEATURES) + 1
        current = await service.refresh()
        assert isinstance(current.calibration, ConditionalCalibration)
        assert current.calibration.as_dict() == {k: v for k, v in learned.items() if k != "posted"}
        assert current.posted_calibration is not None and current.posted_calibration.posted
        assert current.posted_calibration.as_dict() == learned["posted"]
        # Each backtest keeps how its paths were drawn; once they are drawn otherwise
        # (a new version here: the training's worker still draws the old), the
        # backtests drawn before teach the recalibration nothing.
        drawn = await scalar(
            engine,
            "SELECT count(*) FROM product_backtests WHERE paths_version = :v",
            v=distribution.PATHS_VERSION,
        )
        assert drawn == 240
        monkeypatch.setattr(distribution, "PATHS_VERSION", distribution.PATHS_VERSION + 1)
        await set_clock(engine, clock + timedelta(days=28))
        retrained = await service.train_if_due()
        assert retrained is not None and retrained.calibration is None
    finally:
        await service.stop()


async def test_a_short_posted_history_is_forecast_as_the_trainer_forecasts_the_same_days(
    settings: Settings, engine: AsyncEngine
) -> None:
    """The HTTP API gives a posted history the shop's days of the whole training window,
    as the trainer does: the global model's shop-wide features (up to 91 days back here)
    are not cut off at the first day of a 60-day history."""
    tag = unique("short")
    await store_history(engine, tag)
    clock = START + timedelta(days=DAYS)
    await set_clock(engine, clock)
    rng = np.random.default_rng(4)
    first = clock - timedelta(days=60)
    days = [(first + timedelta(days=d), float(rng.poisson(6))) for d in range(60)]
    days[0] = (first, 9.0)  # the stored series starts on its first sale, as the posted one
    async with engine.connect() as connection:
        driver = (await connection.get_raw_connection()).driver_connection
        await record_transactions(
            driver,
            [
                TransactionRow(f"{tag}-R-{d}", f"{tag}-R", day, units)
                for d, (day, units) in enumerate(days)
                if units
            ],
        )
    global_models = GlobalModelService(engine, settings)
    trainer = ModelTrainer(engine, settings, global_models=global_models)
    app = create_app(settings, engine, build_broker(settings), manage_broker=False)
    try:
        assert await global_models.train_if_due() is not None
        await global_models.refresh()
        stored = await trainer.train_now(f"{tag}-R", force=True)
        assert stored is not None and stored.global_version is not None
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as api:
            answer = await api.post(
                "/forecast/demand",
                json={
                    "product_id": f"{tag}-posted",
                    "horizon_days": 28,
                    "transaction_data": [
                        {"date": day.isoformat(), "quantity": units} for day, units in days if units
                    ],
                },
            )
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_metrics"]["model"] == stored.model_name
        assert [p["yhat"] for p in answer.json()["predictions"]] == pytest.approx(
            list(stored.yhat[:28]), abs=1e-3
        )
    finally:
        app.state.predictions.stop()
        await trainer.stop()
        await global_models.stop()


async def test_a_posted_history_shorter_than_a_year_gets_the_default_combination(
    settings: Settings, engine: AsyncEngine
) -> None:
    """The combination chosen on the stored products' backtests (here the global model
    alone) forecasts a posted history of a year or more; a shorter one, whose product
    may be older than it says, gets the default's equal weights."""
    clock = await trained_once(engine, settings, unique("posted"))
    await overwrite_newest_model(engine, "combination", {"gbm": 1.0})
    rng = np.random.default_rng(5)
    app = create_app(settings, engine, build_broker(settings), manage_broker=False)
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as api:
            models = {}
            for days in (90, 364, 365, 400):
                first = clock - timedelta(days=days)
                answer = await api.post(
                    "/forecast/demand",
                    json={
                        "product_id": f"posted-{days}",
                        "horizon_days": 28,
                        "transaction_data": [
                            {"date": (first + timedelta(days=d)).isoformat(), "quantity": q}
                            for d, q in enumerate(rng.poisson(6, days).astype(float))
                        ],
                    },
                )
                assert answer.status_code == 200, answer.text
                models[days] = answer.json()["model_metrics"]["model"]
    finally:
        app.state.predictions.stop()
    assert models == {
        90: "combination:gbm+ma28+adida",
        364: "combination:gbm+ma28+adida",
        365: "combination:gbm",
        400: "combination:gbm",
    }


def ordinal(features: int, cuts_at: float, posted: bool = False) -> dict[str, Any]:
    """A stored conditional calibration that reads no feature: every product's actual
    demand lands at the top of its paths (cuts far below zero), at the bottom (far
    above), or anywhere (cuts at the logits of 1/10 ... 9/10, cuts_at=0)."""
    even = [float(np.log(j / (BINS - j))) for j in range(1, BINS)]
    return {
        "kind": "ordinal",
        "bins": BINS,
        "cuts": [cuts_at + c for c in even],
        "slopes": [0.0] * (features + 1),
        "center": [0.0] * (features + 1),
        "scale": [1.0] * (features + 1),
        "features": "posted" if posted else "stored",
    }


async def test_a_posted_history_shorter_than_a_year_is_recalibrated_as_cut_histories_were(
    settings: Settings, engine: AsyncEngine
) -> None:
    """A posted history shorter than a year gets its paths recalibrated by the model
    learned from cut histories (stored under "posted"); a year or more, by the stored
    products' model, whatever the posted one says."""
    clock = await trained_once(engine, settings, unique("cut"))
    rng = np.random.default_rng(6)
    histories = {days: rng.poisson(6, days).astype(float) for days in (90, 400)}

    async def probabilities(posted_cuts_at: float) -> dict[int, float]:
        stored = {
            **ordinal(len(FEATURES), 0.0),
            "posted": ordinal(len(POSTED_FEATURES), posted_cuts_at, posted=True),
        }
        await overwrite_newest_model(engine, "calibration", stored)
        app = create_app(settings, engine, build_broker(settings), manage_broker=False)
        answers = {}
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as api:
                for days, history in histories.items():
                    first = clock - timedelta(days=days)
                    answer = await api.post(
                        "/predict/stockout",
                        json={
                            "product_id": f"cut-{days}",
                            "current_stock_units": float(history[-28:].mean() * 14),
                            "lead_time_days": 14,
                            "cache_bypass": True,
                            "transaction_data": [
                                {"date": (first + timedelta(days=d)).isoformat(), "quantity": q}
                                for d, q in enumerate(history)
                            ],
                        },
                    )
                    assert answer.status_code == 200, answer.text
                    answers[days] = answer.json()["stockout_probability"]
        finally:
            app.state.predictions.stop()
        return answers

    high, low = await probabilities(-20.0), await probabilities(20.0)
    assert high[90] > 0.9 and low[90] < 0.1  # the posted model decides
    assert high[400] == low[400]  # a year posted: the stored products' model


async def test_a_global_version_without_a_model_refreshes_each_product_once(
    settings: Settings, engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    """Too little data to learn from: the global training stores a version with no
    model in it, and each product is forecast once for that version (with the local
    members), not again and again."""
    items = await store_history(engine, unique("small"), products=3)
    clock = START + timedelta(days=45)
    await set_clock(engine, clock)
    global_models = GlobalModelService(engine, settings)
    stored = await global_models.train_if_due()
    assert stored is not None and stored.model_text is None
    current = await global_models.refresh()
    assert current.version is not None and current.reference is None
    trainer = ModelTrainer(engine, settings, global_models=global_models)
    caplog.set_level(logging.INFO, logger="ml_analytics.services.training.trainer")

    async def on_version() -> list[Any]:
        async with engine.connect() as connection:
            rows = await connection.execute(
                text(
                    "SELECT product_id, global_version FROM product_models "
                    "WHERE product_id = ANY(:items)"
                ),
                {"items": items},
            )
            return [row for row in rows if row.global_version == current.version]

    try:
        await trainer.start()
        await wait_until(on_version, lambda rows: len(rows) == len(items), what="every product")
        await asyncio.sleep(3 * CLOCK_POLL_SECONDS)
    finally:
        await trainer.stop()
        await global_models.stop()
    trained = [r for r in caplog.records if r.getMessage() == "model trained"]
    assert sorted(r.product_id for r in trained) == sorted(items)  # type: ignore[attr-defined]


async def test_a_replica_keeps_the_files_of_its_last_three_loaded_versions(
    settings: Settings, engine: AsyncEngine
) -> None:
    await trained_once(engine, settings, unique("keep"))
    service = GlobalModelService(engine, settings, train=False)
    try:
        paths = []
        for _ in range(5):  # five versions in turn (a replay moves the clock that fast)
            current = await service.refresh()
            assert current.reference is not None
            paths.append(current.reference.path)
            async with engine.begin() as connection:
                await connection.execute(text("UPDATE global_models SET version = version + 1"))
        assert len(set(paths)) == 5
        assert [path.is_file() for path in paths] == [False, False, True, True, True]
    finally:
        await service.stop()


async def test_a_global_training_that_fails_is_tried_again_after_a_growing_pause(
    settings: Settings, engine: AsyncEngine
) -> None:
    service = GlobalModelService(engine, settings)
    attempts = []

    async def fails() -> None:
        attempts.append(time.monotonic())
        raise MemoryError("the training's worker was killed")

    service.train_if_due = fails  # type: ignore[method-assign]
    try:
        for _ in range(3):  # the poller's steps, a clock move's wakes
            await service._follow_step()
        assert len(attempts) == 1
        first_pause = service._train_not_before - attempts[0]
        service._train_not_before = 0.0  # the pause is over
        await service._follow_step()
        assert len(attempts) == 2
        assert service._train_not_before - attempts[1] == pytest.approx(2 * first_pause, rel=0.05)
    finally:
        await service.stop()

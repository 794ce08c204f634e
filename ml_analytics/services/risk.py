"""Assess stockout risk and publish `StockoutRisk` events, through an outbox.

After a (re)train and after every stock-level update, the product's risk is
assessed with its current model (no refit). The assessment is stored, and, when
its level differs from the last one published (or none was), an event goes into
`risk_outbox` in the same transaction. A relay publishes the outbox in order and
marks what the broker acknowledged. So the stored "last published level" and the
topic cannot disagree after a crash: an event is published at least once, with a
stable `event_id` downstream can deduplicate on, and never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ml_analytics import metrics
from ml_analytics.background import BackgroundLoop
from ml_analytics.events import ModelInfo, StockoutRisk
from ml_analytics.models.replenishment import Replenishment, ReplenishmentPolicy, recommend
from ml_analytics.models.risk import NotAssessable, assess_stockout_risk, risk_window_days
from ml_analytics.services.clock import clock_through
from ml_analytics.services.demand import DemandHistory, demand_history
from ml_analytics.settings import Settings
from ml_analytics.storage.assessments import (
    count_pending,
    finish_pending,
    record_assessment,
    request_assessments,
    retry_pending,
    take_pending,
)
from ml_analytics.storage.demand import StockSnapshot, latest_stock_snapshot, units_between
from ml_analytics.storage.locks import RISK_RELAY_LOCK
from ml_analytics.storage.models_store import StoredModel, load_model
from ml_analytics.storage.outbox import mark_published, prune_published_outbox, unpublished_outbox

logger = logging.getLogger(__name__)

OUTBOX_PRUNE_INTERVAL_SECONDS = 3600.0
RELAY_POLL_SECONDS = 1.0  # the relay also looks for another replica's queued events


@dataclass(frozen=True)
class ProductState:
    """What an assessment reads: the product's model, its current stock, and the
    demand already observed between the stock's day and the forecast's first day."""

    model: StoredModel
    stock: StockSnapshot
    snapshot_day: date
    observed_since_snapshot_units: float


async def product_state(
    connection: AsyncConnection, product_id: str, settings: Settings
) -> ProductState | None:
    """None without a trained model or a known stock."""
    model = await load_model(connection, product_id)
    if model is None:
        return None
    stock = await latest_stock_snapshot(connection, product_id)
    if stock is None:
        return None
    snapshot_day = stock.as_of.astimezone(settings.timezone).date()
    # The days after the stock's day and before the forecast's first day.
    observed = await units_between(
        connection,
        product_id,
        snapshot_day + timedelta(days=1),
        model.forecast_start - timedelta(days=1),
    )
    return ProductState(model, stock, snapshot_day, observed)


def replenishment_of(
    state: ProductState,
    settings: Settings,
    *,
    service_level: float | None = None,
    review_days: int | None = None,
) -> Replenishment:
    """What to order and by when: the policy at the given service level and review
    period, else the product's own target (its stock level's) and the settings'."""
    stock = state.stock
    policy = ReplenishmentPolicy(
        service_level=service_level or stock.target_service_level or settings.target_service_level,
        review_days=review_days or settings.review_period_days,
    )
    return recommend(
        sample_paths=state.model.sample_paths,
        forecast_start=state.model.forecast_start,
        snapshot_day=state.snapshot_day,
        on_hand_units=stock.stock_units,
        lead_time_days=risk_window_days(stock.lead_time_days, settings.default_risk_window_days),
        policy=policy,
        on_order_units=stock.on_order_units,
        order_multiple_units=stock.order_multiple_units,
        observed_since_snapshot_units=state.observed_since_snapshot_units,
    )


RECENT_DEMAND_DAYS = 365  # the days an assessment re-marks (and estimates lost sales on)


async def recent_demand(
    connection: AsyncConnection, product_id: str, settings: Settings
) -> DemandHistory | None:
    """The product's last RECENT_DEMAND_DAYS to the clock, its censored days marked and
    stored again: a stock level (a late one too) re-marks the days it brackets."""
    through = await clock_through(connection, settings)
    if through is None:
        return None
    return await demand_history(
        connection, product_id, settings, through=through, max_days=RECENT_DEMAND_DAYS
    )


async def assess_product(
    connection: AsyncConnection, product_id: str, settings: Settings
) -> StockoutRisk | None:
    """The product's risk now, or None without a trained model or a known stock."""
    history = await recent_demand(connection, product_id, settings)
    state = await product_state(connection, product_id, settings)
    if state is None:
        return None
    model, stock = state.model, state.stock
    window = risk_window_days(stock.lead_time_days, settings.default_risk_window_days)
    try:
        risk = assess_stockout_risk(
            forecast_start=model.forecast_start,
            sample_paths=model.sample_paths,
            stock_units=stock.stock_units,
            snapshot_day=state.snapshot_day,
            window_days=window,
            thresholds=settings.risk_thresholds(),
            observed_since_snapshot_units=state.observed_since_snapshot_units,
        )
    except NotAssessable as reason:
        # Said loudly, and the HTTP routes answer 409 with the reason: never a figure
        # made up for days the forecast cannot speak for.
        logger.warning(
            "risk not assessable", extra={"product_id": product_id, "reason": str(reason)}
        )
        return None
    order = replenishment_of(state, settings)
    return StockoutRisk(
        event_id=str(uuid.uuid4()),
        product_id=product_id,
        generated_at=datetime.now(UTC),
        as_of=stock.as_of,
        current_stock_units=stock.stock_units,
        risk_window_days=risk.risk_window_days,
        risk_level=risk.risk_level,
        stockout_probability=risk.stockout_probability,
        predicted_stockout_date=risk.predicted_stockout_date,
        days_until_stockout=risk.days_until_stockout,
        confidence=risk.confidence,
        model=ModelInfo(
            name=model.model_name,
            trained_at=model.trained_at,
            training_days=model.training_days,
            mape=model.metrics.get("mape"),
            rmse=model.metrics.get("rmse"),
            skill_vs_moving_average=model.metrics.get("skill_vs_moving_average"),
            skill_backtests=model.metrics.get("skill_backtests", 0),
            weights=model.weights,
        ),
        target_service_level=order.target_service_level,
        reorder_point_units=order.reorder_point_units,
        order_up_to_units=order.order_up_to_units,
        recommended_order_units=order.recommended_order_units,
        order_by_date=order.order_by_date,
        lost_sales_units_28d=history.lost_sales() if history is not None else None,
    )


SWEEP_BATCH_PRODUCTS = 16  # products assessed per transaction (their rows stay locked)
MAX_RETRY_SECONDS = 300


class RiskService:
    """Assesses the products marked pending and relays the outbox to the stockout-risk
    topic."""

    def __init__(self, engine: AsyncEngine, publisher: Any, settings: Settings) -> None:
        """`publisher`: the stockout-risk topic's (consumers/broker.py declares it)."""
        self._engine = engine
        self._publisher = publisher
        self._settings = settings
        self._relay = BackgroundLoop("risk-relay", self._relay_step, RELAY_POLL_SECONDS)
        self._sweeper = BackgroundLoop(
            "risk-sweeper", self._sweep, settings.risk_sweep_interval_seconds
        )
        self._next_prune = 0.0

    def assess_soon(self) -> None:
        """Products were marked pending (a stock level, a model): assess them now."""
        self._sweeper.wake()

    async def reassess(self, product_ids: Iterable[str]) -> int:
        """Mark these products pending and assess every pending product now; returns how
        many events were queued for publishing."""
        async with self._engine.begin() as connection:
            await request_assessments(connection, sorted(set(product_ids)))
        return await self.assess_pending()

    async def assess_pending(self) -> int:
        """Assess the products marked pending that are not being assessed elsewhere and
        not backing off; returns how many events were queued for publishing."""
        queued = 0
        while True:
            taken, events = await self._assess_some()
            queued += events
            if taken < SWEEP_BATCH_PRODUCTS:
                break
        if queued:
            self._relay.wake()
        return queued

    async def _assess_some(self) -> tuple[int, int]:
        """One transaction: up to SWEEP_BATCH_PRODUCTS pending products assessed, their
        rows removed (or, where the assessment failed, kept with a later retry)."""
        queued = 0
        async with self._engine.begin() as connection:
            pending = await take_pending(connection, SWEEP_BATCH_PRODUCTS)
            done, failed = [], []
            for product_id, attempts in pending:
                try:
                    async with connection.begin_nested():
                        risk = await assess_product(connection, product_id, self._settings)
                        if risk is not None and await record_assessment(
                            connection, product_id, risk.model_dump(mode="json")
                        ):
                            queued += 1
                    done.append(product_id)
                except Exception as failure:
                    failed.append((product_id, attempts, failure))
            await finish_pending(connection, done)
            for product_id, attempts, reason in failed:
                delay = min(MAX_RETRY_SECONDS, 2**attempts)
                logger.warning(
                    "assessing a product's risk failed; it stays pending and is tried again",
                    exc_info=reason,
                    extra={"product_id": product_id, "retry_in_seconds": delay},
                )
                await retry_pending(connection, product_id, delay, repr(reason)[:500])
        return len(pending), queued

    async def _sweep(self) -> None:
        await self.assess_pending()
        async with self._engine.connect() as connection:
            pending, next_due_seconds = await count_pending(connection)
        metrics.PENDING_ASSESSMENTS.set(pending)
        if next_due_seconds is not None:
            # A product backing off: look again when its pause ends, not a period later.
            self._sweeper.wake_in(max(0.05, next_due_seconds))

    def start(self) -> None:
        """Relay the outbox and sweep the pending assessments (what an earlier run left
        of both first)."""
        for loop in (self._relay, self._sweeper):
            if not loop.running:
                loop.start()
                loop.wake()

    async def stop(self) -> None:
        await self._sweeper.stop()
        await self._relay.stop()
        with contextlib.suppress(Exception):
            await self.relay_once()  # a last pass: leave as little as possible behind

    async def _relay_step(self) -> None:
        """Publish what is queued; once an hour, forget what was published long ago."""
        while await self.relay_once():
            pass
        if time.monotonic() >= self._next_prune:
            self._next_prune = time.monotonic() + OUTBOX_PRUNE_INTERVAL_SECONDS
            await self.prune_outbox()

    async def prune_outbox(self) -> int:
        """Forget events published more than RISK_OUTBOX_RETENTION_DAYS ago (the topic
        keeps them); the outbox would otherwise only grow."""
        async with self._engine.begin() as connection:
            pruned = await prune_published_outbox(
                connection, self._settings.risk_outbox_retention_days
            )
        if pruned:
            logger.info("pruned the published risk outbox", extra={"events": pruned})
        return pruned

    async def relay_once(self) -> int:
        """Publish one batch of queued events; returns how many."""
        async with self._engine.begin() as connection:
            locked = (
                await connection.execute(
                    # One relay at a time across replicas: events leave in queue order.
                    text("SELECT pg_try_advisory_xact_lock(:id)"),
                    {"id": RISK_RELAY_LOCK},
                )
            ).scalar_one()
            if not locked:
                return 0
            entries = await unpublished_outbox(connection)
            if not entries:
                return 0
            # Sent in queue order (the producer keeps order per partition), then
            # marked published only once the broker acknowledged them all.
            acks: list[Any] = [
                await self._publisher.publish(
                    json.dumps(entry.payload).encode(),
                    key=entry.product_id.encode(),
                    no_confirm=True,
                )
                for entry in entries
            ]
            await asyncio.gather(*acks)
            await mark_published(connection, [entry.event_id for entry in entries])
        for entry in entries:
            metrics.RISK_EVENTS.labels(entry.payload["risk_level"]).inc()
            logger.info(
                "stockout-risk event published",
                extra={
                    "product_id": entry.product_id,
                    "event_id": entry.event_id,
                    "risk_level": entry.payload["risk_level"],
                    "stockout_probability": entry.payload["stockout_probability"],
                    "days_until_stockout": entry.payload["days_until_stockout"],
                },
            )
        return len(entries)

"""What to order and by when: one product's recommendation at any service level, and
the current recommendations of all products as CSV for buyers who use spreadsheets."""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import StreamingResponse

from ml_analytics.api_models import ErrorBody, Replenishment
from ml_analytics.events import MAX_SERVICE_LEVEL, MIN_SERVICE_LEVEL
from ml_analytics.http.dependencies import AppSettings, Engine, ProductId
from ml_analytics.models.risk import NotAssessable
from ml_analytics.services.risk import product_state, replenishment_of
from ml_analytics.storage.recommendations import RECOMMENDATION_COLUMNS, stream_recommendations

router = APIRouter(tags=["replenishment"])

# A spreadsheet runs a cell that starts with one of these as a formula.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


@router.get(
    "/products/{product_id:path}/replenishment",
    response_model=Replenishment,
    responses={
        404: {"model": ErrorBody, "description": "No trained model or stock level yet"},
        409: {"model": ErrorBody, "description": "The stock level lies too far past the forecast"},
    },
)
async def product_replenishment(
    product_id: ProductId,
    engine: Engine,
    settings: AppSettings,
    service_level: Annotated[
        float | None,
        Query(
            ge=MIN_SERVICE_LEVEL,
            le=MAX_SERVICE_LEVEL,
            description="Target cycle service level (default: the product's, else "
            "TARGET_SERVICE_LEVEL)",
        ),
    ] = None,
    review_days: Annotated[
        int | None,
        Query(ge=1, le=91, description="Days between reviews (default: REVIEW_PERIOD_DAYS)"),
    ] = None,
) -> Replenishment:
    """The order-up-to level, reorder point, recommended order and order-by day from
    the product's current forecast and stock, computed now for the service level and
    review period asked (the stored risk event uses the defaults)."""
    async with engine.connect() as connection:
        state = await product_state(connection, product_id, settings)
    if state is None:
        raise HTTPException(
            404,
            f"No replenishment for product {product_id!r} yet: it needs a trained model "
            "and a stock level",
        )
    try:
        order = replenishment_of(
            state, settings, service_level=service_level, review_days=review_days
        )
    except NotAssessable as reason:
        raise HTTPException(
            409, f"No replenishment for product {product_id!r} yet: {reason}"
        ) from reason
    return Replenishment(
        **dataclasses.asdict(order),
        product_id=product_id,
        as_of=state.stock.as_of,
        current_stock_units=state.stock.stock_units,
        on_order_units=state.stock.on_order_units,
        order_multiple_units=state.stock.order_multiple_units,
        model_name=state.model.model_name,
        trained_at=state.model.trained_at,
    )


def _cell(value: object) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


@router.get(
    "/replenishment.csv",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}, "description": "One row per product"}},
)
async def replenishment_csv(
    engine: Engine,
    needed_only: Annotated[
        bool, Query(description="Only products whose recommended order is above 0")
    ] = False,
) -> StreamingResponse:
    """The current recommendations (from each product's latest assessment), what to
    order first first. Cells a spreadsheet would run as a formula are quoted."""

    async def rows() -> AsyncIterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(RECOMMENDATION_COLUMNS)
        async with engine.connect() as connection:
            async for row in stream_recommendations(connection, needed_only=needed_only):
                writer.writerow([_cell(row[column]) for column in RECOMMENDATION_COLUMNS])
                if buffer.tell() > 64 * 1024:
                    yield buffer.getvalue()
                    buffer.seek(0)
                    buffer.truncate()
        yield buffer.getvalue()

    return StreamingResponse(
        rows(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="replenishment.csv"'},
    )

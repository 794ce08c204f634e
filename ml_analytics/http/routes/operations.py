"""Operations: liveness, readiness, metrics, and the AsyncAPI document of the topics."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from faststream.kafka import KafkaBroker
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ml_analytics import SERVICE_NAME, __version__
from ml_analytics.api_models import Health, NotReady, Ready
from ml_analytics.http.dependencies import Broker, Engine
from ml_analytics.storage.database import database_answers

READINESS_TIMEOUT_SECONDS = 3.0

router = APIRouter(tags=["operations"])


@router.get("/health", response_model=Health, tags=["operations"])
@router.head("/health", response_model=Health, tags=["operations"], operation_id="health_head")
async def health() -> Health:
    """Liveness: the process answers."""
    return Health(
        status="healthy",
        service=SERVICE_NAME,
        version=__version__,
        timestamp=datetime.now(UTC),
    )


readiness_responses: dict[int | str, dict[str, Any]] = {
    200: {"model": Ready, "description": "PostgreSQL and the broker answer"},
    503: {"model": NotReady, "description": "A dependency does not answer"},
}


@router.get("/ready", tags=["operations"], responses=readiness_responses)
@router.head(
    "/ready", tags=["operations"], responses=readiness_responses, operation_id="ready_head"
)
async def ready(engine: Engine, broker: Broker, request: Request) -> JSONResponse:
    """200 when PostgreSQL and the broker answer and ingestion makes progress; 503
    naming the part that does not (a partition stuck on a batch that cannot be
    decoded, a batch that keeps failing)."""
    checks = await asyncio.gather(
        _check("postgresql", database_answers(engine)),
        _check("kafka", _broker_answers(broker)),
    )
    failing = {name: problem for name, problem in checks if problem}
    ingestion = getattr(request.app.state, "ingestion", None)
    if ingestion is not None and (stuck := ingestion.problems()):
        failing["ingestion"] = "; ".join(stuck)
    if failing:
        detail = "; ".join(f"{name}: {problem}" for name, problem in failing.items())
        return JSONResponse(
            status_code=503,
            content={
                "status": "unavailable",
                "detail": f"not ready: {detail}",
                "failing": sorted(failing),
            },
        )
    checked = ("postgresql", "kafka", "ingestion") if ingestion else ("postgresql", "kafka")
    return JSONResponse(content={"status": "ready", "checks": dict.fromkeys(checked, "ok")})


@router.get("/metrics", response_class=PlainTextResponse, tags=["operations"])
async def metrics_text() -> PlainTextResponse:
    """Prometheus metrics, text format."""
    # Written in a thread: a large exposition must not hold up the event loop (the
    # other requests, the consumers) while it is built.
    exposition = await asyncio.to_thread(generate_latest)
    return PlainTextResponse(exposition, media_type=CONTENT_TYPE_LATEST)


@router.get("/asyncapi", tags=["operations"])
async def asyncapi_document(request: Request) -> Response:
    """The AsyncAPI document of the topics consumed and published (JSON)."""
    document = request.app.state.asyncapi.to_specification().to_json()
    return Response(document, media_type="application/json")


async def _check(name: str, probe: object) -> tuple[str, str | None]:
    try:
        await asyncio.wait_for(probe, READINESS_TIMEOUT_SECONDS)  # type: ignore[arg-type]
    except TimeoutError:
        return name, f"no answer within {READINESS_TIMEOUT_SECONDS:g} s"
    except Exception as error:
        return name, f"{type(error).__name__}: {str(error)[:200]}"
    return name, None


async def _broker_answers(broker: KafkaBroker) -> None:
    if not await broker.ping(timeout=READINESS_TIMEOUT_SECONDS):
        raise ConnectionError("the broker does not answer")

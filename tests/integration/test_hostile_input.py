"""No single record or request can stall or hurt the service: each case a careless or
hostile producer or client was seen to try, through the real broker and PostgreSQL,
each showing that what comes behind it is still counted and the service stays ready."""

from __future__ import annotations

import asyncio
import base64
import json
import resource
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from ml_analytics.consumers.broker import build_broker
from ml_analytics.devstack import free_port
from ml_analytics.events import DEAD_LETTER_MAX_VALUE_BYTES
from ml_analytics.http.app import create_app
from ml_analytics.settings import Settings
from ml_analytics.storage.database import create_engine
from tests.conftest import make_settings
from tests.helpers import (
    encode,
    publish,
    read_topic,
    running_service,
    serving_http,
    unique,
    wait_until,
)
from tests.helpers import transaction as transaction_event
from tests.services import StackServices

pytestmark = pytest.mark.integration

TODAY = datetime.now(UTC).date()


def transaction(event_id: str, product_id: str, occurred_at: str, units: float = 1) -> bytes:
    return encode(transaction_event(event_id, product_id, occurred_at, units))


def good_events(product: str, count: int) -> list[bytes]:
    return [
        transaction(f"{product}-ok-{i}", product, (TODAY - timedelta(days=i % 20)).isoformat())
        for i in range(count)
    ]


async def counted(engine: AsyncEngine, product: str) -> tuple[int, float]:
    async with engine.connect() as connection:
        row = (
            await connection.execute(
                text(
                    "SELECT count(*), COALESCE(sum(quantity_units), 0) FROM transaction_events "
                    "WHERE product_id = :p"
                ),
                {"p": product},
            )
        ).one()
    return int(row[0]), float(row[1])


@asynccontextmanager
async def service_and_api(
    settings: Settings, engine: AsyncEngine
) -> AsyncIterator[httpx.AsyncClient]:
    """The whole service in this process, and a client of its HTTP app."""
    async with running_service(settings, engine) as app:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield client


async def dead_letters_for(settings: Settings, product: str, expected: int) -> list[dict[str, Any]]:
    records = await read_topic(
        settings,
        settings.dead_letter_topic,
        expected,
        enough=lambda found: sum(r.key == product.encode() for r in found) >= expected,
    )
    return [json.loads(r.value) for r in records if r.key == product.encode()]


async def test_absurd_dates_are_dead_letters_and_the_events_behind_them_count(
    settings: Settings, engine: AsyncEngine
) -> None:
    product = unique("dates")
    key = product.encode()
    absurd = [
        transaction(f"{product}-far", product, "9999-12-31"),  # was stored as infinity
        transaction(f"{product}-one", product, "0001-01-01"),  # was stored as -infinity
        transaction(f"{product}-old", product, "1000-01-01T12:00:00Z"),  # a 372,000-day series
        json.dumps(
            {
                "event_id": f"{product}-s",
                "product_id": product,
                "as_of": "9999-12-31",
                "stock_units": 5,
            }
        ).encode(),
    ]
    good = good_events(product, 30)
    async with service_and_api(settings, engine) as api:
        await publish(settings, settings.transactions_topic, [(key, v) for v in absurd[:3]])
        await publish(settings, settings.stock_levels_topic, [(key, absurd[3])])
        await publish(settings, settings.transactions_topic, [(key, v) for v in good])
        await wait_until(lambda: counted(engine, product), lambda c: c[0] == 30, what="30 events")
        letters = await dead_letters_for(settings, product, 4)
        assert (await api.get("/ready")).status_code == 200
        demand = await api.get(f"/products/{product}/demand")
        assert demand.status_code == 200
        assert len(demand.json()["days"]) == 20  # the good events' days only
    errors = sorted(letter["error"] for letter in letters)
    assert [e.split(":")[0] for e in errors] == [
        "as_of",
        "occurred_at",
        "occurred_at",
        "occurred_at",
    ]
    assert all("is outside the accepted dates 1970-01-01 .. " in e for e in errors)
    async with engine.connect() as connection:
        first, last = (
            await connection.execute(
                text("SELECT first_day, last_day FROM products WHERE product_id = :p"),
                {"p": product},
            )
        ).one()
    assert (first, last) == (TODAY - timedelta(days=19), TODAY)


async def test_values_too_large_for_a_dead_letter_are_cut_and_ingestion_goes_on(
    settings: Settings, engine: AsyncEngine
) -> None:
    product = unique("huge")
    key = product.encode()
    control = b"\x01" * 180_000  # valid UTF-8; escaped as JSON it grew to 1.08 MB
    invalid = b"\xff" * 800_000  # not UTF-8: base64 grew it past the producer's limit
    async with service_and_api(settings, engine) as api:
        await publish(
            settings,
            settings.transactions_topic,
            [(key, control), (key, invalid), *((key, v) for v in good_events(product, 25))],
        )
        await wait_until(lambda: counted(engine, product), lambda c: c[0] == 25, what="25 events")
        letters = await dead_letters_for(settings, product, 2)
        assert (await api.get("/ready")).status_code == 200
    by_length = {letter["value_bytes"]: letter for letter in letters}
    for original in (control, invalid):
        letter = by_length[len(original)]
        assert letter["value_truncated"] is True
        kept = (
            base64.b64decode(letter["value"])
            if letter["value_encoding"] == "base64"
            else letter["value"].encode()
        )
        assert kept == original[:DEAD_LETTER_MAX_VALUE_BYTES]
        assert len(json.dumps(letter).encode()) < 1024 * 1024


async def test_quantities_past_the_bound_are_dead_letters_and_totals_stay_finite(
    settings: Settings, engine: AsyncEngine
) -> None:
    product = unique("inf")
    key = product.encode()
    day = TODAY.isoformat()
    huge = [transaction(f"{product}-big-{i}", product, day, 1e308) for i in range(2)]
    async with service_and_api(settings, engine) as api:
        await publish(
            settings,
            settings.transactions_topic,
            [*((key, v) for v in huge), *((key, v) for v in good_events(product, 10))],
        )
        await wait_until(lambda: counted(engine, product), lambda c: c[0] == 10, what="10 events")
        letters = await dead_letters_for(settings, product, 2)
        demand = (await api.get(f"/products/{product}/demand")).json()
    assert all(
        "quantity_units: Input should be less than or equal to" in x["error"] for x in letters
    )
    assert sum(d["quantity_units"] for d in demand["days"]) == 10.0


@pytest.mark.parametrize("endpoint", ["/forecast/demand", "/predict/stockout"])
async def test_a_history_at_the_end_of_the_calendar_is_a_400_naming_the_field(
    settings: Settings, engine: AsyncEngine, endpoint: str
) -> None:
    last = date(9999, 12, 30)
    data = [{"date": (last - timedelta(days=i)).isoformat(), "quantity": 3} for i in range(60)]
    body: dict[str, Any] = {"product_id": "P", "transaction_data": data}
    if endpoint == "/predict/stockout":
        body["current_stock_units"] = 10
    app = create_app(settings, engine, build_broker(settings), manage_broker=False)
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as api:
            response = await api.post(endpoint, json=body)
    finally:
        app.state.predictions.stop()
    assert response.status_code == 400, response.text
    assert response.json()["detail"].startswith(
        "transaction_data[0].date: 9999-12-30 is outside the accepted dates 1970-01-01 .. "
    )


async def test_a_product_spanning_decades_is_served_and_trained_in_bounded_pieces(
    services: StackServices, database_url: str
) -> None:
    settings = make_settings(services, database_url, min_training_days=30)
    from ml_analytics.consumers.admin import ensure_topics

    await ensure_topics(settings, wait_seconds=20)
    engine = create_engine(settings)
    product = unique("decades")
    key = product.encode()
    events = [transaction(f"{product}-1970", product, "1970-01-01"), *good_events(product, 40)]
    try:
        async with service_and_api(settings, engine) as api:
            await publish(settings, settings.transactions_topic, [(key, v) for v in events])
            await wait_until(lambda: counted(engine, product), lambda c: c[0] == 41, what="events")
            whole = await api.get(f"/products/{product}/demand")
            assert whole.status_code == 400
            assert (
                "at most 3660 are served at once: narrow it with 'from' and 'to'"
                in (whole.json()["detail"])
            )
            recent = await api.get(
                f"/products/{product}/demand", params={"from": str(TODAY - timedelta(days=99))}
            )
            assert recent.status_code == 200 and len(recent.json()["days"]) == 100

            async def trained_days() -> int | None:
                response = await api.get(f"/products/{product}/forecast")
                return response.json()["training_days"] if response.status_code == 200 else None

            days = await wait_until(trained_days, bool, timeout=120, what="a model")
        assert days == settings.training_max_history_days
    finally:
        await engine.dispose()


async def test_database_sessions_cannot_run_a_statement_without_end(
    services: StackServices, database_url: str
) -> None:
    settings = make_settings(services, database_url, database_statement_timeout_seconds=0.5)
    engine = create_engine(settings)
    try:
        async with engine.connect() as connection:
            shown = (await connection.execute(text("SHOW statement_timeout"))).scalar_one()
            assert shown == "500ms"
            started = time.monotonic()
            with pytest.raises(Exception, match="statement timeout"):
                await connection.execute(text("SELECT pg_sleep(30)"))
            assert time.monotonic() - started < 5
        if services.kind == "embedded":  # the embedded server caps temporary files as compose does
            async with engine.connect() as connection:
                limit = (await connection.execute(text("SHOW temp_file_limit"))).scalar_one()
            assert limit == "2GB"
    finally:
        await engine.dispose()


# -- the HTTP server's own bounds (the service's uvicorn configuration, really served) --


def _exchange(port: int, chunks: list[bytes], pause_seconds: float = 0.0) -> bytes:
    """Send `chunks` (pausing between them), then read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        try:
            for chunk in chunks:
                connection.sendall(chunk)
                time.sleep(pause_seconds)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server refused and closed while we were still sending
        answer = b""
        try:
            while data := connection.recv(65536):
                answer += data
        except ConnectionResetError:
            pass
    return answer


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def test_http_server_bounds_heads_slow_clients_and_answers_what_clients_expect(
    services: StackServices, database_url: str
) -> None:
    port = free_port()
    settings = make_settings(
        services,
        database_url,
        ml_port=port,
        http_read_timeout_seconds=1.0,
        http_bearer_token="s3cret",
    )
    engine = create_engine(settings)
    app = create_app(settings, engine, build_broker(settings), manage_broker=False)
    try:
        with serving_http(app, settings) as url:
            # Ten clients each sending an endless head: each is cut off at the limit.
            before = _rss_mb()
            head = b"GET /health HTTP/1.1\r\nhost: x\r\nx-filler: "
            huge = [head, *([b"a" * 1_000_000] * 20)]
            answers = await asyncio.gather(
                *(asyncio.to_thread(_exchange, port, huge) for _ in range(10))
            )
            grown = _rss_mb() - before
            for answer in answers:
                assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
                assert b"the request head is larger than 32768 bytes" in answer
            assert grown < 50, f"memory grew {grown:.0f} MB"

            # A head sent a byte at a time, and a body that never ends, are cut off.
            slow_head = await asyncio.to_thread(
                _exchange, port, [b"GET /hea", b"lth HTTP/1.1\r\n", b"host: x\r\n"], 0.6
            )
            assert slow_head.startswith(b"HTTP/1.1 408 "), slow_head[:200]
            started = time.monotonic()
            slow_body = await asyncio.to_thread(
                _exchange,
                port,
                [
                    b"POST /forecast/demand HTTP/1.1\r\nhost: x\r\nauthorization: Bearer s3cret\r\n"
                    b"content-type: application/json\r\ncontent-length: 1000\r\n\r\n{",
                ],
            )
            assert slow_body.startswith(b"HTTP/1.1 408 "), slow_body[:200]
            assert time.monotonic() - started < 5

            async with httpx.AsyncClient(base_url=url, timeout=10) as client:
                health = await client.head("/health")
                assert health.status_code == 200 and health.content == b""
                ready = await client.head("/ready", headers={"authorization": "Bearer s3cret"})
                assert ready.status_code == 503 and ready.content == b""  # no broker here
                for scheme in ("Bearer", "bearer", "BEARER"):
                    response = await client.get(
                        "/products", headers={"authorization": f"{scheme} s3cret"}
                    )
                    assert response.status_code == 200, (scheme, response.text)
                assert (
                    await client.get("/products", headers={"authorization": "Basic s3cret"})
                ).status_code == 401
                auth = {"authorization": "Bearer s3cret"}
                wrong_type = await client.post(
                    "/forecast/demand",
                    content=b'{"product_id": "P"}',
                    headers={**auth, "content-type": "text/plain"},
                )
                assert wrong_type.status_code == 415
                assert wrong_type.json()["detail"] == (
                    "Content-Type must be application/json (got 'text/plain')"
                )
                empty = await client.post(
                    "/forecast/demand", headers={**auth, "content-type": "application/json"}
                )
                assert empty.status_code == 422
                assert empty.json()["detail"] == "request body is required: a JSON object"
                # Still serving after all of that.
                assert (await client.get("/health")).status_code == 200
    finally:
        app.state.predictions.stop()
        await engine.dispose()

"""`ml-analytics skip`: ask the replica stuck on a partition to move past its bad batch,
and wait for the outcome (see consumers/skip_requests.py for what the replica does)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from ml_analytics.settings import Settings
from ml_analytics.storage.database import create_engine
from ml_analytics.storage.skip_requests import request_skip, skip_request

POLL_SECONDS = 0.5


async def request_and_wait(settings: Settings, args: argparse.Namespace) -> int:
    """0 when skipped, 1 when refused, 3 when still pending after `--wait` seconds."""
    engine = create_engine(settings)
    try:
        async with engine.begin() as connection:
            request_id = await request_skip(
                connection, args.topic, args.partition, args.offset, args.reason
            )
        print(
            f"skip: request {request_id} queued: {args.topic}[{args.partition}] at offset "
            f"{args.offset}; waiting up to {args.wait:g} s for the replica that owns it",
            file=sys.stderr,
        )
        deadline = time.monotonic() + args.wait
        while True:
            async with engine.connect() as connection:
                request = await skip_request(connection, request_id)
            assert request is not None
            if request.status != "pending":
                print(f"skip: {request.status}: {request.outcome}", file=sys.stderr)
                return 0 if request.status == "skipped" else 1
            if time.monotonic() >= deadline:
                print(
                    f"skip: request {request_id} is still pending: no running replica is stuck "
                    f"on {args.topic}[{args.partition}] yet. It stays queued; the replica that "
                    "meets the bad batch carries it out. Check GET /ready for the offset.",
                    file=sys.stderr,
                )
                return 3
            await asyncio.sleep(POLL_SECONDS)
    finally:
        await engine.dispose()

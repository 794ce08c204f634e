"""Pauses between retries, and the background poller."""

from __future__ import annotations


def test_retry_pauses_double_up_to_the_longest() -> None:
    from itertools import islice

    from ml_analytics.lifecycle import RetryPolicy

    pauses = RetryPolicy(first_delay_seconds=0.5, max_delay_seconds=3.0).delays()
    assert list(islice(pauses, 6)) == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


async def test_a_poller_runs_its_step_when_woken_and_on_its_period_until_stopped() -> None:
    import asyncio

    from ml_analytics.lifecycle import Poller

    steps: list[float] = []

    async def step() -> None:
        steps.append(asyncio.get_running_loop().time())

    poller = Poller(step, poll_seconds=0.2, name="test-poller")
    poller.start()
    poller.wake()
    await asyncio.sleep(0.05)
    assert len(steps) == 1  # woken: at once, not after the period
    await asyncio.sleep(0.25)
    assert len(steps) == 2  # the period passed without a wake
    await poller.stop()
    await asyncio.sleep(0.25)
    assert len(steps) == 2

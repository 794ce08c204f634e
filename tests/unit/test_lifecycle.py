"""Pauses between retries, and the one way to run a background loop."""

from __future__ import annotations

import asyncio
from itertools import islice

from ml_analytics import metrics
from ml_analytics.background import BackgroundLoop, RetryPolicy


def test_retry_pauses_double_up_to_the_longest() -> None:
    pauses = RetryPolicy(first_delay_seconds=0.5, max_delay_seconds=3.0, jitter=0.0).delays()
    assert list(islice(pauses, 6)) == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_retry_pauses_are_spread_so_replicas_do_not_retry_in_lockstep() -> None:
    policy = RetryPolicy(first_delay_seconds=1.0, max_delay_seconds=8.0, jitter=0.5)
    firsts = [next(policy.delays()) for _ in range(200)]
    assert all(0.5 <= pause <= 1.0 for pause in firsts)
    assert len({round(pause, 6) for pause in firsts}) > 150
    fourth = [list(islice(policy.delays(), 4))[-1] for _ in range(200)]
    assert all(4.0 <= pause <= 8.0 for pause in fourth)


async def test_a_loop_runs_its_step_when_woken_and_on_its_period_until_stopped() -> None:
    steps: list[float] = []

    async def step() -> None:
        steps.append(asyncio.get_running_loop().time())

    loop = BackgroundLoop("test-period", step, period_seconds=0.2)
    loop.start()
    loop.wake()
    await asyncio.sleep(0.05)
    assert len(steps) == 1  # woken: at once, not after the period
    await asyncio.sleep(0.25)
    assert len(steps) == 2  # the period passed without a wake
    loop.wake_in(0.05)
    await asyncio.sleep(0.1)
    assert len(steps) == 3  # the timed wake
    await loop.stop()
    await asyncio.sleep(0.25)
    assert len(steps) == 3


async def test_a_failing_step_is_counted_and_retried_after_a_pause_not_in_a_tight_loop() -> None:
    calls: list[float] = []

    async def step() -> bool:
        calls.append(asyncio.get_running_loop().time())
        if len(calls) <= 2:
            raise RuntimeError("not yet")
        return len(calls) < 4  # True: more to do, at once

    failed = metrics.BACKGROUND_STEPS.labels("test-failing", "failed")
    before = failed._value.get()
    policy = RetryPolicy(first_delay_seconds=0.1, max_delay_seconds=1.0, jitter=0.0)
    loop = BackgroundLoop("test-failing", step, period_seconds=None, retry=policy)
    loop.start()
    loop.wake()
    for _ in range(5):
        loop.wake()  # wakes do not cut a failure's pause short
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.4)
    await loop.stop()
    assert failed._value.get() - before == 2
    assert len(calls) == 4  # two failures, then a step with more to do, then one without
    assert calls[1] - calls[0] >= 0.09 and calls[2] - calls[1] >= 0.19

"""Pauses between retries."""

from __future__ import annotations


def test_retry_pauses_double_up_to_the_longest() -> None:
    from itertools import islice

    from ml_analytics.lifecycle import RetryPolicy

    pauses = RetryPolicy(first_delay_seconds=0.5, max_delay_seconds=3.0).delays()
    assert list(islice(pauses, 6)) == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]

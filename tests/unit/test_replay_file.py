"""Reading replay files: kind detection and the events rows become."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from ml_analytics.cli.replay import count_rows, detect_kind, read_events


def test_transactions_file_rows_become_transaction_events(tmp_path: Path) -> None:
    path = tmp_path / "tx.csv.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("event_id,product_id,occurred_at,quantity_units\n")
        handle.write("a-1,85123A,2010-12-01T08:26:00+00:00,6\n")
        handle.write("a-2,10080,2010-12-01,2.5\n")
    kind, events = read_events(path)
    assert kind == "transactions"
    assert list(events) == [
        {
            "event_id": "a-1",
            "product_id": "85123A",
            "occurred_at": "2010-12-01T08:26:00+00:00",
            "quantity_units": 6,
        },
        {
            "event_id": "a-2",
            "product_id": "10080",
            "occurred_at": "2010-12-01",
            "quantity_units": 2.5,
        },
    ]
    assert count_rows(path) == 2


def test_stock_levels_file_with_optional_lead_time(tmp_path: Path) -> None:
    path = tmp_path / "stock.csv"
    path.write_text(
        "event_id,product_id,as_of,stock_units,lead_time_days\n"
        "s-1,P,2026-11-01T18:00:00Z,500,10\n"
        "s-2,P,2026-11-02T18:00:00Z,480,\n",
        encoding="utf-8",
    )
    kind, events = read_events(path)
    assert kind == "stock_levels"
    first, second = list(events)
    assert first["lead_time_days"] == 10 and first["stock_units"] == 500
    assert "lead_time_days" not in second


def test_a_cell_that_is_not_a_number_is_published_as_it_is() -> None:
    # The service, not the replay, decides what is valid: it becomes a dead letter there.
    from ml_analytics.cli.replay import row_to_event

    event = row_to_event(
        "transactions",
        {
            "event_id": "x",
            "product_id": "p",
            "occurred_at": "2026-11-01",
            "quantity_units": "three",
        },
    )
    assert event["quantity_units"] == "three"


def test_unknown_columns_are_refused() -> None:
    with pytest.raises(ValueError, match="unrecognised columns"):
        detect_kind(["id", "sku", "qty"])

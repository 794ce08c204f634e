"""The stream's event-time clock. Pure: instants and dates in.

The clock's "now" (the watermark) is the newest `occurred_at` seen, less the allowed
lateness, and never past the wall clock: an event dated in the future (within the
accepted window) is counted on its day, but does not make every other product's
days up to it count as complete. The days before the watermark's business day are
complete: every product's series runs to the last of them, days without
transactions as zero demand, also for a product that has stopped selling. Replaying
history moves the clock as living through it did, whatever the wall clock says.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, tzinfo


def watermark(newest_event_at: datetime, now: datetime, lateness: timedelta) -> datetime:
    """The clock's instant: the newest event time (not past `now`) less `lateness`."""
    return min(newest_event_at, now) - lateness


def complete_through(
    newest_event_at: datetime | None, now: datetime, lateness: timedelta, zone: tzinfo
) -> date | None:
    """The last complete business day, or None before any transaction was seen."""
    if newest_event_at is None:
        return None
    return watermark(newest_event_at, now, lateness).astimezone(zone).date() - timedelta(days=1)

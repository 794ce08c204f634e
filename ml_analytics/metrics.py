"""Prometheus metrics of the service, served at GET /metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS_INGESTED = Counter(
    "ml_analytics_events_ingested_total",
    "Valid events consumed, by topic and outcome (counted, or seen before and ignored).",
    ["topic", "outcome"],
)
DEAD_LETTERS = Counter(
    "ml_analytics_dead_letters_total",
    "Messages sent to the dead-letter topic, by source topic.",
    ["topic"],
)
BATCHES = Counter(
    "ml_analytics_ingest_batches_total",
    "Consumed batches, by result (committed, retried after a database error, failed).",
    ["result"],
)
BATCH_SECONDS = Histogram(
    "ml_analytics_ingest_batch_seconds",
    "Time from receiving a batch to committing its offsets.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
ASSIGNED_PARTITIONS = Gauge(
    "ml_analytics_assigned_partitions",
    "Input partitions this replica consumes now, by topic.",
    ["topic"],
)
CONSUMER_LAG = Gauge(
    "ml_analytics_consumer_lag",
    "Records of an owned input partition not yet committed, as of the last fetch.",
    ["topic", "partition"],
)
CONSUMER_ERRORS = Counter(
    "ml_analytics_consumer_errors",
    "Record batches the consumer could not decode, and database writes that failed for a "
    "reason other than an outage (each try), by topic, partition and error class.",
    ["topic", "partition", "reason"],
)
STREAM_CLOCK = Gauge(
    "ml_analytics_stream_clock_timestamp_seconds",
    "The stream's event-time clock as corroborated by distinct products (Unix time), as this "
    "replica last moved or saw it.",
)
PENDING_ASSESSMENTS = Gauge(
    "ml_analytics_pending_assessments",
    "Products whose stock level or model changed and whose risk is still to be assessed, as "
    "this replica's last sweep found them.",
)
KEY_MISMATCHES = Counter(
    "ml_analytics_key_mismatches",
    "Valid events whose Kafka key is not their product_id (counted for the value's product).",
    ["topic"],
)
FITS = Counter(
    "ml_analytics_model_fits_total",
    "Model fits, by result (started, succeeded, failed).",
    ["result"],
)
FIT_SECONDS = Histogram(
    "ml_analytics_model_fit_seconds",
    "Time one model fit takes in its worker process (holdout fit and final fit).",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
)
GLOBAL_TRAININGS = Counter(
    "ml_analytics_global_model_trainings",
    "Global models trained (with their backtest) by this replica.",
)
RISK_EVENTS = Counter(
    "ml_analytics_risk_events_total",
    "Stockout-risk events published, by risk level.",
    ["risk_level"],
)
PREDICTIONS = Counter(
    "ml_analytics_prediction_requests_total",
    "Forecast and stockout prediction requests, by endpoint and cache outcome (hit, miss, bypass).",
    ["endpoint", "cache"],
)
HTTP_REQUEST_SECONDS = Histogram(
    "ml_analytics_http_request_seconds",
    "HTTP request latency, by method (a standard one, else other), route template "
    "(unmatched when no route took the request) and status code.",
    ["method", "route", "status"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
BACKGROUND_STEPS = Counter(
    "ml_analytics_background_steps",
    "Steps of the background loops (outbox relay, risk sweep, clock watch, ledger "
    "retention, ...), by loop and outcome (succeeded, failed).",
    ["loop", "outcome"],
)
BACKGROUND_STEP_SECONDS = Histogram(
    "ml_analytics_background_step_seconds",
    "Time one successful step of a background loop took, by loop.",
    ["loop"],
    buckets=(0.005, 0.025, 0.1, 0.5, 1, 5, 30, 120, 600),
)

"""Every setting of the service, typed, from the environment or a `.env` file.

One `Settings` object; nothing else reads `os.environ`. `.env.example` documents
each setting with its default.
"""

from __future__ import annotations

from datetime import date, datetime
from functools import cached_property
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ml_analytics.events import MAX_SERVICE_LEVEL, MIN_SERVICE_LEVEL, EventTimeWindow
from ml_analytics.models.forecasters import registry
from ml_analytics.models.forecasters.base import ForecastConfig
from ml_analytics.models.retrain import RetrainPolicy
from ml_analytics.models.risk import RiskThresholds

_PACKAGE_DIR = Path(__file__).resolve().parent


class TopicSpec(BaseModel):
    name: str
    partitions: int = Field(ge=1)


class TopicsFile(BaseModel):
    """The content of `topics.yaml`."""

    group_id: str
    replication_factor: int = Field(default=1, ge=1)
    topics: dict[str, TopicSpec]


def find_topics_file(explicit: Path | None = None) -> Path:
    """The `topics.yaml` to use: the explicit one, else the working directory's,
    else the copy shipped in the package (wheel) or at the source tree's root."""
    candidates = [explicit] if explicit else []
    candidates += [
        Path.cwd() / "topics.yaml",
        _PACKAGE_DIR / "topics.yaml",
        _PACKAGE_DIR.parent / "topics.yaml",
    ]
    for candidate in candidates:
        if candidate is not None and candidate.is_file():
            return candidate
    raise FileNotFoundError(f"topics.yaml not found (looked in {[str(c) for c in candidates]})")


def load_topics_file(path: Path) -> TopicsFile:
    return TopicsFile.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))


def asyncpg_database_url(url: str) -> str:
    """The SQLAlchemy URL with the asyncpg driver for any form users write.

    Accepts `postgresql://`, `postgres://`, `postgresql+<driver>://` and the
    unix-socket form `postgresql://user@/db?host=/path`; translates libpq's
    `sslmode` to asyncpg's `ssl`.
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in {"postgres", "postgresql"} and not scheme.startswith("postgresql+"):
        raise ValueError(f"DATABASE_URL must be a postgresql:// URL, got scheme {scheme!r}")
    query = [
        ("ssl" if key == "sslmode" else key, value)
        for key, value in parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urlunsplit(
        ("postgresql+asyncpg", parts.netloc, parts.path, urlencode(query), parts.fragment)
    )


def redact_url(url: str) -> str:
    """The URL with its password replaced, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class Settings(BaseSettings):
    """The service's settings. Field names are the environment variables (case-insensitive).

    Build a new Settings to change one: `model_copy(update=...)` would keep the
    topic names computed for the original.
    """

    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", case_sensitive=False, env_ignore_empty=True
    )

    # Connections
    database_url: str = "postgresql://ml_analytics:ml_analytics@localhost:5432/ml_analytics"
    database_pool_size: int = Field(default=10, ge=1)
    database_statement_timeout_seconds: float = Field(
        default=60.0,
        gt=0,
        description="Longest a single statement of the service may run (PostgreSQL "
        "statement_timeout); a runaway query is cancelled, not left to fill the disk.",
    )
    kafka_bootstrap_servers: str = "localhost:9092"
    kafka_enable_idempotence: bool = Field(
        default=True,
        description="Idempotent producer; off for the embedded broker (`dev`), which lacks it.",
    )
    kafka_client_id: str = "ml-analytics"
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = Field(
        default=None, description="CA bundle for the brokers' certificates (else the system's)."
    )
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    kafka_ssl_check_hostname: bool = True

    # HTTP
    host: str = "127.0.0.1"
    ml_port: int = Field(default=8000, ge=1, le=65535)
    http_bearer_token: SecretStr | None = Field(
        default=None,
        description="When set, every endpoint but /health requires `Authorization: Bearer`.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"

    # Topics: names default to topics.yaml; these override them for shared clusters.
    topics_file: Path | None = None
    topic_transactions: str | None = None
    topic_stock_levels: str | None = None
    topic_stockout_risk: str | None = None
    topic_dead_letter: str | None = None
    kafka_group_id: str | None = None

    # Ingestion
    business_timezone: str = Field(
        default="UTC", description="IANA zone in which event times are bucketed into days."
    )
    event_time_earliest: date = Field(
        default=date(1970, 1, 1),
        description="Earliest business day an event may fall on; older ones are dead letters.",
    )
    event_time_max_future_days: int = Field(
        default=3,
        ge=0,
        le=366,
        description="Days past today (wall clock) an event may fall on; later ones are dead "
        "letters.",
    )
    clock_allowed_lateness_seconds: float = Field(
        default=0.0,
        ge=0,
        le=7 * 86400,
        description="The stream's clock is the corroborated event time less this; days "
        "before its day are complete (zero demand where nothing was sold).",
    )
    clock_corroboration_products: int = Field(
        default=3,
        ge=1,
        le=1000,
        description="Distinct products whose events must reach a time before the clock moves "
        "to it (all products while there are fewer): fewer products' events, however far "
        "ahead (a device with a wrong clock), are counted on their days but move nothing.",
    )
    clock_evidence_seconds: float = Field(
        default=86400.0,
        ge=1,
        le=366 * 86400,
        description="A product's newest event time stays its evidence for the clock this long "
        "(arrival time) when what arrives after it is older; then it gives way to the newer "
        "arrivals, so an outlier is forgotten once its product sells again.",
    )
    dedup_window_days: int = Field(
        default=35,
        ge=1,
        le=3660,
        description="Days (arrival time) the ledger keeps an event_id: an event delivered "
        "or published again within them is counted once, whatever day it carries.",
    )
    ledger_retention_interval_seconds: float = Field(
        default=600.0,
        gt=0,
        description="Seconds between passes that delete ledger rows older than the window.",
    )
    ingest_batch_max_records: int = Field(
        default=20000, ge=1, description="Most records one consumed batch holds."
    )
    ingest_chunk_size: int = Field(
        default=2500, ge=1, description="Records per database write within a batch."
    )
    ingest_parallel_writes: int = Field(
        default=2, ge=1, le=8, description="Database writes of one batch in flight at once."
    )
    ingest_batch_timeout_ms: int = Field(default=200, ge=1)
    ingest_retry_max_seconds: float = Field(
        default=30.0, gt=0, description="Longest pause between database retries of one batch."
    )
    ingest_max_write_attempts: int = Field(
        default=5,
        ge=1,
        le=100,
        description="Tries of a write that fails for a reason other than the database being "
        "unreachable (a poison row, a constraint): then its partition stalls, loudly, until "
        "an operator skips the record (`ml-analytics skip`). Outages are waited out.",
    )
    shutdown_grace_seconds: float = Field(default=30.0, gt=0)

    # Forecasting (PROPHET_*, MIN_TRAINING_DAYS, WORKER_* are the contract's names)
    training_enabled: bool = Field(
        default=True,
        description="false: this replica ingests and assesses risk but fits no models.",
    )
    forecast_model: str = Field(
        default=registry.DEFAULT,
        description="The consumers' forecaster, by its name in the registry "
        "(models/forecasters/registry.py): the combination of the global model and local "
        "members chosen by backtest (the default), or Prophet per product.",
    )
    global_model_retrain_days: int = Field(
        default=7, ge=1, description="Clock days between trainings of the global model."
    )
    global_model_history_days: int = Field(
        default=800, ge=120, le=3660, description="Latest days the global model learns from."
    )
    global_model_threads: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Threads that train the global model. More than the cores ingestion and "
        "the fits leave free make it slower, not faster.",
    )
    global_model_timeout_seconds: float = Field(
        default=1800.0, gt=0, description="Longest one training of the global model may take."
    )
    prophet_seasonality_mode: Literal["additive", "multiplicative"] = "additive"
    prophet_interval_width: float = Field(default=0.95, gt=0, lt=1)
    min_training_days: int = Field(default=30, ge=14)
    training_max_history_days: int = Field(
        default=1096,
        ge=90,
        le=3660,
        description="Latest days of a product's history a model is fitted on (bounds each fit).",
    )
    demand_censoring: bool = Field(
        default=True,
        description="Learn demand, not sales: days that ended with the shelf empty (from "
        "stock levels) are lower bounds, estimated as demand (models/censoring.py); false "
        "learns from sales as they are (to compare).",
    )
    forecast_horizon_days: int = Field(default=90, ge=1, le=365)
    forecast_sample_paths: int = Field(
        default=200, ge=20, le=2000, description="Predictive sample paths kept per model."
    )
    worker_count: int = Field(default=2, ge=1, description="Processes that fit models.")
    worker_timeout: float = Field(default=300.0, gt=0, description="Seconds one fit may take.")
    worker_max_fits: int = Field(
        default=2000, ge=1, description="Fits after which a worker process is replaced."
    )
    retrain_min_new_days: int = Field(default=7, ge=1)
    retrain_min_new_units_ratio: float = Field(default=0.25, gt=0)
    retrain_cooldown_days: int = Field(default=1, ge=0)
    retrain_failure_backoff_seconds: float = Field(default=60.0, ge=0)

    # HTTP API: forecasts and stockout predictions on request
    prediction_cache_ttl: int = Field(
        default=86400, ge=0, description="Seconds a cached prediction is served (0: no cache)."
    )
    http_fit_workers: int = Field(
        default=2, ge=1, description="Processes that fit models for HTTP requests."
    )
    http_max_fits_in_flight: int = Field(
        default=4, ge=1, description="HTTP fits running or waiting; past it the API answers 503."
    )
    http_max_body_bytes: int = Field(default=2_000_000, ge=1024)
    http_max_header_bytes: int = Field(
        default=32 * 1024, ge=1024, le=1024 * 1024, description="Largest request head (431)."
    )
    http_read_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Seconds a request's head and body may take to arrive (408).",
    )
    http_max_connections: int = Field(
        default=100, ge=1, description="Open HTTP connections at most; past it the API answers 503."
    )
    http_max_transaction_points: int = Field(default=10_000, ge=1)
    http_max_history_days: int = Field(
        default=3660, ge=30, description="Longest span of days a request's history may cover."
    )

    # Risk
    default_risk_window_days: int = Field(default=14, ge=0, le=365)
    risk_high_probability: float = Field(default=0.6, gt=0, le=1)
    risk_medium_probability: float = Field(default=0.3, gt=0, le=1)
    # Replenishment: a periodic review every REVIEW_PERIOD_DAYS; the order-up-to level
    # is the TARGET_SERVICE_LEVEL quantile of demand over lead time + review period.
    target_service_level: float = Field(default=0.95, ge=MIN_SERVICE_LEVEL, le=MAX_SERVICE_LEVEL)
    review_period_days: int = Field(default=7, ge=1, le=91)
    risk_sweep_interval_seconds: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Seconds between sweeps that assess every product still marked for "
        "assessment (a stock level or a model whose assessment failed or was cut short).",
    )
    risk_outbox_retention_days: int = Field(
        default=7, ge=0, description="Days a published risk event stays in the outbox table."
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level_in_any_case(cls, value: object) -> object:
        # The original service's .env and compose file write `info`.
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("forecast_model")
    @classmethod
    def _known_forecaster(cls, value: str) -> str:
        if value not in registry.names():
            known = ", ".join(registry.names())
            raise ValueError(f"FORECAST_MODEL={value!r} is not a forecaster: one of {known}")
        return value

    @field_validator("business_timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as error:
            raise ValueError(f"unknown time zone {value!r}") from error
        return value

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: str) -> str:
        asyncpg_database_url(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        _ = self.topics
        if self.kafka_security_protocol.startswith("SASL_") and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                f"KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"
            )
        if self.risk_medium_probability > self.risk_high_probability:
            raise ValueError("RISK_MEDIUM_PROBABILITY must not exceed RISK_HIGH_PROBABILITY")
        return self

    @cached_property
    def topics(self) -> TopicsFile:
        """topics.yaml with the environment's overrides (TOPIC_<ROLE>) applied."""
        spec = load_topics_file(find_topics_file(self.topics_file))
        for role, topic in list(spec.topics.items()):
            override = getattr(self, f"topic_{role}", None)
            if override:
                spec.topics[role] = topic.model_copy(update={"name": override})
        if self.kafka_group_id:
            spec.group_id = self.kafka_group_id
        return spec

    def topic_name(self, role: str) -> str:
        """The name of the topic with this role in topics.yaml (e.g. "transactions")."""
        return self.topics.topics[role].name

    @property
    def transactions_topic(self) -> str:
        return self.topic_name("transactions")

    @property
    def stock_levels_topic(self) -> str:
        return self.topic_name("stock_levels")

    @property
    def stockout_risk_topic(self) -> str:
        return self.topic_name("stockout_risk")

    @property
    def dead_letter_topic(self) -> str:
        return self.topic_name("dead_letter")

    @property
    def group_id(self) -> str:
        return self.topics.group_id

    def forecast_config(self, horizon_days: int | None = None) -> ForecastConfig:
        """The forecasters' configuration (FORECAST_HORIZON_DAYS unless given)."""
        return ForecastConfig(
            horizon_days=horizon_days or self.forecast_horizon_days,
            seasonality_mode=self.prophet_seasonality_mode,
            interval_width=self.prophet_interval_width,
            min_training_days=self.min_training_days,
            sample_paths=self.forecast_sample_paths,
            history_days=self.training_max_history_days,
        )

    def forecaster(self) -> registry.Forecaster:
        """The consumers' forecaster (FORECAST_MODEL) from the registry."""
        return registry.forecaster(self.forecast_model)

    def retrain_policy(self) -> RetrainPolicy:
        return RetrainPolicy(
            min_training_days=self.min_training_days,
            min_new_days=self.retrain_min_new_days,
            min_new_units_ratio=self.retrain_min_new_units_ratio,
            cooldown_days=self.retrain_cooldown_days,
        )

    def risk_thresholds(self) -> RiskThresholds:
        return RiskThresholds(high=self.risk_high_probability, medium=self.risk_medium_probability)

    def event_time_window(self, now: datetime) -> EventTimeWindow:
        """The business days an event may fall on, as of `now`."""
        return EventTimeWindow.around(
            now.astimezone(self.timezone), self.event_time_earliest, self.event_time_max_future_days
        )

    @property
    def timezone(self) -> ZoneInfo:
        return ZoneInfo(self.business_timezone)

    @property
    def sqlalchemy_url(self) -> str:
        return asyncpg_database_url(self.database_url)

"""How the trainer reports a product whose fit failed: a failure a history or the pool
may cause is a warning, anything else a fault logged with its traceback."""

from __future__ import annotations

import logging
from concurrent.futures.process import BrokenProcessPool

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from ml_analytics.models.forecasters.base import InsufficientData, ModelFailure
from ml_analytics.services.training import ModelTrainer
from ml_analytics.settings import Settings
from ml_analytics.workers.pool import FitTimeout

TRAINER_LOG = "ml_analytics.services.training.trainer"


def raised(error: Exception) -> Exception:
    """`error` as it arrives after being raised: with its traceback."""
    try:
        raise error
    except Exception as caught:
        return caught


@pytest.mark.parametrize(
    "failure",
    [
        ModelFailure("daily demand must be finite and non-negative"),
        InsufficientData("Insufficient transaction data. Need at least 30 days, got 15"),
        FitTimeout("the fit took longer than 60 s"),
        BrokenProcessPool("a worker died"),
    ],
    ids=lambda failure: type(failure).__name__,
)
async def test_an_expected_failure_is_a_warning_and_a_fault_an_error_with_its_traceback(
    caplog: pytest.LogCaptureFixture, failure: Exception
) -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    engine = create_async_engine(settings.sqlalchemy_url)  # never connects here
    trainer = ModelTrainer(engine, settings)
    try:
        with caplog.at_level(logging.WARNING, logger=TRAINER_LOG):
            trainer._failed("P-expected", raised(failure))
            trainer._failed("P-fault", raised(ValueError("a fault of ours")))
    finally:
        await trainer.stop()
        await engine.dispose()
    expected, fault = (record for record in caplog.records if record.name == TRAINER_LOG)
    assert (expected.levelno, expected.getMessage(), expected.exc_info) == (
        logging.WARNING,
        "model fit failed; will try again",
        None,
    )
    assert expected.product_id == "P-expected"  # type: ignore[attr-defined]
    assert (fault.levelno, fault.getMessage()) == (logging.ERROR, "training a product failed")
    assert fault.product_id == "P-fault"  # type: ignore[attr-defined]
    assert fault.exc_info is not None and fault.exc_info[1].__traceback__ is not None
    assert "ValueError: a fault of ours" in caplog.text
    assert "in raised" in caplog.text  # the traceback is in the log

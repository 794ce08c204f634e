"""The conditional recalibration learns where actual demand falls for each kind of
product, and changes nothing when it falls evenly."""

from __future__ import annotations

import dataclasses
from datetime import date, timedelta

import numpy as np

from ml_analytics.models.backtest import BacktestCase
from ml_analytics.models.calibration import (
    BINS,
    FEATURES,
    POSTED_FEATURES,
    ConditionalCalibration,
    calibration_from_stored,
    fit_calibration,
    posted_calibration_from_stored,
    posted_features,
    product_features,
)
from ml_analytics.services.global_model import described_cases


def features(rng: np.random.Generator, n: int) -> np.ndarray:
    ratio = rng.lognormal(0, 0.6, n)  # forecast / recent level
    return np.column_stack(
        [
            ratio,
            ratio,
            ratio,
            rng.random(n),
            rng.gamma(2, 2, n),
            rng.random(n),
            rng.integers(0, 30, n),
            rng.random(n),
            rng.random(n),
        ]
    )


def test_a_forecast_far_above_its_level_is_learned_to_overshoot() -> None:
    rng = np.random.default_rng(3)
    x = features(rng, 3000)
    # Above its level: actual demand lands low in the paths; below: high.
    above = x[:, 0] > 1
    pits = np.where(above, rng.beta(1, 3, len(x)), rng.beta(3, 1, len(x)))
    model = fit_calibration(x, pits)
    assert model is not None
    high, low = x[x[:, 0] > 2][:1], x[x[:, 0] < 0.5][:1]
    lower_half = slice(0, BINS // 2)
    assert model.density(high)[0, lower_half].mean() > 1.3
    assert model.density(low)[0, lower_half].mean() < 0.7
    for row in model.density(x[:50]):
        assert np.isclose(row.mean(), 1.0)


def test_evenly_spread_actuals_leave_the_paths_as_they_are() -> None:
    rng = np.random.default_rng(4)
    x = features(rng, 6000)
    model = fit_calibration(x, rng.random(len(x)))
    assert model is not None
    assert np.abs(model.density(x[:200]) - 1).max() < 0.25


def test_too_few_cases_give_no_model_and_a_stored_model_round_trips() -> None:
    rng = np.random.default_rng(5)
    assert fit_calibration(features(rng, 50), rng.random(50)) is None
    x = features(rng, 500)
    model = fit_calibration(x, rng.random(500))
    assert model is not None
    again = ConditionalCalibration.from_dict(model.as_dict())
    assert np.allclose(again.density(x[:10]), model.density(x[:10]))


def test_product_features() -> None:
    history = np.zeros(400)
    history[-28:] = 1.0  # one unit a day for four weeks, nothing before
    yhat = np.full(14, 2.0)
    f = product_features(history, yhat)
    assert f[0] == 2.0  # twice its 28-day mean
    assert np.isclose(f[1], 2.0 * 91 / 28)
    assert np.isclose(f[3], 28 / 91)  # sale-day share over 91 days
    assert f[4] == 28.0  # 28 units ahead in orders of one unit
    assert f[5] == 0.0 and f[6] == 0.0
    assert np.isclose(f[7], 1 / 28)  # no day bigger than another
    assert f[8] == 1.0  # a sale every one of the last 14 days
    assert len(f) == len(FEATURES)
    assert np.isnan(product_features(np.zeros(60), yhat)[0])


def test_one_wholesale_order_in_the_month_is_a_feature_of_its_own() -> None:
    """A 28-day mean made by one big order and one made by steady sales are the same
    mean; where actual demand falls among the paths differs, so the features tell them
    apart: the biggest day's share of the month and the recent sale days."""
    steady = np.zeros(400)
    steady[-28:] = 10.0
    lumpy = np.zeros(400)
    lumpy[-20] = 280.0  # the same 28-day total, in one order three weeks ago
    yhat = np.full(14, 10.0)
    f_steady, f_lumpy = product_features(steady, yhat), product_features(lumpy, yhat)
    assert f_steady[0] == f_lumpy[0]  # same forecast / 28-day mean
    assert np.isclose(f_steady[7], 1 / 28) and f_lumpy[7] == 1.0
    assert f_steady[8] == 1.0 and f_lumpy[8] == 0.0
    assert product_features(np.zeros(0), yhat)[7] == 1.0  # no history: no sale, no error


def test_a_calibration_stored_with_other_features_is_not_applied() -> None:
    """After an upgrade that changed the features, the stored model's slopes do not fit
    them: raw paths until the next training, not a shape error on every forecast."""
    rng = np.random.default_rng(6)
    model = fit_calibration(features(rng, 500), rng.random(500))
    assert model is not None
    stored = model.as_dict()
    assert isinstance(calibration_from_stored(stored), ConditionalCalibration)
    older = {**stored, "slopes": stored["slopes"][:-2], "center": stored["center"][:-2]}
    assert calibration_from_stored(older) is None
    assert calibration_from_stored([1.0] * 10) == (1.0,) * 10


def case(origin: date, described: bool = True, cut: bool = False) -> BacktestCase:
    """A stored backtest case with the product's features (`described`) and those of
    its cut history (`cut`), or none."""
    return BacktestCase(
        product_id="p",
        member_totals={},
        forecast_total=1.0,
        actual_total=1.0,
        actual_14=1.0,
        pit_14=0.5,
        rmse=0.0,
        mape=None,
        features=(1.0,) * len(FEATURES) if described else None,
        origin=origin,
        posted_pit_14=0.5 if cut else None,
        posted_features=(1.0,) * len(POSTED_FEATURES) if cut else None,
    )


def test_the_calibration_waits_for_features_at_four_origins_not_just_enough_cases() -> None:
    """After an upgrade the stored backtests carry no features: one new origin of a
    large catalogue has cases enough, but one week decides nothing."""

    weeks = [date(2026, 1, 5) + timedelta(days=7 * k) for k in range(8)]
    upgraded = [case(week, described=week == weeks[-1]) for week in weeks for _ in range(500)]
    assert described_cases(upgraded) == []
    four = [case(week, described=week >= weeks[4]) for week in weeks for _ in range(60)]
    assert len(described_cases(four)) == 240
    too_few = [case(week, described=True) for week in weeks for _ in range(24)]
    assert described_cases(too_few) == []  # 192 cases at eight origins
    # Stored by a version with fewer features: not learned from beside today's.
    older = [
        dataclasses.replace(c, features=(1.0,) * (len(FEATURES) - 2)) if c.origin < weeks[6] else c
        for c in four
    ]
    assert described_cases(older) == []  # today's features at two origins only


def test_posted_histories_have_a_model_of_their_own_that_reads_their_length() -> None:
    """The model learned from cut histories reads the product's features and how many
    days it was seen for; it is stored inside the stored products' model and comes
    back as itself, and a stored model without one (or of other features) gives none."""
    rng = np.random.default_rng(8)
    x = features(rng, 2000)
    days = rng.integers(30, 365, len(x)).astype(float)
    # Short histories: actual demand lands high in the paths; long ones: anywhere.
    pits = np.where(days < 120, rng.beta(3, 1, len(x)), rng.random(len(x)))
    posted = fit_calibration(np.column_stack([x, days]), pits, posted=True)
    stored = fit_calibration(x, rng.random(len(x)))
    assert posted is not None and posted.posted and stored is not None
    history, yhat = np.ones(60), np.ones(14)
    assert np.array_equal(posted.features(history, yhat), posted_features(history, yhat))
    assert posted.features(np.ones(500), yhat)[-1] == 365  # at most a year
    assert len(posted.features(history, yhat)) == len(POSTED_FEATURES)
    assert np.array_equal(stored.features(history, yhat), product_features(history, yhat), True)
    short, long = (posted.density(posted.features(np.ones(n), yhat))[0] for n in (40, 360))
    upper = slice(BINS // 2, BINS)
    assert short[upper].mean() > long[upper].mean() + 0.2
    both = {**stored.as_dict(), "posted": posted.as_dict()}
    again = posted_calibration_from_stored(both)
    assert again == posted
    assert calibration_from_stored(both) == stored
    assert posted_calibration_from_stored(stored.as_dict()) is None
    assert posted_calibration_from_stored([1.0] * 10) is None
    older = {**both, "posted": {**posted.as_dict(), "slopes": posted.slopes[:-1]}}
    assert posted_calibration_from_stored(older) is None


def test_the_posted_model_learns_only_from_cases_with_cut_histories() -> None:
    """Backtests stored before cut histories were kept carry none: the model for posted
    histories waits for four origins of them, as the stored products' model does."""
    weeks = [date(2026, 1, 5) + timedelta(days=7 * k) for k in range(8)]
    cases = [case(week, cut=week >= weeks[4]) for week in weeks for _ in range(60)]
    assert len(described_cases(cases)) == 480
    assert len(described_cases(cases, posted=True)) == 240
    stored_before = [case(week, cut=week == weeks[-1]) for week in weeks for _ in range(60)]
    assert described_cases(stored_before, posted=True) == []  # one origin decides nothing

"""The default forecaster's parts on data with a known answer: the panel and its weekday
profile, the global model (no look-ahead), the combination and its choice by backtest,
the sale-day paths and their recalibration."""

from __future__ import annotations

import dataclasses
from datetime import date

import numpy as np
import pytest

from ml_analytics.models import distribution
from ml_analytics.models.backtest import train_with_backtest
from ml_analytics.models.calibration import BINS, FEATURES, POSTED_FEATURES, ConditionalCalibration
from ml_analytics.models.distribution import pit_density, sample_paths
from ml_analytics.models.forecasters.base import ForecastConfig
from ml_analytics.models.forecasters.combination import (
    DEFAULT,
    LOCAL_ONLY,
    Combination,
    choose_combination,
    forecast_products,
)
from ml_analytics.models.forecasters.global_gbm import build_features, predict_weekly, train_global
from ml_analytics.models.forecasters.panel import Panel, cut_histories, weekday_profile

START = date(2024, 1, 1)  # a Monday


def synthetic_panel(products: int = 60, days: int = 420, seed: int = 1) -> Panel:
    """Products at levels from 0.5 to 30 a day, Poisson, closed on Sundays."""
    rng = np.random.default_rng(seed)
    levels = np.geomspace(0.5, 30, products)
    Y = rng.poisson(np.outer(levels, np.ones(days))).astype(float)
    Y[:, 6::7] = 0.0  # Sundays
    Y[: products // 4, :60] = np.nan  # a quarter start selling two months later
    return Panel([f"P{i:03d}" for i in range(products)], START, Y, np.nansum(Y, 0))


def test_a_day_the_shop_is_closed_stays_closed_in_the_profile() -> None:
    panel = synthetic_panel()
    profile = weekday_profile(panel, 364, np.arange(10))  # day 364 is a Monday
    assert profile.shape == (10, 7)
    assert np.allclose(profile.mean(1), 1.0)
    assert np.all(profile[:, 6] < 0.05)  # Sundays, offset 6 from a Monday


def test_features_use_nothing_from_the_origin_on() -> None:
    panel = synthetic_panel()
    t = 300
    before, *_ = build_features(panel, t, np.arange(5))
    changed = panel.Y.copy()
    changed[:, t:] = 1000.0
    after, *_ = build_features(
        Panel(panel.items, START, changed, np.nansum(changed, 0)), t, np.arange(5)
    )
    assert before.equals(after)


def test_the_global_model_learns_each_product_s_level() -> None:
    panel = synthetic_panel()
    t = 400
    model = train_global(panel, t, rounds=100)
    rows = np.arange(panel.Y.shape[0])
    weekly = predict_weekly(model, panel, t, rows)
    truth = np.geomspace(0.5, 30, len(rows)) * 6 / 7  # closed one day a week
    ratio = weekly[:, :4].mean(1) / truth
    assert np.median(ratio) == pytest.approx(1.0, abs=0.15)
    assert np.all(weekly >= 0)


def test_forecasts_have_the_level_the_weekday_shape_and_a_holdout() -> None:
    panel = synthetic_panel()
    t = 400
    config = ForecastConfig(horizon_days=28, sample_paths=100)
    model = train_global(panel, t, rounds=100)
    forecasts = forecast_products(panel, t, [59, 10], DEFAULT, model, config)
    busy, quiet = forecasts
    assert busy.model_name == "combination:gbm+ma28+adida"
    assert busy.weights == pytest.approx({"gbm": 1 / 3, "ma28": 1 / 3, "adida": 1 / 3}, abs=1e-5)
    assert busy.start == panel.day(t) and busy.yhat.shape == (28,)
    assert busy.yhat.sum() == pytest.approx(30 * 24, rel=0.15)  # 30 a day, 24 open days
    assert np.all(busy.yhat[(np.arange(28) + t) % 7 == 6] < 1)  # Sundays
    assert busy.sample_paths.shape == (100, 28) and np.all(busy.sample_paths >= 0)
    assert np.all(busy.yhat_lower <= busy.yhat) and np.all(busy.yhat <= busy.yhat_upper)
    assert busy.metrics.holdout_days == 28 and busy.metrics.skill_vs_moving_average is not None
    assert quiet.yhat.sum() < busy.yhat.sum() / 3


def test_without_a_global_model_the_local_members_forecast_alone() -> None:
    panel = synthetic_panel()
    (forecast,) = forecast_products(
        panel, 400, [30], DEFAULT, None, ForecastConfig(horizon_days=14)
    )
    assert forecast.model_name == "combination:ma28+adida"
    assert DEFAULT.for_product(False) == LOCAL_ONLY


def test_a_candidate_replaces_the_default_only_when_clearly_better() -> None:
    rng = np.random.default_rng(2)
    actual = rng.gamma(2, 50, 400)
    good, noisy = actual * rng.normal(1, 0.05, 400), actual * rng.normal(1, 0.6, 400)
    chosen, report = choose_combination({"gbm": good, "ma28": noisy, "adida": noisy}, actual)
    assert chosen == Combination.equal("gbm") and report["cases"] == 400
    chosen, _ = choose_combination({"gbm": noisy, "ma28": noisy, "adida": noisy}, actual)
    assert chosen == DEFAULT
    chosen, report = choose_combination(
        {"gbm": good[:50], "ma28": good[:50], "adida": good[:50]}, actual[:50]
    )
    assert chosen == DEFAULT and "fewer than 200" in report["why"]


def test_sale_day_paths_keep_the_forecast_as_their_mean_and_lumps_whole() -> None:
    history = np.zeros(365)
    history[::10] = 24.0  # orders of 24 units
    yhat = np.full(56, 2.4)
    paths = sample_paths(yhat, history, None, paths=4000, seed=3)
    assert paths.mean() == pytest.approx(2.4, rel=0.05)
    # A day sells one whole order or none: within a path every order is the same
    # lump (24 units, times the path's level factor), never a fraction of one.
    for path in paths:
        sold = path[path > 0]
        assert sold.size == 0 or np.ptp(sold) < 1e-9
    lumps = np.array([path[path > 0][0] for path in paths if (path > 0).any()])
    assert np.mean(lumps) == pytest.approx(24.0, rel=0.05)


def test_a_level_factor_per_path_widens_its_totals_and_keeps_the_mean(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A daily seller's 14-day totals vary little when its days are independent; a
    level factor per path (distribution.LEVEL_SD) spreads them as a moving level
    would, around the same mean; off (0), the days alone."""
    history = np.random.default_rng(4).poisson(10, 365).astype(float)
    yhat = np.full(14, 10.0)
    monkeypatch.setattr(distribution, "LEVEL_SD", 0.0)
    plain = sample_paths(yhat, history, None, paths=4000, seed=5).sum(1)
    monkeypatch.setattr(distribution, "LEVEL_SD", 0.3)
    levelled = sample_paths(yhat, history, None, paths=4000, seed=5).sum(1)
    assert levelled.mean() == pytest.approx(plain.mean(), rel=0.03)
    assert levelled.std() > 2.5 * plain.std()
    assert 0.25 < levelled.std() / levelled.mean() < 0.35  # the factor's own spread, ~0.3


def test_recalibration_moves_the_paths_towards_where_outcomes_fell() -> None:
    history = np.random.default_rng(4).poisson(5, 365).astype(float)
    yhat = np.full(28, 5.0)
    assert np.allclose(pit_density(np.random.default_rng(5).random(20000)), 1.0, atol=0.1)
    high = pit_density(np.random.default_rng(6).beta(4, 1, 2000))  # outcomes high in the paths
    raw = sample_paths(yhat, history, None, paths=400, seed=7)[:, :14].sum(1)
    moved = sample_paths(yhat, history, high, paths=400, seed=7)[:, :14].sum(1)
    assert np.median(moved) > np.median(raw)


def test_a_global_training_backtests_four_weeks_back_without_look_ahead() -> None:
    panel = synthetic_panel(days=300)
    training = train_with_backtest(panel, panel.days)
    assert training.model is not None and training.backtest_origin_index == panel.days - 28
    assert len(training.cases) == panel.Y.shape[0]
    case = training.cases[-1]
    assert case.actual_total == pytest.approx(float(np.nan_to_num(panel.Y[-1, -28:]).sum()))
    assert set(case.member_totals) == {"gbm", "ma28", "adida"}
    assert all(c.pit_14 is None or 0 <= c.pit_14 <= 1 for c in training.cases)


def test_a_backtest_also_forecasts_each_product_from_a_cut_history_as_if_posted() -> None:
    """Each product is forecast again from only its last 30 to 364 days (its whole
    history when shorter), for the recalibration of posted histories."""
    panel = synthetic_panel(days=300)
    training = train_with_backtest(panel, panel.days)
    h = panel.days - 28
    lengths = []
    for row, case in enumerate(training.cases):
        assert case.posted_features is not None
        assert len(case.posted_features) == len(POSTED_FEATURES)
        assert case.posted_pit_14 is None or 0 <= case.posted_pit_14 <= 1
        length = int(case.posted_features[-1])
        history = panel.history(row, h)
        assert 30 <= length <= min(364, len(history))
        # The cut history is the product's last `length` days: its share of sale days
        # over 91 days is that of those days.
        kept = history[-length:][-91:]
        assert case.posted_features[3] == pytest.approx(float((kept > 0).mean()))
        lengths.append(length)
    assert len(set(lengths)) > 10  # drawn per product, not one length for all
    again = train_with_backtest(panel, panel.days)
    assert [c.posted_features for c in again.cases] == [c.posted_features for c in training.cases]


def test_a_cut_history_keeps_the_last_days_on_the_same_calendar() -> None:
    panel = synthetic_panel(days=200)
    cut = cut_histories(panel, 150, np.array([5, 40]), np.array([30, 200]))
    assert cut.items == [panel.items[5], panel.items[40]] and cut.days == 150
    assert cut.first[0] == 120 and np.array_equal(cut.Y[0, 120:], panel.Y[5, 120:150])
    assert cut.first[1] == panel.first[40]  # asked for more than it has: all of it
    assert np.array_equal(cut.shop, panel.shop[:150])


def test_a_conditional_calibration_gives_each_product_its_own_density() -> None:
    panel = synthetic_panel()
    t, rows = 400, [59, 10]
    config = ForecastConfig(horizon_days=28, sample_paths=100)
    training = train_with_backtest(panel, t)
    cases = [c for c in training.cases if c.pit_14 is not None and c.features is not None]
    assert cases and all(len(c.features or ()) == len(FEATURES) for c in cases)
    # Learned nothing (flat cut points, no slopes): the paths of a flat density.
    flat = np.log(np.arange(1, BINS) / (BINS - np.arange(1, BINS)))
    nothing = ConditionalCalibration(
        tuple(flat),
        (0.0,) * (len(FEATURES) + 1),
        (0.0,) * (len(FEATURES) + 1),
        (1.0,) * (len(FEATURES) + 1),
    )
    plain = forecast_products(panel, t, rows, DEFAULT, training.model, config, np.ones(BINS))
    learned = forecast_products(panel, t, rows, DEFAULT, training.model, config, nothing)
    for a, b in zip(plain, learned, strict=True):
        assert np.allclose(a.sample_paths, b.sample_paths)
    # A slope on the first feature moves a product's paths up or down by its features.
    tilted = dataclasses.replace(nothing, slopes=(3.0,) + (0.0,) * len(FEATURES))
    moved = forecast_products(panel, t, rows, DEFAULT, training.model, config, tilted)
    assert any(
        not np.allclose(a.sample_paths, b.sample_paths) for a, b in zip(plain, moved, strict=True)
    )

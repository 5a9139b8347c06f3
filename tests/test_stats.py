"""Estimates, intervals and verdicts on known data (rechar.stats), and the comparisons built on them."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from rechar import stats
from rechar.analysis.comparison import fastest_stacks, stack_comparison

T_975_DF2 = 4.302652729911275  # Student's t, two-sided 95%, 2 degrees of freedom (tables)


def test_rounds_estimate_is_the_geometric_mean_with_a_t_interval():
    e = stats.from_rounds([90.0, 100.0, 110.0])
    logs = np.log([90.0, 100.0, 110.0])
    se = logs.std(ddof=1) / math.sqrt(3)
    assert e.value == pytest.approx(math.exp(logs.mean()))
    assert e.low == pytest.approx(math.exp(logs.mean() - T_975_DF2 * se))
    assert e.high == pytest.approx(math.exp(logs.mean() + T_975_DF2 * se))
    assert e.method == "rounds" and e.df == 2
    same = stats.from_rounds([50.0, 50.0])
    assert same.low == same.value == same.high == pytest.approx(50.0)
    with pytest.raises(ValueError):
        stats.from_rounds([1.0])


def test_iterations_estimate_is_the_median_with_its_order_statistic_interval():
    e = stats.from_iterations(np.arange(1, 102))  # 1..101
    assert e.value == 51 and e.method == "iterations"
    # ranks n/2 -+ 1.96 sqrt(n)/2 = 50.5 -+ 9.85 -> the 41st and 62nd smallest values
    assert (e.low, e.high) == (41, 62)


def test_ratio_interval_and_verdict():
    a, b = stats.from_rounds([100.0, 102.0, 98.0]), stats.from_rounds([200.0, 204.0, 196.0])
    r = stats.ratio(a, b)
    assert r.value == pytest.approx(0.5) and r.low < 0.5 < r.high < 1
    assert r.significant and r.verdict() == "2.00x faster" and stats.ratio(b, a).verdict() == "2.00x slower"
    same = stats.ratio(a, stats.from_rounds([101.0, 99.0, 100.0]))
    assert not same.significant and same.verdict() == "no significant difference"
    # Welch: log difference +- t(df) * sqrt(se_a^2 + se_b^2)
    se = math.sqrt(a.log_se ** 2 + b.log_se ** 2)
    df = se ** 4 / (a.log_se ** 4 / a.df + b.log_se ** 4 / b.df)
    assert r.high == pytest.approx(math.exp(a.log - b.log + stats.t_quantile(df) * se))


@pytest.mark.parametrize("spread", [0.01, 0.05, 0.2, 0.5])
def test_no_significant_difference_exactly_when_the_interval_contains_one(spread):
    rng = np.random.default_rng(3)
    base = 100 * np.exp(rng.normal(0, spread, 4))
    for factor in np.linspace(0.6, 1.6, 41):
        r = stats.ratio(stats.from_rounds(base * factor * np.exp(rng.normal(0, spread, 4))), stats.from_rounds(base))
        assert (r.verdict() == "no significant difference") == (r.low <= 1 <= r.high)


def _point(backend, p50, low, high, rounds=3):
    return {"host": "h", "model": "m", "device": "cpu", "batch": 64, "backend": backend, "status": "ok",
            "p50_us": p50, "p50_ci_low_us": low, "p50_ci_high_us": high, "ci_method": "rounds",
            "timed_rounds": rounds}


def test_stack_comparison_says_when_a_difference_is_noise():
    points = pd.DataFrame([_point("torch", 100.0, 95.0, 105.0), _point("fast", 50.0, 48.0, 52.0),
                           _point("same", 102.0, 90.0, 115.0)])
    table = stack_comparison(points, "torch").set_index("backend")
    assert table.loc["fast", "verdict"] == "2.00x faster" and table.loc["fast", "ratio_high"] < 1
    assert table.loc["same", "verdict"] == "no significant difference"
    assert table.loc["same", "ratio_low"] <= 1 <= table.loc["same", "ratio_high"]


def _timed(model, batch, backend, p50, low, high, method="rounds", rounds=3, status="ok"):
    return {"host": "h", "model": model, "device": "cpu", "batch": batch, "backend": backend, "status": status,
            "p50_us": p50, "p50_ci_low_us": low, "p50_ci_high_us": high, "ci_method": method,
            "timed_rounds": rounds}


def test_fastest_stack_at_the_smallest_and_largest_batch_against_the_runner_up():
    points = pd.DataFrame([
        _timed("m", 1, "a", 50.0, 48.0, 52.0), _timed("m", 1, "b", 100.0, 95.0, 105.0),
        _timed("m", 1, "c", None, None, None, status="failed"),
        _timed("m", 16, "c", 1.0, 0.9, 1.1),  # a middle batch: not reported
        _timed("m", 64, "b", 1010.0, 800.0, 1250.0), _timed("m", 64, "a", 1000.0, 800.0, 1250.0),
        _timed("m", 64, "c", 5000.0, 4900.0, 5100.0, method="iterations", rounds=1),
        _timed("solo", 8, "a", 70.0, 65.0, 75.0, method="iterations", rounds=1),
    ])
    table = fastest_stacks(points).set_index(["model", "batch"])
    assert list(table.index) == [("m", 1), ("m", 64), ("solo", 8)]
    small, large, solo = table.loc[("m", 1)], table.loc[("m", 64)], table.loc[("solo", 8)]
    assert (small["end"], small["backend"], small["runner_up_backend"], small["stacks"]) == ("smallest", "a", "b", 2)
    assert small["ratio"] == pytest.approx(2.0) and small["verdict"] == "2.00x faster"
    assert small["ci_method"] == "rounds"
    # by hand: each point's log standard error from its interval over 3 rounds, Welch's degrees of freedom
    se_a, se_b = math.log(52 / 50) / T_975_DF2, math.log(105 / 100) / T_975_DF2
    se = math.sqrt(se_a ** 2 + se_b ** 2)
    df = se ** 4 / (se_a ** 4 / 2 + se_b ** 4 / 2)
    from scipy.stats import t
    half = t.ppf(0.975, df) * se
    assert small["ratio_low"] == pytest.approx(2.0 * math.exp(-half))
    assert small["ratio_high"] == pytest.approx(2.0 * math.exp(half))
    # within the noise, the lower p50 still leads, and the verdict says the difference is noise
    assert (large["end"], large["backend"], large["runner_up_backend"]) == ("largest", "a", "b")
    assert large["ratio"] == pytest.approx(1.01) and large["verdict"] == "no significant difference"
    # one timed point: no runner-up
    assert (solo["end"], solo["stacks"], solo["backend"]) == ("only", 1, "a") and pd.isna(solo["ratio"])
    # a comparison with a point measured once has an interval over iterations only
    once = fastest_stacks(pd.DataFrame([_timed("m", 1, "a", 50.0, 48.0, 52.0),
                                        _timed("m", 1, "b", 60.0, 59.0, 61.0, method="iterations", rounds=1)]))
    assert once.iloc[0]["ci_method"] == "iterations" and once.iloc[0]["ratio"] == pytest.approx(1.2)

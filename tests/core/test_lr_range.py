"""The LR range test math on synthetic curves whose good region is known by construction."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from kftune.core.errors import ConfigError
from kftune.core.lr_range import (
    DEFAULT_METHOD,
    METHODS,
    Curve,
    RangeTestConfig,
    RangeTestResult,
    RangeTestState,
    analyze,
    lr_at,
    lr_range,
    schedule,
    smooth,
    suggest,
    suggest_all,
    suggest_range,
    trend,
)

N = 100
LRS = schedule(1e-7, 10.0, N)  # 8 decades, 0.081 decade per batch
X = np.log10(LRS)

# The loss of a synthetic range test as a function of x = log10(lr): a plateau at 2.0 up to ~1e-4, a
# fall centred at 10**-2.75 (the steepest point) down to 0.5, a floor, then an explosion past ~0.1.
FALL_CENTRE = -2.75


def u_shape(x: np.ndarray) -> np.ndarray:
    return 0.5 + 1.5 / (1 + np.exp(3 * (x - FALL_CENTRE))) + np.exp(4 * (x + 0.5))


CLEAN = u_shape(X)
TRUE_MIN_LR = float(LRS[np.argmin(CLEAN)])  # ~0.038
TRUE_STEEPEST_LR = float(LRS[np.argmin(np.gradient(CLEAN, X))])  # ~0.0019


def decades(a: float, b: float) -> float:
    return abs(math.log10(a) - math.log10(b))


def assert_sensible(result: RangeTestResult) -> None:
    """What 'sensible' means for the U-shape: every heuristic inside the falling part, in order."""
    s = {m: result.suggestions[m].lr for m in METHODS}
    assert all(v is not None for v in s.values()), {m: x.reason for m, x in result.suggestions.items()}
    # steepest: near the centre of the fall
    assert decades(s["steepest"], TRUE_STEEPEST_LR) <= 0.5, s
    # valley: past the steepest point, at least half a decade below the minimum
    assert TRUE_STEEPEST_LR / 2 <= s["valley"] <= TRUE_MIN_LR / 3, s
    # minimum/10: a decade below the minimum, within a factor of 2 (the floor is nearly flat)
    assert decades(s["minimum"], TRUE_MIN_LR / 10) <= 0.3, s
    # the range contains the valley and lies within the falling part and the floor
    assert result.range is not None
    assert result.range.base_lr <= s["valley"] <= result.range.max_lr
    assert 1e-5 <= result.range.base_lr and result.range.max_lr <= TRUE_MIN_LR
    assert result.lr == s[DEFAULT_METHOD] and result.method == DEFAULT_METHOD


# ------------------------------------------------------------------------------------------ schedules


@pytest.mark.parametrize("mode", ["exponential", "linear"])
def test_schedule_is_exact_at_both_ends_and_increasing(mode: str) -> None:
    lrs = schedule(1e-7, 10.0, 100, mode)  # type: ignore[arg-type]
    assert len(lrs) == 100
    assert lrs[0] == 1e-7 and lrs[-1] == 10.0
    assert np.all(np.diff(lrs) > 0)
    assert lr_at(0, 1e-7, 10.0, 100, mode) == 1e-7  # type: ignore[arg-type]
    assert lr_at(99, 1e-7, 10.0, 100, mode) == 10.0  # type: ignore[arg-type]


def test_exponential_schedule_has_a_constant_ratio_and_linear_a_constant_step() -> None:
    exp = schedule(1e-4, 1.0, 5, "exponential")
    np.testing.assert_allclose(exp, [1e-4, 1e-3, 1e-2, 1e-1, 1.0], rtol=1e-12)
    lin = schedule(0.1, 0.5, 5, "linear")
    np.testing.assert_allclose(lin, [0.1, 0.2, 0.3, 0.4, 0.5], rtol=1e-12)


def test_bad_schedule_settings_name_the_field() -> None:
    with pytest.raises(ConfigError) as e:
        RangeTestConfig(start_lr=1.0, end_lr=0.1, iterations=1, mode="cosine", smoothing=1.0)  # type: ignore[arg-type]
    paths = {p.path for p in e.value.problems}
    assert {"lrRangeTest.endLR", "lrRangeTest.iterations", "lrRangeTest.mode", "lrRangeTest.smoothing"} <= paths
    assert "got 0.1" in str(e.value)
    with pytest.raises(ConfigError, match="lrRangeTest.startLR"):
        schedule(-1.0, 1.0, 10)
    with pytest.raises(ConfigError, match="divergenceFactor"):
        RangeTestConfig(divergence_factor=1.0)
    with pytest.raises(ConfigError, match="valleyFraction"):
        RangeTestConfig(valley_fraction=0.95)  # outside rangeFractions (0.1, 0.9)


def test_config_round_trips_through_spec_keys_and_rejects_unknown_ones() -> None:
    cfg = RangeTestConfig(start_lr=1e-6, end_lr=1.0, iterations=50, mode="linear", divergence_factor=None)
    assert RangeTestConfig.from_dict(cfg.to_dict()) == cfg
    assert RangeTestConfig.from_dict({"startLR": 1e-5, "endLR": 1, "iterations": 20}).iterations == 20
    with pytest.raises(ConfigError, match="lrRangeTest.stopFactor: unknown field"):
        RangeTestConfig.from_dict({"stopFactor": 3})


def test_default_skips_scale_with_the_number_of_batches() -> None:
    assert (RangeTestConfig().resolved_skip_start, RangeTestConfig().resolved_skip_end) == (10, 5)
    assert RangeTestConfig().resolved_trend_window == 11
    small = RangeTestConfig(iterations=30)
    assert (small.resolved_skip_start, small.resolved_skip_end, small.resolved_trend_window) == (3, 1, 5)


# ------------------------------------------------------------------------------------------ smoothing


def test_bias_corrected_smoothing_starts_at_the_first_loss_and_keeps_a_constant_constant() -> None:
    losses = [2.3, 2.1, 2.2, 1.9]
    s = smooth(losses, 0.98)
    assert s[0] == pytest.approx(2.3)
    # hand computation of the second value
    avg = 0.98 * (0.02 * 2.3) + 0.02 * 2.1
    assert s[1] == pytest.approx(avg / (1 - 0.98**2))
    # an uncorrected average would start at 0.02 * c; the corrected one is exact from the first batch
    np.testing.assert_allclose(smooth([1.7] * 50, 0.98), 1.7, rtol=1e-12)
    np.testing.assert_allclose(smooth(losses, 0.0), losses)


def test_smoothing_stops_at_the_first_non_finite_loss() -> None:
    s = smooth([1.0, 2.0, float("nan"), 1.0], 0.9)
    assert np.isfinite(s[:2]).all() and np.isnan(s[2:]).all()


def test_the_state_records_the_same_smoothed_curve() -> None:
    state = RangeTestState(RangeTestConfig(iterations=len(CLEAN), divergence_factor=None))
    for loss in CLEAN:
        state.update(loss)
    np.testing.assert_allclose(state.smoothed, smooth(CLEAN, 0.98))


def test_trend_has_no_lag_on_a_symmetric_dip_while_the_moving_average_does() -> None:
    y = 1 + ((np.arange(101) - 50) / 25.0) ** 2  # minimum at index 50
    assert int(np.argmin(trend(y, 11))) == 50
    assert int(np.nanargmin(smooth(y, 0.98))) > 60  # the exponential average lags the minimum
    spiky = y.copy()
    spiky[30] = 50.0
    assert trend(spiky, 11)[30] < 2.0  # an isolated spike is removed by the running median


# ------------------------------------------------------------------------------------------ divergence


def _feed(state: RangeTestState, losses: list[float]) -> list[bool]:
    out = []
    for loss in losses:
        out.append(state.update(loss))
        if not out[-1]:
            break
    return out


def test_divergence_triggers_at_k_times_the_best_smoothed_loss() -> None:
    cfg = RangeTestConfig(iterations=20, smoothing=0.0, divergence_factor=4.0, divergence_warmup=0)
    state = RangeTestState(cfg)
    assert _feed(state, [1.0, 0.5, 1.9, 1.99]) == [True] * 4  # 1.99 < 4 x 0.5
    assert state.update(2.01) is False  # 2.01 > 4 x 0.5
    assert state.diverged and state.done and "exceeds 4 x the best 0.5" in state.stop_reason
    assert state.result().stop_index == 4
    with pytest.raises(RuntimeError, match="already ended"):
        state.update(1.0)


def test_divergence_factor_is_configurable_and_can_be_turned_off() -> None:
    state = RangeTestState(RangeTestConfig(iterations=20, smoothing=0.0, divergence_factor=2.0,
                                           divergence_warmup=0))
    assert _feed(state, [1.0, 1.9, 2.1]) == [True, True, False]
    off = RangeTestState(RangeTestConfig(iterations=5, smoothing=0.0, divergence_factor=None))
    assert _feed(off, [1.0, 100.0, 1000.0, 1e4, 1e5]) == [True, True, True, True, False]
    assert not off.diverged and off.stop_reason == "completed 5 batches"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_loss_always_stops_even_in_the_warm_up(bad: float) -> None:
    state = RangeTestState(RangeTestConfig(iterations=100))
    assert _feed(state, [2.0, 2.0, bad]) == [True, True, False]
    assert state.diverged and "loss is" in state.stop_reason
    result = state.result()
    assert result.stop_index == 2 and math.isnan(result.smoothed[2])
    assert result.lr is None and "diverged at batch 2" in result.suggestion.reason


def test_the_ratio_test_waits_for_the_warm_up() -> None:
    cfg = RangeTestConfig(iterations=100, smoothing=0.0, divergence_warmup=3)
    state = RangeTestState(cfg)
    assert _feed(state, [1.0, 10.0, 10.0]) == [True, True, True]  # 10 > 4 x 1 but still warming up
    assert state.update(10.0) is False  # batch 3: the rule applies


def test_the_state_pairs_each_loss_with_the_lr_it_was_trained_at() -> None:
    cfg = RangeTestConfig(start_lr=1e-3, end_lr=1.0, iterations=4)
    state = RangeTestState(cfg)
    seen = []
    while not state.done:
        seen.append(state.next_lr)
        state.update(1.0)
    np.testing.assert_allclose(seen, [1e-3, 1e-2, 1e-1, 1.0])
    assert state.lrs == seen and state.stop_reason == "completed 4 batches" and not state.diverged


# ------------------------------------------------------------------------------------------ suggestions


def test_clean_u_shape() -> None:
    result = analyze(LRS, CLEAN)
    assert result.diverged and result.stop_index is not None and result.stop_index < N - 1
    assert_sensible(result)
    assert suggest_range(result) == (result.range.base_lr, result.range.max_lr)  # type: ignore[union-attr]
    assert suggest(result, "steepest") == result.suggestions["steepest"]
    assert "of the way down the largest valley" in result.suggestions["valley"].reason


@pytest.mark.parametrize("seed", range(6))
def test_noisy_u_shape_is_still_sensible(seed: int) -> None:
    rng = np.random.default_rng(seed)
    noisy = CLEAN * (1 + 0.1 * rng.standard_normal(N))  # 10 % multiplicative batch noise
    assert_sensible(analyze(LRS, noisy))


def test_an_early_spike_is_ignored() -> None:
    spiky = CLEAN.copy()
    spiky[1:4] *= 5.0  # three bad batches at the start
    result = analyze(LRS, spiky)
    clean = analyze(LRS, CLEAN)
    assert result.stop_index == clean.stop_index  # the spike did not end the test
    assert {m: s.lr for m, s in result.suggestions.items()} == {m: s.lr for m, s in clean.suggestions.items()}
    assert_sensible(result)


def test_divergence_at_once_gives_no_suggestion_and_says_why() -> None:
    exploding = 2.0 * 1.3 ** np.arange(N)
    result = analyze(LRS, exploding)
    assert result.diverged and result.stop_index == 10  # right after the warm-up
    assert result.range is None and result.lr is None
    for s in result.suggestions.values():
        assert s.lr is None and s.index is None
        assert "too short" in s.reason and "diverged at batch 10" in s.reason and "Lower startLR" in s.reason


def test_a_loss_that_only_rises_gives_no_suggestion() -> None:
    rising = 2.0 + 0.05 * np.arange(N)  # never improves, never 4x worse
    result = analyze(LRS, rising)
    assert not result.diverged and result.lr is None
    assert "diverged at once" in result.suggestion.reason


@pytest.mark.parametrize("seed", [None, 0, 1, 2])
def test_a_flat_curve_gives_no_suggestion(seed: int | None) -> None:
    flat = np.full(N, 1.79)
    if seed is not None:
        flat = flat * (1 + 0.1 * np.random.default_rng(seed).standard_normal(N))
    result = analyze(LRS, flat)
    assert result.range is None
    for s in result.suggestions.values():
        assert s.lr is None and s.reason.startswith("flat"), s.reason


def test_a_too_short_curve_gives_no_suggestion() -> None:
    result = analyze(LRS[:6], CLEAN[:6])
    assert result.range is None
    assert all(s.lr is None and s.reason.startswith("too short") for s in result.suggestions.values())
    assert suggest(Curve(tuple(LRS[:3]), tuple(CLEAN[:3]))).lr is None


def test_a_dip_after_a_divergence_spike_is_not_a_valley() -> None:
    # With the ratio test off, the loss explodes to 8 past the minimum, then falls back to 3: a bigger
    # drop than the real valley's 1.5, but never below the earlier minimum, so it improves on nothing.
    bumpy = np.minimum(CLEAN, 8.0)
    i = int(np.argmax(X > -0.3))
    bumpy[i:] = np.linspace(8.0, 3.0, N - i)
    result = analyze(LRS, bumpy, RangeTestConfig(divergence_factor=None))
    assert not result.diverged
    assert_sensible(result)


def test_a_dip_on_the_plateau_that_comes_back_does_not_start_the_range() -> None:
    # The plateau dips by 0.25 for a decade around 1e-5 and comes back up by 0.15 (less than the
    # tolerance, so it stays one valley with the real fall at 1e-3): base_lr must be where the loss
    # falls for good, not the first point of the dip.
    dipped = CLEAN.copy()
    dipped[(X > -5.5) & (X < -4.5)] -= 0.25
    dipped[X >= -4.5] -= 0.1
    result = analyze(LRS, dipped, RangeTestConfig(noise_tolerance=0, min_drop=0.1))
    assert result.range is not None and result.range.base_lr > 1e-4
    assert result.range.base_lr <= result.suggestions["valley"].lr <= result.range.max_lr  # type: ignore[operator]


def test_a_minimum_at_the_end_is_flagged_open() -> None:
    falling = u_shape(X) - np.exp(4 * (X + 0.5))  # the fall and the floor, no explosion
    result = analyze(LRS[:70], falling[:70])  # stops before the floor: still falling at the end
    assert not result.diverged
    assert result.lr is not None and "raise endLR" in result.suggestions["minimum"].reason


def test_suggestions_use_only_the_finite_part_of_the_curve() -> None:
    losses = CLEAN.copy()
    losses[80] = float("nan")
    result = analyze(LRS, losses)
    assert result.stop_index == 80 and result.diverged
    assert_sensible(result)


def test_every_method_works_from_a_plain_curve_and_unknown_ones_are_rejected() -> None:
    curve = Curve(tuple(LRS), tuple(CLEAN))
    all_ = suggest_all(curve)
    assert set(all_) == set(METHODS)
    assert all(s.lr is not None for s in all_.values())
    assert lr_range(curve) is not None
    with pytest.raises(ConfigError, match="method: must be one of valley, steepest, minimum"):
        suggest(curve, "slide")


def test_linear_schedule_curve() -> None:
    lrs = schedule(1e-4, 0.1, N, "linear")
    x = np.log10(lrs)
    result = analyze(lrs, u_shape(x))
    assert result.config.mode == "linear"
    s = result.suggestions
    assert s["valley"].lr is not None and result.range is not None
    assert result.range.base_lr <= s["valley"].lr <= result.range.max_lr <= TRUE_MIN_LR


def test_a_dev_metric_curve_suggests_where_accuracy_rises_and_peaks() -> None:
    # accuracy: chance (0.2) up to 1e-4, rising to 0.8 around 1e-2.75, collapsing past 0.1
    acc = 0.2 + 0.6 / (1 + np.exp(-3 * (X - FALL_CENTRE))) - np.minimum(0.6, np.exp(4 * (X + 0.5)) * 0.3)
    state = RangeTestState(RangeTestConfig(divergence_factor=None))
    for loss, a in zip(CLEAN, acc):
        if not state.update(loss, metric=a):
            break
    result = state.result()
    assert result.metric is not None and result.metric_range is not None and result.metric_suggestions
    peak = float(LRS[np.argmax(acc)])
    r = result.metric_range
    valley = result.metric_suggestions["valley"].lr
    assert valley is not None
    assert 1e-5 <= r.base_lr <= valley <= r.max_lr <= peak
    assert "starts rising" in r.reason and "peaks" in r.reason


def test_a_metric_measured_on_some_batches_only() -> None:
    state = RangeTestState(RangeTestConfig(divergence_factor=None))
    acc = 0.2 + 0.6 / (1 + np.exp(-3 * (X - FALL_CENTRE)))
    for i, loss in enumerate(CLEAN):
        state.update(loss, metric=acc[i] if i % 3 == 0 else None)
    result = state.result()
    assert result.metric_range is not None
    s = result.metric_suggestions["valley"]  # type: ignore[index]
    assert s.index is not None and s.index % 3 == 0 and result.lrs[s.index] == s.lr


# ------------------------------------------------------------------------------------------ result


def test_result_round_trips_through_strict_json() -> None:
    losses = CLEAN.copy()
    losses[90] = float("inf")
    result = analyze(LRS, losses, metric=list(np.linspace(0.1, 0.9, N)))
    text = json.dumps(result.to_dict(), allow_nan=False)
    back = RangeTestResult.from_dict(json.loads(text))
    assert back.suggestions == result.suggestions and back.range == result.range
    assert back.lr == result.lr and back.diverged and back.stop_index == 90
    assert back.config == result.config
    assert math.isnan(back.losses[90]) and back.lrs == result.lrs
    d = result.to_dict()
    assert d["range"] == [result.range.base_lr, result.range.max_lr]  # type: ignore[union-attr]
    assert d["losses"][90] is None and d["method"] == DEFAULT_METHOD


def test_analyze_drops_points_after_the_stop_and_checks_its_input() -> None:
    losses = list(CLEAN) + [1e6] * 5
    lrs = list(LRS) + [20.0] * 5
    result = analyze(lrs, losses, RangeTestConfig())  # 100 planned: the rest is ignored
    assert len(result.losses) <= N
    with pytest.raises(ConfigError, match="losses: has 3 values but lrs has 2"):
        analyze([1e-3, 1e-2], [1.0, 2.0, 3.0])
    with pytest.raises(ConfigError, match="must not decrease"):
        analyze([1e-2, 1e-3], [1.0, 1.0])


def test_the_chosen_method_can_be_changed() -> None:
    result = analyze(LRS, CLEAN, method="minimum")
    assert result.method == "minimum" and result.lr == result.suggestions["minimum"].lr
    with pytest.raises(ConfigError, match="lrRangeTest.method"):
        analyze(LRS, CLEAN, method="fastest")

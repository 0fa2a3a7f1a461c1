import numpy as np
import pytest

from sweeps.statistics import (Interval, ResamplePlan, accuracy_replicates, describe, hypervolume_replicates,
                               paired_difference, point_values_accuracy, point_values_hypervolume, resample_plan,
                               verdict)
from trainers.errors import ConfigError
from trainers.frontier import CurvePoint, hypervolume


def arm(rng, p, k, n):
    """[K, N] 0/1: each seed's correctness on each test example, correct with probability p."""
    return (rng.random((k, n)) < p).astype(int)


def compare(a, b, plan, level=0.95):
    return paired_difference(point_values_accuracy(a), point_values_accuracy(b),
                             accuracy_replicates(a, plan), accuracy_replicates(b, plan), plan, level)


def width(iv):
    return iv.high - iv.low


def test_resample_plan_is_deterministic_and_well_formed():
    p, q = resample_plan(3, 50, n_boot=200, seed=7), resample_plan(3, 50, n_boot=200, seed=7)
    assert np.array_equal(p.example_weights, q.example_weights) and np.array_equal(p.seed_draws, q.seed_draws)
    assert p.example_weights.shape == (200, 50) and p.seed_draws.shape == (200, 3)
    assert (p.example_weights.sum(axis=1) == 50).all()  # a bootstrap resample: N draws with replacement
    assert p.seed_draws.min() == 0 and p.seed_draws.max() == 2
    assert not np.array_equal(p.example_weights, resample_plan(3, 50, n_boot=200, seed=8).example_weights)


def test_identical_arms_give_zero_and_no_difference():
    a = arm(np.random.default_rng(0), 0.8, 3, 500)
    iv = compare(a, a.copy(), resample_plan(3, 500, n_boot=300))
    assert iv.estimate == 0.0 and iv.low <= 0.0 <= iv.high
    assert iv.low == iv.high == 0.0  # paired: every replicate resamples both arms alike
    assert verdict(iv) == "no detectable difference"


def test_same_distribution_coverage():
    # Two arms from the same distribution, 20 independent data sets: the 95 % interval should cover
    # the true difference 0 about 95 % of the time. 16/20 is loose enough for fixed seeds never to
    # flake, tight enough to catch intervals that are too narrow (this data gives 20/20).
    covered = 0
    for rep in range(20):
        rng = np.random.default_rng(1000 + rep)
        iv = compare(arm(rng, 0.8, 3, 1000), arm(rng, 0.8, 3, 1000), resample_plan(3, 1000, n_boot=500, seed=rep))
        covered += iv.low <= 0.0 <= iv.high
    assert covered >= 16


def test_known_shift_is_detected_both_ways():
    rng = np.random.default_rng(1)
    a, b = arm(rng, 0.85, 3, 2000), arm(rng, 0.80, 3, 2000)
    plan = resample_plan(3, 2000, n_boot=1000, seed=1)
    iv = compare(a, b, plan)
    assert verdict(iv) == "better"
    assert iv.low > 0 and iv.low <= 0.05 <= iv.high
    assert iv.estimate == pytest.approx(a.mean() - b.mean())
    swapped = compare(b, a, plan)
    assert verdict(swapped) == "worse"
    assert swapped.estimate == -iv.estimate and swapped.high < 0

    rng = np.random.default_rng(2)  # 0.2 points on 500 examples is far below what 3 seeds can resolve
    small = compare(arm(rng, 0.802, 3, 500), arm(rng, 0.80, 3, 500), resample_plan(3, 500, n_boot=1000, seed=2))
    assert verdict(small) == "no detectable difference"


def test_pairing_narrows_the_interval():
    # b is a with 2 % of the examples flipped from wrong to right: the arms share almost all errors.
    rng = np.random.default_rng(3)
    k, n = 3, 2000
    a = arm(rng, 0.8, k, n)
    b = a.copy()
    for s in range(k):
        b[s, rng.choice(np.flatnonzero(a[s] == 0), size=n // 50, replace=False)] = 1
    plan, other = resample_plan(k, n, n_boot=1000, seed=0), resample_plan(k, n, n_boot=1000, seed=1)
    paired = compare(b, a, plan)
    assert paired.estimate == pytest.approx(0.02) and verdict(paired) == "better"

    # Unpaired: each arm resampled by its own plan (other examples, other seed positions).
    def seed_mean(reps, p):
        return np.take_along_axis(reps, p.seed_draws, axis=1).mean(axis=1)
    diffs = seed_mean(accuracy_replicates(b, plan), plan) - seed_mean(accuracy_replicates(a, other), other)
    unpaired_width = np.diff(np.quantile(diffs, [0.025, 0.975]))[0]
    assert width(paired) < 0.5 * unpaired_width
    assert unpaired_width / width(paired) > 3  # measured about 4x


def test_seed_variance_widens_the_interval():
    rng = np.random.default_rng(4)
    k, n = 3, 1000
    b = arm(rng, 0.8, k, n)
    a_equal = arm(rng, 0.8, k, n)
    a_bad_seed = a_equal.copy()
    a_bad_seed[1] = arm(rng, 0.6, 1, n)[0]  # one unlucky training run
    plan = resample_plan(k, n, n_boot=1000, seed=0)
    equal, bad = compare(a_equal, b, plan), compare(a_bad_seed, b, plan)
    assert width(bad) > 3 * width(equal)
    assert verdict(bad) == "no detectable difference"  # a 2-good-1-bad arm is not reliably worse


def test_accuracy_replicates_match_a_slow_loop():
    rng = np.random.default_rng(5)
    correct = arm(rng, 0.7, 2, 7)
    plan = resample_plan(2, 7, n_boot=100, seed=5)
    reps = accuracy_replicates(correct, plan)
    assert reps.shape == (100, 2)
    for b in range(plan.n_boot):
        for s in range(2):
            resampled = np.repeat(correct[s], plan.example_weights[b])  # the resampled examples, listed
            assert reps[b, s] == pytest.approx(resampled.mean(), abs=1e-12)
    assert np.array_equal(point_values_accuracy(correct), correct.mean(axis=1))


def curves(rng, settings, n, num_layers):
    """One seed's [S, N] exit layers and correctness: later exits are more often correct."""
    exits = rng.integers(1, num_layers + 1, size=(settings, n))
    return exits, (rng.random((settings, n)) < 0.5 + 0.4 * exits / num_layers).astype(int)


def test_hypervolume_values_and_replicates():
    rng = np.random.default_rng(6)
    L, n = 6, 40
    seeds = [curves(rng, s, n, L) for s in (4, 2, 3)]  # each seed chose a different number of settings
    exits, correct = [e for e, _ in seeds], [c for _, c in seeds]
    point = point_values_hypervolume(exits, correct, L, ref_metric=0.5)

    # By hand for seed 0, straight from trainers.frontier.
    pts = [CurvePoint("patience", s, L / exits[0][s].mean(), correct[0][s].mean(), ()) for s in range(4)]
    assert point[0] == pytest.approx(hypervolume(pts, L, 0.5))
    assert 0 < point.min() and point.max() < 1

    # Unit weights (every example once) reproduce the point values exactly.
    ones = ResamplePlan(example_weights=np.ones((3, n), dtype=int), seed_draws=np.zeros((3, 3), dtype=int))
    reps = hypervolume_replicates(exits, correct, L, 0.5, ones)
    assert reps.shape == (3, 3) and (reps == point).all()

    plan = resample_plan(3, n, n_boot=100, seed=6)
    reps = hypervolume_replicates(exits, correct, L, 0.5, plan)
    assert reps.shape == (100, 3) and reps.std(axis=0).min() > 0  # the resamples move the curve
    assert hypervolume_replicates(exits, correct, L, 0.5, plan, axis="linear").mean() != pytest.approx(reps.mean())

    # Everything exits at layer 1 and is right: the whole box, hypervolume 1.
    best = [np.ones((1, n), dtype=int)]
    assert point_values_hypervolume(best, best, L, 0.5)[0] == 1.0
    assert (hypervolume_replicates(best, best, L, 0.5, resample_plan(1, n, n_boot=100)) == 1.0).all()


def test_bad_inputs_raise_config_errors():
    rng = np.random.default_rng(7)
    plan = resample_plan(3, 100, n_boot=100)
    with pytest.raises(ConfigError, match="at least 100"):
        resample_plan(3, 100, n_boot=50)
    with pytest.raises(ConfigError, match="covers 90 test examples .* made for 100"):
        accuracy_replicates(arm(rng, 0.8, 3, 90), plan)  # an arm evaluated on other examples
    with pytest.raises(ConfigError, match="2 seeds .* made for 3"):
        accuracy_replicates(arm(rng, 0.8, 2, 100), plan)
    with pytest.raises(ConfigError, match="only 0/1"):
        accuracy_replicates(np.full((3, 100), 0.5), plan)
    a, b2 = arm(rng, 0.8, 3, 100), arm(rng, 0.8, 2, 100)
    with pytest.raises(ConfigError, match="same seeds"):
        paired_difference(point_values_accuracy(a), point_values_accuracy(b2),
                          accuracy_replicates(a, plan), accuracy_replicates(a, plan)[:, :2], plan)
    with pytest.raises(ConfigError, match="same resample plan"):
        paired_difference(point_values_accuracy(a), point_values_accuracy(a),
                          accuracy_replicates(a, plan), accuracy_replicates(a, plan)[:, :2], plan)
    exits, correct = curves(rng, 2, 100, 6)
    with pytest.raises(ConfigError, match=r"1\.\.6 .*0-based"):
        point_values_hypervolume([exits - 1], [correct], 6, 0.5)
    with pytest.raises(ConfigError, match="one exit-layer array and one correctness array per seed"):
        hypervolume_replicates([exits, exits], [correct], 6, 0.5, plan)
    with pytest.raises(ConfigError, match="1 seeds .* made for 3"):
        hypervolume_replicates([exits], [correct], 6, 0.5, plan)
    with pytest.raises(ConfigError, match="same test examples"):
        point_values_hypervolume([exits, exits[:, :50]], [correct, correct[:, :50]], 6, 0.5)


def test_verdict_and_describe():
    assert verdict(Interval(0.0123, 0.004, 0.0205)) == "better"
    assert verdict(Interval(-0.02, -0.03, -0.01)) == "worse"
    assert verdict(Interval(0.01, -0.001, 0.02)) == "no detectable difference"
    assert verdict(Interval(0.01, 0.0, 0.02)) == "no detectable difference"  # touching 0 is not enough
    assert verdict(Interval(-0.01, -0.02, 0.0)) == "no detectable difference"
    # Lower is better (e.g. mean exit layer): an interval below 0 is an improvement.
    assert verdict(Interval(-0.02, -0.03, -0.01), better_is_higher=False) == "better"
    assert verdict(Interval(0.02, 0.01, 0.03), better_is_higher=False) == "worse"

    assert describe(Interval(0.0123, 0.004, 0.0205)) == "+1.23 points [+0.40, +2.05]"
    assert describe(Interval(-0.05, -0.0712, -0.00001)) == "-5.00 points [-7.12, -0.00]"  # below 0, says so
    assert describe(Interval(-0.0, -0.01, 0.01)) == "+0.00 points [-1.00, +1.00]"
    assert describe(Interval(0.1, 0.05, 0.2), scale=1.0, unit="") == "+0.10 [+0.05, +0.20]"

import pytest
import torch

from trainers.errors import ConfigError
from trainers.frontier import (CurvePoint, curve_table, hypervolume, operating_point, pareto_front,
                               speed_accuracy_curve, speedup)
from trainers.policies import NoExitPolicy, PatiencePolicy


def pt(s, m, setting=0.0, policy="patience"):
    return CurvePoint(policy=policy, setting=setting, speedup=s, metric=m, exit_histogram=())


def test_speedup_is_l_over_mean_exit_layer():
    exits = torch.tensor([1, 2, 3, 6])
    assert speedup(exits, 6) == pytest.approx(6 / 3)  # mean exit layer (1+2+3+6)/4 = 3
    # Same number from the histogram N_m (m = 1..6): sum L*N_m / sum m*N_m = 6*4 / 12.
    hist = torch.bincount(exits, minlength=7)[1:]
    m = torch.arange(1, 7)
    assert speedup(exits, 6) == pytest.approx((6 * hist).sum().item() / (m * hist).sum().item())
    assert speedup(torch.full((5,), 6), 6) == 1.0
    with pytest.raises(ConfigError, match="1..6"):
        speedup(torch.tensor([0, 3]), 6)


def test_speed_accuracy_curve():
    # 4 layers, 3 samples, binary. argmax per layer: s0: 1 1 1 1, s1: 0 0 1 1, s2: 1 0 1 0.
    # Patience t=1 -> exits 2, 2, 4; answers 1, 0, 0 (layer 4's). Labels 1, 1, 0 -> accuracy 2/3.
    # Speed-up 4 / mean(2, 2, 4) = 1.5; histogram N_1..N_4 = (0, 2, 0, 1).
    argmax = torch.tensor([[1, 0, 1], [1, 0, 0], [1, 1, 1], [1, 1, 0]])
    logits = 4.0 * torch.nn.functional.one_hot(argmax, 2).float()
    labels = torch.tensor([1, 1, 0])
    p1, none = speed_accuracy_curve(logits, labels, "accuracy", False, [PatiencePolicy(1), NoExitPolicy()])
    assert (p1.policy, p1.setting, p1.exit_histogram) == ("patience", 1.0, (0, 2, 0, 1))
    assert p1.speedup == pytest.approx(1.5) and p1.metric == pytest.approx(2 / 3)
    assert p1.delta is None
    # No exit: layer 4 answers 1, 1, 0 -> all correct at speed-up 1.
    assert (none.speedup, none.metric, none.exit_histogram) == (1.0, 1.0, (0, 0, 0, 3))
    with pytest.raises(ConfigError, match="labels"):
        speed_accuracy_curve(logits, labels[:2], "accuracy", False, [NoExitPolicy()])


def test_regression_curve_keeps_delta():
    # L=3, N=2. Sample 0: 1.0, 1.05 (|diff| 0.05 < 0.1) -> exits at layer 2; sample 1: 2, 3, 4 -> layer 3.
    logits = torch.tensor([[1.0, 2.0], [1.05, 3.0], [1.5, 4.0]]).unsqueeze(-1)
    (p,) = speed_accuracy_curve(logits, torch.tensor([1.0, 3.0]), "pearson", True, [PatiencePolicy(1, 0.1)])
    assert p.delta == 0.1 and p.exit_histogram == (0, 1, 1) and p.speedup == pytest.approx(3 / 2.5)
    assert p.metric == pytest.approx(1.0)  # answers 1.05, 4.0 vs labels 1, 3: two points, r = 1


def test_pareto_front_removes_dominated_points():
    a, b, c = pt(1.0, 0.9), pt(2.0, 0.8), pt(4.0, 0.6)
    dominated = [pt(1.5, 0.7), pt(2.0, 0.75), pt(1.0, 0.9, setting=9.0)]  # the last one ties a exactly
    assert pareto_front([c, *dominated, b, a]) == [a, b, c]
    assert pareto_front([pt(3.0, 0.8), pt(2.0, 0.8)]) == [pt(3.0, 0.8)]  # same metric, slower one goes
    assert pareto_front([]) == []


def test_hypervolume_of_known_frontier():
    # L = 4, ref 0.5, points (1, 0.9), (2, 0.8), (4, 0.6). f(s) = best metric among points with
    # speed-up >= s: 0.8 on (1, 2], 0.6 on (2, 4]; (1, 0.9) only holds at s = 1 (zero width).
    # area = (2-1)*(0.8-0.5) + (4-2)*(0.6-0.5) = 0.3 + 0.2 = 0.5; normalized 0.5 / (3 * 0.5) = 1/3.
    front = [pt(1.0, 0.9), pt(2.0, 0.8), pt(4.0, 0.6)]
    assert hypervolume(front, 4, 0.5, axis="linear") == pytest.approx(1 / 3)
    # Dominated points change nothing.
    assert hypervolume(front + [pt(1.5, 0.7), pt(3.0, 0.55)], 4, 0.5, axis="linear") == pytest.approx(1 / 3)
    # ref 0.65: (4, 0.6) is below the reference and contributes nothing.
    # area = (2-1)*(0.8-0.65) = 0.15; normalized 0.15 / (3 * 0.35).
    assert hypervolume(front, 4, 0.65, axis="linear") == pytest.approx(0.15 / (3 * 0.35))
    # A perfect model exiting everything at layer 1 fills the whole box.
    assert hypervolume([pt(4.0, 1.0)], 4, 0.5, axis="linear") == pytest.approx(1.0)


def test_hypervolume_log_axis_weighs_every_doubling_the_same():
    # Same frontier on x = ln s: area = ln2*(0.8-0.5) + (ln4-ln2)*(0.6-0.5) = 0.4 ln2; box ln4 * 0.5 = ln2.
    front = [pt(1.0, 0.9), pt(2.0, 0.8), pt(4.0, 0.6)]
    assert hypervolume(front, 4, 0.5) == pytest.approx(0.4)  # log is the default
    assert hypervolume(front, 4, 0.5, axis="log") == pytest.approx(0.4)
    # 1-2x counts as much as 2-4x: a model good only up to 2x gets half the box on the log axis,
    # a third on the linear one.
    only_2x = [pt(2.0, 1.0)]
    assert hypervolume(only_2x, 4, 0.5, axis="log") == pytest.approx(0.5)
    assert hypervolume(only_2x, 4, 0.5, axis="linear") == pytest.approx(1 / 3)
    assert hypervolume([pt(4.0, 1.0)], 4, 0.5, axis="log") == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="axis"):
        hypervolume(front, 4, 0.5, axis="sqrt")


def test_hypervolume_degenerate():
    assert hypervolume([pt(1.0, 0.95)], 6, 0.5) == 0.0  # no speed-up: zero width
    assert hypervolume([pt(1.0, 0.95)], 1, 0.5) == 0.0  # one layer: nothing to exit from
    assert hypervolume([], 6, 0.5) == 0.0
    with pytest.raises(ConfigError, match="max_metric"):
        hypervolume([pt(2.0, 0.9)], 6, 1.0)


def test_operating_point():
    points = [pt(1.0, 0.83, 5), pt(1.4, 0.82, 4), pt(1.8, 0.809, 3), pt(2.9, 0.78, 1), pt(2.0, 0.809, 2)]
    assert operating_point(points, 1.0).setting == 5
    assert operating_point(points, 1.5).setting == 2  # 0.809 twice: the faster (2.0x) wins
    assert operating_point(points, 2.0).setting == 2  # ">=": 2.0 itself qualifies
    assert operating_point(points, 2.5).setting == 1
    assert operating_point(points, 3.0) is None


def test_curve_table():
    table = curve_table([pt(1.37, 0.82, 4), CurvePoint("entropy", 0.05, 2.873, 0.782, ())], "accuracy")
    lines = table.splitlines()
    assert lines[0].split() == ["policy", "setting", "speed-up", "accuracy"]
    assert lines[2].split() == ["patience", "4", "1.37x", "82.00"]
    assert lines[3].split() == ["entropy", "0.05", "2.87x", "78.20"]

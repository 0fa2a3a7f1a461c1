import math

import pytest
import torch

from trainers.errors import ConfigError
from trainers.policies import (ConfidencePolicy, EntropyPolicy, NoExitPolicy, PatiencePolicy,
                               default_grid, make_policy, simulate)

# Patience worked example: L = 4 layers, 4 samples, C = 3 classes.
# argmax per layer (layers 1..4) and the counter c after each layer
# (c = 0 at layer 1, +1 when argmax repeats the previous layer's, else reset to 0):
#   sample 0: 0 0 0 0   c = 0 1 2 3   t=1 -> exit 2   t=2 -> exit 3
#   sample 1: 1 0 0 1   c = 0 0 1 0   t=1 -> exit 3   t=2 -> 4 (never, answers at L)
#   sample 2: 2 1 2 1   c = 0 0 0 0   t=1 -> 4        t=2 -> 4
#   sample 3: 1 1 0 0   c = 0 1 0 1   t=1 -> exit 2   t=2 -> 4 (the reset at layer 3 matters)
ARGMAX = torch.tensor([[0, 1, 2, 1], [0, 0, 1, 1], [0, 0, 2, 0], [0, 1, 1, 0]])  # [L, N]


def logits_from_argmax(argmax: torch.Tensor, num_classes: int = 3) -> torch.Tensor:
    # Distinct values per layer so that we can check which layer's logits were returned.
    L, N = argmax.shape
    base = torch.arange(L * N * num_classes, dtype=torch.float32).view(L, N, num_classes) * 1e-3
    return base + 5.0 * torch.nn.functional.one_hot(argmax, num_classes)


def logits_from_probs(probs) -> torch.Tensor:
    """probs: [L][N] probability of class 0 in a binary task -> logits [L, N, 2]."""
    p = torch.tensor(probs, dtype=torch.float64)
    return torch.stack([p.log(), (1 - p).log()], dim=-1).float()


@pytest.mark.parametrize("t, expected", [(1, [2, 3, 4, 2]), (2, [3, 4, 4, 4]), (3, [4, 4, 4, 4])])
def test_patience_worked_example(t, expected):
    all_logits = logits_from_argmax(ARGMAX)
    exit_layer, exit_logits = simulate(PatiencePolicy(t), all_logits)
    assert exit_layer.tolist() == expected
    for i, m in enumerate(expected):
        assert torch.equal(exit_logits[i], all_logits[m - 1, i])


# Binary probabilities of the top class and their normalized entropy H(p) / log 2:
#   p = 0.5  -> 1.0
#   p = 0.9  -> (0.9 ln(1/0.9) + 0.1 ln 10) / ln 2 = (0.0948 + 0.2303) / 0.6931 = 0.469
#   p = 0.99 -> (0.99 ln(1/0.99) + 0.01 ln 100) / ln 2 = (0.00995 + 0.0461) / 0.6931 = 0.081
# Three layers, three samples:
#   sample a: 0.5, 0.9, 0.99    sample b: 0.99, 0.5, 0.5    sample c: 0.5, 0.5, 0.5
PROBS = [[0.5, 0.99, 0.5], [0.9, 0.5, 0.5], [0.99, 0.5, 0.5]]  # [L][N]


@pytest.mark.parametrize("S, expected", [
    (0.5, [2, 1, 3]),   # a: 0.469 < 0.5 at layer 2; b: 0.081 at layer 1; c never
    (0.1, [3, 1, 3]),   # a: only 0.081 at layer 3 is below 0.1
    (0.05, [3, 3, 3]),  # nothing is that certain: everyone answers at L
])
def test_entropy_worked_example(S, expected):
    exit_layer, _ = simulate(EntropyPolicy(S), logits_from_probs(PROBS))
    assert exit_layer.tolist() == expected


@pytest.mark.parametrize("gamma, expected", [
    (0.85, [2, 1, 3]),  # a: max p 0.9 >= 0.85 at layer 2; b: 0.99 at layer 1; c never
    (0.95, [3, 1, 3]),  # a: needs layer 3's 0.99
    (0.5, [1, 1, 1]),   # gamma = 1/C: everyone exits at layer 1
])
def test_confidence_worked_example(gamma, expected):
    exit_layer, _ = simulate(ConfidencePolicy(gamma), logits_from_probs(PROBS))
    assert exit_layer.tolist() == expected


def test_entropy_is_normalized_by_log_c():
    uniform = torch.zeros(1, 1, 5)  # H = log 5 exactly, normalized 1.0: exits only for S > 1
    assert simulate(EntropyPolicy(0.999), torch.cat([uniform, uniform]))[0].tolist() == [2]
    _, now = EntropyPolicy(1.0 + 1e-6).step(None, 1, uniform[0])
    assert now.tolist() == [True]


# Regression patience, delta = 0.1. Outputs per layer and |y_m - y_{m-1}| < 0.1 ("same"):
#   sample 0: 1.00 1.05 1.50 1.52   same: y n y   c = 0 1 0 1   t=1 -> 2   t=2 -> 4
#   sample 1: 2.00 2.08 2.00 2.09   same: y y y   c = 0 1 2 3   t=1 -> 2   t=2 -> 3
# With delta = 0.01 no step is "same": everyone answers at L = 4.
REG = torch.tensor([[1.00, 2.00], [1.05, 2.08], [1.50, 2.00], [1.52, 2.09]]).unsqueeze(-1)  # [L, N, 1]


@pytest.mark.parametrize("t, delta, expected", [(1, 0.1, [2, 2]), (2, 0.1, [4, 3]), (1, 0.01, [4, 4])])
def test_regression_patience_with_delta(t, delta, expected):
    exit_layer, exit_out = simulate(make_policy("patience", t, is_regression=True, delta=delta), REG)
    assert exit_layer.tolist() == expected
    assert exit_out[:, 0].tolist() == [REG[m - 1, i, 0].item() for i, m in enumerate(expected)]


def test_no_exit_policy_answers_at_last_layer():
    exit_layer, exit_logits = simulate(NoExitPolicy(), logits_from_argmax(ARGMAX))
    assert exit_layer.tolist() == [4, 4, 4, 4]
    assert torch.equal(exit_logits, logits_from_argmax(ARGMAX)[-1])


def _first_exit_without_dropping(policy, all_logits):
    """Reference: every sample is stepped through every layer; take its first exit."""
    L, N = all_logits.shape[:2]
    exit_layer = torch.full((N,), L)
    state = policy.start(N, "cpu")
    for m in range(1, L):
        state, now = policy.step(state, m, all_logits[m - 1])
        exit_layer = torch.where(now & (exit_layer == L), torch.tensor(m), exit_layer)
    return exit_layer


def _incremental_with_index_select(policy, all_logits):
    """Emulates the model's incremental inference: drop exited samples via select(index tensor)."""
    L, N = all_logits.shape[:2]
    exit_layer, running = torch.full((N,), L), torch.arange(N)
    state = policy.start(N, "cpu")
    for m in range(1, L):
        state, now = policy.step(state, m, all_logits[m - 1, running])
        exit_layer[running[now]] = m
        keep = (~now).nonzero().squeeze(1)
        running, state = running[keep], policy.select(state, keep)
    return exit_layer


@pytest.mark.parametrize("policy", [PatiencePolicy(1), PatiencePolicy(2), PatiencePolicy(3),
                                    EntropyPolicy(0.3), ConfidencePolicy(0.8), NoExitPolicy()])
def test_dropping_samples_gives_the_same_exits(policy):
    g = torch.Generator().manual_seed(0)
    all_logits = torch.randn(6, 200, 3, generator=g)  # random logits: argmax flips often, mixed exits
    expected = _first_exit_without_dropping(policy, all_logits)
    assert torch.equal(simulate(policy, all_logits)[0], expected)
    assert torch.equal(_incremental_with_index_select(policy, all_logits), expected)


def test_make_policy_validates():
    assert make_policy("patience", 2.0) == PatiencePolicy(2)
    assert make_policy("entropy", 0.2).setting == 0.2
    assert make_policy("confidence", 0.9) == ConfidencePolicy(0.9)
    assert make_policy("none", 0) == NoExitPolicy()
    for kind, setting, msg in [("pabee", 1, "unknown exit policy"), ("patience", 1.5, "whole number"),
                               ("patience", 0, ">= 1"), ("entropy", 1.5, r"\[0, 1\]"),
                               ("confidence", -0.1, r"\[0, 1\]"), ("entropy", math.nan, "finite"),
                               ("none", 3, "no setting"), ("patience", "two", "number")]:
        with pytest.raises(ConfigError, match=msg):
            make_policy(kind, setting)
    with pytest.raises(ConfigError, match="regression"):
        make_policy("entropy", 0.2, is_regression=True)
    with pytest.raises(ConfigError, match="delta"):
        make_policy("patience", 2, delta=0.1)  # delta on a classification task


def test_default_grid():
    patience = default_grid("patience", 6, 2, False)
    assert [p.patience for p in patience] == [1, 2, 3, 4, 5]
    for kind, lo in [("entropy", 0.0), ("confidence", 1 / 3)]:
        grid = default_grid(kind, 6, 3, False)
        settings = [p.setting for p in grid]
        assert 15 <= len(grid) <= 25 and settings == sorted(settings) and len(set(settings)) == len(settings)
        assert all(lo - 1e-4 <= s < 1 for s in settings)
    entropy = [p.setting for p in default_grid("entropy", 6, 2, False)]
    assert sum(s < 0.1 for s in entropy) > len(entropy) / 2  # denser near 0
    confidence = [p.setting for p in default_grid("confidence", 6, 2, False)]
    assert confidence[0] == 0.5 and sum(s > 0.9 for s in confidence) > len(confidence) / 2
    reg = default_grid("patience", 4, 1, True)
    assert {p.patience for p in reg} == {1, 2, 3} and len({p.regression_delta for p in reg}) > 1
    assert default_grid("none", 6, 2, False) == [NoExitPolicy()]
    with pytest.raises(ConfigError, match="regression"):
        default_grid("confidence", 6, 1, True)
    with pytest.raises(ConfigError, match="at least 2 layers"):
        default_grid("patience", 1, 2, False)

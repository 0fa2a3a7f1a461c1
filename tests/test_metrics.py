import numpy as np
import pytest
import torch

from trainers.errors import ConfigError
from trainers.metrics import compute_metrics, majority_baseline, predictions_from_logits

PRED = torch.tensor([0, 1, 1, 0, 1])
GOLD = torch.tensor([0, 1, 0, 1, 1])
# Confusion: tp = 2 (idx 1, 4), tn = 1 (idx 0), fp = 1 (idx 2), fn = 1 (idx 3).


def test_accuracy_f1_matthews_binary_by_hand():
    m = compute_metrics(["accuracy", "f1", "matthews"], PRED, GOLD)
    assert m["accuracy"] == pytest.approx(3 / 5)
    # F1 = 2tp / (2tp + fp + fn) = 4 / 6
    assert m["f1"] == pytest.approx(4 / 6)
    # MCC = (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (2 - 1) / sqrt(3*3*2*2) = 1/6
    assert m["matthews"] == pytest.approx(1 / 6)
    # ...which for two classes is the phi coefficient, i.e. Pearson on the 0/1 vectors.
    assert m["matthews"] == pytest.approx(np.corrcoef(PRED.numpy(), GOLD.numpy())[0, 1])


def test_matthews_multiclass_by_hand():
    # Confusion (rows true, cols predicted): [[1,0,0],[1,1,0],[0,0,1]]; c = 3 correct, s = 4,
    # true counts t = [1,2,1], predicted counts p = [2,1,1].
    # (c*s - t.p) / sqrt((s^2 - p.p)(s^2 - t.t)) = (12 - 5) / sqrt(10 * 10) = 0.7
    pred, gold = torch.tensor([0, 1, 2, 0]), torch.tensor([0, 1, 2, 1])
    assert compute_metrics(["matthews"], pred, gold)["matthews"] == pytest.approx(0.7)
    assert compute_metrics(["matthews"], gold, gold)["matthews"] == pytest.approx(1.0)


def test_pearson_spearman_against_numpy():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, generator=g), torch.randn(50, generator=g)
    y = y + x
    m = compute_metrics(["pearson", "spearman"], x, y)
    assert m["pearson"] == pytest.approx(np.corrcoef(x.numpy(), y.numpy())[0, 1], abs=1e-6)
    rank = lambda v: np.argsort(np.argsort(v)) + 1  # no ties in continuous random data
    assert m["spearman"] == pytest.approx(np.corrcoef(rank(x.numpy()), rank(y.numpy()))[0, 1], abs=1e-6)
    # Spearman only sees order: a monotone transform is a perfect correlation.
    assert compute_metrics(["spearman"], x, x ** 3)["spearman"] == pytest.approx(1.0)


def test_spearman_average_ranks_for_ties():
    # x ranks: 1, 2.5, 2.5, 4 (the two 2.0 share ranks 2 and 3); y ranks: 1, 3, 2, 4.
    x, y = torch.tensor([1.0, 2.0, 2.0, 3.0]), torch.tensor([1.0, 3.0, 2.0, 4.0])
    expected = np.corrcoef([1, 2.5, 2.5, 4], [1, 3, 2, 4])[0, 1]
    assert compute_metrics(["spearman"], x, y)["spearman"] == pytest.approx(expected)


def test_degenerate_cases_are_zero_not_nan():
    gold = torch.tensor([0.5, 1.0, 2.0, 4.0])
    const = torch.full((4,), 0.1)  # 0.1 is not exact in binary: must not leak rounding noise
    m = compute_metrics(["pearson", "spearman"], const, gold)
    assert m == {"pearson": 0.0, "spearman": 0.0}
    zeros, labels = torch.zeros(4, dtype=torch.long), torch.tensor([0, 1, 0, 1])
    m = compute_metrics(["f1", "matthews", "accuracy"], zeros, labels)
    assert m == {"f1": 0.0, "matthews": 0.0, "accuracy": 0.5}
    assert compute_metrics(["f1"], zeros, zeros)["f1"] == 0.0  # no positives at all


def test_majority_baseline():
    labels = torch.tensor([1, 1, 1, 0])  # p = 3/4 of class 1
    assert majority_baseline("accuracy", labels, False) == pytest.approx(0.75)
    assert majority_baseline("f1", labels, False) == pytest.approx(2 * 0.75 / 1.75)  # 2p / (1 + p)
    assert majority_baseline("matthews", labels, False) == 0.0
    assert majority_baseline("f1", 1 - labels, False) == 0.0  # majority is class 0: never predicts 1
    assert majority_baseline("pearson", torch.tensor([0.1, 2.3, 4.0]), True) == 0.0
    assert majority_baseline("spearman", torch.tensor([0.1, 2.3, 4.0]), True) == 0.0
    with pytest.raises(ConfigError, match="regression"):
        majority_baseline("accuracy", torch.tensor([0.1, 2.3]), True)


def test_predictions_from_logits():
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 0.0]])
    assert predictions_from_logits(logits, False).tolist() == [1, 0]
    assert predictions_from_logits(torch.tensor([[1.5], [2.5]]), True).tolist() == [1.5, 2.5]


def test_bad_input_raises_config_error():
    with pytest.raises(ConfigError, match="unknown metric"):
        compute_metrics(["acc"], PRED, GOLD)
    with pytest.raises(ConfigError, match="4 predictions for 5 labels"):
        compute_metrics(["accuracy"], PRED[:4], GOLD)
    with pytest.raises(ConfigError, match="binary"):
        compute_metrics(["f1"], torch.tensor([0, 2]), torch.tensor([0, 1]))
    with pytest.raises(ConfigError, match="class ids"):
        compute_metrics(["accuracy"], torch.tensor([0.3, 1.0]), torch.tensor([0, 1]))
    with pytest.raises(ConfigError, match="empty"):
        compute_metrics(["accuracy"], torch.tensor([]), torch.tensor([]))

"""Task metrics with GLUE conventions (method doc, section 6), in plain torch.

All metrics are fractions (accuracy 0.823, not 82.3); tables multiply by 100 when printing.
Implemented here rather than taken from scipy/sklearn so the platform does not depend on them
and the degenerate cases behave the way the frontier code needs (0.0, never NaN).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from trainers.errors import ConfigError
from trainers.tasks import CLASSIFICATION_METRICS, METRICS, REGRESSION_METRICS  # noqa: F401 - re-exported


def _class_ids(t: Tensor, what: str) -> Tensor:
    """Flatten to long class ids; integral floats (labels stored as 0.0/1.0) are accepted."""
    t = t.detach().cpu().reshape(-1)
    if t.is_floating_point():
        if not bool((t == t.round()).all()):
            raise ConfigError(
                f"{what} must be class ids for a classification metric, got non-integer values; "
                "pass predictions_from_logits(logits, is_regression=False), or use pearson/spearman "
                "for a regression task"
            )
        t = t.long()
    if t.numel() and int(t.min()) < 0:
        raise ConfigError(
            f"{what} contain negative class ids (min {int(t.min())}); unlabeled examples (label -1, "
            "e.g. a GLUE test split) cannot be scored, drop them first"
        )
    return t


def _accuracy(pred: Tensor, gold: Tensor) -> float:
    return (_class_ids(pred, "predictions") == _class_ids(gold, "labels")).double().mean().item()


def _f1(pred: Tensor, gold: Tensor) -> float:
    """Binary F1 of the positive class 1, as GLUE reports for MRPC and QQP."""
    pred, gold = _class_ids(pred, "predictions"), _class_ids(gold, "labels")
    if int(torch.maximum(pred.max(), gold.max())) > 1:
        raise ConfigError("f1 is binary F1 (positive class 1) but got class ids above 1; "
                          "use accuracy or matthews for a task with more than 2 classes")
    tp = ((pred == 1) & (gold == 1)).sum().item()
    wrong = (pred != gold).sum().item()  # = fp + fn
    # 2tp / (2tp + fp + fn); no positives anywhere means nothing was found: 0.0, not NaN.
    return 2 * tp / (2 * tp + wrong) if tp else 0.0


def _macro_f1(pred: Tensor, gold: Tensor) -> float:
    """The unweighted mean of every class's F1, over the classes in the labels or the predictions
    (sklearn's ``f1_score(average="macro")``): a rare class weighs as much as a common one."""
    pred, gold = _class_ids(pred, "predictions"), _class_ids(gold, "labels")
    k = int(torch.maximum(pred.max(), gold.max())) + 1
    tp = torch.bincount(gold[pred == gold], minlength=k).double()
    predicted, actual = torch.bincount(pred, minlength=k).double(), torch.bincount(gold, minlength=k).double()
    present = (predicted + actual) > 0
    # 2tp / (predicted + actual); a class never predicted and never present is not averaged
    f1 = torch.where(present, 2 * tp / (predicted + actual).clamp(min=1), torch.zeros_like(tp))
    return (f1[present].mean()).item()


def _matthews(pred: Tensor, gold: Tensor) -> float:
    """Multi-class Matthews correlation (Gorodkin's R_K, as sklearn); equals the phi coefficient for 2 classes."""
    pred, gold = _class_ids(pred, "predictions"), _class_ids(gold, "labels")
    k = int(torch.maximum(pred.max(), gold.max())) + 1
    cm = torch.bincount(gold * k + pred, minlength=k * k).view(k, k).double()  # rows: true, cols: predicted
    t, p, s = cm.sum(1), cm.sum(0), cm.sum()
    cov_tp = cm.trace() * s - (t * p).sum()
    denom = ((s * s - (p * p).sum()) * (s * s - (t * t).sum())).sqrt()
    # A constant prediction (or constant labels) makes the denominator 0: no correlation, 0.0.
    return (cov_tp / denom).item() if denom > 0 else 0.0


def _pearson(x: Tensor, y: Tensor) -> float:
    x, y = x.detach().cpu().reshape(-1).double(), y.detach().cpu().reshape(-1).double()
    # Test constancy exactly: after subtracting a float mean, a constant vector can leave rounding
    # noise that would otherwise turn into a spurious correlation.
    if x.max() == x.min() or y.max() == y.min():
        return 0.0
    x, y = x - x.mean(), y - y.mean()
    r = (x * y).sum() / ((x * x).sum() * (y * y).sum()).sqrt()
    return r.clamp(-1.0, 1.0).item()


def _average_ranks(x: Tensor) -> Tensor:
    """1-based ranks, ties get the mean of the ranks they span (the usual Spearman convention)."""
    _, inverse, counts = torch.unique(x.detach().cpu().reshape(-1), sorted=True,
                                      return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()  # a tie group of size c ending at rank e spans e-c+1..e
    return (ends - (counts - 1) / 2)[inverse]


def _spearman(x: Tensor, y: Tensor) -> float:
    return _pearson(_average_ranks(x), _average_ranks(y))


_FUNCS: dict[str, Callable[[Tensor, Tensor], float]] = {
    "accuracy": _accuracy, "macro_f1": _macro_f1, "f1": _f1, "matthews": _matthews,
    "pearson": _pearson, "spearman": _spearman,
}


def compute_metrics(metric_names: Sequence[str], predictions: Tensor, labels: Tensor) -> dict[str, float]:
    """Score predictions (class ids, or floats for regression) against labels, one float per metric."""
    if isinstance(metric_names, str):  # "accuracy" would otherwise be iterated letter by letter
        metric_names = [metric_names]
    unknown = [m for m in metric_names if m not in _FUNCS]
    if unknown:
        raise ConfigError(f"unknown metric(s) {unknown}; choose from {list(METRICS)}")
    if predictions.numel() != labels.numel():
        raise ConfigError(f"got {predictions.numel()} predictions for {labels.numel()} labels; "
                          "they must be one prediction per labeled example")
    if labels.numel() == 0:
        raise ConfigError("cannot compute metrics on an empty set; check the evaluation split is not empty")
    return {m: float(_FUNCS[m](predictions, labels)) for m in metric_names}


def predictions_from_logits(logits: Tensor, is_regression: bool) -> Tensor:
    """Class ids (argmax over the last dim), or the single regression output."""
    return logits[..., 0] if is_regression else logits.argmax(dim=-1)


def majority_baseline(metric_name: str, labels: Tensor, is_regression: bool) -> float:
    """The metric of always predicting the most frequent label (the label mean for regression).

    It is the reference point of the hypervolume: a frontier only counts where it beats a model
    that ignores its input.
    """
    if is_regression:
        if metric_name not in REGRESSION_METRICS:
            raise ConfigError(f"metric {metric_name!r} does not apply to a regression task; "
                              f"use one of {list(REGRESSION_METRICS)}")
        constant = torch.full((labels.numel(),), labels.double().mean().item())
    else:
        ids = _class_ids(labels, "labels")
        if ids.numel() == 0:
            raise ConfigError("cannot compute a majority baseline without labels; check the split is not empty")
        # bincount().argmax() takes the smallest class id among equally frequent ones: deterministic.
        constant = torch.full_like(ids, int(torch.bincount(ids).argmax()))
    return compute_metrics([metric_name], constant, labels)[metric_name]

"""Speed-accuracy curves from cached exit logits (method doc, section 5).

Speed-up is the papers' L / mean(exit layer), never PABEE's printed 1 - avg/L. Each policy
setting gives one CurvePoint. The frontier, the hypervolume and the operating point are computed
on those points without torch, in ``trainers.pareto`` (re-exported here).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from trainers.errors import ConfigError
from trainers.metrics import compute_metrics, predictions_from_logits
from trainers.policies import ExitPolicy, PatiencePolicy, simulate
from trainers.pareto import (HYPERVOLUME_AXES, curve_table, hypervolume, operating_point,  # noqa: F401 - re-exported
                             pareto_front)
from trainers.results import CurvePoint  # the curve's points (re-exported here)


def speedup(exit_layers: Tensor, num_layers: int) -> float:
    """L / mean(exit layer) = sum_m L*N_m / sum_m m*N_m; 1.0 means no saving, L means all exit at layer 1."""
    if exit_layers.numel() == 0:
        raise ConfigError("cannot compute a speed-up without samples; check the evaluation split is not empty")
    if int(exit_layers.min()) < 1 or int(exit_layers.max()) > num_layers:
        raise ConfigError(f"exit layers must lie in 1..{num_layers} (1-based), got "
                          f"{int(exit_layers.min())}..{int(exit_layers.max())}")
    return num_layers / exit_layers.double().mean().item()


def speed_accuracy_curve(all_logits: Tensor, labels: Tensor, metric_name: str, is_regression: bool,
                         policies: Sequence[ExitPolicy]) -> list[CurvePoint]:
    """One point per policy setting, from cached logits [L, N, C] of every exit."""
    if all_logits.dim() != 3:
        raise ConfigError(f"cached exit logits must have shape [layers, samples, classes], "
                          f"got {tuple(all_logits.shape)}")
    num_layers, n = all_logits.shape[:2]
    if labels.numel() != n:
        raise ConfigError(f"cached logits cover {n} samples but there are {labels.numel()} labels; "
                          "recompute the cached logits on the same split")
    points = []
    for policy in policies:
        exit_layer, exit_logits = simulate(policy, all_logits)
        preds = predictions_from_logits(exit_logits, is_regression)
        delta = policy.regression_delta if is_regression and isinstance(policy, PatiencePolicy) else None
        points.append(CurvePoint(
            policy=policy.kind, setting=float(policy.setting),
            speedup=speedup(exit_layer, num_layers),
            metric=compute_metrics([metric_name], preds, labels)[metric_name],
            exit_histogram=tuple(torch.bincount(exit_layer.cpu(), minlength=num_layers + 1)[1:].tolist()),
            delta=delta,
        ))
    return points

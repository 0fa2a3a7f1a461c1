"""Divergence on the device: the first non-finite step of a run, found without a host sync per step.

``DivergenceMonitor`` records inside the training step; ``check_finite`` checks outside it. Both
raise ``trainers.errors.TrainingDiverged``, which entry points turn into exit code 3.
"""

from __future__ import annotations

import torch

from trainers.errors import TrainingDiverged


def check_finite(tensor, step: int, reason: str) -> None:
    """Raise TrainingDiverged unless every entry of ``tensor`` is finite. This reads the tensor (a
    host sync): for checks outside the training step. Inside it, ``DivergenceMonitor`` records."""
    if not bool(tensor.isfinite().all()):
        raise TrainingDiverged(step, reason)


class DivergenceMonitor:
    """The first non-finite step of a run, recorded on the device and read only at check points.

    Reading a value on every step (``loss.item()``) makes the host wait for the GPU each time.
    Instead each step folds its finite flags into two device scalars (the first bad step and why),
    and ``check()`` reads them, every ``log_every`` steps and at the end of each epoch; the guard
    (``trainers.engine.skip_update_unless`` and the φ step) keeps θ and φ unchanged on a bad step,
    so nothing non-finite is ever applied between two checks. Cost: the error comes up to
    ``log_every`` steps after the bad step, naming the bad step.
    """

    REASONS = ("", "loss is nan", "loss is inf", "hypergradient is not finite", "loss weights are not finite")

    def __init__(self, device: torch.device | str):
        self.first_step = torch.zeros((), dtype=torch.long, device=device)  # 0: none yet (steps are 1-based)
        self.reason = torch.zeros((), dtype=torch.long, device=device)

    def record(self, step: int, ok: torch.Tensor, reason) -> torch.Tensor:
        """Fold in (0-based) ``step``'s flag ``ok``; ``reason`` indexes REASONS (an int or a device
        scalar). Returns ``ok``. No host sync: everything stays on the device."""
        new = ~ok & (self.first_step == 0)
        self.first_step = torch.where(new, step + 1, self.first_step)
        self.reason = torch.where(new, reason, self.reason)
        return ok

    def record_loss(self, step: int, loss: torch.Tensor) -> torch.Tensor:
        """Fold in a loss value; True on the device when it is finite."""
        ok = torch.isfinite(loss)
        return self.record(step, ok, torch.where(torch.isnan(loss), 1, 2))

    def check(self, *values: torch.Tensor) -> list[float]:
        """Raise TrainingDiverged if any recorded step was bad. One host sync, which also reads
        ``values`` (tensors to log, e.g. the loss), returned flattened as floats."""
        parts = [self.first_step, self.reason, *(v.detach() for v in values)]
        read = torch.cat([t.reshape(-1).double() for t in parts])
        step, reason, *rest = read.tolist()
        if step:
            raise TrainingDiverged(int(step), self.REASONS[int(reason)])
        return rest

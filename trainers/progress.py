"""A training's progress: the lines it prints and the record it keeps (epochs, the weight trajectory).

Between check points everything stays on the device; ``ProgressLog.check`` reads it in one host
sync, together with the divergence check.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from trainers.divergence import DivergenceMonitor


@dataclass
class History:
    epochs: list[dict] = field(default_factory=list)
    weights: list[dict] = field(default_factory=list)


class ProgressLog:
    """Progress lines and the weight trajectory, kept on the device between check points."""

    def __init__(self, history: History, log: Callable[[str], None], total_steps: int, weight_log_every: int,
                 start: int = 0):
        self.history, self.log, self.total_steps, self.weight_log_every = history, log, total_steps, weight_log_every
        self.pending: list[tuple[int, torch.Tensor]] = []
        self.loss: torch.Tensor | None = None
        self.hypergradient: torch.Tensor | None = None
        self.last_step, self.tick, self.tick_step = start, time.perf_counter(), start

    def step(self, step: int, loss: torch.Tensor, weights: torch.Tensor, outer: dict | None) -> None:
        """After (1-based) ``step``: remember what the next check reads. No host sync."""
        self.last_step, self.loss = step, loss.detach()
        if outer is not None:
            self.hypergradient = outer["hypergradient"]
        if step % self.weight_log_every == 0:
            self.keep_weights(step, weights)

    def keep_weights(self, step: int, weights: torch.Tensor) -> None:
        if not self.pending or self.pending[-1][0] != step:
            self.pending.append((step, weights.detach().clone()))

    def check(self, monitor: DivergenceMonitor, lr: float) -> None:
        """One host sync: raise if a step diverged; else log progress and keep the pending weights."""
        norm = self.hypergradient.norm() if self.hypergradient is not None else None
        values = [v for v in (self.loss, norm) if v is not None] + [w for _, w in self.pending]
        read = monitor.check(*values)  # the clock is read after the sync: the rate is honest
        if self.loss is None:
            return
        loss, offset = read[0], 1
        if norm is not None:
            extra, offset = f" | hypergrad {read[1]:.2e}", 2
        else:
            extra = ""
        for step, weights in self.pending:
            self.history.weights.append({"step": step, "weights": read[offset:offset + weights.numel()]})
            offset += weights.numel()
        self.pending.clear()
        now = time.perf_counter()
        rate = (self.last_step - self.tick_step) / max(now - self.tick, 1e-9)
        eta = (self.total_steps - self.last_step) / rate if rate > 0 else float("nan")
        self.tick, self.tick_step = now, self.last_step
        self.log(f"step {self.last_step}/{self.total_steps} | loss {loss:.4f} | lr {lr:.2e} | "
                 f"{rate:.2f} steps/s | eta {eta:.0f}s{extra}")

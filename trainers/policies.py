"""Early-exit policies (method doc, section 5) as one streaming implementation.

A policy sees the exits one layer at a time, exactly as incremental inference does: ``start``
makes a per-sample state, ``step`` consumes layer m's exit logits of the samples still running
and says which of them exit now, ``select`` shrinks the state when the caller drops the exited
samples. ``simulate`` drives the same three calls over cached logits of every exit, so the
speed-accuracy curves we report are, by construction, what the model's real inference does.

Layers are 1-based. The caller makes every remaining sample exit at the last layer, so a policy
never has to know L.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, Protocol

import numpy as np
import torch
from torch import Tensor

from trainers.errors import ConfigError

KINDS = ("patience", "entropy", "confidence", "none")

# Regression patience: two consecutive exits "agree" when their predictions differ by less than
# delta. The grid is on the scale of STS-B's 0-5 similarity scores, our only regression task.
DEFAULT_REGRESSION_DELTA = 0.1
REGRESSION_DELTAS = (0.02, 0.05, 0.1, 0.2, 0.5)


class ExitPolicy(Protocol):
    kind: str
    setting: float

    def start(self, n: int, device: Any) -> Any: ...

    def step(self, state: Any, layer: int, out: Tensor) -> tuple[Any, Tensor]: ...

    def select(self, state: Any, keep: Tensor) -> Any: ...


class _PatienceState(NamedTuple):
    prev: Tensor | None  # previous layer's prediction per running sample (None before layer 1)
    count: Tensor        # consecutive agreements so far, long [n]


@dataclass(frozen=True)
class PatiencePolicy:
    """PABEE: exit once the prediction has stayed the same for ``patience`` consecutive layers.

    The counter is 0 at layer 1; at layer m > 1 it goes up by 1 if the prediction equals layer
    m-1's and resets to 0 otherwise; exit as soon as it reaches ``patience``. Regression outputs
    (a single column) count as "the same" when |y_m - y_{m-1}| < regression_delta; the width of
    the output tells the two apart, since argmax over one column would always agree.
    """

    patience: int
    regression_delta: float = DEFAULT_REGRESSION_DELTA
    kind: ClassVar[str] = "patience"

    @property
    def setting(self) -> float:
        return float(self.patience)

    @property
    def first_exit_layer(self) -> int:
        """The counter is at most m - 1 at layer m: nobody can leave before layer patience + 1."""
        return self.patience + 1

    def start(self, n: int, device: Any) -> _PatienceState:
        return _PatienceState(None, torch.zeros(n, dtype=torch.long, device=device))

    def step(self, state: _PatienceState, layer: int, out: Tensor) -> tuple[_PatienceState, Tensor]:
        regression = out.shape[-1] == 1
        pred = out[..., 0] if regression else out.argmax(dim=-1)
        if state.prev is None:
            count = state.count  # layer 1: nothing to compare with yet, c = 0
        else:
            same = (pred - state.prev).abs() < self.regression_delta if regression else pred == state.prev
            count = torch.where(same, state.count + 1, torch.zeros_like(state.count))
        return _PatienceState(pred, count), count >= self.patience

    def select(self, state: _PatienceState, keep: Tensor) -> _PatienceState:
        return _PatienceState(None if state.prev is None else state.prev[keep], state.count[keep])


def _check_classes(out: Tensor, kind: str) -> None:
    if out.shape[-1] < 2:
        raise ConfigError(f"the {kind} exit policy needs class probabilities (at least 2 classes); "
                          "for a regression task use the patience policy")


@dataclass(frozen=True)
class EntropyPolicy:
    """DeeBERT: exit at the first layer whose normalized entropy H(p_m) / log C is below S."""

    threshold: float
    kind: ClassVar[str] = "entropy"

    @property
    def setting(self) -> float:
        return float(self.threshold)

    def start(self, n: int, device: Any) -> None:
        return None  # memoryless: the decision depends on the current layer only

    def step(self, state: None, layer: int, out: Tensor) -> tuple[None, Tensor]:
        _check_classes(out, self.kind)
        logp = torch.log_softmax(out.float(), dim=-1)  # log_softmax: no log(0) for saturated exits
        entropy = -(logp.exp() * logp).sum(dim=-1)
        return None, entropy / math.log(out.shape[-1]) < self.threshold

    def select(self, state: None, keep: Tensor) -> None:
        return None


@dataclass(frozen=True)
class ConfidencePolicy:
    """Exit at the first layer whose top class probability max p_m reaches gamma."""

    gamma: float
    kind: ClassVar[str] = "confidence"

    @property
    def setting(self) -> float:
        return float(self.gamma)

    def start(self, n: int, device: Any) -> None:
        return None

    def step(self, state: None, layer: int, out: Tensor) -> tuple[None, Tensor]:
        _check_classes(out, self.kind)
        return None, torch.softmax(out.float(), dim=-1).amax(dim=-1) >= self.gamma

    def select(self, state: None, keep: Tensor) -> None:
        return None


@dataclass(frozen=True)
class NoExitPolicy:
    """Never exit early: every sample answers at the last layer (the full model)."""

    kind: ClassVar[str] = "none"
    setting: ClassVar[float] = 0.0

    def start(self, n: int, device: Any) -> None:
        return None

    def step(self, state: None, layer: int, out: Tensor) -> tuple[None, Tensor]:
        return None, torch.zeros(out.shape[0], dtype=torch.bool, device=out.device)

    def select(self, state: None, keep: Tensor) -> None:
        return None


def make_policy(kind: str, setting: float, *, is_regression: bool = False,
                delta: float | None = None) -> ExitPolicy:
    """Build a policy from its config (kind, setting); ``delta`` is regression patience's tolerance."""
    if kind not in KINDS:
        raise ConfigError(f"unknown exit policy {kind!r}; choose one of {list(KINDS)}")
    try:
        value = float(setting)
    except (TypeError, ValueError):
        raise ConfigError(f"exit policy setting must be a number, got {setting!r}") from None
    if not math.isfinite(value):
        raise ConfigError(f"exit policy setting must be finite, got {setting!r}")
    if is_regression and kind in ("entropy", "confidence"):
        raise ConfigError(f"the {kind} exit policy needs class probabilities; for a regression task "
                          "use 'patience' (with a delta) or 'none'")
    if delta is not None and not (kind == "patience" and is_regression):
        raise ConfigError("delta only applies to the patience policy on a regression task; remove it")
    if kind == "patience":
        if value != int(value) or value < 1:
            raise ConfigError(f"patience must be a whole number of layers >= 1, got {setting!r}")
        delta = DEFAULT_REGRESSION_DELTA if delta is None else float(delta)
        if not (math.isfinite(delta) and delta > 0):
            raise ConfigError(f"regression patience delta must be a positive number, got {delta!r}")
        return PatiencePolicy(int(value), delta)
    if kind == "entropy":
        if not 0 <= value <= 1:
            raise ConfigError(f"entropy threshold S is a normalized entropy and must be in [0, 1], got {setting!r}")
        return EntropyPolicy(value)
    if kind == "confidence":
        if not 0 <= value <= 1:
            raise ConfigError(f"confidence threshold gamma is a probability and must be in [0, 1], got {setting!r}")
        return ConfidencePolicy(value)
    if value != 0:
        raise ConfigError(f"the 'none' exit policy takes no setting; use 0, got {setting!r}")
    return NoExitPolicy()


def default_grid(kind: str, num_layers: int, num_labels: int, is_regression: bool) -> list[ExitPolicy]:
    """The settings swept to draw one speed-accuracy curve, sorted by setting."""
    if kind not in KINDS:
        raise ConfigError(f"unknown exit policy {kind!r}; choose one of {list(KINDS)}")
    if kind == "none":
        return [NoExitPolicy()]
    if num_layers < 2:
        raise ConfigError(f"early exit needs a model with at least 2 layers, got {num_layers}")
    if kind == "patience":
        # t >= L can never fire before the forced exit at layer L, so it would duplicate "none".
        if is_regression:
            return [PatiencePolicy(t, d) for t in range(1, num_layers) for d in REGRESSION_DELTAS]
        return [PatiencePolicy(t) for t in range(1, num_layers)]
    if is_regression:
        raise ConfigError(f"the {kind} exit policy needs class probabilities; for a regression task "
                          "use 'patience' or 'none'")
    if num_labels < 2:
        raise ConfigError(f"a classification task needs at least 2 labels, got {num_labels}")
    # Fine-tuned exits are mostly very confident, so the useful thresholds crowd near "certain":
    # geometric spacing puts half the grid within 3% of it. Rounded so tables stay readable.
    near = np.geomspace(1e-3, 0.9, 20)
    if kind == "entropy":
        return [EntropyPolicy(float(f"{s:.3g}")) for s in near]
    # gamma = 1 - d with d from 1e-3 up to 1 - 1/C; gamma = 1/C makes everything exit at layer 1.
    d = np.geomspace(1e-3, 1 - 1 / num_labels, 20)
    return sorted((ConfidencePolicy(float(f"{1 - x:.4g}")) for x in d), key=lambda p: p.gamma)


def simulate(policy: ExitPolicy, all_logits: Tensor) -> tuple[Tensor, Tensor]:
    """Run ``policy`` over cached logits of every exit, layer by layer, dropping exited samples.

    all_logits: [L, N, C]. Returns (exit_layer long [N] in 1..L, exit_logits [N, C]).
    """
    if all_logits.dim() != 3 or all_logits.shape[0] < 1:
        raise ConfigError(f"cached exit logits must have shape [layers, samples, classes], "
                          f"got {tuple(all_logits.shape)}")
    num_layers, n = all_logits.shape[:2]
    # Default answer: the last layer, which the caller forces for everyone still running.
    exit_layer = torch.full((n,), num_layers, dtype=torch.long, device=all_logits.device)
    exit_logits = all_logits[-1].clone()
    running = torch.arange(n, device=all_logits.device)  # original indices of samples still running
    state = policy.start(n, all_logits.device)
    for m in range(1, num_layers):  # layer L needs no decision
        if running.numel() == 0:
            break
        out = all_logits[m - 1, running]
        state, now = policy.step(state, m, out)
        exit_layer[running[now]] = m
        exit_logits[running[now]] = out[now]
        running, state = running[~now], policy.select(state, ~now)
    return exit_layer, exit_logits


class SavedOutcomes:
    """Per-example test results of exit policies on one model's saved exit logits: what the final
    comparison and the precision-parity benchmark resample. ``logits`` [L, N, C], ``labels`` [N]."""

    def __init__(self, logits: np.ndarray, labels: np.ndarray):
        self.all_logits = torch.from_numpy(logits)
        self.labels = labels
        self.regression = self.all_logits.shape[-1] == 1

    def last_correct(self) -> np.ndarray:
        """[N] 0/1: the last exit's prediction is right."""
        return (self.all_logits[-1].argmax(-1).numpy() == self.labels).astype(np.float64)

    def at(self, kind: str, setting: float, delta: float | None) -> tuple[np.ndarray, np.ndarray]:
        """(exit layer [N], 0/1 correct [N]) of one policy setting."""
        policy = make_policy(kind, setting, is_regression=self.regression, delta=delta)
        exit_layer, exit_logits = simulate(policy, self.all_logits)
        return exit_layer.numpy(), (exit_logits.argmax(-1).numpy() == self.labels).astype(np.float64)

    def frontier(self, points) -> tuple[np.ndarray, np.ndarray]:
        """(exit layers [S, N], correct [S, N]) of every setting in ``points`` (``.policy``, ``.setting``, ``.delta``)."""
        outcomes = [self.at(p.policy, p.setting, p.delta) for p in points]
        return np.stack([e for e, _ in outcomes]), np.stack([c for _, c in outcomes])

"""The training objectives (method §2, §3). The whole formalization of the loss lives here.

Inner objective, for exit logits z_m (m = 1..L), p_m = softmax(z_m), p_m^τ = softmax(z_m / τ):

    L_tr(θ, w; B) = (1/n) [ Σ_m w^CE_m · CE(y, p_m)  +  Σ_m Σ_{t∈T(m)} w^KD_{m,t} · τ² · KL(sg(p_t^τ) ‖ p_m^τ) ]

n is the number of terms. It is computed as ``inner_loss(terms, w, ℓ) = w · ℓ / n`` where ℓ is the
vector of per-term losses (``term_losses``). Keeping ℓ explicit is what makes the hypergradient
cheap: φ enters L_tr only through w, so ∇_φ L_tr = J_w(φ)ᵀ ℓ / n needs a forward pass only.

Loss-scale convention (docs/method.md, "Loss scale"): every arm, fixed or learned, minimizes a
weighted *mean* of its terms, with weights of mean 1 (uniform: all 1; learned: n·softmax(φ);
pabee: L·m/Σj). So the loss, and its gradient norm against the clipping threshold, is on the
scale of one cross-entropy whatever the number of terms (36 on a 6-exit model with KD from all
exits, 6 without KD). ``reduction="sum"`` keeps the former Σ w·ℓ for comparisons.

Outer objective: L_out = (1/L) Σ_m CE(y, p_m) — unweighted, any exit may answer at inference.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# the loss's choice names are defined with the config, so that validating a config needs no torch
from trainers.config import FIXED_SCHEMES, KD_TEACHERS, LOSS_REDUCTIONS, PARAMETRIZATIONS
from trainers.errors import ConfigError


def teacher_pairs(num_exits: int, teachers: str) -> list[tuple[int, int]]:
    """The (student m, teacher t) pairs, 0-based, for T(m) = all | later | last | none."""
    if teachers == "all":  # LAE: the exits learn from each other
        return [(m, t) for m in range(num_exits) for t in range(num_exits) if t != m]
    if teachers == "later":  # LLE
        return [(m, t) for m in range(num_exits) for t in range(m + 1, num_exits)]
    if teachers == "last":  # classic self-distillation
        return [(m, num_exits - 1) for m in range(num_exits - 1)]
    if teachers == "none":
        return []
    raise ConfigError(f"unknown KD teacher set '{teachers}'; choose one of {', '.join(KD_TEACHERS)}")


@dataclass(frozen=True)
class LossTerms:
    """Names and layout of ℓ: the L cross-entropy terms first, then one KD term per pair."""

    num_exits: int
    pairs: tuple[tuple[int, int], ...]
    temperature: float = 1.0
    regression: bool = False
    reduction: str = "mean"  # "mean": L_tr = w·ℓ / n (every arm); "sum": w·ℓ (before 2026-11)

    @classmethod
    def build(cls, num_exits: int, teachers: str, temperature: float = 1.0, regression: bool = False,
              reduction: str = "mean"):
        if reduction not in LOSS_REDUCTIONS:
            raise ConfigError(f"unknown loss reduction '{reduction}'; choose one of {', '.join(LOSS_REDUCTIONS)}")
        return cls(num_exits, tuple(teacher_pairs(num_exits, teachers)), temperature, regression, reduction)

    def __len__(self) -> int:
        return self.num_exits + len(self.pairs)

    @property
    def names(self) -> list[str]:
        return [f"ce/{m + 1}" for m in range(self.num_exits)] + [f"kd/{m + 1}<-{t + 1}" for m, t in self.pairs]


def _fp32_or_wider(logits: torch.Tensor) -> torch.Tensor:
    """Logits in fp32 (fp64 stays fp64). Under bf16 autocast the logits are bf16, and DeepSpeed's
    autocast wraps only the module's forward, so the losses below would otherwise run in bf16: on
    12 nearly agreeing exits that put the distillation terms off by a median of 58 % (some
    negative). The losses are cheap next to the network; computing them in fp32 costs nothing."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


@functools.lru_cache(maxsize=64)
def _pair_index(pairs: tuple[tuple[int, int], ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(students, teachers) index tensors of ``pairs`` on ``device``, built once per device: a tensor
    made from a Python list is a host-to-device copy, which would wait for the GPU on every call."""
    students = torch.tensor([m for m, _ in pairs], dtype=torch.long).to(device)
    sources = torch.tensor([t for _, t in pairs], dtype=torch.long).to(device)
    return students, sources


def autocast_off(device_type: str):
    """Autocast off, where the device has autocast at all (meta, for one, has none)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def term_losses(terms: LossTerms, logits: torch.Tensor, labels: torch.Tensor,
                teacher_logits: torch.Tensor | None = None) -> torch.Tensor:
    """ℓ, the per-term losses ``[len(terms)]``, each a mean over the batch, in fp32 whatever the
    logits' dtype (or fp64 for fp64 logits), with autocast off.

    ``logits`` is ``[L, B, C]``. The teacher side is always detached (stop-gradient). Pass
    ``teacher_logits`` to hold the teachers at other values than ``logits`` — the
    finite-difference hypergradient keeps them at θ on both sides θ ± εv (method §4, pitfall).
    """
    with autocast_off(logits.device.type):
        logits = _fp32_or_wider(logits)
        teachers = (logits if teacher_logits is None else _fp32_or_wider(teacher_logits)).detach()
        num_exits = logits.shape[0]
        students, sources = _pair_index(terms.pairs, logits.device)
        if terms.regression:
            preds = logits[..., 0]  # [L, B]
            target = labels.to(preds.dtype).unsqueeze(0).expand_as(preds)
            ce = ((preds - target) ** 2).mean(dim=1)
            kd = ((preds[students] - teachers[..., 0][sources]) ** 2).mean(dim=1)
            return torch.cat([ce, kd])
        flat = logits.reshape(-1, logits.shape[-1])
        ce = F.cross_entropy(flat, labels.repeat(num_exits), reduction="none").view(num_exits, -1).mean(dim=1)
        if not terms.pairs:
            return ce
        tau = terms.temperature
        student_logp = F.log_softmax(logits / tau, dim=-1)[students]  # [P, B, C]
        teacher_logp = F.log_softmax(teachers / tau, dim=-1)[sources]
        kl = (teacher_logp.exp() * (teacher_logp - student_logp)).sum(-1).mean(-1)  # KL(teacher ‖ student)
        return torch.cat([ce, tau * tau * kl])


def inner_loss(terms: LossTerms, weights: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
    """L_tr = w · ℓ / n: the weighted mean of the terms (``reduction="sum"``: w · ℓ), in the wider
    of the two dtypes (fp32 weights and losses give fp32; autocast never narrows a plain product).

    The one place where the loss scale is decided: the θ step, the virtual step and ∇_φ all go
    through here, so the hypergradient is always the derivative of the loss θ is trained on.
    """
    total = (weights * losses).sum()
    return total / len(terms) if terms.reduction == "mean" else total


def outer_loss(logits: torch.Tensor, labels: torch.Tensor, regression: bool = False) -> torch.Tensor:
    """L_out: the unweighted mean of the exits' task losses, in fp32. It never contains w."""
    with autocast_off(logits.device.type):
        logits = _fp32_or_wider(logits)
        if regression:
            return ((logits[..., 0] - labels.to(logits.dtype)) ** 2).mean()
        flat = logits.reshape(-1, logits.shape[-1])
        return F.cross_entropy(flat, labels.repeat(logits.shape[0]))


class LossWeights(nn.Module):
    """w(φ): positive, normalized loss-term weights; φ = 0 gives every weight 1.0.

    - ``softmax``: w = n · softmax(φ) (sums to n);
    - ``sigmoid``: w_i = 2 · sigmoid(φ_i) (each in (0, 2)).
    """

    def __init__(self, num_terms: int, parametrization: str = "softmax"):
        super().__init__()
        if parametrization not in PARAMETRIZATIONS:
            raise ConfigError(
                f"unknown weight parametrization '{parametrization}'; choose one of {', '.join(PARAMETRIZATIONS)}"
            )
        self.parametrization = parametrization
        self.phi = nn.Parameter(torch.zeros(num_terms))

    def forward(self) -> torch.Tensor:
        if self.parametrization == "softmax":
            return self.phi.numel() * torch.softmax(self.phi, dim=0)
        return 2.0 * torch.sigmoid(self.phi)


def fixed_weights(scheme: str, terms: LossTerms) -> torch.Tensor:
    """The constant weights of the ``fixed`` baselines (method §4)."""
    if scheme == "uniform":
        return torch.ones(len(terms))
    if scheme == "pabee":  # PABEE's weighted average Σ_m m·CE_m / Σ_j j, no KD terms
        if terms.pairs:
            raise ConfigError("scheme 'pabee' has no KD terms; use --kd none (the default for pabee)")
        # w_m = L·m / Σ_j j has mean 1, so the mean convention gives exactly PABEE's average
        layers = torch.arange(1, terms.num_exits + 1, dtype=torch.float32)
        return terms.num_exits * layers / layers.sum()
    if scheme == "last":
        if any(t != terms.num_exits - 1 for _, t in terms.pairs):
            raise ConfigError("scheme 'last' distills from the last exit only; use --kd last")
        return torch.ones(len(terms))
    raise ConfigError(f"unknown fixed scheme '{scheme}'; choose one of {', '.join(FIXED_SCHEMES)}")

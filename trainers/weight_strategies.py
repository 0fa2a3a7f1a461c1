"""Loss-weight optimizers (method §4): ``fixed``, ``bilevel`` (DARTS) and ``clo`` (LeeBERT).

All three implement one strategy interface, so the training loop never branches on the method:

- ``draw_sizes(batch_size)``: how many examples to draw per step from D1 and from D2;
- ``theta_batch(b1, b2)``: the batch θ's update uses (D1 only for bilevel, D1 ∪ D2 otherwise);
- ``weights()``: the current loss-term weights w (a detached tensor);
- ``halves(step)``: which of B1 and B2 step ``step`` uses (bilevel needs B2 on outer steps only),
  so the loop copies exactly those to the device ahead of time;
- ``outer_step(model, b1, b2, step, lrs, monitor)``: update φ from a hypergradient (a no-op for
  fixed). A non-finite hypergradient or weight leaves φ and Adam's moments as they were, on the
  device, and is recorded in ``monitor`` (a ``DivergenceMonitor``); without a monitor it raises
  TrainingDiverged at once (a host sync);
- ``to(device)``: put the weights (and φ's optimizer state) where the exit losses are.

Hypergradient (DARTS second order), for a training batch B_tr and an outer batch B_out:

    g = ∇_θ L_tr(θ, w; B_tr);  θ' = θ − Ξ g           (Ξ: per-parameter ξ, default the inner lr)
    v = ∇_θ' L_out(θ'; B_out);  u = Ξ v;  ε = fd_eps / ‖u‖
    h = −[∇_φ L_tr(θ + εu, w; B_tr) − ∇_φ L_tr(θ − εu, w; B_tr)] / (2ε)

With a single ξ this is the method doc's h = −ξ [...]/(2ε') with ε' = fd_eps/‖v‖; θ ± εu is the
same point. ∇_φ L_tr = J_w(φ)ᵀ ℓ, so each side costs one forward pass, and the KD teachers stay
at θ on both sides (the pitfall measured in the method doc: moving them gave cosine 0.52).
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.distributed as dist

from trainers.divergence import DivergenceMonitor, check_finite
from trainers.objective import (LossTerms, LossWeights, autocast_off, fixed_weights, inner_loss, outer_loss,
                                term_losses)

Batch = dict[str, torch.Tensor]


def all_reduce_mean(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Average over data-parallel processes, so every rank gets the global-batch hypergradient."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensors
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    out, offset = [], 0
    for t in tensors:
        out.append(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()
    return out


def concat_batches(a: Batch, b: Batch) -> Batch:
    """B1 ∪ B2 as one batch. The shorter side is right-padded with zeros; its attention mask is 0
    there, so the pad value never matters."""
    length = max(a["input_ids"].shape[1], b["input_ids"].shape[1])

    def pad(batch: Batch, key: str) -> torch.Tensor:
        t = batch[key]
        if t.dim() == 2 and t.shape[1] < length:
            t = torch.nn.functional.pad(t, (0, length - t.shape[1]))
        return t

    return {key: torch.cat([pad(a, key), pad(b, key)]) for key in a}


def phase(name: str):
    """A label for the profiler (benchmarks/step_cost.py --breakdown): nearly free when none records."""
    return torch.profiler.record_function(f"hypergradient/{name}")


@contextlib.contextmanager
def exact_fp32_matmuls():
    """fp32 matmuls at full precision ("highest"), restored after: TF32 (what "high" allows on a GPU)
    rounds products to about 1e-3, which would swamp ℓ+ − ℓ− at a perturbation of about 1e-6.
    Pinned inside the sides, so that anything in the process setting "high" cannot reach them."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def _autocast(device_type: str, dtype: torch.dtype | None):
    """Autocast in ``dtype`` for the gradient passes, or off (fp32) when ``dtype`` is None."""
    if dtype is None:
        return autocast_off(device_type)
    return torch.autocast(device_type=device_type, dtype=dtype)


def hypergradient(model: torch.nn.Module, terms: LossTerms, loss_weights: LossWeights,
                  train_batch: Batch, outer_batch: Batch, xi: list[float], fd_eps: float,
                  reduce: Callable[[list[torch.Tensor]], list[torch.Tensor]] = all_reduce_mean,
                  grad_dtype: torch.dtype | None = None) -> torch.Tensor:
    """h(B_tr → B_out) = dL_out(θ'(φ); B_out)/dφ by finite differences; one ξ per trainable parameter.

    Four passes: g (forward + backward on B_tr), v (forward + backward on B_out at θ'), and the
    two finite-difference sides ℓ± (forwards on B_tr). The sides always run in fp32, TF32 off: ℓ+ − ℓ−
    is a difference of nearly equal numbers. ``grad_dtype`` (bf16) runs the g and v passes under
    autocast, as θ's own steps do; they only choose the direction u and the virtual step.
    Parameter updates are foreach ops: a handful of kernels per update instead of several per tensor.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    device_type = params[0].device.type
    labels_tr, labels_out = train_batch["labels"], outer_batch["labels"]
    was_training = model.training
    with phase("mode_switch"):
        model.eval()  # dropout off: the two sides θ ± εu must see the same network
    try:
        weights = loss_weights().detach()
        with phase("g_pass"), _autocast(device_type, grad_dtype):
            logits = model(**train_batch)
            teachers = logits.detach()
            inner = inner_loss(terms, weights, term_losses(terms, logits, labels_tr))
            g = reduce(list(torch.autograd.grad(inner, params)))
        with phase("backup_and_virtual_step"), torch.no_grad():
            theta = [p.detach() for p in params]
            backup = torch._foreach_mul(theta, 1.0)  # a copy of θ, restored exactly at the end
            torch._foreach_sub_(theta, torch._foreach_mul(g, xi))  # the virtual step θ' = θ − ξ g
            del g
        with phase("v_pass"), _autocast(device_type, grad_dtype):
            v = torch.autograd.grad(outer_loss(model(**outer_batch), labels_out, terms.regression), params)
            v = reduce(list(v))
        with torch.no_grad(), autocast_off(device_type), exact_fp32_matmuls():  # finite differences need fp32
            with phase("perturb_copies"):
                u = torch._foreach_mul(v, xi)
                del v
                # ε stays a tensor on the device: no host sync, and no data needed (meta).
                # ‖u‖ = 0 makes θ ± εu the same point, so ℓ+ = ℓ− and h = 0; the clamp keeps ε finite.
                norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(u)))
                eps = fd_eps / norm.clamp_min(torch.finfo(torch.float32).tiny)
                step = torch._foreach_mul(u, eps)  # ε u
                del u
                torch._foreach_copy_(theta, backup)
                torch._foreach_add_(theta, step)
            with phase("fd_plus_pass"):
                plus = term_losses(terms, model(**train_batch), labels_tr, teachers)
            with phase("perturb_copies"):
                torch._foreach_copy_(theta, backup)
                torch._foreach_sub_(theta, step)
            with phase("fd_minus_pass"):
                minus = term_losses(terms, model(**train_batch), labels_tr, teachers)
            with phase("perturb_copies"):
                torch._foreach_copy_(theta, backup)
            (diff,) = reduce([plus - minus])
    finally:
        with phase("mode_switch"):
            model.train(was_training)
    # ∇_φ L_tr(θ+) − ∇_φ L_tr(θ−) = ∇_φ inner_loss(w(φ), ℓ+ − ℓ−): L_tr is linear in ℓ
    with phase("phi_gradient"):
        (jacobian_product,) = torch.autograd.grad(inner_loss(terms, loss_weights(), diff), [loss_weights.phi])
    return -jacobian_product / (2 * eps)


def exact_hypergradient(model: torch.nn.Module, terms: LossTerms, loss_weights: LossWeights, train_batch: Batch,
                        outer_batch: Batch, xi: list[float]) -> torch.Tensor:
    """The reference: d/dφ L_out(θ − ξ ∇_θ L_tr(θ, w(φ); B_tr); B_out) by double backward through the
    unrolled step. For tests and hardware checks (float64 and eager attention: double backward
    through PyTorch's CPU flash-attention kernel is not implemented)."""
    from torch.func import functional_call

    model.eval()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    names, params = [n for n, _ in named], [p for _, p in named]
    inner = inner_loss(terms, loss_weights(), term_losses(terms, model(**train_batch), train_batch["labels"]))
    grads = torch.autograd.grad(inner, params, create_graph=True)
    unrolled = {n: p - step * g for n, p, g, step in zip(names, params, grads, xi)}
    logits = functional_call(model, unrolled, args=(), kwargs=outer_batch)
    (h,) = torch.autograd.grad(outer_loss(logits, outer_batch["labels"]), [loss_weights.phi])
    return h


class FixedWeights:
    """Constant weights; θ trains on all of D (drawn as equal halves from D1 and D2)."""

    name = "fixed"

    def __init__(self, terms: LossTerms, scheme: str):
        self.terms = terms
        self._weights = fixed_weights(scheme, terms)

    def draw_sizes(self, batch_size: int) -> tuple[int, int]:
        return batch_size - batch_size // 2, batch_size // 2

    def halves(self, step: int) -> tuple[bool, bool]:
        return True, True

    def theta_batch(self, b1: Callable[[], Batch], b2: Callable[[], Batch]) -> Batch:
        return concat_batches(b1(), b2())

    def weights(self) -> torch.Tensor:
        return self._weights

    def to(self, device) -> "FixedWeights":
        self._weights = self._weights.to(device)
        return self

    def outer_step(self, model, b1, b2, step: int, xi: Callable[[], list[float]],
                   monitor: DivergenceMonitor | None = None) -> dict | None:
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class _LearnedWeights:
    """Shared by bilevel and clo: φ, its Adam optimizer, and the update schedule."""

    def __init__(self, terms: LossTerms, parametrization: str, lr_outer: float, outer_every: int, fd_eps: float,
                 grad_dtype: torch.dtype | None = None):
        self.terms = terms
        self.grad_dtype = grad_dtype  # bf16: g and v under autocast (hypergradient); None: fp32
        self.loss_weights = LossWeights(len(terms), parametrization)
        self.lr_outer = lr_outer
        self.optimizer = self._adam()
        self.outer_every = outer_every
        self.fd_eps = fd_eps

    def weights(self) -> torch.Tensor:
        with torch.no_grad():
            return self.loss_weights()

    def to(self, device) -> "_LearnedWeights":
        """Move φ, and Adam's moments with it. φ stays fp32 (the hypergradient is fp32).

        Moving may replace the φ Parameter (meta does), which Adam would no longer see, so Adam is
        rebuilt from its own state; its load_state_dict puts the moments on φ's device.
        """
        self.loss_weights.to(device)
        state = self.optimizer.state_dict()
        self.optimizer = self._adam()
        self.load_optimizer_state(state)
        return self

    def load_optimizer_state(self, state: dict) -> None:
        """Adam's state, saved with or without the fused kernel: the kernel follows φ's device."""
        fused = self.optimizer.defaults["fused"]
        self.optimizer.load_state_dict({**state, "param_groups": [{**g, "fused": fused} for g in state["param_groups"]]})

    def _adam(self) -> torch.optim.Adam:
        """Adam on φ; fused where the device has the kernel (CPU, CUDA): its step count then lives
        on φ's device, so a step reads nothing back to the host (the default keeps it on the CPU
        and reads it on every step)."""
        fused = self.loss_weights.phi.device.type in ("cpu", "cuda")
        return torch.optim.Adam(self.loss_weights.parameters(), lr=self.lr_outer, fused=fused)

    def _hyper(self, model, train_batch: Batch, outer_batch: Batch, xi: list[float]) -> torch.Tensor:
        return hypergradient(model, self.terms, self.loss_weights, train_batch, outer_batch, xi, self.fd_eps,
                             grad_dtype=self.grad_dtype)

    def is_outer_step(self, step: int) -> bool:
        return step % self.outer_every == 0

    def outer_step(self, model, b1, b2, step: int, xi: Callable[[], list[float]],
                   monitor: DivergenceMonitor | None = None) -> dict | None:
        if not self.is_outer_step(step):
            return None
        h = self.combined_hypergradient(model, b1(), b2(), xi())
        if monitor is None:  # a direct call (tests, notebooks): check now
            check_finite(h, step + 1, "hypergradient is not finite")  # before Adam: φ never turns NaN
            self._adam_step(h)
            check_finite(self.weights(), step + 1, "loss weights are not finite")
            return {"hypergradient": h}
        # In training: no host sync. Adam steps on a finite gradient either way; a step whose
        # hypergradient or resulting weights are not finite is then undone on the device.
        with phase("phi_update"):
            h_ok = monitor.record(step, torch.isfinite(h).all(), 3)
            before = {key: t.detach().clone() for key, t in self._phi_state().items()}
            self._adam_step(torch.where(h_ok, h, torch.zeros_like(h)))
            ok = h_ok & monitor.record(step, torch.isfinite(self.loss_weights()).all(), 4)
            with torch.no_grad():
                for key, now in self._phi_state().items():
                    then = before.get(key)
                    now.copy_(torch.where(ok, now, torch.zeros_like(now) if then is None else then))
        return {"hypergradient": h}

    def _adam_step(self, grad: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.loss_weights.phi.grad = grad
        self.optimizer.step()

    def _phi_state(self) -> dict[str, torch.Tensor]:
        """φ and Adam's moments (which Adam makes on its first step), the live tensors, on φ's device."""
        phi = self.loss_weights.phi
        state = self.optimizer.state.get(phi, {})
        return {"phi": phi.data, **{key: state[key] for key in ("exp_avg", "exp_avg_sq") if key in state}}

    def state_dict(self) -> dict:
        return {"loss_weights": self.loss_weights.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        # Both land on φ's current device, whatever device saved them: the module copies into φ,
        # and Adam casts its moments to the device of the parameter they belong to.
        self.loss_weights.load_state_dict(state["loss_weights"])
        self.load_optimizer_state(state["optimizer"])


class BilevelWeights(_LearnedWeights):
    """Plain bi-level: θ only ever sees D1; φ follows h(B1 → B2)."""

    name = "bilevel"

    def draw_sizes(self, batch_size: int) -> tuple[int, int]:
        # Same θ batch size and step count as the other methods, so D1 is traversed twice per epoch.
        return batch_size, batch_size

    def halves(self, step: int) -> tuple[bool, bool]:
        return True, self.is_outer_step(step)

    def theta_batch(self, b1, b2) -> Batch:
        return b1()

    def combined_hypergradient(self, model, b1: Batch, b2: Batch, xi: list[float]) -> torch.Tensor:
        return self._hyper(model, b1, b2, xi)


class CrossLevelWeights(_LearnedWeights):
    """CLO: both levels use both splits. h = ½[h(B1 → B2) + h(B2 → B1)]; θ trains on B1 ∪ B2."""

    name = "clo"

    def draw_sizes(self, batch_size: int) -> tuple[int, int]:
        return batch_size - batch_size // 2, batch_size // 2

    def halves(self, step: int) -> tuple[bool, bool]:
        return True, True

    def theta_batch(self, b1, b2) -> Batch:
        return concat_batches(b1(), b2())

    def combined_hypergradient(self, model, b1: Batch, b2: Batch, xi: list[float]) -> torch.Tensor:
        return 0.5 * (self._hyper(model, b1, b2, xi) + self._hyper(model, b2, b1, xi))


def build_strategy(cfg, terms: LossTerms):
    if cfg.method == "fixed":
        return FixedWeights(terms, cfg.scheme)
    cls = {"bilevel": BilevelWeights, "clo": CrossLevelWeights}[cfg.method]
    if cfg.precision not in ("fp32", "bf16"):  # auto would silently mean fp32 passes here
        from trainers.errors import ConfigError

        raise ConfigError(f"precision '{cfg.precision}' reached the loss-weight strategy unresolved; resolve it for "
                          "the device first (trainers.engine.select_device_and_precision)")
    grad_dtype = torch.bfloat16 if cfg.precision == "bf16" and cfg.hypergradient_passes == "auto" else None
    return cls(terms, cfg.weight_param, cfg.lr_outer, cfg.outer_every, cfg.fd_eps, grad_dtype)

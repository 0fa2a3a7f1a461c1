"""Every shipped GPU config steps without waiting on the host, and keeps θ's gradients in fp32.

DeepSpeed's syncs come from its configuration, and none shows on the CPU by itself: the CPU
accelerator's ``synchronize()`` returns at once, and a tensor made from host data is no copy there.
So the step is instrumented where DeepSpeed 0.19.8 decides, and each event is counted as what it is
on a GPU (the real engine runs; nothing is replaced):

- ``synchronize()`` calls on DeepSpeed's accelerator;
- guards ``if not get_accelerator().resolves_data_dependency(): get_accelerator().synchronize()``
  (ZeRO-1/2 with ``overlap_comm``, around every gradient bucket): the CPU answers True and skips the
  sync, CUDA answers False and synchronizes the whole device, so each guard is a sync there;
- tensors made from host data (``torch.tensor(...)``, ``FloatTensor([...])``: ``aten.lift_fresh``),
  a blocking host-to-device copy when the target is a GPU (DeepSpeed's clipping makes them);
- value reads (``item``, ``bool``, ``nonzero``), which wait for the device.
"""

import collections
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tests.conftest import make_batch
from trainers import engine as ds
from trainers.config import TrainConfig
from trainers.divergence import DivergenceMonitor
from trainers.gradient_clipping import clip_gradients, zero_gradient_partitions
from trainers.objective import LossTerms, inner_loss, term_losses
from trainers.train import training_step
from trainers.weight_strategies import CrossLevelWeights, FixedWeights

REPO = Path(__file__).resolve().parents[1]
GPU_CONFIGS = sorted(p.name for p in (REPO / "clusters" / "deepspeed").glob("gpu_*.json"))
HOST_EVENTS = {torch.ops.aten.lift_fresh.default: "tensor from host data",
               torch.ops.aten._local_scalar_dense.default: "value read", torch.ops.aten.is_nonzero.default: "value read",
               torch.ops.aten.nonzero.default: "value read", torch.ops.aten.equal.default: "value read"}


class HostEvents(TorchDispatchMode):
    def __init__(self, counts: collections.Counter):
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in HOST_EVENTS:
            self.counts[HOST_EVENTS[func]] += 1
        return func(*args, **(kwargs or {}))


def gpu_engine(tiny_model, name: str, **overrides):
    values = dict(model="tiny-random", precision="bf16", batch_size=12, deepspeed_config=f"clusters/deepspeed/{name}")
    cfg = TrainConfig(**{**values, **overrides}).validate()
    return ds.build_engine(tiny_model(num_labels=3), cfg, total_steps=20)


def draws(first: int, last: int) -> list:
    """The steps' batches, made ahead (making them writes host data into tensors)."""
    batches = [(make_batch(seed=2 * step), make_batch(seed=2 * step + 1)) for step in range(first, last)]
    return [SimpleNamespace(b1=lambda b=b: b[0], b2=lambda b=b: b[1]) for b in batches]


def steps(engine, strategy, first: int, draws: list):
    monitor = DivergenceMonitor(engine.device)
    xi = lambda: ds.parameter_lrs(engine)  # noqa: E731
    for step, draw in enumerate(draws, start=first):
        training_step(engine, strategy, strategy.terms, draw, step, xi, monitor)


def test_the_gpu_configs_are_the_shipped_ones():
    assert GPU_CONFIGS == ["gpu_bf16_zero0.json", "gpu_bf16_zero2.json"]


@pytest.mark.parametrize("name", GPU_CONFIGS)
def test_a_step_on_a_shipped_gpu_config_would_not_wait_on_the_host(tiny_model, name, monkeypatch):
    from deepspeed.accelerator import get_accelerator

    engine = gpu_engine(tiny_model, name)
    assert engine.trainer_max_grad_norm == 1.0 and engine.gradient_clipping() == 0.0
    counts = collections.Counter()
    accelerator = get_accelerator()
    real_sync, real_guard = accelerator.synchronize, accelerator.resolves_data_dependency

    def synchronize(*args, **kwargs):
        counts["synchronize()"] += 1
        return real_sync(*args, **kwargs)

    def guard():
        counts["synchronize() on CUDA (resolves_data_dependency guard)"] += 1
        return real_guard()

    for strategy in (FixedWeights(LossTerms.build(3, "all"), "uniform"),
                     CrossLevelWeights(LossTerms.build(3, "all"), "softmax", 0.1, 2, 0.01)):
        strategy.to(engine.device)
        steps(engine, strategy, 0, draws(0, 2))  # one-time set-up (buffers, optimizer state)
        counted = draws(2, 6)
        with monkeypatch.context() as patch, HostEvents(counts):
            patch.setattr(accelerator, "synchronize", synchronize)
            patch.setattr(accelerator, "resolves_data_dependency", guard)
            steps(engine, strategy, 2, counted)  # clo: two outer steps among them
    assert dict(counts) == {}, f"{name}: host waits in 4 steps of each arm: {dict(counts)}"


@pytest.mark.parametrize("name", GPU_CONFIGS)
def test_under_bf16_autocast_every_gradient_and_its_reduction_stay_fp32(tiny_model, name):
    from deepspeed.runtime.torch_autocast import get_comm_dtype

    engine = gpu_engine(tiny_model, name)
    model, terms = engine.module, LossTerms.build(3, "all")
    linear_outputs = []
    model.exits[0].classifier.register_forward_hook(lambda mod, args, out: linear_outputs.append(out.dtype))
    batch = make_batch(seed=4)
    loss = inner_loss(terms, torch.ones(len(terms)), term_losses(terms, engine(**batch), batch["labels"]))
    engine.backward(loss)
    assert linear_outputs == [torch.bfloat16], "autocast reached the Linear layers"
    assert {get_comm_dtype(p) for p in model.parameters()} == {torch.float32}, "reduction (communication) dtype"
    partitions = zero_gradient_partitions(engine)
    if partitions is None:  # ZeRO-0: the parameters hold the gradients
        grads = [p.grad for p in model.parameters()]
        assert all(g is not None for g in grads)
    else:  # ZeRO-2: the reduction buckets and this process's partition of the reduced gradients
        assert set(engine.optimizer.ipg_buckets) == {torch.float32}
        grads = partitions
    assert grads and {g.dtype for g in grads} == {torch.float32}
    engine.step()


@pytest.mark.parametrize("stage", [0, 2])
def test_the_trainers_clipping_is_deepspeeds_on_the_device(tiny_model, stage):
    """θ after two clipped steps equals θ after DeepSpeed's own clipping (gradient_clipping in its
    config), under ZeRO-0 and ZeRO-2; a run without clipping ends elsewhere, so the threshold bites."""
    import copy

    import deepspeed

    terms, base = LossTerms.build(3, "all"), tiny_model(num_labels=3)
    cfg = TrainConfig(model="tiny-random", batch_size=6, zero_stage=stage, max_grad_norm=0.05,
                      warmup_ratio=0.0).validate()

    def train(clipping: str):
        model = copy.deepcopy(base)
        torch.manual_seed(0)  # the same dropout masks in every run
        if clipping == "trainer":
            engine = ds.build_engine(model, cfg, 10)
        else:
            config = ds.deepspeed_config(cfg, 1)
            config["gradient_clipping"] = cfg.max_grad_norm if clipping == "deepspeed" else 0.0
            config["zero_optimization"].pop("compute_grad_norm", None)
            optimizer, scheduler = ds.build_optimizer(model, cfg, 10)
            engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config,
                                              dist_init_required=False)
        for step in range(3):
            batch = make_batch(seed=step)
            engine.backward(inner_loss(terms, torch.ones(len(terms)), term_losses(terms, engine(**batch), batch["labels"])))
            if clipping == "trainer":
                clip_gradients(engine)
            engine.step()
        return [p.detach().clone() for p in model.parameters()]

    ours, theirs, unclipped = train("trainer"), train("deepspeed"), train("none")
    assert max((a - b).abs().max().item() for a, b in zip(ours, theirs)) < 1e-6
    assert max((a - b).abs().max().item() for a, b in zip(ours, unclipped)) > 1e-5


def test_the_hypergradients_finite_difference_sides_run_with_tf32_off_and_restore_the_setting(tiny_model):
    """Someone in the process set "high" (TF32 on a GPU): the g and v passes keep it, the ℓ± sides
    run at "highest", and "high" is back afterwards."""
    model, terms = tiny_model(num_labels=3), LossTerms.build(3, "all")
    strategy = CrossLevelWeights(terms, "softmax", 0.1, 1, 0.01)
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(torch.get_float32_matmul_precision()))
    xi = [1e-3] * sum(1 for _ in model.parameters())
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        h = strategy.combined_hypergradient(model, make_batch(seed=1), make_batch(seed=2), xi)
        after = torch.get_float32_matmul_precision()
    finally:
        torch.set_float32_matmul_precision(previous)
    assert seen == ["high", "high", "highest", "highest"] * 2, seen  # clo: g, v, ℓ+, ℓ− twice
    assert after == "high" and torch.isfinite(h).all()

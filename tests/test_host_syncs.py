"""A training step issues no host sync, and divergence is still caught.

On a GPU, reading a value (``.item()``, ``bool(t)``, ``nonzero``) or copying to the host makes the
CPU wait for every queued kernel. Two detectors stand in for ``torch.cuda.set_sync_debug_mode``:

- on ``meta`` tensors hold no values, so a read or a copy to the host raises: the whole loop runs
  there, batches and all;
- on the CPU, a dispatch mode counts the ops that read a value back (``item``, ``bool``,
  ``nonzero``: the ones that sync on a GPU) while the real DeepSpeed engine trains. It cannot see
  ``tolist`` or a copy to the host (no op runs for a CPU tensor); the meta run can.
"""

import collections
import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from trainers import engine as ds
from trainers.config import TrainConfig
from trainers.divergence import DivergenceMonitor
from trainers.errors import TrainingDiverged
from trainers.objective import LossTerms
from trainers.train import History, ProgressLog, StepDraw, build_components, train_steps, training_step
from trainers.weight_strategies import build_strategy

META = torch.device("meta")
# Ops that read a tensor's value on the host: on a GPU each one waits for the device.
VALUE_READS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default,
               torch.ops.aten.nonzero.default, torch.ops.aten.equal.default}


class ValueReads(TorchDispatchMode):
    """Counts value reads by op, and by where they come from: DeepSpeed's ZeRO optimizer or elsewhere."""

    def __init__(self):
        super().__init__()
        self.count = collections.Counter()
        self.source = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in VALUE_READS:
            self.count[str(func)] += 1
            files = [frame.filename.replace("\\", "/") for frame in traceback.extract_stack()]
            self.source["deepspeed zero" if any("deepspeed/runtime/zero/" in f for f in files) else "elsewhere"] += 1
        return func(*args, **(kwargs or {}))


def config(tmp_path, method, **overrides):
    values = dict(model="tiny-random", task="mr", train_subset=96, eval_subset=40, max_length=24, batch_size=8,
                  method=method, outer_every=2, log_every=1000, weight_log_every=3, threads=1,
                  output_dir=str(tmp_path))
    return TrainConfig(**{**values, **overrides}).validate()


class MetaEngine:
    """A DeepSpeed engine's training surface in plain torch, on the meta device."""

    device = META
    trainer_max_grad_norm = 1.0  # the trainer's clipping runs on meta too: it must read nothing

    def __init__(self, module):
        self.module = module.to(META)
        self.optimizer = torch.optim.AdamW(self.module.parameters(), lr=1e-3)

    def __call__(self, **batch):
        return self.module(**batch)

    def backward(self, loss):
        loss.backward()

    def step(self):
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("method", ["fixed", "bilevel", "clo"])
def test_training_steps_on_meta_never_read_a_value(tmp_path, method):
    cfg = config(tmp_path, method, xi=1e-3)  # a fixed ξ: the plain optimizer has one group
    model, data = build_components(cfg)
    engine = MetaEngine(model)
    strategy = build_strategy(cfg, LossTerms.build(model.num_layers, cfg.kd)).to(META)
    monitor = DivergenceMonitor(META)
    progress = ProgressLog(History(), print, 8, cfg.weight_log_every)
    # 8 steps: 4 outer steps, 2 weight logs; log_every 1000, so no check point among them
    loss = train_steps(engine, strategy, strategy.terms, data, cfg, 0, 8, progress, monitor)
    assert loss.device == META and monitor.first_step.device == META and monitor.reason.device == META
    assert [step for step, _ in progress.pending] == [3, 6], "the weights wait on the device for the next check"


@pytest.mark.parametrize("method", ["fixed", "bilevel", "clo"])
def test_deepspeed_training_steps_read_no_value_between_check_points(tmp_path, method):
    cfg = config(tmp_path, method, zero_stage=0)
    model, data = build_components(cfg)
    strategy = build_strategy(cfg, LossTerms.build(model.num_layers, cfg.kd))
    engine = ds.build_engine(model, cfg, total_steps=12)
    assert not engine.tput_timer.config.enabled, "DeepSpeed's throughput timer synchronizes on every forward"
    monitor = DivergenceMonitor(engine.device)
    progress = ProgressLog(History(), print, 12, cfg.weight_log_every)
    train_steps(engine, strategy, strategy.terms, data, cfg, 0, 2, progress, monitor)  # one-time set-up first
    with ValueReads() as reads:
        train_steps(engine, strategy, strategy.terms, data, cfg, 2, 10, progress, monitor)
    assert dict(reads.count) == {}, "value reads in 8 steady-state steps"
    progress.check(monitor, 1e-3)  # the check point reads it all, in one copy to the host
    assert [w["step"] for w in progress.history.weights] == [3, 6, 9]


def test_a_non_finite_step_is_skipped_on_the_device_and_reported_at_the_next_check(tmp_path):
    cfg = config(tmp_path, "clo", outer_every=1, log_every=5)
    model, data = build_components(cfg)
    strategy = build_strategy(cfg, LossTerms.build(model.num_layers, cfg.kd))
    engine = ds.build_engine(model, cfg, total_steps=12)
    monitor = DivergenceMonitor(engine.device)
    xi = lambda: ds.parameter_lrs(engine)  # noqa: E731
    sizes = strategy.draw_sizes(cfg.batch_size)
    for step in range(2):
        training_step(engine, strategy, strategy.terms, StepDraw(data, step, sizes, cfg.seed), step, xi, monitor)
    theta = [p.detach().clone() for p in model.parameters()]
    adam = ds.base_optimizer(engine)
    steps_before = [s["step"].clone() for s in adam.state.values()]
    # step 3 (1-based): a NaN loss. θ must not move, nor AdamW's moments or step count.
    training_step(engine, strategy, strategy.terms, StepDraw(data, 2, sizes, cfg.seed), 2, xi, monitor, fault_step=3)
    assert all(torch.equal(a, b) for a, b in zip(theta, model.parameters()))
    assert all(torch.equal(a, s["step"]) for a, s in zip(steps_before, adam.state.values()))
    # and a NaN hypergradient at step 4 leaves φ as it was
    phi = strategy.loss_weights.phi.detach().clone()
    real = strategy.combined_hypergradient
    strategy.combined_hypergradient = lambda *args: real(*args) * float("nan")
    training_step(engine, strategy, strategy.terms, StepDraw(data, 3, sizes, cfg.seed), 3, xi, monitor)
    strategy.combined_hypergradient = real
    assert torch.equal(phi, strategy.loss_weights.phi) and torch.isfinite(strategy.weights()).all()
    with pytest.raises(TrainingDiverged, match=r"^diverged at step 3 \(loss is nan\)$"):
        monitor.check()


def test_under_zero2_no_value_is_read_either(tmp_path):
    """ZeRO-2 (the 2-worker GPU presets' stage) read values inside DeepSpeed's optimizer step for its
    gradient norm and overflow checks (about 5 per step, DeepSpeed 0.19.8) while DeepSpeed clipped.
    The trainer clips on the device and turns DeepSpeed's norm off (trainers/ds_config.py): none is left."""
    cfg = config(tmp_path, "clo", zero_stage=2)
    model, data = build_components(cfg)
    strategy = build_strategy(cfg, LossTerms.build(model.num_layers, cfg.kd))
    engine = ds.build_engine(model, cfg, total_steps=12)
    monitor = DivergenceMonitor(engine.device)
    progress = ProgressLog(History(), print, 12, cfg.weight_log_every)
    train_steps(engine, strategy, strategy.terms, data, cfg, 0, 2, progress, monitor)
    with ValueReads() as reads:
        train_steps(engine, strategy, strategy.terms, data, cfg, 2, 10, progress, monitor)
    assert dict(reads.source) == {}, dict(reads.count)

"""Does the loss scale matter? Gradient norms against the clipping threshold, per arm, under the two
conventions (docs/method.md, "Loss scale").

    python benchmarks/loss_scale.py                 # MiniLM on MR, 30 steps per arm and convention
    python benchmarks/loss_scale.py --train-check   # also 1 epoch of fixed-uniform under each, on 2,000 sentences

For each arm and each convention (``mean``: L = Σ w·ℓ / n, the platform's; ``sum``: Σ w·ℓ, the
former one) it runs the trainer's own steps (``trainers.train.training_step`` on a DeepSpeed
engine, same data, seed and learning-rate schedule as a real run) and records θ's gradient norm
before clipping. It prints the median norm and the share of steps that clipping at
``max_grad_norm`` (1.0) rescales. Adam cancels a constant loss scale, clipping does not: a clipped
step's update is shrunk by a factor that changes from step to step.

``--train-check`` trains fixed-uniform (36 terms, where the two conventions differ most) for one
epoch under each and prints validation accuracy and hypervolume: one seed, so a hint, not a verdict.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from trainers import engine as ds  # noqa: E402
from trainers.config import TrainConfig  # noqa: E402
from trainers.objective import LossTerms  # noqa: E402
from trainers.divergence import DivergenceMonitor  # noqa: E402
from trainers.train import StepDraw, build_components, run, seed_everything, training_step  # noqa: E402
from trainers.weight_strategies import build_strategy  # noqa: E402

ARMS = {"fixed-uniform": {"method": "fixed", "scheme": "uniform"}, "fixed-last": {"method": "fixed", "scheme": "last"},
        "fixed-pabee": {"method": "fixed", "scheme": "pabee"}, "clo": {"method": "clo"}}


class NormProbe:
    """The engine, with θ's gradient norm read after backward, before the trainer clips it."""

    def __init__(self, engine):
        self.engine, self.module, self.optimizer, self.norms = engine, engine.module, engine.optimizer, []
        self.trainer_max_grad_norm = engine.trainer_max_grad_norm  # training_step clips at the engine's threshold

    def __call__(self, **batch):
        return self.engine(**batch)

    def backward(self, loss):
        self.engine.backward(loss)
        grads = [p.grad for p in self.module.parameters() if p.grad is not None]
        self.norms.append(torch.sqrt(sum((g.float() ** 2).sum() for g in grads)).item())

    def step(self):
        self.engine.step()


def gradient_norms(arm: str, reduction: str, args) -> list[float]:
    cfg = TrainConfig(task="mr", model="minilm", max_length=64, batch_size=32, epochs=1, seed=1, threads=args.threads,
                      loss_reduction=reduction, output_dir="/tmp/leebert-loss-scale", save_checkpoints=False,
                      wallclock_eval=False, deepspeed_config="clusters/deepspeed/cpu_zero0.json", **ARMS[arm]).validate()
    torch.set_num_threads(args.threads)
    seed_everything(cfg.seed)
    model, data = build_components(cfg)
    terms = LossTerms.build(model.num_layers, cfg.kd, cfg.temperature, data.task.is_regression, cfg.loss_reduction)
    strategy = build_strategy(cfg, terms)
    steps_per_epoch = len(data.train) // cfg.batch_size
    engine = ds.build_engine(model, cfg, steps_per_epoch)  # the real schedule: warm-up over the epoch's first 10 %
    strategy.to(engine.device)
    probe = NormProbe(engine)
    xi = lambda: ds.parameter_lrs(engine, cfg.xi)  # noqa: E731
    monitor = DivergenceMonitor(engine.device)
    for step in range(args.steps):
        draw = StepDraw(data, step, strategy.draw_sizes(cfg.batch_size), cfg.seed, device=engine.device)
        training_step(probe, strategy, terms, draw, step, xi, monitor)
    monitor.check()
    return probe.norms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="training steps per arm and convention")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-grad-norm", type=float, default=1.0, help="the trainer's clipping threshold")
    parser.add_argument("--train-check", action="store_true", help="also train fixed-uniform 1 epoch under each convention")
    args = parser.parse_args()
    started = time.perf_counter()
    print(f"θ's gradient norm before clipping, first {args.steps} steps on MR (MiniLM, batch 32, lr 5e-5, heads 1e-3, "
          f"seed 1); clipped: share of steps with norm > {args.max_grad_norm:g}\n")
    print("| arm | terms | convention | median norm | max norm | clipped |")
    print("|---|---|---|---|---|---|")
    for arm in args.arms:
        for reduction in ("sum", "mean"):
            norms = gradient_norms(arm, reduction, args)
            clipped = sum(n > args.max_grad_norm for n in norms) / len(norms)
            terms = {"fixed-uniform": 36, "fixed-last": 11, "fixed-pabee": 6, "clo": 36}[arm]
            print(f"| {arm} | {terms} | {reduction} | {statistics.median(norms):.3f} | {max(norms):.3f} | {100 * clipped:.0f} % |",
                  flush=True)
    if args.train_check:
        print("\nfixed-uniform, 1 epoch on 2,000 MR sentences, seed 1, validation (1,060 sentences):\n")
        print("| convention | last-exit accuracy | hypervolume (log axis) |\n|---|---|---|")
        for reduction in ("sum", "mean"):
            cfg = TrainConfig(task="mr", model="minilm", train_subset=2000, max_length=64, epochs=1, seed=1,
                              threads=args.threads, loss_reduction=reduction, save_checkpoints=False, wallclock_eval=False,
                              output_dir=f"/tmp/leebert-loss-scale-{reduction}-{os.getpid()}",
                              deepspeed_config="clusters/deepspeed/cpu_zero0.json")
            validation = run(cfg, quiet=True).summary.validation
            print(f"| {reduction} | {100 * validation.last_exit:.1f} % | {validation.hypervolume:.3f} |", flush=True)
    print(f"\n(took {(time.perf_counter() - started) / 60:.1f} min)")


if __name__ == "__main__":
    main()

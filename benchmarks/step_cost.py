"""What one loss-weight update costs, in fixed θ-steps: the figure the compute budget charges.

    python benchmarks/step_cost.py                                   # MiniLM on MR, batch 32, 1 and 2 threads, CPU fp32
                                                                     # (and bf16 where the CPU has avx512_bf16/amx_bf16)
    python benchmarks/step_cost.py --precision fp32 bf16 --threads 2 # CPU bf16 against fp32, 2 threads
    python benchmarks/step_cost.py --device cuda --precision bf16    # on a GPU
    python benchmarks/step_cost.py --quick                           # tiny random model: does it run?

An epoch of bilevel or clo costs 1 + c / outer_every fixed epochs (sweeps/budget.py), where c, the
``outer_step_cost``, is what one φ update adds to a θ-step, in fixed θ-steps. Per device,
precision and thread count, everything below is measured side by side in one run, so a change
in machine load hits every figure alike:

1. **Per step**, interleaved one by one (medians): a fixed step; the same step as a plain PyTorch
   loop (forward, exit losses, backward, clipping, fused AdamW, no DeepSpeed: the reference the
   engine is held to); and for bilevel and clo a step without a φ update and one with it.
   c = (t_outer − t_step) / t_fixed.
2. **Per epoch slice**: the trainer's own loop (``train_steps``: batch collation, divergence
   checks, logging) at ``--outer-every`` k, arms interleaved k steps at a time.
   c_epoch = (t_arm / t_fixed − 1) · k. If it is above c, the loop adds the difference.
3. **Host syncs**: fixed steps with the device-side divergence check (the trainer's) against
   an eager check that reads the loss every step (the trainer before 2026-12).
4. **Breakdown**: where an outer step's time goes, phase by phase (the four passes, the parameter
   backup and copies, the mode switches, φ's update, θ's own step), from the profiler.

Precisions run one after the other (each with its own engines); within a precision and thread
count the figures are interleaved as above. After the last one the output names the entries for
``sweeps/budget.py``'s ``MEASURED_OUTER_STEP_COST``: per (device, precision), c per step, the larger
over the thread counts, rounded up to 0.1 (how the table's figures were made); with two precisions
it also gives each step's fp32 / bf16 time ratio (above 1: bf16 is faster).

The last line is JSON with every figure. On a GPU, clocks are read after a synchronize.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform as std_platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from trainers import engine as ds  # noqa: E402
from trainers.config import TrainConfig, resolve_precision  # noqa: E402
from trainers.divergence import DivergenceMonitor  # noqa: E402
from trainers.objective import LossTerms, inner_loss, term_losses  # noqa: E402
from trainers.train import History, ProgressLog, StepDraw, build_components, seed_everything, train_steps, training_step  # noqa: E402
from trainers.weight_strategies import build_strategy  # noqa: E402

ARMS = {"fixed": {"method": "fixed", "scheme": "uniform"}, "bilevel": {"method": "bilevel"}, "clo": {"method": "clo"}}
NEVER = 10**9  # outer_every of a learned arm's step without a φ update


class EagerMonitor(DivergenceMonitor):
    """The divergence check as it was: the loss read on the host after every step."""

    def record_loss(self, step, loss):
        ok = super().record_loss(step, loss)
        self.check()
        return ok


class Arm:
    """One arm's engine (its own copy of the model) and its strategies with and without φ updates."""

    def __init__(self, name: str, model, base: TrainConfig, total_steps: int):
        self.cfg = TrainConfig(**{**base.to_dict(), **ARMS[name]}).validate()
        self.engine = ds.build_engine(copy.deepcopy(model), self.cfg, total_steps)
        self.terms = LossTerms.build(model.num_layers, self.cfg.kd)
        self.xi = lambda: ds.parameter_lrs(self.engine, self.cfg.xi)  # noqa: E731

    def strategy(self, outer_every: int):
        cfg = TrainConfig(**{**self.cfg.to_dict(), "outer_every": outer_every}).validate()
        return build_strategy(cfg, self.terms).to(self.engine.device)


class PlainLoop:
    """The fixed arm's step in plain PyTorch: what the DeepSpeed engine is measured against."""

    def __init__(self, model, cfg: TrainConfig, total_steps: int, device):
        self.model = copy.deepcopy(model).to(device)
        self.optimizer, self.scheduler = ds.build_optimizer(self.model, cfg, total_steps)
        self.terms, self.cfg, self.device = LossTerms.build(model.num_layers, cfg.kd), cfg, torch.device(device)
        self.weights = torch.ones(len(self.terms), device=device)

    def step(self, batch: dict) -> None:
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.precision == "bf16")
        with autocast:
            logits = self.model(**batch)
        loss = inner_loss(self.terms, self.weights, term_losses(self.terms, logits, batch["labels"]))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)


def timed(device, fn) -> float:
    ds.synchronize(device)
    start = time.perf_counter()
    fn()
    ds.synchronize(device)
    return time.perf_counter() - start


def per_step(arms: dict[str, Arm], plain: PlainLoop, data, rounds: int, warmup: int, device) -> dict[str, float]:
    """Median seconds of each kind of step, the kinds interleaved one by one."""
    steppers = {}
    for name, arm in arms.items():
        monitor = DivergenceMonitor(arm.engine.device)
        kinds = {"step": arm.strategy(NEVER)} if name == "fixed" else {"step": arm.strategy(NEVER), "outer": arm.strategy(1)}
        for kind, strategy in kinds.items():
            steppers[f"{name}/{kind}"] = (arm, strategy, monitor)
    seconds: dict[str, list[float]] = {key: [] for key in ["fixed/step", "plain/step", *steppers]}
    for index in range(warmup + rounds):
        step = 2 * index + 1  # odd: the NEVER strategies never update φ; outer_every 1 always does
        for key, (arm, strategy, monitor) in steppers.items():
            draw = StepDraw(data, step, strategy.draw_sizes(arm.cfg.batch_size), arm.cfg.seed, device=arm.engine.device)
            draw.prefetch(strategy.halves(step))  # collation is timed by the epoch slices, not here
            t = timed(device, lambda: training_step(arm.engine, strategy, arm.terms, draw, step, arm.xi, monitor))
            if index >= warmup:
                seconds[key].append(t)
            if key == "fixed/step":
                batch = strategy.theta_batch(draw.b1, draw.b2)
                t = timed(device, lambda: plain.step(batch))
                if index >= warmup:
                    seconds["plain/step"].append(t)
        for _, _, monitor in steppers.values():
            monitor.check()
    return {key: statistics.median(values) for key, values in seconds.items()}


def per_epoch(arms: dict[str, Arm], data, outer_every: int, chunks: int, device, start: int) -> dict[str, float]:
    """Seconds of ``chunks`` slices of ``outer_every`` steps of the trainer's own loop, per arm, interleaved."""
    seconds = dict.fromkeys(arms, 0.0)
    loops = {}
    for name, arm in arms.items():
        monitor = DivergenceMonitor(arm.engine.device)
        total = start + chunks * outer_every
        loops[name] = (arm.strategy(outer_every), monitor, ProgressLog(History(), lambda msg: None, total, arm.cfg.weight_log_every, start))
    for chunk in range(chunks):
        first = start + chunk * outer_every
        for name, arm in arms.items():
            strategy, monitor, progress = loops[name]
            seconds[name] += timed(device, lambda: train_steps(arm.engine, strategy, arm.terms, data, arm.cfg, first,
                                                               first + outer_every, progress, monitor))
    return seconds


def sync_check(arm: Arm, data, steps: int, rounds: int, device, start: int) -> dict[str, float]:
    """Steps/s of fixed training with the device-side check against the eager per-step one."""
    strategy = arm.strategy(NEVER)
    seconds = {"device_check": 0.0, "eager_check": 0.0}
    for index in range(rounds):
        for kind, monitor_cls in (("device_check", DivergenceMonitor), ("eager_check", EagerMonitor)):
            monitor = monitor_cls(arm.engine.device)
            first = start + (2 * index + (kind == "eager_check")) * steps
            progress = ProgressLog(History(), lambda msg: None, first + steps, arm.cfg.weight_log_every, first)
            seconds[kind] += timed(device, lambda: train_steps(arm.engine, strategy, arm.terms, data, arm.cfg, first,
                                                               first + steps, progress, monitor))
    return {kind: rounds * steps / s for kind, s in seconds.items()}


PHASES = ("g_pass", "backup_and_virtual_step", "v_pass", "perturb_copies", "fd_plus_pass", "fd_minus_pass",
          "phi_gradient", "mode_switch", "phi_update")


def breakdown(arm: Arm, data, steps: int, device) -> dict[str, float]:
    """Milliseconds per outer step in each labelled phase of the update (trainers.weight_strategies.phase),
    from the profiler; the rest of the step is θ's own step. CPU time on the CPU, device time on a GPU."""
    from torch.profiler import ProfilerActivity, profile

    strategy, monitor = arm.strategy(1), DivergenceMonitor(arm.engine.device)
    draws = [StepDraw(data, s, strategy.draw_sizes(arm.cfg.batch_size), arm.cfg.seed, device=arm.engine.device)
             .prefetch(strategy.halves(s)) for s in range(steps + 1)]
    training_step(arm.engine, strategy, arm.terms, draws[0], 0, arm.xi, monitor)  # warm-up, unprofiled
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.device(device).type == "cuda" else [])
    wall = 0.0
    with profile(activities=activities) as prof:
        for s in range(1, steps + 1):
            wall += timed(device, lambda: training_step(arm.engine, strategy, arm.terms, draws[s], s, arm.xi, monitor))
    monitor.check()
    gpu = torch.device(device).type == "cuda"
    totals = {}
    for event in prof.key_averages():
        if event.key.startswith("hypergradient/"):
            us = getattr(event, "device_time_total", 0) if gpu else event.cpu_time_total
            totals[event.key.split("/", 1)[1]] = us / 1e3 / steps
    out = {name: totals.get(name, 0.0) for name in PHASES}
    out["theta_step"] = max(0.0, wall * 1e3 / steps - sum(out.values()))
    out["outer_step"] = wall * 1e3 / steps
    return out


def print_breakdown(parts: dict[str, dict[str, float]]) -> None:
    arms = list(parts)
    print("| phase of an outer step | " + " | ".join(f"{a} ms (share)" for a in arms) + " |")
    print("|---|" + "---|" * len(arms))
    for name in (*PHASES, "theta_step"):
        cells = [f"{parts[a][name]:.1f} ({parts[a][name] / parts[a]['outer_step'] * 100:.0f} %)" for a in arms]
        print(f"| {name.replace('_', ' ')} | " + " | ".join(cells) + " |")
    print("| whole outer step | " + " | ".join(f"{parts[a]['outer_step']:.1f}" for a in arms) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", nargs="+", default=None, choices=["fp32", "bf16"],
                        help="default: fp32, and bf16 too where the device has bf16 units (a GPU with bf16; a CPU "
                             "with avx512_bf16 or amx_bf16); fp32 only with --quick")
    parser.add_argument("--threads", type=int, nargs="+", default=None,
                        help="torch CPU threads, one run each (default: 1 and 2; 1 with --quick)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=8, help="timed rounds of the per-step comparison")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--outer-every", type=int, default=6, help="outer_every of the epoch slices")
    parser.add_argument("--chunks", type=int, default=6, help="epoch slices of outer_every steps per arm")
    parser.add_argument("--sync-steps", type=int, default=10)
    parser.add_argument("--breakdown", type=int, default=4, metavar="STEPS",
                        help="profile this many outer steps per learned arm for where their time goes (0: skip)")
    parser.add_argument("--quick", action="store_true", help="tiny random model, few rounds: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.model, args.rounds, args.warmup, args.chunks, args.sync_steps = "tiny-random", 2, 1, 2, 3
        args.threads = args.threads or [1]
        args.breakdown = min(args.breakdown, 2)
    args.threads = args.threads or [1, 2]
    device = ds.select_device(args.device, "fp32")  # fails at once without CUDA
    bf16_units = resolve_precision("auto", device) == "bf16"
    precisions = args.precision or (["fp32"] + (["bf16"] if bf16_units and not args.quick else []))
    print(f"machine: {std_platform.processor() or std_platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
          + (f", {torch.cuda.get_device_name()}" if args.device == "cuda" else ""))
    results = {}
    for precision in precisions:
        base = TrainConfig(task="mr", model=args.model, max_length=args.max_length, batch_size=args.batch_size,
                           train_subset=2000, seed=1, precision=precision, device=args.device, log_every=20,
                           output_dir="/tmp/leebert-step-cost").validate()
        device = ds.select_device(base.device, precision)
        seed_everything(base.seed)
        model, data = build_components(base)
        total = 10**6  # a flat learning-rate schedule: every step does the same work
        arms = {name: Arm(name, model, base, total) for name in ARMS}
        plain = PlainLoop(model, arms["fixed"].cfg, total, device)
        print(f"\n{args.model} on MR, batch {args.batch_size}, max length {args.max_length}, {device} {precision}")
        start = 10**5  # step numbers of the epoch slices, away from the per-step ones
        for threads in args.threads:
            torch.set_num_threads(threads)
            steps = per_step(arms, plain, data, args.rounds, args.warmup, device)
            epoch = per_epoch(arms, data, args.outer_every, args.chunks, device, start)
            start += args.chunks * args.outer_every
            sync = sync_check(arms["fixed"], data, args.sync_steps, 2, device, start)
            start += 4 * args.sync_steps
            fixed = steps["fixed/step"]
            cost = {arm: (steps[f"{arm}/outer"] - steps[f"{arm}/step"]) / fixed for arm in ("bilevel", "clo")}
            epoch_cost = {arm: (epoch[arm] / epoch["fixed"] - 1) * args.outer_every for arm in ("bilevel", "clo")}
            print(f"\n{threads} thread(s): per step, median of {args.rounds} interleaved rounds")
            print("| step | s | x fixed step |")
            print("|---|---|---|")
            for key, label in (("plain/step", "plain PyTorch loop (reference)"), ("fixed/step", "fixed"),
                               ("bilevel/step", "bilevel, no φ update"), ("bilevel/outer", "bilevel, with φ update"),
                               ("clo/step", "clo, no φ update"), ("clo/outer", "clo, with φ update")):
                print(f"| {label} | {steps[key]:.3f} | {steps[key] / fixed:.2f} |")
            print(f"fixed step / plain loop step: {fixed / steps['plain/step']:.3f} (target <= 1.10)")
            print(f"outer_step_cost per step (the budget's figure): bilevel {cost['bilevel']:.2f}, clo {cost['clo']:.2f} fixed steps")
            print(f"epoch slices at outer_every {args.outer_every} ({args.chunks} x {args.outer_every} steps per arm): "
                  + ", ".join(f"{arm} {epoch[arm] / epoch['fixed']:.3f}x fixed (c = {epoch_cost[arm]:.2f})" for arm in epoch_cost))
            print(f"host syncs: {sync['device_check']:.2f} steps/s with the device-side check, "
                  f"{sync['eager_check']:.2f} with a read every step ({sync['device_check'] / sync['eager_check']:.3f}x)")
            parts = {}
            if args.breakdown:
                parts = {arm: breakdown(arms[arm], data, args.breakdown, device) for arm in ("bilevel", "clo")}
                print(f"where an outer step's time goes ({args.breakdown} profiled steps per arm):")
                print_breakdown(parts)
            results[f"{device}/{precision}/threads={threads}"] = {
                "breakdown_ms": {a: {k: round(v, 2) for k, v in p.items()} for a, p in parts.items()},
                "seconds_per_step": {k: round(v, 4) for k, v in steps.items()},
                "fixed_over_plain": round(fixed / steps["plain/step"], 3),
                "outer_step_cost": {k: round(v, 2) for k, v in cost.items()},
                "epoch_outer_step_cost": {k: round(v, 2) for k, v in epoch_cost.items()},
                "epoch_ratio": {k: round(epoch[k] / epoch["fixed"], 3) for k in ("bilevel", "clo")},
                "steps_per_s": {k: round(v, 3) for k, v in sync.items()},
            }
        for arm in arms.values():
            ds.release_engine(arm.engine)
    print_budget_entries(results, precisions, args.threads)
    print(json.dumps(results))


def budget_entry(results: dict, device: str, precision: str, threads: list[int]) -> dict[str, float]:
    """The MEASURED_OUTER_STEP_COST entry of (device, precision): per learned arm, c per step, the
    larger over the thread counts measured, rounded up to 0.1."""
    costs = [results[f"{device}/{precision}/threads={t}"]["outer_step_cost"] for t in threads]
    return {arm: math.ceil(round(max(c[arm] for c in costs), 2) * 10 - 1e-9) / 10 for arm in ("bilevel", "clo")}


def print_budget_entries(results: dict, precisions: list[str], threads: list[int]) -> None:
    """What to put into sweeps/budget.py, and (with fp32 and bf16 measured) how much faster bf16 is.
    Both land in ``results`` (the JSON line) too."""
    device = next(iter(results)).split("/")[0]
    entries = {p: budget_entry(results, device, p, threads) for p in precisions}
    results["budget_entries"] = {f"{device}/{p}": entry for p, entry in entries.items()}
    print(f"\nsweeps/budget.py MEASURED_OUTER_STEP_COST entries (c per step, the larger of threads "
          f"{', '.join(map(str, threads))}, rounded up to 0.1):")
    for precision, entry in entries.items():
        print(f'    ("{device}", "{precision}"): {json.dumps(entry)},')
    if {"fp32", "bf16"} <= set(precisions):
        ratios = {}
        print("\nfp32 / bf16 time per step (above 1: bf16 is faster; the precisions ran one after the other):")
        print("| step | " + " | ".join(f"{t} thread(s)" for t in threads) + " |")
        print("|---|" + "---|" * len(threads))
        for key in ("plain/step", "fixed/step", "bilevel/step", "bilevel/outer", "clo/step", "clo/outer"):
            row = [results[f"{device}/fp32/threads={t}"]["seconds_per_step"][key]
                   / results[f"{device}/bf16/threads={t}"]["seconds_per_step"][key] for t in threads]
            ratios[key] = {f"threads={t}": round(r, 3) for t, r in zip(threads, row)}
            print(f"| {key} | " + " | ".join(f"{r:.2f}x" for r in row) + " |")
        results["fp32_over_bf16"] = ratios


if __name__ == "__main__":
    main()

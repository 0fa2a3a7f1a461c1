"""Trainings that share one GPU, and torch.compile on the fixed step: the figures behind the packed
presets (``gpus_per_trial`` below 1, docs/gpu.md). ``benchmarks/gpu_check.py`` runs both checks.

    python benchmarks/gpu_packing.py --worker --device cuda --shape full --steps 40   # one training, JSON on the last line

``concurrent_throughput(args, n)`` starts ``n`` such workers at once on the same device (as Ray
starts ``n`` trials of 1/n GPU) and returns each one's steps/s and their sum. A worker is the fixed
arm (the cheapest step, the one most dominated by launches) on the ZeRO-0 GPU config, through the
trainer's loop, its steady state timed after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

ZERO0_GPU_CONFIG = "clusters/deepspeed/gpu_bf16_zero0.json"
WARMUP_STEPS = 5


def worker(args) -> dict:
    import torch

    from gpu_check import config, make_model, VOCAB
    from trainers import engine as ds
    from trainers.data import synthetic_task_data
    from trainers.divergence import DivergenceMonitor
    from trainers.objective import LossTerms
    from trainers.train import History, ProgressLog, train_steps
    from trainers.weight_strategies import build_strategy

    ds.select_device(args.device, args.precision)
    torch.set_num_threads(1)
    data = synthetic_task_data(1024, 64, VOCAB, args.max_length, seed=0)
    cfg = config(args, "fixed", deepspeed_config=ZERO0_GPU_CONFIG if args.precision == "bf16" else None,
                 zero_stage=0, log_every=10**6)
    model = make_model(args.shape, 0.1, seed=cfg.seed)
    if args.compile:  # dynamic: batches are padded to their longest example, so lengths vary
        model.compile(dynamic=True, backend=args.compile_backend)
    engine = ds.build_engine(model, cfg, total_steps=10**6)
    strategy = build_strategy(cfg, LossTerms.build(model.num_layers, cfg.kd)).to(engine.device)
    monitor, progress = DivergenceMonitor(engine.device), ProgressLog(History(), lambda msg: None, 10**6, 10**6)
    started = time.perf_counter()
    train_steps(engine, strategy, strategy.terms, data, cfg, 0, WARMUP_STEPS, progress, monitor)
    ds.synchronize(engine.device)
    warmup_s = time.perf_counter() - started
    start = time.perf_counter()
    train_steps(engine, strategy, strategy.terms, data, cfg, WARMUP_STEPS, WARMUP_STEPS + args.steps, progress, monitor)
    ds.synchronize(engine.device)
    rate = args.steps / (time.perf_counter() - start)
    progress.check(monitor, 0.0)  # raises if a step diverged
    return {"steps_per_s": round(rate, 3), "warmup_s": round(warmup_s, 1)}


def worker_command(args, compile_model: bool = False) -> list[str]:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--device", args.device, "--precision",
               args.precision, "--shape", args.shape, "--steps", str(args.packing_steps), "--batch-size",
               str(args.batch_size), "--max-length", str(args.max_length), "--out", str(args.out)]
    if compile_model:
        command += ["--compile", "--compile-backend", args.compile_backend]
    return command


def run_workers(commands: list[list[str]], timeout_s: float) -> list[dict]:
    """Start every command at once; each prints its figures as JSON on its last line."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    procs = [subprocess.Popen(c, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in commands]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout_s)
        if proc.returncode != 0:
            raise RuntimeError(f"a worker failed (exit {proc.returncode}): {err.strip().splitlines()[-1:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def concurrent_throughput(args, count: int) -> dict:
    figures = run_workers([worker_command(args)] * count, timeout_s=args.packing_timeout_s)
    rates = [f["steps_per_s"] for f in figures]
    return {"each": rates, "total": round(sum(rates), 3)}


def compile_speedup(args) -> dict:
    eager, compiled = (run_workers([worker_command(args, flag)], args.packing_timeout_s)[0] for flag in (False, True))
    return {"eager_steps_per_s": eager["steps_per_s"], "compiled_steps_per_s": compiled["steps_per_s"],
            "compile_warmup_s": compiled["warmup_s"], "speedup": round(compiled["steps_per_s"] / eager["steps_per_s"], 3)}


def check_packing(args):
    counts = (1, 2) if args.quick else (1, 2, 4)
    per = {n: concurrent_throughput(args, n) for n in counts}
    text = "; ".join(f"{n} at once: {f['total']:.2f} steps/s in total ({', '.join(f'{r:.2f}' for r in f['each'])})"
                     for n, f in per.items())
    return {"text": f"{text} (fixed arm, ZeRO-0)", "figures": {str(n): f for n, f in per.items()}}


def check_compile(args):
    figures = compile_speedup(args)
    return {"text": f"fixed step eager {figures['eager_steps_per_s']:.2f} steps/s, torch.compile ({args.compile_backend}) "
                    f"{figures['compiled_steps_per_s']:.2f} steps/s: x{figures['speedup']:.2f} "
                    f"(warm-up with compilation {figures['compile_warmup_s']:.0f} s)", "figures": figures}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", action="store_true", help="run one training and print its figures")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--shape", default="full", choices=["full", "quick"])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--out", type=Path, default=Path("/tmp/leebert-gpu-check"))
    args = parser.parse_args()
    if not args.worker:
        parser.error("run it through benchmarks/gpu_check.py, or with --worker")
    print(json.dumps(worker(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

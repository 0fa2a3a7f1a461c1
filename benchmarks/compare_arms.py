"""CLO vs plain bi-level vs fixed weights on MR with the embedded MiniLM, untuned: same settings,
same seeds. It measures what an epoch of each arm costs against fixed (the figure behind the
sweep's ``outer_step_cost``); the tuned comparison users should trust is ``benchmarks/study.py``
(docs/results.md).

    python benchmarks/compare_arms.py                          # 3 seeds, writes runs/compare_arms/results.md
    python benchmarks/compare_arms.py --seeds 1 --train-subset 500 --epochs 1 --results /tmp/r.md

For every seed, the four arms run back to back (so a change in machine load hits all of them),
each through the real trainer (DeepSpeed engine included). Per arm it reports, as mean ± std
over seeds:
- last-exit test accuracy;
- test accuracy and test speed-up at the 1.5x and 2x operating points: the exit-policy setting
  most accurate on validation among those with a validation speed-up of at least 1.5x (or 2x);
- the normalized test hypervolume (over the settings on the validation frontier);
- wall time per training epoch, and its ratio to fixed-uniform's in the same seed.
Finished runs are kept under --work-dir and not redone, so an interrupted benchmark resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform as std_platform
import shlex
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from trainers.config import TrainConfig  # noqa: E402
from trainers.layout import SUMMARY_FILE  # noqa: E402
from trainers.results import Summary  # noqa: E402
from trainers.train import run  # noqa: E402

ARMS = {  # arm -> its trainer options (the loss-weight method, and the fixed arms' scheme)
    "fixed-uniform": {"method": "fixed", "scheme": "uniform"},
    "fixed-pabee": {"method": "fixed", "scheme": "pabee"},
    "bilevel": {"method": "bilevel"},
    "clo": {"method": "clo"},
}


def run_one(name: str, seed: int, args) -> Summary:
    out = Path(args.work_dir) / f"{name}-seed{seed}"
    done = out / SUMMARY_FILE
    if done.is_file():
        print(f"[compare] {name} seed {seed}: already done, reusing {done}", flush=True)
        return Summary.from_dict(json.loads(done.read_text()))
    if out.exists():  # an interrupted run: start it again from scratch, same seed
        import shutil

        shutil.rmtree(out)
    cfg = TrainConfig(task="mr", model=args.model, train_subset=args.train_subset, epochs=args.epochs,
                      max_length=args.max_length, batch_size=args.batch_size, seed=seed, threads=args.threads,
                      output_dir=str(out), save_checkpoints=False, wallclock_eval=True, log_every=50,
                      **ARMS[name], **({"lr_outer": args.lr_outer} if args.lr_outer else {}),
                      **({"outer_every": args.outer_every} if args.outer_every else {}))
    print(f"[compare] {name} seed {seed}: training", flush=True)
    return run(cfg, quiet=not args.verbose).summary


def mean_std(values: list[float], scale: float = 1.0, fmt: str = "{:.1f}") -> str:
    values = [v * scale for v in values if v is not None]
    if not values:
        return "n/a"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}"


def table(results: dict[str, list[Summary]]) -> str:
    header = ("| arm | last-exit test acc. (%) | acc. @1.5x (%) | speed-up @1.5x | acc. @2x (%) | speed-up @2x "
              "| wall-clock speed-up @2x | test hypervolume | s / epoch | epoch time / fixed |")
    lines = [header, "|" + "---|" * 10]
    fixed_epoch = {s.config["seed"]: epoch_seconds(s) for s in results["fixed-uniform"]}
    for name, runs in results.items():
        at15 = [s.operating_point(1.5) for s in runs]
        at2 = [s.operating_point(2.0) for s in runs]
        lines.append("| " + " | ".join([
            name,
            mean_std([s.test.last_exit for s in runs], 100),
            mean_std([p and p.test_metric for p in at15], 100),
            mean_std([p and p.test_speedup for p in at15], 1, "{:.2f}x"),
            mean_std([p and p.test_metric for p in at2], 100),
            mean_std([p and p.test_speedup for p in at2], 1, "{:.2f}x"),
            mean_std([p and p.wallclock_speedup for p in at2], 1, "{:.2f}x"),
            mean_std([s.test.hypervolume for s in runs], 1, "{:.3f}"),
            mean_std([epoch_seconds(s) for s in runs], 1, "{:.0f}"),
            mean_std([epoch_seconds(s) / fixed_epoch[s.config["seed"]] for s in runs], 1, "{:.2f}x"),
        ]) + " |")
    return "\n".join(lines)


def epoch_seconds(summary: Summary) -> float:
    return statistics.mean(e["train_seconds"] for e in summary.epochs)


def weights_note(results: dict[str, list[Summary]]) -> str:
    lines = []
    for name in ("bilevel", "clo"):
        for s in results.get(name, [])[:1]:
            pairs = sorted(zip(s.weights.final, s.weights.names))
            lines.append(f"- {name} (seed {s.config['seed']}): lowest weights "
                         + ", ".join(f"{n} {w:.2f}" for w, n in pairs[:3]) + "; highest "
                         + ", ".join(f"{n} {w:.2f}" for w, n in pairs[-3:]))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--methods", nargs="+", help=argparse.SUPPRESS)  # renamed --arms: refused with a hint
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--train-subset", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr-outer", type=float, default=None, help="default: the trainer's")
    parser.add_argument("--outer-every", type=int, default=None, help="default: the trainer's")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work-dir", default=str(REPO / "runs" / "compare_arms"))
    parser.add_argument("--results", default=str(REPO / "runs" / "compare_arms" / "results.md"))
    parser.add_argument("--verbose", action="store_true", help="print each training's progress")
    args = parser.parse_args()
    if args.methods is not None:
        parser.error(f"--methods was renamed to --arms (\"method\" now only names a trainer's loss-weight algorithm): "
                     f"use --arms {' '.join(args.methods)}")
    if "fixed-uniform" not in args.arms:
        parser.error("--arms must include fixed-uniform: it is the reference for the time ratio")

    started = time.perf_counter()
    results: dict[str, list[Summary]] = {name: [] for name in args.arms}
    for seed in args.seeds:
        for name in args.arms:
            results[name].append(run_one(name, seed, args))
    elapsed = time.perf_counter() - started

    command = "python benchmarks/compare_arms.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    machine = (f"{os.cpu_count()} CPUs ({std_platform.machine()}), no GPU, torch {torch.__version__}, "
               f"{args.threads} torch threads")
    body = f"""# CLO vs bi-level vs fixed weights on MR

Measured by `{command.strip()}` on {time.strftime('%Y-%m-%d')}; machine: {machine}.
Setup: MR (movie-review polarity), the embedded all-MiniLM-L6-v2 (6 exits), a stratified training subset of
{args.train_subset} sentences, {args.epochs} epochs, batch {args.batch_size}, max length {args.max_length}, seeds
{', '.join(map(str, args.seeds))}; every other setting is the trainer's default (`python -m trainers.train --help`).
Operating points are chosen on validation (most accurate setting with validation speed-up ≥ target)
and reported on test. Values are mean ± std over seeds. The benchmark took {elapsed / 60:.0f} minutes of which
finished runs reused from an earlier invocation took none.

{table(results)}

Learned weights at the end of training (first seed):
{weights_note(results)}
"""
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(body)
    print(body)


if __name__ == "__main__":
    main()

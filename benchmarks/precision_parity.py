"""Does CPU bf16 cost accuracy? The same training in fp32 and in bf16, compared paired over seeds and test examples.

    python benchmarks/precision_parity.py                  # fixed-uniform, MiniLM, MR (2000 train), 1 epoch, seeds 1 2 3
    python benchmarks/precision_parity.py --method clo     # a learned arm (its g and v passes follow θ's precision)
    python benchmarks/precision_parity.py --seeds 1 2 3 4 5 --train-subset 4000 --epochs 2
    python benchmarks/precision_parity.py --quick          # tiny random model, a few dozen examples: does it run?

What it measures. One configuration (default: fixed-uniform weights, the embedded MiniLM, task mr, a
stratified ``train_subset`` of 2000, 1 epoch, max_length 64, batch 32, 2 threads, DeepSpeed ZeRO-0
from ``clusters/deepspeed/cpu_zero0.json``, no checkpoints, no wall-clock evaluation) is trained by
the real trainer (``trainers.train.run``) on the CPU in both precisions, for every seed, the
precisions interleaved (fp32 seed 1, bf16 seed 1, fp32 seed 2, ...) so that a drift in machine load
hits both alike. Within a seed everything but the precision is equal: data, initial weights and
dropout streams. bf16 is the trainer's: autocast for θ's passes with fp32 master weights, the
losses in fp32, the finite-difference sides of a learned arm's hypergradient in fp32. Both
precisions are evaluated in fp32 (the trainer evaluates outside autocast), so what is compared is
the weights each precision trained.

Per run: last-exit test accuracy, test hypervolume (over the exit-policy settings the run's own
validation frontier chose), per-exit test accuracies and the training seconds (the epochs' training
loops, evaluation excluded). Then bf16 − fp32 of last-exit accuracy and of the hypervolume, with the
paired bootstrap of ``sweeps/statistics.py`` the sweep's final comparison uses: one resample plan
over seeds and test examples for both precisions, so what a seed or an example does to both cancels.

How to read it:
- **verdict "bf16 is as accurate within noise"**: both 95 % intervals contain 0 and lie within
  ±1 point (accuracy and the normalized hypervolume are fractions; a point is 0.01). That is the
  condition for making bf16 (``precision: auto``) the CPU default.
- an interval wholly below (above) 0: bf16 trains a less (more) accurate model by about that much.
- an interval that contains 0 but reaches beyond ±1 point: no difference detected, and none ruled
  out either: run more seeds (``--seeds``) or a larger training set.
- **training time fp32 / bf16**: the median over seeds of each seed's ratio; above 1, bf16 trains
  faster. Measure it on an idle machine: the runs are interleaved, not isolated from other load.

A markdown table goes to stdout, and the last line is JSON with every figure. Finished runs are kept
under ``--work-dir`` (summary.json and the test logits) and reused when their configuration matches,
so an interrupted benchmark resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform as std_platform
import shutil
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from sweeps import statistics as bs  # noqa: E402
from trainers.config import TrainConfig, cpu_bf16_flag  # noqa: E402
from trainers.layout import SUMMARY_FILE, TEST_LOGITS_FILE  # noqa: E402
from trainers.policies import SavedOutcomes  # noqa: E402
from trainers.results import Summary  # noqa: E402
from trainers.run_files import load_exit_logits  # noqa: E402
from trainers.train import run  # noqa: E402

PRECISIONS = ("fp32", "bf16")
WITHIN = 0.01  # parity bound: ±1 point of accuracy (or of the normalized hypervolume)


@dataclass
class Run:
    """One trained model on test, reduced to what the comparison needs."""

    precision: str
    seed: int
    summary: Summary
    ids: np.ndarray             # [N] test example ids
    last_correct: np.ndarray    # [N] 0/1 of the last exit
    front_exits: np.ndarray     # [S, N] exit layer of every validation-frontier setting
    front_correct: np.ndarray   # [S, N] 0/1 at that setting

    @property
    def per_exit(self) -> list[float]:
        return [e[self.summary.metric] for e in self.summary.test.per_exit]


def train_config(args, precision: str, seed: int, out: Path) -> TrainConfig:
    arm = {"method": args.method, **({"scheme": args.scheme} if args.method == "fixed" else {})}
    return TrainConfig(task="mr", model=args.model, train_subset=args.train_subset, epochs=args.epochs,
                       max_length=args.max_length, batch_size=args.batch_size, threads=args.threads, seed=seed,
                       precision=precision, device="cpu", deepspeed_config=args.deepspeed_config,
                       wallclock_eval=False, save_checkpoints=False, output_dir=str(out), log_every=50,
                       **arm).validate()


def train_or_reuse(args, precision: str, seed: int, label: str) -> Summary:
    out = Path(args.work_dir) / f"{label}-{precision}-seed{seed}"
    cfg = train_config(args, precision, seed, out)
    done, logits = out / SUMMARY_FILE, out / TEST_LOGITS_FILE
    if done.is_file() and logits.is_file():
        summary = Summary.from_dict(json.loads(done.read_text()))
        if summary.config == json.loads(json.dumps(cfg.to_dict())):
            print(f"[parity] {precision} seed {seed}: already done, reusing {out}", flush=True)
            return summary
    if out.exists():  # interrupted, or trained with other settings: again, from scratch
        shutil.rmtree(out)
    print(f"[parity] {precision} seed {seed}: training", flush=True)
    summary = run(cfg, quiet=not args.verbose).summary
    print(f"[parity] {precision} seed {seed}: last-exit test accuracy {summary.test.last_exit * 100:.2f} %, "
          f"hypervolume {summary.test.hypervolume:.4f}, {summary.train_seconds():.1f} s training", flush=True)
    return summary


def load_run(args, precision: str, seed: int, label: str, summary: Summary) -> Run:
    """The run's test logits, and what its last exit and its validation-frontier settings get right."""
    out = Path(args.work_dir) / f"{label}-{precision}-seed{seed}"
    logits, labels, ids = load_exit_logits(out / TEST_LOGITS_FILE)
    outcomes = SavedOutcomes(logits, labels)
    front_exits, front_correct = outcomes.frontier(summary.frontier)
    return Run(precision=precision, seed=seed, summary=summary, ids=ids, last_correct=outcomes.last_correct(),
               front_exits=front_exits, front_correct=front_correct)


def parity(ci: bs.Interval) -> tuple[bool, str]:
    """(within noise and ±1 point, what the interval says)."""
    if ci.low <= 0 <= ci.high:
        if ci.low >= -WITHIN and ci.high <= WITHIN:
            return True, "as accurate within noise"
        return False, "no detectable difference, but the interval reaches beyond ±1 point (inconclusive: more seeds)"
    return False, f"bf16 {'less' if ci.high < 0 else 'more'} accurate"


def compare(runs: dict[str, list[Run]], n_boot: int) -> dict[str, bs.Interval]:
    """bf16 − fp32 of last-exit accuracy and hypervolume, one paired resample plan over seeds and examples."""
    fp32, bf16 = runs["fp32"], runs["bf16"]
    plan = bs.resample_plan(len(fp32), len(fp32[0].ids), n_boot=n_boot, seed=0)

    def accuracy(group: list[Run]):
        correct = np.stack([r.last_correct for r in group])
        return bs.point_values_accuracy(correct), bs.accuracy_replicates(correct, plan)

    def hv(group: list[Run]):
        exits, correct = [r.front_exits for r in group], [r.front_correct for r in group]
        first = group[0].summary
        ref, layers, axis = float(first.test.reference_metric), int(first.num_exits), first.hypervolume_axis
        return (bs.point_values_hypervolume(exits, correct, layers, ref, axis),
                bs.hypervolume_replicates(exits, correct, layers, ref, plan, axis))

    out = {}
    for name, measure in (("last_exit", accuracy), ("hypervolume", hv)):
        (b_point, b_reps), (f_point, f_reps) = measure(bf16), measure(fp32)
        out[name] = bs.paired_difference(b_point, f_point, b_reps, f_reps, plan)
        out[name + "/points"] = (f_point, b_point)  # per seed, for the table
    return out


def mean_std(values, scale: float = 1.0, digits: int = 2) -> str:
    values = [v * scale for v in values]
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds (default: 1 2 3; 1 with --quick)")
    parser.add_argument("--method", default="fixed", choices=["fixed", "bilevel", "clo"])
    parser.add_argument("--scheme", default="uniform", choices=["uniform", "pabee", "last"], help="fixed weights' scheme")
    parser.add_argument("--model", default="minilm", help="minilm (embedded), tiny-random, or a local model folder")
    parser.add_argument("--train-subset", type=int, default=2000, help="stratified training sample of MR")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads of every run")
    parser.add_argument("--deepspeed-config", default="clusters/deepspeed/cpu_zero0.json")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples of the paired intervals")
    parser.add_argument("--work-dir", default="runs/precision_parity", help="runs are kept here and reused")
    parser.add_argument("--verbose", action="store_true", help="the trainer's own progress lines")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: tiny random model, 48 training examples, max length 24, batch 16, 1 thread, "
                             "200 resamples")
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.train_subset, args.max_length, args.batch_size = "tiny-random", 48, 24, 16
        args.threads, args.bootstrap = 1, min(args.bootstrap, 200)
        args.seeds = args.seeds or [1]
    args.seeds = args.seeds or [1, 2, 3]
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds must not repeat a seed (got {args.seeds})")
    label = args.method if args.method != "fixed" else f"fixed-{args.scheme}"
    flag = cpu_bf16_flag()
    print(f"machine: {std_platform.processor() or std_platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}; "
          + (f"the CPU has {flag} (precision auto: bf16)" if flag else
             "the CPU has no bf16 units (precision auto: fp32; bf16 here is emulated, its times say nothing)"))
    setting = (f"{label}, {args.model}, mr, train_subset {args.train_subset}, {args.epochs} epoch(s), max_length "
               f"{args.max_length}, batch {args.batch_size}, {args.threads} thread(s), {Path(args.deepspeed_config).name}")
    print(f"[parity] {setting}; seeds {' '.join(map(str, args.seeds))}, precisions interleaved per seed", flush=True)

    runs: dict[str, list[Run]] = {p: [] for p in PRECISIONS}
    for seed in args.seeds:
        for precision in PRECISIONS:
            summary = train_or_reuse(args, precision, seed, label)
            if summary.config.get("precision") != precision:
                raise SystemExit(f"error: the {precision} run recorded precision {summary.config.get('precision')!r}")
            runs[precision].append(load_run(args, precision, seed, label, summary))
    every = [r for p in PRECISIONS for r in runs[p]]
    if any(not np.array_equal(r.ids, every[0].ids) for r in every):
        raise SystemExit("error: the runs were tested on different test examples; the pairing needs the same test set")

    cis = compare(runs, args.bootstrap)
    ratios = [f.summary.train_seconds() / max(b.summary.train_seconds(), 0.01) for f, b in zip(runs["fp32"], runs["bf16"])]
    n_test = len(every[0].ids)

    lines = [f"## Runs ({setting})", "",
             "| seed | precision | last-exit test acc. (%) | test hypervolume | per-exit test acc. (%) | train s |",
             "|---|---|---|---|---|---|"]
    for f, b in zip(runs["fp32"], runs["bf16"]):
        for r in (f, b):
            lines.append(f"| {r.seed} | {r.precision} | {r.summary.test.last_exit * 100:.2f} | "
                         f"{r.summary.test.hypervolume:.4f} | {' '.join(f'{a * 100:.1f}' for a in r.per_exit)} | "
                         f"{r.summary.train_seconds():.1f} |")
    lines += ["", f"## bf16 − fp32, paired over {len(args.seeds)} seed(s) × {n_test} test examples "
                  f"(95 % bootstrap interval, {args.bootstrap} resamples)", "",
              "| metric | fp32 | bf16 | bf16 − fp32 [95 % interval] | |", "|---|---|---|---|---|"]
    figures, verdicts, ok = {}, {}, True
    for name, title in (("last_exit", "last-exit test accuracy (%)"), ("hypervolume", "test hypervolume (x100)")):
        ci, (f_point, b_point) = cis[name], cis[name + "/points"]
        within, says = parity(ci)
        ok &= within
        verdicts[name] = says
        lines.append(f"| {title} | {mean_std(f_point, 100)} | {mean_std(b_point, 100)} | {bs.describe(ci)} | {says} |")
        figures[name] = {"fp32": [float(v) for v in f_point], "bf16": [float(v) for v in b_point],
                         "fp32_mean": float(np.mean(f_point)), "bf16_mean": float(np.mean(b_point)),
                         "difference": ci.estimate, "low": ci.low, "high": ci.high, "level": ci.level,
                         "within_noise_and_1_point": within, "verdict": says}
    seconds = {p: [r.summary.train_seconds() for r in runs[p]] for p in PRECISIONS}
    ratio = statistics.median(ratios)
    lines += ["", f"training time fp32 / bf16: **{ratio:.2f}x** (median over seeds; per seed "
                  f"{', '.join(f'{x:.2f}' for x in ratios)}); median train s: fp32 {statistics.median(seconds['fp32']):.1f}, "
                  f"bf16 {statistics.median(seconds['bf16']):.1f}"]
    if ok:
        verdict = "bf16 is as accurate within noise (last-exit accuracy and hypervolume: both 95 % intervals contain 0 and lie within ±1 point)"
    else:
        verdict = "bf16 differs: " + "; ".join(f"{name.replace('_', '-')} {bs.describe(cis[name])}: {verdicts[name]}"
                                               for name in ("last_exit", "hypervolume") if not parity(cis[name])[0])
    lines.append(f"verdict: {verdict}")
    print("\n" + "\n".join(lines), flush=True)

    payload = {
        "setting": {"method": args.method, "scheme": args.scheme if args.method == "fixed" else None, "model": args.model,
                    "task": "mr", "train_subset": args.train_subset, "epochs": args.epochs, "max_length": args.max_length,
                    "batch_size": args.batch_size, "threads": args.threads, "deepspeed_config": args.deepspeed_config,
                    "seeds": args.seeds, "bootstrap": args.bootstrap, "test_examples": n_test, "cpu_bf16_flag": flag},
        "runs": [{"seed": r.seed, "precision": r.precision, "last_exit": r.summary.test.last_exit,
                  "hypervolume": r.summary.test.hypervolume, "per_exit": r.per_exit,
                  "train_seconds": r.summary.train_seconds(), "wall_time_s": r.summary.wall_time_s} for r in every],
        **figures,
        "time_ratio_fp32_over_bf16": ratio, "time_ratios": ratios,
        "train_seconds_median": {p: statistics.median(v) for p, v in seconds.items()},
        "parity": ok, "verdict": verdict,
    }
    print(json.dumps(payload, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())

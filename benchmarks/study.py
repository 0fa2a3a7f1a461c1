"""The study behind docs/results.md: CLO against every baseline on full MR, tuned and seed-replicated.

    python benchmarks/study.py                  # start the study, or continue it where it stopped
    python benchmarks/study.py --results /tmp/results.md --set budget_epochs=2 --name small   # a smaller one

It runs ``platform/sweep.py``'s whole pipeline with the ``mr-study`` preset (sweeps/presets/mr-study.yaml):
a search per arm under one compute budget, then each arm's best configuration (chosen on validation)
retrained with 3 seeds on the full training set and compared on test with paired bootstrap
intervals. Every finished trial and seed is kept, so an interrupted study (Ctrl-C, a closed
session) continues from there when the command is run again; the time of every invocation is
added up and reported. It ends by writing docs/results.md from the sweep's results: the budget,
what each arm's search used and chose, the final table, the intervals and verdicts, and the
learned weights of bilevel and clo over training.
"""

from __future__ import annotations

import argparse
import json
import os
import platform as std_platform
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a private local Ray on 127.0.0.1
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sweeps.config import (STATE_FILE, SweepInterrupted, build_config, resume_config,  # noqa: E402
                           start_config)
from trainers.errors import ConfigError  # noqa: E402

TIME_FILE = "study_time.json"


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", default="mr-study", help="the study's sweep name (default: mr-study)")
    p.add_argument("--root", default=str(REPO / "runs" / "study"), help="folder of the study's sweep")
    p.add_argument("--results", default=str(REPO / "docs" / "results.md"), help="the markdown file to write")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                   help="sweep config override for a new study (ignored when continuing one)")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    cfg = build_config(preset="mr-study", overrides=args.set, flags={"name": args.name, "root": args.root})
    resume = (cfg.sweep_dir / STATE_FILE).is_file()
    cfg = resume_config(cfg) if resume else start_config(cfg)
    print(f"[study] {'continuing' if resume else 'starting'} the study '{cfg.name}' in {cfg.sweep_dir}", flush=True)
    from sweeps.runner import run_sweep

    started = time.time()
    try:
        result = run_sweep(cfg, resume=resume)
    except (SweepInterrupted, KeyboardInterrupt) as err:
        add_time(cfg.sweep_dir, started, finished=False)
        print(f"[study] stopped ({err or 'Ctrl-C'}); run the same command again to continue", file=sys.stderr)
        return 130
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    total = add_time(cfg.sweep_dir, started, finished=True)
    if result.final is None:
        print("error: the study has no final stage (final_seeds is empty); nothing to write", file=sys.stderr)
        return 2
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(results_markdown(result, total, args))
    print(f"[study] wrote {args.results}", flush=True)
    return 0


def add_time(folder: Path, started: float, finished: bool) -> dict:
    """Append this invocation's wall time to the study's record; returns the record."""
    path = folder / TIME_FILE
    record = json.loads(path.read_text()) if path.is_file() else {"invocations": []}
    record["invocations"].append({"started": time.strftime("%Y-%m-%d %H:%M", time.gmtime(started)),
                                  "seconds": round(time.time() - started, 1), "finished": finished})
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(path)
    return record


# ---------------------------------------------------------------------------- the document
def results_markdown(result, timing: dict, args) -> str:
    from sweeps.report import compute_used

    cfg, final = result.cfg, result.final
    seconds = sum(i["seconds"] for i in timing["invocations"])
    command = "python benchmarks/study.py" + "".join(f" {shlex.quote(a)}" for a in sys.argv[1:])
    docs = Path(args.results).parent
    frontiers = docs / "results-frontiers.png"
    shutil.copy2(final.files["frontiers_png"], frontiers)
    weights_png = docs / "results-weights.png"
    weights_plot(final.results, weights_png)
    train = cfg.train
    final_train = {**train, **cfg.final_train}
    search_rows = ["| arm | trials | compute used (fixed-epochs) | train time | search | chosen on validation | val. hypervolume |",
                   "|---|---|---|---|---|---|---|"]
    for outcome in result.outcomes:
        used, secs = compute_used(cfg, outcome)
        best = outcome.best
        chosen = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(best.sampled.items())) if best else "–"
        search_rows.append(f"| {outcome.method} | {len(outcome.records)} | {used:.2f} / {cfg.budget_epochs:g} | "
                           f"{secs / 60:.1f} min | {outcome.search_algorithm} | {chosen} | "
                           f"{best.objective:.3f} |" if best else f"| {outcome.method} | {len(outcome.records)} | – | – | – | – | – |")
    machine = f"{os.cpu_count()} CPUs ({std_platform.machine()}), no GPU"
    invocations = len(timing["invocations"])
    verdicts = "\n".join(f"- {line}" for line in final.verdicts.values())
    some = next(r for seeds in final.results.values() for r in seeds)
    sizes = final_sizes(result)
    arms = "\n".join(f"  - `{arm}`: {ARM_TEXT.get(arm, arm)}" for arm in cfg.methods)
    pace = epoch_pace(result)
    costs = ", ".join(f"{o.method} {o.cost.outer_step_cost:g}" for o in result.outcomes if o.cost and o.cost.learned) or "no learned arm"
    return f"""# CLO against every baseline on MR: tuned, {len(cfg.final_seeds)} seeds, paired intervals

Regenerate: `{command.strip()}` (resumable: run it again after an interruption).
Measured on {time.strftime('%Y-%m-%d')}; machine: {machine}. The whole study took
**{seconds / 3600:.1f} hours** of wall time over {invocations} invocation(s), search and final stage together.

## Summary

{verdicts}

{where_clo_loses(final, cfg.reference_arm)}

## Setup, and why this size
- **Task and model.** MR sentence polarity (the corpus SST-2 was built from; embedded in the
  package): {sizes}. Model `{train['model']}` with {some.num_layers} exits. Max length {train['max_length']},
  batch {train['batch_size']}, fp32 on CPU, DeepSpeed ZeRO-0. One loss-scale convention for every arm (the
  weighted mean of the loss terms, docs/method.md "Loss scale"); hypervolume on the
  {some.axis} speed-up axis (docs/method.md "Hypervolume").
- **Arms:**
{arms}
- **Search**, per arm: {train.get('train_subset') or 'all'} training sentences (a stratified sample), {train['epochs']} epoch(s)
  per trial, objective: validation hypervolume. Budget: **{cfg.budget_epochs:g} fixed-epochs of training
  compute per arm**; an epoch of a learned arm costs 1 + outer_step_cost/outer_every fixed-epochs ({costs})
  (docs/method.md "Budgets"), so the learned arms pay for their outer updates and get fewer
  trials. The fixed arms search 2 learning rates; the learned arms also lr_outer and outer_every.
- **Final stage**, per arm: the configuration chosen on validation, retrained with seeds
  {', '.join(map(str, cfg.final_seeds))} on {'all' if final_train.get('train_subset') is None else final_train['train_subset']} training sentences for {final_train['epochs']} epoch(s); every model
  tested on the whole test set. Exit-policy settings (patience, entropy, confidence) are chosen on
  each model's validation curve; test only reports.
- **Why this size.** {pace} On 2 cores that makes each final training minutes to a quarter of
  an hour, and the searches about as much again. A search TPE could model (8+ trials per arm)
  or more seeds would take a day, so every search here is **random search**, and says so.

## What each arm's search used and chose

{chr(10).join(search_rows)}

## Final stage: test, mean ± std over seeds

{final.table}

Accuracy @Nx: test accuracy at the exit-policy setting each model's validation curve chose as the
most accurate with at least N-times speed-up, with the test speed-up it reached in brackets.
Wall-clock speed-up: full forward time over early-exit time at the 2x setting on the whole test
set (batch 128), the median of {cfg.timing_repeats} timed passes per model, one model at a time after all
training, for {'every model' if not cfg.timing_seeds else f'the first {cfg.timing_seeds} seed(s) of each arm'}.

![mean test frontiers](results-frontiers.png)

## Is CLO better? Paired differences, {cfg.reference_arm} minus each arm

Points of accuracy (hypervolume × 100), with 95 % intervals from {cfg.bootstrap} bootstrap replicates
that resample seeds and test examples together, paired by seed and by example.
"better" / "worse": the whole interval is above / below 0.

{final.differences}

{verdicts}

## What the learned weights did

{weights_text(final.results)}

![learned weights over training](results-weights.png)
"""


ARM_TEXT = {
    "fixed-uniform": "LeeBERT's objective with every weight 1 (cross-entropy at every exit, distillation between all exits)",
    "fixed-pabee": "PABEE's weighted average of the exits' cross-entropies, no distillation",
    "fixed-last": "cross-entropy at every exit plus distillation from the last exit",
    "bilevel": "the weights learned by DARTS-style bi-level optimization (θ sees D1, the weights D2)",
    "clo": "the weights learned by LeeBERT's cross-level optimization (both levels see both halves)",
}


def final_sizes(result) -> str:
    """'8483 training sentences in the final stage, 1060 test sentences', from the final runs themselves."""
    examples = {r.summary.train_examples for arm in result.final.finals for r in arm.records if r.summary}
    tested = {len(r.labels) for seeds in result.final.results.values() for r in seeds}
    return (f"{'/'.join(str(e) for e in sorted(examples))} training sentences in the final stage, "
            f"{'/'.join(str(n) for n in sorted(tested))} test sentences")


def epoch_pace(result) -> str:
    """One sentence on the measured cost of a final-stage epoch, per arm."""
    per_arm = {arm.arm: [e["train_seconds"] for r in arm.records if r.summary for e in r.summary.epochs]
               for arm in result.final.finals}
    parts = [f"{arm} {statistics.mean(v) / 60:.1f}" for arm, v in per_arm.items() if v]
    if not parts:
        return ""
    cfg = result.cfg
    return (f"One epoch of the final stage took, in minutes (mean over seeds; "
            f"{cfg.final_max_concurrent or cfg.max_concurrent} trainings ran at once, one thread each, on a machine "
            f"other work may have shared): " + ", ".join(parts) + ".")


def where_clo_loses(final, reference: str) -> str:
    """Plain sentences: on which metrics the reference arm is detectably worse, or better."""
    lines = []
    for row in final.rows:
        if row["arm"] == reference:
            continue
        worse = [k[len("verdict_"):] for k, v in row.items() if k.startswith("verdict_") and v == "worse"]
        better = [k[len("verdict_"):] for k, v in row.items() if k.startswith("verdict_") and v == "better"]
        if worse:
            lines.append(f"- {reference} is detectably worse than {row['arm']} on: {', '.join(worse)}.")
        if better:
            lines.append(f"- {reference} is detectably better than {row['arm']} on: {', '.join(better)}.")
        if not worse and not better:
            lines.append(f"- {reference} and {row['arm']}: no detectable difference on any metric.")
    return "\n".join(lines)


def _trajectory(weights) -> list[tuple[int, list[float]]]:
    """(step, weights) from a ``trainers.results.WeightsSummary``, starting at the initial 1.0s."""
    return [(0, [1.0] * len(weights.names))] + [(int(e["step"]), e["weights"]) for e in weights.trajectory]


def weights_text(results: dict) -> str:
    lines = []
    for arm in ("bilevel", "clo"):
        seeds = [r for r in results.get(arm, []) if r.weights]
        if not seeds:
            continue
        names = seeds[0].weights.names
        ce = [i for i, n in enumerate(names) if n.startswith("ce/")]
        kd = [i for i, n in enumerate(names) if n.startswith("kd/")]
        lines.append(f"**{arm}** (mean over seeds {', '.join(str(r.seed) for r in seeds)}; weights start at 1.0):\n")
        lines.append("| step | mean CE weight | mean KD weight | CE weight by exit (1 to L) | lowest | highest |")
        lines.append("|---|---|---|---|---|---|")
        trajectories = [_trajectory(r.weights) for r in seeds]
        length = min(len(t) for t in trajectories)
        picks = sorted({0, length // 4, length // 2, 3 * length // 4, length - 1})
        for index in picks:
            step = trajectories[0][index][0]
            mean_w = [statistics.mean(t[index][1][i] for t in trajectories) for i in range(len(names))]
            order = sorted(range(len(names)), key=lambda i: mean_w[i])
            lines.append(f"| {step} | {statistics.mean(mean_w[i] for i in ce):.3f} | "
                         f"{statistics.mean(mean_w[i] for i in kd) if kd else float('nan'):.3f} | "
                         + " ".join(f"{mean_w[i]:.2f}" for i in ce)
                         + f" | {names[order[0]]} {mean_w[order[0]]:.2f} | {names[order[-1]]} {mean_w[order[-1]]:.2f} |")
        lines.append("")
    return "\n".join(lines) if lines else "No learned arm finished a seed."


def weights_plot(results: dict, path: Path) -> Path:
    """Mean CE and mean KD weight over training steps, per learned arm and seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, arm in zip(axes, ("bilevel", "clo")):
        for r in results.get(arm, []):
            if not r.weights:
                continue
            names = r.weights.names
            traj = _trajectory(r.weights)
            steps = [s for s, _ in traj]
            for prefix, style in (("ce/", "-"), ("kd/", "--")):
                idx = [i for i, n in enumerate(names) if n.startswith(prefix)]
                ax.plot(steps, [statistics.mean(w[i] for i in idx) for _, w in traj], style,
                        label=f"seed {r.seed}: mean {prefix[:-1].upper()} weight")
        ax.axhline(1.0, color="k", lw=0.8, ls=":")
        ax.set_title(arm)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("weight (mean 1 over all terms)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(main())

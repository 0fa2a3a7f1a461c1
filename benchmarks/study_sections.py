"""What a study's section of the results document says: the text, tables and plots written from a
finished study (benchmarks/study.py)."""

from __future__ import annotations

import os
import platform as std_platform
import shutil
import statistics
import time
from pathlib import Path

from benchmarks.study_clock import TIME_FILE, command_line
from benchmarks.study_document import PLACEHOLDER

REPO = Path(__file__).resolve().parents[1]


TASK_TEXT = {
    "mr": ("MR", "MR sentence polarity (the corpus SST-2 was built from; embedded in the package)", "sentences"),
    "snli": ("SNLI", "SNLI natural-language inference: premise/hypothesis pairs, 3 classes (entailment, neutral, "
                     "contradiction), from the official SNLI release (embedded in the package)", "pairs"),
}
ABOUT = {  # what a study that has not run yet takes
    "mr-study": "about 2.5 hours on 2 idle cores in fp32, less where bf16 applies",
    "snli-study": "about 3 hours on 2 cores in fp32, less where bf16 applies, sized in the preset's header",
}
CHANGES = {  # per preset: a paragraph whoever runs the study fills in (kept across reruns once filled)
    "mr-study": f"""<!-- keep:changes -->
**What changed since the superseded 2026-11 verdicts:** … *({PLACEHOLDER}: the MR study fills this
in after its rerun: which of the 2026-11 verdicts, `git show 8fdfaa4:docs/results.md`, still hold
and which changed. Replace this parenthesis with that account; once it is gone, study.py keeps the
paragraph whenever it rewrites the section.)*
The 2026-11 run was superseded because its conditions differed between the arms, and this code
changes them: (1) the dropout defect: `build_model` left the backbone in eval mode, so the fixed
arms trained without the backbone's dropout while bilevel and clo trained with it (fixed in
`trainers/model.py::build_model`); (2) the budget charged a loss-weight update 4.2 fixed steps,
measured it costs 2.4 (bilevel) and 2.5 (clo) on this CPU (docs/method.md, "What an outer step
costs"), so the learned arms had got fewer trials than the same compute buys; (3) the comparison
fixes: trials ASHA stops are told to Optuna as PRUNED, ASHA's state is kept across `--resume`,
speed-ups are timed in a timing phase of their own on a quiet device after all training, and every
preset that compares arms gives them a compute budget, with no budget left unspent.
<!-- /keep:changes -->""",
    "snli-study": f"""<!-- keep:changes -->
**What this study says:** … *({PLACEHOLDER}: whoever runs the SNLI study fills this in: the
verdicts in words, what the learned weights did, and how the answer compares with MR's. Once this
parenthesis is gone, study.py keeps the paragraph whenever it rewrites the section.)*
<!-- /keep:changes -->""",
}


def task_text(task: str) -> tuple[str, str, str]:
    """(short name, description, what one example is) of a task."""
    return TASK_TEXT.get(task, (task.upper(), f"the task `{task}`", "examples"))


def study_title(task: str) -> str:
    return f"## {task_text(task)[0]}: CLO against every baseline"


def pending_section(preset: str, task: str) -> str:
    """The section of a study that has not run yet on this code."""
    return f"""{study_title(task)}

Not run yet on this code; run `python benchmarks/study.py --preset {preset}`
({ABOUT.get(preset, 'hours')}; resumable: run it again after an interruption).

{CHANGES.get(preset, '')}
"""


def shown_path(path: Path) -> Path:
    """``path`` relative to the repository when it lies inside it."""
    return path.relative_to(REPO) if path.is_relative_to(REPO) else path


def duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} hours" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def invocations_table(timing: dict) -> str:
    rows = ["| # | started (UTC) | wall time | ended | command | commit |", "|---|---|---|---|---|---|"]
    for number, inv in enumerate(timing["invocations"], 1):
        commit = inv.get("commit") or {}
        commit_text = (f"`{commit.get('hash', 'unknown')}`" + (" + uncommitted changes" if commit.get("dirty") else "")
                       if commit else "not recorded")
        command = f"`{inv['command']}`".replace("|", "\\|") if inv.get("command") else "not recorded"
        rows.append(f"| {number} | {inv['started']} | {duration(inv['seconds'])} | "
                    f"{'finished' if inv['finished'] else 'interrupted'} | {command} | {commit_text} |")
    return "\n".join(rows)


def budget_text(cfg, costs: str) -> str:
    """The search's compute rule: a budget in fixed-epochs, or (budget_epochs null) a trial count."""
    if cfg.budget_epochs is None:
        return (f"Budget: **none: {cfg.trials} trials per arm**, so a learned arm, whose epoch costs 1 + "
                f"outer_step_cost/outer_every fixed-epochs ({costs}), spends more compute than a fixed one "
                "(docs/method.md \"Budgets\").")
    return (f"Budget: **{cfg.budget_epochs:g} fixed-epochs of training compute per arm**; an epoch of a learned arm\n"
            f"  costs 1 + outer_step_cost/outer_every fixed-epochs ({costs}) (docs/method.md \"Budgets\"), so the\n"
            "  learned arms pay for their outer updates and get fewer trials.")


def section_markdown(result, timing: dict, results_path: Path) -> str:
    """The study's section of the results document (without its markers); writes its two plots
    beside the document."""
    from sweeps.report import compute_used

    cfg, final = result.cfg, result.final
    short, about_task, unit = task_text(cfg.train.get("task", "mr"))
    seconds = sum(i["seconds"] for i in timing["invocations"])
    docs = results_path.parent
    frontiers = docs / f"results-{cfg.name}-frontiers.png"
    shutil.copy2(final.files["frontiers_png"], frontiers)
    weights_png = docs / f"results-{cfg.name}-weights.png"
    weights_plot(final.results, weights_png)
    train = cfg.train
    final_train = {**train, **cfg.final_train}
    search_rows = ["| arm | trials | compute used (fixed-epochs) | train time | search | chosen on validation | val. hypervolume |",
                   "|---|---|---|---|---|---|---|"]
    for outcome in result.outcomes:
        used, secs = compute_used(cfg, outcome)
        best = outcome.best
        chosen = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(best.sampled.items())) if best else "–"
        of_budget = f" / {cfg.budget_epochs:g}" if cfg.budget_epochs is not None else ""  # none: a trial count
        search_rows.append(f"| {outcome.arm} | {len(outcome.records)} | {used:.2f}{of_budget} | "
                           f"{secs / 60:.1f} min | {outcome.search_algorithm} | {chosen} | "
                           f"{best.objective:.3f} |" if best else f"| {outcome.arm} | {len(outcome.records)} | – | – | – | – | – |")
    machine = f"{os.cpu_count()} CPUs ({std_platform.machine()}), no GPU"
    invocations = len(timing["invocations"])
    verdicts = "\n".join(f"- {line}" for line in final.verdicts.values())
    some = next(r for seeds in final.results.values() for r in seeds)
    trained_in = {r.summary.config.get("precision") for f in final.finals for r in f.records if r.summary is not None}
    precision = "/".join(sorted(p for p in trained_in if p)) or train.get("precision", "fp32")
    if train.get("precision") == "auto":  # what auto resolved to on this machine
        precision += " (precision: auto)"
    sizes = final_sizes(result, unit)
    arms = "\n".join(f"  - `{arm}`: {ARM_TEXT.get(arm, arm)}" for arm in cfg.arms)
    pace = epoch_pace(result)
    costs = ", ".join(f"{o.arm} {o.cost.outer_step_cost:g}" for o in result.outcomes if o.cost and o.cost.learned) or "no learned arm"
    algorithms = {o.search_algorithm for o in result.outcomes}
    search_kind = ("so every search here is **random search**, and says so" if algorithms == {"random"} else
                   "so each arm's search says which it was (random search below 8 trials, TPE above)")
    validated = (f"validated on {train['eval_subset']} validation {unit} (a stratified sample, the same for every trial)"
                 if train.get("eval_subset") else f"validated on all validation {unit}")
    final_examples = ("all" if final_train.get("train_subset") is None else
                      f"{final_train['train_subset']} (a stratified sample per seed, the same for every arm at a seed)")
    changes = CHANGES[cfg.preset] + "\n\n" if cfg.preset in CHANGES else ""
    return f"""{study_title(cfg.train.get('task', 'mr'))}, tuned, {len(cfg.final_seeds)} seeds, paired intervals

Regenerate: `{command_line()}` (resumable: run it again after an interruption).
Measured on {time.strftime('%Y-%m-%d')}; machine: {machine}. The whole study took
**{duration(seconds)}** of wall time over {invocations} invocation(s), search and final stage together
(`{shown_path(cfg.sweep_dir / TIME_FILE)}`):

{invocations_table(timing)}

{changes}### Summary

{verdicts}

{where_clo_loses(final, cfg.reference_arm)}

### Setup, and why this size
- **Task and model.** {about_task}: {sizes}. Model `{train['model']}` with {some.num_layers} exits. Max length
  {train['max_length']}, batch {train['batch_size']}, {precision} on CPU, DeepSpeed ZeRO-0. One loss-scale convention
  for every arm (the weighted mean of the loss terms, docs/method.md "Loss scale"); hypervolume on the
  {some.axis} speed-up axis (docs/method.md "Hypervolume").
- **Arms:**
{arms}
- **Search**, per arm: {train.get('train_subset') or 'all'} training {unit} (a stratified sample, the same for every
  trial), {train['epochs']} epoch(s) per trial, {validated}; objective: validation hypervolume.
  {budget_text(cfg, costs)} The fixed arms search 2 learning
  rates; the learned arms also lr_outer and outer_every.
- **Final stage**, per arm: the configuration chosen on validation, retrained with seeds
  {', '.join(map(str, cfg.final_seeds))} on {final_examples} training {unit} for {final_train['epochs']} epoch(s); every model
  validated on the whole validation set and tested on the whole test set, the same examples for
  every model. Exit-policy settings (patience, entropy, confidence) are chosen on each model's
  validation curve; test only reports.
- **Why this size.** {pace} The sizing arithmetic is in the header of `sweeps/presets/{cfg.preset}.yaml`.
  A search TPE could model (8+ trials per arm) or more seeds would multiply the hours, {search_kind}.

### What each arm's search used and chose

{chr(10).join(search_rows)}

### Final stage: test, mean ± std over seeds

{final.table}

Accuracy @Nx: test accuracy at the exit-policy setting each model's validation curve chose as the
most accurate with at least N-times speed-up, with the test speed-up it reached in brackets.
Wall-clock speed-up: full forward time over early-exit time at the 2x setting on the whole test
set (batch 128), the median of {cfg.timing_repeats} ratios per model, timed after all training on a device
held for the timing alone, the models' passes interleaved round by round (`report/final/timing.json`),
for {'every model' if not cfg.timing_seeds else f'the first {cfg.timing_seeds} seed(s) of each arm'}.

![{short}: mean test frontiers]({frontiers.name})

### Is CLO better? Paired differences, {cfg.reference_arm} minus each arm

Points of accuracy (hypervolume × 100), with 95 % intervals from {cfg.bootstrap} bootstrap replicates
that resample seeds and test examples together, paired by seed and by example.
"better" / "worse": the whole interval is above / below 0.

{final.differences}

{verdicts}

### What the learned weights did

{weights_text(final.results)}

![{short}: learned weights over training]({weights_png.name})
"""


ARM_TEXT = {
    "fixed-uniform": "LeeBERT's objective with every weight 1 (cross-entropy at every exit, distillation between all exits)",
    "fixed-pabee": "PABEE's weighted average of the exits' cross-entropies, no distillation",
    "fixed-last": "cross-entropy at every exit plus distillation from the last exit",
    "bilevel": "the weights learned by DARTS-style bi-level optimization (θ sees D1, the weights D2)",
    "clo": "the weights learned by LeeBERT's cross-level optimization (both levels see both halves)",
}


def final_sizes(result, unit: str = "sentences") -> str:
    """'8483 training sentences in the final stage, 1060 test sentences', from the final runs themselves."""
    examples = {r.summary.train_examples for arm in result.final.finals for r in arm.records if r.summary}
    tested = {len(r.labels) for seeds in result.final.results.values() for r in seeds}
    return (f"{'/'.join(str(e) for e in sorted(examples))} training {unit} in the final stage, "
            f"{'/'.join(str(n) for n in sorted(tested))} test {unit}")


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
    by_step = {0: [1.0] * len(weights.names)}
    for entry in weights.trajectory:  # the end of training is logged again at its last step: keep one row
        by_step[int(entry["step"])] = entry["weights"]
    return sorted(by_step.items())


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

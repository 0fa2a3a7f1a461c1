"""The final stage: each arm's best configuration retrained with K seeds, then compared on test.

After the search, the configuration each arm's search chose on validation is trained again, once
per seed in ``final_seeds``, with ``final_train`` on top (by default the full training set). All
arms x seeds are one Ray Tune experiment ``final`` (same trainer, checkpoints, retries and MLflow
logging as a search trial, ``sweeps.experiment``), with as many trainings at once as the cluster
holds; ``--resume`` restores it.

No training times anything (``wallclock_eval`` is off in every final trial): a neighbour still
training would weigh on the figure, and differently for each arm. Once every final training has
ended, the timing phase (``sweeps.timing``, called by ``sweeps.runner``) times the first
``timing_seeds`` seeds of each arm in one Ray task that holds a whole device (one GPU, or every CPU
of a node): ``timing_repeats`` rounds of one full-depth and one early-exit pass over test at the
validation-chosen 2x setting per model, the models interleaved, written to
``report/final/timing.json``. The comparison reads each model's median ratio from there.

Then, on test, per arm (mean ± std over seeds): last-exit accuracy; accuracy at 1.5x, 2x and 3x
with the exit-policy settings each model's validation curve chose; hypervolume over the settings
its validation frontier chose; and the measured wall-clock speed-up at 2x (the mean of the timed
seeds' medians; the CSV adds the range of their ratios). The reference arm (CLO) is compared with
every other arm by the paired bootstrap of ``sweeps.statistics`` (over seeds and test examples)
with a verdict.

MLflow: a ``final/<arm>`` run per arm (role=final) with one child per seed, and a
``final-comparison`` run (role=final_comparison) with the table (markdown, CSV), timing.json, the
overlay of mean frontiers with seed bands, each arm's mean frontier as metric history, and the verdicts.
"""

from __future__ import annotations

import math
import statistics as stats
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sweeps import statistics as bs
from sweeps.config import SweepConfig
from sweeps.experiment import Stage, run_experiment
from sweeps.plots import final_frontiers_figure, mean_frontier
from sweeps.progress import say
from sweeps.records import TrialRecord
from sweeps.search import MethodOutcome, runtime, trial_resources
from sweeps.spec import FINAL
from sweeps.timing import TIMED_TARGET, ModelTiming, TimingReport, timing_file
from sweeps.tracking import Tracker
from sweeps.trial import TEST_LOGITS_FILE
from trainers.results import WeightsSummary

TARGETS = (1.5, 2.0, 3.0)
FINAL_ROLE, COMPARISON_ROLE = "final", "final_comparison"


@dataclass
class FinalArm:
    arm: str
    parent_run_id: str
    source: TrialRecord           # the search trial whose configuration is retrained
    config: dict                  # the trainer options of every seed (seed aside)
    records: list[TrialRecord]    # one per seed, in final_seeds order


@dataclass
class SeedResult:
    """One retrained model on test, reduced to what the comparison needs."""

    seed: int
    trial_id: str
    num_layers: int
    metric: str
    reference_metric: float
    axis: str
    labels: np.ndarray                       # [N]
    ids: np.ndarray                          # [N] test example ids (the pairing needs the same examples)
    last_correct: np.ndarray                 # [N] 0/1
    front_exits: np.ndarray                  # [S, N] exit layer of every validation-frontier setting
    front_correct: np.ndarray                # [S, N]
    at: dict[float, tuple[np.ndarray, np.ndarray]]  # target -> (exit layers [N], correct [N])
    wallclock: dict[float, float] = field(default_factory=dict)  # target -> median speed-up (timing phase)
    timing: ModelTiming | None = None        # its timing-phase record (ratios, range), if it was timed
    weights: WeightsSummary | None = None    # the learned weights and their trajectory
    train_seconds: float = 0.0

    def accuracy_at(self, target: float) -> float | None:
        return float(self.at[target][1].mean()) if target in self.at else None

    def speedup_at(self, target: float) -> float | None:
        return float(self.num_layers / self.at[target][0].mean()) if target in self.at else None

    def hypervolume(self) -> float:
        return float(bs.point_values_hypervolume([self.front_exits], [self.front_correct], self.num_layers,
                                                 self.reference_metric, self.axis)[0])

    def curve(self) -> list[tuple[float, float]]:
        """(test speed-up, test metric) of every validation-frontier setting."""
        return [(self.num_layers / e.mean(), c.mean()) for e, c in zip(self.front_exits, self.front_correct)]


# ---------------------------------------------------------------------------- retraining
def final_config(cfg: SweepConfig, best: TrialRecord, seed: int) -> dict:
    """The trainer options of one final training: the chosen trial's, then final_train, the seed.
    It never times itself (whatever final_train says): the timing phase does, after all training."""
    return {**best.train, **cfg.final_train, "seed": seed, "wallclock_eval": False}


def final_stage(cfg: SweepConfig, tracker: Tracker, outcomes: list[MethodOutcome], resume: bool,
                trainer=None) -> list[FinalArm]:
    """Every arm's best configuration x every seed, in one experiment."""
    from ray import tune

    chosen = [o for o in outcomes if o.best is not None]
    parents, parts = {}, []
    for outcome in chosen:
        arm, best = outcome.method, outcome.best
        values = final_config(cfg, best, cfg.final_seeds[0])
        parents[f"final/{arm}"] = tracker.method_run(f"final/{arm}", role=FINAL_ROLE, params={
            "arm": arm, "seeds": ",".join(map(str, cfg.final_seeds)), "source_trial_id": best.trial_id,
            "source_trial_number": best.number, **{k: v for k, v in values.items() if k != "seed"}},
            tags={"sweep": cfg.name, "arm": arm})
        parts += [{"arm": arm, "stage": FINAL, "number": seed, "sampled": {"seed": seed},
                   "train": final_config(cfg, best, seed)} for seed in cfg.final_seeds]
        if not resume:
            say(f"final/{arm}: retraining trial {best.number}'s configuration with seeds "
                f"{', '.join(map(str, cfg.final_seeds))}" + (f" and {values_text(cfg.final_train)}" if cfg.final_train else ""))
    if not resume:
        at_once = cfg.final_max_concurrent or "as many as the cluster holds"
        timed = f"the first {cfg.timing_seeds} seed(s)" if cfg.timing_seeds else "every seed"
        say(f"final: {len(parts)} trainings in one experiment, {at_once} at a time; then {timed} of each arm "
            f"timed on a quiet device ({cfg.timing_repeats} repeats)")
    epochs = max(int(p["train"].get("epochs", 1)) for p in parts)
    stage = Stage(name=FINAL, runtime=runtime(cfg, FINAL), parents=parents,
                  totals={group: len(cfg.final_seeds) for group in parents}, epochs=epochs,
                  resources=final_resources(cfg), finished=lambda trials: len(trials) >= len(parts),
                  trials=tune.grid_search(parts), max_concurrent=cfg.final_max_concurrent)
    records = run_experiment(cfg, stage, tracker, resume, trainer)
    finals = []
    for outcome in chosen:
        mine = [r for r in records if r.method == f"final/{outcome.method}"]
        mine.sort(key=lambda r: cfg.final_seeds.index(int(r.train["seed"])))
        finals.append(FinalArm(outcome.method, parents[f"final/{outcome.method}"], outcome.best,
                               final_config(cfg, outcome.best, cfg.final_seeds[0]), mine))
    return finals


def final_resources(cfg: SweepConfig) -> dict:
    """A search trial's request, shared among more trials when final_max_concurrent > max_concurrent
    (Ray's resources are logical: 3 trials of 2/3 CPU run on 2 cores, one torch thread each).
    Sharing only costs training throughput: no trial times anything here, the timing phase runs
    after every training has ended, on a device of its own."""
    resources = trial_resources(cfg)
    more = (cfg.final_max_concurrent or cfg.max_concurrent) / cfg.max_concurrent
    if more > 1 and cfg.workers_per_trial == 1:
        resources = {"cpu": cfg.cpus_per_trial / more, "gpu": cfg.gpus_per_trial / more}
    return resources


def values_text(values: dict) -> str:
    return ", ".join(f"{k}={'all' if v is None else v}" for k, v in sorted(values.items()))


# ---------------------------------------------------------------------------- reading the models
def seed_result(record: TrialRecord, timing: TimingReport | None) -> SeedResult:
    """What the comparison needs from one retrained model: its per-example test results (from its
    checkpoint) and, if it was timed, its wall-clock speed-up (from the timing phase)."""
    from trainers.policies import SavedOutcomes
    from trainers.run_files import load_exit_logits

    summary = record.summary
    with record.checkpoint.as_directory() as folder:
        logits, labels, ids = load_exit_logits(Path(folder) / TEST_LOGITS_FILE)
    ops = {float(op.target_speedup): op for op in summary.operating_points}
    outcomes = SavedOutcomes(logits, labels)
    front_exits, front_correct = outcomes.frontier(summary.frontier)
    timed = timing.models.get(record.trial_id) if timing is not None else None
    return SeedResult(
        seed=int(record.train["seed"]), trial_id=record.trial_id, num_layers=int(summary.num_exits),
        metric=summary.metric, reference_metric=float(summary.test.reference_metric),
        axis=summary.hypervolume_axis, labels=labels, ids=ids,
        last_correct=outcomes.last_correct(), front_exits=front_exits, front_correct=front_correct,
        at={t: outcomes.at(op.policy, op.setting, op.delta) for t, op in ops.items()},
        wallclock={TIMED_TARGET: timed.median} if timed is not None else {}, timing=timed, weights=summary.weights,
        train_seconds=summary.train_seconds(),
    )


# ---------------------------------------------------------------------------- the comparison
@dataclass
class Comparison:
    table: str                      # markdown: per arm, mean ± std over seeds
    differences: str                # markdown: reference arm minus each other arm, 95 % intervals, verdicts
    verdicts: dict[str, str]        # arm -> one line
    rows: list[dict]                # the CSV rows
    files: dict[str, Path]
    results: dict[str, list[SeedResult]]
    finals: list[FinalArm]          # the retrained runs (their summaries: epochs, weights, sizes)


def mean_std(values: list[float | None], scale: float = 1.0, digits: int = 1, suffix: str = "") -> str:
    values = [v * scale for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}{suffix}"
    return f"{stats.mean(values):.{digits}f} ± {stats.stdev(values):.{digits}f}{suffix}"


def paired_seeds(a: list[SeedResult], b: list[SeedResult]) -> tuple[list[SeedResult], list[SeedResult]]:
    """The seeds both arms finished, in the same order (pairing is by seed)."""
    common = [r.seed for r in a if r.seed in {s.seed for s in b}]
    return [next(r for r in a if r.seed == s) for s in common], [next(r for r in b if r.seed == s) for s in common]


def compare_pair(a: list[SeedResult], b: list[SeedResult], n_boot: int, seed: int = 0) -> dict[str, bs.Interval]:
    """Paired differences a − b of every reported metric, over the seeds both arms finished."""
    a, b = paired_seeds(a, b)
    if not a:
        return {}
    if any(not np.array_equal(x.ids, a[0].ids) for x in a + b):
        from trainers.errors import ConfigError

        raise ConfigError("final models were tested on different test examples (final_train.eval_subset with "
                          "different seeds?); set final_train.eval_subset: null so every model sees the same test set")
    plan = bs.resample_plan(len(a), len(a[0].labels), n_boot=n_boot, seed=seed)

    def accuracy(results, pick):
        correct = np.stack([pick(r) for r in results])
        return bs.point_values_accuracy(correct), bs.accuracy_replicates(correct, plan)

    out = {}
    out["last_exit"] = bs.paired_difference(*_pairs(accuracy(a, lambda r: r.last_correct),
                                                    accuracy(b, lambda r: r.last_correct)), plan)
    for target in TARGETS:
        if all(target in r.at for r in a + b):
            out[f"at_{target:g}x"] = bs.paired_difference(*_pairs(accuracy(a, lambda r: r.at[target][1]),
                                                                  accuracy(b, lambda r: r.at[target][1])), plan)

    def hv(results):
        exits, correct = [r.front_exits for r in results], [r.front_correct for r in results]
        ref, layers, axis = results[0].reference_metric, results[0].num_layers, results[0].axis
        return (bs.point_values_hypervolume(exits, correct, layers, ref, axis),
                bs.hypervolume_replicates(exits, correct, layers, ref, plan, axis))

    out["hypervolume"] = bs.paired_difference(*_pairs(hv(a), hv(b)), plan)
    return out


def _pairs(a: tuple, b: tuple) -> tuple:
    return a[0], b[0], a[1], b[1]


def compare_arms(cfg: SweepConfig, tracker: Tracker, finals: list[FinalArm], report_dir: Path,
                 timing: TimingReport | None = None) -> Comparison:
    out = report_dir / "final"
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[SeedResult]] = {}
    for final in finals:
        done = [r for r in final.records if r.status == "completed" and r.checkpoint is not None]
        results[final.arm] = [seed_result(record, timing) for record in done]
    metric = next((r[0].metric for r in results.values() if r), "accuracy")
    reference = cfg.reference_arm
    rows, lines = [], []
    header = (f"| arm | seeds | last-exit {metric} (%) | " + " | ".join(f"{metric} @{t:g}x (%) [speed-up]" for t in TARGETS)
              + " | test hypervolume | wall-clock speed-up @2x | train s / seed |")
    lines += [header, "|" + "---|" * (6 + len(TARGETS))]
    for final in finals:
        seeds = results[final.arm]
        row = {"arm": final.arm, "seeds": ",".join(str(r.seed) for r in seeds),
               "failed_seeds": ",".join(str(r.train["seed"]) for r in final.records if r.status != "completed")}
        cells = [final.arm, f"{len(seeds)}/{len(final.records)}"]
        row["last_exit_mean"], row["last_exit_std"] = _ms([r.last_correct.mean() for r in seeds])
        cells.append(mean_std([r.last_correct.mean() for r in seeds], 100))
        for t in TARGETS:
            accs, speeds = [r.accuracy_at(t) for r in seeds], [r.speedup_at(t) for r in seeds]
            row[f"at_{t:g}x_mean"], row[f"at_{t:g}x_std"] = _ms(accs)
            row[f"speedup_{t:g}x_mean"], _ = _ms(speeds)
            cells.append(f"{mean_std(accs, 100)} [{mean_std(speeds, 1, 2, 'x')}]")
        hvs = [r.hypervolume() for r in seeds]
        row["hypervolume_mean"], row["hypervolume_std"] = _ms(hvs)
        cells.append(mean_std(hvs, 1, 3))
        walls = [r.wallclock.get(TIMED_TARGET) for r in seeds]
        row["wallclock_2x_median_mean"], _ = _ms(walls)
        timings = [r.timing for r in seeds if r.timing is not None]  # the range of every ratio the arm's seeds measured
        row["wallclock_2x_min"] = min((t.min for t in timings), default=None)
        row["wallclock_2x_max"] = max((t.max for t in timings), default=None)
        timed_seeds = [str(r.seed) for r, w in zip(seeds, walls) if w is not None]
        cells.append(mean_std(walls, 1, 2, "x")
                     + (f" (seed {', '.join(timed_seeds)})" if timed_seeds and len(timed_seeds) < len(seeds) else ""))
        secs = [r.train_seconds for r in seeds]
        row["train_seconds_mean"], _ = _ms(secs)
        cells.append(mean_std(secs, 1, 0))
        rows.append(row)
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)

    verdicts, diff_lines = {}, []
    if reference in results and results[reference]:
        diff_lines += [f"| {reference} minus | last exit | " + " | ".join(f"@{t:g}x" for t in TARGETS)
                       + " | hypervolume (×100) | verdict (hypervolume) |", "|" + "---|" * (4 + len(TARGETS))]
        for final in finals:
            if final.arm == reference or not results.get(final.arm):
                continue
            intervals = compare_pair(results[reference], results[final.arm], cfg.bootstrap)
            if not intervals:
                continue
            hv = intervals["hypervolume"]
            word = bs.verdict(hv)
            cells = [final.arm, _cell(intervals["last_exit"])]
            cells += [_cell(intervals[f"at_{t:g}x"]) if f"at_{t:g}x" in intervals else "–" for t in TARGETS]
            cells += [_cell(hv), word]
            diff_lines.append("| " + " | ".join(cells) + " |")
            at2 = intervals.get("at_2x")
            verdicts[final.arm] = (f"{reference} vs {final.arm}: {word} (hypervolume {bs.describe(hv)}"
                                   + (f"; {metric} at 2x {bs.describe(at2)}, {bs.verdict(at2)}" if at2 else "") + ")")
            for key, interval in intervals.items():
                for row in rows:
                    if row["arm"] == final.arm:
                        row[f"diff_{key}"], row[f"diff_{key}_low"], row[f"diff_{key}_high"] = (
                            interval.estimate, interval.low, interval.high)
                        row[f"verdict_{key}"] = bs.verdict(interval)
    differences = "\n".join(diff_lines)

    import pandas as pd

    files = {"table_md": out / "final_table.md", "table_csv": out / "final_table.csv",
             "verdicts_md": out / "verdicts.md", "frontiers_png": out / "final_frontiers.png"}
    if timing is not None:
        files["timing_json"] = timing_file(cfg)  # logged with the table: the passes behind its wall-clock column
    files["table_md"].write_text(table + "\n\n" + differences + "\n")
    pd.DataFrame(rows).to_csv(files["table_csv"], index=False)
    files["verdicts_md"].write_text("\n".join(f"- {line}" for line in verdicts.values()) + "\n")
    curves = {arm: [r.curve() for r in seeds] for arm, seeds in results.items() if seeds}
    layers = next((r[0].num_layers for r in results.values() if r), 2)
    ref_metric = next((r[0].reference_metric for r in results.values() if r), None)
    final_frontiers_figure(curves, layers, files["frontiers_png"], metric, ref_metric,
                           title=f"{cfg.name}: mean test frontier over seeds (band: min-max)")
    _log_comparison(tracker, cfg, finals, results, rows, verdicts, files, curves, layers)
    return Comparison(table, differences, verdicts, rows, files, results, finals)


def _cell(interval: bs.Interval) -> str:
    return f"{100 * interval.estimate:+.2f} [{100 * interval.low:+.2f}, {100 * interval.high:+.2f}]"


def _ms(values: list) -> tuple[float | None, float | None]:
    values = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not values:
        return None, None
    return stats.mean(values), (stats.stdev(values) if len(values) > 1 else 0.0)


def _log_comparison(tracker: Tracker, cfg: SweepConfig, finals: list[FinalArm], results: dict, rows: list[dict],
                    verdicts: dict, files: dict, curves: dict, layers: int) -> None:
    now = int(time.time() * 1000)
    metrics: list[tuple[str, float, int, int]] = []
    for row in rows:
        for key, value in row.items():
            if isinstance(value, float) and math.isfinite(value):
                metrics.append((f"{row['arm']}/{key}", value, 0, now))
    grid = np.exp(np.linspace(0, math.log(layers), 41))
    for arm, arm_curves in curves.items():
        mean = np.nanmean(mean_frontier(arm_curves, grid), axis=0) if arm_curves else []
        for s, value in zip(grid, mean):
            if np.isfinite(value):  # step = speed-up × 100: MLflow's chart over "step" draws the frontier
                metrics.append((f"final_frontier/{arm}", float(value), int(round(100 * s)), now))
    run = tracker.find_run(role=COMPARISON_ROLE)
    run_id = run.info.run_id if run else tracker.client.create_run(
        tracker.experiment_id, run_name="final-comparison",
        tags={"role": COMPARISON_ROLE, "sweep": cfg.name, **tracker.driver}).info.run_id
    tags = {f"verdict/{arm}": line[:5000] for arm, line in verdicts.items()}
    tracker._log(run_id, params={"reference_arm": cfg.reference_arm, "seeds": ",".join(map(str, cfg.final_seeds)),
                                 "bootstrap": cfg.bootstrap, "timing_repeats": cfg.timing_repeats}, metrics=metrics, tags=tags)
    for path in files.values():
        tracker.client.log_artifact(run_id, str(path))
    tracker.client.set_terminated(run_id, status="FINISHED")
    for final in finals:  # each arm's final run: its mean and std over seeds
        row = next((r for r in rows if r["arm"] == final.arm), {})
        values = [(k, float(v), 0, now) for k, v in row.items() if isinstance(v, float) and math.isfinite(v)]
        tracker._log(final.parent_run_id, metrics=values, tags={"finalized": "true"})
        tracker.client.set_terminated(final.parent_run_id, status="FINISHED")

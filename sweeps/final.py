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

MLflow: a ``final/<arm>`` run per arm (role=final) with one child per seed, its means and stds over
seeds and its mean test frontier as metric history (under the search runs' keys, so the two overlay),
and a ``final-comparison`` run (role=final_comparison) with the table (final_table.json, the MLflow
table format, and markdown, CSV), timing.json, the overlay of mean frontiers with seed bands, and
the verdicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


from sweeps.arm_statistics import SeedResult, add_differences, arm_values, reference_differences  # noqa: F401 - SeedResult re-exported
from sweeps.config import SweepConfig
from sweeps.experiment import Stage, run_experiment
from sweeps.mlflow_view import COMPARED_OPTIONS, split_params
from sweeps.placement import trials_the_cluster_holds
from sweeps.progress import say
from sweeps.records import TrialRecord
from sweeps.search import ArmOutcome, runtime, trial_resources
from sweeps.spec import FINAL, Runtime, TrialSpec
from sweeps.timing import TIMED_TARGET, TimingReport, timing_file
from sweeps.report import differences_table, final_table, verdict_line, write_final_report
from sweeps.tracking import Tracker
from sweeps.trial import TEST_LOGITS_FILE
from trainers.config import TrainConfig
from trainers.layout import TAG_SWEEP


@dataclass
class FinalArm:
    arm: str
    parent_run_id: str
    source: TrialRecord           # the search trial whose configuration is retrained
    config: TrainConfig           # the trainer config of every seed (seed aside: the first seed's)
    records: list[TrialRecord]    # one per seed, in final_seeds order


# ---------------------------------------------------------------------------- retraining
def final_spec(cfg: SweepConfig, arm: str, best: TrialRecord, seed: int, runtime: Runtime) -> TrialSpec:
    """One final training: the chosen trial's trainer config, then final_train, then the seed. It
    never times itself (whatever final_train says): the timing phase does, after all training."""
    return TrialSpec.drawn(arm, FINAL, seed, best.config, {"seed": seed}, runtime,
                           options={**cfg.final_train, "wallclock_eval": False})


def final_stage(cfg: SweepConfig, tracker: Tracker, outcomes: list[ArmOutcome], resume: bool,
                trainer=None) -> list[FinalArm]:
    """Every arm's best configuration x every seed, in one experiment."""
    chosen = [o for o in outcomes if o.best is not None]
    the_runtime = runtime(cfg, FINAL)
    parents, specs, firsts = {}, [], {}
    for outcome in chosen:
        arm, best = outcome.arm, outcome.best
        seeds = [final_spec(cfg, arm, best, seed, the_runtime) for seed in cfg.final_seeds]
        # keyed by the parent run's name ("final/clo"), as the progress callback looks it up
        options = {k: v for k, v in seeds[0].train.to_dict().items() if k not in ("seed", "output_dir", "resume")}
        shown, other = split_params(options, COMPARED_OPTIONS + tuple(best.sampled))  # the searched values too
        parents[seeds[0].group] = tracker.arm_run(
            arm, FINAL, params={"seeds": ",".join(map(str, cfg.final_seeds)), "source_trial_id": best.trial_id,
                                "source_trial_number": best.number, **shown},
            settings={"trainer": other}, tags={TAG_SWEEP: cfg.name}, metric=seeds[0].train.primary_metric())
        specs += seeds
        firsts[arm] = seeds[0]
        if not resume:
            say(f"final/{arm}: retraining trial {best.number}'s configuration with seeds "
                f"{', '.join(map(str, cfg.final_seeds))}" + (f" and {values_text(cfg.final_train)}" if cfg.final_train else ""))
    at_once = cfg.final_max_concurrent or trials_the_cluster_holds(
        cfg.cpus_per_trial, cfg.gpus_per_trial, cfg.workers_per_trial, the_runtime.trial_node_resource)
    if not resume:
        timed = f"the first {cfg.timing_seeds} seed(s)" if cfg.timing_seeds else "every seed"
        held = "" if cfg.final_max_concurrent else " (what the cluster holds)"
        say(f"final: {len(specs)} trainings in one experiment, {at_once} at a time{held}; then {timed} of each arm "
            f"timed on a quiet device ({cfg.timing_repeats} repeats)")
    epochs = max(spec.train.epochs for spec in specs)
    stage = Stage(name=FINAL, runtime=the_runtime, parents=parents,
                  totals={group: len(cfg.final_seeds) for group in parents}, epochs=epochs,
                  resources=final_resources(cfg, the_runtime.trial_node_resource),
                  finished=lambda trials: len(trials) >= len(specs), grid=specs, max_concurrent=at_once)
    records = run_experiment(cfg, stage, tracker, resume, trainer)
    finals = []
    for outcome in chosen:
        first = firsts[outcome.arm]
        mine = [r for r in records if r.arm == outcome.arm and r.stage == FINAL]
        mine.sort(key=lambda r: cfg.final_seeds.index(int(r.train["seed"])))
        finals.append(FinalArm(outcome.arm, parents[first.group], outcome.best, first.train, mine))
    return finals


def final_resources(cfg: SweepConfig, node_resource: str | None = None) -> dict:
    """A search trial's request, shared among more trials when final_max_concurrent > max_concurrent
    (Ray's resources are logical: 3 trials of 2/3 CPU run on 2 cores, one torch thread each).
    Sharing only costs training throughput: no trial times anything here, the timing phase runs
    after every training has ended, on a device of its own."""
    resources = trial_resources(cfg, node_resource)
    more = (cfg.final_max_concurrent or cfg.max_concurrent) / cfg.max_concurrent
    if more > 1 and cfg.workers_per_trial == 1:
        resources = {**resources, "cpu": cfg.cpus_per_trial / more, "gpu": cfg.gpus_per_trial / more}
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
    from sweeps.checkpoints import open_checkpoint

    with open_checkpoint(record.checkpoint) as folder:
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


def compare_arms(cfg: SweepConfig, tracker: Tracker, finals: list[FinalArm], report_dir: Path,
                 timing: TimingReport | None = None) -> Comparison:
    """The arms on test: the numbers (``sweeps.arm_statistics``), their tables and files in
    ``report_dir``/final (``sweeps.report``), and the MLflow final-comparison run (``sweeps.tracking``)."""
    results = {final.arm: [seed_result(record, timing) for record in final.records
                           if record.status == "completed" and record.checkpoint is not None] for final in finals}
    metric = next((r[0].metric for r in results.values() if r), "accuracy")
    reference = cfg.reference_arm
    values = [arm_values(final.arm, results[final.arm], final.records) for final in finals]
    rows = [v.row() for v in values]
    intervals = reference_differences(results, reference, [final.arm for final in finals], cfg.bootstrap)
    add_differences(rows, intervals)
    verdicts = {arm: verdict_line(reference, arm, by_metric, metric) for arm, by_metric in intervals.items()}
    table = final_table(values, metric)
    differences = differences_table(reference, intervals) if results.get(reference) else ""

    curves = {arm: [r.curve() for r in seeds] for arm, seeds in results.items() if seeds}
    layers = next((r[0].num_layers for r in results.values() if r), 2)
    ref_metric = next((r[0].reference_metric for r in results.values() if r), None)
    out = report_dir / "final"
    out.mkdir(parents=True, exist_ok=True)
    files = write_final_report(out, table, differences, rows, verdicts, curves, layers, metric, ref_metric,
                               title=f"{cfg.name}: mean test frontier over seeds (band: min-max)")
    if timing is not None:
        files["timing_json"] = timing_file(cfg)  # logged with the table: the passes behind its wall-clock column
    tracker.final_comparison(cfg.name, {"reference_arm": reference, "seeds": ",".join(map(str, cfg.final_seeds)),
                                        "bootstrap": cfg.bootstrap, "timing_repeats": cfg.timing_repeats},
                             rows, verdicts, list(files.values()), curves, layers,
                             {final.arm: final.parent_run_id for final in finals}, metric)
    return Comparison(table, differences, verdicts, rows, files, results, finals)

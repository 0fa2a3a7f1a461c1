"""The final stage's timing phase: every timed model's wall-clock speed-up at 2x, on a quiet device.

A speed-up measured beside running trainings says as much about the neighbours as about the model,
and the arms that finish training first would time themselves beside the busiest ones. So no
training times anything: once every final training has ended (``sweeps.final.final_stage`` has
returned), one Ray task holds a whole device, with no training beside it:

- with GPUs (``gpus_per_trial > 0``): one whole GPU and ``cpus_per_trial`` CPUs;
- on CPUs: every CPU of the largest alive node, with as many torch threads.

It loads each arm's first ``timing_seeds`` completed seeds (all when null) once, from their final
checkpoints (``model/``), rebuilds the test split their training used, warms each model up, then
repeats ``timing_repeats`` times: for each model in a fixed order (arms as in ``arms``, then seed),
one full-depth pass over test and one early-exit pass at its validation-chosen 2x setting. The
passes interleave (A B C A B C ...), so every arm meets the same conditions; a ratio compares a
model's two passes of the same repeat. ``trainers.evaluate.ExitTimer`` times each pass, as it does
for the trainer's own ``--wallclock-eval``.

``report/final/timing.json`` keeps, per model (keyed by trial id), the ratio of every repeat, their
median, min, max and quartiles; every pass with its ``time.time()`` stamps; the phase's start and
end. A resumed sweep whose timing.json covers every model to time reuses it and times nothing.
Each timed seed's MLflow run gets its median as ``op_2x/wallclock_speedup`` (with ``_min``/``_max``).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sweeps.config import SweepConfig
from sweeps.progress import say
from sweeps.records import TrialRecord
from sweeps.tracking import Tracker
from sweeps.trial import apply_env
from trainers.layout import MODEL_DIR, STAGE_FINAL, TIMING_FILE

TIMED_TARGET = 2.0  # the wall-clock speed-up is reported (and so timed) at the 2x operating point
FULL, EARLY_EXIT = "full", "early_exit"


# ---------------------------------------------------------------------------- what timing.json holds
@dataclass
class PassRecord:
    """One timed pass: which model, which repeat, which kind, and when."""

    trial_id: str
    repeat: int
    kind: str           # FULL or EARLY_EXIT
    start: float        # time.time()
    end: float          # time.time()
    seconds: float      # perf_counter duration: what the ratio divides


@dataclass
class ModelTiming:
    """One model's speed-up at its 2x setting: the ratio (full / early exit) of every repeat."""

    trial_id: str
    arm: str
    seed: int
    policy: str
    setting: float
    delta: float | None
    ratios: list[float]
    median: float
    min: float
    max: float
    q1: float
    q3: float

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    @classmethod
    def of(cls, model: "ModelToTime", ratios: list[float]) -> "ModelTiming":
        q1, median, q3 = (float(v) for v in np.percentile(ratios, [25, 50, 75]))
        return cls(trial_id=model.trial_id, arm=model.arm, seed=model.seed, policy=model.policy,
                   setting=model.setting, delta=model.delta, ratios=list(ratios), median=median,
                   min=float(min(ratios)), max=float(max(ratios)), q1=q1, q3=q3)


@dataclass
class TimingReport:
    started: float                   # time.time() when the phase began on its device
    ended: float
    device: str                      # cpu | cuda
    cpus: float                      # CPUs the phase held
    gpus: int
    threads: int                     # torch threads
    repeats: int
    test_examples: int
    models: dict[str, ModelTiming]   # by trial id
    passes: list[PassRecord]         # in the order they ran

    def covers(self, trial_ids: list[str]) -> bool:
        return set(trial_ids) <= set(self.models)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TimingReport":
        return cls(**{**values, "models": {k: ModelTiming(**v) for k, v in values["models"].items()},
                      "passes": [PassRecord(**p) for p in values["passes"]]})


# ---------------------------------------------------------------------------- what is timed, and where
@dataclass(frozen=True)
class ModelToTime:
    trial_id: str
    arm: str
    seed: int
    checkpoint: Any     # ray.tune.Checkpoint: model/ (serving.export) and summary.json
    policy: str         # the validation-chosen 2x setting
    setting: float
    delta: float | None
    train: dict         # the trainer's config (the summary's): how to rebuild the test split


@dataclass(frozen=True)
class TimingPlan:
    models: list[ModelToTime]
    repeats: int
    device: str
    cpus: float
    gpus: int
    threads: int
    env: dict

    def where(self) -> str:
        if self.device == "cuda":
            return f"one whole GPU and {self.cpus:g} CPU(s), {self.threads} torch thread(s)"
        return f"all {self.cpus:g} CPUs of one node, {self.threads} torch thread(s)"


def models_to_time(cfg: SweepConfig, seeds_by_arm: dict[str, list[TrialRecord]]) -> list[ModelToTime]:
    """Each arm's first ``timing_seeds`` completed seeds (all when null) in ``final_seeds`` order,
    arms in ``arms`` order; a seed with no 2x setting or no exported model (a stand-in trainer's)
    has nothing to time."""
    models = []
    for arm in sorted(seeds_by_arm, key=cfg.arms.index):
        done = [r for r in seeds_by_arm[arm] if r.status == "completed" and r.checkpoint is not None]
        done.sort(key=lambda r: cfg.final_seeds.index(int(r.train["seed"])))
        for record in done[:cfg.timing_seeds] if cfg.timing_seeds else done:
            point = record.summary.operating_point(TIMED_TARGET)
            if point is not None and _has_model(record):
                models.append(ModelToTime(record.trial_id, arm, int(record.train["seed"]), record.checkpoint,
                                          point.policy, float(point.setting), point.delta, dict(record.summary.config)))
    return models


def _has_model(record: TrialRecord) -> bool:
    import pyarrow.fs

    checkpoint = record.checkpoint
    return checkpoint.filesystem.get_file_info(f"{checkpoint.path}/{MODEL_DIR}").type == pyarrow.fs.FileType.Directory


def timing_plan(cfg: SweepConfig, models: list[ModelToTime]) -> TimingPlan:
    """A whole device: one GPU (and a trial's CPUs) with GPUs, else every CPU of the largest node."""
    if cfg.gpus_per_trial > 0:
        cpus, gpus, device = cfg.cpus_per_trial, 1, "cuda"
    else:
        cpus, gpus, device = largest_node_cpus(), 0, "cpu"
    return TimingPlan(models, cfg.timing_repeats, device, cpus, gpus, max(1, int(cpus)), dict(cfg.env))


def largest_node_cpus() -> float:
    import ray

    return max(float(node["Resources"].get("CPU", 0)) for node in ray.nodes() if node["Alive"])


# ---------------------------------------------------------------------------- the phase (driver)
def timing_file(cfg: SweepConfig) -> Path:
    return cfg.sweep_dir / "report" / "final" / TIMING_FILE


def timing_phase(cfg: SweepConfig, tracker: Tracker, seeds_by_arm: dict[str, list[TrialRecord]]) -> TimingReport | None:
    """Time every model to time in one Ray task (after all final training), or reuse timing.json.
    ``seeds_by_arm``: each arm's final-stage trial records, in final_seeds order."""
    models = models_to_time(cfg, seeds_by_arm)
    if not models:
        say("final timing: no model to time (no completed seed with a 2x setting and an exported model)")
        return None
    path = timing_file(cfg)
    report = read_report(path)
    if report is not None and report.covers([m.trial_id for m in models]):
        say(f"final timing: {path} already times all {len(models)} model(s); reusing it")
    else:
        plan = timing_plan(cfg, models)
        say(f"final timing: {len(models)} model(s) x {plan.repeats} repeats (full and early-exit pass over test, "
            f"interleaved) on {plan.where()}, after all training")
        report = run_on_device(plan)
        write_report(path, report)
        for arm in dict.fromkeys(m.arm for m in models):
            say(f"final timing: {arm}: wall-clock speed-up @{TIMED_TARGET:g}x " + ", ".join(
                f"seed {t.seed} {t.median:.2f}x [{t.min:.2f}–{t.max:.2f}]" for t in report.models.values() if t.arm == arm))
    log_timing(tracker, report)
    return report


def run_on_device(plan: TimingPlan) -> TimingReport:
    import ray

    task = ray.remote(measure).options(num_cpus=plan.cpus, num_gpus=plan.gpus, max_retries=0)
    return ray.get(task.remote(plan))


def read_report(path: Path) -> TimingReport | None:
    return TimingReport.from_dict(json.loads(path.read_text())) if path.is_file() else None


def write_report(path: Path, report: TimingReport) -> None:
    from trainers.run_files import write_json_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, report.to_dict())  # a reader (or a resumed sweep) never sees half a file


def log_timing(tracker: Tracker, report: TimingReport) -> None:
    """Each timed seed's MLflow run gets its median (the key its summary's figure had) and range.
    Stamped with the phase's end, so logging again on resume adds nothing."""
    stamp = int(report.ended * 1000)
    for timing in report.models.values():
        run = tracker.trial_run(timing.arm, STAGE_FINAL, timing.trial_id)
        if run is not None:
            key = f"op_{TIMED_TARGET:g}x/wallclock_speedup"
            tracker._log(run.info.run_id, metrics=[(key, timing.median, 0, stamp), (f"{key}_min", timing.min, 0, stamp),
                                                   (f"{key}_max", timing.max, 0, stamp)])


# ---------------------------------------------------------------------------- the phase (on its device)
@dataclass
class LoadedModel:
    """A model to time, on its device, with its test batches and its 2x exit policy."""

    trial_id: str
    timer: Any          # trainers.evaluate.ExitTimer
    policy: Any         # trainers.policies: the streaming exit policy
    test_ids: Any       # torch.Tensor [N]


def measure(plan: TimingPlan) -> TimingReport:
    """The Ray task: load every model once, time them all interleaved, return the report."""
    import torch

    apply_env(plan.env)  # as a trial does: HF_HUB_OFFLINE and the like
    torch.set_num_threads(plan.threads)
    device = _device(plan.device)
    started = time.time()
    data: dict[tuple, Any] = {}  # models trained alike (seed included) share one tokenized test split
    loaded = [load_model(model, device, data) for model in plan.models]
    check_same_test_examples(loaded, plan.models)
    passes = time_interleaved(loaded, plan.repeats)
    ended = time.time()
    ratios = ratios_by_model(passes)
    return TimingReport(started=started, ended=ended, device=plan.device, cpus=plan.cpus, gpus=plan.gpus,
                        threads=plan.threads, repeats=plan.repeats, test_examples=len(loaded[0].test_ids),
                        models={m.trial_id: ModelTiming.of(m, ratios[m.trial_id]) for m in plan.models}, passes=passes)


def _device(kind: str):
    import torch

    from trainers.engine import select_device

    return torch.device(select_device(kind, "fp32"))  # cuda without a working GPU: a clear error, no CPU figure


def load_model(model: ModelToTime, device, data: dict[tuple, Any]) -> LoadedModel:
    """The exported model on ``device`` with the test split of its training (from ``data``, or
    rebuilt into it)."""
    from serving.export import load_exported
    from trainers.config import TrainConfig
    from trainers.evaluate import ExitTimer, exit_policy
    from trainers.train import load_data

    from sweeps.checkpoints import open_checkpoint

    with open_checkpoint(model.checkpoint) as folder:
        network, tokenizer, meta = load_exported(Path(folder) / MODEL_DIR, device)
    cfg = TrainConfig.from_dict(model.train, where="the timed trial's trainer config")
    key = (meta["source_model"], cfg.task, cfg.data_dir, cfg.train_file, cfg.validation_file, cfg.test_file, cfg.dataset,
           cfg.text_columns, cfg.label_column, cfg.max_length, cfg.train_subset, cfg.eval_subset, cfg.seed,
           cfg.validation_fraction)
    if key not in data:
        data[key] = load_data(cfg, tokenizer)
    test, pad = data[key].test, data[key].pad_token_id
    return LoadedModel(model.trial_id, ExitTimer(network, test, cfg.eval_batch_size, pad),
                       exit_policy(model, meta["is_regression"]), test.ids)


def check_same_test_examples(loaded: list[LoadedModel], models: list[ModelToTime]) -> None:
    import torch

    from trainers.errors import ConfigError

    first = loaded[0]
    for one, model in zip(loaded[1:], models[1:]):
        if not torch.equal(one.test_ids, first.test_ids):
            raise ConfigError(f"final timing: {model.arm} seed {model.seed} was tested on other test examples than "
                              f"{models[0].arm} seed {models[0].seed} (final_train.eval_subset with different seeds?); "
                              "set final_train.eval_subset: null so every model is timed on the same test set")


def time_interleaved(models: list[LoadedModel], repeats: int) -> list[PassRecord]:
    """Warm every model up, then ``repeats`` rounds of: for each model in order, one full pass and
    one early-exit pass. A round passes over every model before the next begins, so a drift of the
    machine over time falls on every model alike."""
    for model in models:
        model.timer.warm_up([model.policy])
    passes = []
    for repeat in range(repeats):
        for model in models:
            full = model.timer.full()
            early = model.timer.early_exit(model.policy)  # moments after its full pass: one ratio
            passes += [_record(model.trial_id, repeat, FULL, full), _record(model.trial_id, repeat, EARLY_EXIT, early)]
    return passes


def _record(trial_id: str, repeat: int, kind: str, timed) -> PassRecord:
    return PassRecord(trial_id, repeat, kind, start=timed.start, end=timed.end, seconds=timed.seconds)


def ratios_by_model(passes: list[PassRecord]) -> dict[str, list[float]]:
    """Per trial id, full / early-exit time of each repeat, in repeat order."""
    seconds = {(p.trial_id, p.repeat, p.kind): p.seconds for p in passes}
    ratios: dict[str, list[float]] = {}
    for trial_id, repeat, kind in seconds:
        if kind == FULL:
            ratios.setdefault(trial_id, []).append(seconds[trial_id, repeat, FULL] / seconds[trial_id, repeat, EARLY_EXIT])
    return ratios

"""The one trial procedure both stages use: a Ray Tune experiment, from start (or restore) to records.

``run_experiment(cfg, stage, tracker, resume, trainer)`` starts the experiment ``stage.name``
under the sweep's storage (or restores it with ``Tuner.restore``: finished trials are kept,
interrupted ones continue from their last epoch checkpoint; a finished one is read from its saved
state without Tune), logs every trial to MLflow as it ends (``sweeps.progress``), and returns one
``TrialRecord`` per trial, every record logged, even those a restarted driver's callback never saw.
Whatever way the experiment ends, the trainer folders its trials left on the nodes are removed
(``sweeps.placement.remove_trial_folders``: on every alive node, once per stage).
The records of an experiment just run come from the results ``Tuner.fit`` returns.

The stages differ only in what ``Stage`` holds: the search stage brings every arm's searcher and
scheduler (``sweeps.searchers``), the final stage a grid over arms x seeds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from sweeps import checkpoints
from sweeps.config import SweepConfig
from sweeps.placement import remove_trial_folders
from sweeps.state import SweepInterrupted
from sweeps.progress import SweepCallback, say
from sweeps.records import TrialRecord, build_record
from sweeps.spec import SEARCH, Runtime, TrialSpec, param_space
from sweeps.tracking import Tracker
from sweeps.trial import train_trial, trial_name

MAX_TRIALS = 100_000  # Tune's num_samples when only budgets decide how many trials there are


@dataclass
class Stage:
    """What one Tune experiment of a sweep runs."""

    name: str                                  # the experiment's folder under the sweep's storage
    runtime: Runtime                           # the settings every trial shares
    parents: dict[str, str]                    # MLflow parent run id per parent run name ("clo", "final/clo")
    totals: dict[str, Any]                     # trials per parent run name, for the progress lines ("?" if unknown)
    epochs: int                                # epochs of a full trial, for the progress lines
    resources: dict                            # per trial (tune.with_resources)
    finished: Callable[[list], bool]           # given the experiment's trials: is the stage done?
    grid: list[TrialSpec] = field(default_factory=list)  # a stage without a searcher: its trials (final)
    search_alg: Any = None                     # a stage with one: it suggests the trials (search)
    scheduler: Any = None
    num_samples: int = 1
    max_concurrent: int | None = None          # None: as many as the cluster's resources hold

    @property
    def param_space(self) -> dict:
        return param_space(self.runtime, self.grid)


def experiment_path(cfg: SweepConfig, name: str) -> str:
    return f"{cfg.storage_path.rstrip('/')}/{name}"


def trainable(trainer: Callable | None, resources: dict):
    """The trial function with its resources; ``trainer`` replaces ``trainers.train.run`` (a stand-in
    trainer: benchmarks/cluster_sim.py)."""
    from ray import tune

    function = train_trial if trainer is None else tune.with_parameters(train_trial, trainer=trainer)
    return tune.with_resources(function, resources)


def read_saved(path: str):
    """A saved experiment as Tune left it (``ExperimentAnalysis``: its trials and their results),
    or None if it cannot be read."""
    from ray.tune import ExperimentAnalysis

    try:
        return ExperimentAnalysis(path)
    except Exception:  # noqa: BLE001 - unreadable state: let Tune's restore deal with it
        return None


def fitted(results):
    """The trials and results of the experiment ``Tuner.fit`` just ran, from the ``ResultGrid`` it
    returned. Its ``Result`` objects drop what a record needs (a trial's status, its error file,
    the config of a trial that never reported), so the records read the ``ExperimentAnalysis``
    the grid is made of: the live trials, not a second read of the experiment's state files."""
    return results._experiment_analysis


def is_done(trials: list) -> bool:
    return bool(trials) and all(t.status in ("TERMINATED", "ERROR") for t in trials)


def run_experiment(cfg: SweepConfig, stage: Stage, tracker: Tracker, resume: bool,
                   trainer: Callable | None = None) -> list[TrialRecord]:
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    opened_before = checkpoints.opened()
    path = experiment_path(cfg, stage.name)
    function = trainable(trainer, stage.resources)
    tuner, callback, analysis = None, None, None
    if resume and tune.Tuner.can_restore(path):
        saved = read_saved(path)
        if saved is not None and is_done(saved.trials) and stage.finished(saved.trials):
            say(f"{stage.name}: the experiment in {path} is finished; reusing its trials")
            analysis = saved
        else:
            say(f"{stage.name}: resuming the experiment in {path}")
            # no param_space: the saved one is reused as is, so a resume still works after an upgrade
            # added trainer options (Tune refuses a param_space whose keys differ from the saved one)
            tuner = tune.Tuner.restore(path, function, resume_unfinished=True, resume_errored=False,
                                       restart_errored=False)
    else:
        callback = SweepCallback(stage.name, tracker.uri, tracker.experiment, stage.parents, stage.totals,
                                 stage.epochs, cfg.storage_path,
                                 prune_checkpoints=cfg.keep_checkpoints == "best" and stage.name == SEARCH)
        tuner = tune.Tuner(
            function,
            param_space=stage.param_space,
            tune_config=tune.TuneConfig(
                search_alg=stage.search_alg, scheduler=stage.scheduler, num_samples=stage.num_samples,
                max_concurrent_trials=stage.max_concurrent, reuse_actors=cfg.reuse_actors,
                trial_name_creator=trial_name, trial_dirname_creator=trial_name),
            run_config=tune.RunConfig(
                name=stage.name, storage_path=cfg.storage_path, verbose=0,
                callbacks=[callback, JsonLoggerCallback(), CSVLoggerCallback()],  # no TensorBoard files
                # the last epoch checkpoint is enough to resume; the final one holds the model
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                failure_config=tune.FailureConfig(max_failures=cfg.max_failures)),
        )
    if tuner is not None:
        try:
            analysis = fitted(tuner.fit())
        except BaseException:
            if callback is not None:
                callback.stop_logging(drain=False)
            # interrupted (SIGTERM, Ctrl-C) or failed: trials may still run until Ray shuts down, so
            # only what no process holds goes now (sweeps.runner removes the rest on a local Ray)
            remove_trial_folders(cfg.storage_path, timeout_s=0)
            raise
        # finished, or stopped by Tune (ASHA, max_t, a signal Tune took): no trainer folder stays on any node
        remove_trial_folders(cfg.storage_path)
        if callback is not None:
            callback.stop_logging(drain=True)
    if not is_done(analysis.trials) or not stage.finished(analysis.trials):
        done = sum(t.status in ("TERMINATED", "ERROR") for t in analysis.trials)
        raise SweepInterrupted(f"{stage.name}: {done} of {len(analysis.trials)} trials finished, the stage is not done")
    records = []
    for trial in analysis.trials:
        frame = analysis.trial_dataframes.get(trial.trial_id)
        history = frame.to_dict("records") if frame is not None and len(frame) else []
        record = build_record(trial, history, storage_path=cfg.storage_path)
        if not tracker.trial_logged(record.arm, record.stage, trial.trial_id):  # the callback missed it (driver restarted)
            tracker.log_trial(record, stage.parents[record.group])
        records.append(record)
    # records come from results alone: a checkpoint opened during a stage would be a download on Tune's loop
    say(f"{stage.name}: {len(records)} trials ended; checkpoints the driver opened during the stage: "
        f"{checkpoints.opened() - opened_before}")
    return records

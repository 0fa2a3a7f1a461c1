"""One method's search: a Ray Tune experiment with Optuna's TPE, ASHA, checkpoints and retries.

Each method is its own Tune experiment under ``<storage>/<method>``, so ``--resume`` restores the
unfinished one (``Tuner.restore``: finished trials are kept, interrupted ones continue from their
last epoch checkpoint).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ray import tune
from ray.tune.search.optuna import OptunaSearch

from sweeps.config import SweepConfig, SweepInterrupted
from sweeps.progress import SweepCallback, fmt_params, say
from sweeps.records import build_record
from sweeps.tracking import TrialRecord, Tracker
from sweeps.trial import train_trial, trial_name, trial_number


@dataclass
class MethodOutcome:
    method: str
    parent_run_id: str
    records: list[TrialRecord]
    best: TrialRecord | None


class NumberedOptunaSearch(OptunaSearch):
    """OptunaSearch that also puts the Optuna trial number (1-based) into each trial's config, so
    console lines, MLflow run names and optuna-dashboard agree on "trial 3" across restores."""

    def suggest(self, trial_id: str):
        config = super().suggest(trial_id)
        if config is not None:
            self._suggested = getattr(self, "_suggested", 0) + 1
            ot_trial = getattr(self, "_ot_trials", {}).get(trial_id)
            config["trial_number"] = ot_trial.number + 1 if ot_trial is not None else self._suggested
        return config


def make_searcher(cfg: SweepConfig, method: str, space: dict) -> OptunaSearch:
    import optuna

    import search_spaces

    sampler = optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=cfg.tpe_startup_trials)
    storage = optuna.storages.RDBStorage(cfg.optuna_storage)
    return NumberedOptunaSearch(search_spaces.to_optuna(space), metric="objective", mode="max", sampler=sampler,
                                study_name=method, storage=storage)


def make_scheduler(cfg: SweepConfig, epochs: int):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if cfg.scheduler == "none" or epochs < 2:
        return FIFOScheduler()
    return ASHAScheduler(time_attr="epoch", metric="objective", mode="max", max_t=epochs,
                         grace_period=cfg.grace_period, reduction_factor=cfg.reduction_factor)


def trial_resources(cfg: SweepConfig):
    """One worker: the trial process holds its CPUs/GPUs. N workers: Ray Train's workers hold them
    and the trial's own process, which only waits on them, holds nothing."""
    if cfg.workers_per_trial == 1:
        return {"cpu": cfg.cpus_per_trial, "gpu": cfg.gpus_per_trial}
    return {"cpu": 0, "gpu": 0, "memory": 1}  # Tune refuses an empty request: one byte of memory


def search_method(cfg: SweepConfig, method: str, tracker: Tracker, resume: bool) -> MethodOutcome:
    import search_spaces
    from ray.tune import ExperimentAnalysis
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    space = search_spaces.get_space(method, cfg.space)
    base = cfg.train_config(method)
    param_space = {
        "train": {k: v for k, v in base.to_dict().items() if k not in space},
        "sweep": {"metric": cfg.metric, "env": {k: str(v) for k, v in cfg.env.items()}, "method": method,
                  "trial_logs": cfg.trial_logs, "cpus_per_trial": cfg.cpus_per_trial,
                  "gpus_per_trial": cfg.gpus_per_trial, "workers_per_trial": cfg.workers_per_trial,
                  "storage_path": cfg.storage_path},
    }
    parent = tracker.method_run(method, params={
        "trials": cfg.trials, "seed": cfg.seed, "objective": cfg.metric, "scheduler": cfg.scheduler,
        "max_concurrent": cfg.max_concurrent, "cpus_per_trial": cfg.cpus_per_trial, "gpus_per_trial": cfg.gpus_per_trial,
        "workers_per_trial": cfg.workers_per_trial, "max_failures": cfg.max_failures,
        **{f"space.{k}": v for k, v in search_spaces.describe(space).items()},
        **{k: v for k, v in base.to_dict().items() if k not in space and k not in ("output_dir", "resume")},
    }, tags={"sweep": cfg.name, "preset": cfg.preset})
    callback = SweepCallback(method, tracker.uri, tracker.experiment, parent, list(space), cfg.trials, base.epochs,
                             cfg.storage_path)
    trainable = tune.with_resources(train_trial, trial_resources(cfg))
    path = os.path.join(cfg.storage_path, method) if "://" not in cfg.storage_path else f"{cfg.storage_path}/{method}"

    if resume and tune.Tuner.can_restore(path):
        say(f"{method}: resuming the search in {path}")
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=False,
                                   restart_errored=False, param_space=param_space)
    else:
        say(f"{method}: searching {fmt_params(search_spaces.describe(space))} with {cfg.trials} trials, "
            f"{cfg.max_concurrent} at a time, {cfg.workers_per_trial} worker(s) each")
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                search_alg=make_searcher(cfg, method, space), scheduler=make_scheduler(cfg, base.epochs),
                num_samples=cfg.trials, max_concurrent_trials=cfg.max_concurrent, reuse_actors=cfg.reuse_actors,
                trial_name_creator=trial_name, trial_dirname_creator=trial_name),
            run_config=tune.RunConfig(
                name=method, storage_path=cfg.storage_path, verbose=0,
                callbacks=[callback, JsonLoggerCallback(), CSVLoggerCallback()],  # no TensorBoard files
                # the last epoch checkpoint is enough to resume; the final one holds the model
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                failure_config=tune.FailureConfig(max_failures=cfg.max_failures)),
        )
    tuner.fit()
    analysis = ExperimentAnalysis(path)
    finished = [t for t in analysis.trials if t.status in ("TERMINATED", "ERROR")]
    if len(finished) < cfg.trials:
        raise SweepInterrupted(f"{method}: {len(finished)}/{cfg.trials} trials finished")

    records = []
    for trial in analysis.trials:
        frame = analysis.trial_dataframes.get(trial.trial_id)
        history = frame.to_dict("records") if frame is not None and len(frame) else []
        record = build_record(method, trial, history, list(space), trial_number(trial, analysis.trials),
                              storage_path=cfg.storage_path)
        if not tracker.trial_logged(method, trial.trial_id):  # the callback missed it (driver restarted)
            tracker.log_trial(record, parent)
        records.append(record)
    close_optuna_trials(cfg, method)
    completed = [r for r in records if r.status == "completed"]
    best = max(completed, key=lambda r: r.objective) if completed else None
    return MethodOutcome(method, parent, records, best)


def close_optuna_trials(cfg: SweepConfig, method: str) -> None:
    """Optuna trials left RUNNING by a killed driver (asked, never told) are marked FAIL."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=method, storage=cfg.optuna_storage)
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)

"""One arm's search: a Ray Tune experiment with Optuna (TPE, or random search when the budget is too
small for TPE to model anything), ASHA, a budget in trials and/or compute, checkpoints and retries.

Each method is its own Tune experiment under ``<storage>/<method>``, so ``--resume`` restores the
unfinished one (``Tuner.restore``: finished trials are kept, interrupted ones continue from their
last epoch checkpoint).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ray import tune
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from sweeps.budget import BudgetLedger, TrialCost, budget_text, expected_trials, search_algorithm, used_compute

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
    search_algorithm: str = "tpe"  # "tpe" or "random" (sweeps.budget.search_algorithm)


class NumberedOptunaSearch(OptunaSearch):
    """OptunaSearch that puts the Optuna trial number (1-based) into each trial's config, so console
    lines, MLflow run names and optuna-dashboard agree on "trial 3" across restores, and that keeps
    a compute budget (``sweeps.budget``): a drawn configuration whose whole cost does not fit waits
    until running trials give budget back, and when none is running the search ends.

    Tune pickles the searcher with the experiment (``OptunaSearch.save`` saves ``__dict__``), so
    the ledger survives ``--resume``.
    """

    ledger: BudgetLedger | None = None
    _pending: tuple[str, dict] | None = None

    def suggest(self, trial_id: str):
        if self._pending is not None:  # the configuration drawn earlier, still waiting for budget
            waiting_id, config = self._pending
            self._pending = None
            self._ot_trials[trial_id] = self._ot_trials.pop(waiting_id)
        else:
            config = super().suggest(trial_id)
            if config is None or config == Searcher.FINISHED:
                return config
            self._suggested = getattr(self, "_suggested", 0) + 1
            ot_trial = getattr(self, "_ot_trials", {}).get(trial_id)
            config["trial_number"] = ot_trial.number + 1 if ot_trial is not None else self._suggested
        if self.ledger is not None and not self.ledger.fits(config):
            if self.ledger.running:
                self._pending = (trial_id, config)
                return None
            # nothing runs that could give budget back: the search is over; the drawn trial never ran
            import optuna

            self._ot_study.tell(self._ot_trials.pop(trial_id), state=optuna.trial.TrialState.FAIL)
            return Searcher.FINISHED
        if self.ledger is not None:
            self.ledger.start(trial_id, config)
        return config

    def on_trial_result(self, trial_id: str, result: dict):
        if self.ledger is not None:
            self.ledger.result(trial_id, result.get("epoch"))
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if self.ledger is not None:
            if result:
                self.ledger.result(trial_id, result.get("epoch"))
            self.ledger.finish(trial_id)
        super().on_trial_complete(trial_id, result, error)


def trial_cost(cfg: SweepConfig, base) -> TrialCost:
    return TrialCost(epochs=base.epochs, learned=base.method != "fixed", outer_step_cost=cfg.outer_step_cost,
                     default_outer_every=base.outer_every)


def make_searcher(cfg: SweepConfig, method: str, space: dict, cost: TrialCost) -> tuple[OptunaSearch, str]:
    """The searcher of one arm and a line saying which algorithm it runs."""
    import optuna

    import search_spaces

    expected = expected_trials(cfg.trials, cfg.budget_epochs, cost, space)
    algorithm, startup = search_algorithm(expected, cfg.tpe_startup_trials)
    if algorithm == "tpe":
        sampler = optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=startup)
        note = f"TPE after {startup} random trials (about {expected} trials expected)"
    else:
        sampler = optuna.samplers.RandomSampler(seed=cfg.seed)
        note = (f"random search: about {expected} trials expected, too few for TPE to model anything "
                f"(it needs {startup or 4}+ startup trials and more after them)")
    storage = optuna.storages.RDBStorage(cfg.optuna_storage)
    searcher = NumberedOptunaSearch(search_spaces.to_optuna(space), metric="objective", mode="max", sampler=sampler,
                                    study_name=method, storage=storage)
    if cfg.budget_epochs is not None:
        searcher.ledger = BudgetLedger(cfg.budget_epochs, cost)
    return searcher, note


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


def sweep_settings(cfg: SweepConfig, method: str) -> dict:
    """What a trial needs to know of the sweep (``config["sweep"]``)."""
    return {"metric": cfg.metric, "env": {k: str(v) for k, v in cfg.env.items()}, "method": method,
            "trial_logs": cfg.trial_logs, "cpus_per_trial": cfg.cpus_per_trial,
            "gpus_per_trial": cfg.gpus_per_trial, "workers_per_trial": cfg.workers_per_trial,
            "storage_path": cfg.storage_path}


def search_method(cfg: SweepConfig, method: str, tracker: Tracker, resume: bool) -> MethodOutcome:
    import search_spaces
    from ray.tune import ExperimentAnalysis
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    space = search_spaces.get_space(method, cfg.space)
    base = cfg.train_config(method)
    cost = trial_cost(cfg, base)
    param_space = {
        "train": {k: v for k, v in base.to_dict().items() if k not in space},
        "sweep": sweep_settings(cfg, method),
    }
    parent = tracker.method_run(method, params={
        "trials": cfg.trials, "budget_epochs": cfg.budget_epochs, "outer_step_cost": cfg.outer_step_cost, "seed": cfg.seed, "objective": cfg.metric, "scheduler": cfg.scheduler,
        "max_concurrent": cfg.max_concurrent, "cpus_per_trial": cfg.cpus_per_trial, "gpus_per_trial": cfg.gpus_per_trial,
        "workers_per_trial": cfg.workers_per_trial, "max_failures": cfg.max_failures,
        **{f"space.{k}": v for k, v in search_spaces.describe(space).items()},
        **{k: v for k, v in base.to_dict().items() if k not in space and k not in ("output_dir", "resume")},
    }, tags={"sweep": cfg.name, "preset": cfg.preset})
    callback = SweepCallback(method, tracker.uri, tracker.experiment, parent, list(space), cfg.trials or "?", base.epochs,
                             cfg.storage_path)
    trainable = tune.with_resources(train_trial, trial_resources(cfg))
    path = os.path.join(cfg.storage_path, method) if "://" not in cfg.storage_path else f"{cfg.storage_path}/{method}"

    tuner = None
    if resume and tune.Tuner.can_restore(path):
        if search_finished(cfg, path, cost, space):
            say(f"{method}: the search in {path} is finished; reusing its trials")
        else:
            say(f"{method}: resuming the search in {path}")
            # no param_space: the saved one is reused as is, so a resume still works after an upgrade
            # added trainer options (Tune refuses a param_space whose keys differ from the saved one)
            tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=False,
                                       restart_errored=False)
    else:
        searcher, algorithm = make_searcher(cfg, method, space, cost)
        say(f"{method}: searching {fmt_params(search_spaces.describe(space))} with {budget_text(cfg)}, "
            f"{cfg.max_concurrent} at a time, {cfg.workers_per_trial} worker(s) each; {algorithm}")
        tracker.client.set_tag(parent, "search_algorithm", algorithm)
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                search_alg=searcher, scheduler=make_scheduler(cfg, base.epochs),
                num_samples=cfg.trials or MAX_TRIALS, max_concurrent_trials=cfg.max_concurrent, reuse_actors=cfg.reuse_actors,
                trial_name_creator=trial_name, trial_dirname_creator=trial_name),
            run_config=tune.RunConfig(
                name=method, storage_path=cfg.storage_path, verbose=0,
                callbacks=[callback, JsonLoggerCallback(), CSVLoggerCallback()],  # no TensorBoard files
                # the last epoch checkpoint is enough to resume; the final one holds the model
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                failure_config=tune.FailureConfig(max_failures=cfg.max_failures)),
        )
    if tuner is not None:
        tuner.fit()
    analysis = ExperimentAnalysis(path)
    finished = [t for t in analysis.trials if t.status in ("TERMINATED", "ERROR")]
    if len(finished) < len(analysis.trials) or not budget_spent(cfg, finished, cost, space):
        raise SweepInterrupted(f"{method}: {len(finished)} trials finished, the budget is not spent")

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
    algorithm = search_algorithm(expected_trials(cfg.trials, cfg.budget_epochs, cost, space), cfg.tpe_startup_trials)[0]
    return MethodOutcome(method, parent, records, best, algorithm)


MAX_TRIALS = 100_000  # Tune's num_samples when only a compute budget limits the trials


def search_finished(cfg: SweepConfig, path: str, cost: TrialCost, space: dict) -> bool:
    """Every trial of a saved search ended and its budget is spent: nothing for Tune to do."""
    from ray.tune import ExperimentAnalysis

    try:
        trials = ExperimentAnalysis(path).trials
    except Exception:  # noqa: BLE001 - unreadable state: let Tune's restore deal with it
        return False
    finished = [t for t in trials if t.status in ("TERMINATED", "ERROR")]
    return bool(trials) and len(finished) == len(trials) and budget_spent(cfg, finished, cost, space)


def budget_spent(cfg: SweepConfig, finished: list, cost: TrialCost, space: dict) -> bool:
    """Every trial the budget allows has run: the trial cap is reached, or what is left of the
    compute budget cannot pay for the dearest trial the space can draw (the searcher ends the
    search when a drawn trial does not fit and none runs; with more left than the dearest trial
    costs, that cannot have happened, so the search was interrupted)."""
    if cfg.trials is not None and len(finished) >= cfg.trials:
        return True
    if cfg.budget_epochs is None:
        return False
    used = sum(used_compute(int((t.last_result or {}).get("epoch", 0) or 0), t.config, cost) for t in finished)
    return cfg.budget_epochs - used < cost.dearest(space) - 1e-9


def close_optuna_trials(cfg: SweepConfig, method: str) -> None:
    """Optuna trials left RUNNING by a killed driver (asked, never told) are marked FAIL."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=method, storage=cfg.optuna_storage)
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)

"""Run a sweep: one Ray Tune search (OptunaSearch, seeded TPE + ASHA) per method, tracked in MLflow.

    cfg = build_config(preset="smoke")          # sweeps.config
    result = run_sweep(start_config(cfg))       # or resume_config(cfg) to continue one

The methods are searched one after another with the same budget and seeds; each search is its own
Tune experiment under ``<storage>/<method>``, so ``--resume`` restores the unfinished one
(``Tuner.restore``: finished trials are kept, interrupted ones restart) and skips finished ones.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.search.optuna import OptunaSearch

from sweeps.config import PROJECT_ROOT, SweepConfig, SweepInterrupted, check_ray_address, preflight, save_state
from sweeps.tracking import TrialRecord, Tracker
from sweeps.trial import SUMMARY_FILE, MODEL_DIR, train_trial, trial_name, trial_number, trial_train_values
from trainers.errors import ConfigError

@dataclass
class MethodOutcome:
    method: str
    parent_run_id: str
    records: list[TrialRecord]
    best: TrialRecord | None
    registered: dict[str, Any] | None = None


@dataclass
class SweepResult:
    cfg: SweepConfig
    outcomes: list[MethodOutcome]
    wall_time_s: float
    tracking_uri: str
    report_dir: Path
    files: dict[str, Path] = field(default_factory=dict)
    table: str = ""


def _say(message: str) -> None:
    print(f"[sweep] {message}", flush=True)


def _fmt_time(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s"


def _fmt_params(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(values.items()))


# ---------------------------------------------------------------------------- Ray
def init_ray(cfg: SweepConfig) -> str:
    """Join the configured cluster or $RAY_ADDRESS (plain ``ray.init()``), else start a local Ray."""
    import ray

    address = cfg.ray_address or os.environ.get("RAY_ADDRESS")
    common = dict(log_to_driver=cfg.trial_logs, logging_level=logging.WARNING, configure_logging=True)
    try:
        if address:
            check_ray_address(address)
            if cfg.ray_address:
                ray.init(address=cfg.ray_address, **common)
            else:
                ray.init(**common)  # inside `ray job submit`: the job's cluster; num_cpus is not allowed here
            where = f"cluster {address}"
        else:
            pythonpath = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH")) if p)
            ray.init(address="local", num_cpus=cfg.num_cpus, include_dashboard=False,
                     runtime_env={"env_vars": {"PYTHONPATH": pythonpath}}, **common)
            where = "local Ray"
    except ConnectionError as err:
        raise ConfigError(f"cannot connect to Ray at {address}: {str(err).splitlines()[0]}") from None
    cpus = ray.cluster_resources().get("CPU", 0)
    gpus = ray.cluster_resources().get("GPU", 0)
    if cfg.cpus_per_trial > cpus or cfg.gpus_per_trial > gpus:
        ray.shutdown()
        raise ConfigError(f"a trial needs {cfg.cpus_per_trial:g} CPU / {cfg.gpus_per_trial:g} GPU but the {where} has "
                          f"{cpus:g} CPU / {gpus:g} GPU; lower cpus_per_trial / gpus_per_trial or use a bigger cluster")
    return f"{where} ({cpus:g} CPU, {gpus:g} GPU)"


# ---------------------------------------------------------------------------- progress + MLflow
class SweepCallback(tune.Callback):
    """Driver-side: prints progress and logs each trial to MLflow when it ends.

    Tune pickles callbacks with the experiment, so only plain settings are kept across a restore;
    the MLflow client and the per-trial histories are rebuilt.
    """

    def __init__(self, method: str, tracking_uri: str, experiment: str, parent_run_id: str,
                 space_keys: list[str], trials: int, epochs: int, heartbeat_s: float = 60.0):
        self.method, self.tracking_uri, self.experiment = method, tracking_uri, experiment
        self.parent_run_id, self.space_keys = parent_run_id, list(space_keys)
        self.trials, self.epochs, self.heartbeat_s = trials, epochs, heartbeat_s
        self._init_runtime()

    def _init_runtime(self) -> None:
        self._tracker: Tracker | None = None
        self._history: dict[str, list[dict]] = {}
        self._numbers: dict[str, int] = {}
        self._started = time.time()
        self._last_beat = time.time()

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._init_runtime()

    @property
    def tracker(self) -> Tracker:
        if self._tracker is None:
            self._tracker = Tracker(self.tracking_uri, self.experiment)
        return self._tracker

    def _label(self, trial, trials: list | None = None) -> str:
        if trials is not None:
            self._numbers[trial.trial_id] = trial_number(trial, trials)
        return f"{self.method} trial {self._numbers.get(trial.trial_id, '?')}/{self.trials}"

    def on_trial_start(self, iteration, trials, trial, **info):
        sampled = {k: trial.config[k] for k in self.space_keys if k in trial.config}
        _say(f"{self._label(trial, trials)} started: {_fmt_params(sampled)}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._history.setdefault(trial.trial_id, []).append(dict(result))
        try:
            line = (f"{self._label(trial, trials)} epoch {result['epoch']}/{self.epochs}: validation hypervolume "
                    f"{result['val_hypervolume']:.4f}, last exit {result['val_last_exit']:.4f}")
            if result.get("final_report") is True:
                line += f" | test hypervolume {result['test_hypervolume']:.4f}, last exit {result['test_last_exit']:.4f}"
            _say(f"{line} [{_fmt_time(time.time() - self._started)}]")
        except (KeyError, TypeError, ValueError):  # progress lines must never stop a search
            pass

    def _record(self, trial, trials: list, error: bool) -> None:
        history = self._history.pop(trial.trial_id, [])
        label = self._label(trial, trials)
        try:
            record = build_record(self.method, trial, history, self.space_keys, trial_number(trial, trials), error=error)
            if record.status == "stopped_early":
                _say(f"{label} stopped by ASHA after epoch {record.epochs[-1]['epoch'] if record.epochs else 0}")
            elif record.status == "error":
                _say(f"{label} FAILED: {(record.error or '').strip().splitlines()[-1:]}")
            self.tracker.log_trial(record, self.parent_run_id)
        except Exception as err:  # noqa: BLE001 - MLflow trouble must not kill the search; reconciled after fit
            _say(f"warning: could not log {label} to MLflow now ({type(err).__name__}: {err}); retrying at the end")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._record(trial, trials, error=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._record(trial, trials, error=True)

    def on_step_end(self, iteration, trials, **info):
        if time.time() - self._last_beat >= self.heartbeat_s:
            self._last_beat = time.time()
            running = sum(t.status == "RUNNING" for t in trials)
            done = sum(t.status in ("TERMINATED", "ERROR") for t in trials)
            _say(f"{self.method}: {running} running, {done}/{self.trials} done [{_fmt_time(time.time() - self._started)}]")


def _read_summary(checkpoint) -> dict | None:
    if checkpoint is None:
        return None
    try:
        with checkpoint.as_directory() as folder:
            path = Path(folder) / SUMMARY_FILE
            return json.loads(path.read_text()) if path.is_file() else None
    except Exception:  # noqa: BLE001 - a missing checkpoint makes the trial a partial one
        return None


def build_record(method: str, trial, history: list[dict], space_keys: list[str], number: int,
                 error: bool = False) -> TrialRecord:
    by_epoch: dict[int, dict] = {}
    for row in history:  # a trial restarted by --resume reports its epochs again: keep the latest
        epoch = row.get("epoch")
        if isinstance(epoch, (int, float)) and not (isinstance(epoch, float) and math.isnan(epoch)):
            by_epoch[int(epoch)] = row
    epochs = [by_epoch[e] for e in sorted(by_epoch)]
    # Only a trial that trained every epoch reports `final_report` and saves a checkpoint (deleted
    # after the sweep unless it is its method's best: keep_checkpoints=best).
    summary = _read_summary(trial.checkpoint)
    finished = bool(summary) or any(row.get("final_report") is True for row in epochs)
    failed = error or trial.status == "ERROR"
    status = "error" if failed else ("completed" if finished else "stopped_early")
    message = None
    if failed:
        try:
            message = str(trial.get_error() or "")
        except Exception:  # noqa: BLE001
            message = "trial failed (see the Ray Tune trial folder)"
    stamps = [row["timestamp"] - row.get("time_total_s", 0) for row in epochs if "timestamp" in row]
    start = trial.run_metadata.start_time or (min(stamps) if stamps else None)
    end = epochs[-1]["timestamp"] if epochs and "timestamp" in epochs[-1] else time.time()
    return TrialRecord(
        method=method, trial_id=trial.trial_id, number=number, status=status,
        sampled={k: trial.config[k] for k in space_keys if k in trial.config},
        train=trial_train_values(trial.config), epochs=epochs, summary=summary, error=message,
        start_ms=int(start * 1000) if start else None, end_ms=int(end * 1000),
        checkpoint=trial.checkpoint if summary else None,
    )


# ---------------------------------------------------------------------------- one method
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


def _searcher(cfg: SweepConfig, method: str, space: dict):
    import optuna

    import search_spaces

    sampler = optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=cfg.tpe_startup_trials)
    storage = optuna.storages.RDBStorage(cfg.optuna_storage)
    return NumberedOptunaSearch(search_spaces.to_optuna(space), metric="objective", mode="max", sampler=sampler,
                                study_name=method, storage=storage)


def _scheduler(cfg: SweepConfig, epochs: int):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if cfg.scheduler == "none" or epochs < 2:
        return FIFOScheduler()
    return ASHAScheduler(time_attr="epoch", metric="objective", mode="max", max_t=epochs,
                         grace_period=cfg.grace_period, reduction_factor=cfg.reduction_factor)


def search_method(cfg: SweepConfig, method: str, tracker: Tracker, resume: bool) -> MethodOutcome:
    import search_spaces
    from ray.tune import ExperimentAnalysis
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    space = search_spaces.get_space(method, cfg.space)
    base = cfg.train_config(method)
    param_space = {
        "train": {k: v for k, v in base.to_dict().items() if k not in space},
        "sweep": {"metric": cfg.metric, "env": {k: str(v) for k, v in cfg.env.items()},
                  "trial_logs": cfg.trial_logs, "cpus_per_trial": cfg.cpus_per_trial},
    }
    parent = tracker.method_run(method, params={
        "trials": cfg.trials, "seed": cfg.seed, "objective": cfg.metric, "scheduler": cfg.scheduler,
        "max_concurrent": cfg.max_concurrent, "cpus_per_trial": cfg.cpus_per_trial, "gpus_per_trial": cfg.gpus_per_trial,
        **{f"space.{k}": v for k, v in search_spaces.describe(space).items()},
        **{k: v for k, v in base.to_dict().items() if k not in space and k not in ("output_dir", "resume")},
    }, tags={"sweep": cfg.name, "preset": cfg.preset})
    callback = SweepCallback(method, tracker.uri, tracker.experiment, parent, list(space), cfg.trials, base.epochs)
    trainable = tune.with_resources(train_trial, {"cpu": cfg.cpus_per_trial, "gpu": cfg.gpus_per_trial})
    path = os.path.join(cfg.storage_path, method)

    if resume and tune.Tuner.can_restore(path):
        _say(f"{method}: resuming the search in {path}")
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=False,
                                   restart_errored=False, param_space=param_space)
    else:
        _say(f"{method}: searching {_fmt_params(search_spaces.describe(space))} with {cfg.trials} trials, "
             f"{cfg.max_concurrent} at a time")
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                search_alg=_searcher(cfg, method, space), scheduler=_scheduler(cfg, base.epochs),
                num_samples=cfg.trials, max_concurrent_trials=cfg.max_concurrent, reuse_actors=cfg.reuse_actors,
                trial_name_creator=trial_name, trial_dirname_creator=trial_name),
            run_config=tune.RunConfig(
                name=method, storage_path=cfg.storage_path, verbose=0,
                callbacks=[callback, JsonLoggerCallback(), CSVLoggerCallback()],  # no TensorBoard files
                failure_config=tune.FailureConfig(max_failures=0)),
        )
    grid = tuner.fit()
    analysis = ExperimentAnalysis(path)
    finished = [t for t in analysis.trials if t.status in ("TERMINATED", "ERROR")]
    if len(finished) < cfg.trials:
        raise SweepInterrupted(f"{method}: {len(finished)}/{cfg.trials} trials finished")
    del grid

    records = []
    for trial in analysis.trials:
        frame = analysis.trial_dataframes.get(trial.trial_id)
        history = frame.to_dict("records") if frame is not None and len(frame) else []
        record = build_record(method, trial, history, list(space), trial_number(trial, analysis.trials))
        if not tracker.trial_logged(method, trial.trial_id):  # the callback missed it (driver restarted)
            tracker.log_trial(record, parent)
        records.append(record)
    _close_optuna_trials(cfg, method)
    completed = [r for r in records if r.status == "completed"]
    best = max(completed, key=lambda r: r.objective) if completed else None
    return MethodOutcome(method, parent, records, best)


def _close_optuna_trials(cfg: SweepConfig, method: str) -> None:
    """Optuna trials left RUNNING by a killed driver (asked, never told) are marked FAIL."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=method, storage=cfg.optuna_storage)
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)


# ---------------------------------------------------------------------------- finishing a method
def register_best(cfg: SweepConfig, tracker: Tracker, outcome: MethodOutcome, staging: Path) -> dict[str, Any] | None:
    """Log the best model as a pyfunc with its exit policy, register it, alias it 'champion'."""
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    from sweeps.export import META, choose_operating_point
    from sweeps.serving import ExitPolicyModel, code_paths, pip_requirements

    best = outcome.best
    if best is None or best.checkpoint is None:
        return None
    name = f"{cfg.model_prefix}-{outcome.method}"
    policy = choose_operating_point(best.summary, cfg.register_speedup)
    work = staging / outcome.method
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    best.checkpoint.to_directory(str(work / "checkpoint"))
    model_dir = work / "checkpoint" / MODEL_DIR
    (work / "policy.json").write_text(json.dumps(policy, indent=2))
    meta = json.loads((model_dir / META).read_text())
    examples = {"sentence": ["a gripping, beautifully acted film.", "a dull and lifeless mess."],
                "premise": ["A man is playing a guitar.", "A man is playing a guitar."],
                "hypothesis": ["A person makes music.", "Nobody is playing."]}
    example = pd.DataFrame({f: examples.get(f, ["some text", "more text"]) for f in meta["text_fields"]})
    output = pd.DataFrame({"prediction": [0.0, 1.0] if meta["is_regression"] else [0, 1],
                           "exit_layer": [1, meta["num_layers"]], "confidence": [0.9, 0.8]})
    with mlflow.start_run(run_id=outcome.parent_run_id), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLflow's advice on type hints and on pickled python_model objects
        info = mlflow.pyfunc.log_model(
            name="model", python_model=ExitPolicyModel(),
            artifacts={"model": str(model_dir), "policy": str(work / "policy.json")},
            code_paths=code_paths(work / "code"), pip_requirements=pip_requirements(),
            signature=infer_signature(example, output), input_example=example,
            registered_model_name=name, await_registration_for=60,
        )
    version = str(info.registered_model_version)
    client = tracker.client
    client.set_registered_model_alias(name, "champion", version)
    tags = {"method": outcome.method, "sweep": cfg.name, "trial_id": best.trial_id,
            "policy": policy["policy"], "policy_setting": f"{policy['setting']:g}",
            "target_speedup": f"{policy['target_speedup']:g}", "validation_objective": f"{best.objective:.6f}",
            "validation_speedup": f"{policy['validation_speedup']:.4f}", "test_metric": f"{policy['test_metric']:.4f}"}
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    shutil.rmtree(work, ignore_errors=True)
    return {"name": name, "version": version, "uri": f"models:/{name}@champion", "policy": policy}


def _delete_other_checkpoints(outcome: MethodOutcome) -> None:
    for record in outcome.records:
        if record is outcome.best or record.checkpoint is None:
            continue
        try:
            record.checkpoint.filesystem.delete_dir(record.checkpoint.path)
        except Exception:  # noqa: BLE001 - already gone
            pass


def finish_method(cfg: SweepConfig, tracker: Tracker, outcome: MethodOutcome, report_dir: Path) -> None:
    from sweeps.report import trials_table

    parent = tracker.client.get_run(outcome.parent_run_id)
    if parent.data.tags.get("finalized") == "true":  # a resumed sweep: this method was finished before
        outcome.registered = json.loads(parent.data.tags.get("registered", "null"))
        if parent.info.status != "FINISHED":
            tracker.finish(outcome.parent_run_id, "FINISHED" if outcome.best else "FAILED")
        return
    trials_csv = report_dir / f"trials_{outcome.method}.csv"
    trials_table(outcome.records).to_csv(trials_csv, index=False)
    tracker.finalize_method(outcome.parent_run_id, outcome.best, outcome.records, trials_csv, {})
    if cfg.register and outcome.best is not None:
        outcome.registered = register_best(cfg, tracker, outcome, cfg.sweep_dir / "staging")
        if outcome.registered:
            _say(f"{outcome.method}: registered {outcome.registered['uri']} (version {outcome.registered['version']}, "
                 f"exit policy {outcome.registered['policy']['policy']} {outcome.registered['policy']['setting']:g})")
    if cfg.keep_checkpoints == "best":
        _delete_other_checkpoints(outcome)
    tracker.client.set_tag(outcome.parent_run_id, "registered", json.dumps(outcome.registered))
    tracker.client.set_tag(outcome.parent_run_id, "finalized", "true")
    tracker.finish(outcome.parent_run_id, "FINISHED" if outcome.best else "FAILED")


# ---------------------------------------------------------------------------- the sweep
def quiet_libraries() -> None:
    """Our progress lines instead of Tune's tables; no TensorBoard files; no MLflow progress bars."""
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"  # the JSON/CSV loggers are added explicitly
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0 the legacy reporter prints nothing
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow  # noqa: F401 - configures its loggers on import; quieten them afterwards
    import optuna

    warnings.filterwarnings("ignore", module=r"mlflow\..*")
    warnings.filterwarnings("ignore", message=r".*(type hints|Inferred schema contains integer|is already reported).*")
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def run_sweep(cfg: SweepConfig, resume: bool = False) -> SweepResult:
    import ray

    from sweeps.report import write_report

    started = time.time()
    preflight(cfg)
    quiet_libraries()
    where = init_ray(cfg)
    if threading.current_thread() is threading.main_thread():
        # after ray.init, which installs a SIGTERM handler that aborts: `kill <pid>` stops like Ctrl-C
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        cfg.sweep_dir.mkdir(parents=True, exist_ok=True)
        save_state(cfg)
        tracker = Tracker(cfg.resolved_tracking_uri, cfg.name, cfg.artifact_location,
                          sweep_tags={"preset": cfg.preset, "sweep_dir": str(cfg.sweep_dir)})
        _say(f"sweep '{cfg.name}' on {where}: methods {', '.join(cfg.methods)}, {cfg.trials} trials each, "
             f"objective {cfg.metric}; MLflow {cfg.resolved_tracking_uri}")
        report_dir = cfg.sweep_dir / "report"
        report_dir.mkdir(parents=True, exist_ok=True)
        outcomes = []
        for method in cfg.methods:
            outcome = search_method(cfg, method, tracker, resume=resume)
            finish_method(cfg, tracker, outcome, report_dir)
            outcomes.append(outcome)
        tracker.close_dangling()
        shutil.rmtree(cfg.sweep_dir / "staging", ignore_errors=True)
        result = SweepResult(cfg, outcomes, time.time() - started, cfg.resolved_tracking_uri, report_dir)
        write_report(result, tracker)
        return result
    except KeyboardInterrupt:
        raise SweepInterrupted("Ctrl-C or SIGTERM") from None
    finally:
        ray.shutdown()

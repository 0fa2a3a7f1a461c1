"""Run a sweep: every arm's search in one Ray Tune experiment, tracked in MLflow, the best models
registered, then every arm's best configuration retrained with every seed in a second experiment.

    cfg = build_config(preset="smoke")          # sweeps.presets: layered, then validated once
    result = run_sweep(start_config(cfg))       # sweeps.state; or run_sweep(resume_config(cfg), resume=True)

The pieces, one module each: ``ray_cluster`` (start or join Ray), ``search`` (the search stage:
each arm's searcher, budget and ASHA), ``final`` (the final stage and the comparison), ``timing``
(the final stage's timing phase, after all its training),
``experiment`` (the Tune experiment both stages run), ``searchers`` (the per-arm searcher and
scheduler wrappers), ``spec`` (what a trial is), ``trial`` (what runs in a trial), ``progress``
(console lines, MLflow logging as trials end), ``records`` (trial records from Tune's view),
``tracking`` (the MLflow layout), ``report`` (tables, plots). Registration is its own step,
``serving.register.register_sweep`` (also ``python platform/register.py``), run here once the
search stage is finished.

``trainer`` replaces ``trainers.train.run`` in every trial (same signature): the scheduling
simulator (benchmarks/cluster_sim.py) passes a stand-in.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import warnings
import logging
from dataclasses import dataclass, field
from pathlib import Path

from sweeps.budget import budget_text
from sweeps.config import SweepConfig
from sweeps.preflight import preflight, sqlite_folder
from sweeps.state import SweepInterrupted, save_state
from sweeps.progress import say
from sweeps.placement import remove_local_folders
from sweeps.ray_cluster import init_ray
from sweeps.search import ArmOutcome, search_stage
from sweeps.spec import SEARCH
from sweeps.tracking import Tracker
from trainers.layout import TAG_FINALIZED, TRUE

# how long a driver that stops its own Ray waits for the trial processes Ray killed to let go of their folders
LEFTOVER_WAIT_S = 10.0


@dataclass
class SweepResult:
    cfg: SweepConfig
    outcomes: list[ArmOutcome]
    wall_time_s: float
    tracking_uri: str
    report_dir: Path
    files: dict[str, Path] = field(default_factory=dict)
    table: str = ""
    registered: dict | None = None  # serving.register.register_sweep's result (None: not registered)
    experiment_id: str | None = None
    final: object | None = None     # sweeps.final.Comparison (None: no final stage)


def run_sweep(cfg: SweepConfig, resume: bool = False, trainer=None) -> SweepResult:
    """The whole sweep on a validated ``cfg`` (``build_config``, ``start_config``/``resume_config``).
    It checks that MLflow and Ray are reachable first (``sweeps.preflight``), the only such check."""
    import ray

    from sweeps.report import write_report

    started = time.time()
    preflight(cfg)  # the one reachability check: an unreachable MLflow or Ray is a ConfigError before Ray starts
    quiet_libraries()
    own_ray = not (cfg.ray_address or os.environ.get("RAY_ADDRESS"))  # a local Ray this driver starts and stops
    where = init_ray(cfg)
    if threading.current_thread() is threading.main_thread():
        # after ray.init, which installs a SIGTERM handler that aborts: `kill <pid>` stops like Ctrl-C
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    tracker = None
    try:
        cfg.sweep_dir.mkdir(parents=True, exist_ok=True)  # the first thing written: every check has passed
        store = sqlite_folder(cfg.resolved_tracking_uri)
        if store is not None:
            store.mkdir(parents=True, exist_ok=True)
        save_state(cfg)
        tracker = Tracker(cfg.resolved_tracking_uri, cfg.name, cfg.artifact_location,
                          sweep_tags={"preset": cfg.preset, "sweep_dir": str(cfg.sweep_dir)})
        closed = tracker.close_orphans()  # runs a driver killed outright (SIGKILL) left RUNNING
        if closed:
            say(f"closed {closed} MLflow run(s) left RUNNING by a driver that was killed (now KILLED)")
        say(f"sweep '{cfg.name}' on {where}: arms {', '.join(cfg.arms)}, {budget_text(cfg)} each, "
            f"{cfg.workers_per_trial} worker(s) per trial, objective {cfg.metric}; MLflow {cfg.resolved_tracking_uri}")
        report_dir = cfg.sweep_dir / "report"
        report_dir.mkdir(parents=True, exist_ok=True)
        outcomes = search_stage(cfg, tracker, resume, trainer)
        for outcome in outcomes:
            finish_arm(cfg, tracker, outcome, report_dir)
        result = SweepResult(cfg, outcomes, time.time() - started, cfg.resolved_tracking_uri, report_dir,
                             experiment_id=tracker.experiment_id)
        write_report(result, tracker)
        if cfg.register and any(o.best is not None for o in outcomes):
            result.registered = register_models(cfg)
        if cfg.final_seeds:
            result.final = final_stage(cfg, tracker, outcomes, report_dir, resume, trainer)
        result.wall_time_s = time.time() - started
        return result
    except KeyboardInterrupt:
        _close_runs(tracker, "KILLED")
        raise SweepInterrupted("Ctrl-C or SIGTERM") from None
    except SweepInterrupted:  # Tune took the signal and returned early: stopped, not failed
        _close_runs(tracker, "KILLED")
        raise
    except BaseException:
        _close_runs(tracker, "FAILED")
        raise
    finally:
        ray.shutdown()
        if own_ray:  # an interrupted stage's trials have died with it: their trainer folders go too
            remove_local_folders(cfg.storage_path, timeout_s=LEFTOVER_WAIT_S)


def finish_arm(cfg: SweepConfig, tracker: Tracker, outcome: ArmOutcome, report_dir: Path) -> None:
    """Summarize an arm's finished search in its parent run, clean up its checkpoints, end the run."""
    from sweeps.report import trials_table

    parent = tracker.client.get_run(outcome.parent_run_id)
    if parent.data.tags.get(TAG_FINALIZED) == TRUE:  # a resumed sweep: this arm was finished before
        if parent.info.status != "FINISHED":
            tracker.finish(outcome.parent_run_id, "FINISHED" if outcome.best else "FAILED")
        return
    trials_csv = report_dir / f"trials_{outcome.arm}.csv"
    trials_table(outcome.records).to_csv(trials_csv, index=False)
    tracker.finalize_arm(outcome.parent_run_id, outcome.best, outcome.records, trials_csv, {})
    if cfg.keep_checkpoints == "best":
        delete_other_checkpoints(outcome, cfg.storage_path)
    tracker.client.set_tag(outcome.parent_run_id, TAG_FINALIZED, TRUE)
    tracker.finish(outcome.parent_run_id, "FINISHED" if outcome.best else "FAILED")


def final_stage(cfg: SweepConfig, tracker: Tracker, outcomes: list[ArmOutcome], report_dir: Path, resume: bool,
                trainer=None):
    """Each arm's best configuration retrained with every seed of final_seeds, the models timed on a
    quiet device once every training has ended, then compared on test."""
    from sweeps import final, timing

    finals = final.final_stage(cfg, tracker, outcomes, resume, trainer)  # returns when every trial has ended
    timed = timing.timing_phase(cfg, tracker, {final.arm: final.records for final in finals})
    comparison = final.compare_arms(cfg, tracker, finals, report_dir, timed)
    for line in comparison.verdicts.values():
        say(line)
    return comparison


def register_models(cfg: SweepConfig) -> dict | None:
    """Every arm's best model, registered with the exit policy for ``register_speedup``
    (``serving.register``: idempotent, so a resumed sweep registers nothing twice). A target no
    setting reaches is a warning: the sweep's results stand, and ``platform/register.py`` can
    register them later with another target."""
    from serving.describe import describe
    from serving.register import register_sweep
    from trainers.errors import ConfigError

    try:
        result = register_sweep(cfg.resolved_tracking_uri, cfg.name, target_speedup=cfg.register_speedup,
                                model_name=cfg.registry_prefix)
    except ConfigError as err:
        say(f"warning: no model registered: {err}")
        return None
    for line in describe(result):
        say(line[2:] if line.startswith("  ") else line)
    return result


def delete_other_checkpoints(outcome: ArmOutcome, storage_path: str) -> None:
    """Keep only the best trial's model checkpoint of an arm (``keep_checkpoints: best``): the
    other trials' models, the last epoch checkpoints of trials ASHA stopped or that failed, and
    the Ray Train run folders of multi-worker trials other than the best. The search's callback
    already deleted them as each trial ended (``sweeps.checkpoints``); this catches what a
    stopped driver left undone."""
    from sweeps.checkpoints import delete_folder, filesystem_of, train_run_folder

    for record in outcome.records:
        for checkpoint in (None if record is outcome.best else record.checkpoint, record.resume_checkpoint):
            if checkpoint is not None:
                delete_folder(checkpoint.filesystem, checkpoint.path)
        if record is not outcome.best:
            delete_folder(*filesystem_of(train_run_folder(storage_path, SEARCH, record.trial_id)))


def _close_runs(tracker: Tracker | None, status: str) -> None:
    """No run of this driver stays RUNNING when it stops (Ctrl-C, SIGTERM, an error)."""
    if tracker is None:
        return
    try:
        closed = tracker.close_own_runs(status)
        if closed:
            say(f"ended {closed} open MLflow run(s) as {status}")
    except Exception as err:  # noqa: BLE001 - the store may be what failed; --resume closes them then
        say(f"warning: could not end the open MLflow runs ({type(err).__name__}); the next --resume will")


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

"""The sweep's console: one line per trial event, a heartbeat, and each trial logged to MLflow when it ends."""

from __future__ import annotations

import os
import queue
import threading
import time
from typing import Any

from ray import tune

from sweeps import checkpoints
from sweeps.records import build_record
from sweeps.spec import SEARCH, TrialSpec
from sweeps.tracking import Tracker
from sweeps.trial import trial_name


def say(message: str) -> None:
    print(f"[sweep] {message}", flush=True)


def fmt_time(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s"


def fmt_params(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(values.items()))


class SweepCallback(tune.Callback):
    """Driver-side: prints progress and logs each trial to MLflow (nested in its arm's parent run)
    when it ends.

    The logging (some 50 MLflow calls and two figures for a completed trial) runs in a background
    thread, in the order trials end, so Tune's loop never waits for it: the next trial starts in a
    freed slot at once. The experiment's end waits for the thread; what a stopped driver did not
    log is logged by ``sweeps.experiment`` afterwards (every write is idempotent).

    A record is built from the trial's results alone (its summary travels in its final result):
    the callback opens no checkpoint. With ``keep_checkpoints: best`` the search stage's callback
    also frees the checkpoints an ended trial makes useless (``sweeps.checkpoints``): decided on
    the loop from Tune's trials, deleted on the thread.

    Tune pickles callbacks with the experiment, so only plain settings are kept across a restore;
    the MLflow client, the logging thread and the per-trial histories are rebuilt.
    """

    def __init__(self, stage: str, tracking_uri: str, experiment: str, parents: dict[str, str],
                 totals: dict[str, Any], epochs: int, storage_path: str, heartbeat_s: float = 60.0,
                 prune_checkpoints: bool = False):
        self.stage, self.tracking_uri, self.experiment = stage, tracking_uri, experiment
        self.parents, self.totals = dict(parents), dict(totals)
        self.epochs, self.storage_path, self.heartbeat_s = epochs, storage_path, heartbeat_s
        self.prune_checkpoints = prune_checkpoints  # keep_checkpoints: best, in the search stage
        self._init_runtime()

    def _init_runtime(self) -> None:
        self._tracker: Tracker | None = None
        self._history: dict[str, list[dict]] = {}
        self._started = time.time()
        self._last_beat = time.time()
        self._queue: queue.Queue = queue.Queue()
        self._logger: threading.Thread | None = None
        self._abandon = threading.Event()
        self._checkpoints = checkpoints.SearchCheckpoints(self.storage_path, self.stage)
        self._ended: dict[str, dict] = {}  # the storage-log test hook's view of the ended trials

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

    def _label(self, trial) -> str:
        spec = TrialSpec.of(trial)
        total = self.totals.get(spec.group, "?")
        return f"{spec.label}/{total}" if spec.stage == SEARCH else spec.label

    def on_trial_start(self, iteration, trials, trial, **info):
        say(f"{self._label(trial)} started: {fmt_params(TrialSpec.of(trial).sampled)}")

    def on_trial_recover(self, iteration, trials, trial, **info):
        done = max((row.get("epoch", 0) for row in self._history.get(trial.trial_id, [])), default=0)
        say(f"{self._label(trial)} stopped (an error, or a lost process or node); restarting from its "
            f"checkpoint of epoch {done}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._history.setdefault(trial.trial_id, []).append(dict(result))
        try:
            line = (f"{self._label(trial)} epoch {result['epoch']}/{self.epochs}: validation hypervolume "
                    f"{result['val_hypervolume']:.4f}, last exit {result['val_last_exit']:.4f}")
            if result.get("final_report") is True:
                line += f" | test hypervolume {result['test_hypervolume']:.4f}, last exit {result['test_last_exit']:.4f}"
            say(f"{line} [{fmt_time(time.time() - self._started)}]")
        except (KeyError, TypeError, ValueError):  # progress lines must never stop a search
            pass

    def _record(self, trial, error: bool, trials: list) -> None:
        history = self._history.pop(trial.trial_id, [])
        label = self._label(trial)
        releases = self._checkpoints.on_trial_end(trial, trials, error) if self.prune_checkpoints else []
        try:
            record = build_record(trial, history, error=error, storage_path=self.storage_path)
        except Exception as err:  # noqa: BLE001 - reconciled after fit
            say(f"warning: could not read {label} now ({type(err).__name__}: {err}); retrying at the end")
            self._enqueue((label, None, releases, None))
            return
        if record.status == "stopped_early":
            say(f"{label} stopped by ASHA after epoch {record.epochs[-1]['epoch'] if record.epochs else 0}")
        elif record.status == "error":
            say(f"{label} FAILED: {record.reason}")
        ended = None
        if os.environ.get(checkpoints.STORAGE_LOG_ENV) and self.stage == SEARCH:
            self._ended[trial.trial_id] = {"arm": record.arm, "number": record.number, "status": record.status,
                                           "objective": checkpoints.objective_of(trial), "folder": trial_name(trial)}
            ended = dict(self._ended)
        self._enqueue((label, record, releases, ended))

    def _enqueue(self, item: tuple) -> None:
        if self._logger is None:
            self._logger = threading.Thread(target=self._log_trials, name="sweep-mlflow-logger", daemon=True)
            self._logger.start()
        self._queue.put(item)

    def _log_trials(self) -> None:
        while not self._abandon.is_set():
            item = self._queue.get()
            if item is None:
                return
            label, record, releases, ended = item
            for release in releases:
                release.delete()
            if ended is not None:
                checkpoints.log_storage(self.storage_path, self.stage, ended)
            if record is None:
                continue
            try:
                self.tracker.log_trial(record, self.parents[record.group])
            except Exception as err:  # noqa: BLE001 - MLflow trouble must not kill the search; reconciled after fit
                say(f"warning: could not log {label} to MLflow now ({type(err).__name__}: {err}); retrying at the end")

    def on_experiment_end(self, trials, **info):
        self.stop_logging(drain=True)

    def stop_logging(self, drain: bool) -> None:
        """Wait for the logging thread: after every queued trial (``drain``), or after the one it is
        writing (a stopped sweep: the rest is logged on ``--resume``)."""
        if self._logger is None:
            return
        if not drain:
            self._abandon.set()
        self._queue.put(None)
        self._logger.join()
        self._logger = None

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._record(trial, error=False, trials=trials)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._record(trial, error=True, trials=trials)

    def on_step_end(self, iteration, trials, **info):
        if time.time() - self._last_beat >= self.heartbeat_s:
            self._last_beat = time.time()
            running = sum(t.status == "RUNNING" for t in trials)
            done = sum(t.status in ("TERMINATED", "ERROR") for t in trials)
            say(f"{self.stage}: {running} running, {done} done [{fmt_time(time.time() - self._started)}]")

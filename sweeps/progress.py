"""The sweep's console: one line per trial event, a heartbeat, and each trial logged to MLflow when it ends."""

from __future__ import annotations

import time
from typing import Any

from ray import tune

from sweeps.records import build_record
from sweeps.tracking import Tracker
from sweeps.trial import trial_number


def say(message: str) -> None:
    print(f"[sweep] {message}", flush=True)


def fmt_time(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s"


def fmt_params(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(values.items()))


class SweepCallback(tune.Callback):
    """Driver-side: prints progress and logs each trial to MLflow when it ends.

    Tune pickles callbacks with the experiment, so only plain settings are kept across a restore;
    the MLflow client and the per-trial histories are rebuilt.
    """

    def __init__(self, method: str, tracking_uri: str, experiment: str, parent_run_id: str,
                 space_keys: list[str], trials: int, epochs: int, storage_path: str, heartbeat_s: float = 60.0):
        self.method, self.tracking_uri, self.experiment = method, tracking_uri, experiment
        self.parent_run_id, self.space_keys = parent_run_id, list(space_keys)
        self.trials, self.epochs, self.storage_path, self.heartbeat_s = trials, epochs, storage_path, heartbeat_s
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
        say(f"{self._label(trial, trials)} started: {fmt_params(sampled)}")

    def on_trial_recover(self, iteration, trials, trial, **info):
        done = max((row.get("epoch", 0) for row in self._history.get(trial.trial_id, [])), default=0)
        say(f"{self._label(trial, trials)} stopped (an error, or a lost process or node); restarting from its "
            f"checkpoint of epoch {done}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._history.setdefault(trial.trial_id, []).append(dict(result))
        try:
            line = (f"{self._label(trial, trials)} epoch {result['epoch']}/{self.epochs}: validation hypervolume "
                    f"{result['val_hypervolume']:.4f}, last exit {result['val_last_exit']:.4f}")
            if result.get("final_report") is True:
                line += f" | test hypervolume {result['test_hypervolume']:.4f}, last exit {result['test_last_exit']:.4f}"
            say(f"{line} [{fmt_time(time.time() - self._started)}]")
        except (KeyError, TypeError, ValueError):  # progress lines must never stop a search
            pass

    def _record(self, trial, trials: list, error: bool) -> None:
        history = self._history.pop(trial.trial_id, [])
        label = self._label(trial, trials)
        try:
            record = build_record(self.method, trial, history, self.space_keys, trial_number(trial, trials),
                                  error=error, storage_path=self.storage_path)
            if record.status == "stopped_early":
                say(f"{label} stopped by ASHA after epoch {record.epochs[-1]['epoch'] if record.epochs else 0}")
            elif record.status == "error":
                say(f"{label} FAILED: {record.reason}")
            self.tracker.log_trial(record, self.parent_run_id)
        except Exception as err:  # noqa: BLE001 - MLflow trouble must not kill the search; reconciled after fit
            say(f"warning: could not log {label} to MLflow now ({type(err).__name__}: {err}); retrying at the end")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._record(trial, trials, error=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._record(trial, trials, error=True)

    def on_step_end(self, iteration, trials, **info):
        if time.time() - self._last_beat >= self.heartbeat_s:
            self._last_beat = time.time()
            running = sum(t.status == "RUNNING" for t in trials)
            done = sum(t.status in ("TERMINATED", "ERROR") for t in trials)
            say(f"{self.method}: {running} running, {done}/{self.trials} done [{fmt_time(time.time() - self._started)}]")

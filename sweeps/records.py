"""What the driver knows about a trial (``TrialRecord``), rebuilt from Ray Tune's view of it.

A trial's epochs and the trainer's summary come from its reported results (the final result
carries the summary: ``sweeps.trial.final_metrics``); nothing here opens a checkpoint. A record
only points at its trial's checkpoints: the final one holds the trained model. Single-worker
trials report that checkpoint to Tune; multi-worker trials (Ray Train) report it to Train, and
Tune sees its location as ``checkpoint_path`` in the result.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweeps.spec import TrialSpec
from sweeps.trial import CHECKPOINT_PATH_KEY, DIVERGED, SUMMARY_KEY
from trainers.config import TrainConfig
from trainers.layout import run_name
from trainers.results import Summary


@dataclass
class TrialRecord:
    """What the driver knows about one finished (or stopped, or failed) trial."""

    arm: str                             # fixed-uniform, ..., clo
    stage: str                           # "search" or "final" (sweeps.spec.SEARCH, FINAL)
    trial_id: str
    number: int                          # search: its number in the arm; final: the seed
    status: str                          # completed | stopped_early | error
    sampled: dict[str, Any]              # the values the searcher drew (final: the seed)
    train: dict[str, Any]                # the trainer options (shared + sampled), as MLflow and the reports list them
    epochs: list[dict[str, Any]] = field(default_factory=list)  # Tune results, one per reported epoch
    summary: Summary | None = None       # the trainer's summary (completed trials)
    error: str | None = None
    reason: str | None = None            # one line: "diverged at step N (...)" or the error's last line
    start_ms: int | None = None
    end_ms: int | None = None
    checkpoint: Any = None               # ray.tune.Checkpoint of the exported model (completed trials)
    resume_checkpoint: Any = None        # the last epoch checkpoint of a trial that did not complete
    config: TrainConfig | None = None    # the trial's trainer config (its TrialSpec.train): what a retraining starts from

    @property
    def group(self) -> str:
        """The parent run the trial is nested in (its name): the arm's search "clo", or "final/clo"."""
        return run_name(self.arm, self.stage)

    @property
    def objective(self) -> float:
        return self.epochs[-1]["objective"] if self.epochs else float("nan")

    @property
    def final_result(self) -> dict[str, Any] | None:
        """The result reported with the test metrics (completed trials), as Tune recorded it."""
        return next((row for row in reversed(self.epochs) if row.get("final_report") is True), None)

    @property
    def trained_from(self) -> float | None:
        """``time.time()`` when the trainer started (the attempt that completed); None if unknown."""
        return _stamp(self.final_result, "trained_from")

    @property
    def trained_until(self) -> float | None:
        """``time.time()`` when the trainer returned; None if unknown."""
        return _stamp(self.final_result, "trained_until")


def _stamp(result: dict | None, key: str) -> float | None:
    value = (result or {}).get(key)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def result_summary(result: dict | None) -> Summary | None:
    """The trainer's summary carried by a final result (``sweeps.trial.final_metrics``); None if it has none."""
    text = (result or {}).get(SUMMARY_KEY)
    if not isinstance(text, str):
        return None
    try:
        return Summary.from_dict(json.loads(text))
    except (TypeError, KeyError, ValueError):  # not a summary this code can read: the trial counts as a partial one
        return None


def final_checkpoint(trial, history: list[dict], storage_path: str | None):
    """The checkpoint holding the exported model and summary, or None."""
    if trial.checkpoint is not None:
        return trial.checkpoint
    path = next((row.get(CHECKPOINT_PATH_KEY) for row in reversed(history) if row.get("final_report") is True), None)
    if not path or not storage_path:
        return None
    import pyarrow.fs
    from ray.tune import Checkpoint

    filesystem = pyarrow.fs.FileSystem.from_uri(storage_path)[0] if "://" in storage_path else pyarrow.fs.LocalFileSystem()
    return Checkpoint(path, filesystem=filesystem)


def trial_error(trial) -> str:
    """The text of a failed trial's error: the driver-local error file (written at once), else storage's copy."""
    try:
        local = trial.error_file
        if local and Path(local).is_file():
            return Path(local).read_text()
        return str(trial.get_error() or "trial failed (see the Ray Tune trial folder)")
    except Exception:  # noqa: BLE001
        return "trial failed (see the Ray Tune trial folder)"


def failure_reason(message: str | None) -> str | None:
    """The one-line reason of a failed trial: 'diverged at step N (...)' or the error's last line."""
    if not message:
        return None
    found = DIVERGED.findall(message)
    if found:
        return found[-1]
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else None


def build_record(trial, history: list[dict], error: bool = False, storage_path: str | None = None) -> TrialRecord:
    spec = TrialSpec.of(trial)
    by_epoch: dict[int, dict] = {}
    for row in history:  # a restarted trial may report an epoch again: keep the latest
        epoch = row.get("epoch")
        if isinstance(epoch, (int, float)) and not (isinstance(epoch, float) and math.isnan(epoch)):
            by_epoch[int(epoch)] = row
    epochs = [by_epoch[e] for e in sorted(by_epoch)]
    checkpoint = final_checkpoint(trial, epochs, storage_path)
    summary = result_summary(next((row for row in reversed(epochs) if row.get("final_report") is True), None))
    finished = bool(summary) or any(row.get("final_report") is True for row in epochs)
    failed = error or trial.status == "ERROR"
    status = "error" if failed else ("completed" if finished else "stopped_early")
    message = None
    if failed:
        message = trial_error(trial)
    stamps = [row["timestamp"] - row.get("time_total_s", 0) for row in epochs if "timestamp" in row]
    start = trial.run_metadata.start_time or (min(stamps) if stamps else None)
    end = epochs[-1]["timestamp"] if epochs and "timestamp" in epochs[-1] else time.time()
    return TrialRecord(
        arm=spec.arm, stage=spec.stage, trial_id=trial.trial_id, number=spec.number, status=status,
        sampled=dict(spec.sampled), train=spec.train.to_dict(), config=spec.train, epochs=epochs, summary=summary, error=message,
        reason=failure_reason(message) if failed else None,
        start_ms=int(start * 1000) if start else None, end_ms=int(end * 1000),
        checkpoint=checkpoint if summary else None,
        resume_checkpoint=None if summary else trial.checkpoint,
    )

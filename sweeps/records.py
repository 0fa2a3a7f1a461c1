"""What the driver knows about a trial, rebuilt from Ray Tune's view of it.

A trial's epochs come from its reported results; its trained model and the trainer's summary from
its final checkpoint. Single-worker trials report that checkpoint to Tune; multi-worker trials
(Ray Train) report it to Train, and Tune sees its location as ``checkpoint_path`` in the result.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from sweeps.tracking import TrialRecord
from sweeps.trial import CHECKPOINT_PATH_KEY, DIVERGED, SUMMARY_FILE, trial_train_values


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


def read_summary(checkpoint) -> dict | None:
    if checkpoint is None:
        return None
    try:
        with checkpoint.as_directory() as folder:
            path = Path(folder) / SUMMARY_FILE
            return json.loads(path.read_text()) if path.is_file() else None
    except Exception:  # noqa: BLE001 - a missing checkpoint makes the trial a partial one
        return None


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


def build_record(method: str, trial, history: list[dict], space_keys: list[str], number: int,
                 error: bool = False, storage_path: str | None = None) -> TrialRecord:
    by_epoch: dict[int, dict] = {}
    for row in history:  # a restarted trial may report an epoch again: keep the latest
        epoch = row.get("epoch")
        if isinstance(epoch, (int, float)) and not (isinstance(epoch, float) and math.isnan(epoch)):
            by_epoch[int(epoch)] = row
    epochs = [by_epoch[e] for e in sorted(by_epoch)]
    checkpoint = final_checkpoint(trial, epochs, storage_path)
    summary = read_summary(checkpoint)
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
        method=method, trial_id=trial.trial_id, number=number, status=status,
        sampled={k: trial.config[k] for k in space_keys if k in trial.config},
        train=trial_train_values(trial.config), epochs=epochs, summary=summary, error=message,
        reason=failure_reason(message) if failed else None,
        start_ms=int(start * 1000) if start else None, end_ms=int(end * 1000),
        checkpoint=checkpoint if summary else None,
        resume_checkpoint=None if summary else trial.checkpoint,
    )

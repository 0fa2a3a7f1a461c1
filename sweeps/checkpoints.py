"""Trials' checkpoints in the sweep's storage: the one place the driver opens one, and the rules
that bound how many the search keeps.

**Opening.** ``open_checkpoint`` is the only way the driver reads a checkpoint's files (on S3 it
downloads the whole checkpoint). It counts every call in this process (``opened``): the stages
build their records from results alone (a trial's summary travels in its final result), so the
count does not move while a stage runs; only the steps that need a model open one (the final
comparison's test logits, the timing phase; registration downloads its models itself).

**Keeping** (``keep_checkpoints: best``), decided as each search trial ends (``SearchCheckpoints``):

- an epoch checkpoint goes once a later one exists: Tune's and Ray Train's
  ``CheckpointConfig(num_to_keep=1)`` delete it when the next one is registered, so a running
  trial holds at most two (the last one and the one being registered);
- a trial ASHA stopped, or one that failed for good (its retries spent), loses its checkpoint when
  it ends: Tune never restarts it, and ``--resume`` does not either (``resume_errored=False``). A
  trial Tune restarts after a lost process (``max_failures``) has not ended: it keeps its last
  epoch checkpoint to restart from;
- a completed trial keeps its model only while it is its arm's best so far (the highest objective,
  the lower trial number on a tie: the same choice the search stage makes at its end); the model
  it beat goes.

Deleting is a ``delete_dir`` per folder (nothing is downloaded); it runs on the driver's logging
thread, not on Tune's loop. The end of the search deletes the same way once more
(``sweeps.runner.delete_other_checkpoints``), which catches what a stopped driver left.
"""

from __future__ import annotations

import json
import math
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

STORAGE_LOG_ENV = "LEEBERT_STORAGE_LOG"  # test hook: a JSON-lines file that gets the storage listing after each search trial's end
TRAIN_RUNS = "_train"  # Ray Train's runs of multi-worker trials, under the experiment's folder (sweeps.trial)

_opened = 0
_opened_lock = threading.Lock()


def opened() -> int:
    """How many checkpoints this process has opened (``open_checkpoint``) so far."""
    return _opened


@contextmanager
def open_checkpoint(checkpoint) -> Iterator[str]:
    """A Ray checkpoint's files as a local folder (downloaded first if the storage is remote)."""
    global _opened
    with _opened_lock:
        _opened += 1
    with checkpoint.as_directory() as folder:
        yield folder


def filesystem_of(path: str):
    """(pyarrow filesystem, path in it) for a local path or a URI (s3://, gs://)."""
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(path) if "://" in path else (pyarrow.fs.LocalFileSystem(), path)


def train_run_folder(storage_path: str, experiment: str, trial_id: str) -> str:
    """Where Ray Train keeps the checkpoints of a multi-worker trial (``sweeps.trial.fit_data_parallel``)."""
    return "/".join([storage_path.rstrip("/"), experiment, TRAIN_RUNS, trial_id])


def delete_folder(filesystem, path: str) -> bool:
    """Delete a folder if it is there; False if it was not (or could not be deleted)."""
    import pyarrow.fs

    try:
        if filesystem.get_file_info(path).type != pyarrow.fs.FileType.Directory:
            return False
        filesystem.delete_dir(path)
        return True
    except Exception:  # noqa: BLE001 - cleanup never fails a search; the end of the search tries again
        return False


@dataclass(frozen=True)
class Release:
    """The checkpoints of one trial that nothing can need any more."""

    trial_id: str
    checkpoint: Any          # its Tune checkpoint (ray.tune.Checkpoint), or None
    train_folder: str        # its Ray Train run folder (multi-worker trials; absent otherwise)

    def delete(self) -> None:
        if self.checkpoint is not None:
            delete_folder(self.checkpoint.filesystem, self.checkpoint.path)
        delete_folder(*filesystem_of(self.train_folder))


def objective_of(trial) -> float:
    value = (trial.last_result or {}).get("objective")
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else -math.inf


def reported_final(trial) -> bool:
    """Its last result is the final report (it holds a model)."""
    return (trial.last_result or {}).get("final_report") is True


def completed(trial) -> bool:
    """An ended trial that completed. (Tune calls ``on_trial_complete`` before it sets the status:
    the trial that just ended is judged by ``on_trial_end``'s caller, not by this.)"""
    return trial.status == "TERMINATED" and reported_final(trial)


class SearchCheckpoints:
    """Which ended search trials' checkpoints can go (the rules above), decided from Tune's trials
    alone: no storage access. Rebuilt from nothing after a restore: it only needs ``trials``."""

    def __init__(self, storage_path: str, experiment: str, identify=None):
        """``identify(trial)`` -> (arm, trial number): the trial's spec by default."""
        self.storage_path, self.experiment = storage_path, experiment
        self.identify = identify or arm_and_number
        self.released: set[str] = set()
        self.identities: dict[str, tuple[str, int]] = {}

    def _identity(self, trial) -> tuple[str, int]:
        """Parsed once per trial: this runs on Tune's loop."""
        if trial.trial_id not in self.identities:
            self.identities[trial.trial_id] = self.identify(trial)
        return self.identities[trial.trial_id]

    def _release(self, trial) -> Release:
        self.released.add(trial.trial_id)
        return Release(trial.trial_id, trial.checkpoint,
                       train_run_folder(self.storage_path, self.experiment, trial.trial_id))

    def on_trial_end(self, trial, trials: list, error: bool = False) -> list[Release]:
        """What to delete now that ``trial`` ended: completed or stopped (``on_trial_complete``), or
        failed for good (``error``: ``on_trial_error``)."""
        if error or not reported_final(trial):
            return [self._release(trial)]
        arm = self._identity(trial)[0]
        done = [t for t in trials if t is not trial and completed(t) and self._identity(t)[0] == arm] + [trial]
        best = max(done, key=lambda t: (objective_of(t), -self._identity(t)[1]))
        return [self._release(t) for t in done if t is not best and t.trial_id not in self.released]


def arm_and_number(trial) -> tuple[str, int]:
    from sweeps.spec import TrialSpec

    spec = TrialSpec.of(trial)
    return spec.arm, spec.number


def storage_listing(storage_path: str, experiment: str) -> dict[str, list[str]]:
    """The checkpoint folders in an experiment's storage: {trial folder (or "_train/<trial id>"): [checkpoint_*]}."""
    import pyarrow.fs

    filesystem, root = filesystem_of(f"{storage_path.rstrip('/')}/{experiment}")
    listing: dict[str, list[str]] = {}
    try:
        entries = filesystem.get_file_info(pyarrow.fs.FileSelector(root, recursive=False, allow_not_found=True))
    except Exception:  # noqa: BLE001
        return listing
    for entry in entries:
        if entry.type != pyarrow.fs.FileType.Directory:
            continue
        name = entry.path.rstrip("/").rsplit("/", 1)[-1]
        folders = ([f"{TRAIN_RUNS}/{run.base_name}/{c}" for run in _dirs(filesystem, entry.path)
                    for c in _checkpoints(filesystem, run.path)] if name == TRAIN_RUNS
                   else _checkpoints(filesystem, entry.path))
        for folder in folders:
            owner = "/".join(folder.split("/")[:2]) if name == TRAIN_RUNS else name
            listing.setdefault(owner, []).append(folder.rsplit("/", 1)[-1])
    return listing


def _dirs(filesystem, path: str) -> list:
    import pyarrow.fs

    return [e for e in filesystem.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
            if e.type == pyarrow.fs.FileType.Directory]


def _checkpoints(filesystem, path: str) -> list[str]:
    return sorted(e.base_name for e in _dirs(filesystem, path) if e.base_name.startswith("checkpoint_"))


def log_storage(storage_path: str, experiment: str, ended: dict[str, dict]) -> None:
    """Test hook (``$LEEBERT_STORAGE_LOG``): append the storage listing and the trials ended so far."""
    path = os.environ.get(STORAGE_LOG_ENV)
    if not path:
        return
    line = {"ended": ended, "checkpoints": storage_listing(storage_path, experiment)}
    with open(path, "a") as file:
        file.write(json.dumps(line, default=str) + "\n")

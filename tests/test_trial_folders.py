"""The trainer folders trials leave on a node (sweeps.placement), without Ray: the sweep a trial's
local rank 0 runs when it starts, the lock that keeps a folder from it while any process trains
in it (and the race between the two), the end-of-stage removal and the trial's own.

Holders and cleaners here are separate open files of one process: ``flock`` locks belong to an
open file, so they exclude each other exactly as they would across processes."""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from pathlib import Path

import pytest

from sweeps import placement
from sweeps.placement import (IN_USE_FILE, in_use, local_sweep_dir, local_trial_dir, remove_if_unheld,
                              remove_local_folders, remove_unheld_folders, removed_on_exit)

STORAGE = "/shared/sweeps/demo/ray"


@pytest.fixture(autouse=True)
def node_tmp(tmp_path, monkeypatch):
    """This 'node's temporary folder (what $TMPDIR sets on a cluster's pods)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def trial_folder(trial_id: str, locked_file: bool = True, age_s: float = 0.0, storage: str = STORAGE) -> Path:
    """A trainer folder as a trial leaves it: a checkpoint file, and its lock file unless a process
    was killed between its mkdir and its lock."""
    folder = local_trial_dir(trial_id, storage)
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "mp_rank_00_model_states.pt").write_bytes(b"x" * 1024)
    if locked_file:
        (folder / IN_USE_FILE).touch()
    if age_s:
        then = time.time() - age_s
        os.utime(folder, (then, then))
    return folder


def names(storage: str = STORAGE) -> list[str]:
    sweep = local_sweep_dir(storage)
    return sorted(p.name for p in sweep.iterdir()) if sweep.exists() else []


def test_a_starting_trial_removes_only_the_folders_no_process_holds():
    """Of the sweep's folders on the node, the starting trial removes those whose lock nobody holds
    (a stopped trial's killed workers) and those without a lock file older than a minute; it keeps
    its own, one a running trial holds, one created seconds ago without its lock yet, and every
    folder of another sweep."""
    mine = trial_folder("search_clo-3")
    trial_folder("search_clo-1")                                  # killed: its lock file, nobody holding it
    trial_folder("search_clo-0", locked_file=False, age_s=120)    # killed between mkdir and lock, 2 min ago
    trial_folder("search_clo-4", locked_file=False, age_s=5)      # being created right now
    running = trial_folder("search_clo-2")
    other_sweep = trial_folder("search_clo-1", storage="/shared/sweeps/other/ray")
    with in_use(running):
        removed = remove_unheld_folders(STORAGE, keep=mine.name)
        assert removed == 2
        assert names() == ["search_clo-2", "search_clo-3", "search_clo-4"]
        assert (running / "checkpoints" / "mp_rank_00_model_states.pt").stat().st_size == 1024
    assert other_sweep.is_dir() and names("/shared/sweeps/other/ray") == ["search_clo-1"]
    # once its trial has let go, the next trial to start removes it
    assert remove_unheld_folders(STORAGE, keep=mine.name) == 1
    assert names() == ["search_clo-3", "search_clo-4"]
    assert remove_unheld_folders("/shared/sweeps/never-ran/ray", keep="x") == 0


def test_a_folder_a_process_holds_is_never_removed_and_every_local_worker_can_hold_it():
    """Shared locks: the workers of one trial on one node all hold the folder at once; a cleaner's
    exclusive lock fails while any of them does, and succeeds only after the last one let go."""
    folder = local_trial_dir("search_clo-0", STORAGE)
    with in_use(folder):
        with in_use(folder):  # a second local rank
            assert remove_if_unheld(folder) is False
        assert remove_if_unheld(folder) is False
        assert (folder / IN_USE_FILE).is_file()
    assert remove_if_unheld(folder) is True
    assert not folder.exists()


def test_a_holder_that_locks_a_folder_a_cleaner_just_removed_starts_over(monkeypatch):
    """The race: the holder opens the lock file, a cleaner takes its exclusive lock first and
    removes the folder, then the holder gets its shared lock, on a file that is no longer the path's.
    It must see that (inode check) and start over in a new folder, which the cleaner then cannot
    remove."""
    folder = local_trial_dir("search_clo-0", STORAGE)
    real_flock = fcntl.flock
    calls = []

    def cleaner_wins_the_race(handle, operation):
        calls.append(operation)
        if operation == fcntl.LOCK_SH and len(calls) == 1:  # between the holder's open and its lock
            assert remove_if_unheld(folder) is True
            assert not folder.exists()
        return real_flock(handle, operation)

    monkeypatch.setattr(placement.fcntl, "flock", cleaner_wins_the_race)
    with in_use(folder):
        monkeypatch.setattr(placement.fcntl, "flock", real_flock)
        assert [op for op in calls if op == fcntl.LOCK_SH] == [fcntl.LOCK_SH, fcntl.LOCK_SH]  # it started over once
        assert (folder / IN_USE_FILE).is_file()
        (folder / "work").write_text("training")
        assert remove_if_unheld(folder) is False
        assert (folder / "work").read_text() == "training"
    assert remove_if_unheld(folder) is True


def test_a_cleaner_whose_lock_file_was_replaced_meanwhile_removes_nothing(monkeypatch):
    """The other side of the race: between a cleaner's open and its exclusive lock, another cleaner
    removed the folder and a new trial created it again (a fresh lock file, not yet locked). The
    first cleaner's lock succeeds, on the old file: it must leave the new folder alone."""
    folder = trial_folder("search_clo-0")
    real_flock = fcntl.flock

    def replaced_meanwhile(handle, operation):
        if operation & fcntl.LOCK_EX and (folder / IN_USE_FILE).exists():
            (folder / IN_USE_FILE).unlink()
            (folder / IN_USE_FILE).touch()  # the new trial's lock file
        return real_flock(handle, operation)

    monkeypatch.setattr(placement.fcntl, "flock", replaced_meanwhile)
    assert remove_if_unheld(folder) is False
    monkeypatch.setattr(placement.fcntl, "flock", real_flock)
    assert (folder / "checkpoints").is_dir() and (folder / IN_USE_FILE).is_file()


def test_the_end_of_a_stage_removes_every_unheld_folder_then_the_sweep_folder():
    """The end-of-stage removal on one node (what the driver does itself on a laptop's one-node Ray,
    and a zero-CPU task does on each node of a cluster): with no time to wait, a held folder stays
    and so does the sweep's folder; once none is held, everything goes, a folder without a lock
    file too, however young (no trial of the stage is starting any more)."""
    trial_folder("search_clo-0")
    trial_folder("search_clo-1", locked_file=False)
    held = trial_folder("search_clo-2")
    with in_use(held):
        assert remove_local_folders(STORAGE, timeout_s=0) == 2
        assert names() == ["search_clo-2"]
    assert remove_local_folders(STORAGE, timeout_s=0) == 1
    assert not local_sweep_dir(STORAGE).exists()
    assert local_sweep_dir(STORAGE).parent.is_dir()  # other sweeps' folders live beside it
    assert remove_local_folders(STORAGE, timeout_s=0) == 0


def test_local_rank_0_removes_the_trial_folder_however_the_trial_ends():
    """Returned or raised (a failure, or Tune's stop: SystemExit at the next report), local rank 0
    removes its folder; another local rank leaves it to rank 0."""
    folder = local_trial_dir("search_clo-0", STORAGE)
    with pytest.raises(SystemExit):
        with removed_on_exit(folder, local_rank=0), in_use(folder):
            (folder / "checkpoints").mkdir()
            raise SystemExit(0)
    assert not folder.exists()
    with removed_on_exit(folder, local_rank=1), in_use(folder):
        pass
    assert (folder / IN_USE_FILE).is_file()
    with removed_on_exit(folder, local_rank=0), in_use(folder):
        pass
    assert not folder.exists()

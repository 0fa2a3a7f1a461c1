"""Where a sweep's trials run, how many the cluster holds, and what they leave on the nodes.

- **Trial nodes.** The clusters of clusters/ run the driver on a head that declares ``num-cpus: 0``.
  That keeps off every process that holds a CPU, but not a zero-CPU one: a multi-worker trial's own
  process (it only waits on its Ray Train group, so it holds no CPU) and Ray Train's controller
  (``num_cpus=0``, pinned by Ray to the node of the trial process that starts it). Each imports
  torch, and the head's memory is the driver's. So the worker pods declare a custom resource,
  ``leebert_trial_node``, and every process of a trial (the Tune trial process, the Train workers,
  and with the trial process the controller) asks for a sliver of it. The sweep setting
  ``trial_nodes`` says when: ``auto`` (the default) asks for it when some alive node declares it,
  so a laptop's local Ray, which declares nothing, needs no setup; ``required`` refuses to start a
  sweep on a cluster where no node declares it; ``anywhere`` never asks.
- **Slots.** ``trials_the_cluster_holds``: how many trials the alive (trial) nodes hold at once,
  node by node, for the final stage's concurrency when ``final_max_concurrent`` is null: without a
  cap Tune would start every zero-CPU trial process of a multi-worker stage at once.
- **Node-local folders.** A trial trains in a folder of its node (``local_trial_dir``, under the
  node's temporary folder, one sub-folder per sweep), which every process training there holds a
  shared lock on (``in_use``). Three removals, none of which starts a process of its own:
  1. the trial's local rank 0 removes its folder however the trial ends, while its process lives
     to do so: it returns, fails, or Tune stops it (``removed_on_exit``);
  2. a stopped multi-worker trial's workers are killed seconds after its Tune process, without
     their own cleanup: so when a trial starts, its local rank 0 removes, on its node, the sweep's
     folders that no process holds (``remove_unheld_folders``): what killed trials leave on a node
     never outnumbers the trials running there;
  3. at the end of each stage ``remove_trial_folders`` removes whatever of the sweep is left on
     every node (one zero-CPU task per node; in the driver's own process on a one-node local Ray),
     once no process holds it. A stage interrupted (SIGTERM, Ctrl-C) or failed leaves its trials
     running until Ray stops them, so it removes only what no process holds, at once; a driver
     that stops its own local Ray then removes the rest (``sweeps.runner``); on a cluster the
     resumed stage's trials and end do.
"""

from __future__ import annotations

import atexit
import fcntl
import functools
import hashlib
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

TRIAL_NODE_RESOURCE = "leebert_trial_node"
IN_USE_FILE = ".in-use"  # in a trial's node-local folder: locked (shared) by every process training there
TRIAL_NODE_SHARE = 0.001  # what each process of a trial asks for: a node that declares 1 holds 1,000
CLEANUP_TIMEOUT_S = 60.0  # how long a stage's end waits for the processes of stopped trials to die
UNLOCKED_MIN_AGE_S = 60.0  # a trainer folder without a lock file younger than this is being created


def node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def alive_nodes() -> list[dict]:
    import ray

    return [node for node in ray.nodes() if node.get("Alive")]


def trial_node_resource(setting: str) -> str | None:
    """The custom resource every process of a trial must hold (None: any node will do), for the
    ``trial_nodes`` setting on the Ray this process is connected to (None when it is not)."""
    import ray

    from trainers.errors import ConfigError  # here: the end-of-stage cleanup tasks import this module, not torch

    if setting == "anywhere" or not ray.is_initialized():
        return None
    declared = any(node["Resources"].get(TRIAL_NODE_RESOURCE, 0) > 0 for node in alive_nodes())
    if setting == "required" and not declared:
        raise ConfigError(f"trial_nodes is 'required' but no alive Ray node declares the resource {TRIAL_NODE_RESOURCE}; "
                          f"start the worker nodes with `ray start --resources '{{\"{TRIAL_NODE_RESOURCE}\": 1}}'` "
                          "(clusters/ does), or set trial_nodes to auto or anywhere")
    return TRIAL_NODE_RESOURCE if declared else None


def node_request(resource: str | None) -> dict[str, float]:
    """What one process of a trial asks for on top of its CPUs and GPUs."""
    return {resource: TRIAL_NODE_SHARE} if resource else {}


def trials_the_cluster_holds(cpus_per_worker: float, gpus_per_worker: float, workers_per_trial: int,
                             resource: str | None) -> int:
    """Trials of ``workers_per_trial`` workers that the alive nodes (those declaring ``resource``,
    if given) hold at once, counted node by node (a worker never spans nodes); at least 1."""
    workers = 0
    for node in alive_nodes():
        held = node["Resources"]
        if resource and held.get(resource, 0) <= 0:
            continue
        fit = held.get("CPU", 0) // cpus_per_worker if cpus_per_worker > 0 else float("inf")
        if gpus_per_worker > 0:
            fit = min(fit, held.get("GPU", 0) // gpus_per_worker)
        workers += 0 if fit == float("inf") else int(fit)
    return max(1, workers // max(1, workers_per_trial))


def remove_trial_folders(storage_path: str, timeout_s: float = CLEANUP_TIMEOUT_S) -> dict[str, int]:
    """At the end of a stage: remove this sweep's trainer folders on every alive node, each once no
    process holds it (the processes of a stopped trial may take seconds to die): {node id: trial
    folders removed}. One zero-CPU task per node, pinned there; but on a Ray of one node that is the
    driver's own (a laptop's local Ray) the driver removes them itself, starting no worker process.
    Best effort: a node that does not answer within ``timeout_s`` is left out."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not ray.is_initialized():  # Ray went first (a driver stopped hard): the next stage's trials clean up
        return {}
    nodes, here = alive_nodes(), node_id()
    if [node["NodeID"] for node in nodes] == [here]:
        return {here: remove_local_folders(storage_path, timeout_s)}
    remove = ray.remote(num_cpus=0, max_retries=1)(remove_local_folders)
    futures = {node["NodeID"]: remove.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"],
                                                                                                soft=False))
               .remote(storage_path, timeout_s) for node in nodes}
    ready, _ = ray.wait(list(futures.values()), num_returns=len(futures), timeout=timeout_s + 10)
    done = set(ready)
    removed = {}
    for node, future in futures.items():
        if future in done:
            try:
                removed[node] = ray.get(future)
            except Exception:  # noqa: BLE001 - a node lost meanwhile: nothing of it to clean
                pass
    return removed


def remove_local_folders(storage_path: str, timeout_s: float = CLEANUP_TIMEOUT_S) -> int:
    """On this node, at the end of a stage: remove the sweep's trainer folders, each once no process
    holds it (waiting up to ``timeout_s`` in all), and the sweep's folder if it is then empty; how
    many went."""
    sweep = local_sweep_dir(storage_path)
    deadline = time.monotonic() + timeout_s
    gone = sum(remove_if_unheld(folder, deadline=deadline) for folder in _trial_folders(sweep))
    try:
        sweep.rmdir()  # only if empty: another stage's trial may have started meanwhile
    except OSError:
        pass
    return gone


def remove_unheld_folders(storage_path: str, keep: str) -> int:
    """On this node, when a trial starts (its local rank 0, once it holds its own folder): remove the
    sweep's trainer folders other than ``keep`` that no process holds, without waiting, so what
    killed trials left (a stopped multi-worker trial's workers die without their own cleanup) never
    outnumbers the trials running here; how many went. Costs no process: the trial's own does it."""
    sweep = local_sweep_dir(storage_path)
    return sum(remove_if_unheld(folder, min_age_s=UNLOCKED_MIN_AGE_S)
               for folder in _trial_folders(sweep) if folder.name != keep)


def remove_if_unheld(folder: Path, deadline: float | None = None, min_age_s: float = 0.0) -> bool:
    """Remove ``folder`` if no process holds its lock file (``in_use``), trying until ``deadline``
    (``time.monotonic()``; None: once); whether it went. A folder without a lock file goes only once
    older than ``min_age_s`` (younger, its process may be between its ``mkdir`` and its lock). The
    folder goes under an exclusive lock on its lock file, and only if that file is still the path's
    (another cleaner may have removed it meanwhile); the lock file goes first, so a process that
    opened it before sees, once it holds its lock, that it is no longer the path's and starts over
    (``in_use``)."""
    lock = folder / IN_USE_FILE
    try:
        if not lock.exists() and time.time() - folder.stat().st_mtime < min_age_s:
            return False
        handle = open(lock, "a")
    except (FileNotFoundError, NotADirectoryError):  # removed meanwhile (its trial ended, or another cleaner)
        return False
    with handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # every process of the trial has ended
                break
            except BlockingIOError:
                if deadline is None or time.monotonic() > deadline:
                    return False
                time.sleep(0.2)
        if not _is_the_path(handle, lock):
            return False
        lock.unlink()
        shutil.rmtree(folder, ignore_errors=True)
    return True


def _trial_folders(sweep: Path) -> list[Path]:
    try:
        return [folder for folder in sweep.iterdir() if folder.is_dir()]
    except FileNotFoundError:
        return []


def _is_the_path(handle, path: Path) -> bool:
    """Whether the open file ``handle`` is still the file at ``path`` (not removed, nor replaced)."""
    try:
        return os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return False


# ---------------------------------------------------------------------------- where each process ran
def placed(trial_node: str) -> dict[str, Any]:
    """Where rank 0 of this attempt and its Tune trial process run, and in how large a group,
    reported with every epoch (a multi-worker trial's report adds its Train controller's node)."""
    from trainers.engine import world

    return {"node_id": node_id(), "trial_node_id": trial_node, "world_size": world()[1]}


def report_callback():
    """Ray's forwarding of rank 0's reports to Tune (``TuneReportCallback``), with the node of the
    Train controller it runs in. Built where it runs: this module imports no Ray at import time."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class PlacedReportCallback(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            first = {**metrics[0], "controller_node_id": node_id()}
            super().after_report(run_context, [first, *metrics[1:]], checkpoint)

    return PlacedReportCallback()


# ---------------------------------------------------------------------------- a trial's folder on its node
def local_sweep_dir(storage_path: str) -> Path:
    """A sweep's trainer folders on this node: under the node's temporary folder (``$TMPDIR``: the
    pods of clusters/ point it at a size-limited scratch volume), one folder per sweep (keyed by
    its storage path), so a cleanup of one sweep never touches another's running trials."""
    key = hashlib.sha1(storage_path.encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / "leebert-trials" / key


def local_trial_dir(trial_id: str, storage_path: str) -> Path:
    """The trainer's working folder on this node, outside Ray's trial folder: Tune syncs that one
    to the storage in the background, which would copy every DeepSpeed checkpoint while it is
    written. The workers of one node share it (DeepSpeed's node-local checkpoint layout); what Ray
    keeps is only what a trial reports."""
    return local_sweep_dir(storage_path) / trial_id


@contextmanager
def in_use(output: Path) -> Iterator[None]:
    """A shared lock on the trial's folder while this process trains in it: the cleanups remove a
    folder only once no process holds it. The lock goes with the process, however it ends. A
    cleaner may remove the folder between this process's open and its lock (``remove_if_unheld``):
    then the file it locked is no longer the path's, and it starts over in a new folder."""
    while True:
        output.mkdir(parents=True, exist_ok=True)
        try:
            handle = open(output / IN_USE_FILE, "a")
        except FileNotFoundError:  # the folder was removed after the mkdir
            continue
        fcntl.flock(handle, fcntl.LOCK_SH)
        if _is_the_path(handle, output / IN_USE_FILE):
            break
        handle.close()
    with handle:
        yield


@contextmanager
def removed_on_exit(output: Path, local_rank: int) -> Iterator[None]:
    """Local rank 0 removes the trial's folder however the trial ends: it returns, fails, or Tune
    stops it (ASHA, or at max_t right after its last report). Tune's stop raises SystemExit in the
    trial's thread at its next report, or ends the actor (``ray.actor.exit_actor``, which runs
    atexit handlers). A process killed outright leaves it to the cleanups above."""
    if local_rank != 0:
        yield
        return
    remove = functools.partial(shutil.rmtree, output, ignore_errors=True)
    atexit.register(remove)
    try:
        yield
    finally:
        remove()
        atexit.unregister(remove)

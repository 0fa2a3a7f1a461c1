"""One Ray Tune trial: the trainer (``trainers.train.run``, DeepSpeed included) on one ``TrialSpec``.

The Tune config of a trial is its spec (``sweeps.spec``) serialized: the trainer config, the
sampled values and the runtime settings. ``TrialSpec.of`` reads it back; the trainer validates the
trial's config, once.

- **One worker** (``workers_per_trial: 1``): the Tune function trains in its own process.
- **N workers**: the Tune function runs a Ray Train ``TorchTrainer``: N processes in one
  data-parallel DeepSpeed group (gloo on CPU, NCCL on GPU), each drawing its shard of every
  global batch; Ray's ``TuneReportCallback`` forwards rank 0's reports to Tune, so ASHA and the
  driver see the same results as for one worker.

Every epoch but the last reports its validation metrics with a checkpoint: the trainer's DeepSpeed
checkpoint of that epoch (θ, optimizer, scheduler, φ and its optimizer, RNG, history). A trial
restarted after a lost process or node (``FailureConfig(max_failures)``) starts from exactly that
epoch; whatever a killed attempt left in its local folder is discarded. The last epoch is reported
after the final evaluation with the test metrics and a checkpoint of the exported model and the
trainer's summary. The test split only ever appears in that report: nothing selects on it. That
report also says when the trial trained (``trained_from``, ``trained_until``: ``time.time()`` when
the trainer starts and when it returns; kept in the checkpoint too). A final stage trial times
nothing: the final stage's timing phase (``sweeps.timing``) times every model after all training.

The trainer works in a folder of its node (``sweeps.placement``): the trial removes it however it
ends, and its local rank 0 first removes the folders that killed trials of the sweep left there.

A trial that diverges (non-finite loss, hypergradient or weights) fails at once with the reason
"diverged at step N (...)"; a marker in the sweep's storage makes its retries fail without training.

A trial that Ray gave GPUs trains with ``device: cuda`` (unless ``train.device`` says otherwise):
on a broken CUDA it fails at once with the trainer's reason, never trains on the CPU instead.

``train_trial(config, trainer=...)`` takes the trainer as an argument: ``trainers.train.run`` by
default, a stand-in with the same signature (returning a ``trainers.results.RunResult``) in the
scheduling simulator (benchmarks/cluster_sim.py). Test hooks reach the trainer as arguments too
(``fault_step``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from sweeps.placement import (in_use, local_trial_dir, node_id, placed, remove_unheld_folders, removed_on_exit,
                              report_callback)
from sweeps.spec import FINAL, TrialSpec
from trainers.layout import (CHECKPOINTS_DIR, DEEPSPEED_CONFIG_FILE, EPOCH_PREFIX, LATEST_FILE,  # noqa: F401 - re-exported
                             MODEL_DIR, SUMMARY_FILE, TEST_LOGITS_FILE, TRAINING_WINDOW_FILE, epoch_tag)
from trainers.results import Summary

CHECKPOINT_PATH_KEY = "checkpoint_path"  # where Ray's TuneReportCallback puts a Train checkpoint's path
SUMMARY_KEY = "summary_json"  # the final result's copy of the trainer's summary (final_metrics)
DIVERGED = re.compile(r"diverged at step \d+ \([^\n]*?\)")


class TrialDiverged(RuntimeError):
    """A trial's training diverged; its message is the reason, "diverged at step N (...)"."""


# ---------------------------------------------------------------------------- what Tune sees
def epoch_metrics(record: dict, objective: str) -> dict[str, Any]:
    """What Tune sees after an epoch (validation only)."""
    metrics = {
        "epoch": record["epoch"],
        "step": record["step"],
        "val_hypervolume": record["val_hypervolume"],
        "val_last_exit": record["val_last_exit"],
        "train_seconds": record.get("train_seconds"),  # this epoch's training time (the compute report)
    }
    metrics["objective"] = metrics[objective]
    for index, value in enumerate(record["val_per_exit"], start=1):
        metrics[f"val_exit_{index}"] = value
    return metrics


def final_metrics(summary: Summary, objective: str, window: dict[str, float] | None = None) -> dict[str, Any]:
    """The last report: the last epoch's validation, the test metrics, the training window
    (``trained_from``/``trained_until``), which shows that no timing overlapped any training, and
    the trainer's whole summary as one JSON string (``SUMMARY_KEY``): the driver builds the trial's
    record from it without opening the checkpoint (a string, so Tune's loggers keep it as one value)."""
    metrics = epoch_metrics(summary.epochs[-1], objective)
    metrics.update({
        "test_hypervolume": summary.test.hypervolume,
        "test_last_exit": summary.test.last_exit,
        "train_wall_time_s": summary.wall_time_s,
        **(window or {}),
        "final_report": True,  # ("done" is a Ray Tune result key)
        SUMMARY_KEY: json.dumps(summary.to_dict(), default=float),
    })
    return metrics


# ---------------------------------------------------------------------------- where a worker reports
class TuneSession:
    """The single-worker trial: the Tune function trains and reports to Tune itself."""

    rank, local_rank = 0, 0

    def __init__(self):
        self.trial_node = node_id()  # where the Tune trial process runs

    def restored(self):
        from ray import tune

        return tune.get_checkpoint()

    def report(self, metrics: dict, folder: Path | None) -> None:
        from ray import tune

        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(folder)) if folder else None)

    def barrier(self) -> None:
        pass


class TrainSession(TuneSession):
    """A worker of a Ray Train group: every rank reports (its own checkpoint files), rank 0's metrics reach Tune."""

    def __init__(self, trial_node: str):
        import ray.train

        self.trial_node = trial_node  # the Tune trial process's node, which Ray Train's controller shares
        context = ray.train.get_context()
        self.rank, self.local_rank = context.get_world_rank(), context.get_local_rank()

    def restored(self):
        import ray.train

        return ray.train.get_checkpoint()

    def report(self, metrics: dict, folder: Path | None) -> None:
        import ray.train

        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(folder)) if folder else None)

    def barrier(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()


# ---------------------------------------------------------------------------- the trial
def train_trial(config: dict, trainer: Callable | None = None) -> None:
    """The Tune function trainable."""
    spec = TrialSpec.from_config(config)
    apply_env(spec.runtime.env)
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    marker = _DivergenceMarker(spec.runtime.storage_path, spec.runtime.experiment, trial_id)
    reason = marker.read()
    if reason:  # a retry of a diverged trial: the same data and seed would diverge again
        raise TrialDiverged(reason)
    try:
        if spec.runtime.workers_per_trial == 1:
            train_worker(spec, TuneSession(), trial_id, trainer)
        else:
            fit_data_parallel(spec, trial_id, trainer)
    except Exception as err:
        reason = diverged_reason(err)
        if reason is None:
            raise
        marker.write(reason)
        raise TrialDiverged(reason) from None


def fit_data_parallel(spec: TrialSpec, trial_id: str, trainer: Callable | None) -> None:
    """N workers as one DeepSpeed group. A retried trial reuses the Train run's name and storage, so
    Ray Train restores its latest checkpoint and ``ray.train.get_checkpoint()`` returns it."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from sweeps.placement import node_request

    runtime = spec.runtime
    gpus = float(runtime.gpus_per_trial)
    resources = {"CPU": float(runtime.cpus_per_trial), **({"GPU": gpus} if gpus else {}),
                 **node_request(runtime.trial_node_resource)}
    # a stand-in trainer (benchmarks/cluster_sim.py) touches no GPU: gloo lets its group start on declared GPUs
    backend = TorchConfig(backend="gloo") if trainer is not None and gpus else None
    group = TorchTrainer(
        _train_worker_entry, torch_config=backend,
        train_loop_config={"spec": spec.to_config(), "trial_id": trial_id, "trainer": trainer, "trial_node": node_id()},
        scaling_config=ray.train.ScalingConfig(num_workers=int(runtime.workers_per_trial), use_gpu=gpus > 0,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=trial_id, storage_path=_join(runtime.storage_path, runtime.experiment, "_train"),
            callbacks=[report_callback()], checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            failure_config=ray.train.FailureConfig(max_failures=0)),  # Tune retries the whole trial
    )
    group.fit()


def _train_worker_entry(config: dict) -> None:
    train_worker(TrialSpec.from_config(config["spec"]), TrainSession(config["trial_node"]), config["trial_id"],
                 config["trainer"])


def train_worker(spec: TrialSpec, session: TuneSession, trial_id: str, trainer: Callable | None = None) -> None:
    """One training process of a trial: restore, train with per-epoch checkpoints, export."""
    runtime = spec.runtime
    apply_env(runtime.env)
    objective = runtime.metric
    restored = session.restored()
    finished = read_summary(restored)
    if finished is not None:  # finished before the driver stopped: report again, do not retrain
        with tempfile.TemporaryDirectory(prefix="leebert-final-") as folder:
            if session.rank == 0:
                restored.to_directory(folder)
            window = read_checkpoint_json(restored, TRAINING_WINDOW_FILE)
            session.report(final_metrics(finished, objective, window), Path(folder) if session.rank == 0 else None)
        return

    if trainer is None:
        from trainers.train import run as trainer
    output = local_trial_dir(trial_id, runtime.storage_path)
    # the final checkpoint holds what is kept; the working folder goes
    with removed_on_exit(output, session.local_rank), in_use(output):
        if session.local_rank == 0:  # what killed trials of this sweep left on this node goes too
            remove_unheld_folders(runtime.storage_path, keep=trial_id)
        where: dict[str, Any] = {"output_dir": str(output), "save_checkpoints": True, "resume": True}
        if spec.train.device == "auto" and _given_gpus():
            where["device"] = "cuda"  # train on the GPUs Ray reserved, or fail at once: never on the CPU instead
        if runtime.workers_per_trial > 1:
            where["deepspeed_config"] = _node_local_deepspeed_config(spec.train.deepspeed_config, output, session.rank)
        cfg = spec.to_train_config(**where)

        # Start from exactly the last reported epoch: local leftovers of a killed attempt go.
        if session.local_rank == 0:
            shutil.rmtree(output / CHECKPOINTS_DIR, ignore_errors=True)
            shutil.rmtree(output / "reports", ignore_errors=True)
            if restored is not None:
                restored.to_directory(str(output / CHECKPOINTS_DIR))
        session.barrier()

        def on_epoch(record: dict) -> None:
            if record["epoch"] < cfg.epochs:  # the last epoch is reported with the final results
                with _epoch_snapshot(output, record["epoch"], session) as folder:
                    session.report({**epoch_metrics(record, objective), **placed(session.trial_node)}, folder)
                _prune_local_epochs(output, keep=record["epoch"], session=session)

        trained_from = time.time()
        result = trainer(cfg, on_epoch=on_epoch, quiet=not runtime.trial_logs, fault_step=spec.fault_step())
        window = {"trained_from": trained_from, "trained_until": time.time()}
        summary = result.summary
        with tempfile.TemporaryDirectory(prefix="leebert-trial-") as folder:
            if session.rank == 0:
                if result.model is not None:  # a stand-in trainer trains no model
                    from serving.export import export_model

                    export_model(result.model, cfg, Path(folder) / MODEL_DIR, task=result.task)
                (Path(folder) / SUMMARY_FILE).write_text(json.dumps(summary.to_dict(), default=float))
                (Path(folder) / TRAINING_WINDOW_FILE).write_text(json.dumps(window))
                if (output / TEST_LOGITS_FILE).is_file():  # per-example test results: the final comparison's bootstrap
                    shutil.copy2(output / TEST_LOGITS_FILE, Path(folder) / TEST_LOGITS_FILE)
            session.report({**final_metrics(summary, objective, window), **placed(session.trial_node)},
                           Path(folder) if session.rank == 0 else None)
        session.barrier()  # every rank has reported before local rank 0 removes the folder


def _given_gpus() -> bool:
    """Whether Ray reserved GPUs for this process (a single-worker trial, or a Ray Train worker)."""
    import ray

    return bool(ray.get_gpu_ids())


# ---------------------------------------------------------------------------- checkpoints
@contextmanager
def _epoch_snapshot(output: Path, epoch: int, session: TuneSession) -> Iterator[Path]:
    """The trainer's checkpoint of ``epoch`` as a folder to report: ``latest`` + ``epoch-N/``.
    Hard links: nothing is copied until Ray persists it to the storage."""
    tag = epoch_tag(epoch)
    folder = output / "reports" / f"{tag}-rank{session.rank}"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(output / CHECKPOINTS_DIR / tag, folder / tag, copy_function=os.link)
    (folder / LATEST_FILE).write_text(tag)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _prune_local_epochs(output: Path, keep: int, session: TuneSession) -> None:
    session.barrier()
    if session.local_rank == 0:
        for folder in (output / CHECKPOINTS_DIR).glob(f"{EPOCH_PREFIX}*"):
            if folder.name != epoch_tag(keep):
                shutil.rmtree(folder, ignore_errors=True)


def read_summary(checkpoint) -> Summary | None:
    """The trainer's summary in a trial's final checkpoint; None for an epoch checkpoint (or none)."""
    values = read_checkpoint_json(checkpoint, SUMMARY_FILE)
    try:
        return Summary.from_dict(values) if values is not None else None
    except (TypeError, KeyError):  # not a summary this code can read: the trial counts as a partial one
        return None


def read_checkpoint_json(checkpoint, name: str) -> dict | None:
    """A JSON file of a trial's checkpoint; None when the checkpoint (or the file) is missing."""
    if checkpoint is None:
        return None
    from sweeps.checkpoints import open_checkpoint

    try:
        with open_checkpoint(checkpoint) as folder:
            path = Path(folder) / name
            return json.loads(path.read_text()) if path.is_file() else None
    except Exception:  # noqa: BLE001 - a missing checkpoint makes the trial a partial one
        return None


def _node_local_deepspeed_config(path: str | None, output: Path, rank: int) -> str:
    """The trial's DeepSpeed config with node-local checkpoints: each node keeps a full checkpoint
    of its own (model states from its local rank 0), so nodes need no shared filesystem."""
    from trainers.config import resolve_project_path

    config = json.loads(Path(resolve_project_path(path, "DeepSpeed config")).read_text()) if path else {}
    config.setdefault("checkpoint", {})["use_node_local_storage"] = True
    output.mkdir(parents=True, exist_ok=True)
    target = output / DEEPSPEED_CONFIG_FILE
    tmp = output / f"{DEEPSPEED_CONFIG_FILE}.{rank}.tmp"
    tmp.write_text(json.dumps(config, indent=2))
    os.replace(tmp, target)
    return str(target)


# ---------------------------------------------------------------------------- divergence
def diverged_reason(err: BaseException) -> str | None:
    """"diverged at step N (...)" if ``err`` (or what it wraps, e.g. Ray Train's worker errors) says so."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        found = DIVERGED.findall(str(err))
        if found:
            return found[-1]
        err = err.__cause__ or err.__context__
    return None


class _DivergenceMarker:
    """A file in the sweep's storage (local, shared or s3://) that outlives the trial's retries."""

    def __init__(self, storage_path: str, experiment: str, trial_id: str):
        self.path = _join(storage_path, experiment, "_diverged", f"{trial_id}.txt")

    def _fs(self):
        import pyarrow.fs

        return pyarrow.fs.FileSystem.from_uri(self.path) if "://" in self.path else (pyarrow.fs.LocalFileSystem(), self.path)

    def read(self) -> str | None:
        import pyarrow.fs

        fs, path = self._fs()
        if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
            return None
        with fs.open_input_stream(path) as stream:
            return stream.read().decode().strip() or None

    def write(self, reason: str) -> None:
        fs, path = self._fs()
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(path) as stream:
            stream.write(reason.encode())


# ---------------------------------------------------------------------------- helpers
def apply_env(env: dict) -> None:
    """The sweep's ``env`` in this worker process (what the driver's environment already sets wins)."""
    for key, value in env.items():
        os.environ.setdefault(key, str(value))


def _join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def trial_name(trial) -> str:
    """``clo_3e9972a7``: the arm and the trial id (``final-clo_...`` in the final stage)."""
    spec = TrialSpec.of(trial)
    return f"{'final-' if spec.stage == FINAL else ''}{spec.arm}_{trial.trial_id}"

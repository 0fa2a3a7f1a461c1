"""One Ray Tune trial: the real trainer (``trainers.train.run``, DeepSpeed included) on one config.

The Tune config holds ``train`` (the options every trial shares, with the method), ``sweep``
(objective, environment, logging) and, at the top level, the values Optuna drew for this trial.
After each epoch but the last the trial reports that epoch's validation metrics, so ASHA can stop
it. The last epoch is reported after the final evaluation, together with the test metrics and a
checkpoint holding the exported model and the trainer's summary; the driver logs both to MLflow.
The test split only ever appears in that report: nothing selects on it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

SUMMARY_FILE = "summary.json"
MODEL_DIR = "model"
RESERVED = ("train", "sweep", "trial_number")


def epoch_metrics(record: dict, objective: str) -> dict[str, Any]:
    """What Tune sees after an epoch (validation only)."""
    metrics = {
        "epoch": record["epoch"],
        "step": record["step"],
        "val_hypervolume": record["val_hypervolume"],
        "val_last_exit": record["val_last_exit"],
    }
    metrics["objective"] = metrics[objective]
    for index, value in enumerate(record["val_per_exit"], start=1):
        metrics[f"val_exit_{index}"] = value
    return metrics


def final_metrics(summary: dict, objective: str) -> dict[str, Any]:
    metrics = epoch_metrics(summary["epochs"][-1], objective)
    metrics.update({
        "test_hypervolume": summary["test"]["hypervolume"],
        "test_last_exit": summary["test"]["last_exit"],
        "train_wall_time_s": summary["wall_time_s"],
        "final_report": True,  # ("done" is a Ray Tune result key)
    })
    return metrics


def trial_train_values(config: dict) -> dict[str, Any]:
    """The trainer options of this trial: shared options plus the sampled ones."""
    values = dict(config["train"])
    values.update({k: v for k, v in config.items() if k not in RESERVED})
    return values


def train_trial(config: dict) -> None:
    sweep = config["sweep"]
    for key, value in sweep.get("env", {}).items():
        os.environ.setdefault(key, str(value))
    from ray import tune

    objective = sweep["metric"]
    restored = tune.get_checkpoint()
    if restored is not None:  # finished before the driver stopped: report again, do not retrain
        with restored.as_directory() as folder:
            summary = json.loads((Path(folder) / SUMMARY_FILE).read_text())
        tune.report(final_metrics(summary, objective), checkpoint=restored)
        return

    from trainers.config import TrainConfig
    from trainers.train import run

    from sweeps.config import resolve_project_path
    from sweeps.export import export_model

    values = trial_train_values(config)
    values["output_dir"] = str(Path(tune.get_context().get_trial_dir()) / "train")
    if values.get("deepspeed_config"):
        values["deepspeed_config"] = str(resolve_project_path(values["deepspeed_config"]))
    if values.get("threads") is None:
        values["threads"] = max(1, int(sweep.get("cpus_per_trial", 1)))
    # With per-epoch checkpoints on, a restarted trial continues from its last complete epoch.
    values["resume"] = bool(values.get("save_checkpoints", False))
    cfg = TrainConfig.from_dict(values)

    def on_epoch(record: dict) -> None:
        if record["epoch"] < cfg.epochs:  # the last epoch is reported with the final results
            tune.report(epoch_metrics(record, objective))

    summary = run(cfg, on_epoch=on_epoch, quiet=not sweep.get("trial_logs", False))
    model = summary.pop("model_object")
    with tempfile.TemporaryDirectory(prefix="leebert-trial-") as folder:
        export_model(model, cfg, Path(folder) / MODEL_DIR)
        (Path(folder) / SUMMARY_FILE).write_text(json.dumps(summary, default=float))
        tune.report(final_metrics(summary, objective), checkpoint=tune.Checkpoint.from_directory(folder))


def trial_name(trial) -> str:
    """``clo_3e9972a7``: the method and the trial id (OptunaSearch draws the ids)."""
    method = trial.config.get("train", {}).get("method", "trial")
    return f"{method}_{trial.trial_id}"


def trial_number(trial, trials: list) -> int:
    """1-based number of ``trial`` in its search: its Optuna trial number + 1 (set by the searcher,
    so it survives a restore and matches optuna-dashboard), else its position in start order."""
    number = trial.config.get("trial_number")
    if isinstance(number, int):
        return number

    def key(t):
        started = t.run_metadata.start_time
        return (started if started is not None else float("inf"), t.trial_id)

    ordered = [t.trial_id for t in sorted(trials, key=key)]
    return ordered.index(trial.trial_id) + 1 if trial.trial_id in ordered else 0

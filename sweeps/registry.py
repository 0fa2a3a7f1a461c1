"""Registering a method's best model in the MLflow model registry, with its exit policy.

Idempotent: the model version of a trial is found by its ``trial_id`` tag, so a sweep resumed
after a crash between registering and marking the method finalized registers nothing twice.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

from sweeps.config import SweepConfig
from sweeps.search import MethodOutcome
from sweeps.tracking import Tracker
from sweeps.trial import MODEL_DIR


def registered_version(tracker: Tracker, name: str, trial_id: str) -> str | None:
    """The version of ``name`` that holds ``trial_id``'s model, if it was registered before."""
    from mlflow.exceptions import MlflowException

    try:
        versions = tracker.client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    found = [v for v in versions if (v.tags or {}).get("trial_id") == trial_id]
    return str(min(int(v.version) for v in found)) if found else None


def register_best(cfg: SweepConfig, tracker: Tracker, outcome: MethodOutcome, staging: Path) -> dict[str, Any] | None:
    """Log the best model as a pyfunc with its exit policy, register it, alias it 'champion'."""
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    from sweeps.export import META, choose_operating_point
    from sweeps.serving import ExitPolicyModel, code_paths, pip_requirements

    best = outcome.best
    if best is None or best.checkpoint is None:
        return None
    name = f"{cfg.model_prefix}-{outcome.method}"
    policy = choose_operating_point(best.summary, cfg.register_speedup)
    version = registered_version(tracker, name, best.trial_id)
    if version is None:
        work = staging / outcome.method
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        best.checkpoint.to_directory(str(work / "checkpoint"))
        model_dir = work / "checkpoint" / MODEL_DIR
        (work / "policy.json").write_text(json.dumps(policy, indent=2))
        meta = json.loads((model_dir / META).read_text())
        examples = {"sentence": ["a gripping, beautifully acted film.", "a dull and lifeless mess."],
                    "premise": ["A man is playing a guitar.", "A man is playing a guitar."],
                    "hypothesis": ["A person makes music.", "Nobody is playing."]}
        example = pd.DataFrame({f: examples.get(f, ["some text", "more text"]) for f in meta["text_fields"]})
        output = pd.DataFrame({"prediction": [0.0, 1.0] if meta["is_regression"] else [0, 1],
                               "exit_layer": [1, meta["num_layers"]], "confidence": [0.9, 0.8]})
        with mlflow.start_run(run_id=outcome.parent_run_id), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MLflow's advice on type hints and on pickled python_model objects
            info = mlflow.pyfunc.log_model(
                name="model", python_model=ExitPolicyModel(),
                artifacts={"model": str(model_dir), "policy": str(work / "policy.json")},
                code_paths=code_paths(work / "code"), pip_requirements=pip_requirements(),
                signature=infer_signature(example, output), input_example=example,
                registered_model_name=name, await_registration_for=60,
            )
        version = str(info.registered_model_version)
        # the identity first: a crash after this line finds the version again on resume
        tracker.client.set_model_version_tag(name, version, "trial_id", best.trial_id)
        shutil.rmtree(work, ignore_errors=True)
    client = tracker.client
    client.set_registered_model_alias(name, "champion", version)
    tags = {"method": outcome.method, "sweep": cfg.name, "trial_id": best.trial_id,
            "policy": policy["policy"], "policy_setting": f"{policy['setting']:g}",
            "target_speedup": f"{policy['target_speedup']:g}", "validation_objective": f"{best.objective:.6f}",
            "validation_speedup": f"{policy['validation_speedup']:.4f}", "test_metric": f"{policy['test_metric']:.4f}"}
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    return {"name": name, "version": version, "uri": f"models:/{name}@champion", "policy": policy}


def delete_other_checkpoints(outcome: MethodOutcome) -> None:
    """Keep only the best trial's model checkpoint of a method (``keep_checkpoints: best``): the
    other trials' models and the last epoch checkpoints of trials ASHA stopped or that failed."""
    for record in outcome.records:
        for checkpoint in (None if record is outcome.best else record.checkpoint, record.resume_checkpoint):
            if checkpoint is None:
                continue
            try:
                checkpoint.filesystem.delete_dir(checkpoint.path)
            except Exception:  # noqa: BLE001 - already gone
                pass


def delete_local_trial_folders(outcome: MethodOutcome) -> None:
    """The trainer's working folders that stopped or failed trials left on the driver's node
    (on other nodes they stay in the system's temporary folder until it is cleaned)."""
    from sweeps.trial import local_trial_dir

    for record in outcome.records:
        shutil.rmtree(local_trial_dir(record.trial_id), ignore_errors=True)

"""Register a finished sweep's models in the MLflow model registry, from MLflow and the checkpoints alone.

    result = register_sweep("sqlite:////…/runs/sweeps/demo-…/mlflow.db", "demo-…", target_speedup=2.0)
    result = register_sweep(uri, "demo-…", max_drop=1.0)          # at most 1 point below full depth
    # {"name": "leebert-mr", "champion": {...}, "versions": {"clo": {"version": "3", "uri": ..., "policy": ...}}}

One registered model per task (``leebert-<task>``), one version per arm's best trial: the
trial's exported model (the folder ``model/`` of its final checkpoint, named by the trial run's
tag ``model_checkpoint``) served by ``serving.model.ExitPolicyModel`` with the exit policy
calibrated on validation (``serving.calibration``) from the trial run's ``summary.json``. The
pyfunc is logged into the arm's search run. Aliases: ``<arm>-best`` per arm, and ``champion``
for the arm whose best trial has the best validation objective of the sweep. An experiment written
with the old tags (``method``) is migrated first (``trainers.layout.migrate_experiment``).

Idempotent: a version is identified by its tags ``trial_id``, ``policy`` and ``policy_setting``
(and ``policy_delta`` for regression patience). Registering the same trial with the same calibrated
policy again reuses its version (aliases and tags are set again); a target that calibrates to a
different policy creates a new version. Everything that can fail on bad input (an unknown or
unfinished sweep, an unreachable target, a missing checkpoint) fails before anything is written.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.calibration import for_max_drop, for_target_speedup
from serving.checkpoints import check_checkpoint, local_model
from serving.describe import CHAMPION
from serving.mlflow_scope import quiet_mlflow_events, use_tracking_uri
from trainers.errors import ConfigError
from trainers.layout import (ARM_RUNS_FILTER, BEST_OBJECTIVE_METRIC, EXPORT_META_FILE, LEGACY_BEST_OBJECTIVE_METRIC,
                             POLICY_FILE, STAGE_SEARCH, SUMMARY_FILE, TAG_ARM, TAG_BEST_RUN_ID, TAG_BEST_TRIAL_ID,
                             TAG_FINALIZED, TAG_MODEL_CHECKPOINT, TAG_REGISTERED, TAG_SEARCHED, TAG_SWEEP, TAG_TRIAL_ID, TRUE, migrate_experiment, trial_filter)
from trainers.results import FrontierSetting, Summary

DEFAULT_TARGET_SPEEDUP = 2.0  # the sweep config's register_speedup default
CHECKPOINT_TAG = TAG_MODEL_CHECKPOINT
MAX_ROWS = 256  # rows per request the HTTP server (`mlflow models serve`) accepts (model_config)
# Logged with every version, so both can be overridden at load or serve time (MLflow overrides
# only the keys a model was logged with): device auto = CUDA where there is one.
MODEL_CONFIG = {"max_rows": MAX_ROWS, "device": "auto"}
TAG_LIMIT = 5000  # MLflow's limit on a tag value
FRONTIER_COLUMNS = "validation_speedup,validation_metric,test_speedup,test_metric"
LABELS_FILE = "labels.json"  # the served model's class names in id order (an artifact of the pyfunc)


@dataclass
class ArmPlan:
    """What will be registered for one arm, all checked before anything is written."""

    arm: str
    parent_run_id: str
    parent_status: str
    trial_run_id: str
    trial_id: str
    task: str
    objective: str
    objective_value: float
    summary: Summary
    policy: dict
    checkpoint: str
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    searched: str = ""


def register_sweep(tracking_uri: str, experiment: str, target_speedup: float | None = None,
                   max_drop: float | None = None, model_name: str | None = None) -> dict[str, Any]:
    """Register the best model of every arm of the sweep ``experiment`` (see the module docstring).

    Returns ``{"name", "champion": {...}, "versions": {arm: {"version", "uri", "policy", ...}},
    "aliases": {alias: version}}``. Raises ``ConfigError`` (nothing written) for an unknown or
    unfinished sweep, an unreachable target or a missing checkpoint."""
    if target_speedup is not None and max_drop is not None:
        raise ConfigError("give either a target speed-up or a maximum drop, not both")
    if target_speedup is None and max_drop is None:
        target_speedup = DEFAULT_TARGET_SPEEDUP
    if model_name is not None:
        check_model_name(model_name)
    if tracking_uri.startswith("sqlite:"):  # MLflow would create an empty store rather than fail
        path = tracking_uri[len("sqlite:///"):] if tracking_uri.startswith("sqlite:///") else ""
        if not path or not Path(path).is_file():
            raise ConfigError(f"the MLflow store {tracking_uri} does not exist")
    import mlflow  # noqa: F401 - configures its loggers on import
    from mlflow import MlflowClient

    with use_tracking_uri(tracking_uri):
        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        found = client.get_experiment_by_name(experiment)
        if found is None or found.lifecycle_stage != "active":
            raise ConfigError(f"no sweep '{experiment}' in the MLflow store {tracking_uri}"
                              + (" (its experiment is deleted)" if found is not None else ""))
        migrate_experiment(client, found.experiment_id)  # a sweep of an older version: its old tags, once
        plans = plan_sweep(client, found.experiment_id, experiment, target_speedup, max_drop)
        name = model_name or f"leebert-{plans[0].task}"
        check_model_name(name)
        versions = _versions(client, name)
        out: dict[str, Any] = {"name": name, "sweep": experiment, "tracking_uri": tracking_uri, "versions": {},
                               "aliases": {}, "skipped": skipped_arms(client, found.experiment_id, plans)}
        with tempfile.TemporaryDirectory(prefix="leebert-register-") as tmp:
            for plan in plans:
                out["versions"][plan.arm] = _register_one(client, name, experiment, plan, versions, Path(tmp))
        champion = max(plans, key=lambda p: p.objective_value)  # ties: the first arm (max keeps the first)
        for plan in plans:
            entry = out["versions"][plan.arm]
            client.set_registered_model_alias(name, alias(plan.arm), entry["version"])
            out["aliases"][alias(plan.arm)] = entry["version"]
            client.set_tag(plan.parent_run_id, TAG_REGISTERED,
                           json.dumps({"name": name, "version": entry["version"], "uri": entry["uri"]}))
        version = out["versions"][champion.arm]["version"]
        client.set_registered_model_alias(name, CHAMPION, version)
        out["aliases"][CHAMPION] = version
        out["champion"] = {"arm": champion.arm, "version": version, "uri": f"models:/{name}@{CHAMPION}",
                           "trial_id": champion.trial_id, "objective": champion.objective,
                           "validation_objective": champion.objective_value}
        return out


# ---------------------------------------------------------------------------- planning (read only)
def plan_sweep(client, experiment_id: str, experiment: str, target_speedup: float | None,
               max_drop: float | None) -> list[ArmPlan]:
    """One plan per arm with a best trial, every target calibrated and every checkpoint found."""
    runs = client.search_runs([experiment_id], filter_string=ARM_RUNS_FILTER, max_results=1000,
                              order_by=["attributes.start_time ASC"])
    if not runs:
        raise ConfigError(f"MLflow experiment '{experiment}' holds no arm runs; is it a sweep of platform/sweep.py?")
    unfinished = [r.data.tags.get(TAG_ARM, r.info.run_name) for r in runs if r.data.tags.get(TAG_FINALIZED) != TRUE]
    if unfinished:
        raise ConfigError(f"sweep '{experiment}' is not finished (arm(s) {', '.join(unfinished)} still searching or "
                          f"interrupted); finish it with `python platform/sweep.py --resume --name {experiment}` first")
    plans, problems = [], []
    with tempfile.TemporaryDirectory(prefix="leebert-register-") as tmp:
        for run in runs:
            try:
                plan = _plan_arm(client, experiment_id, run, target_speedup, max_drop, Path(tmp))
            except ConfigError as err:
                problems.append(f"{run.data.tags.get(TAG_ARM, run.info.run_name)}: {err}")
                continue
            if plan is not None:
                plans.append(plan)
    if problems:
        raise ConfigError("; ".join(problems))
    if not plans:
        raise ConfigError(f"no arm of sweep '{experiment}' has a completed trial; nothing to register")
    return plans


def skipped_arms(client, experiment_id: str, plans: list[ArmPlan]) -> list[str]:
    """The finished arms with no completed trial (nothing of theirs is registered)."""
    runs = client.search_runs([experiment_id], filter_string=ARM_RUNS_FILTER, max_results=1000,
                              order_by=["attributes.start_time ASC"])
    planned = {p.arm for p in plans}
    return [r.data.tags.get(TAG_ARM, r.info.run_name) for r in runs if r.data.tags.get(TAG_ARM) not in planned]


def alias(arm: str) -> str:
    """The registered model alias of an arm's best model: ``<arm>-best``."""
    return f"{arm}-best"


def _plan_arm(client, experiment_id: str, run, target_speedup, max_drop, tmp: Path) -> ArmPlan | None:
    from mlflow.exceptions import MlflowException

    tags = run.data.tags
    arm = tags.get(TAG_ARM, run.info.run_name)
    trial_run_id = tags.get(TAG_BEST_RUN_ID)
    if not trial_run_id and tags.get(TAG_BEST_TRIAL_ID):
        found = client.search_runs([experiment_id], max_results=1,
                                   filter_string=trial_filter(arm, STAGE_SEARCH, tags[TAG_BEST_TRIAL_ID]))
        trial_run_id = found[0].info.run_id if found else None
    if not trial_run_id:
        return None  # no completed trial: nothing to register for this arm
    trial = client.get_run(trial_run_id)
    trial_id = trial.data.tags.get(TAG_TRIAL_ID, tags.get(TAG_BEST_TRIAL_ID, trial_run_id))
    try:
        folder = tmp / trial_run_id
        folder.mkdir(parents=True, exist_ok=True)
        summary = Summary.from_dict(json.loads(Path(client.download_artifacts(trial_run_id, SUMMARY_FILE,
                                                                             str(folder))).read_text()))
    except (MlflowException, OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise ConfigError(f"cannot read {SUMMARY_FILE} of trial {trial_id} (run {trial_run_id}): "
                          f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    policy = for_max_drop(summary, max_drop) if max_drop is not None else for_target_speedup(summary, target_speedup)
    checkpoint = trial.data.tags.get(CHECKPOINT_TAG)
    if not checkpoint:
        raise ConfigError(f"trial {trial_id} (run {trial_run_id}) has no '{CHECKPOINT_TAG}' tag naming its model "
                          "checkpoint (logged by an older platform version?)")
    check_checkpoint(checkpoint, trial_id)
    searched = trial.data.tags.get(TAG_SEARCHED, "")
    params = trial.data.params
    hyper = {k: _number(params[k]) for k in (s for s in searched.split(",") if s) if k in params}
    objective_value = run.data.metrics.get(BEST_OBJECTIVE_METRIC, run.data.metrics.get(LEGACY_BEST_OBJECTIVE_METRIC))
    if objective_value is None:
        raise ConfigError(f"arm run {run.info.run_id} has no '{BEST_OBJECTIVE_METRIC}' metric")
    return ArmPlan(arm=arm, parent_run_id=run.info.run_id, parent_status=run.info.status,
                      trial_run_id=trial_run_id, trial_id=trial_id, task=params.get("task", "mr"),
                      objective=run.data.params.get("objective", "objective"), objective_value=float(objective_value),
                      summary=summary, policy=policy, checkpoint=checkpoint, hyperparameters=hyper, searched=searched)


def check_model_name(name: str) -> None:
    """A registered model name MLflow accepts, checked before anything is logged: MLflow checks it
    only when registering, after the model (~90 MB) is already logged into the run."""
    if not name.strip() or "'" in name:
        raise ConfigError(f"model name {name!r} must be non-empty and hold no quote")
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import _validate_model_name  # the registry's own rule (private, stable since 2.x)

    try:
        _validate_model_name(name)
    except MlflowException as err:
        raise ConfigError(f"model name {name!r} is refused by the MLflow registry ({err.message}); "
                          "use letters, digits, '-', '_' and '.', e.g. leebert-mr") from None


# ---------------------------------------------------------------------------- registering
def _versions(client, name: str) -> list:
    from mlflow.exceptions import MlflowException

    try:
        return list(client.search_model_versions(f"name = '{name}'"))
    except MlflowException:
        return []


def identity(plan_or_policy: ArmPlan | dict, trial_id: str | None = None) -> dict[str, str]:
    """The tags that identify a version: the trial and its calibrated exit policy."""
    policy = plan_or_policy.policy if isinstance(plan_or_policy, ArmPlan) else plan_or_policy
    trial = plan_or_policy.trial_id if isinstance(plan_or_policy, ArmPlan) else trial_id
    delta = policy.get("delta")
    return {TAG_TRIAL_ID: trial, "policy": policy["policy"], "policy_setting": _fmt(policy["setting"]),
            "policy_delta": "" if delta is None else _fmt(delta)}


def _matches(version, wanted: dict[str, str]) -> bool:
    tags = version.tags or {}
    return all(tags.get(k, "") == v for k, v in wanted.items())


def _register_one(client, name: str, experiment: str, plan: ArmPlan, versions: list, tmp: Path) -> dict[str, Any]:
    wanted = identity(plan)
    same = [v for v in versions if _matches(v, wanted)]
    same_trial = [v for v in versions if (v.tags or {}).get(TAG_TRIAL_ID) == plan.trial_id]
    if same:
        version, created = str(min(int(v.version) for v in same)), False
        note = "existing: same trial and exit policy"
    else:
        version, created = _log_and_register(client, name, plan, tmp / plan.arm), True
        for key, value in wanted.items():  # the identity first: a crash after this finds the version again
            if value:
                client.set_model_version_tag(name, version, key, value)
        earlier = sorted(int(v.version) for v in same_trial)
        note = "new" if not earlier else (
            f"new: this target gives another exit policy than version(s) "
            f"{', '.join(str(v) for v in earlier)} of the same trial")
    for key, value in version_tags(experiment, plan).items():
        client.set_model_version_tag(name, version, key, value)
    return {"version": version, "uri": f"models:/{name}@{alias(plan.arm)}", "policy": plan.policy,
            "created": created, "note": note, "trial_id": plan.trial_id, "trial_run_id": plan.trial_run_id,
            "objective": plan.objective, "validation_objective": plan.objective_value,
            "metric": plan.summary.metric or "metric", "hyperparameters": plan.hyperparameters}


def _log_and_register(client, name: str, plan: ArmPlan, work: Path) -> str:
    """Log the pyfunc into the arm's search run and register it as a new version of ``name``."""
    import mlflow

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    model_dir = local_model(plan.checkpoint, work)
    try:
        # Reopens the finalized arm run and ends it FINISHED again (an error would end it FAILED:
        # its previous status is restored below).
        with mlflow.start_run(run_id=plan.parent_run_id), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MLflow's advice on type hints and on pickled python_model objects
            info = mlflow.pyfunc.log_model(name="model", **pyfunc_arguments(model_dir, plan.policy, work))
            try:  # registered apart from logging: a refusal deletes the logged model, leaving nothing behind
                # quiet here, after logging: log_model's input-example check turns MLflow's event lines back on
                with quiet_mlflow_events():
                    version = mlflow.register_model(info.model_uri, name, await_registration_for=60).version
            except BaseException:
                discard_logged_model(client, info.model_id)
                raise
    finally:
        if client.get_run(plan.parent_run_id).info.status != plan.parent_status:
            client.set_terminated(plan.parent_run_id, status=plan.parent_status)
        shutil.rmtree(work, ignore_errors=True)
    return str(version)


def discard_logged_model(client, model_id: str) -> None:
    """Delete a logged model and its artifacts (a registration that failed after logging)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    try:
        location = client.get_logged_model(model_id).artifact_location
        get_artifact_repository(location).delete_artifacts()
    finally:
        client.delete_logged_model(model_id)


def pyfunc_arguments(model_dir: Path, policy: dict, work: Path, model_config: dict | None = None) -> dict[str, Any]:
    """The arguments of ``mlflow.pyfunc.log_model`` / ``save_model`` for an exported model and its
    exit policy: the pyfunc, its artifacts, the code it ships, requirements, signature, example and
    ``model_config`` (default ``MODEL_CONFIG``). ``work`` receives policy.json and the code copies."""
    from serving.model import ExitPolicyModel
    from serving.packaging import code_paths, pip_requirements
    from serving.schema import input_example, model_signature

    meta = json.loads((Path(model_dir) / EXPORT_META_FILE).read_text())
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    (work / POLICY_FILE).write_text(json.dumps(policy, indent=2))
    names = label_names(meta)
    (work / LABELS_FILE).write_text(json.dumps({"label_names": names}, indent=2))
    return {"python_model": ExitPolicyModel(),
            "artifacts": {"model": str(model_dir), "policy": str(work / POLICY_FILE), "labels": str(work / LABELS_FILE)},
            "code_paths": code_paths(work / "code"), "pip_requirements": pip_requirements(),
            "signature": model_signature(meta), "input_example": input_example(meta),
            "model_config": dict(MODEL_CONFIG if model_config is None else model_config),
            "metadata": {"task": meta["task"], "text_columns": list(meta["text_fields"]),
                         "id2label": {str(i): name for i, name in enumerate(names)}}}


def label_names(meta: dict) -> list[str]:
    """The exported model's class names in id order: its own, or for a model exported before they
    were kept, its built-in task's (mr: negative, positive; snli: entailment, neutral, contradiction)."""
    from trainers.tasks import TASKS

    if meta.get("label_names"):
        return list(meta["label_names"])
    task = TASKS.get(meta.get("task"))
    return list(task.label_names) if task is not None else []


def version_tags(experiment: str, plan: ArmPlan) -> dict[str, str]:
    """Every tag of a version: what it is, how it was trained, its frontier and its exit policy."""
    policy = plan.policy
    tags = {
        TAG_ARM: plan.arm, TAG_SWEEP: experiment, TAG_TRIAL_ID: plan.trial_id, "trial_run_id": plan.trial_run_id,
        "objective": plan.objective, "validation_objective": _fmt(plan.objective_value),
        TAG_SEARCHED: plan.searched, "hyperparameters": json.dumps(plan.hyperparameters, sort_keys=True),
        "metric": str(plan.summary.metric or ""),
        "label_names": json.dumps(plan.summary.label_names) if plan.summary.label_names else "",
        "frontier_columns": FRONTIER_COLUMNS, "frontier": frontier_tag(plan.summary.frontier),
        **identity(plan),
        "target": json.dumps(policy["target"], sort_keys=True),
        **{key: _fmt(policy[key]) for key in ("validation_speedup", "validation_metric", "test_speedup", "test_metric")},
        TAG_MODEL_CHECKPOINT: plan.checkpoint,
    }
    return {k: v[:TAG_LIMIT] for k, v in tags.items() if v != ""}


def frontier_tag(frontier: list[FrontierSetting], limit: int = TAG_LIMIT) -> str:
    """The validation frontier with test values at its settings, as compact JSON rows
    ``[val_speedup, val_metric, test_speedup, test_metric]``, short enough for a tag."""
    keys = FRONTIER_COLUMNS.split(",")
    rows = [[float(getattr(point, k)) for k in keys] for point in frontier]
    for digits in (4, 3):
        text = json.dumps([[round(v, digits) for v in row] for row in rows], separators=(",", ":"))
        if len(text) <= limit:
            return text
    while len(text) > limit and len(rows) > 2:  # thin evenly, keep both ends
        rows = rows[::2] if len(rows) % 2 else rows[:-1:2] + rows[-1:]
        text = json.dumps([[round(v, 3) for v in row] for row in rows], separators=(",", ":"))
    return text


def _fmt(value: float) -> str:
    return f"{float(value):.10g}"


def _number(text: str):
    try:
        value = float(text)
    except (TypeError, ValueError):
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


__all__ = ["register_sweep", "plan_sweep", "check_model_name", "frontier_tag", "pyfunc_arguments", "version_tags", "identity",
           "use_tracking_uri", "DEFAULT_TARGET_SPEEDUP", "CHAMPION"]

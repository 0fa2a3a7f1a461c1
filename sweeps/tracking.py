"""MLflow layout of a sweep, written by the driver only (one writer, whatever the cluster).

    experiment <sweep name>
    ├── run "<arm>"               role=arm, stage=search, one per arm: space, budget, best trial, frontier
    │   └── run "<arm>-NN"        role=trial, stage=search, one per Ray Tune trial: params, per-epoch
    │                             metrics, learned weights, speed-accuracy curve, config
    ├── run "comparison"          role=comparison: Pareto overlay, summary table, Optuna storage
    ├── run "final/<arm>"         role=final, stage=final, one per arm: the retrained configuration,
    │   │                         mean/std over seeds, the mean test frontier
    │   └── run "final/<arm>-S"   role=trial, stage=final, one per seed S (sweeps.final)
    └── run "final-comparison"    role=final_comparison: the table (final_table.json), verdicts, figure

The parent runs carry few metrics and params, a description and a colour (``sweeps.mlflow_view``).

Every run of an arm carries the tags ``arm`` (the arm's name, e.g. ``clo``) and ``stage`` (``search``
or ``final``); the tag schema is ``trainers.layout``'s. Every write is idempotent, keyed by tags
(role, arm, stage, trial_id): a resumed sweep reopens its arm runs and never logs a trial twice, so
no run is duplicated. An experiment written with the old tags (``method``, role ``method``) is
migrated once when a Tracker opens it (``trainers.layout.migrate_experiment``). A trial run is marked
``logged=true`` only once everything is written; one that a crash left half-written is written
again under the same run id (MLflow ignores metric values it already has). Runs carry their
driver's host and pid: a driver stopped by SIGINT/SIGTERM ends its open runs KILLED, and one killed
outright (SIGKILL) has them closed KILLED by the next sweep started or resumed against the store.
"""

from __future__ import annotations

import json
import math
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from sweeps import mlflow_view as view
from sweeps.plots import frontier_figure, weights_figure
from sweeps.records import TrialRecord
from trainers.errors import ConfigError
from trainers.layout import (BEST_OBJECTIVE_METRIC, BEST_SUMMARY_ARTIFACT, CONFIG_ARTIFACT, ROLE_ARM,
                             ROLE_COMPARISON, ROLE_FINAL, ROLE_FINAL_COMPARISON, ROLE_TRIAL, SCHEMA_TAG, SCHEMA_VERSION, STAGE_SEARCH, SUMMARY_FILE,
                             TAG_ARM, TAG_BEST, TAG_BEST_RUN_ID, TAG_BEST_TRIAL_ID, TAG_FINALIZED, TAG_LOGGED,
                             TAG_MODEL_CHECKPOINT, TAG_ROLE, TAG_SEARCHED, TAG_STAGE, TAG_SWEEP, TAG_TRIAL_ID,
                             TAG_TRIAL_STATUS, TRUE, migrate_experiment, run_name, tag_filter)
from trainers.results import Summary

PARENT_TAG = "mlflow.parentRunId"
SWEEP_EXPERIMENT_TAG = "leebert.sweep"  # marks the experiments this platform writes (orphan search)
BATCH = 500  # MLflow accepts at most 1000 metrics per log_batch


def metric_name(name: str) -> str:
    """A loss-term name as an MLflow metric key: ce/3 → ce_3, kd/2<-5 → kd_2_from_5."""
    return name.replace("<-", "_from_").replace("/", "_")


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class Tracker:
    def __init__(self, tracking_uri: str, experiment: str, artifact_location: str | None = None,
                 sweep_tags: dict[str, str] | None = None):
        import mlflow
        from mlflow import MlflowClient

        self.uri = tracking_uri
        # mlflow.set_*_uri also export MLFLOW_*_URI, which would become the default store of a
        # later sweep started in this process: keep the process-wide setting, not the variables.
        saved = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is not None and found.lifecycle_stage != "active":
            raise ConfigError(f"MLflow experiment '{experiment}' is deleted; restore it in the MLflow UI or choose another --name")
        if found is not None:
            self.experiment_id = found.experiment_id
            # runs of an older version carry the old tags (method, role=method): migrated once
            self.migrated = migrate_experiment(self.client, self.experiment_id)
        else:
            self.experiment_id = self.client.create_experiment(
                experiment, artifact_location=artifact_location,
                tags={SWEEP_EXPERIMENT_TAG: "true", "mlflow.experimentKind": "custom_model_development",
                      SCHEMA_TAG: SCHEMA_VERSION, **(sweep_tags or {})})
            self.migrated = 0
        self.experiment = experiment
        self.driver = {"driver_host": socket.gethostname(), "driver_pid": str(os.getpid())}

    # ------------------------------------------------------------------ lookups
    def find_run(self, **tags: str):
        runs = self.client.search_runs([self.experiment_id], filter_string=tag_filter(**tags), max_results=2,
                                       order_by=["attributes.start_time ASC"])
        return runs[0] if runs else None

    def runs(self, **tags: str) -> list:
        return self.client.search_runs([self.experiment_id], filter_string=tag_filter(**tags), max_results=1000)

    # ------------------------------------------------------------------ arm runs
    def arm_run(self, arm: str, stage: str, params: dict[str, Any], tags: dict[str, str],
                settings: dict[str, Any] | None = None, metric: str = "accuracy") -> str:
        """The parent run of ``arm`` in ``stage`` (``search``: role ``arm``, its search; ``final``:
        role ``final``, the final stage's seeds): created once, reopened on resume. ``params`` are
        what a user compares (the UI's columns), ``settings`` the rest (``settings.json``); its
        description names the frontier charts' axes for ``metric``, its colour is the arm's."""
        role = ROLE_ARM if stage == STAGE_SEARCH else ROLE_FINAL
        keys = {TAG_ROLE: role, TAG_ARM: arm, TAG_STAGE: stage}
        run = self.find_run(**keys)
        if run is not None:
            if run.data.tags.get(TAG_FINALIZED) != TRUE:
                self.client.update_run(run.info.run_id, status="RUNNING")
                self._log(run.info.run_id, tags=self.driver)  # this driver owns it now
            return run.info.run_id
        run = self.client.create_run(self.experiment_id, run_name=run_name(arm, stage),
                                     tags={**tags, **keys, **self.driver})
        run_id = run.info.run_id
        if stage == STAGE_SEARCH:
            note = view.search_note(arm, metric, self.link(run_id, "best_frontier.png"))
        else:
            note = view.final_note(arm, metric, None)  # the figure's link once the comparison exists
        self._log(run_id, params=params, tags={view.TAG_NOTE: note,
                                               view.TAG_RUN_COLOR: view.run_colour(arm, stage != STAGE_SEARCH)})
        with tempfile.TemporaryDirectory(prefix="leebert-mlflow-") as tmp:
            path = Path(tmp) / view.SETTINGS_ARTIFACT
            path.write_text(json.dumps(settings or {}, indent=2, default=str))
            self.client.log_artifact(run_id, str(path))
        return run_id

    def link(self, run_id: str, path: str) -> str:
        """A markdown link to ``path`` among ``run_id``'s artifacts, for a run's description."""
        return view.artifact_link(self.experiment_id, run_id, path)

    # ------------------------------------------------------------------ trial runs
    def trial_run(self, arm: str, stage: str, trial_id: str):
        """The run of one trial (a search trial or a final seed) of ``arm``, or None."""
        return self.find_run(**{TAG_ROLE: ROLE_TRIAL, TAG_ARM: arm, TAG_STAGE: stage, TAG_TRIAL_ID: trial_id})

    def trial_logged(self, arm: str, stage: str, trial_id: str) -> bool:
        run = self.trial_run(arm, stage, trial_id)
        return run is not None and run.data.tags.get(TAG_LOGGED) == TRUE

    def log_trial(self, record: TrialRecord, parent_run_id: str) -> str | None:
        """One nested run with everything about ``record``; nothing if it is already logged
        completely; a half-written one (a crash while logging) is completed under its run id."""
        existing = self.trial_run(record.arm, record.stage, record.trial_id)
        if existing is not None and existing.data.tags.get(TAG_LOGGED) == TRUE:
            return None
        tags = {PARENT_TAG: parent_run_id, TAG_ROLE: ROLE_TRIAL, TAG_ARM: record.arm, TAG_STAGE: record.stage,
                TAG_TRIAL_ID: record.trial_id, TAG_TRIAL_STATUS: record.status,
                TAG_SEARCHED: ",".join(sorted(record.sampled)), **self.driver}
        if record.error:
            tags["error"] = record.error[:4000]
        if record.summary is not None and record.summary.label_names:  # the class names in id order (id2label)
            tags["label_names"] = json.dumps(record.summary.label_names)[:5000]
        if record.reason:
            tags["failure_reason"] = record.reason
        if record.checkpoint is not None:  # where the exported model is: serving.register reads it
            tags[TAG_MODEL_CHECKPOINT] = checkpoint_uri(record.checkpoint)
        if existing is not None:
            run_id = existing.info.run_id
            self.client.update_run(run_id, status="RUNNING")
        else:
            run_id = self.client.create_run(self.experiment_id, start_time=record.start_ms,
                                            run_name=f"{record.group}-{record.number:02d}", tags=tags).info.run_id
        params = {k: v for k, v in record.train.items() if k not in ("output_dir", "resume")}
        metrics: list[tuple[str, float, int, int]] = []  # (key, value, step, timestamp ms)
        for result in record.epochs:
            stamp = int(result.get("timestamp", time.time()) * 1000)
            step = int(result.get("step", result["epoch"]))  # training steps, as in the trainer's summary
            for key, value in result.items():
                if key == "objective" or key.startswith(("val_", "test_")):
                    if _finite(value):
                        metrics.append((_epoch_key(key), float(value), step, stamp))
        summary = record.summary
        if summary:
            end = record.end_ms or int(time.time() * 1000)
            metrics += summary_metrics(summary, end)
        self._log(run_id, params=params, metrics=metrics, tags=tags)
        with tempfile.TemporaryDirectory(prefix="leebert-mlflow-") as tmp:
            folder = Path(tmp)
            (folder / CONFIG_ARTIFACT).write_text(json.dumps(record.train, indent=2, default=str))
            files = [folder / CONFIG_ARTIFACT]
            if summary:
                (folder / SUMMARY_FILE).write_text(json.dumps(summary.to_dict(), indent=2, default=float))
                title = f"{record.group} trial {record.number}"
                files += [
                    (folder / SUMMARY_FILE),
                    weights_figure(summary.weights.names, summary.weights.final, summary.num_exits,
                                   folder / "weights.png", title=f"{title}: learned loss weights"),
                    frontier_figure(summary, folder / "frontier.png", title=f"{title}: speed-accuracy frontier"),
                ]
            for path in files:
                self.client.log_artifact(run_id, str(path))
        status = "FAILED" if record.status == "error" else "FINISHED"
        self.client.set_tag(run_id, TAG_LOGGED, TRUE)  # last: a run without it is completed on retry
        self.client.set_terminated(run_id, status=status, end_time=record.end_ms)
        return run_id

    # ------------------------------------------------------------------ finishing
    def finalize_arm(self, parent_run_id: str, best: TrialRecord | None, records: list[TrialRecord],
                     trials_csv: Path, extra_tags: dict[str, str]) -> None:
        counts = {s: sum(r.status == s for r in records) for s in ("completed", "stopped_early", "error")}
        metrics = [(f"trials_{k}", float(v), 0, int(time.time() * 1000)) for k, v in counts.items()]
        tags = dict(extra_tags)
        with tempfile.TemporaryDirectory(prefix="leebert-mlflow-") as tmp:
            files = [trials_csv]
            if best is not None and best.summary:
                summary = best.summary
                metrics += [(BEST_OBJECTIVE_METRIC, float(best.objective), 0, int(time.time() * 1000))]
                metrics += [m for m in summary_metrics(summary, int(time.time() * 1000))
                            if view.keeps_on_parent(m[0])]  # the trial runs keep the rest
                tags[TAG_BEST_TRIAL_ID] = best.trial_id
                child = self.trial_run(best.arm, best.stage, best.trial_id)
                if child is not None:
                    tags[TAG_BEST_RUN_ID] = child.info.run_id
                    self.client.set_tag(child.info.run_id, TAG_BEST, TRUE)
                folder = Path(tmp)
                (folder / BEST_SUMMARY_ARTIFACT).write_text(json.dumps(summary.to_dict(), indent=2, default=float))
                files += [folder / BEST_SUMMARY_ARTIFACT,
                          weights_figure(summary.weights.names, summary.weights.final, summary.num_exits,
                                         folder / "best_weights.png", title=f"{best.arm}: learned loss weights (best trial)"),
                          frontier_figure(summary, folder / "best_frontier.png",
                                          title=f"{best.arm}: frontier of the best trial ({best.trial_id})")]
            self._log(parent_run_id, metrics=metrics, tags=tags)
            for path in files:
                self.client.log_artifact(parent_run_id, str(path))

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def comparison(self, files: list[Path], metrics: dict[str, float], tags: dict[str, str], metric: str) -> str:
        run = self.find_run(**{TAG_ROLE: ROLE_COMPARISON})
        run_id = run.info.run_id if run else self.client.create_run(
            self.experiment_id, run_name="comparison", tags={TAG_ROLE: ROLE_COMPARISON, **tags}).info.run_id
        now = int(time.time() * 1000)
        self._log(run_id, metrics=[(k, float(v), 0, now) for k, v in metrics.items() if _finite(v)],
                  tags={view.TAG_NOTE: view.comparison_note(metric, self.link(run_id, "frontiers.png")),
                        view.TAG_RUN_COLOR: view.COMPARISON_COLOUR})
        for path in files:
            self.client.log_artifact(run_id, str(path))
        self.client.set_terminated(run_id, status="FINISHED")
        return run_id

    def final_comparison(self, sweep: str, params: dict[str, Any], rows: list[dict], verdicts: dict[str, str],
                         files: list[Path], curves: dict[str, list], layers: int, final_runs: dict[str, str],
                         metric: str) -> str:
        """The final comparison's run (created once): ``rows`` as a table artifact
        (``final_table.json``, no metrics), the verdicts as tags, ``files`` as artifacts. Then each
        arm's final run (``final_runs``: arm -> run id) gets its row's means and stds under the
        search runs' keys, its mean test frontier (``curves``) as the frontier metrics, and is finalized."""
        now = int(time.time() * 1000)
        run = self.find_run(**{TAG_ROLE: ROLE_FINAL_COMPARISON})
        run_id = run.info.run_id if run else self.client.create_run(
            self.experiment_id, run_name="final-comparison",
            tags={TAG_ROLE: ROLE_FINAL_COMPARISON, TAG_SWEEP: sweep, **self.driver}).info.run_id
        tags = {f"verdict/{arm}": line[:5000] for arm, line in verdicts.items()}
        figure = self.link(run_id, "final_frontiers.png")
        tags[view.TAG_NOTE] = view.final_comparison_note(metric, figure, self.link(run_id, view.FINAL_TABLE_JSON))
        tags[view.TAG_LOGGED_ARTIFACTS] = view.logged_tables(run.data.tags if run else {}, view.FINAL_TABLE_JSON)
        tags[view.TAG_RUN_COLOR] = view.COMPARISON_COLOUR
        self._log(run_id, params=params, tags=tags)
        with tempfile.TemporaryDirectory(prefix="leebert-mlflow-") as tmp:
            table = view.table_json(rows, Path(tmp) / view.FINAL_TABLE_JSON)
            for path in [table, *files]:
                self.client.log_artifact(run_id, str(path))
        self.client.set_terminated(run_id, status="FINISHED")
        for arm, parent_run_id in final_runs.items():  # each arm's final run: its mean and std over seeds
            row = next((r for r in rows if r["arm"] == arm), {})
            values = [(k, v, 0, now) for k, v in view.final_run_metrics(row).items()]
            frontier = view.mean_frontier_steps(curves.get(arm, []), layers)
            for key in (view.frontier_key(metric), view.frontier_test_key(metric)):  # overlays in either chart
                values += [(key, value, step, now) for step, value in frontier]
            tags = {TAG_FINALIZED: TRUE, view.TAG_NOTE: view.final_note(arm, metric, figure)}
            if arm in verdicts:
                tags["verdict"] = verdicts[arm][:5000]
            self._log(parent_run_id, metrics=values, tags=tags)
            self.client.set_terminated(parent_run_id, status="FINISHED")
        return run_id

    def close_own_runs(self, status: str = "KILLED") -> int:
        """End the runs this driver left RUNNING (on SIGINT/SIGTERM, or after an error)."""
        closed = 0
        for run in self._running(self.experiment_id):
            if run.data.tags.get("driver_pid") == self.driver["driver_pid"] and \
                    run.data.tags.get("driver_host") == self.driver["driver_host"]:
                self.client.set_terminated(run.info.run_id, status=status)
                closed += 1
        return closed

    def close_orphans(self) -> int:
        """End KILLED the runs that a driver killed outright (SIGKILL, a lost node) left RUNNING.

        In this sweep's experiment every RUNNING run is an orphan (this driver has not opened any
        yet: call it first). In other sweeps' experiments on the same store, a run is an orphan if
        its driver ran on this host and is gone; a live driver elsewhere is never touched.
        """
        closed = 0
        experiments = self.client.search_experiments(filter_string=f"tags.`{SWEEP_EXPERIMENT_TAG}` = 'true'",
                                                     max_results=200)
        for experiment in experiments:
            for run in self._running(experiment.experiment_id):
                mine = experiment.experiment_id == self.experiment_id
                if mine or (run.data.tags.get("driver_host") == self.driver["driver_host"]
                            and not _pid_alive(run.data.tags.get("driver_pid"))):
                    self.client.set_terminated(run.info.run_id, status="KILLED")
                    closed += 1
        return closed

    def _running(self, experiment_id: str) -> list:
        return self.client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000)

    # ------------------------------------------------------------------ low level
    def _log(self, run_id: str, params: dict[str, Any] | None = None,
             metrics: list[tuple[str, float, int, int]] | None = None, tags: dict[str, str] | None = None) -> None:
        from mlflow.entities import Metric, Param, RunTag

        param_list = [Param(k, str(v)[:6000]) for k, v in (params or {}).items()]
        tag_list = [RunTag(k, str(v)[:5000]) for k, v in (tags or {}).items()]
        seen: set[tuple[str, int]] = set()
        metric_list = []
        for k, v, step, ts in metrics or []:
            if (k, step) not in seen:  # the last epoch's validation values also come with the summary
                seen.add((k, step))
                metric_list.append(Metric(k, v, ts, step))
        for start in range(0, max(len(param_list), 1), 100):
            self.client.log_batch(run_id, params=param_list[start:start + 100],
                                  tags=tag_list if start == 0 else [])
        for start in range(0, len(metric_list), BATCH):
            self.client.log_batch(run_id, metrics=metric_list[start:start + BATCH])


def checkpoint_uri(checkpoint) -> str:
    """A Ray checkpoint's folder as a path (local filesystem) or a URI (s3://bucket/key, gs://...)."""
    kind = getattr(checkpoint.filesystem, "type_name", "local")
    return checkpoint.path if kind == "local" else f"{kind}://{checkpoint.path}"


def _pid_alive(pid: str | None) -> bool:
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _epoch_key(key: str) -> str:
    """Tune result keys → MLflow keys: val_hypervolume → val/hypervolume, val_exit_3 → val/exit_3."""
    if key == "objective":
        return key
    split, _, rest = key.partition("_")
    return f"{split}/{rest}"


def summary_metrics(summary: Summary, stamp: int) -> list[tuple[str, float, int, int]]:
    """Final metrics of a trained model: test, operating points, learned weights, frontier curves."""
    out: list[tuple[str, float, int, int]] = []
    metric = summary.metric
    last_step = int(summary.steps)
    for short, block in (("val", summary.validation), ("test", summary.test)):
        out.append((f"{short}/hypervolume", block.hypervolume, last_step, stamp))
        out.append((f"{short}/last_exit", block.last_exit, last_step, stamp))
        out.append((f"{short}/reference_{metric}", block.reference_metric, 0, stamp))
        for index, exit_metrics in enumerate(block.per_exit, start=1):
            out.append((f"{short}/exit_{index}", exit_metrics[metric], last_step, stamp))
    for op in summary.operating_points:
        prefix = f"op_{op.target_speedup:g}x"
        for key in ("validation_speedup", "validation_metric", "test_speedup", "test_metric", "wallclock_speedup"):
            if _finite(getattr(op, key)):
                out.append((f"{prefix}/{key}", float(getattr(op, key)), 0, stamp))
    weights = summary.weights
    for name, value in zip(weights.names, weights.final):
        out.append((f"weight/{metric_name(name)}", float(value), last_step, stamp))
    for entry in weights.trajectory:
        if int(entry["step"]) == last_step:
            continue  # the final values above
        for name, value in zip(weights.names, entry["weights"]):
            out.append((f"weight/{metric_name(name)}", float(value), int(entry["step"]), stamp))
    # The curve as metric history: step = speed-up × 100, so MLflow's chart of this metric over
    # "step" draws the speed-accuracy curve. One value per step (the most accurate).
    for split, key in (("validation", view.frontier_key(metric)), ("test", view.frontier_test_key(metric))):
        by_step: dict[int, float] = {}
        for point in summary.frontier:
            speedup, value = ((point.validation_speedup, point.validation_metric) if split == "validation"
                              else (point.test_speedup, point.test_metric))
            step = int(round(100 * speedup))
            by_step[step] = max(by_step.get(step, -math.inf), value)
        out += [(key, value, step, stamp) for step, value in sorted(by_step.items())]
    out.append(("wall_time_s", float(summary.wall_time_s), 0, stamp))
    return [(k, float(v), s, t) for k, v, s, t in out if _finite(v)]

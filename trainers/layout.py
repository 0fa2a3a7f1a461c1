"""Where things are: the files a training, a trial and an exported model write, and the MLflow tags.

One place for every name that a writer and a reader must agree on. The trainer writes its output
folder; a sweep trial packs part of it into its Ray checkpoint; the timing phase, the final
comparison and the model registry read it back from there; the sweep's tracker tags MLflow runs
that the registry searches. Trainers, sweeps and serving import these names from here (trainers
import neither sweeps nor serving, so this module lives in trainers).

Standard library only: the served model ships this module with ``serving.export`` (``code_paths``).

The trainer's output folder (``output_dir``)::

    summary.json                 the run's typed Summary (trainers.results)
    test_exit_logits.npz         every exit's test logits, labels and example ids
    deepspeed.json               a multi-worker trial's node-local DeepSpeed config
    checkpoints/latest           the tag of the newest complete checkpoint
    checkpoints/epoch-N/         DeepSpeed's files, COMPLETE (written last), rank_state/rank<R>.pt

A trial's final Ray checkpoint: ``summary.json``, ``training_window.json``, ``test_exit_logits.npz``
and ``model/`` (an exported model: ``weights.pt``, ``backbone/``, ``tokenizer/``, ``exit_model.json``).
"""

from __future__ import annotations

from pathlib import Path

# ---------------------------------------------------------------------------- the trainer's output folder
SUMMARY_FILE = "summary.json"
TEST_LOGITS_FILE = "test_exit_logits.npz"  # sweeps.trial copies it into a trial's final checkpoint
DEEPSPEED_CONFIG_FILE = "deepspeed.json"
CHECKPOINTS_DIR = "checkpoints"
LATEST_FILE = "latest"  # in CHECKPOINTS_DIR and in a reported epoch snapshot: the newest tag
COMPLETE_MARKER = "COMPLETE"  # written last: a checkpoint folder without it is ignored on resume
RANK_STATE_DIR = "rank_state"  # per-rank files in a checkpoint: each rank's own random streams
EPOCH_PREFIX = "epoch-"


def epoch_tag(epoch: int) -> str:
    """The checkpoint tag of (1-based) ``epoch``: ``epoch-N``."""
    return f"{EPOCH_PREFIX}{epoch}"


def checkpoints_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / CHECKPOINTS_DIR


def rank_state_file(checkpoint: str | Path, rank: int) -> Path:
    """One rank's own state (its random streams) inside a checkpoint folder."""
    return Path(checkpoint) / RANK_STATE_DIR / f"rank{rank}.pt"


# ---------------------------------------------------------------------------- a trial's final checkpoint
MODEL_DIR = "model"  # the exported model
TRAINING_WINDOW_FILE = "training_window.json"  # {"trained_from", "trained_until"}, next to summary.json

# ---------------------------------------------------------------------------- an exported model folder
WEIGHTS_FILE = "weights.pt"
BACKBONE_DIR = "backbone"
TOKENIZER_DIR = "tokenizer"
EXPORT_META_FILE = "exit_model.json"
POLICY_FILE = "policy.json"  # the exit policy a served model applies (serving.calibration's spec)

# ---------------------------------------------------------------------------- a sweep's report folder
TIMING_FILE = "timing.json"  # report/final/: the timing phase's passes

# ---------------------------------------------------------------------------- MLflow artifacts
CONFIG_ARTIFACT = "config.json"  # a trial run's trainer options
BEST_SUMMARY_ARTIFACT = "best_summary.json"  # an arm run's best trial's summary

# ---------------------------------------------------------------------------- MLflow tag schema
# Keys and values are what runs already in MLflow stores carry: change them only with a migration
# (``legacy_tags`` below; ``sweeps.tracking.Tracker`` and ``serving.register`` apply it).
TAG_ROLE = "role"
TAG_ARM = "arm"  # the compared configuration: fixed-uniform, ..., clo (never "final/clo")
TAG_STAGE = "stage"  # STAGE_SEARCH or STAGE_FINAL
TAG_TRIAL_ID = "trial_id"
TAG_TRIAL_STATUS = "trial_status"
TAG_SEARCHED = "searched"  # a trial's sampled parameters, comma-separated
TAG_LOGGED = "logged"  # "true" once a trial run is completely written
TAG_FINALIZED = "finalized"  # "true" once an arm's search (or final) run is summarized
TAG_BEST = "best"  # "true" on an arm's best trial run
TAG_BEST_TRIAL_ID = "best_trial_id"
TAG_BEST_RUN_ID = "best_run_id"
TAG_MODEL_CHECKPOINT = "model_checkpoint"  # a trial run's final checkpoint: where its exported model is
TAG_REGISTERED = "registered"  # an arm run's registered version (JSON)
TAG_SWEEP = "sweep"
TRUE = "true"

# An arm run's best validation objective (the registry reads it). No "/" in it: the MLflow UI makes a
# chart section per key prefix, sorted by name, and a "best" section would come before "frontier".
BEST_OBJECTIVE_METRIC = "best_objective"
LEGACY_BEST_OBJECTIVE_METRIC = "best/objective"  # its name until 2026-12-05 (sweeps written before)

STAGE_SEARCH = "search"  # the values of TAG_STAGE (the names of the sweep's two stages)
STAGE_FINAL = "final"

ROLE_ARM = "arm"  # one per arm: the search
ROLE_TRIAL = "trial"  # one per Ray Tune trial (search trial or final seed)
ROLE_COMPARISON = "comparison"
ROLE_FINAL = "final"  # one per arm: the final stage's seeds
ROLE_FINAL_COMPARISON = "final_comparison"

# The schema before arm/stage (runs written by older versions): tag "method" held the arm ("clo")
# or "final/<arm>", and an arm's search run had role "method".
LEGACY_TAG_METHOD = "method"
LEGACY_ROLE_METHOD = "method"
SCHEMA_TAG = "leebert.tag_schema"  # on a sweep's experiment: SCHEMA_VERSION once its runs carry arm/stage
SCHEMA_VERSION = "2"


def run_name(arm: str, stage: str) -> str:
    """The name (in the MLflow UI) of an arm's parent run: "clo" (search), "final/clo" (final stage)."""
    return arm if stage == STAGE_SEARCH else f"{STAGE_FINAL}/{arm}"


def tag_filter(**tags: str) -> str:
    """An MLflow run filter matching every ``key=value``: ``tags.role = 'trial' and tags.arm = 'clo'``."""
    return " and ".join(f"tags.{key} = '{value}'" for key, value in tags.items())


def trial_filter(arm: str, stage: str, trial_id: str) -> str:
    """The filter of one trial run of ``arm`` in ``stage``."""
    return tag_filter(**{TAG_ROLE: ROLE_TRIAL, TAG_ARM: arm, TAG_STAGE: stage, TAG_TRIAL_ID: trial_id})


ARM_RUNS_FILTER = tag_filter(**{TAG_ROLE: ROLE_ARM})


def legacy_tags(tags: dict[str, str]) -> dict[str, str] | None:
    """The tags that bring a run written with the old schema up to date (``arm``, ``stage`` and,
    for an arm's search run, ``role``), or None if ``tags`` hold no old ``method`` tag."""
    old = tags.get(LEGACY_TAG_METHOD)
    if old is None:
        return None
    prefix = f"{STAGE_FINAL}/"
    arm, stage = (old[len(prefix):], STAGE_FINAL) if old.startswith(prefix) else (old, STAGE_SEARCH)
    new = {TAG_ARM: arm, TAG_STAGE: stage}
    if tags.get(TAG_ROLE) == LEGACY_ROLE_METHOD:
        new[TAG_ROLE] = ROLE_ARM
    return new


def migrate_experiment(client, experiment_id: str) -> int:
    """Bring the runs of a sweep's experiment written with the old tags (``method``, role ``method``)
    up to the current schema, once: then the experiment is marked ``SCHEMA_TAG``. ``client`` is an
    ``mlflow.MlflowClient``. Idempotent (a run is migrated by setting its new tags first, then
    deleting the old one). Returns how many runs were migrated."""
    experiment = client.get_experiment(experiment_id)
    if (experiment.tags or {}).get(SCHEMA_TAG) == SCHEMA_VERSION:
        return 0
    migrated, token = 0, None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        for run in page:
            new = legacy_tags(run.data.tags)
            if new is None:
                continue
            for key, value in new.items():
                client.set_tag(run.info.run_id, key, value)
            client.delete_tag(run.info.run_id, LEGACY_TAG_METHOD)
            migrated += 1
        token = page.token
        if not token:
            break
    client.set_experiment_tag(experiment_id, SCHEMA_TAG, SCHEMA_VERSION)
    return migrated

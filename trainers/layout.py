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
BEST_SUMMARY_ARTIFACT = "best_summary.json"  # a method run's best trial's summary

# ---------------------------------------------------------------------------- MLflow tag schema
# Keys and values are what runs already in MLflow stores carry: change them only with a migration.
TAG_ROLE = "role"
TAG_METHOD = "method"
TAG_TRIAL_ID = "trial_id"
TAG_TRIAL_STATUS = "trial_status"
TAG_SEARCHED = "searched"  # a trial's sampled parameters, comma-separated
TAG_LOGGED = "logged"  # "true" once a trial run is completely written
TAG_FINALIZED = "finalized"  # "true" once a method (or final) run is summarized
TAG_BEST = "best"  # "true" on a method's best trial run
TAG_BEST_TRIAL_ID = "best_trial_id"
TAG_BEST_RUN_ID = "best_run_id"
TAG_MODEL_CHECKPOINT = "model_checkpoint"  # a trial run's final checkpoint: where its exported model is
TAG_REGISTERED = "registered"  # a method run's registered version (JSON)
TAG_SWEEP = "sweep"
TRUE = "true"

ROLE_METHOD = "method"  # one per arm: the search
ROLE_TRIAL = "trial"  # one per Ray Tune trial
ROLE_COMPARISON = "comparison"
ROLE_FINAL = "final"  # one per arm: the final stage's seeds
ROLE_FINAL_COMPARISON = "final_comparison"


def tag_filter(**tags: str) -> str:
    """An MLflow run filter matching every ``key=value``: ``tags.role = 'trial' and tags.method = 'clo'``."""
    return " and ".join(f"tags.{key} = '{value}'" for key, value in tags.items())


def trial_filter(method: str, trial_id: str) -> str:
    """The filter of one trial run of ``method``."""
    return tag_filter(**{TAG_ROLE: ROLE_TRIAL, TAG_METHOD: method, TAG_TRIAL_ID: trial_id})


METHOD_RUNS_FILTER = tag_filter(**{TAG_ROLE: ROLE_METHOD})

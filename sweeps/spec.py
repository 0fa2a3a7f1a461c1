"""One trial as it travels from the driver to the trainer: a ``TrialSpec``.

A spec holds the trainer config of the trial (a ``TrainConfig``: the arm's config with the values
the searcher drew, or the final stage's options, applied), the sampled values on their own (what
MLflow lists as searched), and the runtime settings every trial of the stage shares. Its Tune
config is only its serialization, plain and JSON-ready (Tune writes it to params.json):

    {"trial": {"arm", "stage", "number", "train": TrainConfig.to_dict(), "sampled"}, "runtime": {...}}

This module is the one place that writes or reads that layout: a stage's param space holds the
runtime (and, in the final stage, a grid of trial parts: ``param_space``), the search stage's
searcher suggests the trial part (``TrialSpec.suggestion``), and every reader of a Tune trial
goes through ``TrialSpec.of(trial)``. The worker turns a spec into the trainer's config with
``to_train_config``; the trainer (``trainers.train.run``) validates it, once per trial.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from trainers.config import TrainConfig
from trainers.layout import STAGE_FINAL, STAGE_SEARCH, run_name

SEARCH, FINAL = STAGE_SEARCH, STAGE_FINAL  # the two stages; each is one Tune experiment of that name (and MLflow's stage tag)
TRIAL, RUNTIME = "trial", "runtime"  # the two parts of a trial's Tune config


@dataclass(frozen=True)
class Runtime:
    """How every trial of a stage runs: resources, storage, what it reports, test hooks."""

    experiment: str                  # the Tune experiment: "search" or "final" (under storage_path)
    storage_path: str                # the sweep's Ray storage: divergence markers, Ray Train runs
    metric: str                      # the Tune result key the search and ASHA maximize
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    workers_per_trial: int = 1
    trial_logs: bool = False
    env: dict = field(default_factory=dict)
    trial_node_resource: str | None = None  # the custom resource every process of a trial holds (sweeps.placement)
    # test hook: {"<arm>-<trial number>": step}: that search trial's training loss is NaN at that step
    diverge_trials: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Runtime":
        return cls(**values)


@dataclass(frozen=True)
class TrialSpec:
    arm: str                          # fixed-uniform, ..., clo
    stage: str                        # SEARCH or FINAL
    number: int                       # search: 1-based trial number in its arm (its Optuna trial + 1); final: the seed
    train: TrainConfig                # every trainer option of the trial, the sampled ones included
    sampled: dict                     # search: what the searcher drew; final: {"seed": seed}
    runtime: Runtime

    @classmethod
    def drawn(cls, arm: str, stage: str, number: int, base: TrainConfig, sampled: dict[str, Any],
              runtime: Runtime, options: dict[str, Any] | None = None) -> "TrialSpec":
        """The spec of a trial that trains ``base`` with ``options`` (the final stage's) and the
        ``sampled`` values applied on top: the one place a stage's values reach a trial's config."""
        where = f"{arm} {stage} trial"
        train = base.with_values({**(options or {}), **sampled}, where=where)
        return cls(arm=arm, stage=stage, number=int(number), train=train, sampled=dict(sampled), runtime=runtime)

    @property
    def group(self) -> str:
        """The MLflow parent run the trial is nested in (its name): the arm's search, or its final stage."""
        return run_name(self.arm, self.stage)

    @property
    def label(self) -> str:
        return f"{self.arm} trial {self.number}" if self.stage == SEARCH else f"final/{self.arm} seed {self.number}"

    def fault_step(self) -> int | None:
        """The step the ``diverge_trials`` test hook makes diverge in this trial, or None."""
        step = self.runtime.diverge_trials.get(f"{self.arm}-{self.number}") if self.stage == SEARCH else None
        return int(step) if step is not None else None

    def to_train_config(self, **runtime_options: Any) -> TrainConfig:
        """The trainer's config of this trial: its options plus where and how it runs in this
        process (``output_dir``, ``threads``, ``resume``, ...). Not validated here: the trainer
        (``trainers.train.run``) validates it, the one validation of a trial's config."""
        if runtime_options.get("threads", self.train.threads) is None:  # one torch thread per reserved CPU
            runtime_options["threads"] = max(1, int(self.runtime.cpus_per_trial))
        return self.train.with_values(runtime_options, where=f"{self.label}'s trainer")

    # ------------------------------------------------------------------ as a Tune config
    def to_config(self) -> dict[str, Any]:
        """The whole Tune config of the trial (what ``from_config`` reads back)."""
        return {TRIAL: self.trial_part(), RUNTIME: self.runtime.to_dict()}

    def suggestion(self) -> dict[str, Any]:
        """What the search stage's searcher hands Tune: the trial part, which Tune merges into the
        stage's param space (``param_space``: the runtime)."""
        return {TRIAL: self.trial_part()}

    def trial_part(self) -> dict[str, Any]:
        return {"arm": self.arm, "stage": self.stage, "number": self.number, "train": self.train.to_dict(),
                "sampled": dict(self.sampled)}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "TrialSpec":
        part = config[TRIAL]
        label = f"{part['arm']} {part['stage']} trial {part['number']}"
        return cls(arm=part["arm"], stage=part["stage"], number=int(part["number"]),
                   train=TrainConfig.from_dict(dict(part["train"]), where=f"{label}'s train"),
                   sampled=dict(part["sampled"]), runtime=Runtime.from_dict(config[RUNTIME]))

    @classmethod
    def of(cls, trial) -> "TrialSpec":
        """The spec of a Ray Tune trial (a live ``Trial``, or one read back from an experiment)."""
        return cls.from_config(trial.config)


def param_space(runtime: Runtime, grid: list[TrialSpec] | None = None) -> dict[str, Any]:
    """A stage's Tune param space: the runtime every trial shares and, for a stage without a
    searcher (the final stage), a grid search over its trials' parts (each spec's own runtime is
    ``runtime``). A search stage's trial parts come from its searcher (``TrialSpec.suggestion``)."""
    space: dict[str, Any] = {RUNTIME: runtime.to_dict()}
    if grid:
        from ray import tune

        if any(spec.runtime != runtime for spec in grid):
            raise ValueError("every trial of a grid shares the stage's runtime")
        space[TRIAL] = tune.grid_search([spec.trial_part() for spec in grid])
    return space

"""One trial as it travels from the driver to the trainer: a ``TrialSpec``.

A spec holds the trainer options of the trial (the shared ``train.*`` options, the arm's method and
scheme, and the values the searcher drew, already applied), the sampled values on their own (what
MLflow lists as searched), and the runtime settings every trial of the sweep shares. It is the
whole Tune config of a trial:

    {"trial": {"arm", "stage", "number", "train", "sampled"}, "runtime": {...}}

The search stage's searcher suggests the ``trial`` part and the param space holds ``runtime``; the
final stage's param space grid-searches over ``trial`` parts. The worker turns it into the trainer's
config with ``to_train_config``, the one place where a trial's ``TrainConfig`` is built.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

SEARCH, FINAL = "search", "final"  # the two stages; each is one Tune experiment of that name


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
    train: dict                       # every trainer option of the trial, the sampled ones included
    sampled: dict                     # search: what the searcher drew; final: {"seed": seed}
    runtime: Runtime

    @property
    def group(self) -> str:
        """The MLflow parent run the trial is nested in: the arm's search, or its final stage."""
        return self.arm if self.stage == SEARCH else f"final/{self.arm}"

    @property
    def label(self) -> str:
        return f"{self.arm} trial {self.number}" if self.stage == SEARCH else f"final/{self.arm} seed {self.number}"

    def fault_step(self) -> int | None:
        """The step the ``diverge_trials`` test hook makes diverge in this trial, or None."""
        step = self.runtime.diverge_trials.get(f"{self.arm}-{self.number}") if self.stage == SEARCH else None
        return int(step) if step is not None else None

    def to_train_config(self, **runtime_options: Any):
        """The trainer's config of this trial: its options plus where and how it runs in this
        process (``output_dir``, ``threads``, ``resume``, ...). Built here only; validated once,
        by the trainer (``trainers.train.run``)."""
        from trainers.config import TrainConfig

        values = {**self.train, **runtime_options}
        if values.get("threads") is None:  # one torch thread per reserved CPU
            values["threads"] = max(1, int(self.runtime.cpus_per_trial))
        return TrainConfig.from_dict(values, where=f"{self.label}'s trainer")

    # ------------------------------------------------------------------ as a Tune config
    def to_config(self) -> dict[str, Any]:
        return {"trial": self.trial_part(), "runtime": self.runtime.to_dict()}

    def trial_part(self) -> dict[str, Any]:
        return {"arm": self.arm, "stage": self.stage, "number": self.number, "train": dict(self.train),
                "sampled": dict(self.sampled)}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "TrialSpec":
        part = config["trial"]
        return cls(arm=part["arm"], stage=part["stage"], number=int(part["number"]), train=dict(part["train"]),
                   sampled=dict(part["sampled"]), runtime=Runtime.from_dict(config["runtime"]))

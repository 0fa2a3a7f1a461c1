"""SIMULATION: the stand-in trainer of the scheduling simulator (benchmarks/cluster_sim.py).

``StandInTrainer`` replaces ``trainers.train.run`` (same signature, passed to
``run_sweep(trainer=...)``): it sleeps the durations of the 64-GPU plan of docs/scaling.md
(``Plan``) divided by a time scale, and reports a seeded metric curve, synthetic test logits and a
summary. It trains nothing and touches no GPU. A module of its own: the trial processes and Ray
Train workers import it by this name, and its per-process state is the module's.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

@dataclass(frozen=True)
class Plan:
    """Simulated seconds of one glue-bert trial on 2 A100s (docs/scaling.md, "Paper plan: 64 GPUs")."""

    fixed_epoch_s: float = 130.0    # 1,894 steps at 15 steps/s + validation
    outer_step_costs: tuple = ()    # ((arm, cost), ...): a learned epoch costs 1 + cost / outer_every fixed epochs,
                                    # the cost the sweep charges (sweeps/budget.py, for the trials' device and precision)
    startup_s: float = 35.0         # Ray Train worker group + NCCL, imports, model, SST-2 (of the plan's 60 s)
    finish_s: float = 25.0          # final evaluation with wall-clock timing, export, final report
    checkpoint_s: float = 6.5       # blocking upload of a 1.3 GB epoch checkpoint
    jitter: float = 0.05            # each trial's epochs are up to 5 % faster or slower, seeded

    def epoch_seconds(self, train: dict) -> float:
        outer = dict(self.outer_step_costs).get(arm_of(train), 0.0) if train.get("method", "fixed") != "fixed" else 0.0
        cost = 1.0 + outer / int(train.get("outer_every", 10))
        return self.fixed_epoch_s * cost * (1.0 + self.jitter * (2 * _unit(train, "pace") - 1))

    def trial_seconds(self, train: dict, epochs_run: int, completed: bool) -> float:
        """What a trial that ran ``epochs_run`` epochs kept its GPUs busy (checkpoints before every
        report but the last, the final evaluation only when it completed)."""
        return (self.startup_s + epochs_run * self.epoch_seconds(train)
                + max(0, epochs_run - (1 if completed else 0)) * self.checkpoint_s + (self.finish_s if completed else 0.0))


def _unit(values: dict, salt: str) -> float:
    """A number in [0, 1) fixed by a trial's options (so the analysis can recompute what it slept)."""
    keys = ("method", "scheme", "lr", "head_lr", "lr_outer", "outer_every", "seed")
    text = json.dumps({k: values.get(k) for k in keys}, sort_keys=True, default=str) + salt
    return int(hashlib.sha256(text.encode()).hexdigest()[:12], 16) / 16 ** 12


def arm_of(train: dict) -> str:
    return train["method"] if train.get("method") != "fixed" else f"fixed-{train.get('scheme', 'uniform')}"


class StandInTrainer:
    """A stand-in for ``trainers.train.run``: sleeps the plan's durations / ``time_scale`` and
    reports a seeded metric curve. ``worse_arm`` is uniformly worse (the per-arm ASHA test)."""

    def __init__(self, time_scale: float = 1.0, plan: Plan = Plan(), worse_arm: str | None = None,
                 exits: int = 12, test_examples: int = 872, final_time_scale: float | None = None):
        self.search_scale, self.plan, self.worse_arm = time_scale, plan, worse_arm
        self.final_scale = final_time_scale or time_scale
        self.exits, self.test_examples = exits, test_examples
        self.time_scale = time_scale

    def _sleep(self, seconds: float) -> None:
        time.sleep(seconds / self.time_scale)

    def _stage_scale(self) -> float:
        """The final stage may run at its own scale: its trials all start fresh processes."""
        stage = ""
        try:  # a Ray Train worker of a multi-worker trial: its run lives in <storage>/<stage>/_train/<trial>
            import ray.train

            parts = ray.train.get_context().get_storage().experiment_fs_path.rstrip("/").split("/")
            stage = parts[-3] if len(parts) > 2 and parts[-2] == "_train" else ""
        except Exception:  # noqa: BLE001 - a one-worker trial: Tune's experiment is the stage
            pass
        try:
            from ray import tune

            stage = stage or tune.get_context().get_experiment_name()
        except Exception:  # noqa: BLE001 - outside Tune
            pass
        return self.final_scale if stage.startswith("final") else self.search_scale

    def _start_up(self) -> None:
        """The plan's start-up (worker group, imports, model and data) includes what the platform
        already spent starting this trial for real (Tune's actor set-up, or its reset for a reused
        actor, since the actor's last report): only the rest is slept."""
        try:  # Ray's session of this trial keeps the time of its last report (or of its creation)
            from ray.train._internal.session import get_session

            already = max(0.0, time.time() - get_session().last_report_time)
        except Exception:  # noqa: BLE001 - another Ray: sleep the whole start-up
            already = 0.0
        time.sleep(max(0.0, self.plan.startup_s / self.time_scale - already))

    def quality(self, train: dict) -> float:
        """The last exit's validation accuracy the trial converges to."""
        arm = arm_of(train)
        base = {"clo": 0.90, "bilevel": 0.89}.get(arm, 0.88) - (0.25 if arm == self.worse_arm else 0.0)
        lr = float(train.get("lr", 3e-5))
        return base - 0.02 * math.log10(lr / 3e-5) ** 2 + 0.01 * (2 * _unit(train, "noise") - 1)

    def curve(self, train: dict, epoch: int) -> tuple[float, list[float]]:
        """(hypervolume, per-exit accuracy) after ``epoch`` epochs."""
        last = 0.5 + (self.quality(train) - 0.5) * (1 - 0.5 ** epoch)
        per_exit = [0.5 + (last - 0.5) * math.sqrt((m + 1) / self.exits) for m in range(self.exits)]
        return 0.6 * (last - 0.5) / 0.5, per_exit

    def __call__(self, cfg, on_epoch=None, quiet: bool = False, fault_step: int | None = None, **hooks):
        import numpy as np

        from trainers.layout import LATEST_FILE, TEST_LOGITS_FILE, checkpoints_dir, epoch_tag

        self.time_scale = self._stage_scale()
        train, output = cfg.to_dict(), Path(cfg.output_dir)
        latest = checkpoints_dir(output) / LATEST_FILE
        start = int(latest.read_text().split("-")[1]) if latest.is_file() else 0
        steps = 1894
        self._start_up()
        epochs = []
        for epoch in range(start + 1, cfg.epochs + 1):
            self._sleep(self.plan.epoch_seconds(train) + (self.plan.checkpoint_s if epoch < cfg.epochs else 0.0))
            hypervolume, per_exit = self.curve(train, epoch)
            record = {"epoch": epoch, "step": epoch * steps, "val_last_exit": per_exit[-1],
                      "val_hypervolume": hypervolume, "val_per_exit": per_exit, "weights": [],
                      "train_seconds": round(self.plan.epoch_seconds(train), 2)}
            epochs.append(record)
            folder = checkpoints_dir(output) / epoch_tag(epoch)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "state.json").write_text(json.dumps(record))
            latest.write_text(epoch_tag(epoch))
            if on_epoch is not None:
                on_epoch(record)
        self._sleep(self.plan.finish_s)
        hypervolume, per_exit = self.curve(train, cfg.epochs)
        rng = np.random.default_rng(int(_unit(train, "test") * 2 ** 32))
        labels = rng.integers(0, 2, self.test_examples)
        difficulty = rng.random(self.test_examples)
        correct = difficulty[None, :] < np.array(per_exit)[:, None]          # [L, N]: right from some exit on
        logits = np.where(correct, 1.0, -1.0)[..., None] * np.stack([1 - 2 * labels, 2 * labels - 1], -1)[None]
        np.savez_compressed(output / TEST_LOGITS_FILE, logits=logits.astype(np.float32), labels=labels,
                            ids=np.arange(self.test_examples))
        split = {"last_exit": per_exit[-1], "hypervolume": hypervolume, "reference_metric": 0.5,
                 "per_exit": [{"accuracy": a} for a in per_exit]}
        frontier = [{"policy": "patience", "setting": t, "delta": None,
                     "validation_speedup": self.exits / (t + 1), "validation_metric": per_exit[min(t + 2, self.exits - 1)],
                     "test_speedup": self.exits / (t + 1), "test_metric": per_exit[min(t + 2, self.exits - 1)]}
                    for t in range(1, self.exits - 1)]
        points = [{"target_speedup": target, **min(frontier, key=lambda p: abs(p["validation_speedup"] - target)),
                   "wallclock_speedup": 0.9 * target if cfg.wallclock_eval else None} for target in (1.5, 2.0, 3.0)]
        names = [f"ce/{m}" for m in range(1, self.exits + 1)]
        summary = {"task": cfg.task, "method": cfg.method, "scheme": cfg.scheme, "model": cfg.model,
                "num_exits": self.exits, "steps": cfg.epochs * steps, "train_examples": 60614,
                "wall_time_s": round(self.plan.trial_seconds(train, cfg.epochs - start, True), 1),
                "hypervolume_axis": "log", "metric": "accuracy", "validation": split, "test": split,
                "frontier": frontier, "operating_points": points, "validation_curve": [],
                "weights": {"names": names, "final": [1.0] * len(names), "trajectory": []},
                "epochs": epochs, "config": train}
        from trainers.results import RunResult, Summary

        return RunResult(model=None, summary=Summary.from_dict(summary))

"""SIMULATION: how well the sweep keeps a GPU cluster busy, with fake GPUs and a stand-in trainer.

    python benchmarks/cluster_sim.py              # glue-bert: 5 arms x 96 trials, 2 GPUs each, 3 final seeds, 64 GPUs
    python benchmarks/cluster_sim.py --quick      # a CI-sized run (at most 2 minutes)
    python benchmarks/cluster_sim.py --json sim.json

What is real and what is not:
- Real: ``sweeps.runner.run_sweep`` end to end. Ray Tune schedules every trial against a
  ``ray.cluster_utils.Cluster`` of two nodes that each *declare* GPUs (32 each by default; nothing
  runs on them), every arm's Optuna searcher, budget and ASHA scheduler decide, every trial and
  checkpoint goes through Tune's storage, MLflow logs every trial (sqlite), and the final stage
  retrains every arm's best configuration and compares the arms (paired bootstrap, on synthetic
  test results).
- Simulated: the training. ``StandInTrainer`` replaces ``trainers.train.run`` (same signature,
  passed to ``run_sweep(trainer=...)``): it sleeps for seeded epoch durations taken from the
  64-GPU plan of docs/scaling.md (``Plan``), divided by ``--time-scale``, and reports a seeded
  metric curve (one arm can be made uniformly worse). It trains nothing and touches no GPU.

Figures, per stage (search, final), in simulated seconds (real seconds x time scale):
- makespan: first trial start to last trial result, as Ray Tune recorded them;
- ideal = max(the longest trial, sum of GPU-seconds / GPUs): no schedule can be shorter;
- makespan / ideal (target <= 1.15; ``--check`` exits 1 when a stage misses it), GPU-slot
  utilization (GPU-seconds / (GPUs x makespan)), trials per hour, and the most trials that ran at
  once (the cluster's slots when the scheduler fills it; unlike the ratios, load does not move it).
The platform's own costs (Tune's loop, MLflow logging, trial start-up) run in real time and so
count ``time scale`` times over: the figures are upper bounds on what the plan's trials would see.
The last line is JSON with the keys search_makespan_over_ideal, final_makespan_over_ideal and
utilization (GPU-seconds of both stages over GPUs x both makespans).
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.local_ray import prepare_environment  # noqa: E402

prepare_environment()  # before Ray is imported

TARGET_OVER_IDEAL = 1.15  # every stage's makespan within 15 % of the shortest possible schedule
ARMS = ["fixed-uniform", "fixed-pabee", "fixed-last", "bilevel", "clo"]


def say(message: str) -> None:
    print(f"[cluster_sim] {message}", flush=True)


# ---------------------------------------------------------------------------- the simulated training
@dataclass(frozen=True)
class Plan:
    """Simulated seconds of one glue-bert trial on 2 A100s (docs/scaling.md, "Paper plan: 64 GPUs")."""

    fixed_epoch_s: float = 130.0    # 1,894 steps at 15 steps/s + validation
    outer_step_cost: float = 4.2    # a learned arm's epoch costs 1 + 4.2 / outer_every fixed epochs (1.42x at 10)
    startup_s: float = 35.0         # Ray Train worker group + NCCL, imports, model, SST-2 (of the plan's 60 s)
    finish_s: float = 25.0          # final evaluation with wall-clock timing, export, final report
    checkpoint_s: float = 6.5       # blocking upload of a 1.3 GB epoch checkpoint
    jitter: float = 0.05            # each trial's epochs are up to 5 % faster or slower, seeded

    def epoch_seconds(self, train: dict) -> float:
        learned = train.get("method", "fixed") != "fixed"
        cost = 1.0 + (self.outer_step_cost / int(train.get("outer_every", 10)) if learned else 0.0)
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
        try:
            from ray import tune

            return self.final_scale if tune.get_context().get_experiment_name().startswith("final") else self.search_scale
        except Exception:  # noqa: BLE001 - outside Tune
            return self.search_scale

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
        try:
            from trainers.results import RunResult, Summary
        except ImportError:  # the code before typed results (the baseline measurement) reads a dict
            return {**summary, "model_object": None}
        return RunResult(model=None, summary=Summary.from_dict(summary))


# ---------------------------------------------------------------------------- the cluster
def fake_gpu_cluster(nodes: int, gpus_per_node: int, cpus_per_node: int):
    """A ``ray.cluster_utils.Cluster`` whose nodes declare GPUs they do not have."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": cpus_per_node, "num_gpus": gpus_per_node,
                                                            "include_dashboard": False})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=cpus_per_node, num_gpus=gpus_per_node)
    cluster.wait_for_nodes()
    return cluster


# ---------------------------------------------------------------------------- the measurement
def train_values(config: dict) -> dict:
    """A trial's trainer options from its Tune config (read by this code's ``TrialSpec``, or the
    layout before the one-experiment sweeps: ``train`` plus the sampled values at the top)."""
    if "train" not in config:
        from sweeps.spec import TrialSpec

        train = TrialSpec.from_config(config).train
        return train if isinstance(train, dict) else train.to_dict()  # a dict before the typed TrialSpec
    return {**config["train"], **{k: v for k, v in config.items() if k not in ("train", "sweep", "trial_number")}}


def stage_figures(trials: list, plan: Plan, scale: float, gpus_per_trial: float, gpus: float) -> dict:
    rows = []
    for trial in trials:
        meta, last = trial.run_metadata, trial.last_result or {}
        epochs = int(last.get("epoch", 0) or 0)
        rows.append({"start": meta.start_time, "end": meta.last_result_time,
                     "busy": plan.trial_seconds(train_values(trial.config), epochs, last.get("final_report") is True)})
    rows = [r for r in rows if r["start"] and r["end"] and r["end"] > 0]
    if not rows:
        return {}
    overheads = sorted((r["end"] - r["start"]) * scale - r["busy"] for r in rows)
    # the most trials that ran at once: a property of the schedule that load does not change
    events = sorted([(r["start"], 1) for r in rows] + [(r["end"], -1) for r in rows], key=lambda e: (e[0], e[1]))
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    makespan = (max(r["end"] for r in rows) - min(r["start"] for r in rows)) * scale
    gpu_seconds = sum(r["busy"] for r in rows) * gpus_per_trial
    ideal = max(max(r["busy"] for r in rows), gpu_seconds / gpus)
    return {"trials": len(rows), "makespan_s": round(makespan, 1), "ideal_s": round(ideal, 1),
            "makespan_over_ideal": round(makespan / ideal, 3), "gpu_seconds": round(gpu_seconds, 1),
            "utilization": round(gpu_seconds / (gpus * makespan), 3),
            "trials_per_hour": round(3600 * len(rows) / makespan, 1), "peak_concurrent": peak,
            # the platform's time per trial (start-up, reports, result delivery), in simulated seconds
            "overhead_per_trial_s": round(overheads[len(overheads) // 2], 1)}


def measure(cfg, plan: Plan, scales: dict[str, float], gpus: float) -> dict:
    from ray.tune import ExperimentAnalysis

    stages: dict[str, list] = {"search": [], "final": []}
    for state in sorted(Path(cfg.storage_path).glob("*/experiment_state*.json")):
        stage = "final" if state.parent.name.startswith("final") else "search"
        stages[stage] += ExperimentAnalysis(str(state.parent)).trials
    per_trial = cfg.gpus_per_trial * cfg.workers_per_trial
    figures = {stage: stage_figures(trials, plan, scales[stage], per_trial, gpus) for stage, trials in stages.items()}
    epochs: dict[str, dict[int, int]] = {}  # arm -> {epochs a trial ran: trials}
    for trial in stages["search"]:
        arm, ran = arm_of(train_values(trial.config)), int((trial.last_result or {}).get("epoch", 0) or 0)
        epochs.setdefault(arm, {}).setdefault(ran, 0)
        epochs[arm][ran] += 1
    figures["search"]["epochs_by_arm"] = epochs
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="CI-sized: 2 nodes x 4 GPUs, 3 arms x 16 trials of 2 quarter-size epochs, 1 seed, time scale 25")
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--gpus-per-node", type=int, help="declared GPUs per node (default 32; --quick 4)")
    parser.add_argument("--gpus-per-trial", type=int, default=2)
    parser.add_argument("--arms", help="comma-separated arms (default: all five; --quick fixed-uniform,bilevel,clo)")
    parser.add_argument("--trials", type=int, help="trials per arm (default 96; --quick 16)")
    parser.add_argument("--epochs", type=int, help="epochs of a full trial (default: the preset's 4; --quick 2)")
    parser.add_argument("--epoch-seconds", type=float,
                        help="simulated seconds of a fixed-weight epoch (default: the plan's 130 s of SST-2; --quick 32.5, "
                             "a quarter of it, so that its trials are long against the platform's real start-up)")
    parser.add_argument("--seeds", type=int, help="final seeds per arm (default 3; --quick 1)")
    parser.add_argument("--time-scale", type=float, help="simulated seconds per real second (default 10; --quick 25)")
    parser.add_argument("--final-time-scale", type=float,
                        help="the final stage's (default: the time scale, at most 10; --quick 5: each final trial "
                             "starts a fresh process, whose real start-up must fit in the plan's start-up divided by "
                             "this scale, and a loaded 2-core CI machine takes more than 3.5 s to start one)")
    parser.add_argument("--max-concurrent", type=int, help="default: every slot of the cluster (GPUs / GPUs per trial)")
    parser.add_argument("--worse-arm", metavar="ARM", help="make this arm's metric curve uniformly worse (per-arm ASHA: "
                                                           "its best trials are still promoted within the arm)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--check", action="store_true",
                        help=f"exit 1 when a stage ends over {TARGET_OVER_IDEAL} x its ideal; run it on an idle machine: "
                             "the platform's real costs count time-scale times over, so load on the machine inflates "
                             "the ratios (the test suite runs --quick without it, beside other tests)")
    parser.add_argument("--work-dir", metavar="DIR", help="where the sweep writes (default: a temporary folder, deleted)")
    args = parser.parse_args()
    gpus_per_node = args.gpus_per_node or (4 if args.quick else 32)
    arms = args.arms.split(",") if args.arms else (["fixed-uniform", "bilevel", "clo"] if args.quick else ARMS)
    trials = args.trials or (16 if args.quick else 96)
    epochs = args.epochs or (2 if args.quick else None)
    seeds = args.seeds or (1 if args.quick else 3)
    scale = args.time_scale or (25.0 if args.quick else 10.0)
    final_scale = args.final_time_scale or (5.0 if args.quick else min(scale, 10.0))
    gpus = args.nodes * gpus_per_node
    slots = args.max_concurrent or gpus // args.gpus_per_trial
    plan = Plan(fixed_epoch_s=args.epoch_seconds or (Plan.fixed_epoch_s / 4 if args.quick else Plan.fixed_epoch_s))

    began = time.perf_counter()
    ray_tmp = tempfile.mkdtemp(prefix="lbsim-ray-", dir="/tmp")  # short: Ray's socket paths live under it
    os.environ["RAY_TMPDIR"] = ray_tmp  # the cluster's address file stays private
    work = Path(args.work_dir).resolve() if args.work_dir else Path(tempfile.mkdtemp(prefix="leebert-sim-"))
    say(f"SIMULATION (stand-in trainer, fake GPUs): {args.nodes} nodes x {gpus_per_node} declared GPUs, "
        f"{len(arms)} arms x {trials} trials of {args.gpus_per_trial} GPUs, {slots} at a time, {seeds} final seed(s), "
        f"time scale {scale:g}x (final stage {final_scale:g}x); load average {os.getloadavg()[0]:.2f}; work dir {work}")
    import ray

    from sweeps.config import SweepConfig
    from sweeps.presets import build_config
    from sweeps.state import start_config
    from sweeps.runner import run_sweep

    takes_trainer = "trainer" in inspect.signature(run_sweep).parameters
    if not takes_trainer:  # the code before the one-experiment sweeps: its trials pick the stand-in up themselves
        os.environ["LEEBERT_SIM_STANDIN"] = json.dumps({"time_scale": scale, "final_time_scale": final_scale,
                                                        "plan": asdict(plan)})  # (inherited by the nodes' workers)
    # the code before the rename of methods to arms (the baseline measurement) lists arms in `methods`
    arms_key = "arms" if "arms" in {f.name for f in SweepConfig.settings()} else "methods"
    cluster = fake_gpu_cluster(args.nodes, gpus_per_node, cpus_per_node=max(2, slots // args.nodes + 1))
    try:
        cfg = build_config(preset="glue-bert", overrides=[
            f"{arms_key}=[{','.join(arms)}]", f"trials={trials}", "budget_epochs=null", f"max_concurrent={slots}",
            "workers_per_trial=1", "cpus_per_trial=1", f"gpus_per_trial={args.gpus_per_trial}",
            f"final_seeds=[{','.join(str(s) for s in range(1, seeds + 1))}]", "register=false", "reuse_actors=true",
            "bootstrap=200", "train.wallclock_eval=false", *([f"train.epochs={epochs}"] if epochs else [])],
            flags={"name": "cluster-sim", "root": str(work), "ray_address": cluster.address,
                   "tracking_uri": f"sqlite:///{work / 'cluster-sim' / 'mlflow.db'}"})
        cfg = start_config(cfg)
        # by module, not __main__: the workers import it, and its per-process state is the module's
        from benchmarks.cluster_sim import StandInTrainer as ByModule

        trainer = ByModule(time_scale=scale, plan=plan, final_time_scale=final_scale, worse_arm=args.worse_arm)
        result = run_sweep(cfg, trainer=trainer) if takes_trainer else run_sweep(cfg)
        figures = measure(cfg, plan, {"search": scale, "final": final_scale}, gpus)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    figures["settings"] = {"nodes": args.nodes, "gpus_per_node": gpus_per_node, "gpus_per_trial": args.gpus_per_trial,
                           "arms": arms, "trials_per_arm": trials, "epochs": cfg.train_config(arms[0]).epochs,
                           "final_seeds": seeds, "max_concurrent": slots,
                           "time_scale": scale, "final_time_scale": final_scale, "worse_arm": args.worse_arm,
                           "plan": asdict(plan)}
    figures["took_s"] = round(time.perf_counter() - began, 1)
    figures["load_average_end"] = round(os.getloadavg()[0], 2)
    figures["completed_arms"] = [getattr(o, "arm", None) or o.method for o in result.outcomes if o.best is not None]
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(f"SIMULATION: stand-in trainer, fake GPUs; simulated seconds = real seconds x {scale:g} (final stage x "
          f"{final_scale:g}); durations from docs/scaling.md's 64-GPU plan")
    for stage in ("search", "final"):
        f = figures.get(stage) or {}
        if f:
            print(f"  {stage:6}  {f['trials']} trials: makespan {f['makespan_s'] / 3600:.2f} h, ideal {f['ideal_s'] / 3600:.2f} h, "
                  f"makespan / ideal {f['makespan_over_ideal']:.3f}, GPU utilization {100 * f['utilization']:.1f} %, "
                  f"{f['trials_per_hour']:.0f} trials/h, platform time per trial {f['overhead_per_trial_s']:.0f} s, "
                  f"at most {f['peak_concurrent']} trials at once")
    print(f"  took {figures['took_s']:.0f} s of real time; load average {figures['load_average_end']} at the end")
    search, final = figures.get("search") or {}, figures.get("final") or {}
    busy = (search.get("gpu_seconds", 0) + final.get("gpu_seconds", 0))
    span = (search.get("makespan_s", 0) + final.get("makespan_s", 0)) * gpus
    figures["utilization"] = round(busy / span, 3) if span else None
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    print(json.dumps({"search_makespan_over_ideal": search.get("makespan_over_ideal"),
                      "final_makespan_over_ideal": final.get("makespan_over_ideal"),
                      "utilization": figures["utilization"]}))
    missed = [f"{stage} {f['makespan_over_ideal']:.3f} x ideal" for stage, f in (("search", search), ("final", final))
              if f and f["makespan_over_ideal"] > TARGET_OVER_IDEAL]
    if args.check and missed:
        print(f"cluster_sim: target missed (<= {TARGET_OVER_IDEAL} x ideal): {', '.join(missed)}; load average "
              f"{figures['load_average_end']} at the end: rerun on an idle machine before reading it as the schedule's",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""SIMULATION: how well the sweep keeps a GPU cluster busy, with fake GPUs and a stand-in trainer.

    python benchmarks/cluster_sim.py              # glue-bert: 5 arms x 96 trials of 2 workers x 1 GPU, 12 seeds, 64 GPUs
    python benchmarks/cluster_sim.py --quick      # a CI-sized run (2 arms, 1 worker per trial, 4 seeds, 8 GPUs)
    python benchmarks/cluster_sim.py --json sim.json

- Real: ``sweeps.runner.run_sweep`` end to end on a ``ray.cluster_utils.Cluster`` of two nodes
  that each *declare* GPUs (32 each by default; nothing runs on them): every arm's Optuna searcher,
  budget and ASHA scheduler, every trial a Ray Train group of ``--workers-per-trial`` workers (2, as
  the plan; gloo, as the stand-in touches no GPU), Tune's storage and checkpoints, MLflow (sqlite),
  the final stage and its comparison (paired bootstrap, on synthetic test results).
- Simulated: the training. ``StandInTrainer`` replaces ``trainers.train.run`` (``run_sweep(trainer=...)``):
  it sleeps the 64-GPU plan's durations of docs/scaling.md (``Plan``; a learned epoch costs the
  outer-step cost the sweep charges, sweeps/budget.py) divided by ``--time-scale``, and reports a
  seeded metric curve (one arm can be made uniformly worse).

Figures per stage, in simulated seconds (real seconds x time scale): makespan (first trial start
to last result, as Tune recorded them); ideal = max(the longest trial, plan GPU-seconds / GPUs);
makespan / ideal; slot occupancy (the GPU-seconds trials held, each trial's recorded span x its
GPUs, over GPUs x makespan) and its busy share (the part the plan spends training epochs, not
starting, checkpointing or evaluating); trials per hour; the most trials that ran at once (load
does not move it). The whole sweep adds the driver's work between the stages and after the final
trainings at its real duration. Targets (``--check`` exits 1 on a miss; run it on an idle
machine): every stage and the whole sweep <= 1.15 x ideal, final-stage occupancy >= 80 %. The
platform's costs (Tune, MLflow, start-up) run in real time and count ``time scale`` times over:
the figures are upper bounds. The last line is JSON: search_makespan_over_ideal,
final_makespan_over_ideal, sweep_over_ideal, utilization (plan GPU-seconds / (GPUs x the whole
sweep)), search_occupancy, final_occupancy, busy_share (of both stages' occupancy).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.local_ray import prepare_environment  # noqa: E402
# by module, not __main__: the trials import the stand-in, and its per-process state is the module's
from benchmarks.stand_in import Plan, StandInTrainer, arm_of  # noqa: E402,F401 - Plan, StandInTrainer re-exported

prepare_environment()  # before Ray is imported

TARGET_OVER_IDEAL = 1.15  # every stage's makespan (and the whole sweep) within 15 % of the shortest possible schedule
TARGET_FINAL_OCCUPANCY = 0.80  # the final stage's trainings hold at least 80 % of the cluster's GPU time
ARMS = ["fixed-uniform", "fixed-pabee", "fixed-last", "bilevel", "clo"]


def say(message: str) -> None:
    print(f"[cluster_sim] {message}", flush=True)


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
    """A trial's trainer options from its Tune config."""
    from sweeps.spec import TrialSpec

    return TrialSpec.from_config(config).train.to_dict()


def stage_figures(trials: list, plan: Plan, scale: float, gpus_per_trial: float, gpus: float) -> dict:
    rows = []
    for trial in trials:
        meta, last = trial.run_metadata, trial.last_result or {}
        train, epochs = train_values(trial.config), int(last.get("epoch", 0) or 0)
        rows.append({"start": meta.start_time, "end": meta.last_result_time, "training": epochs * plan.epoch_seconds(train),
                     "busy": plan.trial_seconds(train, epochs, last.get("final_report") is True)})
    rows = [r for r in rows if r["start"] and r["end"] and r["end"] > 0]
    if not rows:
        return {}
    overheads = sorted((r["end"] - r["start"]) * scale - r["busy"] for r in rows)
    held = sum((r["end"] - r["start"]) * scale for r in rows) * gpus_per_trial  # GPU-seconds some trial held
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
            "occupancy": round(held / (gpus * makespan), 3), "held_gpu_seconds": round(held, 1),
            # of the held GPU time, what the plan spends training epochs (not starting, checkpointing, evaluating)
            "busy_share": round(sum(r["training"] for r in rows) * gpus_per_trial / held, 3),
            "trials_per_hour": round(3600 * len(rows) / makespan, 1), "peak_concurrent": peak,
            # the platform's time per trial (start-up, reports, result delivery), in simulated seconds
            "overhead_per_trial_s": round(overheads[len(overheads) // 2], 1),
            "first_start": min(r["start"] for r in rows), "last_end": max(r["end"] for r in rows)}


def whole_sweep(search: dict, final: dict, sweep_end: float, gpus: float) -> dict:
    """The sweep from its first trial to its end: both makespans (simulated) plus the driver's work
    between the stages (finishing the arms, the report, starting the final stage) and after the
    final trainings (the timing phase, the comparison), counted at its real duration: the driver's
    work does not shrink with the time scale. Its ideal is the stages' ideals summed."""
    between = max(0.0, final["first_start"] - search["last_end"]) if final else 0.0
    after = max(0.0, sweep_end - (final or search)["last_end"])
    total = search["makespan_s"] + final.get("makespan_s", 0) + between + after
    ideal = search["ideal_s"] + final.get("ideal_s", 0)
    held = search["held_gpu_seconds"] + final.get("held_gpu_seconds", 0)
    training = sum(f["busy_share"] * f["held_gpu_seconds"] for f in (search, final) if f)
    return {"total_s": round(total, 1), "ideal_s": round(ideal, 1), "total_over_ideal": round(total / ideal, 3),
            "driver_between_stages_s": round(between, 1), "driver_after_final_s": round(after, 1),
            "utilization": round((search["gpu_seconds"] + final.get("gpu_seconds", 0)) / (gpus * total), 3),
            "busy_share": round(training / held, 3)}


def measure(cfg, plan: Plan, scales: dict[str, float], gpus: float) -> dict:
    from ray.tune import ExperimentAnalysis

    stages: dict[str, list] = {"search": [], "final": []}
    for state in sorted(Path(cfg.storage_path).glob("*/experiment_state*.json")):
        stage = "final" if state.parent.name.startswith("final") else "search"
        stages[stage] += ExperimentAnalysis(str(state.parent)).trials
    per_trial = cfg.gpus_per_trial * cfg.workers_per_trial  # GPUs per worker x workers
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
                        help="CI-sized: 2 nodes x 4 GPUs, 2 arms (fixed-uniform, clo) x 16 trials of 2 quarter-size "
                             "epochs, 1 worker per trial, 4 seeds, time scale 25 (the final stage's 5)")
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--gpus-per-node", type=int, help="declared GPUs per node (default 32; --quick 4)")
    parser.add_argument("--gpus-per-trial", type=int, default=2, help="GPUs per trial, split over its workers (default 2)")
    parser.add_argument("--workers-per-trial", type=int,
                        help="data-parallel workers per trial (default 2: a Ray Train group per trial, as the plan; "
                             "--quick 1: a group costs ~1.6 GB of processes and seconds of real start-up, which the "
                             "time scale multiplies, on a 2-core CI machine)")
    parser.add_argument("--arms", help="comma-separated arms (default: all five; --quick fixed-uniform,clo)")
    parser.add_argument("--trials", type=int, help="trials per arm (default 96; --quick 16)")
    parser.add_argument("--epochs", type=int, help="epochs of a full trial (default: the preset's 4; --quick 2)")
    parser.add_argument("--epoch-seconds", type=float,
                        help="simulated seconds of a fixed-weight epoch (default: the plan's 130 s of SST-2; --quick 32.5, "
                             "a quarter of it, so that its trials are long against the platform's real start-up)")
    parser.add_argument("--seeds", type=int,
                        help="final seeds per arm (default: --final-rounds x slots // arms: 12 for the plan, 4 for --quick)")
    parser.add_argument("--final-rounds", type=int,
                        help="the final stage's trainings in rounds of the cluster's slots (default 2): in "
                             "two rounds the slots that shorter (fixed-weight) trainings free take the rest, so the "
                             "learned arms' longer trainings leave little idle (docs/scaling.md)")
    parser.add_argument("--time-scale", type=float, help="simulated seconds per real second (default 5: the driver's real latency between trials, "
                             "on 2 cores shared with 32 trial processes, counts this many times over; --quick 25)")
    parser.add_argument("--final-time-scale", type=float,
                        help="the final stage's (default: the time scale, at most 10; --quick 5: each final trial "
                             "starts a fresh process, whose real start-up must fit in the plan's start-up divided by "
                             "this scale, and a loaded 2-core CI machine takes more than 3.5 s to start one)")
    parser.add_argument("--max-concurrent", type=int, help="default: every slot of the cluster (GPUs / GPUs per trial)")
    parser.add_argument("--worse-arm", metavar="ARM", help="make this arm's metric curve uniformly worse (per-arm ASHA: "
                                                           "its best trials are still promoted within the arm)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--check", action="store_true",
                        help=f"exit 1 when a stage or the whole sweep ends over {TARGET_OVER_IDEAL} x its ideal, or the "
                             f"final stage holds under {100 * TARGET_FINAL_OCCUPANCY:.0f} %% of the GPU time; run it on an idle "
                             "machine: the platform's real costs count time-scale times over, so load on the machine "
                             "inflates the ratios (the test suite runs --quick without it, beside other tests)")
    parser.add_argument("--work-dir", metavar="DIR", help="where the sweep writes (default: a temporary folder, deleted)")
    args = parser.parse_args()
    gpus_per_node = args.gpus_per_node or (4 if args.quick else 32)
    arms = args.arms.split(",") if args.arms else (["fixed-uniform", "clo"] if args.quick else ARMS)
    trials = args.trials or (16 if args.quick else 96)
    epochs = args.epochs or (2 if args.quick else None)
    scale = args.time_scale or (25.0 if args.quick else 5.0)
    final_scale = args.final_time_scale or (5.0 if args.quick else min(scale, 10.0))
    workers = args.workers_per_trial or (1 if args.quick else 2)
    gpus = args.nodes * gpus_per_node
    slots = args.max_concurrent or gpus // args.gpus_per_trial
    rounds = args.final_rounds or 2
    seeds = args.seeds or max(1, rounds * slots // len(arms))  # the final stage fills the slots (docs/scaling.md)

    began = time.perf_counter()
    ray_tmp = tempfile.mkdtemp(prefix="lbsim-ray-", dir="/tmp")  # short: Ray's socket paths live under it
    os.environ["RAY_TMPDIR"] = ray_tmp  # the cluster's address file stays private
    work = Path(args.work_dir).resolve() if args.work_dir else Path(tempfile.mkdtemp(prefix="leebert-sim-"))
    say(f"SIMULATION (stand-in trainer, fake GPUs): {args.nodes} nodes x {gpus_per_node} declared GPUs, {len(arms)} arms "
        f"x {trials} trials of {args.gpus_per_trial} GPUs ({workers} worker(s)), {slots} at a time, {seeds} final seed(s), "
        f"time scale {scale:g}x (final stage {final_scale:g}x); load average {os.getloadavg()[0]:.2f}; work dir {work}")
    import ray

    from sweeps.presets import build_config
    from sweeps.state import start_config
    from sweeps.runner import run_sweep

    # a trial of N workers holds N CPUs (one per worker) on its node: every slot's workers fit, plus one spare
    cluster = fake_gpu_cluster(args.nodes, gpus_per_node,
                               cpus_per_node=max(2, -(-slots // args.nodes) * workers + 1))
    try:
        cfg = build_config(preset="glue-bert", overrides=[
            f"arms=[{','.join(arms)}]", f"trials={trials}", "budget_epochs=null", f"max_concurrent={slots}",
            f"workers_per_trial={workers}", "cpus_per_trial=1", f"gpus_per_trial={args.gpus_per_trial / workers:g}",
            f"final_seeds=[{','.join(str(s) for s in range(1, seeds + 1))}]", "register=false", "reuse_actors=true",
            "bootstrap=200", "train.wallclock_eval=false", *([f"train.epochs={epochs}"] if epochs else [])],
            flags={"name": "cluster-sim", "root": str(work), "ray_address": cluster.address,
                   "tracking_uri": f"sqlite:///{work / 'cluster-sim' / 'mlflow.db'}"})
        cfg = start_config(cfg)
        # a learned epoch costs what the sweep charges for it (sweeps/budget.py, the trials' device and precision)
        plan = Plan(fixed_epoch_s=args.epoch_seconds or (Plan.fixed_epoch_s / 4 if args.quick else Plan.fixed_epoch_s),
                    outer_step_costs=tuple((arm, cfg.arm_outer_step_cost(arm)) for arm in arms
                                           if cfg.train_config(arm).method != "fixed"))
        trainer = StandInTrainer(time_scale=scale, plan=plan, final_time_scale=final_scale, worse_arm=args.worse_arm)
        result = run_sweep(cfg, trainer=trainer)
        sweep_end = time.time()
        figures = measure(cfg, plan, {"search": scale, "final": final_scale}, gpus)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    figures["settings"] = {"nodes": args.nodes, "gpus_per_node": gpus_per_node, "gpus_per_trial": args.gpus_per_trial,
                           "workers_per_trial": workers, "arms": arms, "trials_per_arm": trials,
                           "epochs": cfg.train_config(arms[0]).epochs, "final_seeds": seeds, "max_concurrent": slots,
                           "time_scale": scale, "final_time_scale": final_scale, "worse_arm": args.worse_arm,
                           "plan": asdict(plan)}
    figures["took_s"] = round(time.perf_counter() - began, 1)
    figures["load_average_end"] = round(os.getloadavg()[0], 2)
    figures["completed_arms"] = [o.arm for o in result.outcomes if o.best is not None]
    search, final = figures.get("search") or {}, figures.get("final") or {}
    whole = figures["sweep"] = whole_sweep(search, final, sweep_end, gpus)
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(f"SIMULATION: stand-in trainer, fake GPUs; simulated seconds = real seconds x {scale:g} (final stage x "
          f"{final_scale:g}); durations from docs/scaling.md's 64-GPU plan")
    for stage, f in (("search", search), ("final", final)):
        if f:
            print(f"  {stage:6}  {f['trials']} trials: makespan {f['makespan_s'] / 3600:.2f} h, ideal {f['ideal_s'] / 3600:.2f} h, "
                  f"makespan / ideal {f['makespan_over_ideal']:.3f}, slot occupancy {100 * f['occupancy']:.1f} % (busy "
                  f"share {100 * f['busy_share']:.1f} %), {f['trials_per_hour']:.0f} trials/h, platform time per trial "
                  f"{f['overhead_per_trial_s']:.0f} s, at most {f['peak_concurrent']} trials at once")
    print(f"  sweep   {whole['total_s'] / 3600:.2f} h with the driver's {whole['driver_between_stages_s']:.0f} s between the "
          f"stages and {whole['driver_after_final_s']:.0f} s after the final trainings (real seconds), ideal "
          f"{whole['ideal_s'] / 3600:.2f} h, sweep / ideal {whole['total_over_ideal']:.3f}, utilization "
          f"{100 * whole['utilization']:.1f} %")
    print(f"  took {figures['took_s']:.0f} s of real time; load average {figures['load_average_end']} at the end")
    figures["utilization"] = whole["utilization"]
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    print(json.dumps({"search_makespan_over_ideal": search.get("makespan_over_ideal"),
                      "final_makespan_over_ideal": final.get("makespan_over_ideal"),
                      "sweep_over_ideal": whole["total_over_ideal"], "utilization": whole["utilization"],
                      "search_occupancy": search.get("occupancy"), "final_occupancy": final.get("occupancy"),
                      "busy_share": whole["busy_share"]}))
    missed = [f"{stage} {f['makespan_over_ideal']:.3f} x ideal" for stage, f in (("search", search), ("final", final))
              if f and f["makespan_over_ideal"] > TARGET_OVER_IDEAL]
    missed += [f"whole sweep {whole['total_over_ideal']:.3f} x ideal"] if whole["total_over_ideal"] > TARGET_OVER_IDEAL else []
    if final and final["occupancy"] < TARGET_FINAL_OCCUPANCY:
        missed.append(f"final-stage slot occupancy {100 * final['occupancy']:.1f} % (target >= "
                      f"{TARGET_FINAL_OCCUPANCY:.0%})")
    if args.check and missed:
        print(f"cluster_sim: target missed (<= {TARGET_OVER_IDEAL} x ideal, final occupancy >= {TARGET_FINAL_OCCUPANCY:.0%}): "
              f"{', '.join(missed)}; load average {figures['load_average_end']} at the end: rerun on an idle machine "
              "before reading it as the schedule's", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the sweep platform costs and how it scales, measured side by side in one run.

    python benchmarks/scaling.py                      # the full measurement (about 15 min on 2 idle cores)
    python benchmarks/scaling.py --quick              # a validation run (a few minutes): tiny settings
    python benchmarks/scaling.py --json scaling.json  # also write every figure as JSON

1. Sweep throughput, one node against two. The same smoke-sized sweep (the `smoke` preset: a
   3-layer random BERT on 512 MR sentences, 3 epochs; arm fixed, --trials trials, 2 at a time,
   1 CPU each, no ASHA, no model registration) runs through the library (`sweeps.runner.run_sweep`)
   against two local Ray clusters with the same 2 CPUs in all (`ray.cluster_utils.Cluster`):
     A  one node:  a head of 2 CPUs
     B  two nodes: a head of 1 CPU + one added node of 1 CPU
   Reported: trials per hour from the wall time around run_sweep (join, MLflow store, search,
   logging, report) and from the trials themselves (first trial start to last final result, as
   Ray Tune recorded them), the ratio B / A of both, how busy the 2 trial slots were (sum of the
   trainers' wall times / (2 x run_sweep wall)), and what the trials left in the Tune storage:
   the kept model checkpoint, and any trainer state that Tune's experiment-state sync copied
   there (expected 0 MB and 0 "Saving experiment state ... failed" errors: the trainer works in a
   node-local folder outside Ray's trial folder, which Tune syncs while it runs; an earlier
   version copied every DeepSpeed checkpoint that way). --repeats 2 runs A B B A.

2. The platform's overhead per trial: for every trial, Ray Tune's wall time from the trial's
   start (its actor started) to its final result reaching the driver, against the trainer's own
   wall time (`train_wall_time_s`, the trainer's summary `wall_time_s`, which runs from the start
   of `trainers.train.run` to its summary and so includes the per-epoch reports). Overhead =
   (trial wall - trainer wall) / trial wall: importing torch/DeepSpeed in the trial process,
   exporting the model, the final report with its checkpoint, result delivery. Median and max
   for the smoke trials of A and B and for demo-sized trials (the `demo` preset: the embedded
   MiniLM on 800 MR sentences, 2 epochs; --demo-trials, 0 skips them). Target: <= 5 % on
   demo-sized trials.

3. What per-epoch checkpoints cost: the same trainer config (demo-sized; smoke-sized with
   --quick) trained by `trainers.train.run` with save_checkpoints False and True, one after the
   other in this process. Reported: the wall-time difference per epoch, the time inside the
   DeepSpeed checkpoint writes themselves (timed around `trainers.engine.save_checkpoint`), the
   time to copy one epoch checkpoint to another local folder (what Ray Tune's persist does with a
   local storage path), and the checkpoint's size on disk.

Each sweep gets its own sqlite MLflow store, passed explicitly: `mlflow.set_tracking_uri` (called
by a sweep's Tracker) exports $MLFLOW_TRACKING_URI, which a later `build_config` in the same
process would otherwise take as its store.

The Ray clusters live in a private temporary folder ($RAY_TMPDIR), so their
`ray_current_cluster` address file never makes another process's plain `ray.init()` join them,
and /tmp/ray/ray_current_cluster (another user's) is left as it was; the script checks that.
The machine's load average is printed at the start and the end: on a shared machine the figures
are only as steady as the load.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform as std_platform
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.local_ray import prepare_environment  # noqa: E402
from benchmarks.scaling_checkpoints import checkpoint_cost  # noqa: E402
from benchmarks.scaling_report import report, say  # noqa: E402

prepare_environment()  # before Ray is imported

DEFAULT_ADDRESS_FILE = Path("/tmp/ray/ray_current_cluster")
SETUPS = {"A": ("1 node", [2]), "B": ("2 nodes", [1, 1])}  # CPUs of the head, then of each added node


# ---------------------------------------------------------------------------- Ray clusters
def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


@contextmanager
def local_cluster(node_cpus: list[int]):
    """A ``ray.cluster_utils.Cluster`` with a head of ``node_cpus[0]`` CPUs and one node per further
    entry; shut down cleanly however the block ends."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": node_cpus[0], "include_dashboard": False})
    try:
        for cpus in node_cpus[1:]:
            cluster.add_node(num_cpus=cpus)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        if ray.is_initialized():  # run_sweep shuts its connection down itself; not after an error before it
            ray.shutdown()
        cluster.shutdown()  # removes every node and the cluster's address file (in $RAY_TMPDIR)


class _ErrorCounter(logging.Handler):
    """Counts Ray Tune's "Saving experiment state to storage ... failed" errors during a sweep."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def _mb(paths) -> float:
    return sum(f.stat().st_size for p in paths for f in Path(p).rglob("*") if f.is_file()) / 1e6


def warm_imports() -> None:
    """Import what a sweep's driver imports (Ray Tune, Optuna, MLflow, matplotlib) before anything
    is timed, so that the first setup does not pay for it alone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401
    import mlflow  # noqa: F401
    import optuna  # noqa: F401
    import ray.tune  # noqa: F401
    import ray.tune.search.optuna  # noqa: F401

    import sweeps.plots  # noqa: F401
    import sweeps.report  # noqa: F401
    import sweeps.runner  # noqa: F401


def sweep_on_cluster(preset: str, node_cpus: list[int], trials: int, root: Path, name: str) -> dict:
    """One sweep through the library against a fresh local cluster; its wall time and per-trial timings."""
    from sweeps.presets import build_config
    from sweeps.state import start_config
    from sweeps.runner import run_sweep

    counter = _ErrorCounter()
    state_logger = logging.getLogger("ray.tune.execution.experiment_state")
    state_logger.addHandler(counter)
    try:
        with local_cluster(node_cpus) as cluster:
            # An explicit store per sweep: mlflow.set_tracking_uri (called by the previous sweep's
            # Tracker) exports $MLFLOW_TRACKING_URI, which build_config would otherwise inherit.
            tracking = f"sqlite:///{(root / name / 'mlflow.db').resolve()}"
            cfg = build_config(preset=preset, overrides=[
                "arms=[fixed]", f"trials={trials}", "max_concurrent=2", "cpus_per_trial=1", "scheduler=none",
                "register=false"], flags={"name": name, "root": str(root), "ray_address": cluster.address,
                                          "tracking_uri": tracking})
            cfg = start_config(cfg)
            start = time.perf_counter()
            result = run_sweep(cfg)
            wall = time.perf_counter() - start
    finally:
        state_logger.removeHandler(counter)
    rows = trial_timings(cfg, result)
    trainer_total = sum(r["trainer_wall_s"] or 0 for r in rows)
    trial_dirs = [p for p in Path(cfg.storage_path, "fixed").glob("fixed_*") if p.is_dir()]
    return {"preset": preset, "nodes": len(node_cpus), "node_cpus": node_cpus, "trials": trials,
            "run_sweep_wall_s": round(wall, 2),
            # the trials' share of the sweep's 2 trial slots: sum of trainer walls / (2 x run_sweep wall)
            "slot_utilisation": round(trainer_total / (cfg.max_concurrent * wall), 4),
            # keep_checkpoints: best leaves one model checkpoint per arm: its size
            "storage_model_checkpoint_mb": round(max((_mb(p.glob("checkpoint_*")) for p in trial_dirs), default=0), 1),
            "storage_trainer_state_mb_per_trial": round(_mb(p / "train" for p in trial_dirs) / max(1, len(trial_dirs)), 1),
            "experiment_state_sync_errors": counter.count,
            "trials_table": rows, **span(rows)}


def trial_timings(cfg, result) -> list[dict]:
    """Per trial: start (actor started), end (final result received by the driver), Tune's
    time_total_s and the trainer's wall time. Precise times come from Tune's saved trial state;
    the records (1-second result timestamps) are the fallback."""
    from ray.tune import ExperimentAnalysis

    records = {r.trial_id: r for outcome in result.outcomes for r in outcome.records}
    precise = {}
    try:
        for trial in ExperimentAnalysis(f"{cfg.storage_path}/fixed").trials:
            meta = trial.run_metadata
            precise[trial.trial_id] = (meta.start_time, meta.last_result_time, trial.last_result or {})
    except Exception as err:  # noqa: BLE001 - the records still give 1-second figures
        say(f"warning: Tune's trial state unreadable ({type(err).__name__}: {err}); using 1-second timestamps")
    rows = []
    for trial_id, record in sorted(records.items(), key=lambda item: item[1].number):
        start, end, last = precise.get(trial_id, (None, None, {}))
        final = record.epochs[-1] if record.epochs else {}
        last = last or final
        start = start if start else (record.start_ms / 1000 if record.start_ms else None)
        if not end or end == float("-inf"):
            end = record.end_ms / 1000 if record.end_ms else None
        trainer = last.get("train_wall_time_s") or (record.summary.wall_time_s if record.summary else None)
        row = {"trial": record.number, "trial_id": trial_id, "status": record.status, "start": start, "end": end,
               "trial_wall_s": round(end - start, 2) if start and end else None,
               "tune_time_total_s": round(float(last["time_total_s"]), 2) if "time_total_s" in last else None,
               "trainer_wall_s": trainer}
        for key, wall in (("overhead", row["trial_wall_s"]), ("overhead_tune", row["tune_time_total_s"])):
            row[key] = round((wall - trainer) / wall, 4) if wall and trainer else None
        rows.append(row)
    return rows


def span(rows: list[dict]) -> dict:
    starts = [r["start"] for r in rows if r["start"]]
    ends = [r["end"] for r in rows if r["end"]]
    return {"trials_span_s": round(max(ends) - min(starts), 2) if starts and ends else None,
            "completed": sum(r["status"] == "completed" for r in rows)}


def per_hour(trials: int, seconds: float | None) -> float | None:
    return round(3600 * trials / seconds, 1) if seconds else None


def _median(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 3) if values else None


def summarize_setup(key: str, runs: list[dict]) -> dict:
    """One setup's figures: medians over its runs (one per --repeats)."""
    for run in runs:
        run["trials_per_hour_run_sweep"] = per_hour(run["trials"], run["run_sweep_wall_s"])
        run["trials_per_hour_span"] = per_hour(run["trials"], run["trials_span_s"])
    label, node_cpus = SETUPS[key]
    out = {"label": label, "node_cpus": node_cpus, "trials": runs[0]["trials"], "repeats": len(runs),
           "completed": sum(r["completed"] for r in runs), "runs": runs}
    for field in ("run_sweep_wall_s", "trials_span_s", "trials_per_hour_run_sweep", "trials_per_hour_span",
                  "slot_utilisation", "storage_model_checkpoint_mb", "storage_trainer_state_mb_per_trial"):
        out[field] = _median(r[field] for r in runs)
    out["experiment_state_sync_errors"] = sum(r["experiment_state_sync_errors"] for r in runs)
    return out


def overhead_stats(rows: list[dict]) -> dict:
    out = {"trials": len(rows)}
    for key in ("overhead", "overhead_tune"):
        values = [r[key] for r in rows if r.get(key) is not None]
        out[f"{key}_median"] = round(statistics.median(values), 4) if values else None
        out[f"{key}_max"] = round(max(values), 4) if values else None
    for key in ("trial_wall_s", "trainer_wall_s"):
        values = [r[key] for r in rows if r.get(key) is not None]
        out[f"{key}_median"] = round(statistics.median(values), 2) if values else None
    return out


# ---------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="a fast validation run: 2 trials per setup, no demo-sized trials, the checkpoint cost "
                             "on the smoke-sized model (explicit flags still win)")
    parser.add_argument("--trials", type=int, default=None, help="smoke-sized trials per setup (default 6; --quick 2)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="sweeps per setup, in the order A B, B A, A B, ...; figures are medians (default 1; "
                             "2 cancels a drift in the machine's load or warm caches)")
    parser.add_argument("--demo-trials", type=int, default=None,
                        help="demo-sized trials for the overhead figure, 2 at a time on one 2-CPU node "
                             "(default 2; --quick 0; 0 skips them)")
    parser.add_argument("--checkpoint-preset", choices=("demo", "smoke", "none"), default=None,
                        help="trainer config of the checkpoint-cost measurement (default demo; --quick smoke; none skips it)")
    parser.add_argument("--checkpoint-repeats", type=int, default=1,
                        help="trainings per setting for the checkpoint cost; they alternate off/on, on/off, ... (default 1)")
    parser.add_argument("--json", metavar="PATH", help="also write every figure (and the per-trial rows) as JSON")
    parser.add_argument("--work-dir", metavar="DIR",
                        help="where the sweeps and trainings write (default: a temporary folder, deleted at the end)")
    args = parser.parse_args()
    trials = args.trials if args.trials is not None else (2 if args.quick else 6)
    demo_trials = args.demo_trials if args.demo_trials is not None else (0 if args.quick else 2)
    ckpt_preset = args.checkpoint_preset or ("smoke" if args.quick else "demo")
    if trials < 1 or demo_trials < 0 or args.checkpoint_repeats < 1 or args.repeats < 1:
        parser.error("--trials, --repeats and --checkpoint-repeats must be >= 1, --demo-trials >= 0")

    began = time.perf_counter()
    address_file_before = _read(DEFAULT_ADDRESS_FILE)
    ray_tmp = tempfile.mkdtemp(prefix="lbs-ray-", dir="/tmp")  # short: Ray's socket paths live under it
    os.environ["RAY_TMPDIR"] = ray_tmp
    work = Path(args.work_dir).resolve() if args.work_dir else Path(tempfile.mkdtemp(prefix="leebert-scaling-"))
    work.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    import torch

    figures: dict = {"machine": {"cpus": os.cpu_count(), "processor": std_platform.processor() or std_platform.machine(),
                                 "torch": torch.__version__, "load_start": [round(x, 2) for x in os.getloadavg()]},
                     "settings": {"trials": trials, "repeats": args.repeats, "demo_trials": demo_trials, "checkpoint_preset": ckpt_preset,
                                  "checkpoint_repeats": args.checkpoint_repeats, "quick": args.quick}}
    say(f"{os.cpu_count()} CPUs, load average {figures['machine']['load_start']}; work dir {work}; Ray temp dir {ray_tmp}")
    try:
        warm_imports()
        runs: dict[str, list[dict]] = {key: [] for key in SETUPS}
        for rep in range(args.repeats):
            for key in (SETUPS if rep % 2 == 0 else reversed(SETUPS)):  # A B, then B A, ...
                label, node_cpus = SETUPS[key]
                say(f"setup {key} ({label}, CPUs {node_cpus}), run {rep + 1}/{args.repeats}: {trials} smoke-sized trials")
                runs[key].append(sweep_on_cluster("smoke", node_cpus, trials, work / "sweeps",
                                                  f"scaling-{key}{rep + 1}-{stamp}"))
        sweeps = {key: summarize_setup(key, runs[key]) for key in SETUPS}
        ratio = lambda k: (round(sweeps["B"][k] / sweeps["A"][k], 3)  # noqa: E731
                           if sweeps["A"].get(k) and sweeps["B"].get(k) else None)
        figures["throughput"] = {**sweeps, "ratio_B_over_A_run_sweep": ratio("trials_per_hour_run_sweep"),
                                 "ratio_B_over_A_span": ratio("trials_per_hour_span")}
        figures["overhead"] = {
            "smoke, A (1 node)": overhead_stats([r for run in runs["A"] for r in run["trials_table"]]),
            "smoke, B (2 nodes)": overhead_stats([r for run in runs["B"] for r in run["trials_table"]]),
            "demo-sized": None}
        if demo_trials:
            say(f"demo-sized trials: {demo_trials} on one 2-CPU node")
            demo = sweep_on_cluster("demo", [2], demo_trials, work / "sweeps", f"scaling-demo-{stamp}")
            figures["overhead"]["demo-sized"] = overhead_stats(demo["trials_table"])
            figures["demo_sweep"] = demo
        figures["checkpoint"] = None if ckpt_preset == "none" else checkpoint_cost(
            ckpt_preset, work / "checkpoint", args.checkpoint_repeats)
    finally:
        private_left = os.path.exists(os.path.join(ray_tmp, "ray_current_cluster"))
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    figures["address_file"] = {"path": str(DEFAULT_ADDRESS_FILE),
                               "unchanged": address_file_before == _read(DEFAULT_ADDRESS_FILE),
                               "private_left": private_left}
    figures["machine"]["load_end"] = [round(x, 2) for x in os.getloadavg()]
    figures["took_s"] = round(time.perf_counter() - began, 1)
    print()
    print(report(figures, SETUPS))
    print(f"  {DEFAULT_ADDRESS_FILE}: {'unchanged' if figures['address_file']['unchanged'] else 'CHANGED by another process'}"
          f"; the benchmark's own address file {'was LEFT behind' if figures['address_file']['private_left'] else 'is gone'}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, default=str))
        print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()

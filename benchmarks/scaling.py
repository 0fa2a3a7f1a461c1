"""What the sweep platform costs and how it scales, measured side by side in one run.

    python benchmarks/scaling.py                      # the full measurement (about 15 min on 2 idle cores)
    python benchmarks/scaling.py --quick              # a validation run (a few minutes): tiny settings
    python benchmarks/scaling.py --json scaling.json  # also write every figure as JSON

1. Sweep throughput, one node against two. The same smoke-sized sweep (the `smoke` preset: a
   3-layer random BERT on 512 MR sentences, 3 epochs; method fixed, --trials trials, 2 at a time,
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

prepare_environment()  # before Ray is imported

DEFAULT_ADDRESS_FILE = Path("/tmp/ray/ray_current_cluster")
SETUPS = {"A": ("1 node", [2]), "B": ("2 nodes", [1, 1])}  # CPUs of the head, then of each added node


def say(message: str) -> None:
    print(f"[scaling] {message}", flush=True)


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
                "methods=[fixed]", f"trials={trials}", "max_concurrent=2", "cpus_per_trial=1", "scheduler=none",
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
            # keep_checkpoints: best leaves one model checkpoint per method: its size
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


# ---------------------------------------------------------------------------- checkpoints
def checkpoint_cost(preset: str, work: Path, repeats: int) -> dict:
    """``trainers.train.run`` with save_checkpoints False and True on the same config, taking turns."""
    import trainers.engine as engine
    from sweeps.presets import build_config
    from trainers.config import TrainConfig
    from trainers.train import run

    base = build_config(preset=preset).train_config("fixed").to_dict()
    base.update(threads=1, resume=False)  # as a sweep trial with cpus_per_trial 1
    saves: list[float] = []
    original = engine.save_checkpoint

    def timed_save(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            saves.append(time.perf_counter() - start)

    walls: dict[bool, list[float]] = {False: [], True: []}
    order = [flag for i in range(repeats) for flag in ((False, True) if i % 2 == 0 else (True, False))]
    size_mb = copy_s = None
    # Untimed warm-up: the first training in a process pays one-off costs (DeepSpeed's process
    # group and communication op, lazy imports, cold file caches) that would land on one setting.
    warm = TrainConfig.from_dict({**base, "output_dir": str(work / "warm-up"), "save_checkpoints": False, "epochs": 1,
                                  "train_subset": 2 * int(base["batch_size"]), "eval_subset": 64})
    say(f"checkpoint cost: untimed warm-up training ({warm.model}, 1 epoch of 2 steps)")
    run(warm, quiet=True)
    engine.save_checkpoint = timed_save
    try:
        for index, save in enumerate(order):
            out = work / f"ckpt-{index}-{'on' if save else 'off'}"
            cfg = TrainConfig.from_dict({**base, "output_dir": str(out), "save_checkpoints": save})
            say(f"checkpoint cost: training {preset}-sized ({cfg.model}, {cfg.epochs} epochs) with "
                f"save_checkpoints={save} ({index + 1}/{len(order)})")
            start = time.perf_counter()
            run(cfg, quiet=True)
            walls[save].append(time.perf_counter() - start)
            if save and size_mb is None:
                last = out / "checkpoints" / f"epoch-{cfg.epochs}"
                size_mb = sum(f.stat().st_size for f in last.rglob("*") if f.is_file()) / 1e6
                target = work / "persist-copy"
                start = time.perf_counter()
                shutil.copytree(last, target)
                copy_s = time.perf_counter() - start
                shutil.rmtree(target, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
    finally:
        engine.save_checkpoint = original
    epochs = int(base["epochs"])
    off, on = statistics.median(walls[False]), statistics.median(walls[True])
    per_epoch_off = off / epochs
    diff = (on - off) / epochs
    save_s = statistics.median(saves) if saves else None
    return {
        "preset": preset, "model": base["model"], "epochs": epochs, "repeats": repeats,
        "wall_off_s": round(off, 2), "wall_on_s": round(on, 2), "epoch_s_without_checkpoints": round(per_epoch_off, 2),
        "wall_diff_per_epoch_s": round(diff, 3), "wall_diff_per_epoch_pct": round(100 * diff / per_epoch_off, 2),
        "save_per_epoch_s": round(save_s, 3) if save_s is not None else None,
        "save_per_epoch_pct": round(100 * save_s / per_epoch_off, 2) if save_s is not None else None,
        "persist_copy_s": round(copy_s, 3) if copy_s is not None else None,
        "checkpoint_mb": round(size_mb, 1) if size_mb is not None else None,
    }


# ---------------------------------------------------------------------------- output
def pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def num(value, fmt: str = "{:.1f}") -> str:
    return "-" if value is None else fmt.format(value)


def table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


def report(figures: dict) -> str:
    lines = []
    tp = figures["throughput"]
    rows = []
    for key in SETUPS:
        s = tp[key]
        rows.append((f"{key} {s['label']} ({'+'.join(map(str, s['node_cpus']))} CPUs)",
                     f"run_sweep {num(s['run_sweep_wall_s'])} s -> {num(s['trials_per_hour_run_sweep'])} trials/h; "
                     f"trials span {num(s['trials_span_s'])} s -> {num(s['trials_per_hour_span'])} trials/h; "
                     f"slots busy {pct(s['slot_utilisation'])} ({s['completed']}/{s['trials'] * s['repeats']} completed)"))
    rows.append(("ratio B / A (trials/h)", f"run_sweep {num(tp['ratio_B_over_A_run_sweep'], '{:.2f}')}x, "
                                           f"trials span {num(tp['ratio_B_over_A_span'], '{:.2f}')}x"))
    a = tp["A"]
    lines += [f"Sweep throughput: smoke-sized trials, method fixed, {a['trials']} trials per sweep, 2 at a time, 1 CPU each, "
              f"{a['repeats']} sweep(s) per setup (medians)", table(rows),
              "  (run_sweep: the whole call, Ray join to report; trials span: first trial start to last final result; "
              "slots busy: sum of trainer walls / (2 x run_sweep))", ""]
    rows = []
    for key in SETUPS:
        s = tp[key]
        rows.append((f"{key} per trial", f"kept model checkpoint {num(s['storage_model_checkpoint_mb'])} MB; "
                                         f"trainer state copied by Tune's experiment sync {num(s['storage_trainer_state_mb_per_trial'])} MB; "
                                         f"'Saving experiment state ... failed' errors: {s['experiment_state_sync_errors']}"))
    demo = figures.get("demo_sweep")
    if demo:
        rows.append(("demo-sized per trial", f"kept model checkpoint {num(demo['storage_model_checkpoint_mb'])} MB; "
                                             f"trainer state copied by Tune's experiment sync "
                                             f"{num(demo['storage_trainer_state_mb_per_trial'])} MB; errors: "
                                             f"{demo['experiment_state_sync_errors']}"))
    lines += ["Tune storage after the sweep (trials' files under <storage>/fixed/<trial>/)", table(rows), ""]
    rows = []
    for label, o in figures["overhead"].items():
        if o is None:
            rows.append((label, "skipped"))
            continue
        rows.append((label, f"median {pct(o['overhead_median'])}, max {pct(o['overhead_max'])} "
                            f"(Tune time_total_s: median {pct(o['overhead_tune_median'])}, max {pct(o['overhead_tune_max'])}); "
                            f"trial {num(o['trial_wall_s_median'])} s vs trainer {num(o['trainer_wall_s_median'])} s "
                            f"(medians, {o['trials']} trials)"))
    lines += ["Platform overhead per trial = (trial wall - trainer wall) / trial wall (target <= 5 % on demo-sized trials)",
              table(rows), ""]
    c = figures["checkpoint"]
    if c is None:
        lines += ["Checkpoint cost: skipped", ""]
    else:
        rows = [
            ("config", f"{c['preset']}-sized: {c['model']}, {c['epochs']} epochs, 1 thread, {c['repeats']} run(s) each"),
            ("trainer wall, no checkpoints", f"{c['wall_off_s']:.1f} s ({c['epoch_s_without_checkpoints']:.1f} s per epoch)"),
            ("trainer wall, per-epoch checkpoints", f"{c['wall_on_s']:.1f} s"),
            ("wall difference per epoch", f"{c['wall_diff_per_epoch_s']:+.2f} s ({c['wall_diff_per_epoch_pct']:+.1f} %)"),
            ("DeepSpeed save per epoch (timed)", f"{num(c['save_per_epoch_s'], '{:.2f}')} s "
                                                 f"({num(c['save_per_epoch_pct'])} % of an epoch)"),
            ("copy to Tune storage (local)", f"{num(c['persist_copy_s'], '{:.2f}')} s per checkpoint"),
            ("checkpoint size on disk", f"{num(c['checkpoint_mb'])} MB ({c['model']}, weights + AdamW state)"),
        ]
        lines += ["Per-epoch checkpoint cost (trainers.train.run, save_checkpoints False vs True)", table(rows), ""]
    m = figures["machine"]
    lines += [f"Machine: {m['cpus']} CPUs, load average {m['load_start']} at the start, {m['load_end']} at the end; "
              f"took {figures['took_s'] / 60:.1f} min"]
    return "\n".join(lines)


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
    print(report(figures))
    print(f"  {DEFAULT_ADDRESS_FILE}: {'unchanged' if figures['address_file']['unchanged'] else 'CHANGED by another process'}"
          f"; the benchmark's own address file {'was LEFT behind' if figures['address_file']['private_left'] else 'is gone'}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, default=str))
        print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()

"""Sweeps on several Ray nodes and with several workers per trial, on one machine.

- Two nodes (``ray.cluster_utils.Cluster``: a head and a second node of one CPU each): trials run
  on both; the second node is removed in the middle of a trial, which restarts on the head from
  its last epoch checkpoint, and the sweep completes with exact epoch histories.
- Two data-parallel workers per trial (Ray Train, gloo), swept with ASHA on a cluster shaped like
  clusters/' (a head with no CPUs, two trial nodes): they give the validation metrics of one worker
  at the same global batch; every process of the trial ran on a trial node, and no trainer folder
  is left on any node.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from test_sweep_helpers import ROOT, client, run_sweep_cli, runs_by_role, sweep_cmd, sweep_env

pytestmark = pytest.mark.integration


def rows_by_trial(folder: Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for path in sorted(folder.glob("*/result.json")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if rows:
            out[rows[0]["trial_id"]] = rows
    return out


@pytest.fixture
def two_nodes():
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    second = cluster.add_node(num_cpus=1)
    try:
        cluster.wait_for_nodes()
        yield cluster, second
    finally:
        ray.shutdown()
        cluster.shutdown()
        marker = Path("/tmp/ray/ray_current_cluster")  # else a plain ray.init() elsewhere would join it
        if marker.is_file() and cluster.address in marker.read_text():
            marker.unlink(missing_ok=True)


def test_trials_spread_over_two_nodes_and_survive_losing_one(two_nodes, tmp_path):
    cluster, second = two_nodes
    root = tmp_path / "sweeps"
    results = root / "nodes" / "ray" / "search"
    cmd = sweep_cmd(root, "nodes", "--ray-address", cluster.address, "--set", "arms=[clo]", "--set", "trials=3",
                    "--set", "max_concurrent=2", "--set", "scheduler=none", "--set", "train.epochs=8",
                    "--set", "register=false")
    removed: dict = {}

    def remove_second_node_mid_trial():
        deadline = time.time() + 400
        while time.time() < deadline:
            for rows in rows_by_trial(results).values():
                if any(r.get("node_id") == second.node_id and r.get("epoch") == 2 for r in rows):
                    removed["trial_id"] = rows[0]["trial_id"]
                    cluster.remove_node(second, allow_graceful=False)  # a lost node, not a drained one
                    removed["at"] = time.time()
                    return
            time.sleep(0.2)

    watcher = threading.Thread(target=remove_second_node_mid_trial, daemon=True)
    watcher.start()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=sweep_env(), cwd=ROOT)
    watcher.join(timeout=30)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert removed, "no trial reached epoch 2 on the second node"
    assert "restarting from its checkpoint of epoch" in proc.stdout

    by_trial = rows_by_trial(results)
    assert len(by_trial) == 3
    head_id = cluster.head_node.node_id
    nodes = {r["node_id"] for rows in by_trial.values() for r in rows}
    assert {head_id, second.node_id} <= nodes, "trials should have run on both nodes"
    for trial_id, rows in by_trial.items():
        assert [r["epoch"] for r in rows] == list(range(1, 9)), (trial_id, [r["epoch"] for r in rows])
    moved = by_trial[removed["trial_id"]]
    lost_at = max(r["epoch"] for r in moved if r["node_id"] == second.node_id)
    assert 2 <= lost_at < 8 and all(r["node_id"] == head_id for r in moved if r["epoch"] > lost_at)

    mlflow_client, _ = client(root, "nodes")
    runs = runs_by_role(mlflow_client, "nodes")
    trial_ids = [r.data.tags["trial_id"] for r in runs["trial"]]
    assert sorted(trial_ids) == sorted(by_trial) and len(set(trial_ids)) == 3  # none duplicated
    for run in sum(runs.values(), []):
        assert run.info.status in ("FINISHED", "FAILED"), (run.info.run_name, run.info.status)
    moved_run = next(r for r in runs["trial"] if r.data.tags["trial_id"] == removed["trial_id"])
    assert moved_run.info.status == "FINISHED"
    assert [m.step for m in mlflow_client.get_metric_history(moved_run.info.run_id, "val/hypervolume")] == \
        sorted({int(r["step"]) for r in moved})


# The trial both worker counts train: the same sampled values, seed and global batch 16, dropout 0
SAME_TRIAL = ("--set", "arms=[clo]", "--set", "trials=1", "--set", "max_concurrent=1", "--set", "train.dropout=0",
              "--set", "register=false", "--set", "final_seeds=[]")


@pytest.fixture(scope="module")
def two_worker_cluster(tmp_path_factory):
    """SAME_TRIAL with 2 Ray Train workers, swept on a cluster shaped like clusters/': a head that
    declares no CPUs (num-cpus 0) and two worker nodes of 4 CPUs that declare leebert_trial_node
    (the worker pods), each with its own $TMPDIR (its raylet's environment, which its workers
    inherit: the folder the trainer folders go under), so each node's folders can be told apart on
    one machine. ASHA (the smoke preset's) stops the trial at max_t right after its last report.
    A watcher records the trainer folders that appear on each node while the sweep runs.
    (No final stage: without a dashboard, Ray Train's placement-group cleaner cannot see a stopped
    trial's controller die, so its CPUs stay reserved until the job ends, and the final stage's
    timing task, which holds every CPU of a node, would never start. A cluster's head runs the
    dashboard.)"""
    import tempfile

    import ray
    from ray.cluster_utils import Cluster

    tmp_path = tmp_path_factory.mktemp("cluster")
    ray_tmp = tempfile.mkdtemp(prefix="lbray-", dir="/tmp")  # short: Ray's socket paths live under it
    node_tmp = {name: tmp_path / name for name in ("head", "w1", "w2")}
    for folder in node_tmp.values():
        folder.mkdir()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_TMPDIR", ray_tmp)  # Ray's own folders (and its address file) stay private
        env.setenv("TMPDIR", str(node_tmp["head"]))
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
        workers = {}
        try:
            for name in ("w1", "w2"):
                env.setenv("TMPDIR", str(node_tmp[name]))
                workers[name] = cluster.add_node(num_cpus=4, resources={"leebert_trial_node": 1})
            env.setenv("TMPDIR", str(tmp_path))
            cluster.wait_for_nodes()
            node_names = {cluster.head_node.node_id: "head", **{node.node_id: name for name, node in workers.items()}}

            seen: dict[str, set] = {name: set() for name in node_tmp}
            done = threading.Event()

            def watch_trainer_folders():
                while not done.is_set():
                    for name, folder in node_tmp.items():
                        seen[name] |= {p.name for p in folder.glob("leebert-trials/*/*")}
                    time.sleep(0.1)

            watcher = threading.Thread(target=watch_trainer_folders, daemon=True)
            watcher.start()
            root = tmp_path / "sweeps"
            proc = run_sweep_cli(root, "w2", "--ray-address", cluster.address, *SAME_TRIAL,
                                 "--set", "workers_per_trial=2", "--set", "trial_nodes=required", timeout=900)
            done.set()
            watcher.join(timeout=10)
            ray.init(address=cluster.address)
            from sweeps.placement import TRIAL_NODE_RESOURCE, trial_node_resource, trials_the_cluster_holds

            node_resource = trial_node_resource("auto")
            holds = trials_the_cluster_holds(1, 0, 2, TRIAL_NODE_RESOURCE)
        finally:
            ray.shutdown()
            cluster.shutdown()
            shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    left = {name: sorted(str(p.relative_to(folder)) for p in folder.glob("leebert-trials/*/*"))
            for name, folder in node_tmp.items()}
    return {"root": root, "proc": proc, "node_names": node_names, "seen": seen, "left": left,
            "node_resource": node_resource, "holds": holds}


def test_two_workers_per_trial_match_one_worker(tmp_path, two_worker_cluster):
    """SAME_TRIAL with 1 worker (a local Ray, no scheduler) and with 2 data-parallel workers (the
    cluster sweep). Tolerance: the per-epoch validation metrics are equal to 1e-9 (they are
    accuracies over 128 examples, so one flipped prediction would move them by 0.0078), the
    learned loss weights to 1e-5 (float sums in another order)."""
    root = tmp_path / "sweeps"
    proc = run_sweep_cli(root, "w1", *SAME_TRIAL, "--set", "scheduler=none", "--set", "workers_per_trial=1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = {}
    for workers, where in ((1, root), (2, two_worker_cluster["root"])):
        (rows,) = rows_by_trial(where / f"w{workers}" / "ray" / "search").values()
        # the final checkpoint: Tune's for one worker, Ray Train's for two (under search/_train)
        (summary_path,) = [p for p in (where / f"w{workers}" / "ray" / "search").rglob("summary.json")
                           if p.parent.name.startswith("checkpoint_")]
        runs[workers] = (rows, json.loads(summary_path.read_text()))
    (one, one_summary), (two, two_summary) = runs[1], runs[2]
    assert [r["world_size"] for r in one] == [1, 1, 1] and [r["world_size"] for r in two] == [2, 2, 2]
    assert [r["epoch"] for r in two] == [1, 2, 3]
    for a, b in zip(one, two):
        for key in [k for k in a if k.startswith("val_")]:
            assert b[key] == pytest.approx(a[key], abs=1e-9), (a["epoch"], key)
    assert two_summary["weights"]["final"] == pytest.approx(one_summary["weights"]["final"], abs=1e-5)
    assert two_summary["test"]["hypervolume"] == pytest.approx(one_summary["test"]["hypervolume"], abs=1e-9)
    mlflow_client, _ = client(two_worker_cluster["root"], "w2")
    logged = runs_by_role(mlflow_client, "w2")
    (trial_run,) = logged["trial"]
    assert trial_run.info.status == "FINISHED"
    # resources are in the arm run's settings.json artifact, not its params (sweeps/mlflow_view.py)
    (tmp_path / "settings").mkdir()
    settings = json.loads(Path(mlflow_client.download_artifacts(logged["arm"][0].info.run_id, "settings.json",
                                                                str(tmp_path / "settings"))).read_text())
    assert settings["sweep"]["workers_per_trial"] == 2


def test_trials_stay_off_the_head_and_leave_no_trainer_folder_on_any_node(two_worker_cluster):
    """Issue 25's acceptance test, on the cluster sweep (ASHA, 2 workers per trial):
    - every process whose node a result records (the Tune trial process, the Train controller,
      rank 0) ran on a worker node; the cluster holds 4 trials of 2 workers (the final stage's
      concurrency when final_max_concurrent is null);
    - trainer folders appeared on the worker nodes while the trial ran, never on the head, and
      none is left on any node afterwards (the trial's own removal, then the stage's end: one
      zero-CPU task per node, as the cluster has several)."""
    from sweeps.placement import TRIAL_NODE_RESOURCE

    sweep = two_worker_cluster
    assert sweep["node_resource"] == TRIAL_NODE_RESOURCE and sweep["holds"] == 4
    reported = rows_by_trial(sweep["root"] / "w2" / "ray" / "search")
    assert len(reported) == 1
    rows = [row for trial_rows in reported.values() for row in trial_rows if "epoch" in row]
    places = [(row["node_id"], row["trial_node_id"], row["controller_node_id"]) for row in rows]
    assert places and all(row["world_size"] == 2 for row in rows)
    on = {sweep["node_names"][node] for place in places for node in place}
    assert "head" not in on and on <= {"w1", "w2"}, on
    for trial_node, controller_node in {(p[1], p[2]) for p in places}:
        assert controller_node == trial_node  # Ray pins the controller to its trial process's node

    seen = sweep["seen"]
    assert not seen["head"], seen
    assert seen["w1"] | seen["w2"] == set(reported), (seen, set(reported))
    assert sweep["left"] == {"head": [], "w1": [], "w2": []}, sweep["left"]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks a machine whose CUDA is broken or absent")
def test_a_trial_given_a_gpu_trains_on_it_or_fails_at_once(tmp_path):
    """Ray gives the trial a GPU (a node that declares one; this machine has none, as a GPU node
    whose CUDA is broken): the trial asks the trainer for device cuda, fails at once with the
    trainer's reason in the sweep's output and MLflow, and never trains on the CPU instead."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 1, "include_dashboard": False})
    try:
        cluster.wait_for_nodes()
        proc = run_sweep_cli(tmp_path, "gpu", "--ray-address", cluster.address, "--set", "arms=[fixed]",
                             "--set", "trials=1", "--set", "gpus_per_trial=1", "--set", "max_failures=0",
                             "--set", "final_seeds=[]", "--set", "register=false")
    finally:
        ray.shutdown()
        cluster.shutdown()
        marker = Path("/tmp/ray/ray_current_cluster")
        if marker.is_file() and cluster.address in marker.read_text():
            marker.unlink(missing_ok=True)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]  # no arm finished a trial
    assert "fixed trial 1/1 FAILED: " in proc.stdout and "device 'cuda' was asked for, but" in proc.stdout, proc.stdout[-3000:]
    reported = [r for rows in rows_by_trial(tmp_path / "gpu" / "ray" / "search").values() for r in rows]
    assert not [r for r in reported if "epoch" in r], "the trial must not train (on the CPU)"
    mlflow_client, _ = client(tmp_path, "gpu")
    (trial,) = runs_by_role(mlflow_client, "gpu")["trial"]
    assert trial.info.status == "FAILED"
    assert "device 'cuda' was asked for, but" in trial.data.tags["failure_reason"], trial.data.tags["failure_reason"]

"""Registration as its own step.

Calibration (``serving.calibration``) on a synthetic trainer summary whose validation curve says
which setting each target must get; registration (``platform/register.py`` → ``serving.register``)
against the real sqlite MLflow store and checkpoints of a real smoke sweep run with
``register=false``."""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from serving.calibration import for_max_drop, for_target_speedup, largest_speedup
from trainers.errors import ConfigError
from trainers.frontier import CurvePoint, pareto_front
from trainers.results import FrontierSetting, SplitSummary, Summary, WeightsSummary

from test_sweep_helpers import ROOT, sweep_env, use_mlflow_uri

REGISTER = ROOT / "platform" / "register.py"


# ---------------------------------------------------------------------------- synthetic summaries
def make_summary(points: list[tuple[str, float, float, float]], last_exit: float) -> Summary:
    """A trainer summary from (policy, setting, validation speed-up, validation metric) points, built
    the way trainers.evaluate does: the frontier is trainers.frontier.pareto_front of the curve, with
    test values at those settings (here test speed-up = 0.98 × validation, metric − 0.01)."""
    curve = [CurvePoint(policy, float(setting), speedup, metric, (0, 0, 0, 1)) for policy, setting, speedup, metric in points]
    front = pareto_front(curve)
    return Summary(
        task="mr", method="fixed", scheme="uniform", model="tiny-random", num_exits=4, steps=1, train_examples=1,
        wall_time_s=0.0, hypervolume_axis="log", metric="accuracy",
        validation=SplitSummary(last_exit, 0.0, [], 0.5), test=SplitSummary(last_exit - 0.01, 0.0, [], 0.5),
        validation_curve=curve,
        frontier=[FrontierSetting(p.policy, p.setting, p.delta, p.speedup, p.metric, 0.98 * p.speedup, p.metric - 0.01)
                  for p in front],
        operating_points=[], weights=WeightsSummary([], []), epochs=[], config={})


# A 4-layer model. "none" is the full model; patience 3 beats it slightly; entropy 0.3 and
# confidence 0.9 are exact duplicates (the frontier keeps confidence: first in (policy, setting)).
CURVE = [
    ("none", 0.0, 1.0, 0.80),
    ("patience", 3, 1.1, 0.805),
    ("patience", 2, 1.5, 0.79),
    ("patience", 1, 2.4, 0.70),
    ("entropy", 0.05, 1.2, 0.79),     # dominated by entropy 0.1
    ("entropy", 0.1, 1.25, 0.80),
    ("entropy", 0.3, 2.0, 0.78),
    ("entropy", 0.5, 3.0, 0.66),
    ("confidence", 0.9, 2.0, 0.78),
    ("confidence", 0.8, 1.9, 0.785),
    ("confidence", 0.7, 3.5, 0.55),
]


@pytest.fixture
def summary() -> Summary:
    return make_summary(CURVE, last_exit=0.80)


@pytest.mark.parametrize("target, policy, setting", [
    (1.0, "patience", 3),      # every setting qualifies: the most accurate one
    (1.2, "entropy", 0.1),     # 1.2x: entropy 0.05 (1.2x, 79%) and entropy 0.1 (1.25x, 80%): the more accurate
    (2.0, "confidence", 0.9),  # 2x: entropy 0.3 = confidence 0.9 (2.0x, 78%): the one the frontier keeps
    (3.0, "entropy", 0.5),     # 3x: entropy 0.5 (3.0x, 66%) beats confidence 0.7 (3.5x, 55%)
    (3.5, "confidence", 0.7),
    (1.9, "confidence", 0.8),  # 1.9x: confidence 0.8 (1.9x, 78.5%)
])
def test_target_speedup_gets_the_setting_the_curve_says(summary, target, policy, setting):
    chosen = for_target_speedup(summary, target)
    assert (chosen["policy"], chosen["setting"]) == (policy, setting)
    point = next(p for p in CURVE if p[0] == policy and p[1] == setting)
    assert chosen["validation_speedup"] == point[2] and chosen["validation_metric"] == point[3]
    # test values: those of the frontier at that setting
    assert chosen["test_speedup"] == pytest.approx(0.98 * point[2]) and chosen["test_metric"] == pytest.approx(point[3] - 0.01)
    assert chosen["target"] == {"target_speedup": float(target)} and chosen["delta"] is None
    assert set(chosen) == {"policy", "setting", "delta", "target", "validation_speedup", "validation_metric",
                           "test_speedup", "test_metric"}


def test_target_speedup_accepts_a_speedup_a_rounding_below(summary):
    points = [p if p[:2] != ("patience", 1) else ("patience", 1, 2.4 - 1e-12, 0.70) for p in CURVE]
    assert for_target_speedup(make_summary(points, 0.80), 2.4)["setting"] == 1


@pytest.mark.parametrize("drop, policy, setting", [
    (0, "entropy", 0.1),       # >= 80%: none (1x), patience 3 (1.1x), entropy 0.1 (1.25x): the fastest
    (1, "patience", 2),        # >= 79%: patience 2 (1.5x)
    (2, "confidence", 0.9),    # >= 78%: entropy 0.3 = confidence 0.9 (2.0x): the frontier's one
    (1.5, "confidence", 0.8),  # >= 78.5%: confidence 0.8 (1.9x)
    (15, "entropy", 0.5),      # >= 65%: entropy 0.5 (3.0x)
    (30, "confidence", 0.7),   # >= 50%: the fastest of all
    (-0.5, "patience", 3),     # at least 0.5 points better than the full model
])
def test_max_drop_gets_the_fastest_setting_within_the_drop(summary, drop, policy, setting):
    chosen = for_max_drop(summary, drop)
    assert (chosen["policy"], chosen["setting"]) == (policy, setting)
    assert chosen["target"] == {"max_drop": float(drop)}
    assert chosen["validation_metric"] >= 0.80 - drop / 100 - 1e-9


def test_unreachable_targets_name_what_is_reachable(summary):
    with pytest.raises(ConfigError, match=r"largest reachable validation speed-up is 3\.50x") as err:
        for_target_speedup(summary, 4)
    assert "4x" in str(err.value)
    assert largest_speedup(summary) == 3.5
    with pytest.raises(ConfigError, match=r"smallest possible drop is -0\.50 points") as err:
        for_max_drop(summary, -1)  # nothing is a full point better than the full model
    assert "largest reachable validation speed-up is 3.50x" in str(err.value)
    with pytest.raises(ConfigError, match=">= 1"):
        for_target_speedup(summary, 0.5)
    with pytest.raises(ConfigError):
        for_max_drop(summary, float("nan"))


def test_full_model_is_a_point_of_every_curve():
    summary = make_summary([("patience", 1, 2.0, 0.70), ("patience", 2, 1.4, 0.75)], last_exit=0.80)
    summary.validation_curve = [p for p in summary.validation_curve if p.policy != "none"]
    chosen = for_target_speedup(summary, 1.0)  # the curve lacks "none": the full model still counts
    assert (chosen["policy"], chosen["validation_speedup"], chosen["validation_metric"]) == ("none", 1.0, 0.80)
    assert chosen["test_metric"] == summary.test.last_exit
    assert for_max_drop(summary, 0)["policy"] == "none"


def test_a_setting_missing_from_the_frontier_fails_clearly(summary):
    summary.frontier = [p for p in summary.frontier if p.policy != "confidence"]
    with pytest.raises(ConfigError, match="not on the summary's validation frontier"):
        for_target_speedup(summary, 2.0)


def test_chosen_setting_is_always_on_the_front_and_optimal():
    """Random curves with ties and duplicates: every choice is found on the frontier (else
    calibration raises) and equals the brute-force answer."""
    rng = random.Random(0)
    kinds = ("patience", "entropy", "confidence")
    for _ in range(300):
        points = [("none", 0.0, 1.0, 0.8)]
        for _ in range(rng.randint(1, 25)):
            points.append((rng.choice(kinds), rng.choice([0.1, 0.2, 0.3, 1, 2, 3]),
                           rng.choice([1.0, 1.25, 1.5, 2.0, 2.5, 3.0]), rng.choice([0.5, 0.6, 0.7, 0.75, 0.8, 0.85])))
        points = list({p[:2]: p for p in points}.values())  # one point per (policy, setting)
        summary = make_summary(points, 0.8)
        for x in (1.0, 1.25, 2.0, 2.5, 3.0):
            ok = [p for p in points if p[2] >= x]
            if not ok:
                with pytest.raises(ConfigError):
                    for_target_speedup(summary, x)
                continue
            chosen = for_target_speedup(summary, x)
            best = max(ok, key=lambda p: (p[3], p[2]))
            assert (chosen["validation_metric"], chosen["validation_speedup"]) == (best[3], best[2])
        for d in (0, 5, 10, 20, 30):
            chosen = for_max_drop(summary, d)
            ok = [p for p in points if p[3] >= 0.8 - d / 100 - 1e-9]
            best = max(ok, key=lambda p: (p[2], p[3]))
            assert (chosen["validation_speedup"], chosen["validation_metric"]) == (best[2], best[3])


def test_register_refuses_two_targets_before_touching_mlflow(tmp_path):
    from serving.register import register_sweep

    with pytest.raises(ConfigError, match="not both"):
        register_sweep(f"sqlite:///{tmp_path / 'none.db'}", "x", target_speedup=2, max_drop=1)
    assert not (tmp_path / "none.db").exists()


def test_frontier_tag_fits_a_tag():
    from serving.register import frontier_tag

    frontier = [FrontierSetting("patience", i, None, validation_speedup=1 + i / 7, validation_metric=0.5 + i / 1000,
                                test_speedup=1 + i / 9, test_metric=0.4 + i / 999) for i in range(400)]
    text = frontier_tag(frontier)
    rows = json.loads(text)
    assert len(text) <= 5000 and len(rows) >= 2 and all(len(r) == 4 for r in rows)
    assert rows[0] == [1.0, 0.5, 1.0, 0.4] and rows[-1][0] == pytest.approx(1 + 399 / 7, abs=1e-3)
    short = json.loads(frontier_tag(frontier[:3]))
    assert short == [[round(v, 4) for v in (p.validation_speedup, p.validation_metric, p.test_speedup, p.test_metric)]
                     for p in frontier[:3]]


# ---------------------------------------------------------------------------- a real sweep
NAME = "register-test"
ARMS = ["fixed-pabee", "clo"]  # the session budget sweep's arms (tests/conftest.py)


def register_cli(root, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REGISTER), "--sweep", NAME, "--root", str(root), *args],
                          capture_output=True, text=True, timeout=600, env=sweep_env(), cwd=ROOT)


@pytest.fixture(scope="module")
def sweep(budget_sweep):
    """The session's sweep that registers nothing (tests/conftest.py; test_budget.py checks its budget)."""
    assert budget_sweep["name"] == NAME and budget_sweep["arms"] == ARMS
    root, proc, mlflow_client, uri = budget_sweep["root"], budget_sweep["proc"], budget_sweep["client"], budget_sweep["uri"]
    runs = budget_sweep["runs"]
    arm_runs = {r.data.tags["arm"]: r for r in runs["arm"]}
    summaries = {}
    for arm, run in arm_runs.items():
        folder = mlflow_client.download_artifacts(run.data.tags["best_run_id"], "summary.json",
                                                  str(root / "download" / arm))
        summaries[arm] = Summary.from_dict(json.loads(open(folder).read()))
    speedup = json.loads((root / NAME / "sweep.json").read_text())["register_speedup"]  # the default target
    return {"root": root, "dir": root / NAME, "proc": proc, "client": mlflow_client, "uri": uri, "runs": runs,
            "arm_runs": arm_runs, "summaries": summaries, "speedup": float(speedup)}


def versions(mlflow_client, name: str = "leebert-mr") -> list:
    from mlflow.exceptions import MlflowException

    try:
        return sorted(mlflow_client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))
    except MlflowException:
        return []



@pytest.mark.integration
def test_sweep_without_register_registers_nothing(sweep):
    assert "registered model" not in sweep["proc"].stdout
    assert sweep["client"].search_registered_models() == []
    experiment = sweep["client"].get_experiment_by_name(NAME)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    for run in sweep["runs"]["trial"]:
        if run.data.tags["trial_status"] == "completed":
            assert run.data.tags["model_checkpoint"]


@pytest.fixture(scope="module")
def registered(sweep):
    proc = register_cli(sweep["root"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.integration
def test_one_model_one_version_per_arm_with_aliases(sweep, registered):
    mlflow_client = sweep["client"]
    models = mlflow_client.search_registered_models()
    assert [m.name for m in models] == ["leebert-mr"]
    found = versions(mlflow_client)
    assert len(found) == len(ARMS)
    assert sorted(v.tags["arm"] for v in found) == sorted(ARMS)
    model = mlflow_client.get_registered_model("leebert-mr")
    assert set(model.aliases) == {"champion", "fixed-pabee-best", "clo-best"}
    objectives = {m: r.data.metrics["best_objective"] for m, r in sweep["arm_runs"].items()}
    champion = max(ARMS, key=lambda m: objectives[m])  # ties: the first arm, as registered
    assert mlflow_client.get_model_version_by_alias("leebert-mr", "champion").tags["arm"] == champion
    for arm in ARMS:
        version = mlflow_client.get_model_version_by_alias("leebert-mr", f"{arm}-best")
        assert version.tags["arm"] == arm
        assert f"version {version.version} (new)" in registered.stdout
    out = registered.stdout
    assert "models:/leebert-mr@fixed-pabee-best" in out and "models:/leebert-mr@clo-best" in out
    assert f"champion: models:/leebert-mr@champion = {champion}" in out
    bin_dir = Path(sys.executable).parent  # by path: runs as printed without an activated venv
    assert (f'PATH={bin_dir}:"$PATH" {bin_dir}/mlflow models serve -m models:/leebert-mr@champion --env-manager local '
            '-h 127.0.0.1 -p 5001') in out
    assert f"MLFLOW_TRACKING_URI={sweep['uri']}" in out


@pytest.mark.integration
def test_version_tags_hold_trial_hyperparameters_frontier_and_policy(sweep, registered):
    mlflow_client = sweep["client"]
    trials = {r.info.run_id: r for r in sweep["runs"]["trial"]}
    for arm in ARMS:
        tags = mlflow_client.get_model_version_by_alias("leebert-mr", f"{arm}-best").tags
        parent = sweep["arm_runs"][arm]
        trial = trials[parent.data.tags["best_run_id"]]
        summary = sweep["summaries"][arm]
        assert tags["sweep"] == NAME and tags["trial_id"] == parent.data.tags["best_trial_id"]
        assert tags["trial_run_id"] == trial.info.run_id
        hyper = json.loads(tags["hyperparameters"])
        assert set(hyper) == set(trial.data.tags["searched"].split(","))
        assert all(hyper[k] == pytest.approx(float(trial.data.params[k])) for k in hyper)
        frontier = json.loads(tags["frontier"])
        assert len(frontier) == len(summary.frontier) and len(tags["frontier"]) <= 5000
        first = summary.frontier[0]
        assert frontier[0] == pytest.approx([first.validation_speedup, first.validation_metric, first.test_speedup,
                                             first.test_metric], abs=1e-4)
        policy = for_target_speedup(summary, sweep["speedup"])  # the sweep's register_speedup (smoke: 1.5)
        assert tags["policy"] == policy["policy"] and float(tags["policy_setting"]) == policy["setting"]
        assert json.loads(tags["target"]) == {"target_speedup": sweep["speedup"]}
        for key in ("validation_speedup", "validation_metric", "test_speedup", "test_metric"):
            assert float(tags[key]) == pytest.approx(policy[key])
        assert float(tags["validation_objective"]) == pytest.approx(parent.data.metrics["best_objective"])
        # the arm run names what was registered, and is FINISHED again
        run = mlflow_client.get_run(parent.info.run_id)
        assert run.info.status == "FINISHED"
        assert json.loads(run.data.tags["registered"])["uri"] == f"models:/leebert-mr@{arm}-best"


@pytest.mark.integration
@pytest.mark.filterwarnings("ignore:.*type hints")
def test_champion_predicts_with_early_exit(sweep, registered, monkeypatch):
    import mlflow
    import pandas as pd

    use_mlflow_uri(monkeypatch, sweep["uri"])
    model = mlflow.pyfunc.load_model("models:/leebert-mr@champion")
    out = model.predict(pd.DataFrame({"sentence": ["a gripping , funny and moving film .", "tedious and badly acted ."]}))
    assert len(out) == 2 and "exit_layer" in out.columns and out["exit_layer"].between(1, 3).all()
    # logged with both keys, so both can be overridden at load or serve time; auto = CUDA where there is one
    assert model.model_config == {"max_rows": 256, "device": "auto"}
    assert model.unwrap_python_model().device.type == "cpu"


@pytest.mark.integration
def test_register_again_creates_nothing(sweep, registered):
    before = [(v.version, v.tags["trial_id"]) for v in versions(sweep["client"])]
    proc = register_cli(sweep["root"], "--target-speedup", str(sweep["speedup"]))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [(v.version, v.tags["trial_id"]) for v in versions(sweep["client"])] == before
    assert proc.stdout.count("(existing: same trial and exit policy)") == len(ARMS)


@pytest.mark.integration
def test_unreachable_target_is_refused_and_registers_nothing(sweep, registered):
    before = [v.version for v in versions(sweep["client"])]
    proc = register_cli(sweep["root"], "--target-speedup", "100")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for arm in ARMS:
        assert f"{largest_speedup(sweep['summaries'][arm]):.2f}x" in lines[0]
    assert "largest reachable validation speed-up" in lines[0]
    assert [v.version for v in versions(sweep["client"])] == before


@pytest.mark.integration
def test_max_drop_registers_its_own_policy(sweep, registered):
    before = versions(sweep["client"])
    by_trial = {(v.tags["trial_id"], v.tags["policy"], v.tags["policy_setting"]) for v in before}
    expected_new = 0
    for arm in ARMS:
        policy = for_max_drop(sweep["summaries"][arm], 5)
        trial_id = sweep["arm_runs"][arm].data.tags["best_trial_id"]
        expected_new += (trial_id, policy["policy"], f"{policy['setting']:.10g}") not in by_trial
    proc = register_cli(sweep["root"], "--max-drop", "5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = versions(sweep["client"])
    assert len(after) == len(before) + expected_new
    assert proc.stdout.count("(new") == expected_new
    for arm in ARMS:
        tags = sweep["client"].get_model_version_by_alias("leebert-mr", f"{arm}-best").tags
        policy = for_max_drop(sweep["summaries"][arm], 5)
        assert json.loads(tags["target"]) == {"max_drop": 5.0}
        assert tags["policy"] == policy["policy"] and float(tags["policy_setting"]) == policy["setting"]
        assert float(tags["validation_metric"]) >= sweep["summaries"][arm].validation.last_exit - 0.05 - 1e-6
    # and back: the sweep's target finds its versions again
    proc = register_cli(sweep["root"])
    assert proc.returncode == 0 and len(versions(sweep["client"])) == len(after)


@pytest.mark.integration
def test_bad_input_is_one_error_line(sweep, registered, tmp_path):
    before = len(versions(sweep["client"]))
    unknown = subprocess.run([sys.executable, str(REGISTER), "--sweep", "no-such-sweep", "--root", str(sweep["root"])],
                             capture_output=True, text=True, timeout=120, env=sweep_env(), cwd=ROOT)
    both = register_cli(sweep["root"], "--target-speedup", "2", "--max-drop", "1")
    # an unfinished sweep: a copy of the store in which clo's search is not finalized
    copy = tmp_path / "mlflow.db"
    shutil.copy2(sweep["dir"] / "mlflow.db", copy)
    with sqlite3.connect(copy) as db:
        db.execute("UPDATE tags SET value = 'false' WHERE key = 'finalized' AND run_uuid = ?",
                   (sweep["arm_runs"]["clo"].info.run_id,))
    unfinished = register_cli(sweep["root"], "--tracking-uri", f"sqlite:///{copy}")
    missing_store = register_cli(sweep["root"], "--tracking-uri", f"sqlite:///{tmp_path / 'absent.db'}")
    for proc, needle in ((unknown, "no sweep named 'no-such-sweep'"), (both, "not allowed with argument"),
                         (unfinished, "is not finished (arm(s) clo"), (missing_store, "does not exist")):
        assert proc.returncode == 2, (needle, proc.stdout, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr
    assert len(versions(sweep["client"])) == before
    assert not (tmp_path / "absent.db").exists()


@pytest.mark.integration
def test_a_model_name_mlflow_refuses_leaves_no_logged_model(sweep, registered):
    """The name is checked before the model (~90 MB for MiniLM) is logged into the arm's run."""
    experiment = sweep["client"].get_experiment_by_name(NAME).experiment_id
    logged = lambda: sorted(m.model_id for m in sweep["client"].search_logged_models(experiment_ids=[experiment]))  # noqa: E731
    artifacts = lambda: sorted(p for p in (sweep["dir"] / "mlartifacts").rglob("*") if p.is_file())  # noqa: E731
    before, files = logged(), artifacts()
    proc = register_cli(sweep["root"], "--model-name", "team/leebert")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "refused by the MLflow registry" in lines[0] and "e.g. leebert-mr" in lines[0], proc.stderr
    assert logged() == before and artifacts() == files


def test_help_explains():
    proc = subprocess.run([sys.executable, str(REGISTER), "--help"], capture_output=True, text=True, timeout=60,
                          env=sweep_env(), cwd=ROOT)
    assert proc.returncode == 0
    for flag in ("--sweep", "--root", "--tracking-uri", "--target-speedup", "--max-drop", "--model-name", "champion"):
        assert flag in proc.stdout

"""The benchmark scripts run end to end (on the tiny model) and write what they promise."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from test_sweep_helpers import sweep_env

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.integration
def test_compare_arms_writes_a_results_table(tmp_path):
    results = tmp_path / "results.md"
    proc = subprocess.run(
        [sys.executable, "benchmarks/compare_arms.py", "--model", "tiny-random", "--seeds", "1",
         "--train-subset", "64", "--epochs", "1", "--max-length", "24", "--batch-size", "16", "--threads", "1",
         "--work-dir", str(tmp_path / "work"), "--results", str(results)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = results.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert [row.split(" | ")[0].strip("| ") for row in rows[1:]] == ["fixed-uniform", "fixed-pabee", "bilevel", "clo"]
    assert "| 1.00x |" in rows[1], "fixed-uniform's time ratio to itself is 1"
    assert "--seeds 1" in text
    # a second invocation reuses the finished runs instead of training again
    again = subprocess.run(proc.args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count("already done") == 4


@pytest.mark.integration
def test_throughput_prints_its_figures():
    proc = subprocess.run(
        [sys.executable, "benchmarks/throughput.py", "--model", "tiny-random", "--steps", "2", "--warmup", "1",
         "--threads", "1", "--eval-examples", "64"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for needle in ("train ZeRO-0:", "train ZeRO-2:", "wall time ZeRO-2 / ZeRO-0:", "samples/s"):
        assert needle in proc.stdout


@pytest.mark.integration
def test_scaling_prints_its_figures(tmp_path):
    figures = tmp_path / "scaling.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/scaling.py", "--quick", "--trials", "1", "--json", str(figures)],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for needle in ("A 1 node (2 CPUs)", "B 2 nodes (1+1 CPUs)", "ratio B / A (trials/h)", "Platform overhead per trial",
                   "DeepSpeed save per epoch (timed)", "checkpoint size on disk"):
        assert needle in proc.stdout
    data = json.loads(figures.read_text())
    assert data["throughput"]["A"]["completed"] == data["throughput"]["B"]["completed"] == 1
    assert data["throughput"]["ratio_B_over_A_run_sweep"] > 0
    assert data["overhead"]["smoke, A (1 node)"]["overhead_median"] is not None
    assert data["checkpoint"]["checkpoint_mb"] > 0
    assert not data["address_file"]["private_left"]


def _section(text: str, name: str) -> str:
    """Study ``name``'s section of the results document, markers included."""
    match = re.search(rf"<!-- study:{re.escape(name)}( [^>]*)? -->\n.*?<!-- /study:{re.escape(name)} -->\n", text, re.S)
    assert match, f"no section {name} in:\n{text[:3000]}"
    return match.group(0)


@pytest.mark.integration
def test_studies_write_their_own_sections_and_resume(study_sweep):
    """benchmarks/study.py on a tiny model, twice: the session's MR study (tests/conftest.py, which
    the final-stage tests read too) and an SNLI study (the snli-study preset, shrunk) write two
    sections of one results document; the MR one, run again, trains nothing and rewrites its own
    section only (the time of both invocations added up), leaving the SNLI section byte for byte as
    it was."""
    results = study_sweep["results"]
    mr = study_sweep["command"]
    snli = mr[:mr.index("--name")] + ["--preset", "snli-study", "--name", "tiny-snli"]
    tiny = ["arms=[bilevel,clo]", "budget_epochs=2", "train.model=tiny-random",
            "train.train_subset=256", "train.max_length=24", "train.batch_size=16", "final_train.train_subset=256",
            "final_seeds=[1,2]", "bootstrap=200", "timing_repeats=1", "env.RAY_USAGE_STATS_ENABLED=0",
            "train.eval_subset=200",
            # a tiny trial is mostly imports: one process runs every trial of a stage in turn (reuse_actors, one at
            # a time), 3 trial processes fewer than the preset's concurrency (~8 CPU-s each)
            "reuse_actors=true", "max_concurrent=1", "final_max_concurrent=1"]

    def run(command, overrides=()):
        proc = subprocess.run(command + [a for o in overrides for a in ("--set", o)], cwd=REPO, capture_output=True,
                              text=True, timeout=900, env=sweep_env())
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc

    run(snli, tiny)
    text = results.read_text()
    assert "stale numbers" not in text and text.startswith("# Results: ")
    assert text.index("<!-- study:tiny-mr ") < text.index("<!-- study:tiny-snli ")  # appended after the first
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    # the MR study compares clo with fixed-pabee, the SNLI one with bilevel (a learned arm: its weights too)
    for name, task, unit, other, learned_arms in (("tiny-mr", "MR", "sentences", "fixed-pabee", ["clo"]),
                                                  ("tiny-snli", "SNLI", "pairs", "bilevel", ["clo", "bilevel"])):
        section = _section(text, name)
        learned = [f"**{arm}** (mean over seeds 1, 2" for arm in learned_arms]  # their weights over training
        for needle in (f"## {task}: CLO against every baseline", f"training {unit} in the final stage",
                       "### What each arm's search used and chose", f"| {other} | ", "random search",
                       "### Is CLO better? Paired differences, clo minus each arm",
                       f"clo vs {other}: ", *learned,
                       "of wall time over 1 invocation(s)", f"`{commit}", f"results-{name}-frontiers.png"):
            assert needle in section, (name, needle)
        assert (results.parent / f"results-{name}-frontiers.png").is_file()
        assert (results.parent / f"results-{name}-weights.png").is_file()
    # the MR study searched a trial count (budget_epochs null), the SNLI one under a compute budget
    assert "Budget: **none: 2 trials per arm**" in _section(text, "tiny-mr") and "| fixed-pabee | 2 | " in _section(text, "tiny-mr")
    assert "Budget: **2 fixed-epochs of training compute per arm**" in _section(text, "tiny-snli")
    assert "--preset snli-study --name tiny-snli" in _section(text, "tiny-snli")
    assert "validated on 200 validation pairs" in _section(text, "tiny-snli")
    assert "9824 test pairs" in _section(text, "tiny-snli")  # the whole official test set

    again = run(mr)
    assert "continuing the study" in again.stdout and " started" not in again.stdout
    after = results.read_text()
    assert _section(after, "tiny-snli") == _section(text, "tiny-snli")  # the other study: untouched
    assert after.endswith(_section(text, "tiny-snli"))
    section = _section(after, "tiny-mr")
    assert "of wall time over 2 invocation(s)" in section and "tiny-mr/study_time.json" in section
    rows = [line for line in section.splitlines() if line.startswith("| 1 |") or line.startswith("| 2 |")]
    assert len(rows) == 2 and all("python benchmarks/study.py --root" in r and "--name tiny-mr" in r for r in rows)
    assert "--set 'arms=[fixed-pabee,clo]'" in rows[0] and "--set" not in rows[1]
    assert "Newest section: **" in after and "`tiny-mr` (measured " in after and "`tiny-snli` (measured " in after


def load_study_script(monkeypatch):
    """benchmarks/study.py as a module, without the environment variables it sets leaking into other tests."""
    import importlib.util

    for key in ("HF_HUB_OFFLINE", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"):  # study.py sets them: restore them after
        monkeypatch.delenv(key, raising=False)
    spec = importlib.util.spec_from_file_location("study_under_test", REPO / "benchmarks" / "study.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    return study


def test_study_sections_replace_only_their_own_text(tmp_path, monkeypatch):
    """The results document's bookkeeping, without a study: a section is replaced in place or appended,
    every other section and the text between sections stay byte for byte, the head follows the newest
    section, and a 'keep' paragraph filled in by hand (no PLACEHOLDER left) survives a rewrite."""
    study = load_study_script(monkeypatch)
    path = tmp_path / "results.md"
    path.write_text("# old\n\nsuperseded numbers\n")
    study.write_section(path, "mr-study", study.pending_section("mr-study", "mr"))
    study.write_section(path, "snli-study", study.pending_section("snli-study", "snli"))
    text = path.read_text()
    assert "superseded numbers" not in text and "No study has run on this code yet." in text
    assert "`python benchmarks/study.py --preset snli-study`" in _section(text, "snli-study")
    assert "What changed since the superseded 2026-11 verdicts:" in _section(text, "mr-study")
    assert "PLACEHOLDER" in _section(text, "mr-study") and "What this study says:** … *(PLACEHOLDER" in _section(text, "snli-study")
    path.write_text(text + "a note between sections\n")
    mr_block, snli_block = _section(text, "mr-study"), _section(text, "snli-study")

    study.write_section(path, "snli-study", "## SNLI: measured\n\nfigures", measured="2026-12-06")
    text = path.read_text()
    assert _section(text, "mr-study") == mr_block and text.endswith("a note between sections\n")
    assert "<!-- study:snli-study measured=2026-12-06 -->\n## SNLI: measured\n\nfigures\n" in text
    assert "Newest section: **2026-12-06** (`snli-study`)" in text

    filled = mr_block.replace(mr_block[mr_block.index("… *(PLACEHOLDER"):mr_block.index(")*") + 2], "All hold.")
    path.write_text(text.replace(mr_block, filled))
    body = "## MR: measured\n\n" + study.CHANGES["mr-study"] + "\n\nfigures"
    study.write_section(path, "mr-study", body, measured="2026-12-07")
    text = path.read_text()
    assert "verdicts:** All hold." in _section(text, "mr-study") and "PLACEHOLDER" not in text
    assert "## MR: measured" in _section(text, "mr-study")
    assert "<!-- study:snli-study measured=2026-12-06 -->\n## SNLI: measured\n\nfigures\n" in text
    assert "Newest section: **2026-12-07** (`mr-study`)" in text
    study.write_section(tmp_path / "new.md", "x", "## X")  # a missing document: head and one section
    assert _section((tmp_path / "new.md").read_text(), "x").startswith("<!-- study:x -->\n## X\n")


def test_snli_study_preset_compares_the_five_arms_on_one_test_set():
    """No Ray, no model: the snli-study preset validates, compares mr-study's five arms under a compute
    budget with mr-study's statistics, and every final model (every arm, every seed) is tested on the
    same examples: the whole official SNLI test set."""
    from sweeps.presets import build_config
    from trainers.data import load_task_data

    cfg, mr = build_config(preset="snli-study"), build_config(preset="mr-study")
    assert cfg.arms == ["fixed-uniform", "fixed-pabee", "fixed-last", "bilevel", "clo"]
    assert cfg.trials is None and cfg.budget_epochs > 0
    for key in ("arms", "trials", "final_seeds", "reference_arm", "bootstrap", "timing_repeats", "timing_seeds",
                "objective", "scheduler", "max_concurrent", "final_max_concurrent", "cpus_per_trial"):
        assert getattr(cfg, key) == getattr(mr, key), key
    assert cfg.final_seeds == [1, 2, 3] and cfg.reference_arm == "clo" and cfg.bootstrap == 2000
    assert cfg.train["task"] == "snli" and cfg.train["model"] == "minilm" and cfg.train["precision"] == "auto"
    assert cfg.train["train_subset"] and cfg.final_train["train_subset"] > cfg.train["train_subset"]
    finals = [{**cfg.train_config(arm).to_dict(), **cfg.final_train, "seed": seed}  # what sweeps.final trains
              for arm in cfg.arms for seed in cfg.final_seeds]
    assert all(f["eval_subset"] is None and f["task"] == "snli" for f in finals)
    assert len({(f["max_length"], f["train_subset"]) for f in finals}) == 1

    class Words:  # a stand-in tokenizer: the splits do not depend on it
        pad_token_id = 0

        def __call__(self, first, second=None, truncation=True, max_length=64):
            pairs = zip(first, second or [""] * len(first))
            return {"input_ids": [[1] * min(max_length, 2 + len(a.split()) + len(b.split())) for a, b in pairs]}

    final = cfg.train_config("clo").to_dict() | cfg.final_train
    loaded = {seed: load_task_data("snli", Words(), max_length=final["max_length"], train_subset=final["train_subset"],
                                   eval_subset=final["eval_subset"], seed=seed) for seed in cfg.final_seeds[:2]}
    one, two = loaded.values()
    assert len(one.test) == 9824 and one.test.ids.tolist() == two.test.ids.tolist()  # the same test examples
    assert len(one.validation) == 5000 and len(one.train) == len(two.train) == cfg.final_train["train_subset"]
    assert one.train.ids.tolist() != two.train.ids.tolist()  # each seed its own sample (every arm the same one)
    full = load_task_data("snli", Words(), max_length=final["max_length"], seed=1).train.labels.bincount()
    share = full.double() / full.sum() * len(one.train)
    for sample in (one, two):  # stratified: every class within one example of its share of the training set
        assert (sample.train.labels.bincount().double() - share).abs().max() <= 1, (sample.train.labels.bincount(), share)


@pytest.mark.integration
def test_cluster_sim_quick_keeps_its_small_cluster_busy(tmp_path):
    """SIMULATION (benchmarks/cluster_sim.py --quick): the real run_sweep on two Ray nodes that declare
    4 GPUs each, trials of 2 GPUs in one worker (the full run's Ray Train group per trial costs more
    processes and real start-up than CI has to spare), with the stand-in trainer. The scheduler runs
    trials in parallel, never more than the cluster's 4 slots (2 arms x 4 seeds: the final stage's 8
    trainings in two rounds of its 4 slots), the
    learned arm's epochs cost what sweeps/budget.py charges, the figures are shares, and with one arm
    uniformly worse its trials are still promoted by ASHA within their own arm. The makespan and
    occupancy targets are the benchmark's own (--check, on an idle machine): beside other tests the
    platform's real start-up, counted time-scale times over, moves them (1.351 x ideal in one CI run)."""
    figures = tmp_path / "sim.json"
    proc = subprocess.run([sys.executable, "benchmarks/cluster_sim.py", "--quick", "--worse-arm", "fixed-uniform",
                           "--json", str(figures)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "SIMULATION" in proc.stdout
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(last) == {"search_makespan_over_ideal", "final_makespan_over_ideal", "sweep_over_ideal", "utilization",
                         "search_occupancy", "final_occupancy", "busy_share"}
    assert all(math.isfinite(v) and v > 0 for v in last.values()), last
    for share in ("search_occupancy", "final_occupancy", "busy_share", "utilization"):
        assert 0 < last[share] <= 1, last
    data = json.loads(figures.read_text())
    assert data["search"]["trials"] == 2 * 16 and data["final"]["trials"] == 2 * 4
    # 8 declared GPUs / 2 per trial: never more than 4 trials at once, and several in parallel in the search
    # (all 4 on a quiet machine; at load 30 the slow start-ups let at most 3 overlap); the final stage's first
    # round of 4 long trainings starts together
    assert 2 <= data["search"]["peak_concurrent"] <= 4, proc.stdout[-2000:]
    assert data["final"]["peak_concurrent"] == 4, proc.stdout[-2000:]
    assert data["settings"]["workers_per_trial"] == 1
    assert dict(data["settings"]["plan"]["outer_step_costs"]) == {"clo": 2.7}  # sweeps/budget.py: cuda, bf16
    sweep = data["sweep"]  # the driver's time between and after the stages is part of the whole sweep
    assert sweep["driver_between_stages_s"] >= 0 and sweep["driver_after_final_s"] > 0
    assert sweep["total_s"] >= data["search"]["makespan_s"] + data["final"]["makespan_s"]
    epochs = {arm: {int(k): v for k, v in counts.items()} for arm, counts in data["search"]["epochs_by_arm"].items()}
    worse, other = epochs["fixed-uniform"], epochs["clo"]
    # one ASHA over all arms would stop every trial of the worse arm at its first rung
    assert worse.get(2, 0) >= 2, epochs
    assert abs(worse.get(2, 0) - other.get(2, 0)) <= 3, epochs


@pytest.mark.integration
def test_precision_parity_compares_fp32_and_bf16_runs(tmp_path):
    """benchmarks/precision_parity.py --quick: one seed trained in both precisions on the tiny model,
    the runs table, the paired bootstrap, and a JSON line of finite figures."""
    import math

    work = tmp_path / "work"
    proc = subprocess.run([sys.executable, "benchmarks/precision_parity.py", "--quick", "--seeds", "1",
                           "--work-dir", str(work)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    rows = [line for line in out.splitlines() if line.startswith("| 1 | ")]
    assert [row.split(" | ")[1] for row in rows] == ["fp32", "bf16"], out[-3000:]
    assert "| last-exit test accuracy (%) |" in out and "| test hypervolume (x100) |" in out
    assert "training time fp32 / bf16:" in out and "\nverdict: bf16 " in out
    figures = json.loads(out.strip().splitlines()[-1])

    def numbers(value):
        if isinstance(value, dict):
            return [n for v in value.values() for n in numbers(v)]
        if isinstance(value, list):
            return [n for v in value for n in numbers(v)]
        return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else []

    assert all(math.isfinite(n) for n in numbers({k: v for k, v in figures.items() if k != "setting"}))
    assert [(r["seed"], r["precision"]) for r in figures["runs"]] == [(1, "fp32"), (1, "bf16")]
    for name in ("last_exit", "hypervolume"):
        ci = figures[name]
        assert ci["low"] <= ci["difference"] <= ci["high"], ci
        assert ci["difference"] == pytest.approx(ci["bf16_mean"] - ci["fp32_mean"])
    assert figures["time_ratio_fp32_over_bf16"] > 0 and figures["verdict"] in out
    # each run recorded the precision it trained in
    recorded = {json.loads(p.read_text())["config"]["precision"] for p in work.glob("*/summary.json")}
    assert recorded == {"fp32", "bf16"}
    # a second invocation reuses both finished runs
    again = subprocess.run(proc.args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count("already done") == 2


def test_a_study_invocation_counts_even_when_killed_outright(tmp_path, monkeypatch):
    """The study's time file holds each invocation from its start and keeps its wall time current,
    so a study killed with SIGKILL (a closed session) still reports the time it ran; a refused
    invocation leaves nothing behind."""
    import time

    study = load_study_script(monkeypatch)
    folder = tmp_path / "sweep"
    clock = study.InvocationClock(folder, time.time() - 100, {"command": "python benchmarks/study.py"}, every=0.05)
    time.sleep(0.3)  # never stopped: as if the process had been killed now
    record = json.loads((folder / study.TIME_FILE).read_text())
    (entry,) = record["invocations"]
    assert entry["finished"] is False and 100 <= entry["seconds"] < 110 and entry["command"] == "python benchmarks/study.py"
    clock.stop(finished=False)
    refused = study.InvocationClock(folder, time.time(), {"command": "again"})
    refused.discard()
    assert [i["command"] for i in json.loads((folder / study.TIME_FILE).read_text())["invocations"]] == [
        "python benchmarks/study.py"]
    empty = tmp_path / "refused"
    study.InvocationClock(empty, time.time(), {}).discard()
    assert not empty.exists()


def test_compare_arms_refuses_the_old_methods_flag():
    proc = subprocess.run([sys.executable, "benchmarks/compare_arms.py", "--methods", "clo", "fixed-uniform"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--methods was renamed to --arms" in proc.stderr
    assert "use --arms clo fixed-uniform" in proc.stderr


def test_the_learned_weights_table_shows_each_step_once():
    """The trainer logs the weights at the last step again when training ends: one row per step."""
    from types import SimpleNamespace

    from benchmarks.study_sections import _trajectory, weights_text

    weights = SimpleNamespace(names=["ce/1", "ce/2", "kd/1<-2"], trajectory=[
        {"step": 50, "weights": [1.1, 0.9, 1.0]}, {"step": 100, "weights": [1.3, 0.8, 0.9]},
        {"step": 100, "weights": [1.3, 0.8, 0.9]}])
    assert [step for step, _ in _trajectory(weights)] == [0, 50, 100]
    text = weights_text({"clo": [SimpleNamespace(seed=1, weights=weights)]})
    rows = [line for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [row.split(" | ")[0] for row in rows] == ["| 0", "| 50", "| 100"]
    assert "| 100 | 1.050 | 0.900 | 1.30 0.80 |" in text

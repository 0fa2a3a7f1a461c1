"""Budgets per arm: the cost model, the ledger that keeps a compute budget, the choice between TPE
and random search, and a real sweep that stays within its compute budget."""

from __future__ import annotations

import re

import pytest

from search_spaces import IntRange, LogUniform
from sweeps.budget import (MEASURED_OUTER_STEP_COST, BudgetLedger, TrialCost, expected_trials, resolve_outer_step_cost,
                           search_algorithm, used_compute)
from sweeps.presets import build_config
from trainers.errors import EXIT_BAD_INPUT, ConfigError
from test_sweep_helpers import history

FIXED = TrialCost(epochs=3, learned=False, outer_step_cost=4.2, default_outer_every=10)
CLO = TrialCost(epochs=3, learned=True, outer_step_cost=4.2, default_outer_every=10)
LEARNED_SPACE = {"lr": LogUniform(1e-5, 1e-4), "outer_every": IntRange(2, 20, log=True)}


def test_cost_of_a_trial_follows_its_outer_update_frequency():
    assert FIXED.whole({"outer_every": 2}) == 3.0  # fixed weights never pay for outer steps
    assert CLO.per_epoch({"outer_every": 10}) == pytest.approx(1.42)  # the measured 1.42x
    assert CLO.whole({"outer_every": 2}) == pytest.approx(3 * 3.1)
    assert CLO.whole({}) == pytest.approx(3 * 1.42)  # not searched: the trainer's default
    assert CLO.dearest(LEARNED_SPACE) == pytest.approx(3 * 3.1)
    assert CLO.cheapest(LEARNED_SPACE) == pytest.approx(3 * 1.21)
    assert FIXED.cheapest(LEARNED_SPACE) == FIXED.dearest(LEARNED_SPACE) == 3.0
    assert used_compute(2, {"outer_every": 4}, CLO) == pytest.approx(2 * 2.05)


def test_ledger_admits_a_trial_only_if_all_its_epochs_fit():
    ledger = BudgetLedger(limit=7.0, cost=FIXED)
    assert ledger.fits({}) and not ledger.running
    ledger.start("a", {})
    ledger.start("b", {})                     # 3 + 3 committed
    assert ledger.committed() == 6.0 and ledger.running == 2
    assert not ledger.fits({})                # 6 + 3 > 7
    ledger.result("b", 1)
    ledger.finish("b")                        # ASHA stopped b after 1 epoch: 2 epochs come back
    assert ledger.committed() == 4.0 and ledger.fits({})
    ledger.start("c", {})
    ledger.result("a", 3), ledger.finish("a"), ledger.result("c", 3), ledger.finish("c")
    assert ledger.committed() == 7.0 and not ledger.fits({}) and ledger.running == 0


def test_expected_trials_and_the_search_algorithm():
    assert expected_trials(24, None, FIXED, {}) == 24
    assert expected_trials(None, 30.0, FIXED, {}) == 10
    # a typical learned trial: outer_every at the geometric middle of 2..20 (6): 3 * 1.7 = 5.1
    assert expected_trials(None, 30.0, CLO, LEARNED_SPACE) == 5
    assert expected_trials(3, 30.0, FIXED, {}) == 3     # the trial cap binds
    assert search_algorithm(6, None) == ("random", 0)   # below 8 trials TPE never models anything
    assert search_algorithm(8, None) == ("tpe", 4)
    assert search_algorithm(16, None) == ("tpe", 8)
    assert search_algorithm(100, None) == ("tpe", 10)   # Optuna's own default at most
    assert search_algorithm(10, 10) == ("random", 0)    # every trial a startup trial: random search
    assert search_algorithm(30, 10) == ("tpe", 10)


def test_outer_step_cost_auto_charges_the_figure_measured_for_the_trials_device_and_precision():
    cpu = build_config(preset="smoke", overrides=["arms=[fixed-pabee,bilevel,clo]"])
    assert cpu.outer_step_cost == "auto" and cpu.trial_device() == "cpu"
    assert {m: cpu.arm_outer_step_cost(m) for m in cpu.arms} == {
        "fixed-pabee": 0.0, **MEASURED_OUTER_STEP_COST[("cpu", "fp32")]}
    # gpus_per_trial > 0: the trials train on CUDA, at train.precision
    gpu = build_config(preset="glue-bert")
    assert gpu.trial_device() == "cuda" and gpu.train_config("clo").precision == "bf16"
    assert gpu.arm_outer_step_cost("bilevel") == MEASURED_OUTER_STEP_COST[("cuda", "bf16")]["bilevel"]
    fp32 = build_config(preset="smoke", overrides=["gpus_per_trial=1", "train.device=cuda"])
    assert fp32.arm_outer_step_cost("clo") == MEASURED_OUTER_STEP_COST[("cuda", "fp32")]["clo"]
    # an explicit number, or one per arm, overrides the table (an arm it does not name keeps the table's)
    assert build_config(preset="smoke", overrides=["outer_step_cost=4.2"]).arm_outer_step_cost("clo") == 4.2
    per_arm = build_config(preset="smoke", overrides=["arms=[bilevel,clo]", "outer_step_cost={clo: 3.5}"])
    assert (per_arm.arm_outer_step_cost("clo"), per_arm.arm_outer_step_cost("bilevel")) == (
        3.5, MEASURED_OUTER_STEP_COST[("cpu", "fp32")]["bilevel"])
    assert resolve_outer_step_cost("auto", "fixed", "cuda", "bf16") == 0.0


@pytest.mark.parametrize("override, message", [
    ("outer_step_cost=-1", "outer_step_cost must be auto"),
    ("outer_step_cost=cheap", "outer_step_cost must be auto"),
    ("outer_step_cost={fixed: 2}", "one per learned arm such as"),
])
def test_a_bad_outer_step_cost_is_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        build_config(preset="smoke", overrides=[override])


@pytest.mark.parametrize("budget", [["trials=null", "budget_epochs=6"], []])
def test_an_unmeasured_setting_is_refused_never_guessed(monkeypatch, capsys, budget):
    # a (device, precision) missing from the table: with or without a compute budget the sweep will not
    # guess (the figure also orders the arms' turns); the message names the entry and how to measure it
    monkeypatch.delitem(MEASURED_OUTER_STEP_COST, ("cpu", "bf16"))
    monkeypatch.delitem(MEASURED_OUTER_STEP_COST, ("cuda", "bf16"))
    for device, command in (("cpu", r"python benchmarks/step_cost.py --device cpu --precision bf16"),
                            ("cuda", r"python benchmarks/gpu_check.py --precision bf16")):
        with pytest.raises(ConfigError, match=rf"no measured figure for {device}/bf16 .*`{command}` and add the entry "
                                              rf"\('{device}', 'bf16'\) there, or set outer_step_cost to a number"):
            resolve_outer_step_cost("auto", "clo", device, "bf16")
    with pytest.raises(ConfigError, match=r"no measured figure for cpu/bf16 "):
        build_config(preset="smoke", overrides=["train.precision=bf16", *budget])
    # the command line: exit 2, one error line, before anything starts
    sweep = load_sweep_script()
    assert sweep.main(["--preset", "smoke", "--set", "train.precision=bf16", *[a for b in budget for a in ("--set", b)],
                       "--print-config"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("error: outer_step_cost: auto has no measured figure for cpu/bf16") and err.count("\n") == 1
    build_config(preset="smoke", overrides=["train.precision=bf16", *budget, "outer_step_cost=3"])
    assert resolve_outer_step_cost("auto", "fixed", "cuda", "bf16") == 0.0  # fixed weights never pay


def test_the_measured_table_covers_every_device_and_precision():
    from trainers.config import PRECISIONS

    for device in ("cpu", "cuda"):
        for precision in (p for p in PRECISIONS if p != "auto"):
            assert set(MEASURED_OUTER_STEP_COST[(device, precision)]) == {"bilevel", "clo"}
    # bf16 speeds a θ-step up more than an outer step (its ℓ± sides stay fp32): dearer in θ-steps
    assert MEASURED_OUTER_STEP_COST[("cpu", "bf16")]["clo"] > MEASURED_OUTER_STEP_COST[("cpu", "fp32")]["clo"]


def load_sweep_script():
    """platform/sweep.py as a module (platform/ is no package: it would shadow the standard library's)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("sweep_script", Path(__file__).resolve().parents[1] / "platform" / "sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def arm_space(arm: str) -> dict:
    import search_spaces

    return search_spaces.get_space(arm, build_config(preset="smoke").space)


@pytest.mark.integration
def test_a_sweep_keeps_its_compute_budget(budget_sweep):
    """The session's budget sweep (tests/conftest.py; the registration tests use it too)."""
    budget, proc = budget_sweep["budget"], budget_sweep["proc"]
    assert budget == 7.0 and budget_sweep["arms"] == ["fixed-pabee", "clo"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("random search: about") == 2  # said plainly, once per arm
    mlflow_client = budget_sweep["client"]
    trials = budget_sweep["runs"]["trial"]
    measured = TrialCost(epochs=3, learned=True, outer_step_cost=MEASURED_OUTER_STEP_COST[("cpu", "fp32")]["clo"],
                         default_outer_every=10)  # outer_step_cost: auto on a CPU in fp32
    for arm, cost in (("fixed-pabee", FIXED), ("clo", measured)):
        mine = [r for r in trials if r.data.tags["arm"] == arm and r.data.tags["stage"] == "search"]
        assert mine
        used = sum(used_compute(len(history(mlflow_client, r.info.run_id, "objective")),
                                {"outer_every": int(r.data.params["outer_every"])} if "outer_every" in r.data.params else {},
                                cost) for r in mine)
        assert used <= budget + 1e-9, (arm, used)
        # and the search did not stop early: what is left cannot pay for the cheapest trial it could draw
        # (a drawn trial that does not fit is made cheaper when it can be), so no arm leaves a trial unspent
        assert budget - used < cost.cheapest(arm_space(arm)), (arm, used)
        row = re.search(rf"\| {arm} \| [^|]+\| ([0-9.]+) / 7 \|", proc.stdout)
        assert row and float(row.group(1)) == pytest.approx(used, abs=0.05)  # the report shows what was used

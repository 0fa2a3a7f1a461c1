"""The per-arm searcher and scheduler wrappers of the one-experiment search (sweeps.searchers), with
real Optuna studies and real Ray Tune ASHA schedulers (no Ray cluster needed), and
sweeps/'s import graph."""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from search_spaces import IntRange, LogUniform, to_optuna
from sweeps.budget import BudgetLedger, TrialCost
from sweeps.search import SearchTrials
from sweeps.searchers import ArmBudget, ArmSearch, PerArmScheduler
from sweeps.spec import Runtime, TrialSpec, param_space
from trainers.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
SPACE = {"lr": LogUniform(1e-5, 1e-3), "outer_every": IntRange(2, 20, log=True)}
CLO = TrialCost(epochs=2, learned=True, outer_step_cost=4.2, default_outer_every=10)
FIXED = TrialCost(epochs=2, learned=False, outer_step_cost=4.2, default_outer_every=10)


STORAGE = optuna.storages.InMemoryStorage()
RUNTIME = Runtime(experiment="search", storage_path="/tmp/s", metric="val_hypervolume")


def trials_of(arms: dict[str, dict]) -> SearchTrials:
    """The search stage's trial builder for arms with these trainer options."""
    return SearchTrials({arm: TrainConfig(**values) for arm, values in arms.items()}, RUNTIME)


def arm_of(suggestion: dict) -> str:
    """The arm of a suggested trial, read as Tune reads it: the suggestion merged into the param space."""
    return TrialSpec.from_config({**param_space(RUNTIME), **suggestion}).arm


def optuna_search(name: str) -> OptunaSearch:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return OptunaSearch(to_optuna(SPACE), metric="objective", mode="max", study_name=name, storage=STORAGE,
                        sampler=optuna.samplers.RandomSampler(seed=0))


def states(study: str) -> list[str]:
    return [t.state.name for t in optuna.load_study(study_name=study, storage=STORAGE).get_trials(deepcopy=False)]


def test_a_trial_cap_numbers_the_trials_and_ends_the_arm():
    arm = ArmBudget(optuna_search("cap"), max_trials=2)
    first, second = arm.suggest("a"), arm.suggest("b")
    assert (first["trial_number"], second["trial_number"]) == (1, 2)
    assert set(first) == {"lr", "outer_every", "trial_number"}
    assert arm.suggest("c") == Searcher.FINISHED and arm.work_left() == 0


def test_a_compute_budget_holds_a_drawn_trial_until_budget_comes_back():
    # 7 fixed-epochs: the first trial is admitted at its whole cost; the second draw must wait
    ledger = BudgetLedger(limit=2 * 3.1 + 0.5, cost=CLO)
    arm = ArmBudget(optuna_search("budget"), ledger=ledger)
    arm.suggest("a")
    ledger.per_epoch["a"] = CLO.per_epoch({"outer_every": 2})  # make "a" the dearest trial: 6.2 committed
    assert arm.suggest("b") is None and arm.waiting is not None
    waiting_config = dict(arm.waiting[1])
    assert arm.suggest("c") is None  # still no budget: the same drawn trial waits, nothing new is drawn
    assert arm.drawn == 2
    arm.on_trial_result("a", {"epoch": 1, "objective": 0.3, "training_iteration": 1})
    arm.on_trial_complete("a", {"epoch": 1, "objective": 0.3, "training_iteration": 1})  # stopped after 1 epoch
    admitted = arm.suggest("d")
    assert admitted is not None and admitted["trial_number"] == 2
    assert {k: admitted[k] for k in waiting_config} == waiting_config  # the configuration drawn before, not a new one
    # Tune's id "d" is routed to the id the searcher drew it under ("b")
    arm.on_trial_complete("d", {"epoch": 2, "objective": 0.5, "training_iteration": 2})
    assert arm.drawn_as == {"a": "a", "d": "b"}


def test_a_budget_that_cannot_pay_ends_the_arm_and_the_drawn_trial_is_failed():
    arm = ArmBudget(optuna_search("end"), ledger=BudgetLedger(limit=1.0, cost=CLO))  # less than any trial costs
    assert arm.suggest("a") == Searcher.FINISHED
    assert states("end") == ["FAIL"]  # drawn, never run


def test_arms_take_turns_dearest_work_first_and_results_go_to_their_arm():
    fixed = ArmBudget(optuna_search("turn-fixed"), max_trials=3, typical_cost=FIXED.whole({}))
    clo = ArmBudget(optuna_search("turn-clo"), max_trials=3, typical_cost=CLO.whole({}))
    search = ArmSearch({"fixed": fixed, "clo": clo}, trials_of({"fixed": {"method": "fixed"}, "clo": {"method": "clo"}}),
                       "objective", "max")
    arms = [arm_of(search.suggest(f"t{i}")) for i in range(6)]
    # clo's remaining work is dearer (3 x 2.84 fixed-epochs against 3 x 2): it starts first; then in turn
    assert arms[0] == "clo" and sorted(arms) == ["clo"] * 3 + ["fixed"] * 3
    assert search.suggest("t6") == Searcher.FINISHED
    spec = search.suggest_trial.spec("clo", {"lr": 1e-4, "outer_every": 5, "trial_number": 4})
    assert (spec.arm, spec.stage, spec.number, spec.sampled) == ("clo", "search", 4, {"lr": 1e-4, "outer_every": 5})
    assert spec.train == TrainConfig(method="clo", lr=1e-4, outer_every=5)  # the arm's config, the draw applied
    search.on_trial_complete("t0", {"objective": 0.4, "training_iteration": 1, "epoch": 1})  # a clo trial
    assert states("turn-clo").count("COMPLETE") == 1 and "COMPLETE" not in states("turn-fixed")


def test_an_arm_waiting_for_budget_does_not_block_the_others():
    waiting = ArmBudget(optuna_search("w"), ledger=BudgetLedger(limit=3.0, cost=FIXED))
    waiting.suggest("x")  # commits 2 of 3 fixed-epochs; the next trial (2) must wait
    free = ArmBudget(optuna_search("o"), max_trials=5)
    search = ArmSearch({"w": waiting, "o": free}, trials_of({"w": {}, "o": {}}), "objective", "max")
    assert [arm_of(search.suggest(f"t{i}")) for i in range(3)] == ["o", "o", "o"]


def fake_trial(trial_id: str, arm: str):
    """What a scheduler sees of a Tune trial: its id and its Tune config (a TrialSpec's)."""
    spec = TrialSpec(arm=arm, stage="search", number=1, train=TrainConfig(), sampled={}, runtime=RUNTIME)
    return SimpleNamespace(trial_id=trial_id, config=spec.to_config())


def test_asha_compares_trials_within_their_arm_only():
    """One arm uniformly worse: with one ASHA for all arms its trials would all stop at the first
    rung; with one per arm, its best trial is promoted as the best trial of any arm is."""
    asha = lambda: ASHAScheduler(time_attr="epoch", metric="objective", mode="max", max_t=4, grace_period=1,  # noqa: E731
                                 reduction_factor=2)
    per_arm, shared = PerArmScheduler({"good": asha(), "bad": asha()}), asha()
    decisions: dict[str, dict[str, str]] = {"per_arm": {}, "shared": {}}
    trials = [fake_trial(f"{arm}{i}", arm) for i in range(4) for arm in ("good", "bad")]
    for name, scheduler in (("per_arm", per_arm), ("shared", shared)):
        for trial in trials:
            scheduler.on_trial_add(None, trial)
        for trial in trials:
            index = int(trial.trial_id[-1])
            value = (0.8 if TrialSpec.of(trial).arm == "good" else 0.2) + 0.01 * index  # later ones a bit better
            decisions[name][trial.trial_id] = scheduler.on_trial_result(None, trial, {"epoch": 1, "objective": value})
    shared_bad = [d for t, d in decisions["shared"].items() if t.startswith("bad")]
    per_arm_bad = [d for t, d in decisions["per_arm"].items() if t.startswith("bad")]
    assert TrialScheduler.CONTINUE not in shared_bad  # the baseline: across arms, the worse arm never goes on
    assert per_arm_bad == [d for t, d in decisions["per_arm"].items() if t.startswith("good")]
    assert per_arm_bad.count(TrialScheduler.CONTINUE) >= 2


def import_graph() -> dict[str, set[str]]:
    """Every import of a sweeps module by another (top-level and inside functions)."""
    modules = {p.stem: p for p in (ROOT / "sweeps").glob("*.py") if p.stem != "__init__"}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "sweeps":
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sweeps."):
                found.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("sweeps.")}
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def test_sweeps_has_no_import_circle():
    graph = import_graph()
    assert {"search", "final", "experiment", "tracking", "plots"} <= set(graph)
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for dep in sorted(graph[module]):
            if state.get(dep) == "open":
                pytest.fail("import circle in sweeps/: " + " -> ".join(path[path.index(dep):] + [dep]))
            if dep not in state:
                visit(dep, path + [dep])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


# ---------------------------------------------------------------------------- one fidelity per study
def test_only_full_length_trials_are_complete_stopped_ones_are_pruned_with_their_intermediate_values():
    arm = ArmBudget(optuna_search("fidelity"), max_trials=4, full_epochs=3)
    ids = ["full", "stopped", "failed", "lost"]
    for trial_id in ids:
        arm.suggest(trial_id)
    for epoch in (1, 2):
        arm.on_trial_result("full", {"epoch": epoch, "objective": 0.1 * epoch, "training_iteration": epoch})
    arm.on_trial_complete("full", {"epoch": 3, "objective": 0.3, "training_iteration": 3})
    # ASHA stopped it at its first rung: Tune passes the stopping result to on_trial_complete only
    arm.on_trial_complete("stopped", {"epoch": 1, "objective": 0.05, "training_iteration": 1})
    arm.on_trial_result("failed", {"epoch": 1, "objective": 0.2, "training_iteration": 1})
    arm.on_trial_complete("failed", error=True)  # reported an epoch, then failed for good
    arm.on_trial_complete("lost")                # removed before it ever reported
    trials = optuna.load_study(study_name="fidelity", storage=STORAGE).get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED", "FAIL", "PRUNED"]
    assert trials[0].value == 0.3 and trials[0].intermediate_values == {1: 0.1, 2: 0.2}
    # its one-epoch objective as an intermediate value (Optuna keeps the last one as a pruned trial's value)
    assert trials[1].intermediate_values == {1: 0.05} and trials[1].value == 0.05
    assert trials[2].value is None and trials[2].intermediate_values == {1: 0.2}


def test_a_drawn_trial_that_does_not_fit_runs_as_its_cheapest_variant_that_does(tmp_path):
    from sweeps.searchers import Refit

    from sweeps.studies import journal_storage

    storage = str(tmp_path / "optuna.journal")  # the sweep's studies: a journal file (sweeps.studies)
    searcher = OptunaSearch(to_optuna(SPACE), metric="objective", mode="max", study_name="refit",
                            storage=journal_storage(storage),
                            sampler=optuna.samplers.RandomSampler(seed=0))
    # 2 epochs at outer_every 2 cost 2 x 3.1 = 6.2; only 2 x 1.42 = 2.84 (outer_every 10) is left after the first
    ledger = BudgetLedger(limit=6.2 + 3.0, cost=CLO)
    arm = ArmBudget(searcher, ledger=ledger, refit=Refit("refit", storage, (2, 20)), full_epochs=2)
    first = arm.suggest("a")
    ledger.per_epoch["a"] = CLO.per_epoch({"outer_every": 2})  # it drew the dearest: 6.2 committed
    arm.on_trial_complete("a", {"epoch": 2, "objective": 0.4, "training_iteration": 2})
    left = ledger.limit - ledger.committed()
    second = arm.suggest("b")
    assert second != Searcher.FINISHED and second["trial_number"] == 2 and first["trial_number"] == 1
    assert CLO.whole(second) <= left + 1e-9  # it fits ...
    assert CLO.whole({**second, "outer_every": second["outer_every"] - 1}) > left  # ... with the smallest outer_every that does
    arm.on_trial_complete("b", {"epoch": 2, "objective": 0.5, "training_iteration": 2})
    trials = optuna.load_study(study_name="refit", storage=journal_storage(storage)).get_trials(deepcopy=False)
    drawn, ran = trials[-2], trials[-1]
    assert drawn.state.name == "FAIL" and ran.state.name == "COMPLETE"  # the first draw never ran
    assert ran.params == {k: second[k] for k in ("lr", "outer_every")} and ran.params["lr"] == drawn.params["lr"]
    assert ledger.limit - ledger.committed() < CLO.cheapest(SPACE)  # nothing left that a trial could use
    assert arm.suggest("c") == Searcher.FINISHED


# ---------------------------------------------------------------------------- ASHA across a resume
def test_the_search_saves_every_arms_asha_rungs_and_restores_them_into_the_live_scheduler(tmp_path):
    """Tune saves the search algorithm but never the scheduler; the search carries it. A restored
    Tuner unpickles search and scheduler together (one pickle, as Tune's tuner.pkl), then restores
    the search from its last save: the live scheduler must get the rungs back."""
    import pickle

    asha = ASHAScheduler(time_attr="epoch", metric="objective", mode="max", max_t=4, grace_period=1, reduction_factor=2)
    scheduler = PerArmScheduler({"clo": asha})
    search = ArmSearch({"clo": ArmBudget(optuna_search("resume-asha"), max_trials=8)},
                       trials_of({"clo": {}}), "objective", "max", scheduler=scheduler)
    as_built = pickle.dumps({"search_alg": search, "scheduler": scheduler})  # what Tuner.restore starts from
    trials = [fake_trial(f"t{i}", "clo") for i in range(4)]
    for i, trial in enumerate(trials):
        scheduler.on_trial_add(None, trial)
        scheduler.on_trial_result(None, trial, {"epoch": 1, "objective": 0.5 + 0.1 * i})
    search.save(str(tmp_path / "searcher.pkl"))

    restored = pickle.loads(as_built)
    live = restored["scheduler"]
    assert restored["search_alg"].scheduler is live
    restored["search_alg"].restore(str(tmp_path / "searcher.pkl"))
    assert restored["search_alg"].scheduler is live  # Tune keeps driving this one
    late = fake_trial("t4", "clo")
    live.on_trial_add(None, late)
    # below the rung's recorded values: stopped, exactly as the uninterrupted scheduler decides
    assert live.on_trial_result(None, late, {"epoch": 1, "objective": 0.45}) == TrialScheduler.STOP
    scheduler.on_trial_add(None, late)
    assert scheduler.on_trial_result(None, late, {"epoch": 1, "objective": 0.45}) == TrialScheduler.STOP
    # and a fresh scheduler (the state before this fix) would have promoted it: the first at an empty rung
    fresh = pickle.loads(as_built)["scheduler"]
    fresh.on_trial_add(None, late)
    assert fresh.on_trial_result(None, late, {"epoch": 1, "objective": 0.45}) == TrialScheduler.CONTINUE

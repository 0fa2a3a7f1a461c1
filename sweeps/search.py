"""The search stage: every arm's search at the same time, in one Ray Tune experiment ``search``.

Each arm keeps what makes its search its own (``sweeps.searchers``): its Optuna study and sampler
(TPE with ``constant_liar``, so trials proposed while others run spread out; or random search when
the budget is too small for TPE to model anything), its budget in trials and/or compute, and its
ASHA rungs. The arms share the cluster: the sweep's ``max_concurrent`` trials run at once, whatever
their arm, so no slot idles while one arm's search drains. ``--resume`` restores the experiment
(``Tuner.restore``: finished trials are kept, interrupted ones continue from their last epoch
checkpoint).
"""

from __future__ import annotations

from dataclasses import dataclass

from sweeps.budget import BudgetLedger, TrialCost, budget_text, expected_trials, search_algorithm, used_compute
from sweeps.config import SweepConfig
from sweeps.experiment import MAX_TRIALS, Stage, run_experiment
from sweeps.placement import node_request, trial_node_resource
from sweeps.mlflow_view import COMPARED_OPTIONS, COMPARED_SEARCH_SETTINGS, split_params
from sweeps.progress import fmt_params, say
from sweeps.records import TrialRecord
from sweeps.spec import SEARCH, Runtime, TrialSpec
from sweeps.studies import journal_storage
from sweeps.tracking import Tracker
from trainers.config import TrainConfig
from trainers.layout import TAG_SWEEP


@dataclass
class ArmOutcome:
    """What one arm's search found."""

    arm: str
    parent_run_id: str
    records: list[TrialRecord]
    best: TrialRecord | None
    search_algorithm: str = "tpe"   # "tpe" or "random" (sweeps.budget.search_algorithm)
    cost: TrialCost | None = None   # what one of its trials costs (sweeps.budget)


@dataclass
class Arm:
    """One arm of the search: its space, its trainer config and what a trial of it costs."""

    name: str
    space: dict
    train: TrainConfig              # every trial of the arm trains this, with the searched values applied
    cost: TrialCost

    @property
    def epochs(self) -> int:
        return self.train.epochs

    def shared_options(self) -> dict:
        """The trainer options every trial of the arm shares (what its MLflow run lists)."""
        return {k: v for k, v in self.train.to_dict().items() if k not in self.space}


@dataclass
class SearchTrials:
    """Turns an arm's suggestion into the trial's ``TrialSpec``, handed to Tune as its suggestion
    (picklable: the searcher is saved with the experiment)."""

    trains: dict[str, TrainConfig]  # each arm's trainer config (Arm.train)
    runtime: Runtime

    def spec(self, arm: str, suggestion: dict) -> TrialSpec:
        sampled = {k: v for k, v in suggestion.items() if k != "trial_number"}
        return TrialSpec.drawn(arm, SEARCH, suggestion["trial_number"], self.trains[arm], sampled, self.runtime)

    def __call__(self, arm: str, suggestion: dict) -> dict:
        return self.spec(arm, suggestion).suggestion()


def arms(cfg: SweepConfig) -> list[Arm]:
    import search_spaces

    out = []
    for name in cfg.arms:
        space = search_spaces.get_space(name, cfg.space)
        train = cfg.train_config(name)  # validated once, with the whole config
        cost = TrialCost(epochs=train.epochs, learned=train.method != "fixed",
                         outer_step_cost=cfg.arm_outer_step_cost(name), default_outer_every=train.outer_every)
        out.append(Arm(name, space, train, cost))
    return out


def runtime(cfg: SweepConfig, experiment: str) -> Runtime:
    """The settings every trial of a stage shares; ``trial_node_resource`` from the Ray this driver
    is connected to (``sweeps.placement``: asked for when some alive node declares it)."""
    return Runtime(experiment=experiment, storage_path=cfg.storage_path, metric=cfg.metric,
                   cpus_per_trial=cfg.cpus_per_trial, gpus_per_trial=cfg.gpus_per_trial,
                   workers_per_trial=cfg.workers_per_trial, trial_logs=cfg.trial_logs,
                   env={k: str(v) for k, v in cfg.env.items()}, diverge_trials=dict(cfg.diverge_trials),
                   trial_node_resource=trial_node_resource(cfg.trial_nodes))


def trial_resources(cfg: SweepConfig, node_resource: str | None = None) -> dict:
    """One worker: the trial process holds its CPUs/GPUs. N workers: Ray Train's workers hold them
    and the trial's own process, which only waits on them, holds no CPU or GPU. Either way it holds
    a sliver of ``node_resource`` when given, so it runs on a trial node, never on the head."""
    if cfg.workers_per_trial == 1:
        return {"cpu": cfg.cpus_per_trial, "gpu": cfg.gpus_per_trial, **node_request(node_resource)}
    if node_resource:
        return {"cpu": 0, "gpu": 0, **node_request(node_resource)}
    return {"cpu": 0, "gpu": 0, "memory": 1}  # Tune refuses an empty request: one byte of memory


def arm_searcher(cfg: SweepConfig, arm: Arm):
    """The searcher of one arm, held to its budget, and a line saying which algorithm it runs."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    import search_spaces
    from sweeps.searchers import ArmBudget, Refit

    expected = expected_trials(cfg.trials, cfg.budget_epochs, arm.cost, arm.space)
    algorithm, startup = search_algorithm(expected, cfg.tpe_startup_trials)
    if algorithm == "tpe":
        # constant_liar: a trial proposed while others of the arm run is steered away from them
        sampler = optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=startup, constant_liar=True)
        note = f"TPE after {startup} random trials (about {expected} trials expected)"
    else:
        sampler = optuna.samplers.RandomSampler(seed=cfg.seed)
        note = (f"random search: about {expected} trials expected, too few for TPE to model anything "
                f"(it needs {startup or 4}+ startup trials and more after them)")
    searcher = OptunaSearch(search_spaces.to_optuna(arm.space), metric="objective", mode="max", sampler=sampler,
                            study_name=arm.name, storage=journal_storage(cfg.optuna_journal))
    ledger = BudgetLedger(cfg.budget_epochs, arm.cost) if cfg.budget_epochs is not None else None
    every = arm.space.get("outer_every")
    refit = Refit(arm.name, str(cfg.optuna_journal), (int(every.low), int(every.high))) if every is not None else None
    return (ArmBudget(searcher, cfg.trials, ledger, typical_cost(arm), full_epochs=arm.epochs, refit=refit),
            algorithm, note)


def typical_cost(arm: Arm) -> float:
    """A typical trial's whole cost in fixed-epochs (outer_every at the geometric middle of its range)."""
    every = arm.space.get("outer_every")
    middle = round((every.low * every.high) ** 0.5) if every is not None else arm.cost.default_outer_every
    return arm.cost.whole({"outer_every": middle})


def arm_scheduler(cfg: SweepConfig, epochs: int):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if cfg.scheduler == "none" or epochs < 2:
        return FIFOScheduler()
    return ASHAScheduler(time_attr="epoch", metric="objective", mode="max", max_t=epochs,
                         grace_period=cfg.grace_period, reduction_factor=cfg.reduction_factor)


def search_stage(cfg: SweepConfig, tracker: Tracker, resume: bool, trainer=None) -> list[ArmOutcome]:
    import search_spaces
    from sweeps.searchers import ArmSearch, PerArmScheduler

    the_arms = arms(cfg)
    parents, searchers, schedulers, algorithms = {}, {}, {}, {}
    for arm in the_arms:
        sweep_settings = {
            "trials": cfg.trials, "budget_epochs": cfg.budget_epochs, "outer_step_cost": arm.cost.outer_step_cost,
            "seed": cfg.seed, "objective": cfg.metric, "scheduler": cfg.scheduler,
            "max_concurrent": cfg.max_concurrent, "cpus_per_trial": cfg.cpus_per_trial,
            "gpus_per_trial": cfg.gpus_per_trial, "workers_per_trial": cfg.workers_per_trial,
            "max_failures": cfg.max_failures,
            **{f"space.{k}": v for k, v in search_spaces.describe(arm.space).items()}}
        options = {k: v for k, v in arm.shared_options().items() if k not in ("output_dir", "resume")}
        shown, other = split_params(sweep_settings, COMPARED_SEARCH_SETTINGS)
        shown_options, other_options = split_params(options, COMPARED_OPTIONS)
        parents[arm.name] = tracker.arm_run(
            arm.name, SEARCH, params={**shown, **shown_options}, settings={"sweep": other, "trainer": other_options},
            tags={TAG_SWEEP: cfg.name, "preset": cfg.preset}, metric=arm.train.primary_metric())
        searchers[arm.name], algorithms[arm.name], note = arm_searcher(cfg, arm)
        schedulers[arm.name] = arm_scheduler(cfg, arm.epochs)
        tracker.client.set_tag(parents[arm.name], "search_algorithm", algorithms[arm.name])
        if not resume:
            say(f"{arm.name}: searching {fmt_params(search_spaces.describe(arm.space))} with {budget_text(cfg)}; {note}")
    if not resume:
        say(f"search: every arm at once in one experiment, {cfg.max_concurrent} trials at a time in all, "
            f"{cfg.workers_per_trial} worker(s) each")
    by_name = {arm.name: arm for arm in the_arms}
    scheduler = PerArmScheduler(schedulers)  # saved with the search: Tune saves no scheduler
    the_runtime = runtime(cfg, SEARCH)
    stage = Stage(
        name=SEARCH, runtime=the_runtime, parents=parents,
        totals={arm.name: cfg.trials or "?" for arm in the_arms}, epochs=max(arm.epochs for arm in the_arms),
        resources=trial_resources(cfg, the_runtime.trial_node_resource),
        finished=lambda trials: all(budget_spent(cfg, by_name[name], mine) for name, mine in by_arm(trials, by_name).items()),
        search_alg=ArmSearch(searchers, SearchTrials({arm.name: arm.train for arm in the_arms}, the_runtime),
                             "objective", "max", scheduler=scheduler),
        scheduler=scheduler,
        num_samples=cfg.trials * len(the_arms) if cfg.trials and cfg.budget_epochs is None else MAX_TRIALS,
        max_concurrent=cfg.max_concurrent)
    records = run_experiment(cfg, stage, tracker, resume, trainer)
    close_optuna_trials(cfg, [arm.name for arm in the_arms])
    outcomes = []
    for arm in the_arms:
        mine = sorted((r for r in records if r.arm == arm.name), key=lambda r: r.number)
        completed = [r for r in mine if r.status == "completed"]
        best = max(completed, key=lambda r: r.objective) if completed else None
        outcomes.append(ArmOutcome(arm.name, parents[arm.name], mine, best, algorithms[arm.name], arm.cost))
    return outcomes


def by_arm(trials: list, arms_by_name: dict[str, Arm]) -> dict[str, list]:
    out: dict[str, list] = {name: [] for name in arms_by_name}
    for trial in trials:
        out.setdefault(TrialSpec.of(trial).arm, []).append(trial)
    return out


def budget_spent(cfg: SweepConfig, arm: Arm, finished: list) -> bool:
    """Every trial the arm's budget allows has run: the trial cap is reached, or what is left of the
    compute budget cannot pay for the cheapest trial the space can draw (the searcher ends the
    search only when not even the cheapest variant of a drawn trial fits and none runs; with more
    left, that cannot have happened, so the search was interrupted)."""
    if cfg.trials is not None and len(finished) >= cfg.trials:
        return True
    if cfg.budget_epochs is None:
        return False
    used = sum(used_compute(int((t.last_result or {}).get("epoch", 0) or 0), TrialSpec.of(t).train.to_dict(), arm.cost)
               for t in finished)
    return cfg.budget_epochs - used < arm.cost.cheapest(arm.space) - 1e-9


def close_optuna_trials(cfg: SweepConfig, studies: list[str]) -> None:
    """Optuna trials left RUNNING by a killed driver (asked, never told) are marked FAIL."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = journal_storage(cfg.optuna_journal)
    for name in studies:
        study = optuna.load_study(study_name=name, storage=storage)
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)

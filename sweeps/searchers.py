"""Every arm's search in one Tune experiment: searcher and scheduler wrappers, composed as Ray's
``ConcurrencyLimiter`` composes (wrap, delegate, never reach into the wrapped object's state).

    ArmSearch({arm: ArmBudget(OptunaSearch(...), trials, ledger)}, suggest_trial)  # the Tuner's search_alg
    PerArmScheduler({arm: ASHAScheduler(...)})                                   # the Tuner's scheduler

- ``ArmBudget`` wraps one arm's searcher: it numbers the arm's trials (1, 2, ... in the order the
  searcher drew them: Optuna's trial number + 1 for a fresh study), stops the arm at its trial cap,
  and keeps its compute budget (``sweeps.budget``). A drawn configuration whose whole cost does not
  fit waits, under the id the searcher drew it with, until running trials give budget back; when
  none runs, the arm's search ends and the searcher is told the drawn trial failed (it never ran).
- ``ArmSearch`` asks the arm with the most work left (its remaining budget, in fixed-epochs) for
  the next trial, skipping an arm that waits for budget or is finished, and routes every result
  back to the arm that suggested the trial. Dear trials (the learned arms') start early and cheap
  ones fill the end, so the search ends with few slots idle (longest work first). Each arm keeps
  its own sampler, study and budget; the Tuner's ``max_concurrent_trials`` is the whole sweep's.
- ``PerArmScheduler`` gives every arm its own scheduler (ASHA's rungs), so a trial is only ever
  compared with trials of its own arm; trials start in the order they were created, as Tune's FIFO.

**One fidelity per study.** A trial is told to its arm's Optuna study as COMPLETE only when it ran
its full length; one that ASHA stopped early is PRUNED (its last objective reported as an
intermediate value first, beside the per-epoch ones), one that failed is FAIL. So TPE models
full-length trials only, as Optuna's own pruning convention has it, and optuna-dashboard agrees.

**State across ``--resume``.** Tune saves the search algorithm with the experiment
(``TuneController.save_to_dir`` calls the searcher's ``save``), but never the scheduler: a
restored Tuner gets the scheduler as it was built, with empty rungs. So ``ArmSearch`` carries the
``PerArmScheduler`` and saves its state with its own, at the same moments as Tune saves the trials,
and on restore puts it back into the live scheduler: rungs and promotions go on as if the sweep had
never stopped.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any, Callable

from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from sweeps.budget import EPSILON, BudgetLedger
from sweeps.spec import TrialSpec


def save_state(self, checkpoint_path: str) -> None:
    """Tune's ``save`` of a wrapper: a pickle of it and of what it wraps (samplers, studies, rungs)."""
    with open(checkpoint_path, "wb") as file:
        pickle.dump(self.__dict__, file)


def restore_state(self, checkpoint_path: str) -> None:
    with open(checkpoint_path, "rb") as file:
        self.__dict__.update(pickle.load(file))


@dataclass(frozen=True)
class Refit:
    """Makes a drawn trial that does not fit what is left of an arm's budget cheaper: the same values
    with the smallest larger ``outer_every`` in the searched range whose whole cost fits. It is handed
    to the arm's Optuna study (``enqueue_trial``), so the searcher draws exactly it next and the study
    records what ran. Picklable: it is saved with the search."""

    study_name: str
    storage: str                     # the journal file the arm's study lives in (sweeps.studies)
    outer_every: tuple[int, int]     # the searched range of outer_every

    def cheaper(self, config: dict, ledger: BudgetLedger) -> dict | None:
        if "outer_every" not in config:
            return None
        left = ledger.limit - ledger.committed()
        for every in range(max(int(config["outer_every"]) + 1, self.outer_every[0]), self.outer_every[1] + 1):
            if ledger.cost.whole({**config, "outer_every": every}) <= left + EPSILON:
                return {**config, "outer_every": every}
        return None

    def enqueue(self, params: dict) -> None:
        import optuna

        from sweeps.studies import journal_storage

        optuna.load_study(study_name=self.study_name, storage=journal_storage(self.storage)).enqueue_trial(params)


class ArmBudget(Searcher):
    """One arm's searcher, numbered and held to the arm's budget in trials and/or compute."""

    def __init__(self, searcher: Searcher, max_trials: int | None = None, ledger: BudgetLedger | None = None,
                 typical_cost: float = 1.0, full_epochs: int | None = None, refit: Refit | None = None):
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher, self.max_trials, self.ledger = searcher, max_trials, ledger
        self.typical_cost = typical_cost                 # fixed-epochs of a typical trial of the arm
        self.full_epochs = full_epochs                   # a trial's full length: fewer epochs run = PRUNED
        self.refit = refit                               # makes a drawn trial that does not fit cheaper (see suggest)
        self.drawn = 0                                   # configurations the searcher drew: the next number
        self.started = 0                                 # trials admitted
        self.waiting: tuple[str, dict, int] | None = None  # (id it was drawn under, config, number)
        self.drawn_as: dict[str, str] = {}               # Tune's trial id -> the id the searcher knows it by
        self.finished = False

    def suggest(self, trial_id: str, draw_as: str | None = None) -> dict | str | None:
        """``draw_as``: the id the searcher draws under, if not Tune's (a refitted draw: the searcher
        knows the first draw's id as a finished trial)."""
        if self.finished:
            return Searcher.FINISHED
        if self.waiting is not None:
            drawn_as, config, number = self.waiting
        else:
            if self.max_trials is not None and self.started >= self.max_trials:
                self.finished = True
                return Searcher.FINISHED
            drawn_as = draw_as or trial_id
            config = self.searcher.suggest(drawn_as)
            if config is None or config == Searcher.FINISHED:
                self.finished = config == Searcher.FINISHED
                return config
            self.drawn += 1
            number = self.drawn
        if self.ledger is not None and not self.ledger.fits(config):
            if self.ledger.running:
                self.waiting = (drawn_as, config, number)
                return None
            # Nothing runs that could give budget back. The drawn trial never runs (FAIL); if a cheaper
            # variant of it fits what is left (a larger outer_every), the searcher is handed that one to
            # draw next, so the arm never leaves a trial's worth of budget unspent; else the search is over.
            self.waiting = None
            self.searcher.on_trial_complete(drawn_as, result=None, error=True)
            cheaper = self.refit.cheaper(config, self.ledger) if self.refit is not None else None
            if cheaper is None:
                self.finished = True
                return Searcher.FINISHED
            self.refit.enqueue(cheaper)
            self.drawn -= 1  # the number goes to the trial that runs
            return self.suggest(trial_id, draw_as=f"{drawn_as}-refit")
        self.waiting = None
        self.drawn_as[trial_id] = drawn_as
        self.started += 1
        if self.ledger is not None:
            self.ledger.start(trial_id, config)
        return {**config, "trial_number": number}

    def work_left(self) -> float:
        """The arm's remaining budget in fixed-epochs (its trial cap at a typical trial's cost, or
        its compute budget, whichever is smaller)."""
        if self.finished:
            return 0.0
        left = [] if self.max_trials is None else [(self.max_trials - self.started) * self.typical_cost]
        if self.ledger is not None:
            left.append(self.ledger.limit - self.ledger.committed())
        return max(0.0, min(left)) if left else 0.0

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        from optuna.exceptions import UpdateFinishedTrialError

        if self.ledger is not None:
            self.ledger.result(trial_id, result.get("epoch"))
        try:
            self.searcher.on_trial_result(self.drawn_as.get(trial_id, trial_id), result)
        except UpdateFinishedTrialError:
            pass  # a trial finished just before the driver was killed reports again on --resume; its study has it

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if self.ledger is not None:
            if result:
                self.ledger.result(trial_id, result.get("epoch"))
            self.ledger.finish(trial_id)
        drawn_as = self.drawn_as.get(trial_id, trial_id)
        if error:  # failed (lost for good, diverged): FAIL, whatever it reported before
            self.searcher.on_trial_complete(drawn_as, result=None, error=True)
        elif self.ran_full_length(result):
            self.searcher.on_trial_complete(drawn_as, result=result)
        else:
            # stopped early (ASHA): its last objective becomes an intermediate value (Tune does not
            # pass a stopping result to on_trial_result), then the study is told PRUNED
            if result and self.metric in result:
                self.on_trial_result(trial_id, result)
            self.searcher.on_trial_complete(drawn_as, result=None, error=False)

    def ran_full_length(self, result: dict | None) -> bool:
        if not result:
            return False
        if self.full_epochs is None:
            return True
        epoch = result.get("epoch")
        return isinstance(epoch, (int, float)) and epoch >= self.full_epochs

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the wrapped searcher has its own space, metric and mode


class ArmSearch(Searcher):
    """Several arms' searchers behind one search algorithm; the arms take turns."""

    def __init__(self, arms: dict[str, Searcher], suggest_trial: Callable[[str, dict], dict], metric: str, mode: str,
                 scheduler: TrialScheduler | None = None):
        super().__init__(metric=metric, mode=mode)
        self.arms = dict(arms)
        self.scheduler = scheduler       # saved and restored with the search (Tune saves no scheduler)
        # (arm, suggestion) -> what Tune gets for the trial: its TrialSpec's suggestion (sweeps.search.SearchTrials)
        self.suggest_trial = suggest_trial
        self.order = list(arms)
        self.turn = 0
        self.owner: dict[str, str] = {}  # trial id -> arm
        self.finished: set[str] = set()

    def suggest(self, trial_id: str) -> dict | str | None:
        rotation = [self.order[(self.turn + step) % len(self.order)] for step in range(len(self.order))]
        work = {arm: getattr(self.arms[arm], "work_left", lambda: 0.0)() for arm in rotation}
        for arm in sorted(rotation, key=lambda a: -work[a]):  # stable: ties go in turn
            if arm in self.finished:
                continue
            suggestion = self.arms[arm].suggest(trial_id)
            if suggestion == Searcher.FINISHED:
                self.finished.add(arm)
                continue
            if suggestion is None:  # waiting for budget (or for the searcher): the next arm may start one
                continue
            self.turn = (self.order.index(arm) + 1) % len(self.order)
            self.owner[trial_id] = arm
            return self.suggest_trial(arm, suggestion)
        return Searcher.FINISHED if len(self.finished) == len(self.order) else None

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.owner:
            self.arms[self.owner[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self.owner:
            self.arms[self.owner[trial_id]].on_trial_complete(trial_id, result=result, error=error)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # every arm's searcher has its own space; the param space only holds constants

    save = save_state

    def restore(self, checkpoint_path: str) -> None:
        """The saved search, and the saved scheduler state put back into the live scheduler (the one
        Tune restored with the Tuner and drives; the pickle holds a copy of it)."""
        live = self.scheduler
        restore_state(self, checkpoint_path)
        if live is not None and self.scheduler is not None and self.scheduler is not live:
            live.__dict__.update(self.scheduler.__dict__)
        self.scheduler = live


def trial_arm(trial) -> str:
    return TrialSpec.of(trial).arm


class PerArmScheduler(TrialScheduler):
    """One scheduler per arm: each trial's results go to its own arm's scheduler only."""

    def __init__(self, schedulers: dict[str, TrialScheduler], arm_of: Callable[[Any], str] = trial_arm):
        super().__init__()
        self.schedulers, self.arm_of = dict(schedulers), arm_of

    def _of(self, trial) -> TrialScheduler:
        return self.schedulers[self.arm_of(trial)]

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return all(s.set_search_properties(metric, mode, **spec) for s in self.schedulers.values())

    def on_trial_add(self, tune_controller, trial) -> None:
        self._of(trial).on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial) -> None:
        self._of(trial).on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        return self._of(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self._of(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._of(trial).on_trial_remove(tune_controller, trial)

    def choose_trial_to_run(self, tune_controller):
        return FIFOScheduler.choose_trial_to_run(self, tune_controller)

    def debug_string(self) -> str:
        return "\n".join(f"{arm}: {s.debug_string()}" for arm, s in self.schedulers.items())

    save, restore = save_state, restore_state

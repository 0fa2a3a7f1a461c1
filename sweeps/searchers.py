"""Every arm's search in one Tune experiment: searcher and scheduler wrappers, composed as Ray's
``ConcurrencyLimiter`` composes (wrap, delegate, never reach into the wrapped object's state).

    ArmSearch({arm: ArmBudget(OptunaSearch(...), trials, ledger)}, trial_part)   # the Tuner's search_alg
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

Tune saves the search algorithm with the experiment (``save``/``restore``, a pickle of the
wrappers and what they wrap) and the scheduler with the Tuner, so ``Tuner.restore`` continues
every arm where it stopped.
"""

from __future__ import annotations

import pickle
from typing import Any, Callable

from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from sweeps.budget import BudgetLedger


def save_state(self, checkpoint_path: str) -> None:
    """Tune's ``save`` of a wrapper: a pickle of it and of what it wraps (samplers, studies, rungs)."""
    with open(checkpoint_path, "wb") as file:
        pickle.dump(self.__dict__, file)


def restore_state(self, checkpoint_path: str) -> None:
    with open(checkpoint_path, "rb") as file:
        self.__dict__.update(pickle.load(file))


class ArmBudget(Searcher):
    """One arm's searcher, numbered and held to the arm's budget in trials and/or compute."""

    def __init__(self, searcher: Searcher, max_trials: int | None = None, ledger: BudgetLedger | None = None,
                 typical_cost: float = 1.0):
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher, self.max_trials, self.ledger = searcher, max_trials, ledger
        self.typical_cost = typical_cost                 # fixed-epochs of a typical trial of the arm
        self.drawn = 0                                   # configurations the searcher drew: the next number
        self.started = 0                                 # trials admitted
        self.waiting: tuple[str, dict, int] | None = None  # (id it was drawn under, config, number)
        self.drawn_as: dict[str, str] = {}               # Tune's trial id -> the id the searcher knows it by
        self.finished = False

    def suggest(self, trial_id: str) -> dict | str | None:
        if self.finished:
            return Searcher.FINISHED
        if self.waiting is not None:
            drawn_as, config, number = self.waiting
        else:
            if self.max_trials is not None and self.started >= self.max_trials:
                self.finished = True
                return Searcher.FINISHED
            config = self.searcher.suggest(trial_id)
            if config is None or config == Searcher.FINISHED:
                self.finished = config == Searcher.FINISHED
                return config
            self.drawn += 1
            drawn_as, number = trial_id, self.drawn
        if self.ledger is not None and not self.ledger.fits(config):
            if self.ledger.running:
                self.waiting = (drawn_as, config, number)
                return None
            # nothing runs that could give budget back: the arm's search is over; the drawn trial never ran
            self.waiting, self.finished = None, True
            self.searcher.on_trial_complete(drawn_as, result=None, error=True)
            return Searcher.FINISHED
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
        self.searcher.on_trial_complete(self.drawn_as.get(trial_id, trial_id), result=result, error=error)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the wrapped searcher has its own space, metric and mode


class ArmSearch(Searcher):
    """Several arms' searchers behind one search algorithm; the arms take turns."""

    def __init__(self, arms: dict[str, Searcher], trial_part: Callable[[str, dict], dict], metric: str, mode: str):
        super().__init__(metric=metric, mode=mode)
        self.arms = dict(arms)
        self.trial_part = trial_part     # (arm, suggestion) -> the trial part of the Tune config
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
            return {"trial": self.trial_part(arm, suggestion)}
        return Searcher.FINISHED if len(self.finished) == len(self.order) else None

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.owner:
            self.arms[self.owner[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self.owner:
            self.arms[self.owner[trial_id]].on_trial_complete(trial_id, result=result, error=error)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # every arm's searcher has its own space; the param space only holds constants

    save, restore = save_state, restore_state


def trial_arm(trial) -> str:
    return trial.config["trial"]["arm"]


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

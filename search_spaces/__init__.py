"""What Optuna searches, per arm of the comparison.

An *arm* is a loss-weight method with its settings: ``fixed-uniform``, ``fixed-pabee``,
``fixed-last`` (constant weights, ``ARMS`` gives their trainer options), ``bilevel`` and ``clo``
(learned weights). ``fixed`` alone is the fixed method with the sweep's ``train.scheme``.

Each method has one small module (``fixed.py``, ``bilevel.py``, ``clo.py``) holding a ``SPACE``:
a dict from a ``trainers.config.TrainConfig`` field name to a distribution. To search another
option, add a line to that dict; to change a range for one sweep, use the sweep config's
``space`` overrides (``--set space.lr=[1e-5,1e-4]``) instead of editing the module.

Learning rates are log-uniform: their effect is multiplicative, so a decade deserves the same
number of samples whatever its scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Union

from trainers.errors import ConfigError


@dataclass(frozen=True)
class LogUniform:
    """A float drawn uniformly in log space between ``low`` and ``high`` (both > 0)."""

    low: float
    high: float

    def check(self, name: str) -> None:
        if not (0 < self.low < self.high and math.isfinite(self.high)):
            raise ConfigError(f"search space '{name}': log-uniform needs 0 < low < high, got [{self.low}, {self.high}]")

    def to_optuna(self):
        import optuna

        return optuna.distributions.FloatDistribution(self.low, self.high, log=True)

    def describe(self) -> str:
        return f"loguniform({self.low:g}, {self.high:g})"


@dataclass(frozen=True)
class Uniform:
    """A float drawn uniformly between ``low`` and ``high``."""

    low: float
    high: float

    def check(self, name: str) -> None:
        if not (self.low < self.high and math.isfinite(self.low) and math.isfinite(self.high)):
            raise ConfigError(f"search space '{name}': uniform needs low < high, got [{self.low}, {self.high}]")

    def to_optuna(self):
        import optuna

        return optuna.distributions.FloatDistribution(self.low, self.high)

    def describe(self) -> str:
        return f"uniform({self.low:g}, {self.high:g})"


@dataclass(frozen=True)
class IntRange:
    """An integer between ``low`` and ``high`` inclusive (log-spaced when ``log``)."""

    low: int
    high: int
    log: bool = False

    def check(self, name: str) -> None:
        if not (isinstance(self.low, int) and isinstance(self.high, int) and 0 < self.low < self.high):
            raise ConfigError(f"search space '{name}': integer range needs 0 < low < high, got [{self.low}, {self.high}]")

    def to_optuna(self):
        import optuna

        return optuna.distributions.IntDistribution(self.low, self.high, log=self.log)

    def describe(self) -> str:
        return f"int{'log' if self.log else ''}({self.low}, {self.high})"


@dataclass(frozen=True)
class Choice:
    """One of a few values."""

    values: tuple

    def check(self, name: str) -> None:
        if len(self.values) < 1:
            raise ConfigError(f"search space '{name}': a choice needs at least one value")

    def to_optuna(self):
        import optuna

        return optuna.distributions.CategoricalDistribution(list(self.values))

    def describe(self) -> str:
        return "choice(" + ", ".join(str(v) for v in self.values) + ")"


Param = Union[LogUniform, Uniform, IntRange, Choice]


# The trainer options that make each arm; the sweep's shared ``train`` options fill in the rest.
ARMS: dict[str, dict[str, str]] = {
    "fixed-uniform": {"method": "fixed", "scheme": "uniform"},  # LeeBERT's objective, weights not learned
    "fixed-pabee": {"method": "fixed", "scheme": "pabee"},      # PABEE: Σ m·CE_m / Σ j, no KD
    "fixed-last": {"method": "fixed", "scheme": "last"},        # CE + KD from the last exit only
    "bilevel": {"method": "bilevel"},                           # DARTS-style bi-level
    "clo": {"method": "clo"},                                   # LeeBERT's cross-level optimization
    "fixed": {"method": "fixed"},                               # fixed with the sweep's train.scheme
}


def _spaces() -> dict[str, dict[str, Param]]:
    from search_spaces import bilevel, clo, fixed

    by_method = {"fixed": fixed.SPACE, "bilevel": bilevel.SPACE, "clo": clo.SPACE}
    return {arm: by_method[values["method"]] for arm, values in ARMS.items()}


def arms() -> list[str]:
    """Every arm a sweep can list in ``arms``."""
    return list(ARMS)


def arm_train_values(arm: str) -> dict[str, str]:
    """The trainer options of ``arm`` (method, and the scheme of the fixed arms)."""
    if arm not in ARMS:
        raise ConfigError(f"unknown arm '{arm}'; choose one of: {', '.join(ARMS)}")
    return dict(ARMS[arm])


def get_space(arm: str, overrides: dict[str, Any] | None = None) -> dict[str, Param]:
    """The space of ``arm`` (its loss-weight method's), with ``overrides`` applied.

    ``overrides`` maps a parameter to new bounds ``[low, high]`` (same distribution kind), to a
    list of values for a choice, or to ``null`` to stop searching it. A parameter that the
    arm does not search is ignored for that arm, so one override can serve every arm.
    """
    spaces = _spaces()
    if arm not in spaces:
        raise ConfigError(f"unknown arm '{arm}'; choose one of: {', '.join(spaces)}")
    space = dict(spaces[arm])
    for name, value in (overrides or {}).items():
        if name not in space:
            continue
        if value is None:
            del space[name]
            continue
        space[name] = _override(name, space[name], value)
    for name, param in space.items():
        param.check(name)
    return space


def _override(name: str, param: Param, value: Any) -> Param:
    if isinstance(param, Choice):
        if not isinstance(value, (list, tuple)) or not value:
            raise ConfigError(f"search space override '{name}' must be a list of values, got {value!r}")
        return Choice(tuple(value))
    if not (isinstance(value, (list, tuple)) and len(value) == 2):
        raise ConfigError(f"search space override '{name}' must be [low, high], got {value!r}")
    low, high = value
    try:
        if isinstance(param, IntRange):
            return replace(param, low=int(low), high=int(high))
        return replace(param, low=float(low), high=float(high))
    except (TypeError, ValueError):
        raise ConfigError(f"search space override '{name}' must hold two numbers, got {value!r}") from None


def all_parameters() -> set[str]:
    """Every parameter any arm searches (valid keys of the ``space`` overrides)."""
    return {name for space in _spaces().values() for name in space}


def to_optuna(space: dict[str, Param]) -> dict[str, Any]:
    return {name: param.to_optuna() for name, param in space.items()}


def describe(space: dict[str, Param]) -> dict[str, str]:
    return {name: param.describe() for name, param in space.items()}

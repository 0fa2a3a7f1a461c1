"""search_spaces/: what Optuna searches per arm."""

import dataclasses

import optuna
import pytest

import search_spaces
from search_spaces import Choice, IntRange, LogUniform, Uniform
from trainers.config import METHODS, TrainConfig
from trainers.errors import ConfigError


def test_every_trainer_method_has_an_arm_and_every_arm_a_space():
    arms = search_spaces.arms()
    assert {search_spaces.arm_train_values(a)["method"] for a in arms} == set(METHODS)
    assert {"fixed-uniform", "fixed-pabee", "fixed-last", "bilevel", "clo"} <= set(arms)
    for arm in arms:
        assert search_spaces.get_space(arm)
    with pytest.raises(ConfigError, match="choose one of"):
        search_spaces.arm_train_values("fixed-random")


@pytest.mark.parametrize("arm,scheme,kd", [("fixed-uniform", "uniform", "all"), ("fixed-pabee", "pabee", "none"),
                                           ("fixed-last", "last", "last")])
def test_fixed_arms_are_the_fixed_schemes_with_their_kd(arm, scheme, kd):
    cfg = TrainConfig.from_dict(search_spaces.arm_train_values(arm)).validate()
    assert (cfg.method, cfg.scheme, cfg.kd) == ("fixed", scheme, kd)
    assert set(search_spaces.get_space(arm)) == {"lr", "head_lr"}


@pytest.mark.parametrize("arm", ["bilevel", "clo"])
def test_learned_arms_search_the_outer_update_frequency(arm):
    every = search_spaces.get_space(arm)["outer_every"]
    assert isinstance(every, IntRange) and every.log and (every.low, every.high) == (2, 20)
    assert search_spaces.get_space(arm)["lr_outer"].high == pytest.approx(0.3)


def test_fixed_searches_the_inner_learning_rates_only():
    space = search_spaces.get_space("fixed")
    assert set(space) == {"lr", "head_lr"}


@pytest.mark.parametrize("method", ["bilevel", "clo"])
def test_learned_weight_methods_search_inner_and_outer_rates(method):
    space = search_spaces.get_space(method)
    assert {"lr", "head_lr", "lr_outer"} <= set(space)


@pytest.mark.parametrize("method", ["fixed", "bilevel", "clo"])
def test_learning_rates_are_log_uniform_and_sane(method):
    for name, param in search_spaces.get_space(method).items():
        if name in ("lr", "head_lr", "lr_outer", "xi"):
            assert isinstance(param, LogUniform), name
            assert 0 < param.low < param.high < 1, name
            dist = param.to_optuna()
            assert isinstance(dist, optuna.distributions.FloatDistribution) and dist.log


@pytest.mark.parametrize("method", ["fixed", "bilevel", "clo"])
def test_every_searched_name_is_a_trainer_option(method):
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(search_spaces.get_space(method)) <= fields


def test_the_same_inner_space_for_every_arm():
    """A fair comparison: the shared parameters are searched over the same ranges."""
    spaces = {arm: search_spaces.get_space(arm) for arm in search_spaces.arms()}
    for name in ("lr", "head_lr"):
        assert len({spaces[m][name] for m in spaces}) == 1


def test_overrides_change_bounds_drop_parameters_and_skip_other_arms():
    space = search_spaces.get_space("clo", {"lr": [1e-5, 1e-4], "lr_outer": None})
    assert space["lr"] == LogUniform(1e-5, 1e-4)
    assert "lr_outer" not in space
    assert set(search_spaces.get_space("fixed", {"lr_outer": [1e-3, 1e-2]})) == {"lr", "head_lr"}


@pytest.mark.parametrize("override", [{"lr": [1e-3, 1e-4]}, {"lr": [0, 1e-4]}, {"lr": 1e-4}, {"lr": ["a", "b"]}])
def test_bad_overrides_are_config_errors(override):
    with pytest.raises(ConfigError):
        search_spaces.get_space("clo", override)


def test_unknown_arm():
    with pytest.raises(ConfigError, match="unknown arm 'darts'"):
        search_spaces.get_space("darts")


def test_parameter_kinds_convert_to_optuna():
    assert Uniform(1.0, 4.0).to_optuna() == optuna.distributions.FloatDistribution(1.0, 4.0)
    assert IntRange(2, 20, log=True).to_optuna() == optuna.distributions.IntDistribution(2, 20, log=True)
    assert Choice(("all", "later")).to_optuna() == optuna.distributions.CategoricalDistribution(["all", "later"])
    described = search_spaces.describe(search_spaces.get_space("clo"))
    assert described["lr"].startswith("loguniform(")

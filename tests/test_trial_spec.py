"""A trial's ``TrialSpec`` and its Tune config: the one way a trial's config is built and read.
The spec's trainer config is a typed ``TrainConfig``; its Tune config is plain JSON (what Tune
writes to params.json); a searcher's draw and the final stage's options reach the trainer config
in one place (``TrialSpec.drawn``); and a trial's config is validated once, by the trainer."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from sweeps.spec import FINAL, SEARCH, Runtime, TrialSpec, param_space
from trainers.config import TrainConfig
from trainers.errors import ConfigError

RUNTIME = Runtime(experiment="search", storage_path="/tmp/s", metric="val_hypervolume", cpus_per_trial=2,
                  diverge_trials={"clo-3": 5})


def through_tune(config: dict) -> dict:
    """The config as a trial read back from the experiment's files sees it (params.json is JSON)."""
    return json.loads(json.dumps(config))


def test_a_drawn_trial_applies_its_sampled_values_to_the_arms_typed_config():
    arm = TrainConfig(method="clo", epochs=3, lr=5e-5, outer_every=10)
    spec = TrialSpec.drawn("clo", SEARCH, 3, arm, {"lr": 1e-4, "outer_every": 4}, RUNTIME)
    assert isinstance(spec.train, TrainConfig)
    assert (spec.train.method, spec.train.epochs, spec.train.lr, spec.train.outer_every) == ("clo", 3, 1e-4, 4)
    assert spec.sampled == {"lr": 1e-4, "outer_every": 4}
    assert (arm.lr, arm.outer_every) == (5e-5, 10)  # the arm's config is left as it was
    assert (spec.group, spec.label, spec.fault_step()) == ("clo", "clo trial 3", 5)
    with pytest.raises(ConfigError, match="unknown clo search trial key.*: learning_rate"):
        TrialSpec.drawn("clo", SEARCH, 4, arm, {"learning_rate": 1e-4}, RUNTIME)


def test_a_spec_round_trips_through_its_tune_config_typed():
    spec = TrialSpec.drawn("clo", SEARCH, 3, TrainConfig(method="clo", epochs=1), {"lr_outer": 0.2}, RUNTIME)
    config = through_tune(spec.to_config())
    assert set(config) == {"trial", "runtime"} and isinstance(config["trial"]["train"], dict)
    back = TrialSpec.from_config(config)
    assert back == spec and isinstance(back.train, TrainConfig) and back.train.lr_outer == 0.2
    assert TrialSpec.of(SimpleNamespace(config=config)) == spec
    # the search stage: the searcher suggests the trial part, the param space holds the runtime
    merged = {**through_tune(param_space(RUNTIME)), **through_tune(spec.suggestion())}
    assert TrialSpec.from_config(merged) == spec


def test_the_final_stage_grid_holds_one_spec_per_seed_with_final_train_then_the_seed():
    runtime = Runtime(experiment="final", storage_path="/tmp/s", metric="val_hypervolume")
    best = TrainConfig(method="clo", lr=3e-4, train_subset=100, wallclock_eval=True)
    specs = [TrialSpec.drawn("clo", FINAL, seed, best, {"seed": seed}, runtime,
                             options={"train_subset": None, "wallclock_eval": False}) for seed in (1, 2)]
    space = param_space(runtime, specs)
    grid = space["trial"]["grid_search"]
    assert len(grid) == 2 and space["runtime"] == runtime.to_dict()
    read = [TrialSpec.from_config(through_tune({"trial": part, "runtime": space["runtime"]})) for part in grid]
    assert read == specs
    assert [(s.train.seed, s.train.lr, s.train.train_subset, s.train.wallclock_eval) for s in read] == [
        (1, 3e-4, None, False), (2, 3e-4, None, False)]
    assert [(s.group, s.label, s.fault_step()) for s in read] == [
        ("final/clo", "final/clo seed 1", None), ("final/clo", "final/clo seed 2", None)]


def test_the_trainer_config_is_built_in_the_trial_and_validated_only_by_the_trainer(monkeypatch):
    calls = []
    validate = TrainConfig.validate
    monkeypatch.setattr(TrainConfig, "validate", lambda self: calls.append(self) or validate(self))
    spec = TrialSpec.from_config(through_tune(
        TrialSpec.drawn("clo", SEARCH, 3, TrainConfig(method="clo"), {"lr_outer": 0.2}, RUNTIME).to_config()))
    cfg = spec.to_train_config(output_dir="/tmp/x", resume=True)
    assert (cfg.method, cfg.lr_outer, cfg.threads, cfg.output_dir, cfg.resume) == ("clo", 0.2, 2, "/tmp/x", True)
    assert spec.train.output_dir != "/tmp/x"  # the spec is left as it travelled
    assert calls == []  # reading the spec and building the trainer's config validate nothing ...
    cfg.validate()      # ... the trainer does (trainers.train.run), once
    assert calls == [cfg]
    assert spec.to_train_config(threads=4).threads == 4  # a thread count given wins over one per reserved CPU

"""The sweep config and the command line's bad-input handling: one `error:` line, exit code 2,
and nothing started (no sweep folder, no Ray, no trial)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sweeps.preflight import check_ray_address, check_tracking_uri
from sweeps.presets import build_config, presets
from trainers.errors import EXIT_BAD_INPUT, ConfigError

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "platform" / "sweep.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------- presets
def test_presets_exist_and_validate():
    assert set(presets()) >= {"demo", "smoke", "glue-bert", "glue-albert"}
    for name in presets():
        cfg = build_config(preset=name)
        assert cfg.preset == name and ((cfg.trials or 0) > 0 or (cfg.budget_epochs or 0) > 0)
        assert Path(cfg.train_config("clo").deepspeed_config).is_file()


def test_study_preset_is_the_five_arms_under_one_compute_budget():
    cfg = build_config(preset="mr-study")
    assert cfg.arms == ["fixed-uniform", "fixed-pabee", "fixed-last", "bilevel", "clo"]
    assert cfg.trials is None and cfg.budget_epochs > 0
    assert cfg.final_seeds == [1, 2, 3] and cfg.reference_arm == "clo"
    assert cfg.final_train["train_subset"] is None and cfg.final_train["eval_subset"] is None  # all of MR
    assert cfg.train["train_subset"] and cfg.train["model"] == "minilm"


def test_final_stage_options_are_checked():
    with pytest.raises(ConfigError, match="final_train.seed cannot be set"):
        build_config(preset="smoke", overrides=["final_seeds=[1]", "final_train.seed=3"])
    with pytest.raises(ConfigError, match="lists a seed twice"):
        build_config(preset="smoke", overrides=["final_seeds=[1,1]"])
    with pytest.raises(ConfigError, match="reference_arm 'clo' is not among arms"):
        build_config(preset="smoke", overrides=["final_seeds=[1]", "arms=[fixed-uniform,bilevel]"])
    with pytest.raises(ConfigError, match="unknown final_train key"):
        build_config(preset="smoke", overrides=["final_seeds=[1]", "final_train.learning_rate=3"])
    with pytest.raises(ConfigError, match="defines accuracy, not matthews"):
        build_config(preset="smoke", overrides=["final_seeds=[1]", "train.task=cola"])
    with pytest.raises(ConfigError, match="budget in trials, in compute"):
        build_config(preset="smoke", overrides=["trials=null"])
    cfg = build_config(preset="smoke", overrides=["final_seeds=[4,5]", "final_train.epochs=1"])
    # --set merges into the default: the full training set, every model on the whole test set
    assert cfg.final_train == {"train_subset": None, "eval_subset": None, "epochs": 1}


def test_default_preset_is_the_cpu_demo():
    cfg = build_config()
    assert cfg.preset == "demo"
    assert cfg.arms == ["fixed", "bilevel", "clo"]
    assert cfg.train["task"] == "mr" and cfg.train["model"] == "minilm" and cfg.train["train_subset"]
    assert cfg.gpus_per_trial == 0 and cfg.train["deepspeed_config"].endswith("cpu_zero0.json")
    assert cfg.objective == "hypervolume" and cfg.metric == "val_hypervolume"


@pytest.mark.parametrize("preset,model", [("glue-bert", "bert-base-uncased"), ("glue-albert", "albert-base-v2")])
def test_gpu_presets_are_paper_scale(preset, model):
    cfg = build_config(preset=preset)
    train = cfg.train_config("clo")
    assert train.model == model and train.task in ("sst2", "mnli", "qnli", "qqp", "cola", "mrpc", "stsb", "rte")
    assert cfg.gpus_per_trial >= 1 and train.precision == "bf16"
    assert train.deepspeed_config.endswith("gpu_bf16_zero2.json")
    assert train.train_subset is None and train.max_length == 128


def test_the_paper_preset_is_albert_on_glue_with_the_five_arms():
    cfg = build_config(preset="leebert-paper")
    train = cfg.train_config("clo")
    assert cfg.arms == ["fixed-uniform", "fixed-pabee", "fixed-last", "bilevel", "clo"]
    assert train.model == "albert-base-v2" and train.task == "mnli" and train.precision == "bf16"
    assert (train.batch_size, train.max_length, train.epochs) == (32, 128, 5)  # docs/method.md's settings
    assert cfg.space["lr"][0] <= 2e-5 <= cfg.space["lr"][1]
    assert cfg.final_seeds == [1, 2, 3] and cfg.reference_arm == "clo" and cfg.gpus_per_trial >= 1
    for name in ("glue-bert", "glue-albert"):
        glue = build_config(preset=name)
        full_trials = glue.budget_epochs / glue.train_config("fixed-uniform").epochs  # of a fixed arm
        assert glue.arms == cfg.arms and full_trials * len(glue.arms) >= 4 * glue.max_concurrent


def test_a_searched_option_in_train_is_refused_with_how_to_pin_it():
    """No silent override: the searched value would replace train.lr_outer in every learned arm."""
    import search_spaces

    with pytest.raises(ConfigError, match=r"train\.lr_outer=0\.2 would be replaced by the searched value: bilevel, "
                                          r"clo search lr_outer; to pin it, also pass --set space\.lr_outer=null"):
        build_config(preset="smoke", overrides=["train.lr_outer=0.2"])
    pinned = build_config(preset="smoke", overrides=["train.lr_outer=0.2", "space.lr_outer=null"])
    assert pinned.train_config("clo").lr_outer == 0.2
    assert "lr_outer" not in search_spaces.get_space("clo", pinned.space)
    # an option no listed arm searches is a plain shared option
    fixed = build_config(preset="smoke", overrides=["train.lr_outer=0.2", "arms=[fixed]"])
    assert fixed.train_config("fixed").lr_outer == 0.2
    with pytest.raises(ConfigError, match="diverge_trials.clo-x"):
        build_config(preset="smoke", overrides=["diverge_trials.clo-x=3"])


def test_the_sweep_config_and_every_arms_trainer_config_are_validated_once(monkeypatch):
    """One validation at the edge: the sweep config once, each arm's trainer config once (and its
    final-stage variant once); building the search's arms afterwards validates nothing again."""
    from sweeps.config import SweepConfig
    from sweeps.search import arms
    from trainers.config import TrainConfig

    calls = {"sweep": 0, "train": []}
    validate_sweep, validate_train = SweepConfig.validate, TrainConfig.validate

    def count_sweep(self):
        calls["sweep"] += 1
        return validate_sweep(self)

    def count_train(self):
        calls["train"].append(self.method)
        return validate_train(self)

    monkeypatch.setattr(SweepConfig, "validate", count_sweep)
    monkeypatch.setattr(TrainConfig, "validate", count_train)
    cfg = build_config(preset="smoke", overrides=["arms=[fixed-uniform,clo]", "final_seeds=[1]",
                                                  "train.batch_size=16"])
    assert calls == {"sweep": 1, "train": ["fixed", "fixed", "clo", "clo"]}  # each arm: its config, then with final_train
    built = arms(cfg)
    assert [(a.name, type(a.train).__name__, a.train.batch_size) for a in built] == [
        ("fixed-uniform", "TrainConfig", 16), ("clo", "TrainConfig", 16)]
    assert built[1].train is cfg.train_config("clo")  # the validated config itself, not a copy read back from a dict
    assert cfg.arm_outer_step_cost("clo") > 0 and cfg.train_config("fixed-uniform").scheme == "uniform"
    assert calls == {"sweep": 1, "train": ["fixed", "fixed", "clo", "clo"]}  # nothing validated again
    assert "arm_configs" not in cfg.to_dict()  # derived by validate: never saved in sweep.json
    with pytest.raises(LookupError, match="no trainer config for arm 'bilevel'"):
        cfg.train_config("bilevel")


def test_layering_file_then_overrides_then_flags(tmp_path):
    file = tmp_path / "sweep.yaml"
    file.write_text("preset: smoke\ntrials: 5\ntrain:\n  epochs: 2\nspace:\n  lr: [1.0e-4, 1.0e-3]\n")
    cfg = build_config(config_file=str(file), overrides=["trials=3", "train.train_subset=300", "arms=[clo]"],
                       flags={"objective": "last_exit"})
    assert cfg.preset == "smoke" and cfg.trials == 3 and cfg.arms == ["clo"]
    assert cfg.train["epochs"] == 2 and cfg.train["train_subset"] == 300 and cfg.train["model"] == "tiny-random"
    assert cfg.space["lr"] == [1e-4, 1e-3] and cfg.metric == "val_last_exit"


# ---------------------------------------------------------------------------- bad input (in process)
@pytest.mark.parametrize("kwargs,message", [
    (dict(preset="nope"), "unknown preset 'nope'"),
    (dict(overrides=["arms=[clo,darts]"]), "unknown arm 'darts'"),
    (dict(overrides=["budget=3"]), "unknown sweep config key(s): budget"),
    (dict(overrides=["train.learning_rate=1e-4"]), "unknown train key(s): learning_rate"),
    (dict(overrides=["space.dropout=[0.1,0.2]"]), "unknown search-space key(s): dropout"),
    (dict(overrides=["trials=0"]), "trials must be > 0"),
    (dict(overrides=["trials=-2"]), "trials must be > 0"),
    (dict(overrides=["trials=two"]), "trials must be an int"),
    (dict(overrides=["objective=accuracy"]), "unknown objective 'accuracy'"),
    (dict(overrides=["trial_nodes=head"]), "unknown trial_nodes 'head'; choose one of: auto, required, anywhere"),
    (dict(overrides=["train.method=clo"]), "train.method cannot be set"),
    (dict(overrides=["train.epochs=0"]), "epochs must be > 0"),
    (dict(overrides=["space.lr=[1e-3,1e-5]"]), "log-uniform needs 0 < low < high"),
])
def test_bad_config_values(kwargs, message):
    with pytest.raises(ConfigError) as err:
        build_config(**kwargs)
    assert message in str(err.value)


def test_malformed_yaml(tmp_path):
    file = tmp_path / "bad.yaml"
    file.write_text("trials: [1, 2\narms: clo\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        build_config(config_file=str(file))
    file.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        build_config(config_file=str(file))


# ---------------------------------------------------------------------------- renamed: methods -> arms
def test_the_old_methods_key_is_refused_with_its_new_name(tmp_path, monkeypatch):
    file = tmp_path / "old.yaml"
    file.write_text("preset: smoke\nmethods: [clo, fixed-uniform]\n")
    with pytest.raises(ConfigError) as err:
        build_config(config_file=str(file))
    assert "`methods` was renamed to `arms`" in str(err.value)
    assert "arms: [clo, fixed-uniform]" in str(err.value) and "--set arms=[clo,fixed-uniform]" in str(err.value)
    with pytest.raises(ConfigError, match=r"was renamed to `arms` .*: write --arms clo, --set arms=\[clo\]"):
        build_config(preset="smoke", overrides=["methods=[clo]"])
    with pytest.raises(ConfigError, match="renamed to `arms`"):
        build_config(preset="smoke", flags={"methods": ["clo"]})
    # a preset of one's own that still says `methods:`
    presets_dir = tmp_path / "presets"
    presets_dir.mkdir()
    (presets_dir / "mine.yaml").write_text("methods: [clo]\ntrials: 1\n")
    monkeypatch.setattr("sweeps.presets.PRESETS_DIR", presets_dir)
    with pytest.raises(ConfigError, match="renamed to `arms`"):
        build_config(preset="mine")


def test_a_sweep_saved_before_the_rename_resumes_with_its_arms(tmp_path):
    """sweep.json of a sweep started before the rename holds `methods`: read as `arms`, silently."""
    from sweeps.state import STATE_FILE, read_state, resume_config, save_state

    flags = {"root": str(tmp_path), "name": "old-sweep"}
    saved = build_config(preset="smoke", overrides=["arms=[fixed-uniform,clo]"], flags=flags).to_dict()
    saved = {("methods" if key == "arms" else key): value for key, value in saved.items()}
    folder = tmp_path / "old-sweep"
    folder.mkdir()
    (folder / STATE_FILE).write_text(json.dumps(saved))
    state = read_state(folder)
    assert state["arms"] == ["fixed-uniform", "clo"] and "methods" not in state
    resumed = resume_config(build_config(preset="smoke", flags=flags))
    assert resumed.name == "old-sweep" and resumed.arms == ["fixed-uniform", "clo"]
    save_state(resumed)  # written back in the new keys
    again = json.loads((folder / STATE_FILE).read_text())
    assert again["arms"] == ["fixed-uniform", "clo"] and "methods" not in again


def test_a_sweep_whose_studies_are_in_the_old_sqlite_file_is_not_resumed_and_says_how_to_go_on(tmp_path):
    """Studies live in optuna.journal now; a folder with only optuna.db (an older version's) is refused."""
    from sweeps.state import resume_config, save_state

    flags = {"root": str(tmp_path), "name": "sqlite-sweep"}
    save_state(build_config(preset="smoke", flags=flags))
    (tmp_path / "sqlite-sweep" / "optuna.db").write_bytes(b"SQLite format 3\x00")
    with pytest.raises(ConfigError) as err:
        resume_config(build_config(preset="smoke", flags=flags))
    message = str(err.value)
    assert "optuna.db" in message and "optuna.journal" in message
    assert "Finish it with the version that started it, or start a new sweep (another --name)" in message
    (tmp_path / "sqlite-sweep" / "optuna.journal").write_text("")  # a journal beside it: resumed from the journal
    assert resume_config(build_config(preset="smoke", flags=flags)).name == "sqlite-sweep"


def test_unreachable_services_are_config_errors(tmp_path):
    port = free_port()
    with pytest.raises(ConfigError, match="not reachable"):
        check_tracking_uri(f"http://127.0.0.1:{port}")
    with pytest.raises(ConfigError, match="cannot create folder"):
        check_tracking_uri("sqlite:////proc/leebert/mlflow.db")
    with pytest.raises(ConfigError, match="file store"):
        check_tracking_uri(str(tmp_path / "mlruns"))
    check_tracking_uri(f"sqlite:///{tmp_path}/new/dir/mlflow.db")
    assert not (tmp_path / "new").exists(), "checked, not created: a refused sweep leaves nothing behind"
    with pytest.raises(ConfigError, match="cannot reach the Ray cluster"):
        check_ray_address(f"127.0.0.1:{port}")
    with pytest.raises(ConfigError, match="dashboard"):
        check_ray_address("http://127.0.0.1:8265")


# ---------------------------------------------------------------------------- bad input (command line)
def run_cli(*args, tmp_path, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update({"RAY_AUTH_MODE": "disabled", **(env_extra or {})})
    return subprocess.run([sys.executable, str(SCRIPT), "--root", str(tmp_path / "sweeps"), *args],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)


@pytest.mark.parametrize("args,message", [
    (["--preset", "nope"], "unknown preset 'nope'"),
    (["--arms", "clo,darts"], "unknown arm 'darts'"),
    (["--methods", "clo,fixed"], "the flag --methods was renamed to `arms`"),
    (["--set", "methods=[clo]"], "the config key `methods` was renamed to `arms`"),
    (["--set", "budget=3"], "unknown sweep config key(s)"),
    (["--trials", "0"], "trials must be > 0"),
    (["--tracking-uri", "http://127.0.0.1:{port}"], "MLflow tracking server http://127.0.0.1:{port} is not reachable"),
    (["--tracking-uri", "sqlite:////proc/leebert/mlflow.db"], "cannot create folder"),
    (["--ray-address", "127.0.0.1:{port}"], "cannot reach the Ray cluster at 127.0.0.1:{port}"),
    (["--resume", "--preset", "smoke"], "--resume: no 'smoke' sweep found"),
    (["--set", "train.lr_outer=0.2"], "train.lr_outer=0.2 would be replaced by the searched value"),
    (["--set", "train.batch_sise=16"], "unknown train key(s): batch_sise"),
    (["--set", "train.batch_size=0"], "batch_size must be > 0 (got 0)"),
    (["--set", "train.batch_size=7"], "train.batch_size 7 must split evenly"),
    (["--set", "final_seeds=[1]", "--set", "final_train.lr=0.001"],
     "final_train.lr=0.001 would replace the searched value in the retraining"),
])
def test_command_line_bad_input_exits_2_before_anything_starts(tmp_path, args, message):
    port = str(free_port())
    args = [a.replace("{port}", port) for a in args]
    proc = run_cli("--preset", "smoke", *args, tmp_path=tmp_path)
    assert proc.returncode == EXIT_BAD_INPUT, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert message.replace("{port}", port) in lines[0]
    assert "[sweep]" not in proc.stdout  # nothing started
    assert not (tmp_path / "sweeps").exists() or not any((tmp_path / "sweeps").rglob("ray"))


def test_malformed_yaml_on_the_command_line(tmp_path):
    file = tmp_path / "bad.yaml"
    file.write_text("trials: 3\n  arms: [clo\n")
    proc = run_cli("--config", str(file), tmp_path=tmp_path)
    assert proc.returncode == EXIT_BAD_INPUT
    assert proc.stderr.startswith("error: config file") and "not valid YAML" in proc.stderr


def test_ray_address_from_the_environment_is_checked_too(tmp_path):
    port = free_port()
    proc = run_cli("--preset", "smoke", tmp_path=tmp_path, env_extra={"RAY_ADDRESS": f"127.0.0.1:{port}"})
    assert proc.returncode == EXIT_BAD_INPUT and "cannot reach the Ray cluster" in proc.stderr


def test_help_explains_presets_and_keys(tmp_path):
    proc = run_cli("--help", tmp_path=tmp_path)
    assert proc.returncode == 0
    for text in ("demo", "smoke", "glue-bert", "glue-albert", "--set KEY=VALUE", "trials", "tracking_uri",
                 "ray_address", "--resume", "objective"):
        assert text in proc.stdout


def test_the_driver_validates_every_preset_without_importing_torch():
    """The sweep driver's modules and the validation of every preset (each arm's trainer config
    included) leave torch, transformers and DeepSpeed unimported: the driver never trains, and
    torch alone costs a process about 2.4 CPU-s, paid by every sweep and every bad-input exit.
    (trainers.errors, trainers.model_source and trainers.pareto are torch-free for this.)"""
    code = ("import sys; from sweeps import final, report, runner, search, timing; "
            "from sweeps.presets import build_config, presets; configs = [build_config(preset=p) for p in presets()]; "
            "print(len(configs), sorted(m for m in ('torch', 'transformers', 'deepspeed') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    count, imported = proc.stdout.strip().split(" ", 1)
    assert int(count) == len(presets()) >= 5 and imported == "[]", proc.stdout


def test_existing_sweep_needs_resume(tmp_path):
    (tmp_path / "sweeps" / "taken").mkdir(parents=True)
    (tmp_path / "sweeps" / "taken" / "sweep.json").write_text("{}")
    proc = run_cli("--preset", "smoke", "--name", "taken", tmp_path=tmp_path)
    assert proc.returncode == EXIT_BAD_INPUT and "already exists" in proc.stderr and "--resume" in proc.stderr


def test_every_preset_that_compares_arms_gives_them_the_same_compute():
    """A preset whose final stage compares arms budgets compute, not trials: a learned arm's trial
    costs 1.1-2.3x a fixed one's, so equal trial counts would hand it more compute."""
    compared = 0
    for name in presets():
        cfg = build_config(preset=name)
        if cfg.final_seeds and len(cfg.arms) > 1:
            compared += 1
            assert cfg.budget_epochs is not None and cfg.trials is None, name
    assert compared >= 5  # demo, mr-study, glue-bert, glue-albert, leebert-paper


def test_final_train_cannot_override_a_searched_value():
    with pytest.raises(ConfigError, match=r"final_train.lr=0.001 would replace the searched value .* \(--set space.lr=null"):
        build_config(preset="smoke", overrides=["final_seeds=[1]", "final_train.lr=0.001"])
    # pinned for the search too: one value for every arm, in the search and in the retraining
    cfg = build_config(preset="smoke", overrides=["final_seeds=[1]", "space.lr=null", "train.lr=0.001", "final_train.lr=0.001"])
    assert cfg.final_train["lr"] == 0.001

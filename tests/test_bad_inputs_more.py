"""Bad inputs caught before the work starts, with nothing left behind (issue 22).

Every bad input gets exit code 2 and one ``error:`` line that names the problem and the fix, in
well under 10 s where no training is needed, and writes nothing. The trainer's and the sweep's
command lines are called in process (``main(argv)``), which keeps this module fast; a few checks
need a subprocess (a shell without the venv on PATH). Also here: checkpoint retention
(``--keep-checkpoints``), the commands the sweep prints, and the help texts.
"""

from __future__ import annotations

import os
import runpy
import shlex
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest

from trainers import engine as ds
from trainers.config import TrainConfig
from trainers.errors import ConfigError
from trainers.train import main, run

ROOT = Path(__file__).resolve().parents[1]
FAST = 10.0  # seconds: the acceptance bound for a refusal that needs no training


def sweep_cli() -> dict:
    return runpy.run_path(str(ROOT / "platform" / "sweep.py"), run_name="sweep_cli")


def one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


# ---------------------------------------------------------------------------- the trainer
def trainer_refuses(tmp_path, capsys, argv: list[str], message: str, base: bool = True) -> str:
    """``base``: a tiny run's flags first (flags override a --config file's values)."""
    out = tmp_path / "run"
    started = time.perf_counter()
    try:
        code = main([*(["--model", "tiny-random", "--train-subset", "64"] if base else []), "--output-dir", str(out), *argv])
    except SystemExit as exit_:  # argparse's own refusals
        code = exit_.code
    elapsed = time.perf_counter() - started
    line = one_error_line(capsys)
    assert code == 2, line
    assert message in line, line
    assert elapsed < FAST, f"{elapsed:.1f} s"
    assert not out.exists() or not any(out.iterdir()), "a refused run writes nothing"
    return line


CONFIG_FILE_VALUES = [  # (YAML text, message): a value of the wrong type in a --config file
    ("lr: abc\n", "lr must be a number such as 5e-05, got 'abc' (str)"),
    ("epochs: two\n", "epochs must be a whole number such as 2, got 'two'"),
    ("epochs: 2.5\n", "epochs must be a whole number"),
    ("batch_size: true\n", "batch_size must be a whole number"),
    ("resume: 1\n", "resume must be true or false"),
    ("task: 5\n", "task must be a string or null"),
    ("seed: [1, 2]\n", "seed must be a whole number"),
    ("dropout: high\n", "dropout must be a number or null"),
    ("model: null\n", "model must be a string such as 'minilm'"),
    ("scheme: [uniform]\n", "scheme must be a string"),
    ("head_lr: {a: 1}\n", "head_lr must be a number such as 0.001 or null"),
    ("train_subset: 1e3\n", "train_subset must be a whole number"),
    ("keep_checkpoints: many\n", "keep_checkpoints must be a whole number"),
]


@pytest.mark.parametrize("text,message", CONFIG_FILE_VALUES)
def test_a_config_value_of_the_wrong_type_names_the_field(tmp_path, capsys, text, message):
    tiny_run = "".join(f"{key}: {value}\n" for key, value in (("model", "tiny-random"), ("train_subset", 64))
                       if not text.startswith(key + ":"))
    config = write(tmp_path / "bad.yaml", tiny_run + text)
    trainer_refuses(tmp_path, capsys, ["--config", str(config)], message, base=False)


def test_a_yaml_number_read_as_a_string_is_still_a_number(tmp_path):
    """YAML 1.1 reads `1e-4` (no dot) as a string: a float field takes it as the number it is."""
    from trainers.cli import config_from_args
    from trainers.train import parser

    config = write(tmp_path / "ok.yaml", "lr: 1e-4\nepochs: 3\ntemperature: 2\n")
    cfg = config_from_args(parser().parse_args(["--config", str(config)]))
    assert cfg.lr == 1e-4 and isinstance(cfg.lr, float) and cfg.epochs == 3 and cfg.temperature == 2.0
    assert isinstance(cfg.temperature, float)


BAD_FILES = [  # (file content, message): files the run depends on that cannot be used
    (b"\xff\xfe\x00b\x00i\x00n", "is not a text file"),
    ("task: mr\x00\n", "is not valid YAML"),
    ("- lr\n- 0.1\n", "must hold a mapping"),
]


@pytest.mark.parametrize("content,message", BAD_FILES)
def test_an_unusable_config_file_is_one_error_line(tmp_path, capsys, content, message):
    config = write(tmp_path / "bad.yaml", content)
    trainer_refuses(tmp_path, capsys, ["--config", str(config)], message)


def test_a_config_folder_is_not_a_config_file(tmp_path, capsys):
    (tmp_path / "folder.yaml").mkdir()
    trainer_refuses(tmp_path, capsys, ["--config", str(tmp_path / "folder.yaml")], "not found")


DEEPSPEED_CONFIGS = [
    ('{"train_batch_size": 16,}', "is not valid JSON (line 1"),
    ("zero_optimization:\n  stage: 1\n", "is not valid JSON"),
    ("[1, 2]", "must hold a JSON object"),
    (b"\x89PNG\r\n\x1a\n\xff", "is not a text file"),
    ("", "is not valid JSON"),
]


@pytest.mark.parametrize("content,message", DEEPSPEED_CONFIGS)
def test_a_deepspeed_config_that_is_not_json_is_refused_before_any_work(tmp_path, capsys, content, message):
    config = write(tmp_path / "ds.json", content)
    line = trainer_refuses(tmp_path, capsys, ["--deepspeed-config", str(config)], message)
    assert "DeepSpeed config" in line


def test_a_missing_deepspeed_config(tmp_path, capsys):
    trainer_refuses(tmp_path, capsys, ["--deepspeed-config", "clusters/deepspeed/nope.json"], "not found")


def test_an_output_dir_that_is_a_file_is_refused_before_training(tmp_path, capsys):
    taken = write(tmp_path / "taken", "a file")
    line = trainer_refuses(tmp_path, capsys, ["--output-dir", str(taken)], "is a file")
    assert "--output-dir" in line and taken.read_text() == "a file"
    trainer_refuses(tmp_path, capsys, ["--output-dir", str(taken / "run")], f"lies under '{taken}', which is a file")


def test_a_model_folder_without_a_config_is_refused(tmp_path, capsys):
    (tmp_path / "model").mkdir()
    write(tmp_path / "model" / "weights.bin", b"\x00")
    trainer_refuses(tmp_path, capsys, ["--model", str(tmp_path / "model")], "holds no config.json")
    trainer_refuses(tmp_path, capsys, ["--model", str(tmp_path / "model" / "weights.bin")], "is not a folder")


FLAGS = [  # (flags, message): one bad flag each
    (["--keep-checkpoints", "0"], "keep_checkpoints must be > 0 (got 0)"),
    (["--epochs", "abc"], "argument --epochs: invalid int value: 'abc'"),
    (["--lr", "fast"], "argument --lr: invalid float value: 'fast'"),
    (["--lr", "nan"], "lr must be a positive number (got nan)"),
    (["--lr", "inf"], "lr must be a positive number (got inf)"),
    (["--temperature", "-1"], "temperature must be a positive number"),
    (["--warmup-ratio", "1"], "warmup_ratio must be in [0, 1)"),
    (["--dropout", "1"], "dropout must be in [0, 1)"),
    (["--validation-fraction", "0"], "validation_fraction must be in (0, 1)"),
    (["--zero-stage", "3"], "zero_stage must be 0, 1 or 2"),
    (["--threads", "0"], "threads must be > 0"),
    (["--eval-batch-size", "0"], "eval_batch_size must be > 0"),
    (["--wallclock-repeats", "0"], "wallclock_repeats must be > 0"),
    (["--head-lr", "0"], "head_lr must be > 0"),
    (["--xi", "-1", "--method", "clo"], "xi must be > 0"),
    (["--fd-eps", "0"], "fd_eps must be a positive number"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--precision", "fp16"], "unknown precision 'fp16'"),
    (["--pooling", "max"], "unknown pooling 'max'"),
    (["--learning-rate", "1e-4"], "unrecognized arguments: --learning-rate"),
    (["--data-dir", __file__], "is not a folder"),
]


@pytest.mark.parametrize("argv,message", FLAGS)
def test_a_bad_flag_is_one_error_line(tmp_path, capsys, argv, message):
    trainer_refuses(tmp_path, capsys, argv, message)


def test_a_typed_config_refuses_a_wrong_type_wherever_it_is_built():
    """The searcher's draws and the sweep's stages build configs with ``with_values``: checked too."""
    with pytest.raises(ConfigError, match="lr must be a number"):
        TrainConfig(lr="fast")
    with pytest.raises(ConfigError, match="epochs must be a whole number"):
        TrainConfig().with_values({"epochs": "3"})
    import numpy as np

    drawn = TrainConfig().with_values({"epochs": np.int64(3), "lr": np.float32(1e-4)})  # what Optuna may hand over
    assert type(drawn.epochs) is int and type(drawn.lr) is float


# ---------------------------------------------------------------------------- the trainer's help
def test_help_shows_choices_each_default_once_and_no_test_hooks():
    from trainers.train import parser

    text = parser().format_help()
    assert "(default: 0.001)" not in text and "default 1e-3" in text  # head_lr names its own default
    assert "(default: (default" not in text and text.count("(default: 5e-05)") == 1
    assert "--method {fixed,bilevel,clo}" in text and "--precision {fp32,bf16,auto}" in text
    assert " STR" not in text and "tiny-random" in text and "--keep-checkpoints" in text
    assert "--fault-step" not in text and "test hook" not in text


def test_the_sweep_help_lists_every_preset_and_no_test_hooks():
    from sweeps.presets import presets

    text = sweep_cli()["parser"]().format_help()
    squeezed, listed = "".join(text.split()), ",".join(presets())  # as wrapped for the terminal
    assert squeezed.count(listed) >= 3  # --preset, the epilog and the `preset` key list the same presets
    assert "diverge_trials" not in text


# ---------------------------------------------------------------------------- checkpoint retention
def tiny(tmp_path, **overrides) -> TrainConfig:
    values = dict(model="tiny-random", task="mr", train_subset=64, eval_subset=40, max_length=24, epochs=5,
                  batch_size=16, log_every=100, wallclock_eval=False, threads=1, output_dir=str(tmp_path / "run"))
    return TrainConfig(**{**values, **overrides})


class Interrupt(Exception):
    pass


def on_disk(output: Path) -> list[str]:
    return sorted(p.name for p in (output / "checkpoints").glob("epoch-*"))


def test_a_five_epoch_run_keeps_at_most_k_checkpoints_and_resumes(tmp_path):
    """K = 2 (the default, 1, is the same code; one run keeps the suite fast: ~1 min on 2 busy cores)."""
    keep = 2
    assert TrainConfig().keep_checkpoints == 1
    seen = []

    def stop_after_third(record):
        seen.append(on_disk(tmp_path / "run"))
        if record["epoch"] == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        run(tiny(tmp_path, keep_checkpoints=keep), on_epoch=stop_after_third, quiet=True)
    assert all(len(names) <= keep for names in seen), seen
    assert seen[-1][-1] == "epoch-3" and ds.latest_checkpoint(str(tmp_path / "run")) == "epoch-3"
    resumed = run(tiny(tmp_path, keep_checkpoints=keep, resume=True), quiet=True)
    assert [e["epoch"] for e in resumed.summary.epochs] == [1, 2, 3, 4, 5]
    assert on_disk(tmp_path / "run") == [f"epoch-{n}" for n in range(6 - keep, 6)]


def test_retention_never_deletes_the_checkpoint_latest_names(tmp_path):
    from trainers.run_files import prune_epoch_checkpoints

    root = tmp_path / "checkpoints"
    for n in (1, 2, 3, 10):
        (root / f"epoch-{n}").mkdir(parents=True)
    (root / "latest").write_text("epoch-2")  # e.g. epoch-3 and -10 are leftovers of another attempt
    assert prune_epoch_checkpoints(tmp_path, keep=1) == ["epoch-1", "epoch-3"]
    assert on_disk(tmp_path) == ["epoch-10", "epoch-2"]


# ---------------------------------------------------------------------------- the sweep
def sweep_refuses(tmp_path, capsys, args: list[str], message: str) -> str:
    root = tmp_path / "sweeps"
    started = time.perf_counter()
    try:
        code = sweep_cli()["main"](["--preset", "smoke", "--root", str(root), *args])
    except SystemExit as exit_:
        code = exit_.code
    elapsed = time.perf_counter() - started
    line = one_error_line(capsys)
    assert code == 2 and message in line, line
    assert elapsed < FAST, f"{elapsed:.1f} s"
    assert not root.exists(), f"a refused sweep leaves nothing behind: {list(root.rglob('*'))}"
    return line


SWEEP_INPUTS = [
    (["--set", "train.lr=-1"], "lr must be a positive number (got -1.0)"),
    (["--set", "train.lr=abc"], "lr must be a number such as 5e-05, got 'abc'"),
    (["--set", "train.epochs=two"], "epochs must be a whole number"),
    (["--set", "train.keep_checkpoints=0"], "keep_checkpoints must be > 0"),
    (["--set", "train.model=/no/such/model"], "model path '/no/such/model' does not exist"),
    (["--set", "train.data_dir=/no/such/data"], "data_dir '/no/such/data' does not exist"),
    (["--set", "train.deepspeed_config=README.md"], "is not valid JSON"),
    (["--set", "registry_prefix=team/leebert"], "refused by the MLflow registry"),
    (["--set", "registry_prefix=a:b"], "refused by the MLflow registry"),
    (["--trials", "many"], "argument --trials: invalid int value: 'many'"),
    (["--objective", "speed"], "argument --objective: invalid choice: 'speed'"),
    (["--set", "trials=abc"], "trials must be an int"),
    (["--set", "cpus_per_trial=100"], "needs 100 CPU"),
    (["--set", "gpus_per_trial=1"], "needs 1 CPU / 1 GPU"),
    (["--set", "workers_per_trial=4", "--set", "num_cpus=2"], "needs 4 CPU"),
]


@pytest.mark.parametrize("args,message", SWEEP_INPUTS)
def test_a_sweep_refuses_before_ray_starts_and_leaves_nothing(tmp_path, capsys, args, message):
    sweep_refuses(tmp_path, capsys, args, message)


def test_a_sweep_with_a_missing_model_folder_exits_2_before_any_trial(tmp_path, capsys):
    """Every trial would fail alike (and be retried max_failures times): the sweep runs the
    trainer's own checks on every arm's config first, so --print-config refuses it too."""
    sweep_refuses(tmp_path, capsys, ["--set", "train.model=./no/such/model", "--print-config"], "does not exist")
    import ray

    assert not ray.is_initialized()


def test_an_unreadable_sweep_config_file(tmp_path, capsys):
    config = write(tmp_path / "sweep.yaml", b"\xff\xd8\xff\xe0 binary")
    sweep_refuses(tmp_path, capsys, ["--config", str(config)], "is not a text file")


def test_a_model_name_the_registry_refuses_is_refused_before_anything_is_logged(tmp_path):
    from serving.register import check_model_name, register_sweep

    for name in ("bad/name", "bad:name", "..", " ", "it's"):
        with pytest.raises(ConfigError):
            check_model_name(name)
    check_model_name("leebert-mr")
    # refused before the store is opened: no store, no folder, nothing logged
    with pytest.raises(ConfigError, match="refused by the MLflow registry"):
        register_sweep(f"sqlite:///{tmp_path}/none/mlflow.db", "any", model_name="x/y")
    assert not (tmp_path / "none").exists()


# ---------------------------------------------------------------------------- printed commands
def no_venv_env() -> dict[str, str]:
    """A shell without the venv: PATH holds only the system's folders."""
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != venv_bin)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    return {**env, "PATH": path or "/usr/bin:/bin", "MLFLOW_TRACKING_URI": ""}


def runs_as_printed(command: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(["bash", "-c", command], cwd=ROOT, env=no_venv_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc


@pytest.mark.integration
def test_the_sweeps_closing_commands_run_as_printed_without_a_venv(tmp_path):
    """Each command of the closing lines, copied as printed into a shell whose PATH lacks the venv,
    runs (with --help appended: the cheap variant of each)."""
    cli = sweep_cli()
    cfg = SimpleNamespace(name="my-demo", root=str(tmp_path))
    uri = f"sqlite:///{tmp_path}/my-demo/mlflow.db"
    registered = {"name": "leebert-mr", "tracking_uri": uri, "champion": {"arm": "clo", "version": "1",
                                                                          "uri": "models:/leebert-mr@champion"},
                  "versions": {"clo": {"version": "1"}}}
    result = SimpleNamespace(cfg=cfg, tracking_uri=uri, experiment_id="1", final=None, registered=registered,
                             files={"optuna_journal": tmp_path / "optuna.journal"})
    lines = {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip()
             for line in cli["where_to_look"](result, root_flag=True) if ":" in line}
    ui = lines["MLflow UI"].split("   (then open")[0]
    register = lines["re-register"].split(" --target-speedup")[0]
    serve = lines["serve"]
    dashboard = lines["Optuna study"].split(" && ")[0]  # pip install, or optuna-dashboard where installed
    assert not any(command.split()[0] in ("python", "mlflow", "pip") for command in (ui, register, dashboard))
    assert shlex.split(register)[1:3] == ["platform/register.py", "--sweep"]
    for command in (ui, register, serve, dashboard):
        runs_as_printed(command + " --help")
    assert not (tmp_path / "my-demo").exists(), "--help touched no store"


@pytest.mark.integration
def test_the_readme_cluster_commands_name_the_venv(tmp_path):
    text = (ROOT / "README.md").read_text()
    section = text.split("## From one machine to a cluster")[1].split("## ")[0]
    block = section.split("```bash")[1].split("```")[0]
    for line in block.splitlines():
        first = line.split()[0] if line.strip() else ""
        if first and not line.startswith(" "):  # a command (continuations are indented)
            assert first in (".venv/bin/python", ".venv/bin/ray", "kubectl") or first.startswith("PATH="), line
    server = next(line for line in block.splitlines() if "clusters/mlflow/server.sh" in line)
    assert server.startswith('PATH="$PWD/.venv/bin:$PATH"')
    venv = Path(sys.executable).parent
    if (ROOT / ".venv" / "bin" / "python").exists():  # a checkout with its own venv: run one as printed
        runs_as_printed(".venv/bin/python platform/sweep.py --help")
    else:
        runs_as_printed(f"{venv}/python platform/sweep.py --help")


def test_the_resume_hint_names_the_interpreter():
    text = (ROOT / "platform" / "sweep.py").read_text()
    assert "continue it with: python platform" not in text and "{python()} platform/sweep.py --resume" in text


# ---------------------------------------------------------------------------- noise
def test_rays_token_auth_notice_is_quiet_for_the_local_cluster():
    import logging

    from sweeps.ray_cluster import AUTH_LOGGER, quiet_local_auth_notice

    quiet_local_auth_notice()
    quiet_local_auth_notice()  # idempotent: one filter
    logger = logging.getLogger(AUTH_LOGGER)
    assert len(logger.filters) == 1
    notice = logger.makeRecord(AUTH_LOGGER, logging.WARNING, __file__, 1,
                               "Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled", (), None)
    other = logger.makeRecord(AUTH_LOGGER, logging.WARNING, __file__, 1, "something else", (), None)
    assert not logger.filter(notice) and logger.filter(other)


def test_mlflow_event_lines_are_quiet_while_registering(capsys):
    from mlflow.utils.logging_utils import eprint

    from serving.mlflow_scope import quiet_mlflow_events

    with quiet_mlflow_events():
        eprint("Successfully registered model 'leebert-mr'.")
    eprint("after")
    err = capsys.readouterr().err
    assert "Successfully registered" not in err and "after" in err


def test_print_config_of_a_good_sweep_still_works(tmp_path, capsys):
    code = sweep_cli()["main"](["--preset", "smoke", "--root", str(tmp_path / "sweeps"), "--print-config",
                                "--set", "train.keep_checkpoints=2"])
    out = capsys.readouterr().out
    assert code == 0 and "keep_checkpoints: 2" in out
    assert not (tmp_path / "sweeps").exists()


class _Echo:
    """A minimal pyfunc body (wrapped in a PythonModel below)."""

    def predict(self, context, model_input, params=None):
        return model_input


def test_a_logged_model_whose_registration_fails_is_discarded_with_its_artifacts(tmp_path):
    """serving.register logs, then registers; a refusal in between deletes what was logged."""
    import mlflow

    from serving.mlflow_scope import use_tracking_uri
    from serving.register import discard_logged_model

    class Echo(_Echo, mlflow.pyfunc.PythonModel):
        pass

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with use_tracking_uri(uri):
        client = mlflow.MlflowClient(uri)
        experiment = client.create_experiment("x", artifact_location=(tmp_path / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                info = mlflow.pyfunc.log_model(name="model", python_model=Echo(), pip_requirements=[])
        stored = [p for p in (tmp_path / "artifacts").rglob("*") if p.is_file()]
        assert stored, "the model was logged"
        discard_logged_model(client, info.model_id)
        from mlflow.exceptions import MlflowException

        with pytest.raises(MlflowException, match="not found"):  # deleted: gone from the store's views
            client.get_logged_model(info.model_id)
        assert client.search_logged_models(experiment_ids=[experiment]) == []
        assert [p for p in (tmp_path / "artifacts").rglob("*") if p.is_file() and p in stored] == []

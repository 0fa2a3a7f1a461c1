"""The trainer end to end on the tiny random model: runs, resumes exactly, refuses bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainers import engine as ds
from trainers.config import TrainConfig
from trainers.layout import TEST_LOGITS_FILE
from trainers.results import Summary
from trainers.run_files import load_exit_logits
from trainers.train import main, run

REPO = Path(__file__).resolve().parents[1]


def tiny_config(tmp_path, **overrides) -> TrainConfig:
    values = dict(model="tiny-random", task="mr", train_subset=128, eval_subset=100, max_length=32,
                  epochs=2, batch_size=16, log_every=100, wallclock_eval=False, threads=1, output_dir=str(tmp_path / "run"))
    values.update(overrides)
    return TrainConfig(**values)


class Interrupt(Exception):
    pass


def stop_after_first_epoch(record):
    if record["epoch"] == 1:
        raise Interrupt


@pytest.mark.parametrize("method", ["fixed", "clo"])
def test_resume_gives_the_same_weights_as_a_straight_run(tmp_path, method):
    straight = run(tiny_config(tmp_path / "a", method=method, outer_every=3), quiet=True)
    with pytest.raises(Interrupt):
        run(tiny_config(tmp_path / "b", method=method, outer_every=3), on_epoch=stop_after_first_epoch, quiet=True)
    assert ds.latest_checkpoint(str(tmp_path / "b" / "run")) == "epoch-1"
    resumed = run(tiny_config(tmp_path / "b", method=method, outer_every=3, resume=True), quiet=True)
    a = straight.model.state_dict()
    b = resumed.model.state_dict()
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= 1e-6, worst
    assert straight.summary.weights.final == pytest.approx(resumed.summary.weights.final, abs=1e-6)
    assert [e["epoch"] for e in resumed.summary.epochs] == [1, 2]
    # the run actually trained: the weights moved away from their initial values
    fresh = run(tiny_config(tmp_path / "c", method=method, epochs=1, train_subset=16, eval_subset=20,
                            save_checkpoints=False), quiet=True).model.state_dict()
    assert any(not torch.equal(fresh[k], a[k]) for k in a)


def test_a_crash_while_saving_leaves_the_previous_checkpoint_in_charge(tmp_path, monkeypatch):
    import deepspeed

    original = deepspeed.DeepSpeedEngine.save_checkpoint
    calls = []

    def crash_on_second_save(self, *args, **kwargs):
        calls.append(1)
        result = original(self, *args, **kwargs)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        return result

    monkeypatch.setattr(deepspeed.DeepSpeedEngine, "save_checkpoint", crash_on_second_save)
    with pytest.raises(OSError):
        run(tiny_config(tmp_path), quiet=True)
    root = tmp_path / "run" / "checkpoints"
    assert ds.latest_checkpoint(str(tmp_path / "run")) == "epoch-1"
    assert not (root / "epoch-2").exists(), "the half-saved checkpoint must not look complete"
    assert (root / "epoch-1" / ds.COMPLETE_MARKER).is_file()
    assert not (tmp_path / "run" / "summary.json").exists()


def test_a_fresh_run_refuses_to_overwrite_a_previous_one(tmp_path, capsys):
    cfg = tiny_config(tmp_path, epochs=1)
    run(cfg, quiet=True)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 128 // 16
    code = main(["--model", "tiny-random", "--train-subset", "128", "--output-dir", str(tmp_path / "run")])
    assert code == 2
    assert "--resume" in capsys.readouterr().err


def test_summary_is_complete_and_consistent(tmp_path):
    result = run(tiny_config(tmp_path, method="bilevel", outer_every=2, weight_log_every=4,
                             wallclock_eval=True), quiet=True)
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["method"] == "bilevel" and on_disk["num_exits"] == 3
    assert len(on_disk["test"]["per_exit"]) == 3
    assert 0.0 <= on_disk["test"]["hypervolume"] <= 1.0
    names = on_disk["weights"]["names"]
    assert len(names) == 3 + 6 and len(on_disk["weights"]["final"]) == len(names)
    assert [t["step"] for t in on_disk["weights"]["trajectory"]] == [4, 8, 12, 16]
    assert sum(on_disk["weights"]["final"]) == pytest.approx(len(names), rel=1e-5)  # softmax: Σw = n
    for point in on_disk["frontier"]:
        assert 1.0 <= point["validation_speedup"] <= 3.0 and 1.0 <= point["test_speedup"] <= 3.0
    for op in on_disk["operating_points"]:
        assert op["validation_speedup"] >= op["target_speedup"] - 1e-9
        assert op["wallclock_speedup"] > 0
    assert result.model.num_layers == 3
    # the typed result is what summary.json holds, and reads back from it
    assert json.loads(json.dumps(result.summary.to_dict(), default=float)) == on_disk
    assert Summary.from_dict(on_disk) == result.summary
    assert result.summary.operating_point(2.0) == next(op for op in result.summary.operating_points
                                                       if op.target_speedup == 2.0)
    logits, _, _ = load_exit_logits(tmp_path / "run" / TEST_LOGITS_FILE)  # what the final comparison reads
    assert result.test_logits.shape[0] == 3 and torch.equal(result.test_logits, torch.from_numpy(logits))


BAD_INPUTS = [
    (["--task", "sst"], "unknown task"),
    (["--method", "darts"], "unknown method"),
    (["--scheme", "random"], "unknown scheme"),
    (["--max-length", "0"], "max_length must be > 0"),
    (["--lr-outer", "0", "--method", "clo"], "lr_outer must be > 0"),
    (["--outer-every", "0", "--method", "bilevel"], "outer_every must be >= 1"),
    (["--train-subset", "0"], "train_subset must be > 0"),
    (["--model", "./no/such/model"], "does not exist"),
    (["--task", "sst2", "--data-dir", "/no/such/folder"], "/no/such/folder"),
    (["--train-subset", "8", "--batch-size", "32", "--method", "clo"], "too small"),
    (["--config", "/no/such.yaml"], "not found"),
]


@pytest.mark.parametrize("argv,message", BAD_INPUTS)
def test_bad_input_gets_one_clear_error_line_and_exit_2(tmp_path, capsys, argv, message):
    code = main(["--model", "tiny-random", "--output-dir", str(tmp_path / "run"), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_label_count_mismatch_and_malformed_yaml(tmp_path, capsys):
    folder = tmp_path / "sst2"
    folder.mkdir()
    rows = "sentence\tlabel\n" + "".join(f"text number {i}\t{i % 3}\n" for i in range(30))
    (folder / "train.tsv").write_text(rows)
    (folder / "dev.tsv").write_text(rows)
    assert main(["--model", "tiny-random", "--task", "sst2", "--data-dir", str(folder)]) == 2
    assert "label" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: [mr\n")
    assert main(["--config", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("task: mr\nlearning_rate: 1e-4\n")
    assert main(["--config", str(unknown)]) == 2
    assert "learning_rate" in capsys.readouterr().err


def test_command_line_exit_code_and_help():
    env_run = lambda *a: subprocess.run([sys.executable, "-m", "trainers.train", *a], cwd=REPO,  # noqa: E731
                                        capture_output=True, text=True, timeout=120)
    bad = env_run("--task", "nope")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: unknown task 'nope'")
    help_text = env_run("--help").stdout
    assert "--lr-outer" in help_text and "--resume" in help_text and "cross-level" in help_text


def _write_glue_folder(folder: Path, rows: int, regression: bool) -> None:
    folder.mkdir(parents=True)
    header = "sentence1\tsentence2\tlabel\n"
    words = ["good", "bad", "movie", "plot", "actor", "boring", "great", "scene"]
    lines = [f"{words[i % 8]} {words[(i * 3) % 8]}\t{words[(i * 5) % 8]} film\t"
             f"{(i % 6) * 1.0 if regression else i % 2}\n" for i in range(rows)]
    (folder / "train.tsv").write_text(header + "".join(lines))
    (folder / "dev.tsv").write_text(header + "".join(lines[: rows // 2]))


@pytest.mark.parametrize("task,metric", [("stsb", "pearson"), ("mrpc", "f1")])
def test_glue_pair_tasks_from_local_files_train_end_to_end(tmp_path, task, metric):
    _write_glue_folder(tmp_path / task, 120, regression=task == "stsb")
    summary = run(tiny_config(tmp_path, task=task, data_dir=str(tmp_path / task), method="clo", outer_every=2,
                              train_subset=None, eval_subset=None, epochs=1), quiet=True).summary
    assert summary.metric == metric
    assert set(summary.test.per_exit[0]) == ({"pearson", "spearman"} if task == "stsb" else {"f1", "accuracy"})
    assert summary.train_examples == 108 and summary.num_exits == 3  # 10 % of train held out as validation
    assert all(p.policy in ("none", "patience") for p in summary.validation_curve) or task != "stsb"


@pytest.mark.parametrize("argv,kd", [([], "all"), (["--kd", "none"], "none"), (["--scheme", "pabee"], "none"),
                                     (["--scheme", "last"], "last"), (["--method", "clo", "--kd", "later"], "later")])
def test_kd_flag_resolution(argv, kd):
    from trainers.cli import config_from_args
    from trainers.train import parser

    assert config_from_args(parser().parse_args(argv)).kd == kd

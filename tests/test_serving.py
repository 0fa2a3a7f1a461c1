"""The served model (serving.model.ExitPolicyModel) through real MLflow save/load: its predictions
are the exit policy's, batching changes nothing, bad requests are refused with a clear message,
and the saved model loads from its own code without the repository.

The model is a tiny randomly initialized 4-layer encoder with the embedded MiniLM tokenizer,
exported with serving.export.export_model; its exit heads get larger random weights so that the
exits disagree and exit layers spread.
"""

import csv
import gzip
import io
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.utils._python_dispatch

from trainers.policies import make_policy, simulate

NUM_LAYERS = 4
MAX_LENGTH = 48
REPO = Path(__file__).resolve().parents[1]

SENTENCES = [
    "a gripping, beautifully acted film.", "a dull and lifeless mess.", "great.", "awful",
    "the plot meanders but the performances hold it together for most of its running time.",
    "i laughed, i cried, i checked my watch.", "not worth the price of admission, even on a rainy day.",
    "an instant classic", "the director seems to have forgotten that a movie needs a story.",
    "charming, funny and surprisingly moving.",
]


def mr_sentences(n: int) -> list[str]:
    """The first ``n`` sentences of the embedded MR test split (real text, varied length)."""
    path = REPO / "trainers" / "task_data" / "mr" / "test.tsv.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [row["sentence"] for row in csv.DictReader(f, delimiter="\t")]
    return rows[:n]


# ---------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny multi-exit model (MR: 2 classes, one `sentence` column), exported."""
    from serving.export import export_model
    from trainers.model import MultiExitEncoder, tiny_backbone

    folder = tmp_path_factory.mktemp("exported") / "model"
    return export_model(_tiny(MultiExitEncoder, tiny_backbone, num_labels=2), _cfg("mr"), folder)


def _cfg(task: str):
    return SimpleNamespace(task=task, model="minilm", max_length=MAX_LENGTH, attn_implementation="sdpa")


def _tiny(MultiExitEncoder, tiny_backbone, num_labels: int):
    from transformers import AutoTokenizer

    from trainers.model import embedded_model_path

    vocab = AutoTokenizer.from_pretrained(embedded_model_path()).vocab_size
    model = MultiExitEncoder(tiny_backbone(num_layers=NUM_LAYERS, hidden=32, vocab_size=vocab, seed=1,
                                           attn_implementation="sdpa"), num_labels, "mean")
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():  # random heads with a real spread of confidences
        for head in model.exits:
            head.dense.weight.copy_(torch.randn(head.dense.weight.shape, generator=generator) * 0.3)
            head.classifier.weight.copy_(torch.randn(head.classifier.weight.shape, generator=generator) * 1.5)
    return model.eval()


def save(folder: Path, exported: Path, policy: dict, **model_config):
    """Save the pyfunc as registration logs it (serving.register.pyfunc_arguments), with this
    ``model_config`` (none logged when empty)."""
    import mlflow

    from serving.register import pyfunc_arguments

    arguments = pyfunc_arguments(exported, policy, folder.parent / f"{folder.name}-staging", model_config)
    if not model_config:
        arguments["model_config"] = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLflow's advice on type hints and pickled python_model objects
        mlflow.pyfunc.save_model(str(folder), **arguments)
    return folder


def load(folder: Path, **model_config):
    import mlflow

    return mlflow.pyfunc.load_model(str(folder), model_config=model_config or None)


@pytest.fixture(scope="module")
def full_depth(exported, tmp_path_factory):
    """The model saved with policy 'none' and max_rows 8, loaded through MLflow."""
    folder = save(tmp_path_factory.mktemp("none") / "pyfunc", exported, {"policy": "none", "setting": 0},
                  max_rows=8)
    return load(folder)


def per_sample_logits(model, tokenizer, texts: list[str]) -> torch.Tensor:
    """All exits' logits [L, N, C] from the full forward, one sample at a time (no padding)."""
    out = []
    with torch.no_grad():
        for text in texts:
            batch = tokenizer([text], truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
            out.append(model(**batch))
    return torch.cat(out, dim=1)


def gap_threshold(values: torch.Tensor) -> float:
    """A threshold in the widest gap between the sorted middle values, far from every sample."""
    v = values.double().sort().values
    lo, hi = len(v) // 4, 3 * len(v) // 4
    gaps = v[lo + 1:hi + 1] - v[lo:hi]
    i = int(gaps.argmax())
    return float((v[lo + i] + v[lo + i + 1]) / 2)


# ---------------------------------------------------------------------------------- the policy
@pytest.mark.parametrize("kind", ["patience", "entropy", "confidence"])
def test_predictions_are_the_policy_simulated_on_the_full_forward(exported, tmp_path, kind):
    from serving.export import load_exported

    texts = mr_sentences(60)
    model, tokenizer, _ = load_exported(exported)
    full = per_sample_logits(model, tokenizer, texts)  # [L, N, C]
    probs = torch.softmax(full[0].double(), -1)
    if kind == "patience":
        setting = 1
    elif kind == "entropy":
        entropy = -(probs * probs.log()).sum(-1) / torch.log(torch.tensor(2.0, dtype=torch.float64))
        setting = gap_threshold(entropy)  # about half the samples leave at layer 1
    else:
        setting = gap_threshold(probs.amax(-1))
    policy = make_policy(kind, setting)
    expected_layer, expected_logits = simulate(policy, full)
    assert len(set(expected_layer.tolist())) >= 2, "the setting must spread exits over layers"

    served = load(save(tmp_path / "pyfunc", exported, {"policy": kind, "setting": setting, "delta": None}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a few MR sentences exceed MAX_LENGTH tokens: truncated alike
        out = served.predict(pd.DataFrame({"sentence": texts}))
    assert out["exit_layer"].tolist() == expected_layer.tolist()
    assert out["label"].tolist() == expected_logits.argmax(-1).tolist()
    expected_probs = torch.softmax(expected_logits, -1)
    assert torch.allclose(torch.tensor(out["probabilities"].tolist()), expected_probs, atol=1e-5)
    assert len(set(out["exit_layer"])) >= 2


def test_batched_equals_one_at_a_time_and_keeps_the_input_order(exported, tmp_path):
    texts = (mr_sentences(60) + SENTENCES * 2)[:80]  # mixed lengths, not sorted: more than one batch of 64
    served = load(save(tmp_path / "pyfunc", exported, {"policy": "patience", "setting": 1}))
    frame = pd.DataFrame({"sentence": texts}, index=range(100, 100 + len(texts)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batched = served.predict(frame)
        single = [served.predict(pd.DataFrame({"sentence": [t]})).iloc[0] for t in texts]
    assert list(batched.columns) == ["label", "label_name", "probabilities", "exit_layer", "truncated"]
    assert batched["truncated"].tolist() == [bool(s["truncated"]) for s in single]
    assert list(batched.index) == list(frame.index), "one row per input row, same index"
    names = {0: "negative", 1: "positive"}  # mr's id2label
    assert batched["label_name"].tolist() == [names[label] for label in batched["label"]]
    assert batched["label"].tolist() == [int(s["label"]) for s in single]
    assert batched["exit_layer"].tolist() == [int(s["exit_layer"]) for s in single]
    assert torch.allclose(torch.tensor(batched["probabilities"].tolist()),
                          torch.tensor([list(s["probabilities"]) for s in single]), atol=1e-5)
    assert batched["label"].dtype == "int64" and batched["exit_layer"].dtype == "int64"
    assert len(set(batched["exit_layer"])) >= 2
    # the request really was reordered by length inside: input lengths are not sorted
    model = served.unwrap_python_model()
    lengths = [len(ids) for ids in model.tokenizer(texts, truncation=True, max_length=MAX_LENGTH)["input_ids"]]
    assert lengths != sorted(lengths)


def test_the_fast_paths_give_the_tokenizers_ids_and_the_backbones_layers(exported, tmp_path):
    """Tokens straight from the Rust encoder are the tokenizer's own (pairs and truncation too),
    and the lean layers that the served model installs give the backbone's layers' very bits."""
    from serving.export import export_model, load_exported
    from serving.model import ExitPolicyModel
    from trainers.model import MultiExitEncoder, tiny_backbone

    served = ExitPolicyModel().load(exported, {"policy": "none", "setting": 0})
    assert served.encoder is not None and served.lean == ["embeddings", "layers", "exit heads"]
    texts = mr_sentences(80) + ["word " * 100, "x"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ids, types = served.tokenize([texts])
    expected = served.tokenizer(texts, truncation=True, max_length=MAX_LENGTH)
    assert ids == expected["input_ids"] and types is None and max(map(len, ids)) == MAX_LENGTH
    pair = ExitPolicyModel().load(export_model(_tiny(MultiExitEncoder, tiny_backbone, num_labels=1), _cfg("stsb"),
                                               tmp_path / "pair"), {"policy": "none", "setting": 0})
    first, second = texts[:40], list(reversed(texts))[:40]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ids, types = pair.tokenize([first, second])
    expected = pair.tokenizer(first, second, truncation=True, max_length=MAX_LENGTH)
    assert ids == expected["input_ids"] and types == expected["token_type_ids"]
    # one row (a request of one) takes the encoder's single-text call: the same ids, truncation noticed
    for text in (texts[0], "x", "word " * 100):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ids, types = served.tokenize([[text]])
        assert ids == served.tokenizer([text], truncation=True, max_length=MAX_LENGTH)["input_ids"] and types is None
        assert any("were truncated" in str(w.message) for w in caught) == (text == "word " * 100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ids, types = pair.tokenize([[first[5]], [second[5]]])
    expected = pair.tokenizer([first[5]], [second[5]], truncation=True, max_length=MAX_LENGTH)
    assert ids == expected["input_ids"] and types == expected["token_type_ids"]
    model, _, _ = load_exported(exported)  # the backbone's own layers
    hidden = torch.randn(4, 11, 32, generator=torch.Generator().manual_seed(3))
    mask = model.runner.mask(hidden, torch.tensor([[1] * 11, [1] * 6 + [0] * 5, [1] * 9 + [0] * 2, [1] * 11]))
    ids = torch.randint(1, 1000, (4, 11), generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        for index in range(NUM_LAYERS):
            for m in (None, mask):
                assert torch.equal(served.model.runner.layer(index, hidden, m), model.runner.layer(index, hidden, m))
            assert torch.equal(served.model.exits[index](hidden[:, 0]), model.exits[index](hidden[:, 0]))
        for types in (None, torch.zeros_like(ids), (ids % 2)):
            assert torch.equal(served.model.runner.embed(ids, types), model.runner.embed(ids, types))


@pytest.mark.parametrize("rows", [0, 1, 3])
@pytest.mark.parametrize("regression", [False, True])
def test_the_output_frame_is_the_public_constructors(rows, regression, monkeypatch):
    """The answer built from its column arrays equals pd.DataFrame(dict) cell for cell, dtypes and
    index included, and the public constructor is what a pandas without the array one gets."""
    import numpy as np

    from serving.model import output_frame

    labels = np.arange(rows, dtype=np.float64 if regression else np.int64) * (0.5 if regression else 1)
    probabilities = [[] for _ in range(rows)] if regression else [[0.25 * i, 1 - 0.25 * i] for i in range(rows)]
    layers = np.arange(1, rows + 1, dtype=np.int64)
    index = pd.RangeIndex(10, 10 + rows) if rows != 3 else pd.Index([7, 3, 5])
    names = None if regression else ["zero", "one", "two"]
    expected_names = [""] * rows if regression else ["zero", "one", "two"][:rows]
    truncated = np.arange(rows) % 2 == 1
    expected = pd.DataFrame({"label": labels, "label_name": pd.Series(expected_names, index=index, dtype=object),
                             "probabilities": pd.Series(probabilities, index=index, dtype=object),
                             "exit_layer": layers, "truncated": truncated}, index=index)  # an object column even with no rows
    built = output_frame(labels, probabilities, layers, index=index, label_names=names, truncated=truncated)
    monkeypatch.delattr(pd.DataFrame, "_from_arrays")
    public = output_frame(labels, probabilities, layers, index=index, label_names=names, truncated=truncated)
    assert not output_frame(labels, probabilities, layers, index=index)["truncated"].any()  # none given: none cut
    for frame in (built, public):
        # the names' dtype is pandas' choice (object, or pandas 3's inferred str): the values are the answer
        assert frame["label_name"].tolist() == expected_names
        pd.testing.assert_frame_equal(frame.drop(columns="label_name"), expected.drop(columns="label_name"))
        assert frame["probabilities"].tolist() == probabilities and list(frame.columns) == list(expected.columns)


def test_batches_are_sorted_by_length_and_padded_to_their_own_longest(exported):
    from serving.model import ExitPolicyModel

    model = ExitPolicyModel().load(exported, {"policy": "none", "setting": 0})
    texts = [" ".join(["word"] * (1 + (7 * i) % 40)) for i in range(130)]
    ids, types = model.tokenize([texts])
    seen, widths = [], []
    for rows, batch in model.batches(ids, types):
        seen += rows
        widths.append(batch["input_ids"].shape[1])
        assert batch["input_ids"].shape[1] == max(len(ids[i]) for i in rows)
        if "attention_mask" in batch:
            assert batch["attention_mask"].sum(1).tolist() == [len(ids[i]) for i in rows]
        else:  # rows of one length need no mask
            assert {len(ids[i]) for i in rows} == {batch["input_ids"].shape[1]}
    assert sorted(seen) == list(range(130)) and [len(ids[i]) for i in seen] == sorted(len(r) for r in ids)
    assert len(widths) == 3 and widths == sorted(widths) and widths[0] < widths[-1]


class _ExitRows:
    """A test policy: the given rows (original positions) leave at layer 1, the others at the end."""

    kind, setting = "test", 0.0

    def __init__(self, rows):
        self.rows = set(rows)

    def start(self, n, device):
        return torch.arange(n)

    def step(self, state, layer, out):
        return state, torch.tensor([layer == 1 and int(i) in self.rows for i in state], dtype=torch.bool)

    def select(self, state, keep):
        return state[keep]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_early_exit_cuts_the_padding_of_the_rows_left(attn):
    """When the long rows leave, the later layers run only as wide as the longest row left, and
    every row still gets the full forward's logits at its exit layer."""
    from trainers.model import MultiExitEncoder, tiny_backbone

    model = MultiExitEncoder(tiny_backbone(num_layers=3, seed=2, attn_implementation=attn), 3, "mean").eval()
    lengths = [12, 4, 9, 12, 3, 6]
    ids = torch.randint(5, 100, (6, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1] * n + [0] * (12 - n) for n in lengths])
    batch = {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    widths = []
    hooks = [layer.register_forward_hook(lambda mod, args, out: widths.append(tuple(args[0].shape[:2])))
             for layer in model.backbone.encoder.layer]
    logits, layer = model.early_exit(_ExitRows({0, 3, 2}), **batch)  # rows of 12, 12 and 9 tokens leave
    for hook in hooks:
        hook.remove()
    assert layer.tolist() == [1, 3, 1, 1, 3, 3]
    assert widths == [(6, 12), (3, 6), (3, 6)]
    with torch.no_grad():
        full = model(**batch)
    assert torch.allclose(logits, full[layer - 1, torch.arange(6)], atol=1e-5)


# ---------------------------------------------------------------------------------- devices and host syncs
class HostReads(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts what makes a GPU wait for its results: a value read back to the host
    (``.item()``, ``int(t)``, ``bool(t)``) and the ops whose output size only the data decides
    (``nonzero``, a boolean-mask index). With ``replay`` (the reads of the same run on the CPU)
    it answers the reads of tensors on ``meta``, which holds no data, so a whole inference runs
    there and any tensor left on another device raises, as it would next to a CUDA model."""

    DATA_SIZED = ("aten.nonzero", "aten.masked_select", "aten.masked_scatter")

    def __init__(self, replay: list | None = None):
        super().__init__()
        self.reads, self.data_sized = [], []
        self.replay = None if replay is None else list(replay)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func.overloadpacket)
        if name == "aten._local_scalar_dense":
            value = self.replay.pop(0) if self.replay is not None else func(*args, **kwargs)
            self.reads.append(value)
            return value
        if name in self.DATA_SIZED or (name in ("aten.index", "aten.index_put", "aten.index_put_") and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1])):
            self.data_sized.append(name)
        return func(*args, **kwargs)


@pytest.mark.parametrize("policy", [("patience", 1), ("patience", 2), ("confidence", "median"), ("none", 0)])
def test_early_exit_syncs_with_the_host_at_most_once_per_layer(policy):
    """The exit layers stay those of the policy simulated on the full forward, with at most one
    host read per layer that decides (none for the full model) and no data-sized op at all."""
    from trainers.model import MultiExitEncoder, tiny_backbone

    model = MultiExitEncoder(tiny_backbone(num_layers=4, seed=3, attn_implementation="sdpa"), 3, "mean").eval()
    lengths = [10, 4, 9, 7, 3, 6, 10, 8] * 3
    ids = torch.randint(5, 100, (len(lengths), 10), generator=torch.Generator().manual_seed(4))
    mask = torch.tensor([[1] * n + [0] * (10 - n) for n in lengths])
    batch = {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    with torch.no_grad():
        full = model(**batch)
    kind, setting = policy
    if setting == "median":  # about half leave at layer 1
        setting = float(torch.softmax(full[0], -1).amax(-1).median())
    exit_policy = make_policy(kind, setting)
    expected_layer, _ = simulate(exit_policy, full)
    with HostReads() as syncs:
        logits, layer = model.early_exit(exit_policy, **batch)
    assert torch.equal(layer, expected_layer)
    assert torch.allclose(logits, full[layer - 1, torch.arange(len(lengths))], atol=1e-5)
    assert syncs.data_sized == []
    # one read per layer that decides: from the first layer where a row can leave (patience p: p + 1)
    # to the last one some row reached, the last layer excluded (everyone still running answers there)
    first = {"patience": setting + 1, "none": 5}.get(kind, 1)
    assert len(syncs.reads) == max(0, min(int(layer.max()), 3) - first + 1), (len(syncs.reads), layer.tolist())
    if kind != "none":
        assert len(set(layer.tolist())) >= 2, "the setting must spread exits over layers"


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_early_exit_without_a_mask_answers_as_with_an_all_ones_mask(pooling):
    """Rows of one length (a single request) run without an attention mask: the same bits."""
    from trainers.model import MultiExitEncoder, tiny_backbone

    model = MultiExitEncoder(tiny_backbone(num_layers=4, seed=5, attn_implementation="sdpa"), 2, pooling).eval()
    ids = torch.randint(5, 100, (7, 9), generator=torch.Generator().manual_seed(1))
    policy = make_policy("patience", 1)
    masked = model.early_exit(policy, ids, torch.ones_like(ids), torch.zeros_like(ids))
    unmasked = model.early_exit(policy, ids, None, torch.zeros_like(ids))
    assert torch.equal(masked[1], unmasked[1]) and torch.equal(masked[0], unmasked[0])
    assert len(set(masked[1].tolist())) >= 2


def test_the_served_model_runs_on_the_models_device(exported, monkeypatch):
    """The pyfunc's batches, early exit and outputs on ``meta`` (a CPU tensor next to it raises as
    next to a CUDA model): the CPU run's host reads replayed, same batches, same shapes."""
    from serving.model import ExitPolicyModel

    texts = mr_sentences(150)
    served = ExitPolicyModel().load(exported, {"policy": "patience", "setting": 1}, device="cpu")
    with warnings.catch_warnings(), HostReads() as on_cpu:
        warnings.simplefilter("ignore")
        expected = [(rows, tuple(logits.shape), layers.clone()) for rows, logits, layers in served.device_outputs([texts])]
    assert on_cpu.data_sized == [] and len(expected) == 3
    assert len(on_cpu.reads) <= len(expected) * (NUM_LAYERS - 1)
    served.to("meta")
    assert {p.device.type for p in served.model.parameters()} == {"meta"}
    with warnings.catch_warnings(), HostReads(replay=on_cpu.reads) as on_meta:
        warnings.simplefilter("ignore")
        seen = list(served.device_outputs([texts]))
    assert [rows for rows, _, _ in seen] == [rows for rows, _, _ in expected]
    for (_, logits, layers), (_, shape, cpu_layers) in zip(seen, expected):
        assert logits.device.type == layers.device.type == "meta"
        assert tuple(logits.shape) == shape and layers.shape == cpu_layers.shape
    assert on_meta.replay == [] and on_meta.data_sized == []


def test_the_device_option(exported, tmp_path):
    from mlflow.exceptions import MlflowException

    folder = save(tmp_path / "pyfunc", exported, {"policy": "none", "setting": 0}, device="auto", max_rows=8)
    auto = load(folder).unwrap_python_model()
    assert auto.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert {p.device.type for p in auto.model.parameters()} == {auto.device.type}
    cpu = load(folder, device="cpu")
    assert cpu.unwrap_python_model().device.type == "cpu"
    assert cpu.predict(pd.DataFrame({"sentence": ["a fine film."]}))["exit_layer"].tolist() == [NUM_LAYERS]
    with pytest.raises(MlflowException, match="device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'tpu'"):
        load(folder, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(MlflowException, match=r"device 'cuda', but torch .* sees no CUDA device") as err:
            load(folder, device="cuda")
        assert "use device 'auto' or 'cpu'" in err.value.message


# ---------------------------------------------------------------------------------- bad requests
def _refused(predict, frame, fragment: str):
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException) as err:
        predict(frame)
    assert fragment in err.value.message, err.value.message
    return err.value


@pytest.mark.parametrize("frame, fragment", [
    (pd.DataFrame({"sentence": ["fine", None]}), "non-text values (missing) at row(s) 1"),
    (pd.DataFrame({"sentence": ["fine", float("nan")]}), "non-text values (missing) at row(s) 1"),
    (pd.DataFrame({"sentence": pd.Series(["fine", None], dtype=object)}), "non-text values (missing) at row(s) 1"),
    (pd.DataFrame({"sentence": ["fine", 3, 4.5, None]}), "non-text values (float, int, missing) at row(s) 1, 2, 3"),
    (pd.DataFrame({"sentence": ["fine", ""]}), "empty or whitespace-only text at row(s) 1"),
    (pd.DataFrame({"sentence": ["fine", " \t\n"]}), "empty or whitespace-only text at row(s) 1"),
])
def test_bad_values_are_refused_before_tokenizing(full_depth, frame, fragment, monkeypatch):
    from mlflow.protos.databricks_pb2 import ErrorCode, INVALID_PARAMETER_VALUE

    model = full_depth.unwrap_python_model()
    calls = []
    tokenize = model.tokenize
    monkeypatch.setattr(model, "tokenize", lambda columns: calls.append(1) or tokenize(columns))
    error = _refused(full_depth.predict, frame, fragment)
    assert error.error_code == ErrorCode.Name(INVALID_PARAMETER_VALUE)
    assert error.get_http_status_code() == 400
    assert calls == [], "refused before tokenizing"


def test_wrong_columns_are_refused(full_depth):
    python_model = full_depth.unwrap_python_model()

    def direct(frame):  # without MLflow's schema enforcement in front
        return python_model.predict(None, frame)

    # a one-column model no longer takes any single column
    _refused(direct, pd.DataFrame({"text": ["fine"]}), "wrong columns: got ['text'] (missing ['sentence'])")
    _refused(direct, pd.DataFrame({"sentence": ["fine"], "id": [1]}), "(unexpected ['id'])")
    _refused(direct, ["a list of strings"], "expected a DataFrame, got list")
    # through MLflow the signature refuses a missing column itself
    _refused(full_depth.predict, pd.DataFrame({"text": ["fine"]}), "missing inputs ['sentence']")
    _refused(full_depth.predict, pd.DataFrame({"sentence": [1.0, 2.0]}), "sentence")


def test_extra_columns_are_dropped_by_mlflows_schema_enforcement(full_depth):
    """With the signature, MLflow removes undeclared columns (and logs a warning) before predict."""
    with_extra = full_depth.predict(pd.DataFrame({"sentence": ["fine", "bad"], "id": [1, 2]}))
    plain = full_depth.predict(pd.DataFrame({"sentence": ["fine", "bad"]}))
    assert with_extra["label"].tolist() == plain["label"].tolist()


def test_in_process_predict_takes_any_number_of_rows_in_bounded_chunks(exported, tmp_path):
    """A notebook's predict(df) or `mlflow models predict` scores any number of rows, whatever
    max_rows says; the rows go through in chunks, so no step holds more than one chunk."""
    folder = save(tmp_path / "pyfunc", exported, {"policy": "patience", "setting": 1}, max_rows=8)
    served = load(folder)
    python_model = served.unwrap_python_model()
    texts = (mr_sentences(200) + SENTENCES) * 15  # 3150 rows of mixed lengths
    frame = pd.DataFrame({"sentence": texts}, index=range(7, 7 + len(texts)))
    tokenized, batch_rows = [], []
    tokenize = python_model.tokenize
    early_exit = python_model.model.early_exit

    def count_tokenized(columns, cut=None):
        tokenized.append(len(columns[0]))
        return tokenize(columns, cut)

    def count_batch(policy, **batch):
        batch_rows.append(batch["input_ids"].shape[0])
        return early_exit(policy, **batch)

    python_model.chunk_rows = 512
    python_model.tokenize = count_tokenized
    python_model.model.early_exit = count_batch
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a few MR sentences are truncated
            streamed = served.predict(frame)
    finally:
        del python_model.tokenize, python_model.model.early_exit
    assert len(streamed) == len(texts) and list(streamed.index) == list(frame.index)
    assert max(tokenized) == 512 and sum(tokenized) == len(texts), tokenized
    assert max(batch_rows) == 64 and sum(batch_rows) == len(texts)
    python_model.chunk_rows = 10**6  # all at once: the same answers
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = served.predict(frame)
    assert streamed["exit_layer"].tolist() == whole["exit_layer"].tolist()
    assert streamed["label"].tolist() == whole["label"].tolist()
    assert len(set(streamed["exit_layer"])) >= 2


def test_the_row_limit_applies_behind_the_scoring_server_and_is_configurable_there(exported, tmp_path, monkeypatch):
    from serving.model import SCORING_SERVER_VARIABLE

    plain = save(tmp_path / "plain", exported, {"policy": "none", "setting": 0})  # no model_config logged
    folder = save(tmp_path / "pyfunc", exported, {"policy": "none", "setting": 0}, max_rows=300)
    assert len(load(plain).predict(pd.DataFrame({"sentence": ["x"] * 700}))) == 700  # in process: no limit
    # `mlflow models serve` starts uvicorn with this variable naming the model (scoring_server.get_cmd)
    monkeypatch.setenv(SCORING_SERVER_VARIABLE, str(folder))
    assert len(load(plain).predict(pd.DataFrame({"sentence": ["x"] * 256}))) == 256  # the default
    error = _refused(load(plain).predict, pd.DataFrame({"sentence": ["x"] * 257}),
                     "257 rows in one request; this server takes at most 256")
    assert "MLFLOW_PYFUNC_INFERENCE_CONFIG" in error.message and error.get_http_status_code() == 400
    assert len(load(folder).predict(pd.DataFrame({"sentence": ["x"] * 300}))) == 300  # the logged max_rows
    monkeypatch.setenv("MLFLOW_PYFUNC_INFERENCE_CONFIG", '{"max_rows": 5}')  # what `mlflow models serve` reads
    _refused(load(folder).predict, pd.DataFrame({"sentence": ["x"] * 6}), "at most 5")
    monkeypatch.delenv("MLFLOW_PYFUNC_INFERENCE_CONFIG")
    small = load(folder, max_rows=3)
    _refused(small.predict, pd.DataFrame({"sentence": ["x"] * 4}), "requests of at most 3 rows")
    assert len(small.predict(pd.DataFrame({"sentence": ["x"] * 3}))) == 3
    assert small.predict(pd.DataFrame({"sentence": pd.Series([], dtype=object)})).empty


def test_overlong_text_is_truncated_with_a_warning_and_a_flag(full_depth):
    long = "a very long review that goes on and on " * 40
    with pytest.warns(UserWarning, match=rf"1 of 2 row\(s\) are longer than this model's {MAX_LENGTH} tokens"):
        out = full_depth.predict(pd.DataFrame({"sentence": ["short", long]}))
    assert len(out) == 2
    assert out["truncated"].tolist() == [False, True]  # the client is told, not only the server's log
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # exactly max_length tokens is not truncated
        python_model = full_depth.unwrap_python_model()
        tokens = python_model.tokenizer(long, truncation=True, max_length=MAX_LENGTH,
                                        add_special_tokens=False)["input_ids"][:MAX_LENGTH - 2]
        fits = python_model.tokenizer.decode(tokens)
        assert len(python_model.tokenizer(fits)["input_ids"]) == MAX_LENGTH
        full_depth.predict(pd.DataFrame({"sentence": [fits]}))


# ---------------------------------------------------------------------------------- serving
def test_signature_and_the_scoring_servers_json(full_depth):
    from mlflow.pyfunc import scoring_server
    from mlflow.types.schema import Array

    inputs, outputs = full_depth.metadata.get_input_schema(), full_depth.metadata.get_output_schema()
    assert inputs.input_names() == ["sentence"]
    assert outputs.input_names() == ["label", "label_name", "probabilities", "exit_layer", "truncated"]
    assert outputs.input_dict()["probabilities"].type == Array("double")
    # what `mlflow models serve` does with a request: parse, predict, serialize
    body = json.dumps({"dataframe_records": [{"sentence": "a gripping film."}, {"sentence": "dull."}]})
    answer = scoring_server.invocations(body, "application/json", full_depth, inputs)
    assert answer.status == 200
    rows = json.loads(answer.response)["predictions"]
    assert [sorted(r) for r in rows] == [["exit_layer", "label", "label_name", "probabilities", "truncated"]] * 2
    assert {r["label_name"] for r in rows} <= {"negative", "positive"}
    assert full_depth.metadata.metadata["id2label"] == {"0": "negative", "1": "positive"}
    assert [r["truncated"] for r in rows] == [False, False]
    long = json.dumps({"dataframe_records": [{"sentence": "on and on " * 40}, {"sentence": "dull."}]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cut = json.loads(scoring_server.invocations(long, "application/json", full_depth, inputs).response)
    assert [r["truncated"] for r in cut["predictions"]] == [True, False]
    assert rows[0]["exit_layer"] == NUM_LAYERS and abs(sum(rows[0]["probabilities"]) - 1) < 1e-6
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException) as err:
        scoring_server.invocations(json.dumps({"dataframe_records": [{"sentence": " "}]}),
                                   "application/json", full_depth, inputs)
    assert err.value.get_http_status_code() == 400 and "whitespace-only" in err.value.message


def test_pair_regression_model(tmp_path):
    from serving.export import export_model
    from trainers.model import MultiExitEncoder, tiny_backbone

    exported = export_model(_tiny(MultiExitEncoder, tiny_backbone, num_labels=1), _cfg("stsb"), tmp_path / "model")
    served = load(save(tmp_path / "pyfunc", exported, {"policy": "patience", "setting": 1, "delta": 0.5}))
    out = served.predict(pd.DataFrame({"sentence1": ["A man plays.", "A dog runs."],
                                       "sentence2": ["Someone plays music.", "A cat sleeps."]}))
    assert out["label"].dtype == "float64" and out["probabilities"].tolist() == [[], []]
    assert set(out["exit_layer"]) <= set(range(1, NUM_LAYERS + 1))
    python_model = served.unwrap_python_model()
    _refused(lambda f: python_model.predict(None, f), pd.DataFrame({"sentence1": ["x"]}),
             "(missing ['sentence2'])")


# ---------------------------------------------------------------------------------- self-contained
def test_code_paths_ship_serving_and_trainers_only(tmp_path):
    from serving.packaging import code_paths

    paths = [Path(p) for p in code_paths(tmp_path)]
    assert [p.name for p in paths] == ["serving", "trainers"]
    shipped = sorted(str(f.relative_to(tmp_path)) for p in paths for f in p.rglob("*.py"))
    assert shipped == ["serving/__init__.py", "serving/export.py", "serving/lean.py", "serving/model.py",
                       "serving/schema.py", "trainers/__init__.py", "trainers/errors.py", "trainers/layout.py",
                       "trainers/model.py", "trainers/model_source.py", "trainers/policies.py"]
    for f in (tmp_path / "serving").glob("*.py"):
        assert "sweeps" not in "".join(line for line in f.read_text().splitlines(True)
                                       if line.lstrip().startswith(("import ", "from "))), f


def test_saved_model_loads_and_predicts_without_the_repository(exported, tmp_path):
    folder = save(tmp_path / "pyfunc", exported, {"policy": "patience", "setting": 1})
    script = f"""
import json, sys
repo = {str(REPO)!r}
sys.path = [p for p in sys.path if p not in ('', '.', repo) and '__editable__' not in p
            and not (p.startswith(repo + '/') and not p.startswith(repo + '/.venv/'))]
sys.meta_path = [f for f in sys.meta_path if '__editable__' not in getattr(f, '__module__', '')
                 and '__editable__' not in repr(f)]
import mlflow, pandas as pd
m = mlflow.pyfunc.load_model({str(folder)!r})
out = m.predict(pd.DataFrame({{'sentence': ['a gripping film.', 'a dull mess.']}}))
import trainers, serving
print(json.dumps({{'rows': len(out), 'layers': out['exit_layer'].tolist(),
                  'sweeps_loaded': 'sweeps' in sys.modules,
                  'trainers': trainers.__file__, 'serving': serving.__file__}}))
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["rows"] == 2 and result["sweeps_loaded"] is False
    for package in ("trainers", "serving"):
        assert result[package].startswith(str(folder)), result  # the model's own copy, not the repo's


def test_bf16_answers_agree_with_fp32_ones_on_the_mr_test_sentences(exported, capsys):
    """The GPU path's precision (bf16 autocast, model_config precision auto on CUDA), run on the CPU
    on 400 MR test sentences: every exit's argmax against fp32 (a full forward), then the served
    answers and exit layers of policies against fp32. The figures go to docs/serving.md."""
    from serving.model import ExitPolicyModel

    texts = [mr_sentences(400)]
    fp32 = ExitPolicyModel().load(exported, {"policy": "none", "setting": 0}, precision="fp32")
    bf16 = ExitPolicyModel().load(exported, {"policy": "none", "setting": 0}, precision="bf16")
    assert fp32.autocast_dtype is None and bf16.autocast_dtype == torch.bfloat16
    agree, total, worst = 0, 0, 0.0
    with torch.inference_mode():
        (_, logits, _), *_ = bf16.device_outputs([texts[0][:8]])
        assert logits.dtype == torch.bfloat16, "autocast reached the exits"
        for _, batch in fp32.batches(*fp32.tokenize(texts)):
            exact = fp32.model(**batch)  # [exits, rows, classes]
            with torch.autocast("cpu", dtype=torch.bfloat16):
                mixed = bf16.model(**batch).float()
            agree += (exact.argmax(-1) == mixed.argmax(-1)).sum().item()
            total += exact.shape[0] * exact.shape[1]
            worst = max(worst, (exact.softmax(-1) - mixed.softmax(-1)).abs().max().item())
    lines = [f"every exit's argmax, bf16 vs fp32: {agree}/{total} agree ({agree / total:.4f}); "
             f"largest probability difference {worst:.4f}"]
    for kind, setting in (("patience", 1), ("confidence", 0.95)):
        policy = {"policy": kind, "setting": setting}
        labels32, _, layers32 = ExitPolicyModel().load(exported, policy, precision="fp32").predict_texts(texts)
        labels16, _, layers16 = ExitPolicyModel().load(exported, policy, precision="bf16").predict_texts(texts)
        lines.append(f"{kind} {setting}: answers agree {(labels32 == labels16).mean():.4f}, exit layers agree "
                     f"{(layers32 == layers16).mean():.4f} (fp32 exit layers {np.bincount(layers32).tolist()})")
        assert (labels32 == labels16).mean() >= 0.98 and (layers32 == layers16).mean() >= 0.95, lines
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    assert agree / total >= 0.98, lines
    with pytest.raises(Exception, match="precision must be one of"):
        ExitPolicyModel().load(exported, {"policy": "none", "setting": 0}, precision="fp16")

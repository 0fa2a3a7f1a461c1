"""Data layer: text-classification tasks, tokenized splits, the D1/D2 halves and the samplers.

Two kinds of tasks:

* embedded (``mr``, ``snli``): real data shipped inside the package (``task_data/``, see
  ``task_data/PROVENANCE.md``), so everything runs with no network. train/validation/test are
  the shipped files.
* GLUE: read from the Hugging Face hub (``nyu-mll/glue``) or from local files in ``data_dir``.
  GLUE test labels are hidden, so the GLUE dev set is our ``test`` and a seeded, stratified
  ``validation_fraction`` slice of GLUE train is our ``validation`` (removed from train).

Local files may use the Hugging Face column names or the names of the original GLUE
distribution (``#1 String``, ``gold_label``, ``score``, string labels such as ``entailment``,
CoLA's header-less TSVs); see ``_FORMATS``.

Every split keeps, per example, an id ``split_code * 1_000_000_000 + source row number``
(train=0, validation=1, test=2) so predictions can always be traced back to a file row.

Randomness is always derived from ``seed`` plus a purpose-specific salt (``derive_seed``), so
the validation slice, the subsets, the halves and the sampler are independent of each other
and reproducible on any machine (torch's CPU generator is platform independent).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import torch

from trainers.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

SPLIT_CODES = {"train": 0, "validation": 1, "test": 2}
ID_STRIDE = 1_000_000_000  # ids are split_code * ID_STRIDE + source row number
REGRESSION_BINS = 5  # quantile bins used to stratify a regression target
EMBEDDED_DIR = Path(__file__).parent / "task_data"
GLUE_HUB_NAME = "nyu-mll/glue"


# --------------------------------------------------------------------------------------- tasks
@dataclass(frozen=True)
class TaskSpec:
    name: str  # "mr", "snli", "sst2", "mnli", ...
    text_fields: tuple[str, ...]  # canonical column names: ("sentence",) or a pair
    num_labels: int  # 1 for regression (stsb)
    is_regression: bool
    metrics: tuple[str, ...]  # first is the primary one: accuracy, f1, matthews, pearson, spearman
    source: str  # "embedded" (shipped in the package) or "glue"


def _task(name, text_fields, num_labels, metrics, source="glue"):
    return TaskSpec(name, tuple(text_fields), num_labels, num_labels == 1, tuple(metrics), source)


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        _task("mr", ["sentence"], 2, ["accuracy"], source="embedded"),
        _task("snli", ["premise", "hypothesis"], 3, ["accuracy"], source="embedded"),
        _task("cola", ["sentence"], 2, ["matthews"]),
        _task("sst2", ["sentence"], 2, ["accuracy"]),
        _task("mrpc", ["sentence1", "sentence2"], 2, ["f1", "accuracy"]),
        _task("qqp", ["question1", "question2"], 2, ["accuracy", "f1"]),
        _task("stsb", ["sentence1", "sentence2"], 1, ["pearson", "spearman"]),
        _task("mnli", ["premise", "hypothesis"], 3, ["accuracy"]),
        _task("mnli_mismatched", ["premise", "hypothesis"], 3, ["accuracy"]),
        _task("qnli", ["question", "sentence"], 2, ["accuracy"]),
        _task("rte", ["sentence1", "sentence2"], 2, ["accuracy"]),
        _task("wnli", ["sentence1", "sentence2"], 2, ["accuracy"]),
    )
}


def get_task(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}") from None


@dataclass(frozen=True)
class _Format:
    """How a task's files may name columns and labels beyond the canonical (Hugging Face) names."""

    column_aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    label_names: Mapping[str, int] = field(default_factory=dict)  # lower-case string label -> id
    headerless_columns: tuple[str, ...] = ()  # column names for a TSV without a header row


_NLI3 = {"entailment": 0, "neutral": 1, "contradiction": 2}  # MNLI/HF label order
_NLI2 = {"entailment": 0, "not_entailment": 1}
_MNLI_FORMAT = _Format({"premise": ("sentence1",), "hypothesis": ("sentence2",), "label": ("gold_label",)}, _NLI3)

_FORMATS: dict[str, _Format] = {
    "mr": _Format(),
    "snli": _Format(label_names=_NLI3),
    # The original CoLA TSVs have no header: source, label, original label (or blank), sentence.
    "cola": _Format(headerless_columns=("source", "label", "original_label", "sentence")),
    "sst2": _Format(),
    "mrpc": _Format({"sentence1": ("#1 String",), "sentence2": ("#2 String",), "label": ("Quality",)}),
    "qqp": _Format({"label": ("is_duplicate",)}),
    "stsb": _Format({"label": ("score",)}),
    "mnli": _MNLI_FORMAT,
    "mnli_mismatched": _MNLI_FORMAT,
    "qnli": _Format(label_names=_NLI2),
    "rte": _Format(label_names=_NLI2),
    "wnli": _Format(),
}


@dataclass(frozen=True)
class _GlueSource:
    config: str  # the hub config name, also the (normalized) name of a per-task sub-folder
    hub_test_split: str  # the GLUE dev split that serves as our test set
    test_stems: tuple[str, ...]  # local file names (without extension) of that dev split


_GLUE: dict[str, _GlueSource] = {
    name: _GlueSource(name, "validation", ("validation", "dev"))
    for name in ("cola", "sst2", "mrpc", "qqp", "stsb", "qnli", "rte", "wnli")
}
_GLUE["mnli"] = _GlueSource("mnli", "validation_matched", ("validation_matched", "dev_matched"))
_GLUE["mnli_mismatched"] = _GlueSource("mnli", "validation_mismatched", ("validation_mismatched", "dev_mismatched"))


# -------------------------------------------------------------------------------------- splits
@dataclass
class Split:
    name: str  # "train" | "validation" | "test"
    input_ids: list[list[int]]  # tokenized, truncated, not padded
    token_type_ids: list[list[int]]
    labels: torch.Tensor  # long (classification) or float32 (regression), [N]
    ids: torch.Tensor  # long [N]: split_code * 1_000_000_000 + source row number

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class TaskData:
    task: TaskSpec
    train: Split  # D: the training data (after the optional subset)
    d1: torch.Tensor  # long indices into train: half D1
    d2: torch.Tensor  # long indices into train: half D2 (disjoint, d1 ∪ d2 = train)
    validation: Split
    test: Split
    pad_token_id: int


@dataclass
class _Rows:
    """Untokenized rows of one split: one text list per text field, labels, source row numbers."""

    texts: tuple[list[str], ...]
    labels: list[float] | list[int]
    rows: list[int]

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, indices: torch.Tensor) -> "_Rows":
        picked = indices.tolist()
        return _Rows(
            tuple([column[i] for i in picked] for column in self.texts),
            [self.labels[i] for i in picked],
            [self.rows[i] for i in picked],
        )


# ------------------------------------------------------------------------------------- loading
def load_task_data(
    task: str | TaskSpec,
    tokenizer,
    *,
    data_dir: str | None = None,
    max_length: int = 128,
    train_subset: int | None = None,
    eval_subset: int | None = None,
    seed: int = 42,
    validation_fraction: float = 0.1,
) -> TaskData:
    """Load, split, subset and tokenize a task.

    ``data_dir`` overrides where the files come from: for GLUE tasks a folder with
    ``train.*`` and ``validation.*``/``dev.*`` files (or a GLUE root with one sub-folder per
    task); for embedded tasks a folder with ``train.*``, ``validation.*`` and ``test.*``.
    """
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    _check_options(spec, max_length, train_subset, eval_subset, validation_fraction)
    pad_token_id = getattr(tokenizer, "pad_token_id", None)
    if pad_token_id is None:
        raise ConfigError("the tokenizer has no pad token; set tokenizer.pad_token (e.g. to its eos or unk token)")

    if spec.source == "embedded":
        rows = _load_embedded(spec, data_dir)
    else:
        rows = _load_glue(spec, data_dir)
        rows["train"], rows["validation"] = _carve_validation(spec, rows["train"], validation_fraction, seed)

    # Subset before tokenizing: quick runs on big tasks then do not pay for the whole file.
    if train_subset is not None:
        rows["train"] = _subset(spec, rows["train"], train_subset, derive_seed(seed, "train_subset"))
    if eval_subset is not None:
        for name in ("validation", "test"):
            rows[name] = _subset(spec, rows[name], eval_subset, derive_seed(seed, "eval_subset", name))
    for name, split_rows in rows.items():
        if len(split_rows) == 0:  # defensive: _read_rows already rejects files without labelled rows
            raise ConfigError(f"the {name} split of task '{spec.name}' is empty; check the data files")

    splits = {name: _tokenize(name, spec, split_rows, tokenizer, max_length) for name, split_rows in rows.items()}
    d1, d2 = stratified_halves(splits["train"].labels, seed, spec.is_regression)
    return TaskData(spec, splits["train"], d1, d2, splits["validation"], splits["test"], int(pad_token_id))


def _check_options(spec, max_length, train_subset, eval_subset, validation_fraction) -> None:
    known = spec.name in _GLUE if spec.source == "glue" else (EMBEDDED_DIR / spec.name).is_dir()
    if not known or spec.source not in ("embedded", "glue"):
        raise ConfigError(
            f"no loader for task {spec.name!r} (source {spec.source!r}); choose one of: {', '.join(TASKS)}"
        )
    if not isinstance(max_length, int) or max_length <= 0:
        raise ConfigError(f"max_length must be a positive number of tokens (got {max_length}); e.g. 128")
    for name, value in (("train_subset", train_subset), ("eval_subset", eval_subset)):
        if value is not None and value <= 0:
            raise ConfigError(f"{name} must be > 0 (got {value}); leave it unset to use all examples")
    if spec.source == "glue" and not 0 < validation_fraction < 1:
        raise ConfigError(
            f"validation_fraction must be between 0 and 1 (got {validation_fraction}); "
            "it is the share of GLUE train held out as validation, e.g. 0.1"
        )


def _load_embedded(spec: TaskSpec, data_dir: str | None) -> dict[str, _Rows]:
    folder = _existing_dir(data_dir) if data_dir is not None else EMBEDDED_DIR / spec.name
    stems = {"train": ("train",), "validation": ("validation", "dev"), "test": ("test",)}
    return {name: _read_rows(spec, _find_split_files(spec, [folder], name, names)) for name, names in stems.items()}


def _load_glue(spec: TaskSpec, data_dir: str | None) -> dict[str, _Rows]:
    """Return {"train": GLUE train, "test": GLUE dev}; validation is carved from train later."""
    source = _GLUE[spec.name]
    if data_dir is None:
        frames = _load_glue_hub(spec, source)
        origin = f"{GLUE_HUB_NAME}/{source.config}"
        return {name: _frame_to_rows(spec, frame, f"{origin} {name}") for name, frame in frames.items()}
    root = _existing_dir(data_dir)
    # Also accept a GLUE root with one folder per task ("SST-2", "sst2", "STS-B", "MNLI", ...).
    folders = [root] + sorted(p for p in root.iterdir() if p.is_dir() and _normalize_name(p.name) == source.config)
    return {
        "train": _read_rows(spec, _find_split_files(spec, folders, "train", ("train",))),
        "test": _read_rows(spec, _find_split_files(spec, folders, "test", source.test_stems)),
    }


def _load_glue_hub(spec: TaskSpec, source: _GlueSource) -> dict[str, pd.DataFrame]:
    try:
        import datasets

        dataset = datasets.load_dataset(GLUE_HUB_NAME, source.config)
        return {"train": dataset["train"].to_pandas(), "test": dataset[source.hub_test_split].to_pandas()}
    except Exception as exc:  # no network, offline mode, missing cache, ...: all mean the same to the user
        raise ConfigError(
            f"could not load GLUE '{source.config}' for task '{spec.name}' from the Hugging Face hub "
            f"({type(exc).__name__}: {str(exc)[:300]}); the hub is probably unreachable from here. Download the GLUE "
            "files once elsewhere and pass --data-dir DIR, a folder with train.tsv and dev.tsv "
            "(or train/validation .csv/.jsonl/.json/.parquet)"
        ) from exc


def _existing_dir(data_dir: str) -> Path:
    folder = Path(data_dir).expanduser()
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise ConfigError(f"data_dir '{data_dir}' {what}; pass --data-dir with the folder that holds the task's files")
    return folder


def _normalize_name(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


# ------------------------------------------------------------------------------------ file i/o
# Preference order when several files exist for the same split.
_EXTENSIONS = ("tsv", "tsv.gz", "csv", "csv.gz", "jsonl", "jsonl.gz", "json", "parquet")


def _find_split_files(spec: TaskSpec, folders: Sequence[Path], split: str, stems: Sequence[str]) -> list[Path]:
    """The file of a split, or its shards (``train-00000-of-00002.parquet``, the hub's layout)."""
    for folder in folders:
        for stem in stems:
            for ext in _EXTENSIONS:
                if (folder / f"{stem}.{ext}").is_file():
                    return [folder / f"{stem}.{ext}"]
                shards = sorted(folder.glob(f"{stem}-*-of-*.{ext}"))
                if shards:
                    return shards
    found = sorted(p.name for folder in folders for p in folder.iterdir())
    expected = ", ".join(f"{stem}.{ext}" for stem in stems for ext in ("tsv", "csv", "jsonl", "json", "parquet"))
    raise ConfigError(
        f"no {split} file for task '{spec.name}' in {', '.join(map(str, folders))}; "
        f"expected one of: {expected} (.gz allowed for tsv/csv/jsonl); "
        f"found: {', '.join(found[:30]) or 'nothing'}"
    )


def _read_rows(spec: TaskSpec, paths: list[Path]) -> _Rows:
    import pandas as pd  # here, not at the top: a training on prepared data needs no pandas (the GPU bundle)

    frames = [_read_table(spec, path) for path in paths]
    frame = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    return _frame_to_rows(spec, frame, str(paths[0]) if len(paths) == 1 else f"{paths[0]} (+{len(paths) - 1} shards)")


def _read_table(spec: TaskSpec, path: Path) -> pd.DataFrame:
    import pandas as pd

    name = path.name.lower().removesuffix(".gz")
    try:
        if name.endswith(".tsv"):
            frame = _read_tsv(path, header=0)
            headerless = _FORMATS[spec.name].headerless_columns
            if headerless and len(frame.columns) == len(headerless) and _find_column(frame, "sentence") is None:
                frame = _read_tsv(path, header=None, names=list(headerless))
            return frame
        if name.endswith(".csv"):
            return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
        if name.endswith(".jsonl"):
            return pd.read_json(path, lines=True, dtype=False, convert_dates=False)
        if name.endswith(".json"):
            try:  # a JSON array of records, or JSON lines under a .json name
                return pd.read_json(path, dtype=False, convert_dates=False)
            except ValueError:
                return pd.read_json(path, lines=True, dtype=False, convert_dates=False)
        return pd.read_parquet(path)
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise ConfigError(
            f"could not read '{path}' ({type(exc).__name__}: {str(exc)[:300]}); "
            f"check that the file is a valid {name.rsplit('.', 1)[-1]} file"
        ) from exc


def _read_tsv(path: Path, **kwargs) -> pd.DataFrame:
    import pandas as pd

    # GLUE TSVs contain unbalanced quote characters, so quoting must be off (as in the GLUE
    # reference loaders); keep every cell as text so "NA" or "null" stay words.
    return pd.read_csv(
        path, sep="\t", quoting=csv.QUOTE_NONE, dtype=str, keep_default_na=False, encoding="utf-8-sig", **kwargs
    )


def _find_column(frame: pd.DataFrame, *accepted: str) -> str | None:
    """The frame's column matching one of ``accepted`` (first wins), ignoring case and spaces."""
    by_key = {str(column).strip().lstrip("\ufeff").lower(): column for column in frame.columns}
    for name in accepted:
        if name.lower() in by_key:
            return by_key[name.lower()]
    return None


def _frame_to_rows(spec: TaskSpec, frame: pd.DataFrame, origin: str) -> _Rows:
    fmt = _FORMATS[spec.name]
    columns = {}
    for canonical in spec.text_fields + ("label",):
        accepted = (canonical,) + tuple(fmt.column_aliases.get(canonical, ()))
        column = _find_column(frame, *accepted)
        if column is None:
            raise ConfigError(
                f"'{origin}' has no {canonical!r} column (accepted names: {', '.join(accepted)}) for task "
                f"'{spec.name}'; columns found: {', '.join(map(str, frame.columns))}. "
                "Rename the column or pick the matching task"
            )
        columns[canonical] = column

    labels = _parse_labels(spec, frame[columns["label"]], origin)
    keep = [i for i, label in enumerate(labels) if label is not None]
    if len(keep) < len(labels):
        log.info("%s: dropped %d rows without a valid label", origin, len(labels) - len(keep))
    if not keep:
        raise ConfigError(
            f"'{origin}' has no rows with a valid label for task '{spec.name}'; check the file and the task"
        )
    texts = tuple(_texts(frame[columns[name]]) for name in spec.text_fields)
    return _Rows(tuple([column[i] for i in keep] for column in texts), [labels[i] for i in keep], keep)


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _texts(column: pd.Series) -> list[str]:
    return ["" if _is_missing(value) else str(value) for value in column.tolist()]


_MISSING_LABELS = {"", "-", "nan", "none", "null"}


def _parse_labels(spec: TaskSpec, column: pd.Series, origin: str) -> list:
    """Labels as int (classification) or float (regression); None marks a missing/hidden label."""
    label_names = _FORMATS[spec.name].label_names
    # None for NaN too: NaN != NaN, so NaNs would not work as dictionary keys below.
    values = [None if _is_missing(value) else value for value in column.tolist()]
    parsed: dict[Any, Any] = {}
    invalid = []
    for value in dict.fromkeys(values):  # parse each distinct value once: columns have few of them
        try:
            parsed[value] = _parse_label(value, label_names, spec.is_regression)
        except ValueError:
            invalid.append(value)
    if invalid:
        names = f" or one of: {', '.join(label_names)}" if label_names else ""
        kind = "numbers" if spec.is_regression else f"integers 0..{spec.num_labels - 1}{names}"
        raise ConfigError(
            f"'{origin}' has labels {sorted(map(str, invalid))[:10]} that task '{spec.name}' cannot read; "
            f"expected {kind}. Check that the file matches the task"
        )
    labels = [parsed[value] for value in values]
    if not spec.is_regression:
        found = sorted({label for label in labels if label is not None})
        if found and (found[0] < 0 or found[-1] >= spec.num_labels):
            raise ConfigError(
                f"task '{spec.name}' expects {spec.num_labels} labels (0..{spec.num_labels - 1}) but '{origin}' has "
                f"{len(found)} distinct labels {found[:20]}; pick the task that matches the data"
            )
    return labels


def _parse_label(value, label_names: Mapping[str, int], is_regression: bool):
    if value is None:
        return None
    text = str(value).strip()
    if text.lower() in label_names:
        return label_names[text.lower()]
    if text.lower() in _MISSING_LABELS:
        return None
    number = float(text)  # ValueError for words the task does not know
    if number == -1 or math.isnan(number):  # -1: the hub's marker for hidden (test) labels
        return None
    if is_regression:
        return number
    if not number.is_integer():
        raise ValueError(text)
    return int(number)


# --------------------------------------------------------------------------------- subsetting
def _carve_validation(spec: TaskSpec, train: _Rows, fraction: float, seed: int) -> tuple[_Rows, _Rows]:
    """Hold out a stratified share of GLUE train as validation; both keep their source row numbers."""
    if len(train) < 2:
        raise ConfigError(
            f"task '{spec.name}' has {len(train)} training rows; at least 2 are needed to hold out a validation set"
        )
    n_val = min(max(round(fraction * len(train)), 1), len(train) - 1)
    labels = _labels_tensor(spec, train.labels)
    val_idx = stratified_subset(labels, n_val, derive_seed(seed, "validation"), spec.is_regression)
    in_val = torch.zeros(len(train), dtype=torch.bool)
    in_val[val_idx] = True
    return train.take(torch.nonzero(~in_val).squeeze(1)), train.take(val_idx)


def _subset(spec: TaskSpec, rows: _Rows, n: int, seed: int) -> _Rows:
    if n >= len(rows):
        return rows
    return rows.take(stratified_subset(_labels_tensor(spec, rows.labels), n, seed, spec.is_regression))


def _strata(labels: torch.Tensor, is_regression: bool) -> torch.Tensor:
    """Stratum of each example: its class, or its quantile bin for a regression target."""
    if not is_regression:
        return labels.long()
    values = labels.double()
    edges = torch.quantile(values, torch.linspace(0, 1, REGRESSION_BINS + 1, dtype=torch.float64)[1:-1])
    return torch.bucketize(values, edges)


def _stratified_order(labels: torch.Tensor, seed: int, is_regression: bool) -> torch.Tensor:
    """A seeded order of all examples whose every prefix is (within 1 per stratum) proportional.

    The j-th of the s shuffled members of a stratum gets the key (j + 0.5) / s, i.e. members are
    spread evenly over [0, 1]; sorting all examples by key (ties broken at random) interleaves
    the strata in proportion to their sizes.
    """
    n = len(labels)
    generator = _generator(seed, "stratified_order")
    strata = _strata(labels, is_regression)
    keys = torch.empty(n, dtype=torch.float64)
    for stratum in torch.unique(strata):
        members = torch.nonzero(strata == stratum).squeeze(1)
        shuffled = members[torch.randperm(len(members), generator=generator)]
        keys[shuffled] = (torch.arange(len(members), dtype=torch.float64) + 0.5) / len(members)
    tie_break = torch.randperm(n, generator=generator)
    order = torch.sort(keys[tie_break], stable=True).indices
    return tie_break[order]


def stratified_subset(labels: torch.Tensor, n: int, seed: int, is_regression: bool = False) -> torch.Tensor:
    """Sorted indices of a seeded stratified sample of size ``n`` (all indices if ``n`` >= len).

    Samples are nested: the sample of size n is contained in the sample of size n + 1.
    """
    if n >= len(labels):
        return torch.arange(len(labels))
    return torch.sort(_stratified_order(labels, seed, is_regression)[:n]).values


def stratified_halves(
    labels: torch.Tensor, seed: int, is_regression: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices into two disjoint halves (D1, D2), each stratum split evenly.

    Each stratum is shuffled, then examples alternate between the halves; the alternation runs
    on across strata, so per stratum and overall the halves differ by at most one example.
    """
    generator = _generator(seed, "halves")
    strata = _strata(labels, is_regression)
    chunks = []
    for stratum in torch.unique(strata):
        members = torch.nonzero(strata == stratum).squeeze(1)
        chunks.append(members[torch.randperm(len(members), generator=generator)])
    order = torch.cat(chunks) if chunks else torch.empty(0, dtype=torch.long)
    return torch.sort(order[0::2]).values, torch.sort(order[1::2]).values


def _labels_tensor(spec: TaskSpec, labels: Sequence) -> torch.Tensor:
    return torch.tensor(labels, dtype=torch.float32 if spec.is_regression else torch.long)


# --------------------------------------------------------------------------------- tokenizing
def _tokenize(name: str, spec: TaskSpec, rows: _Rows, tokenizer, max_length: int) -> Split:
    second = rows.texts[1] if len(rows.texts) > 1 else None
    encoded = tokenizer(rows.texts[0], second, truncation=True, max_length=max_length)
    input_ids = [list(ids) for ids in encoded["input_ids"]]
    # Tokenizers without segment ids (RoBERTa-style) still get a tensor the model can ignore.
    segments = encoded.get("token_type_ids")
    token_type_ids = [list(t) for t in segments] if segments is not None else [[0] * len(ids) for ids in input_ids]
    ids = torch.tensor(rows.rows, dtype=torch.long) + SPLIT_CODES[name] * ID_STRIDE
    return Split(name, input_ids, token_type_ids, _labels_tensor(spec, rows.labels), ids)


# ---------------------------------------------------------------------------------- batching
def collate(split: Split, indices: torch.Tensor | list[int], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Batch the given examples, right-padded to the longest one in this batch."""
    picked = indices.tolist() if isinstance(indices, torch.Tensor) else list(indices)
    width = max((len(split.input_ids[i]) for i in picked), default=0)
    input_ids = torch.full((len(picked), width), pad_token_id, dtype=torch.long)
    token_type_ids = torch.zeros((len(picked), width), dtype=torch.long)
    attention_mask = torch.zeros((len(picked), width), dtype=torch.long)
    for row, i in enumerate(picked):
        length = len(split.input_ids[i])
        input_ids[row, :length] = torch.tensor(split.input_ids[i], dtype=torch.long)
        token_type_ids[row, :length] = torch.tensor(split.token_type_ids[i], dtype=torch.long)
        attention_mask[row, :length] = 1
    index = torch.tensor(picked, dtype=torch.long)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": token_type_ids,
        "labels": split.labels[index],
        "ids": split.ids[index],
    }


def eval_batches(split: Split, batch_size: int, pad_token_id: int) -> Iterator[tuple[torch.Tensor, dict]]:
    """Yield (positions, batch) over every example once, longest first so padding stays small.

    Longest first also means an out-of-memory shows up on the first batch, not the last.
    """
    if batch_size <= 0:
        raise ConfigError(f"the evaluation batch size must be > 0 (got {batch_size})")
    lengths = torch.tensor([len(ids) for ids in split.input_ids], dtype=torch.long)
    order = torch.sort(lengths, descending=True, stable=True).indices
    for start in range(0, len(order), batch_size):
        positions = order[start:start + batch_size]
        yield positions, collate(split, positions, pad_token_id)


def derive_seed(*parts) -> int:
    """A 63-bit seed from any tuple of ints/strings; stable across runs and machines (unlike hash())."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def _generator(*parts) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


@functools.lru_cache(maxsize=8)  # a batch touches at most 2 passes; room for a few samplers (D1, D2, ...)
def _permutation(n: int, seed: int, salt: int, k: int) -> torch.Tensor:
    return torch.randperm(n, generator=_generator(seed, salt, k))


def batch_indices(n: int, batch_size: int, step: int, seed: int, salt: int = 0) -> torch.Tensor:
    """Indices of training batch ``step``: a stateless sampler, so resuming is exact.

    Conceptually an infinite stream of concatenated random permutations of range(n), the k-th
    seeded from (seed, salt, k); batch ``step`` is stream positions
    [step * batch_size, (step + 1) * batch_size). Batches are always full and every example
    appears once per pass; a batch may straddle two passes.
    """
    if n <= 0:
        raise ConfigError("cannot sample batches from an empty training set; check the data and train_subset")
    if batch_size <= 0:
        raise ConfigError(f"batch_size must be > 0 (got {batch_size})")
    if step < 0:
        raise ValueError(f"step must be >= 0 (got {step})")
    position, stop = step * batch_size, (step + 1) * batch_size
    parts = []
    while position < stop:
        k, offset = divmod(position, n)
        take = min(n - offset, stop - position)
        parts.append(_permutation(n, seed, salt, k)[offset:offset + take])
        position += take
    return torch.cat(parts)  # a copy: callers must never alias the cached permutations


def synthetic_task_data(num_train: int, num_eval: int, vocab_size: int, max_length: int, num_labels: int = 2,
                        seed: int = 0) -> TaskData:
    """A learnable random task with no download: token ids of random lengths, the label a function of
    the first token. For hardware checks (benchmarks/gpu_check.py), where no tokenizer or data set is at hand."""
    gen = torch.Generator().manual_seed(seed)
    task = TaskSpec("synthetic", ("sentence",), num_labels, False, ("accuracy",), "synthetic")

    def split(name: str, code: int, n: int) -> Split:
        lengths = torch.randint(max(4, max_length // 4), max_length + 1, (n,), generator=gen).tolist()
        ids = [torch.randint(5, vocab_size, (length,), generator=gen).tolist() for length in lengths]
        labels = torch.tensor([row[0] * num_labels // vocab_size for row in ids], dtype=torch.long)
        return Split(name, ids, [[0] * len(row) for row in ids], labels, torch.arange(n) + code * 1_000_000_000)

    train = split("train", 0, num_train)
    order = torch.randperm(num_train, generator=gen)
    return TaskData(task, train, order[: num_train // 2], order[num_train // 2:], split("validation", 1, num_eval),
                    split("test", 2, num_eval), pad_token_id=0)

"""Your own task: train/validation/test files or a ``datasets`` data set, named text and label columns.

    python -m trainers.train --train-file reviews.csv --text-columns review --label-column stars
    python -m trainers.train --dataset ./saved --text-columns premise,hypothesis   # save_to_disk folder
    python -m trainers.train --dataset imdb                                         # the hub (network)

The convention of Hugging Face's ``run_classification.py``: string or integer labels, any number
of classes (names in label-id order: sorted words, or sorted numbers; a ``ClassLabel`` feature's
own names), or float labels with ``regression``. A missing validation split is carved from train,
stratified (``validation_fraction``); so is a missing test split (``test_fraction``), and
``notes`` says so. Bad data is refused with one message naming the file, the column and the rows:
a missing column, empty or null texts, missing labels, mixed label types, a label that train never
saw, a class too small to carve, an unreadable file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainers.data_files import Rows, read_table
from trainers.errors import ConfigError
from trainers.tasks import TaskSpec

if TYPE_CHECKING:
    import pandas as pd

SPLITS = ("train", "validation", "test")
# A data set's split names for our validation and test (the first found wins)
_DATASET_SPLITS = {"train": ("train",), "validation": ("validation", "valid", "dev", "validation_matched"),
                   "test": ("test", "test_matched")}
# Text columns tried, in order, when --text-columns is not given
_DEFAULT_TEXT_COLUMNS = (("text",), ("sentence",), ("sentence1", "sentence2"), ("premise", "hypothesis"),
                         ("question1", "question2"))


@dataclass(frozen=True)
class OwnData:
    """Where the user's data is and how to read it (``TrainConfig.own_data()`` builds it)."""

    name: str                               # the task's name (registered model leebert-<name>)
    train_file: str | None = None
    validation_file: str | None = None
    test_file: str | None = None
    dataset: str | None = None              # a hub data set name or a save_to_disk folder
    dataset_config: str | None = None
    text_columns: tuple[str, ...] | None = None  # None: text, sentence, or a known pair
    label_column: str = "label"
    regression: bool = False


@dataclass
class OwnTask:
    spec: TaskSpec
    rows: dict[str, Rows]                   # train, and validation/test where the source has them
    origins: dict[str, str]                 # split -> where its rows came from (for messages)


def load_own_task(source: OwnData) -> OwnTask:
    """The task's spec and the labelled rows of each split the source has (carving is the caller's)."""
    frames, class_names = _frames(source)
    train_frame, train_origin = frames["train"]
    text_columns = _text_columns(source, train_frame, train_origin)
    texts, raw_labels = {}, {}
    for split, (frame, origin) in frames.items():
        columns = [_column(frame, name, origin, "text") for name in text_columns]
        label = _column(frame, source.label_column, origin, "label")
        texts[split] = [_texts(frame[column], origin, name) for column, name in zip(columns, text_columns)]
        raw_labels[split] = _raw_labels(frame[label], origin, source.label_column)
    if source.regression:
        labels = {split: _numbers(values, frames[split][1], source.label_column) for split, values in raw_labels.items()}
        names: tuple[str, ...] = ()
    else:
        names, labels = _classes(raw_labels, {s: o for s, (_, o) in frames.items()}, class_names, source.label_column)
    spec = TaskSpec(source.name, tuple(text_columns), 1 if source.regression else len(names), source.regression,
                    ("pearson", "spearman") if source.regression else ("accuracy", "macro_f1"), "own", names)
    rows = {split: Rows(tuple(texts[split]), labels[split], list(range(len(labels[split])))) for split in frames}
    return OwnTask(spec, rows, {split: origin for split, (_, origin) in frames.items()})


# ------------------------------------------------------------------------------------- sources
def _frames(source: OwnData) -> tuple[dict[str, tuple[pd.DataFrame, str]], tuple[str, ...] | None]:
    """{split: (table, origin)} of the splits the source has, and a ClassLabel's names if any."""
    if source.dataset is not None:
        return _dataset_frames(source.dataset, source.dataset_config, source.label_column)
    frames: dict[str, tuple[pd.DataFrame, str]] = {}
    class_names = None
    for split, path in zip(SPLITS, (source.train_file, source.validation_file, source.test_file)):
        if path is None:
            continue
        if "://" not in path and Path(path).is_dir():  # a Dataset saved with save_to_disk
            loaded, names = _dataset_frames(path, None, source.label_column)
            frames[split] = loaded["train"]
            class_names = class_names or names
        else:
            frames[split] = (_read_any(path), path)
    return frames, class_names


def _read_any(path: str) -> pd.DataFrame:
    if "://" in path:  # s3://, gs://, ...: pandas reads them through fsspec where its backend is installed
        import pandas as pd

        name = path.lower().removesuffix(".gz")
        readers = {".csv": lambda: pd.read_csv(path, dtype=str, keep_default_na=False),
                   ".tsv": lambda: pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False),
                   ".jsonl": lambda: pd.read_json(path, lines=True, dtype=False),
                   ".parquet": lambda: pd.read_parquet(path)}
        suffix = next((s for s in readers if name.endswith(s)), None)
        if suffix is None:
            raise ConfigError(f"cannot read '{path}': unknown file type; use .csv, .tsv, .jsonl or .parquet")
        try:
            return readers[suffix]()
        except Exception as exc:  # noqa: BLE001 - a missing backend, credentials, the network: one message
            raise ConfigError(f"could not read '{path}' ({_one_line(exc)})") from None
    return read_table(Path(path).expanduser())


def _dataset_frames(name: str, config: str | None, label_column: str):
    """A save_to_disk folder (``load_from_disk``) or a hub data set (``load_dataset``), per split."""
    try:
        import datasets

        if Path(name).expanduser().is_dir():
            loaded = datasets.load_from_disk(str(Path(name).expanduser()))
        else:
            loaded = datasets.load_dataset(name, config)
    except Exception as exc:  # noqa: BLE001 - not a data set folder, no network, unknown name: all one message
        raise ConfigError(f"could not load the data set '{name}' ({_one_line(exc)}); pass a "
                          "folder written by datasets' save_to_disk, or a hub name with network access") from None
    if isinstance(loaded, datasets.Dataset):
        parts = {"train": loaded}
    else:
        parts = {}
        for split, candidates in _DATASET_SPLITS.items():
            found = next((c for c in candidates if c in loaded), None)
            if found is not None:
                parts[split] = loaded[found]
        if "train" not in parts:
            raise ConfigError(f"the data set '{name}' has no train split; its splits: {', '.join(loaded)}")
    feature = parts["train"].features.get(label_column)
    class_names = tuple(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    frames = {split: (part.to_pandas(), f"{name} [{split}]") for split, part in parts.items()}
    if class_names is not None:  # a hub test split with hidden labels (-1 everywhere): carve one instead
        frames = {s: f for s, f in frames.items()
                  if s == "train" or label_column not in f[0].columns or not (f[0][label_column] == -1).all()}
    return frames, class_names


def _one_line(exc: Exception) -> str:
    """A library's error as one short line (the command line prints one ``error:`` line)."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


# ------------------------------------------------------------------------------------- columns
def _text_columns(source: OwnData, frame: pd.DataFrame, origin: str) -> tuple[str, ...]:
    if source.text_columns is not None:
        return source.text_columns
    for names in _DEFAULT_TEXT_COLUMNS:
        if all(name in frame.columns for name in names):
            return names
    raise ConfigError(f"'{origin}' has none of the usual text columns ({', '.join('/'.join(n) for n in _DEFAULT_TEXT_COLUMNS)}); "
                      f"columns found: {', '.join(map(str, frame.columns))}. Name yours with --text-columns (one, or two "
                      "comma-separated for sentence pairs)")


def _column(frame: pd.DataFrame, name: str, origin: str, what: str) -> str:
    if name in frame.columns:
        return name
    by_key = {str(c).strip().lower(): c for c in frame.columns}
    if name.strip().lower() in by_key:
        return by_key[name.strip().lower()]
    flag = "--text-columns" if what == "text" else "--label-column"
    raise ConfigError(f"'{origin}' has no {what} column '{name}'; columns found: {', '.join(map(str, frame.columns))}. "
                      f"Pick one with {flag}")


def _missing(value: Any) -> bool:
    import pandas as pd

    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _rows_text(rows: list[int], limit: int = 10) -> str:
    """Data rows, 1-based, the header not counted (row 1 is the first example)."""
    shown = ", ".join(str(r + 1) for r in rows[:limit])
    return shown + (f", ... ({len(rows)} in all)" if len(rows) > limit else "")


def _texts(column: pd.Series, origin: str, name: str) -> list[str]:
    values = column.tolist()
    bad = [i for i, v in enumerate(values) if _missing(v) or not str(v).strip()]
    if bad:
        raise ConfigError(f"'{origin}' has {len(bad)} empty or null text(s) in column '{name}' at data row(s) "
                          f"{_rows_text(bad)} (1-based, header not counted); fill or drop those rows")
    return [str(v) for v in values]


def _raw_labels(column: pd.Series, origin: str, name: str) -> list[Any]:
    values = column.tolist()
    bad = [i for i, v in enumerate(values) if _missing(v) or (isinstance(v, str) and not v.strip())]
    if bad:
        raise ConfigError(f"'{origin}' has {len(bad)} row(s) without a label in column '{name}' at data row(s) "
                          f"{_rows_text(bad)} (1-based, header not counted); label or drop them")
    return values


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None  # true/false are class names, not 1/0
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _numbers(values: list[Any], origin: str, name: str) -> list[float]:
    numbers = [_as_number(v) for v in values]
    bad = [i for i, n in enumerate(numbers) if n is None]
    if bad:
        raise ConfigError(f"'{origin}' has non-numeric label(s) {sorted({str(values[i]) for i in bad})[:5]} in column "
                          f"'{name}' at data row(s) {_rows_text(bad)}; --regression needs a number in every row")
    return numbers  # type: ignore[return-value]


def _classes(raw: dict[str, list[Any]], origins: dict[str, str], class_names: tuple[str, ...] | None,
             name: str) -> tuple[tuple[str, ...], dict[str, list[int]]]:
    """(label names in id order, label ids per split). Numbers and words are never mixed."""
    if class_names is not None:  # a ClassLabel: ids are already the ids of its names
        return class_names, {split: [int(v) for v in values] for split, values in raw.items()}
    keys: dict[str, list[str]] = {}
    numeric_splits = []
    for split, values in raw.items():
        numbers = [_as_number(v) for v in values]
        words = [i for i, n in enumerate(numbers) if n is None]
        if words and len(words) < len(values):
            at_number = [i for i, n in enumerate(numbers) if n is not None]
            raise ConfigError(
                f"'{origins[split]}' mixes label types in column '{name}': {len(at_number)} number(s) (data row(s) "
                f"{_rows_text(at_number, 5)}) and {len(words)} word(s) (data row(s) {_rows_text(words, 5)}); use one kind")
        if not words:
            if any(not n.is_integer() for n in numbers):  # type: ignore[union-attr]
                raise ConfigError(f"'{origins[split]}' has fractional labels in column '{name}'; for float labels "
                                  "pass --regression")
            numeric_splits.append(split)
            keys[split] = [str(int(n)) for n in numbers]  # type: ignore[arg-type]
        else:
            keys[split] = [str(v).strip() for v in values]
    if numeric_splits and len(numeric_splits) < len(raw):
        words = [s for s in raw if s not in numeric_splits]
        raise ConfigError(f"mixed label types across files in column '{name}': numbers in "
                          f"{', '.join(origins[s] for s in numeric_splits)}, words in {', '.join(origins[s] for s in words)}")
    distinct = set(keys["train"])
    names = tuple(sorted(distinct, key=int) if numeric_splits else sorted(distinct))
    if len(names) < 2:
        raise ConfigError(f"'{origins['train']}' has a single class in column '{name}' ({', '.join(names)}); a "
                          "classifier needs at least 2 (for float labels pass --regression)")
    for split, split_keys in keys.items():
        unseen = sorted(set(split_keys) - distinct)
        if unseen:
            raise ConfigError(f"'{origins[split]}' has label(s) {unseen[:10]} in column '{name}' that train "
                              f"('{origins['train']}') never has; train's labels: {', '.join(names[:20])}")
    ids = {label: i for i, label in enumerate(names)}
    return names, {split: [ids[k] for k in split_keys] for split, split_keys in keys.items()}


def check_carvable(spec: TaskSpec, train: Rows, origin: str, carving: list[str]) -> None:
    """Every class of train has at least 2 examples, so a stratified carve leaves it in train."""
    if spec.is_regression or not carving:
        return
    from collections import Counter

    counts = Counter(train.labels)
    small = sorted((spec.label_names[label], n) for label, n in counts.items() if n < 2)
    if small:
        shown = ", ".join(f"'{label}' ({n} example)" for label, n in small[:10])
        raise ConfigError(f"'{origin}' has classes with fewer than 2 examples: {shown}; the {' and '.join(carving)} "
                          f"split(s) must be carved from train, stratified. Add examples, drop the class, or pass "
                          f"--{'-file and --'.join(carving)}-file")

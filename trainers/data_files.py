"""Reading a task's data files: the split's file(s), a table per file, the rows of text and labels.

Files are TSV (quoting off, as GLUE's), CSV, JSON lines, JSON or Parquet, optionally gzipped
(not Parquet), or the hub's shards (``train-00000-of-00002.parquet``). Columns are found by the
task's canonical names or the aliases of its ``FileFormat`` (``trainers.tasks``), ignoring case;
labels are integers, numbers (regression) or the task's label names; rows without a valid label
(GLUE's hidden test labels, ``-``) are dropped and logged.
"""

from __future__ import annotations

import csv
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from trainers.errors import ConfigError
from trainers.tasks import TASK_FORMATS, TaskSpec

if TYPE_CHECKING:
    import pandas as pd
    import torch

log = logging.getLogger(__name__)


@dataclass
class Rows:
    """Untokenized rows of one split: one text list per text field, labels, source row numbers."""

    texts: tuple[list[str], ...]
    labels: list[float] | list[int]
    rows: list[int]

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, indices: torch.Tensor) -> "Rows":
        picked = indices.tolist()
        return Rows(
            tuple([column[i] for i in picked] for column in self.texts),
            [self.labels[i] for i in picked],
            [self.rows[i] for i in picked],
        )


def existing_dir(data_dir: str) -> Path:
    folder = Path(data_dir).expanduser()
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise ConfigError(f"data_dir '{data_dir}' {what}; pass --data-dir with the folder that holds the task's files")
    return folder


def normalize_name(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


# ------------------------------------------------------------------------------------ file i/o
# Preference order when several files exist for the same split.
_EXTENSIONS = ("tsv", "tsv.gz", "csv", "csv.gz", "jsonl", "jsonl.gz", "json", "parquet")


def find_split_files(spec: TaskSpec, folders: Sequence[Path], split: str, stems: Sequence[str]) -> list[Path]:
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


def read_rows(spec: TaskSpec, paths: list[Path]) -> Rows:
    import pandas as pd  # here, not at the top: a training on prepared data needs no pandas (the GPU bundle)

    headerless = TASK_FORMATS[spec.name].headerless_columns
    frames = [read_table(path, headerless) for path in paths]
    frame = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    return frame_to_rows(spec, frame, str(paths[0]) if len(paths) == 1 else f"{paths[0]} (+{len(paths) - 1} shards)")


TABLE_SUFFIXES = (".tsv", ".csv", ".jsonl", ".json", ".parquet")


def read_table(path: Path, headerless: Sequence[str] = ()) -> pd.DataFrame:
    """One file as a table. ``headerless``: the column names of a TSV written without a header row
    (CoLA's), used when the first row holds no ``sentence`` column."""
    import pandas as pd

    name = path.name.lower().removesuffix(".gz")
    if not name.endswith(TABLE_SUFFIXES):
        raise ConfigError(f"cannot read '{path}': unknown file type; use one of "
                          f"{', '.join(s.lstrip('.') for s in TABLE_SUFFIXES)} (gzipped as .gz allowed, not parquet)")
    try:
        if name.endswith(".tsv"):
            frame = _read_tsv(path, header=0)
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
    except FileNotFoundError:
        raise ConfigError(f"could not read '{path}': no such file") from None
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError, ImportError) as exc:
        raise ConfigError(
            f"could not read '{path}' ({type(exc).__name__}: {str(exc)[:300].splitlines()[0] if str(exc) else ''}); "
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


def frame_to_rows(spec: TaskSpec, frame: pd.DataFrame, origin: str) -> Rows:
    fmt = TASK_FORMATS[spec.name]
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
    return Rows(tuple([column[i] for i in keep] for column in texts), [labels[i] for i in keep], keep)


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _texts(column: pd.Series) -> list[str]:
    return ["" if _is_missing(value) else str(value) for value in column.tolist()]


_MISSING_LABELS = {"", "-", "nan", "none", "null"}


def _parse_labels(spec: TaskSpec, column: pd.Series, origin: str) -> list:
    """Labels as int (classification) or float (regression); None marks a missing/hidden label."""
    label_names = TASK_FORMATS[spec.name].label_names
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


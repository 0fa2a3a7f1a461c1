"""The served model's input and output: the checks a request passes before tokenizing, the answer
frame, and the MLflow signature and input example that describe both (see ``serving.model``'s
docstring for the contract).

Shipped inside the logged model (``serving.packaging.code_paths``).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

OUTPUT_COLUMNS = ("label", "label_name", "probabilities", "exit_layer", "truncated")
INFERENCE_CONFIG_VARIABLE = "MLFLOW_PYFUNC_INFERENCE_CONFIG"

_EXAMPLE_TEXTS = {
    "sentence": ["a gripping, beautifully acted film.", "a dull and lifeless mess."],
    "premise": ["A man is playing a guitar.", "A man is playing a guitar."],
    "hypothesis": ["A person makes music.", "Nobody is playing."],
}


def _reject(message: str):
    raise MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def rows_text(rows: list[int], limit: int = 5) -> str:
    shown = ", ".join(str(r) for r in rows[:limit])
    return shown + (f", ... ({len(rows)} rows)" if len(rows) > limit else "")


def _kind(value) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "missing"
    return type(value).__name__


def check_input(model_input, fields: list[str], max_rows: int | None = None) -> list[list[str]]:
    """The text columns of a valid request, in ``fields`` order; else MlflowException
    (``INVALID_PARAMETER_VALUE``) saying what to send. ``max_rows``: the most rows a request may hold
    (None: any number)."""
    expected = f"send a DataFrame with the string column(s) {fields}"
    if not isinstance(model_input, pd.DataFrame):
        _reject(f"expected a DataFrame, got {type(model_input).__name__}; {expected}")
    columns = [str(c) for c in model_input.columns.tolist()]
    missing = [f for f in fields if f not in columns]
    extra = [c for c in columns if c not in fields]
    if missing or extra or len(set(columns)) != len(columns):
        found = f"got {columns}" + (f" (missing {missing})" if missing else "") + (
            f" (unexpected {extra})" if extra else "")
        _reject(f"wrong columns: {found}; this model reads exactly {fields}")
    n = len(model_input)
    if max_rows is not None and n > max_rows:
        _reject(f"{n} rows in one request; this server takes at most {max_rows}: split the input "
                f"into requests of at most {max_rows} rows, or start the server with "
                f"{INFERENCE_CONFIG_VARIABLE}='{{\"max_rows\": N}}' (scoring in process, e.g. "
                "`mlflow models predict`, takes any number of rows)")
    texts = []
    table = model_input.to_numpy(dtype=object, copy=False) if len(fields) == 1 else None
    for field in fields:
        # one column: the frame's values (cheaper per request than a column lookup); else by name
        values = table[:, 0].tolist() if table is not None else model_input[field].tolist()
        bad = [i for i, v in enumerate(values) if not isinstance(v, str)]
        if bad:
            kinds = sorted({_kind(values[i]) for i in bad})
            _reject(f"column '{field}' holds non-text values ({', '.join(kinds)}) at row(s) {rows_text(bad)}; "
                    "send every text as a non-empty string")
        empty = [i for i, v in enumerate(values) if not v.strip()]
        if empty:
            _reject(f"column '{field}' holds empty or whitespace-only text at row(s) {rows_text(empty)}; "
                    "send every text as a non-empty string")
        texts.append(values)
    return texts


_OUTPUT_INDEX = pd.Index(OUTPUT_COLUMNS)


def output_frame(labels: np.ndarray, probabilities: list[list[float]], layers: np.ndarray, index,
                 label_names=None, truncated: np.ndarray | None = None) -> pd.DataFrame:
    """The answer: ``label`` (the class id; the score for regression), ``label_name`` (the class's
    name, from ``label_names`` in id order; "" for regression), ``probabilities`` (one list per row,
    in id order), ``exit_layer`` and ``truncated`` (the row's text was longer than the model's
    ``max_length`` tokens and was cut: the client sees it, not only the server's log; None: no row
    was) on ``index``. Without ``label_names`` the names are the ids as text.

    Built from the column arrays with pandas' array constructor where this pandas has it
    (fewer Python calls than ``pd.DataFrame(dict)``, which weighs at batch 1: benchmarks/serving.py's
    "output" stage). Elsewhere the public constructor, for the same frame (tests/test_serving.py).
    """
    column = np.fromiter(probabilities, dtype=object, count=len(layers))  # a list per cell, not a 2-D array
    names = label_name_column(labels, label_names)
    cut = np.zeros(len(layers), dtype=bool) if truncated is None else np.asarray(truncated, dtype=bool)
    build = getattr(pd.DataFrame, "_from_arrays", None)
    if build is not None:
        try:
            return build([labels, names, column, layers, cut], columns=_OUTPUT_INDEX, index=index,
                         verify_integrity=False)
        except TypeError:  # another signature in another pandas version
            pass
    return pd.DataFrame(dict(zip(OUTPUT_COLUMNS, (labels, names, column, layers, cut))), index=index, copy=False)


def label_name_column(labels: np.ndarray, label_names) -> np.ndarray:
    """Each row's class name (object array): ``label_names[label]``; "" for regression scores."""
    if labels.dtype.kind == "f":
        return np.full(len(labels), "", dtype=object)
    if label_names is None or len(label_names) == 0:
        return labels.astype(str).astype(object)
    return np.asarray(list(label_names), dtype=object)[labels] if len(labels) else np.empty(0, dtype=object)


def model_signature(meta: dict):
    """The pyfunc's signature: the task's own text columns in; ``label``, ``label_name``,
    ``probabilities``, ``exit_layer``, ``truncated`` out."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema
    from mlflow.types.schema import Array

    label, label_name, probabilities, exit_layer, truncated = OUTPUT_COLUMNS
    inputs = Schema([ColSpec(DataType.string, field) for field in meta["text_fields"]])
    outputs = Schema([
        ColSpec(DataType.double if meta["is_regression"] else DataType.long, label),
        ColSpec(DataType.string, label_name),
        ColSpec(Array(DataType.double), probabilities),
        ColSpec(DataType.long, exit_layer),
        ColSpec(DataType.boolean, truncated),
    ])
    return ModelSignature(inputs=inputs, outputs=outputs)


def input_example(meta: dict) -> pd.DataFrame:
    """Two rows of the task's text columns (real-looking text for MR/SST-2 and NLI fields)."""
    return pd.DataFrame({field: _EXAMPLE_TEXTS.get(field, ["some text", "more text"])
                         for field in meta["text_fields"]})

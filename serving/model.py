"""The served model: an exported multi-exit encoder plus the exit policy of one operating point.

``ExitPolicyModel`` is the MLflow pyfunc: it loads an exported folder (``serving.export``) and a
``policy.json`` and predicts with real early exit (``MultiExitEncoder.early_exit``), so a sample
stops at the first layer the policy lets it leave and its later layers are never computed.

The contract (``model_signature`` writes it into the logged model):

- input: a DataFrame with exactly the task's text columns (``meta["text_fields"]``: ``sentence``,
  or ``premise`` and ``hypothesis``, ...), one non-empty string per cell, at most ``max_rows``
  rows (``model_config={"max_rows": N}``, default 256). Anything else is rejected before
  tokenizing with an ``MlflowException`` (``INVALID_PARAMETER_VALUE``, HTTP 400 from
  ``mlflow models serve``) whose message says what to send. Text longer than the model's
  ``max_length`` tokens is truncated, with a warning.
- output: one row per input row, in input order (same index): ``label`` (class id; the score
  for regression), ``probabilities`` (softmax of the exit's logits; an empty list for regression)
  and ``exit_layer`` (1-based).

Under MLflow's schema enforcement (a model logged with ``model_signature``) a missing column is
refused by MLflow itself, and extra columns are dropped by MLflow (with a logged warning) before
``predict`` sees them; called without a signature, ``predict`` refuses both.

This module is shipped inside the logged model (``code_paths``) with ``serving.export`` and
``trainers.model`` / ``trainers.policies`` / ``trainers.errors``; nothing else is needed to load it.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from serving.export import load_exported

log = logging.getLogger(__name__)

DEFAULT_MAX_ROWS = 256
BATCH_SIZE = 64
OUTPUT_COLUMNS = ("label", "probabilities", "exit_layer")

_EXAMPLE_TEXTS = {
    "sentence": ["a gripping, beautifully acted film.", "a dull and lifeless mess."],
    "premise": ["A man is playing a guitar.", "A man is playing a guitar."],
    "hypothesis": ["A person makes music.", "Nobody is playing."],
}


def _reject(message: str):
    raise MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def _rows_text(rows: list[int], limit: int = 5) -> str:
    shown = ", ".join(str(r) for r in rows[:limit])
    return shown + (f", ... ({len(rows)} rows)" if len(rows) > limit else "")


def _kind(value) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "missing"
    return type(value).__name__


def _max_rows(value) -> int:
    try:
        rows = int(value)
    except (TypeError, ValueError):
        rows = 0
    if rows < 1 or rows != value:
        raise MlflowException(f"model_config max_rows must be a whole number >= 1, got {value!r}",
                              error_code=INVALID_PARAMETER_VALUE)
    return rows


class ExitPolicyModel(mlflow.pyfunc.PythonModel):
    """Predict with early exit: a DataFrame of texts in, ``label``, ``probabilities`` and
    ``exit_layer`` out (see the module docstring for the contract)."""

    batch_size = BATCH_SIZE

    # ------------------------------------------------------------------ loading
    def load_context(self, context) -> None:
        config = dict(getattr(context, "model_config", None) or {})
        self.load(context.artifacts["model"], json.loads(Path(context.artifacts["policy"]).read_text()),
                  max_rows=config.get("max_rows", DEFAULT_MAX_ROWS))

    def load(self, exported: str | Path, policy: dict, max_rows: int = DEFAULT_MAX_ROWS) -> "ExitPolicyModel":
        """Load outside MLflow: an exported folder and a policy spec (the content of ``policy.json``)."""
        from trainers.policies import make_policy

        self.model, self.tokenizer, self.meta = load_exported(Path(exported))
        self.policy_spec = dict(policy)
        self.policy = make_policy(policy["policy"], policy["setting"], is_regression=self.meta["is_regression"],
                                  delta=policy.get("delta"))
        self.fields = list(self.meta["text_fields"])
        self.max_length = int(self.meta["max_length"])
        self.max_rows = _max_rows(max_rows)
        pad = self.tokenizer.pad_token_id
        self.pad_id = 0 if pad is None else int(pad)
        return self

    # ------------------------------------------------------------------ input checks
    def validate(self, model_input) -> list[list[str]]:
        """The text columns of a valid request, in ``text_fields`` order; else MlflowException."""
        fields = self.fields
        expected = f"send a DataFrame with the string column(s) {fields}"
        if not isinstance(model_input, pd.DataFrame):
            _reject(f"expected a DataFrame, got {type(model_input).__name__}; {expected}")
        columns = [str(c) for c in model_input.columns]
        missing = [f for f in fields if f not in columns]
        extra = [c for c in columns if c not in fields]
        if missing or extra or len(set(columns)) != len(columns):
            found = f"got {columns}" + (f" (missing {missing})" if missing else "") + (
                f" (unexpected {extra})" if extra else "")
            _reject(f"wrong columns: {found}; this model reads exactly {fields}")
        n = len(model_input)
        if n > self.max_rows:
            _reject(f"{n} rows in one request; this model takes at most {self.max_rows}: split the input "
                    f"into requests of at most {self.max_rows} rows")
        texts = []
        for field in fields:
            values = model_input[field].tolist()
            bad = [i for i, v in enumerate(values) if not isinstance(v, str)]
            if bad:
                kinds = sorted({_kind(values[i]) for i in bad})
                _reject(f"column '{field}' holds non-text values ({', '.join(kinds)}) at row(s) {_rows_text(bad)}; "
                        "send every text as a non-empty string")
            empty = [i for i, v in enumerate(values) if not v.strip()]
            if empty:
                _reject(f"column '{field}' holds empty or whitespace-only text at row(s) {_rows_text(empty)}; "
                        "send every text as a non-empty string")
            texts.append(values)
        return texts

    # ------------------------------------------------------------------ prediction
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        columns = self.validate(model_input)
        labels, probabilities, layers = self.predict_texts(columns)
        return pd.DataFrame({"label": labels, "probabilities": probabilities, "exit_layer": layers},
                            index=model_input.index)

    def tokenize(self, columns: list[list[str]]) -> tuple[list[list[int]], list[list[int]] | None]:
        """Token ids (and token type ids) of every row, truncated to ``max_length``, unpadded.

        Warns (and logs) how many rows were truncated.
        """
        enc = self.tokenizer(*columns, truncation=True, max_length=self.max_length, return_attention_mask=False)
        ids = enc["input_ids"]
        types = enc.get("token_type_ids")
        truncated = self._truncated_rows(enc, columns, ids)
        if truncated:
            message = (f"{len(truncated)} of {len(ids)} row(s) are longer than this model's {self.max_length} "
                       f"tokens and were truncated (row(s) {_rows_text(truncated)})")
            log.warning(message)
            warnings.warn(message, UserWarning, stacklevel=3)
        return ids, types

    def _truncated_rows(self, enc, columns, ids) -> list[int]:
        candidates = [i for i, row in enumerate(ids) if len(row) >= self.max_length]
        if not candidates:
            return []
        encodings = getattr(enc, "encodings", None)
        if encodings:  # a fast tokenizer keeps what it cut off
            return [i for i in candidates if encodings[i].overflowing]
        full = self.tokenizer(*[[column[i] for i in candidates] for column in columns], truncation=False,
                              verbose=False, return_attention_mask=False)["input_ids"]
        return [i for i, row in zip(candidates, full) if len(row) > self.max_length]

    def batches(self, ids: list[list[int]], types: list[list[int]] | None):
        """(row positions, batch tensors) per batch of rows sorted by length, each padded to its own longest."""
        import torch

        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            width = max(len(ids[i]) for i in rows)
            batch = {
                "input_ids": torch.tensor([ids[i] + [self.pad_id] * (width - len(ids[i])) for i in rows]),
                "attention_mask": torch.tensor([[1] * len(ids[i]) + [0] * (width - len(ids[i])) for i in rows]),
            }
            if types is not None:
                batch["token_type_ids"] = torch.tensor([types[i] + [0] * (width - len(types[i])) for i in rows])
            yield rows, batch

    def predict_texts(self, columns: list[list[str]]) -> tuple[list, list[list[float]], list[int]]:
        """(labels, probabilities, exit layers) of validated text columns, in input order."""
        import torch

        n = len(columns[0])
        if n == 0:
            return [], [], []
        ids, types = self.tokenize(columns)
        with torch.inference_mode():
            logits = torch.empty((n, self.meta["num_labels"]))
            layers = torch.empty(n, dtype=torch.long)
            for rows, batch in self.batches(ids, types):
                out, exit_layer = self.model.early_exit(self.policy, **batch)
                index = torch.tensor(rows)
                logits[index] = out.float()
                layers[index] = exit_layer
            if self.meta["is_regression"]:
                labels = logits[:, 0].tolist()
                probabilities = [[] for _ in range(n)]
            else:
                probs = torch.softmax(logits, dim=-1)
                labels = probs.argmax(dim=-1).tolist()
                probabilities = probs.tolist()
        return labels, probabilities, layers.tolist()


# ---------------------------------------------------------------------- logging helpers
def model_signature(meta: dict):
    """The pyfunc's signature: the task's text columns in; ``label``, ``probabilities``, ``exit_layer`` out."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema
    from mlflow.types.schema import Array

    inputs = Schema([ColSpec(DataType.string, field) for field in meta["text_fields"]])
    outputs = Schema([
        ColSpec(DataType.double if meta["is_regression"] else DataType.long, "label"),
        ColSpec(Array(DataType.double), "probabilities"),
        ColSpec(DataType.long, "exit_layer"),
    ])
    return ModelSignature(inputs=inputs, outputs=outputs)


def input_example(meta: dict) -> pd.DataFrame:
    """Two rows of the task's text columns (real-looking text for MR/SST-2 and NLI fields)."""
    return pd.DataFrame({field: _EXAMPLE_TEXTS.get(field, ["some text", "more text"])
                         for field in meta["text_fields"]})


def pip_requirements() -> list[str]:
    """Explicit requirements: inferring them costs seconds and guesses wrong (e.g. torchvision)."""
    from importlib.metadata import version

    torch_version = version("torch").split("+")[0]
    return [f"torch=={torch_version}", f"transformers=={version('transformers')}", f"mlflow=={version('mlflow')}",
            "pandas", "numpy"]


def code_paths(staging: Path) -> list[str]:
    """Copies of the modules the pyfunc imports (not the packages' data), as importable packages:
    ``serving`` {__init__, export, model} and ``trainers`` {__init__, errors, model, policies}."""
    import shutil

    import serving
    import trainers

    out = []
    for package, modules in ((serving, ("__init__", "export", "model")),
                             (trainers, ("__init__", "errors", "model", "policies"))):
        source = Path(package.__file__).parent
        target = Path(staging) / source.name
        target.mkdir(parents=True, exist_ok=True)
        for module in modules:
            shutil.copy2(source / f"{module}.py", target / f"{module}.py")
        out.append(str(target))
    return out

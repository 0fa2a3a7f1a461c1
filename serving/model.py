"""The served model: an exported multi-exit encoder plus the exit policy of one operating point.

``ExitPolicyModel`` is the MLflow pyfunc: it loads an exported folder (``serving.export``) and a
``policy.json`` and predicts with real early exit (``MultiExitEncoder.early_exit``), so a sample
stops at the first layer the policy lets it leave and its later layers are never computed.

The contract (``model_signature`` writes it into the logged model):

- input: a DataFrame with exactly the task's text columns (``meta["text_fields"]``: ``sentence``,
  or ``premise`` and ``hypothesis``, ...), one non-empty string per cell. Anything else is rejected
  before tokenizing with an ``MlflowException`` (``INVALID_PARAMETER_VALUE``, HTTP 400 from
  ``mlflow models serve``) whose message says what to send. Text longer than the model's
  ``max_length`` tokens is truncated, with a warning.
- any number of rows in process (a notebook's ``predict(df)``, ``mlflow models predict``, a
  Spark UDF with ``env_manager="local"``): they are streamed through in chunks of ``CHUNK_ROWS``
  (tokenized, sorted by length, cut into batches of ``BATCH_SIZE``), so the working memory stays
  that of one chunk whatever the input's size.
- behind MLflow's HTTP scoring server (``mlflow models serve``, which starts uvicorn with
  ``__pyfunc_model_path__`` set) a request holds at most ``max_rows`` rows (default 256), which
  protects the server from one huge request; ``MLFLOW_PYFUNC_INFERENCE_CONFIG='{"max_rows": N}'``
  when starting the server changes it.
- output: one row per input row, in input order (same index): ``label`` (class id; the score
  for regression), ``probabilities`` (softmax of the exit's logits; an empty list for regression)
  and ``exit_layer`` (1-based).

``model_config`` (logged with the model; overridden with ``load_model(..., model_config=...)`` or
``MLFLOW_PYFUNC_INFERENCE_CONFIG`` for the server): ``device`` (``auto``: CUDA when available, else
the CPU; ``cpu``; ``cuda`` or ``cuda:N``, which fails at load when CUDA is missing) and
``max_rows``.

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
import os
import warnings
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from serving.export import load_exported

log = logging.getLogger(__name__)

DEFAULT_MAX_ROWS = 256
DEFAULT_DEVICE = "auto"
BATCH_SIZE = 64
CHUNK_ROWS = 2048  # rows tokenized and sorted together: bounds the working memory of any input
OUTPUT_COLUMNS = ("label", "probabilities", "exit_layer")
# Set by `mlflow models serve` (mlflow.pyfunc.scoring_server.get_cmd) for the uvicorn server that
# loads the model, and by nothing else: `mlflow models predict` and notebooks score in process.
SCORING_SERVER_VARIABLE = "__pyfunc_model_path__"
INFERENCE_CONFIG_VARIABLE = "MLFLOW_PYFUNC_INFERENCE_CONFIG"

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


def resolve_device(value):
    """The torch device of model_config ``device``: auto (CUDA if available), cpu, cuda or cuda:N."""
    import torch

    text = str(value).strip().lower() if value is not None else DEFAULT_DEVICE
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit()):
        if not torch.cuda.is_available():
            raise MlflowException(
                f"model_config device {value!r}, but torch {torch.__version__} sees no CUDA device "
                f"(torch.cuda.is_available() is False{'; this is a CPU-only build of torch' if torch.version.cuda is None else ''}); "
                "use device 'auto' or 'cpu'", error_code=INVALID_PARAMETER_VALUE)
        device = torch.device(text)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise MlflowException(f"model_config device {value!r}, but only {torch.cuda.device_count()} CUDA "
                                  "device(s) are visible", error_code=INVALID_PARAMETER_VALUE)
        return device
    raise MlflowException(f"model_config device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {value!r}",
                          error_code=INVALID_PARAMETER_VALUE)


def behind_scoring_server() -> bool:
    """True inside the HTTP server of `mlflow models serve` (see SCORING_SERVER_VARIABLE)."""
    return bool(os.environ.get(SCORING_SERVER_VARIABLE))


class ExitPolicyModel(mlflow.pyfunc.PythonModel):
    """Predict with early exit: a DataFrame of texts in, ``label``, ``probabilities`` and
    ``exit_layer`` out (see the module docstring for the contract)."""

    batch_size = BATCH_SIZE
    chunk_rows = CHUNK_ROWS

    # ------------------------------------------------------------------ loading
    def load_context(self, context) -> None:
        config = dict(getattr(context, "model_config", None) or {})
        self.load(context.artifacts["model"], json.loads(Path(context.artifacts["policy"]).read_text()),
                  max_rows=config.get("max_rows", DEFAULT_MAX_ROWS), device=config.get("device", DEFAULT_DEVICE))

    def load(self, exported: str | Path, policy: dict, max_rows: int = DEFAULT_MAX_ROWS, device="auto",
             limit_rows: bool | None = None) -> "ExitPolicyModel":
        """Load outside MLflow: an exported folder and a policy spec (the content of ``policy.json``).

        ``max_rows`` limits a request when ``limit_rows`` (default: only behind the HTTP scoring server).
        """
        from trainers.policies import make_policy

        self.max_rows = _max_rows(max_rows)
        self.limit_rows = behind_scoring_server() if limit_rows is None else bool(limit_rows)
        target = resolve_device(device)
        self.model, self.tokenizer, self.meta = load_exported(Path(exported), device=target)
        self.device = target
        self.policy_spec = dict(policy)
        self.policy = make_policy(policy["policy"], policy["setting"], is_regression=self.meta["is_regression"],
                                  delta=policy.get("delta"))
        self.fields = list(self.meta["text_fields"])
        self.max_length = int(self.meta["max_length"])
        pad = self.tokenizer.pad_token_id
        self.pad_id = 0 if pad is None else int(pad)
        return self

    def to(self, device) -> "ExitPolicyModel":
        """Move the model (and every tensor built from now on) to ``device``."""
        import torch

        self.device = torch.device(device)
        self.model.to(self.device)
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
        if self.limit_rows and n > self.max_rows:
            _reject(f"{n} rows in one request; this server takes at most {self.max_rows}: split the input "
                    f"into requests of at most {self.max_rows} rows, or start the server with "
                    f"{INFERENCE_CONFIG_VARIABLE}='{{\"max_rows\": N}}' (scoring in process, e.g. "
                    "`mlflow models predict`, takes any number of rows)")
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
        columns = self.validate(model_input)  # all of it first: a bad last row wastes no compute
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
            if not self.limit_rows:  # in process; a server's log has it, and its warnings registry would
                warnings.warn(message, UserWarning, stacklevel=3)  # keep every distinct text for ever
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
        """(row positions, batch tensors on the model's device) per batch of rows sorted by length,
        each padded to its own longest. A batch whose rows all have one length (a single request,
        say) gets no attention mask: ``early_exit`` then builds none and the answer is the same."""
        import torch

        order = sorted(range(len(ids)), key=lambda i: len(ids[i])) if len(ids) > 1 else [0]
        device = getattr(self, "device", None)
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            width = len(ids[rows[-1]])  # sorted: the last row is the longest
            batch = {"input_ids": [ids[i] + [self.pad_id] * (width - len(ids[i])) for i in rows]}
            if len(ids[rows[0]]) < width:
                batch["attention_mask"] = [[1] * len(ids[i]) + [0] * (width - len(ids[i])) for i in rows]
            if types is not None:
                batch["token_type_ids"] = [types[i] + [0] * (width - len(types[i])) for i in rows]
            yield rows, {key: torch.tensor(value, device=device) for key, value in batch.items()}

    def device_outputs(self, columns: list[list[str]]):
        """(row positions, exit logits, exit layers) per batch, the tensors on the model's device:
        the part of a prediction that runs on the device (tokenizing on the host first)."""
        ids, types = self.tokenize(columns)
        for rows, batch in self.batches(ids, types):
            logits, layers = self.model.early_exit(self.policy, **batch)
            yield rows, logits, layers

    def predict_texts(self, columns: list[list[str]]) -> tuple[list, list[list[float]], list[int]]:
        """(labels, probabilities, exit layers) of validated text columns, in input order, streamed
        through in chunks of ``chunk_rows`` rows."""
        import torch

        n = len(columns[0])
        if n == 0:
            return [], [], []
        logits = np.empty((n, int(self.meta["num_labels"])), dtype=np.float32)
        layers = np.empty(n, dtype=np.int64)
        with torch.inference_mode():
            for start in range(0, n, self.chunk_rows):
                chunk = columns if n <= self.chunk_rows else [column[start:start + self.chunk_rows] for column in columns]
                for rows, out, exit_layer in self.device_outputs(chunk):
                    index = np.asarray(rows) + start
                    logits[index] = out.float().cpu().numpy()  # the batch's copy back to the host
                    layers[index] = exit_layer.cpu().numpy()
        return self.answers(logits, layers)

    def answers(self, logits: np.ndarray, layers: np.ndarray) -> tuple[list, list[list[float]], list[int]]:
        """(labels, probabilities, exit layers) from the exit logits and layers of every row."""
        n = len(layers)
        if self.meta["is_regression"]:
            return logits[:, 0].astype(np.float64).tolist(), [[] for _ in range(n)], layers.tolist()
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True), dtype=np.float64)
        probabilities = shifted / shifted.sum(axis=1, keepdims=True)
        return probabilities.argmax(axis=1).tolist(), probabilities.tolist(), layers.tolist()


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

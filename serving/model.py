"""The served model: an exported multi-exit encoder plus the exit policy of one operating point.

``ExitPolicyModel`` is the MLflow pyfunc: it loads an exported folder (``serving.export``) and a
``policy.json`` and predicts with real early exit (``MultiExitEncoder.early_exit``), so a sample
stops at the first layer the policy lets it leave and its later layers are never computed.

The contract (``serving.schema``: ``check_input`` enforces it, ``model_signature`` writes it into the
logged model):

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
  for regression), ``label_name`` (the class's name from the task's ``id2label``, e.g. "positive";
  "" for regression), ``probabilities`` (softmax of the exit's logits, in ``id2label`` order; an
  empty list for regression), ``exit_layer`` (1-based) and ``truncated`` (true where the text was
  cut to ``max_length`` tokens: the prediction saw only its start).

``model_config`` (logged with the model; overridden with ``load_model(..., model_config=...)`` or
``MLFLOW_PYFUNC_INFERENCE_CONFIG`` for the server): ``device`` (``auto``: CUDA when available, else
the CPU; ``cpu``; ``cuda`` or ``cuda:N``, which fails at load when CUDA is missing),
``max_rows`` and ``precision`` (``auto``: bf16 autocast on CUDA, fp32 elsewhere; ``fp32``; ``bf16``,
also on a CPU). On CUDA the token tensors are built in pinned host memory and copied without
blocking; docs/serving.md has the measured agreement of bf16 answers with fp32 ones.

Under MLflow's schema enforcement (a model logged with ``model_signature``) a missing column is
refused by MLflow itself, and extra columns are dropped by MLflow (with a logged warning) before
``predict`` sees them; called without a signature, ``predict`` refuses both. The choice: MLflow's
server enforces the schema before the model runs, so the served model cannot refuse what it never
sees; an extra column (an id to carry along, say) does not change a prediction, and the README says so.

This module is shipped inside the logged model (``serving.packaging.code_paths``) with
``serving.export`` / ``serving.lean`` / ``serving.schema`` and ``trainers.model`` /
``trainers.policies`` / ``trainers.errors`` / ``trainers.layout``; nothing else is needed to load it.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from serving.export import load_exported
from serving.lean import install_lean_paths
from serving.schema import INFERENCE_CONFIG_VARIABLE, OUTPUT_COLUMNS, check_input, output_frame, rows_text

log = logging.getLogger(__name__)

DEFAULT_MAX_ROWS = 256
DEFAULT_DEVICE = "auto"
PRECISIONS = ("auto", "fp32", "bf16")
BATCH_SIZE = 64
CHUNK_ROWS = 2048  # rows tokenized and sorted together: bounds the working memory of any input
# Set by `mlflow models serve` (mlflow.pyfunc.scoring_server.get_cmd) for the uvicorn server that
# loads the model, and by nothing else: `mlflow models predict` and notebooks score in process.
SCORING_SERVER_VARIABLE = "__pyfunc_model_path__"

__all__ = ["ExitPolicyModel", "output_frame", "OUTPUT_COLUMNS", "INFERENCE_CONFIG_VARIABLE", "SCORING_SERVER_VARIABLE",
           "resolve_device", "behind_scoring_server", "install_lean_paths"]

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


def _fast_encoder(tokenizer, max_length: int):
    """A copy of a fast tokenizer's Rust encoder that truncates to ``max_length`` and never pads
    (None for a slow tokenizer). A copy: the tokenizer reconfigures its own on every call."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    from tokenizers import Tokenizer

    encoder = Tokenizer.from_str(backend.to_str())
    encoder.enable_truncation(max_length, strategy="longest_first")
    encoder.no_padding()
    return encoder


def behind_scoring_server() -> bool:
    """True inside the HTTP server of `mlflow models serve` (see SCORING_SERVER_VARIABLE)."""
    return bool(os.environ.get(SCORING_SERVER_VARIABLE))


class ExitPolicyModel(mlflow.pyfunc.PythonModel):
    """Predict with early exit: a DataFrame of texts in, ``label``, ``label_name``, ``probabilities``,
    ``exit_layer`` and ``truncated`` out (see the module docstring for the contract)."""

    batch_size = BATCH_SIZE
    chunk_rows = CHUNK_ROWS

    # ------------------------------------------------------------------ loading
    def load_context(self, context) -> None:
        config = dict(getattr(context, "model_config", None) or {})
        labels = context.artifacts.get("labels")  # absent from a model registered before label names were served
        label_names = json.loads(Path(labels).read_text())["label_names"] if labels else None
        self.load(context.artifacts["model"], json.loads(Path(context.artifacts["policy"]).read_text()),
                  max_rows=config.get("max_rows", DEFAULT_MAX_ROWS), device=config.get("device", DEFAULT_DEVICE),
                  label_names=label_names, precision=config.get("precision", "auto"))

    def load(self, exported: str | Path, policy: dict, max_rows: int = DEFAULT_MAX_ROWS, device="auto",
             limit_rows: bool | None = None, label_names: list[str] | None = None,
             precision: str = "auto") -> "ExitPolicyModel":
        """Load outside MLflow: an exported folder and a policy spec (the content of ``policy.json``).

        ``max_rows`` limits a request when ``limit_rows`` (default: only behind the HTTP scoring server).
        ``label_names``: the class names in id order (default: the exported folder's; else the ids as text).
        """
        from trainers.policies import make_policy

        self.max_rows = _max_rows(max_rows)
        self.limit_rows = behind_scoring_server() if limit_rows is None else bool(limit_rows)
        target = resolve_device(device)
        if precision not in PRECISIONS:
            raise MlflowException(f"model_config precision must be one of {', '.join(PRECISIONS)}, got {precision!r}",
                                  error_code=INVALID_PARAMETER_VALUE)
        self.model, self.tokenizer, self.meta = load_exported(Path(exported), device=target)
        self.precision = precision
        self.to(target)
        self.policy_spec = dict(policy)
        self.policy = make_policy(policy["policy"], policy["setting"], is_regression=self.meta["is_regression"],
                                  delta=policy.get("delta"))
        self.fields = list(self.meta["text_fields"])
        self.label_names = list(label_names or self.meta.get("label_names") or [])
        self.max_length = int(self.meta["max_length"])
        pad = self.tokenizer.pad_token_id
        self.pad_id = 0 if pad is None else int(pad)
        self.encoder = _fast_encoder(self.tokenizer, self.max_length)
        self.lean = [] if self.device.type == "meta" else install_lean_paths(self.model)
        return self

    def to(self, device) -> "ExitPolicyModel":
        """Move the model (and every tensor built from now on) to ``device``."""
        import torch

        self.device = torch.device(device)
        self.model.to(self.device)
        precision = getattr(self, "precision", "auto")
        self.autocast_dtype = torch.bfloat16 if precision == "bf16" or (
            precision == "auto" and self.device.type == "cuda") else None  # weights stay fp32
        return self

    # ------------------------------------------------------------------ input checks
    def validate(self, model_input) -> list[list[str]]:
        """The text columns of a valid request, in ``text_fields`` order; else MlflowException."""
        return check_input(model_input, self.fields, self.max_rows if self.limit_rows else None)

    # ------------------------------------------------------------------ prediction
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        columns = self.validate(model_input)  # all of it first: a bad last row wastes no compute
        truncated = np.zeros(len(model_input), dtype=bool)
        return output_frame(*self.predict_texts(columns, truncated), index=model_input.index,
                            label_names=getattr(self, "label_names", None), truncated=truncated)

    def tokenize(self, columns: list[list[str]], cut: list[int] | None = None
                 ) -> tuple[list[list[int]], list[list[int]] | None]:
        """Token ids (and token type ids, for pairs) of every row, truncated to ``max_length``, unpadded.

        A fast tokenizer's own Rust encoder is called directly (the same ids as calling the
        tokenizer, without its per-call Python). A single text column has no token type ids:
        they are all 0, which is what the embeddings assume without them. Warns (and logs) how
        many rows were truncated; ``cut``, if given, receives their positions.
        """
        if self.encoder is not None:
            if len(columns[0]) == 1:  # encode_batch hands even one row to its thread pool: ~0.2 ms a request
                encodings = [self.encoder.encode(*(column[0] for column in columns))]
            else:
                encodings = self.encoder.encode_batch(columns[0] if len(columns) == 1 else list(zip(*columns)))
            ids = [e.ids for e in encodings]
            types = [e.type_ids for e in encodings] if len(columns) > 1 else None
            truncated = [i for i, e in enumerate(encodings) if e.overflowing]
        else:
            enc = self.tokenizer(*columns, truncation=True, max_length=self.max_length, return_attention_mask=False)
            ids = enc["input_ids"]
            types = enc.get("token_type_ids") if len(columns) > 1 else None
            truncated = self._truncated_rows(enc, columns, ids)
        if cut is not None:
            cut.extend(truncated)
        if truncated:
            message = (f"{len(truncated)} of {len(ids)} row(s) are longer than this model's {self.max_length} "
                       f"tokens and were truncated (row(s) {rows_text(truncated)})")
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
            if device is not None and device.type == "cuda":  # pinned: the copy queues, the host goes on
                yield rows, {key: torch.tensor(value).pin_memory().to(device, non_blocking=True)
                             for key, value in batch.items()}
            else:
                yield rows, {key: torch.tensor(value, device=device) for key, value in batch.items()}

    def device_outputs(self, columns: list[list[str]], cut: list[int] | None = None):
        """(row positions, exit logits, exit layers) per batch, the tensors on the model's device:
        the part of a prediction that runs on the device (tokenizing on the host first; ``cut``
        receives the positions of the rows that were truncated)."""
        import contextlib

        import torch

        ids, types = self.tokenize(columns, cut)
        dtype = getattr(self, "autocast_dtype", None)
        for rows, batch in self.batches(ids, types):
            with torch.autocast(self.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext():
                logits, layers = self.model.early_exit(self.policy, **batch)
            yield rows, logits, layers

    def predict_texts(self, columns: list[list[str]], truncated: np.ndarray | None = None
                      ) -> tuple[np.ndarray, list[list[float]], np.ndarray]:
        """(labels, probabilities, exit layers) of validated text columns, in input order, streamed
        through in chunks of ``chunk_rows`` rows; ``truncated`` (a bool per row), if given, is set
        where a row's text was cut to ``max_length`` tokens."""
        import torch

        n = len(columns[0])
        if n == 0:
            return self.answers(np.empty((0, int(self.meta["num_labels"])), dtype=np.float32), np.empty(0, np.int64))
        logits = np.empty((n, int(self.meta["num_labels"])), dtype=np.float32)
        layers = np.empty(n, dtype=np.int64)
        with torch.inference_mode():
            for start in range(0, n, self.chunk_rows):
                chunk = columns if n <= self.chunk_rows else [column[start:start + self.chunk_rows] for column in columns]
                cut: list[int] = []
                for rows, out, exit_layer in self.device_outputs(chunk, cut):
                    index = np.asarray(rows) + start
                    logits[index] = out.float().cpu().numpy()  # the batch's copy back to the host
                    layers[index] = exit_layer.cpu().numpy()
                if truncated is not None and cut:
                    truncated[np.asarray(cut) + start] = True
        return self.answers(logits, layers)

    def answers(self, logits: np.ndarray, layers: np.ndarray) -> tuple[np.ndarray, list[list[float]], np.ndarray]:
        """(labels, probabilities, exit layers) from the exit logits and layers of every row: arrays
        of the output's dtypes (int64 labels, float64 scores for regression) and lists of floats."""
        n = len(layers)
        if self.meta["is_regression"]:
            return logits[:, 0].astype(np.float64), [[] for _ in range(n)], layers
        if n == 0:
            return np.empty(0, np.int64), [], layers
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True), dtype=np.float64)
        probabilities = shifted / shifted.sum(axis=1, keepdims=True)
        return probabilities.argmax(axis=1).astype(np.int64), probabilities.tolist(), layers



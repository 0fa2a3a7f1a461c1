"""The served model: an exported multi-exit encoder plus the exit policy of one operating point.

``ExitPolicyModel`` is the MLflow pyfunc: it loads an exported folder (``sweeps.export``) and a
``policy.json`` and predicts with real early exit (``MultiExitEncoder.early_exit``), so a sample
stops at the first layer the policy lets it leave and its later layers are never computed.

This module is shipped inside the logged MLflow model (``code_paths``) together with
``sweeps.export`` and ``trainers.model`` / ``trainers.policies``; nothing else is needed to load it.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow.pyfunc
import pandas as pd

from sweeps.export import load_exported


class ExitPolicyModel(mlflow.pyfunc.PythonModel):
    """Predict with early exit. Input: a DataFrame with the task's text column(s) (e.g. ``sentence``,
    or ``premise`` and ``hypothesis``), or a list of strings for single-sentence tasks. Output: one
    row per input with ``prediction`` (class id, or score for regression), ``exit_layer`` (1-based)
    and ``confidence`` (top class probability; NaN for regression)."""

    batch_size = 64

    def load_context(self, context) -> None:
        from trainers.policies import make_policy

        self.model, self.tokenizer, self.meta = load_exported(Path(context.artifacts["model"]))
        self.policy_spec = json.loads(Path(context.artifacts["policy"]).read_text())
        self.policy = make_policy(self.policy_spec["policy"], self.policy_spec["setting"],
                                  is_regression=self.meta["is_regression"], delta=self.policy_spec.get("delta"))

    def _columns(self, model_input) -> list[list[str]]:
        fields = self.meta["text_fields"]
        if isinstance(model_input, (list, tuple)):
            model_input = pd.DataFrame({fields[0]: list(model_input)})
        if isinstance(model_input, pd.Series):
            model_input = model_input.to_frame(fields[0])
        if not isinstance(model_input, pd.DataFrame):
            raise TypeError(f"expected a DataFrame with column(s) {fields}, got {type(model_input).__name__}")
        missing = [f for f in fields if f not in model_input.columns]
        if missing and len(fields) == 1 and len(model_input.columns) == 1:
            return [model_input.iloc[:, 0].astype(str).tolist()]
        if missing:
            raise ValueError(f"input lacks column(s) {missing}; this model reads {fields}")
        return [model_input[f].astype(str).tolist() for f in fields]

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        import numpy as np
        import torch

        columns = self._columns(model_input)
        predictions, layers, confidences = [], [], []
        for start in range(0, len(columns[0]), self.batch_size):
            texts = [column[start:start + self.batch_size] for column in columns]
            batch = self.tokenizer(*texts, truncation=True, max_length=self.meta["max_length"],
                                   padding=True, return_tensors="pt")
            with torch.no_grad():
                logits, exit_layer = self.model.early_exit(self.policy, **dict(batch))
            if self.meta["is_regression"]:
                predictions += logits[:, 0].tolist()
                confidences += [float("nan")] * len(exit_layer)
            else:
                probs = torch.softmax(logits.float(), dim=-1)
                predictions += probs.argmax(dim=-1).tolist()
                confidences += probs.amax(dim=-1).tolist()
            layers += exit_layer.tolist()
        return pd.DataFrame({"prediction": predictions, "exit_layer": np.asarray(layers, dtype="int64"),
                             "confidence": confidences})


def pip_requirements() -> list[str]:
    """Explicit requirements: inferring them costs seconds and guesses wrong (e.g. torchvision)."""
    from importlib.metadata import version

    torch_version = version("torch").split("+")[0]
    return [f"torch=={torch_version}", f"transformers=={version('transformers')}", f"mlflow=={version('mlflow')}",
            "pandas", "numpy"]


def code_paths(staging: Path) -> list[str]:
    """Copies of the modules the pyfunc imports (not the packages' data), as importable packages."""
    import shutil

    import sweeps
    import trainers

    out = []
    for package, modules in ((trainers, ("__init__", "errors", "model", "policies")),
                             (sweeps, ("__init__", "export", "serving"))):
        source = Path(package.__file__).parent
        target = staging / source.name
        target.mkdir(parents=True, exist_ok=True)
        for module in modules:
            shutil.copy2(source / f"{module}.py", target / f"{module}.py")
        out.append(str(target))
    return out

"""MLflow's process-wide state, set for one block and put back: its tracking URI, its event lines."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def use_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's process-wide tracking and registry URI (``mlflow.start_run`` / ``log_model`` use it)
    set to ``uri`` for the block, then put back, with the MLFLOW_*_URI variables it would export."""
    import mlflow
    import mlflow.tracking._model_registry.utils as registry_utils
    import mlflow.tracking._tracking_service.utils as tracking_utils

    saved_env = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    saved = (getattr(tracking_utils, "_tracking_uri", None), getattr(registry_utils, "_registry_uri", None))
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        tracking_utils._tracking_uri, registry_utils._registry_uri = saved
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def quiet_mlflow_events() -> Iterator[None]:
    """No "Successfully registered model ..." / "Created version ..." lines, which MLflow prints to
    stderr whatever its log level: the caller prints what was registered (serving.describe)."""
    from mlflow.utils.logging_utils import MLFLOW_LOGGING_STREAM

    before = MLFLOW_LOGGING_STREAM.enabled
    MLFLOW_LOGGING_STREAM.enabled = False
    try:
        yield
    finally:
        MLFLOW_LOGGING_STREAM.enabled = before

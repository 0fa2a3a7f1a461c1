"""The files a training writes for others to read, each written atomically (a reader never sees half).

Their names and places are in ``trainers.layout``.
"""

from __future__ import annotations

import json
import os
import shutil
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


def prune_epoch_checkpoints(output_dir: str | Path, keep: int) -> list[str]:
    """Delete all but the newest ``keep`` epoch checkpoints (``checkpoints/epoch-N``), never the one
    ``latest`` names (what ``--resume`` loads). Called once a new checkpoint is complete, so a crash
    while saving still finds the previous one. Returns the deleted tags.

    Why: a checkpoint holds θ, its optimizer state and φ (269 MB an epoch for MiniLM, measured), so
    keeping every epoch fills a disk on a long run."""
    from trainers.layout import EPOCH_PREFIX, LATEST_FILE, checkpoints_dir

    root = checkpoints_dir(output_dir)
    latest = (root / LATEST_FILE).read_text().strip() if (root / LATEST_FILE).is_file() else None
    numbered = sorted((int(p.name[len(EPOCH_PREFIX):]), p) for p in root.glob(f"{EPOCH_PREFIX}*")
                      if p.is_dir() and p.name[len(EPOCH_PREFIX):].isdigit())
    deleted = []
    for _, folder in numbered[:max(len(numbered) - keep, 0)]:
        if folder.name != latest:
            shutil.rmtree(folder, ignore_errors=True)
            deleted.append(folder.name)
    return deleted

"""Exported models: a self-contained folder per trained multi-exit encoder.

``export_model`` (run inside a trial) writes the backbone config, the weights of every layer and
exit, the tokenizer, and what the task looks like, so that ``load_exported`` rebuilds the model
without the original checkpoint or the hub. No MLflow here: trials import this module, and the
served model ships it (``serving.model.code_paths``), so it imports only ``trainers.model`` at load
time (``export_model`` also uses ``trainers.data``, which runs in the training environment only).
"""

from __future__ import annotations

import json
from pathlib import Path

from trainers.layout import BACKBONE_DIR, EXPORT_META_FILE, TOKENIZER_DIR, WEIGHTS_FILE
from trainers.model import load_tokenizer  # noqa: F401 - this module's name for it, kept for callers


def export_model(model, cfg, folder: Path, task=None) -> Path:
    """Write ``model`` (a trained ``MultiExitEncoder``) so that it loads without the original checkpoint.

    ``cfg`` needs ``task``, ``model`` (for the tokenizer), ``max_length`` and ``attn_implementation``
    (a ``TrainConfig`` has them all). ``task``: the ``TaskSpec`` it was trained on (``RunResult.task``;
    needed for your own data, whose columns and labels only the data knows), else ``cfg.task``'s.
    """
    import torch

    from trainers.data import get_task

    task = task if task is not None else get_task(cfg.task)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu().float() for k, v in model.state_dict().items()}, folder / WEIGHTS_FILE)
    model.backbone.config.save_pretrained(folder / BACKBONE_DIR)
    load_tokenizer(cfg.model).save_pretrained(folder / TOKENIZER_DIR)
    meta = {
        "task": task.name, "text_fields": list(task.text_fields), "num_labels": task.num_labels,
        "is_regression": task.is_regression, "metric": task.metrics[0], "pooling": model.pooling,
        "num_layers": model.num_layers, "max_length": cfg.max_length, "source_model": cfg.model,
        "attn_implementation": cfg.attn_implementation, "label_names": list(task.label_names),
    }
    (folder / EXPORT_META_FILE).write_text(json.dumps(meta, indent=2))
    return folder


def load_exported(folder: Path, device="cpu"):
    """(model, tokenizer, meta) from an exported folder, on ``device`` (a torch device), in eval mode."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from trainers.model import MultiExitEncoder

    folder = Path(folder)
    meta = json.loads((folder / EXPORT_META_FILE).read_text())
    config = AutoConfig.from_pretrained(folder / BACKBONE_DIR)
    backbone = AutoModel.from_config(config, attn_implementation=meta.get("attn_implementation", "sdpa"))
    model = MultiExitEncoder(backbone, meta["num_labels"], meta["pooling"])
    model.load_state_dict(torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True))
    model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder / TOKENIZER_DIR)
    return model, tokenizer, meta

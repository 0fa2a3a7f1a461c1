"""The files a training depends on, opened and checked before any work starts.

``check_run_inputs`` is the trainer's own check of what a validated config names: the model folder,
the data folder and the output folder. ``trainers.train.run`` calls it before choosing a device, and
a sweep calls it on every arm's config before Ray starts (``sweeps.config``), so a model folder that
does not exist is one ``error:`` line and exit code 2, not a traceback in every trial. (The
DeepSpeed config is read by ``TrainConfig.validate``: it is part of the config.)
"""

from __future__ import annotations

import os
from pathlib import Path

from trainers.errors import ConfigError
from trainers.model_source import TINY_MODEL, resolve_model_source


def check_run_inputs(cfg, output: bool = True) -> None:
    """Raise ConfigError for a model, data folder or (with ``output``) output folder the run cannot use."""
    check_model(cfg.model)
    if cfg.data_dir is not None:
        from trainers.data_files import existing_dir

        existing_dir(cfg.data_dir)
    if output:
        check_output_dir(cfg.output_dir)


def check_model(model: str) -> None:
    """A local model folder must exist and hold config.json."""
    if model == TINY_MODEL:
        return
    source = resolve_model_source(model)  # a path that is no folder: ConfigError
    if Path(source).is_dir():
        if not (Path(source) / "config.json").is_file():
            raise ConfigError(f"model folder '{model}' holds no config.json; pass a folder saved with "
                              "save_pretrained (config.json, weights, tokenizer), a hub name, 'minilm' or 'tiny-random'")
        return
    # a hub name: checked when it is loaded (offline and not cached, the loader's error names it)


def check_output_dir(output_dir: str) -> None:
    """The output folder is a folder, or can be made: no part of it is a file, and the nearest
    existing folder above it is writable. Checked before training, not when the first checkpoint
    is written an epoch later."""
    path = Path(output_dir).expanduser()
    for part in (path, *path.parents):
        if part.exists():
            if not part.is_dir():
                where = "is a file" if part == path else f"lies under '{part}', which is a file"
                raise ConfigError(f"output_dir '{output_dir}' {where}; pass --output-dir with a folder")
            if not os.access(part, os.W_OK | os.X_OK):
                raise ConfigError(f"output_dir '{output_dir}': cannot write in '{part}'; pass --output-dir with a "
                                  "writable folder")
            return

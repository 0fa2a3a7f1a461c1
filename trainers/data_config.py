"""The data keys of a training config: a built-in task, or your own files or data set
(``trainers.own_data``), checked once with the rest of ``TrainConfig.validate``."""

from __future__ import annotations

import re
from pathlib import Path

from trainers.errors import ConfigError


def validate_data_keys(cfg, builtin: list[str]) -> None:
    """Check (and make absolute) ``cfg`` (a TrainConfig)'s task and where its data comes from: a built-in task, or your
    own files or data set. Part of ``TrainConfig.validate``."""
    from trainers.tasks import METRICS

    own_keys = {"validation_file": cfg.validation_file, "test_file": cfg.test_file,
                "dataset_config": cfg.dataset_config, "text_columns": cfg.text_columns,
                "regression": cfg.regression or None,
                "label_column": None if cfg.label_column == "label" else cfg.label_column}
    if not cfg.is_own_task:
        if cfg.task not in builtin:
            raise ConfigError(f"unknown task '{cfg.task}'; choose one of: {', '.join(builtin)}, or give your own "
                              "data with --train-file FILE (or --dataset NAME_OR_FOLDER)")
        given = [k for k, v in own_keys.items() if v is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} only appl{'ies' if len(given) == 1 else 'y'} to your own data; add "
                              f"--train-file FILE (or --dataset NAME_OR_FOLDER), or drop {'it' if len(given) == 1 else 'them'}")
    else:
        if cfg.train_file is not None and cfg.dataset is not None:
            raise ConfigError("give either --train-file or --dataset, not both")
        if cfg.dataset is not None and (cfg.validation_file or cfg.test_file):
            raise ConfigError("--validation-file/--test-file go with --train-file; a --dataset brings its own splits")
        if cfg.task in builtin:
            raise ConfigError(f"task '{cfg.task}' is a built-in task; name your own task otherwise (e.g. --task "
                              "my-reviews) or leave --task out")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", cfg.task):
            raise ConfigError(f"task name '{cfg.task}' may only hold letters, digits, '.', '_' and '-' (it names "
                              "the registered model, leebert-<task>)")
        if cfg.data_dir is not None:
            raise ConfigError("--data-dir is for the built-in tasks; your own data comes from --train-file or --dataset")
        for name in ("train_file", "validation_file", "test_file"):
            setattr(cfg, name, absolute_data_path(getattr(cfg, name), name))
        if cfg.dataset is not None and Path(cfg.dataset).expanduser().exists():
            cfg.dataset = str(Path(cfg.dataset).expanduser().resolve())
        if not cfg.label_column.strip():
            raise ConfigError("label_column is empty; name the column that holds the labels")
        if cfg.text_columns is not None:
            names = [c.strip() for c in cfg.text_columns.split(",")]
            if not 1 <= len(names) <= 2 or not all(names):
                raise ConfigError(f"text_columns '{cfg.text_columns}': give one column, or two comma-separated "
                                  "for sentence pairs (e.g. premise,hypothesis)")
            cfg.text_columns = ",".join(names)
        if not 0 < cfg.test_fraction < 1:
            raise ConfigError(f"test_fraction must be in (0, 1) (got {cfg.test_fraction})")
    if cfg.metric is not None and cfg.metric not in METRICS:
        raise ConfigError(f"unknown metric '{cfg.metric}'; choose one of: {', '.join(METRICS)}")


def absolute_data_path(path: str | None, name: str) -> str | None:
    """A data file as every trial reads it: a URI (s3://...) as given, a local path absolute (a
    sweep's trials run elsewhere: in their own folders, on other nodes behind a shared volume)."""
    if path is None or "://" in path:
        return path
    local = Path(path).expanduser()
    if not local.exists():
        raise ConfigError(f"{name} '{path}' not found (looked in {local.resolve().parent}); pass an existing file, a "
                          "folder written by datasets' save_to_disk, or a URI every trial can read (s3://...)")
    return str(local.resolve())

"""A sweep's folder: its name, its saved config (``sweep.json``), and how it starts or resumes.

A new sweep gets a name and refuses to overwrite an existing one (``start_config``); ``--resume``
reads the saved config of the sweep to continue (``resume_config``) and validates it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from sweeps.config import SweepConfig
from sweeps.studies import check_resumable
from trainers.errors import ConfigError

STATE_FILE = "sweep.json"  # the resolved config of a sweep, written when it starts; --resume reads it
INTERRUPTED = 130  # exit code of an interrupted sweep (as for Ctrl-C)


class SweepInterrupted(Exception):
    """The sweep stopped before every trial finished (Ctrl-C); ``--resume`` continues it."""


def new_sweep_name(cfg: SweepConfig) -> str:
    return f"{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}"


def save_state(cfg: SweepConfig) -> None:
    cfg.sweep_dir.mkdir(parents=True, exist_ok=True)
    tmp = cfg.sweep_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(cfg.to_dict(), indent=2))
    os.replace(tmp, cfg.sweep_dir / STATE_FILE)


def resume_config(cfg: SweepConfig) -> SweepConfig:
    """The saved config of the sweep to resume, validated: ``cfg.name``, or the newest sweep of the preset."""
    root = Path(cfg.root).resolve()
    if cfg.name is None:
        candidates = sorted((p for p in root.glob(f"{cfg.preset}-*") if (p / STATE_FILE).is_file()),
                            key=lambda p: (p / STATE_FILE).stat().st_mtime)
        if not candidates:
            raise ConfigError(f"--resume: no '{cfg.preset}' sweep found under {root}; pass --name of the sweep to resume")
        folder = candidates[-1]
    else:
        folder = root / cfg.name
        if not (folder / STATE_FILE).is_file():
            raise ConfigError(f"--resume: no sweep named '{cfg.name}' under {root} (missing {STATE_FILE})")
    check_resumable(folder)
    return SweepConfig.from_dict(read_state(folder, "--resume: ")).validate()


def read_state(folder: Path, context: str = "") -> dict[str, Any]:
    """A sweep folder's saved config (``sweep.json``) as a mapping; ``context`` prefixes errors."""
    try:
        saved = json.loads((folder / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{context}{folder / STATE_FILE} is unreadable: {err}") from None
    return migrate_state(saved) if isinstance(saved, dict) else saved


def migrate_state(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config in the current keys: a sweep started before ``methods`` was renamed ``arms``
    saved its arms under ``methods`` (the next ``save_state`` writes the new key)."""
    if "methods" in saved and "arms" not in saved:
        saved = {("arms" if key == "methods" else key): value for key, value in saved.items()}
    return saved


def start_config(cfg: SweepConfig) -> SweepConfig:
    """A new sweep: pick the name and refuse to overwrite an existing one."""
    if cfg.name is None:
        cfg.name = new_sweep_name(cfg)
    if (cfg.sweep_dir / STATE_FILE).exists():
        raise ConfigError(f"sweep '{cfg.name}' already exists in {cfg.sweep_dir.parent}; pass --resume to continue it "
                          "or choose another --name")
    # saved with the sweep: a --resume from a shell without $MLFLOW_TRACKING_URI logs to the same store
    cfg.tracking_uri = cfg.resolved_tracking_uri
    return cfg

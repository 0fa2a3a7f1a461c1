"""A sweep config from its sources: defaults ← preset YAML ← --config file ← --set key=value / flags.

``build_config`` layers the sources as plain mappings and turns them into a ``SweepConfig``, which
it validates (``SweepConfig.validate``): from here on the config is typed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from sweeps.config import DEFAULT_FINAL_TRAIN, MAPPINGS, SweepConfig
from trainers.config import load_yaml
from trainers.errors import ConfigError

PRESETS_DIR = Path(__file__).resolve().parent / "presets"


def presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def load_preset(name: str) -> dict[str, Any]:
    path = PRESETS_DIR / f"{name}.yaml"
    if not isinstance(name, str) or not path.is_file():
        raise ConfigError(f"unknown preset '{name}'; choose one of: {', '.join(presets())}")
    return load_yaml(path, "preset")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` → (["a", "b"], value); the value is read as YAML (numbers, lists, null)."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got '{text}'")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set expects key=value with a key such as trials or train.lr, got '{text}'")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key in MAPPINGS:
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def build_config(preset: str | None = None, config_file: str | None = None,
                 overrides: list[str] | None = None, flags: dict[str, Any] | None = None) -> SweepConfig:
    """Layer the sources, then validate. ``flags`` are dedicated command-line options (None = unset)."""
    file_values = load_yaml(Path(config_file), "config file") if config_file else {}
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    name = preset or flags.pop("preset", None) or file_values.get("preset") or "demo"
    preset_values = load_preset(name)
    values = _merge({"final_train": dict(DEFAULT_FINAL_TRAIN)}, preset_values)
    values["preset"] = name
    values = _merge(values, {k: v for k, v in file_values.items() if k != "preset"})
    values = _merge(values, flags)
    task_given = "task" in (file_values.get("train") or {}) or "task" in (flags.get("train") or {})
    for text in overrides or []:
        path, value = parse_override(text)
        if path[0] in MAPPINGS:
            if len(path) != 2:
                raise ConfigError(f"--set {'.'.join(path)}: use {path[0]}.<key>=value")
            values[path[0]] = {**values.get(path[0], {}), path[1]: value}
            task_given = task_given or path == ["train", "task"]
        elif len(path) == 1:
            values[path[0]] = value
        else:
            raise ConfigError(f"--set {'.'.join(path)}: only {', '.join(k + '.*' for k in MAPPINGS)} take a dotted key")
    train = values.get("train") or {}
    if not task_given and (train.get("train_file") or train.get("dataset")) and "task" in train:
        # the preset's built-in task (mr) gives way to your own data, which names its task itself
        values["train"] = {k: v for k, v in train.items() if k != "task"}
    return SweepConfig.from_dict(values).validate()

"""The DeepSpeed engine config: the user's JSON, with the trainer's settings where it is silent, and
the settings that keep a step free of host syncs and its gradients in fp32 (docs/gpu.md).

What DeepSpeed 0.19.8 would otherwise do on a GPU, read in its source:

- ``gradient_clipping`` > 0 clips inside ``engine.step()``: ZeRO-0 builds ``torch.tensor([max_norm],
  device=...)`` and ``torch.tensor([1.0], device=...)`` each step (blocking host-to-device copies),
  ZeRO-1/2 one ``torch.tensor(-1.0, device=...)`` per parameter group and a host read of the norm.
  The trainer clips itself, on the device (``trainers.gradient_clipping``); DeepSpeed's is 0.
- ZeRO-1/2 compute a global gradient norm every step even unclipped (``compute_grad_norm``), and
  ``overlap_comm`` makes them call the accelerator's ``synchronize()`` around every gradient
  bucket: at one worker there is nothing to overlap. Both are off.
- ``torch_autocast`` marks every ``nn.Linear`` parameter with a bf16 communication dtype unless
  ``lower_precision_safe_modules`` says otherwise; ZeRO-1/2 then round those gradients to bf16
  before reducing them, even at one worker. The list is empty: gradients stay fp32.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trainers.errors import ConfigError


def deepspeed_config(cfg, world_size: int) -> dict[str, Any]:
    """The engine config: the user's JSON if given, with the trainer's settings where it is silent."""
    config: dict[str, Any] = json.loads(Path(cfg.deepspeed_config).read_text()) if cfg.deepspeed_config else {}
    if cfg.batch_size % world_size:
        raise ConfigError(f"batch_size {cfg.batch_size} must be divisible by the number of processes ({world_size})")
    config.setdefault("train_batch_size", cfg.batch_size)
    config.setdefault("train_micro_batch_size_per_gpu", cfg.batch_size // world_size)
    config.setdefault("gradient_accumulation_steps", 1)
    if config.get("gradient_clipping", 0.0):
        raise ConfigError(f"DeepSpeed config sets gradient_clipping={config['gradient_clipping']}; drop it and set "
                          "--max-grad-norm: the trainer clips on the device, DeepSpeed's clipping waits on the host")
    config["gradient_clipping"] = 0.0
    config.setdefault("zero_optimization", {"stage": cfg.zero_stage})
    zero = config["zero_optimization"]
    if zero.get("stage", 0) > 2:
        raise ConfigError("ZeRO stage 3 is not supported; use stage 0, 1 or 2")
    if zero.get("stage", 0) in (1, 2):
        zero.setdefault("overlap_comm", False)
        zero.setdefault("compute_grad_norm", False)  # the trainer computes the norm it clips with
    config.setdefault("steps_per_print", 10**9)  # the trainer prints its own progress
    config.setdefault("wall_clock_breakdown", False)
    # DeepSpeed's throughput timer is on by default: a forward pre-hook that synchronizes the
    # device on every call of the module (hypergradient passes and evaluation included).
    config.setdefault("timers", {"throughput": {"enabled": False}})
    check_resolved_precision(cfg.precision)
    if cfg.precision == "bf16":
        # Autocast keeps fp32 master parameters: the finite-difference hypergradient perturbs θ by
        # ~1e-6 per entry, which bf16 parameters could not represent.
        config.setdefault("torch_autocast", {"enabled": True, "dtype": "bfloat16"})
    autocast = config.get("torch_autocast", {})
    if autocast.get("enabled"):
        autocast.setdefault("lower_precision_safe_modules", [])
        if autocast["lower_precision_safe_modules"]:
            raise ConfigError("DeepSpeed config lists torch_autocast.lower_precision_safe_modules; their gradients "
                              "would be reduced in bf16. Drop the list (the trainer keeps every gradient fp32)")
    for key in ("bf16", "fp16"):
        if config.get(key, {}).get("enabled"):
            raise ConfigError(
                f"DeepSpeed config enables '{key}' parameters; use --precision bf16 (torch_autocast with fp32 "
                "master weights) instead, because the loss-weight hypergradient needs fp32 parameters"
            )
    if config["train_batch_size"] != cfg.batch_size:
        raise ConfigError(
            f"DeepSpeed config train_batch_size={config['train_batch_size']} disagrees with batch_size={cfg.batch_size}; "
            "drop it from the JSON and set --batch-size"
        )
    return config


def check_resolved_precision(precision: str) -> None:
    """fp32 or bf16; ``auto`` must have been resolved for the device (``select_device_and_precision``,
    as ``trainers.train.run`` does) before an engine or a strategy is built from the config."""
    if precision not in ("fp32", "bf16"):
        raise ConfigError(f"precision '{precision}' reached the engine unresolved; resolve it for the device first "
                          "(trainers.engine.select_device_and_precision)")

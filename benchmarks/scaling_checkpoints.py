"""The per-epoch checkpoint cost (benchmarks/scaling.py): the trainer with per-epoch checkpoints
off and on, taking turns, the time inside the save, the copy Tune's persist makes, the size."""

from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path

from benchmarks.scaling_report import say
from trainers.layout import checkpoints_dir, epoch_tag


def checkpoint_cost(preset: str, work: Path, repeats: int) -> dict:
    """``trainers.train.run`` with save_checkpoints False and True on the same config, taking turns."""
    import trainers.engine as engine
    from sweeps.presets import build_config
    from trainers.config import TrainConfig
    from trainers.train import run

    base = build_config(preset=preset).train_config("fixed").to_dict()
    base.update(threads=1, resume=False)  # as a sweep trial with cpus_per_trial 1
    saves: list[float] = []
    original = engine.save_checkpoint

    def timed_save(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            saves.append(time.perf_counter() - start)

    walls: dict[bool, list[float]] = {False: [], True: []}
    order = [flag for i in range(repeats) for flag in ((False, True) if i % 2 == 0 else (True, False))]
    size_mb = copy_s = None
    # Untimed warm-up: the first training in a process pays one-off costs (DeepSpeed's process
    # group and communication op, lazy imports, cold file caches) that would land on one setting.
    warm = TrainConfig.from_dict({**base, "output_dir": str(work / "warm-up"), "save_checkpoints": False, "epochs": 1,
                                  "train_subset": 2 * int(base["batch_size"]), "eval_subset": 64})
    say(f"checkpoint cost: untimed warm-up training ({warm.model}, 1 epoch of 2 steps)")
    run(warm, quiet=True)
    engine.save_checkpoint = timed_save
    try:
        for index, save in enumerate(order):
            out = work / f"ckpt-{index}-{'on' if save else 'off'}"
            cfg = TrainConfig.from_dict({**base, "output_dir": str(out), "save_checkpoints": save})
            say(f"checkpoint cost: training {preset}-sized ({cfg.model}, {cfg.epochs} epochs) with "
                f"save_checkpoints={save} ({index + 1}/{len(order)})")
            start = time.perf_counter()
            run(cfg, quiet=True)
            walls[save].append(time.perf_counter() - start)
            if save and size_mb is None:
                last = checkpoints_dir(out) / epoch_tag(cfg.epochs)
                size_mb = sum(f.stat().st_size for f in last.rglob("*") if f.is_file()) / 1e6
                target = work / "persist-copy"
                start = time.perf_counter()
                shutil.copytree(last, target)
                copy_s = time.perf_counter() - start
                shutil.rmtree(target, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
    finally:
        engine.save_checkpoint = original
    epochs = int(base["epochs"])
    off, on = statistics.median(walls[False]), statistics.median(walls[True])
    per_epoch_off = off / epochs
    diff = (on - off) / epochs
    save_s = statistics.median(saves) if saves else None
    return {
        "preset": preset, "model": base["model"], "epochs": epochs, "repeats": repeats,
        "wall_off_s": round(off, 2), "wall_on_s": round(on, 2), "epoch_s_without_checkpoints": round(per_epoch_off, 2),
        "wall_diff_per_epoch_s": round(diff, 3), "wall_diff_per_epoch_pct": round(100 * diff / per_epoch_off, 2),
        "save_per_epoch_s": round(save_s, 3) if save_s is not None else None,
        "save_per_epoch_pct": round(100 * save_s / per_epoch_off, 2) if save_s is not None else None,
        "persist_copy_s": round(copy_s, 3) if copy_s is not None else None,
        "checkpoint_mb": round(size_mb, 1) if size_mb is not None else None,
    }

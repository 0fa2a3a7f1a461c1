"""The DeepSpeed engine: configs, precision, ZeRO stages."""

import json
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import make_batch
from trainers import engine as ds
from trainers.config import TrainConfig
from trainers.errors import ConfigError
from trainers.objective import LossTerms, LossWeights
from trainers.errors import DivergenceMonitor
from trainers.train import training_step
from trainers.weight_strategies import CrossLevelWeights, hypergradient


def _linear_output_dtypes(model, fn):
    seen = []
    hook = model.exits[0].classifier.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    fn()
    hook.remove()
    return seen


def test_bf16_autocast_trains_in_bf16_and_keeps_fp32_master_weights_for_the_hypergradient(tiny_model):
    model = tiny_model(num_labels=3)
    cfg = TrainConfig(model="tiny-random", precision="bf16", batch_size=6).validate()
    engine = ds.build_engine(model, cfg, total_steps=4)
    batch = make_batch()
    assert _linear_output_dtypes(model, lambda: engine(**batch)) == [torch.bfloat16]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    terms = LossTerms.build(3, "all")
    weights = LossWeights(len(terms))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # even inside an autocast region
        dtypes = _linear_output_dtypes(model, lambda: hypergradient(
            model, terms, weights, batch, make_batch(seed=1), ds.parameter_lrs(engine), 0.01))
    assert dtypes and set(dtypes) == {torch.float32}, "finite differences must run in fp32"
    # a whole training step under bf16 autocast: the loss weights, φ and the hypergradient stay fp32
    strategy = CrossLevelWeights(terms, "softmax", 0.1, 1, 0.01).to(engine.device)
    b1, b2 = make_batch(seed=2), make_batch(seed=3)
    draw = SimpleNamespace(b1=lambda: b1, b2=lambda: b2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, outer = training_step(engine, strategy, terms, draw, 0, lambda: ds.parameter_lrs(engine),
                                    DivergenceMonitor(engine.device))
    assert torch.isfinite(loss) and loss.dtype == torch.float32
    assert outer["hypergradient"].dtype == torch.float32 and outer["hypergradient"].norm() > 0
    assert strategy.weights().dtype == torch.float32 and strategy.loss_weights.phi.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_parameter_lrs_follow_the_groups_under_every_zero_stage(tiny_model):
    for stage in (0, 1, 2):
        model = tiny_model()
        cfg = TrainConfig(model="tiny-random", zero_stage=stage, lr=2e-5, head_lr=7e-4, batch_size=6,
                          warmup_ratio=0.0).validate()
        engine = ds.build_engine(model, cfg, total_steps=10)
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        lrs = ds.parameter_lrs(engine)
        assert len(lrs) == len(names)
        assert {lr for n, lr in zip(names, lrs) if n.startswith("exits.")} == {7e-4}
        assert {lr for n, lr in zip(names, lrs) if not n.startswith("exits.")} == {2e-5}
        assert ds.parameter_lrs(engine, fixed=0.3) == [0.3] * len(names)


def test_deepspeed_config_files_are_honoured_and_checked(tmp_path):
    cfg = TrainConfig(deepspeed_config="clusters/deepspeed/cpu_zero2.json", batch_size=16).validate()
    config = ds.deepspeed_config(cfg, world_size=1)
    assert config["zero_optimization"]["stage"] == 2 and config["train_batch_size"] == 16
    # DeepSpeed's clipping waits on the host: off, and the trainer clips (trainers/gradient_clipping.py)
    assert config["gradient_clipping"] == 0.0
    assert config["zero_optimization"]["overlap_comm"] is False and config["zero_optimization"]["compute_grad_norm"] is False
    clipped = tmp_path / "clipped.json"
    clipped.write_text(json.dumps({"gradient_clipping": 1.0}))
    with pytest.raises(ConfigError, match="--max-grad-norm"):
        ds.deepspeed_config(TrainConfig(deepspeed_config=str(clipped)).validate(), 1)
    bf16_grads = tmp_path / "bf16_grads.json"
    bf16_grads.write_text(json.dumps({"torch_autocast": {"enabled": True, "dtype": "bfloat16",
                                                         "lower_precision_safe_modules": ["torch.nn.modules.linear.Linear"]}}))
    with pytest.raises(ConfigError, match="reduced in bf16"):
        ds.deepspeed_config(TrainConfig(deepspeed_config=str(bf16_grads)).validate(), 1)
    gpu = ds.deepspeed_config(TrainConfig(deepspeed_config="clusters/deepspeed/gpu_bf16_zero2.json").validate(), 2)
    assert gpu["torch_autocast"] == {"enabled": True, "dtype": "bfloat16", "lower_precision_safe_modules": []}
    bf16 = ds.deepspeed_config(TrainConfig(precision="bf16").validate(), 1)  # no file: the trainer's own defaults
    assert bf16["torch_autocast"] == {"enabled": True, "dtype": "bfloat16", "lower_precision_safe_modules": []}
    assert gpu["train_micro_batch_size_per_gpu"] == 16
    bad = tmp_path / "bf16_params.json"
    bad.write_text(json.dumps({"bf16": {"enabled": True}}))
    with pytest.raises(ConfigError, match="--precision bf16"):
        ds.deepspeed_config(TrainConfig(deepspeed_config=str(bad)).validate(), 1)
    stage3 = tmp_path / "zero3.json"
    stage3.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    with pytest.raises(ConfigError, match="ZeRO stage 3"):
        ds.deepspeed_config(TrainConfig(deepspeed_config=str(stage3)).validate(), 1)
    with pytest.raises(ConfigError, match="divisible"):
        ds.deepspeed_config(TrainConfig(batch_size=15).validate(), 2)
    with pytest.raises(ConfigError, match="zero_stage must be 0, 1 or 2"):
        TrainConfig(zero_stage=3).validate()


def test_deepspeeds_synchronizing_throughput_timer_is_off_in_every_shipped_config():
    from pathlib import Path

    configs = sorted((Path(__file__).resolve().parents[1] / "clusters" / "deepspeed").glob("*.json"))
    assert len(configs) >= 3
    for path in configs + [None]:  # None: the trainer's own defaults, no file
        cfg = TrainConfig(model="tiny-random", batch_size=8, deepspeed_config=str(path) if path else None).validate()
        timers = ds.deepspeed_config(cfg, world_size=1)["timers"]
        assert timers == {"throughput": {"enabled": False}}, path


def test_a_jit_build_lock_left_by_a_dead_build_is_removed_and_a_live_one_is_waited_for(tmp_path, capsys):
    """torch's FileBaton waits forever on a lock whose builder was killed (CI hung 90 min on one)."""
    import os
    import threading
    import time

    stale = tmp_path / "dead" / "lock"
    stale.parent.mkdir()
    stale.touch()
    an_hour_ago = time.time() - 3600
    os.utime(stale, (an_hour_ago, an_hour_ago))
    started = time.monotonic()
    assert ds.wait_for_extension_build(stale, stale_after_s=600) is True
    assert not stale.exists() and time.monotonic() - started < 5
    assert "left by a build that died" in capsys.readouterr().err

    live = tmp_path / "live" / "lock"
    live.parent.mkdir()
    live.touch()
    finisher = threading.Timer(1.5, live.unlink)  # the other process's build ends 1.5 s from now
    finisher.start()
    started = time.monotonic()
    assert ds.wait_for_extension_build(live, stale_after_s=600, poll_s=0.1) is False
    waited = time.monotonic() - started
    finisher.join()
    assert 1.3 <= waited < 10, waited
    assert ds.wait_for_extension_build(tmp_path / "never" / "lock") is False  # no build going on: no wait


def test_build_engine_gets_past_a_dead_builds_lock_instead_of_hanging(tmp_path):
    """End to end, in a subprocess (a regression hangs): a copy of the machine's build cache holding
    a dead build's lock, as a SIGKILLed first build leaves it, must not stop deepspeed.initialize."""
    import os
    import shutil
    import subprocess
    import sys
    import time
    from pathlib import Path

    extensions = tmp_path / "torch_extensions"
    real_build = ds.extension_build_lock().parent
    copy = extensions / real_build.name  # TORCH_EXTENSIONS_DIR holds the op folders directly
    shutil.copytree(real_build, copy, ignore=shutil.ignore_patterns("lock"))  # built op reused: no 50 s rebuild
    (copy / "lock").touch()
    an_hour_ago = time.time() - 3600
    os.utime(copy / "lock", (an_hour_ago, an_hour_ago))
    script = (
        "from tests.conftest import make_batch\n"
        "from trainers import engine\n"
        "from trainers.config import TrainConfig\n"
        "from trainers.model import MultiExitEncoder, tiny_backbone\n"
        "model = MultiExitEncoder(tiny_backbone(num_layers=2, seed=0, kind='bert'), 3, 'mean')\n"
        "e = engine.build_engine(model, TrainConfig(model='tiny-random', batch_size=6).validate(), total_steps=2)\n"
        "print('engine built', type(e).__name__)\n"
    )
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(extensions), "PYTHONPATH": str(repo)}
    proc = subprocess.run([sys.executable, "-c", script], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "engine built DeepSpeedEngine" in proc.stdout
    assert "left by a build that died" in proc.stderr
    assert not (copy / "lock").exists()

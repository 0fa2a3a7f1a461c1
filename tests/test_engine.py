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
from trainers.divergence import DivergenceMonitor
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


def test_the_engine_starts_without_building_deepspeeds_shm_op_or_waiting_on_its_lock(tmp_path):
    """End to end, in a subprocess with an empty extension cache (a fresh machine) whose shm-op folder
    holds a live build's lock (another trainer building it, or one killed mid-build, which torch
    waits on forever): build_engine neither builds the op (no compiler run, no minute lost) nor
    waits, and the engine trains: two steps move the weights. A regression hangs, so: a timeout.
    The engine's DeepSpeed import leaves mlflow unimported, and importable."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    extensions = tmp_path / "torch_extensions"
    (extensions / ds.SHM_COMM_OP).mkdir(parents=True)
    (extensions / ds.SHM_COMM_OP / "lock").touch()  # fresh: a build going on
    script = (
        "import torch\n"
        "import importlib\n"
        "from tests.conftest import make_batch\n"
        "from trainers import engine\n"
        "from trainers.config import TrainConfig\n"
        "from trainers.model import MultiExitEncoder, tiny_backbone\n"
        "model = MultiExitEncoder(tiny_backbone(num_layers=2, seed=0, kind='bert'), 3, 'mean')\n"
        "e = engine.build_engine(model, TrainConfig(model='tiny-random', batch_size=6).validate(), total_steps=2)\n"
        "before = [p.detach().clone() for p in model.parameters()]\n"
        "for step in range(2):\n"
        "    batch = make_batch(seed=step)\n"
        "    logits = e(input_ids=batch['input_ids'], attention_mask=batch['attention_mask'])\n"
        "    e.backward(torch.nn.functional.cross_entropy(logits[-1].float(), batch['labels']))\n"
        "    e.step()\n"
        "moved = max(float((p.detach() - b).abs().max()) for p, b in zip(model.parameters(), before))\n"
        "backend = importlib.import_module('deepspeed.comm.comm').cdb  # DeepSpeed's comm backend, as started\n"
        "print('engine built', type(e).__name__, 'shm op', backend.shm_comm_op, 'moved', moved)\n"
        "import sys\n"
        "print('mlflow imported by the engine:', 'mlflow' in sys.modules)\n"
        "import mlflow, deepspeed.autotuning.autotuner as autotuner\n"
        "print('mlflow importable after:', bool(mlflow.__version__), 'autotuner has_mlflow:', autotuner.has_mlflow)\n"
    )
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(extensions), "PYTHONPATH": str(repo)}
    proc = subprocess.run([sys.executable, "-c", script], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "engine built DeepSpeedEngine shm op None moved" in proc.stdout, proc.stdout
    assert float(proc.stdout.splitlines()[0].split("moved")[-1]) > 0
    # DeepSpeed's autotuner tries `import mlflow`: hidden from it (engine.import_deepspeed), not from us
    assert "mlflow imported by the engine: False" in proc.stdout, proc.stdout
    assert "mlflow importable after: True autotuner has_mlflow: False" in proc.stdout, proc.stdout
    assert sorted(p.name for p in (extensions / ds.SHM_COMM_OP).iterdir()) == ["lock"]  # nothing built
    assert "waiting for another process" not in proc.stderr

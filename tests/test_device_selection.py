"""A broken GPU setup fails at once, never trains on the CPU by accident.

This machine has no GPU, which is exactly the case to test: ``--device cuda`` must stop before any
work with exit 2 and say what is missing. The bf16 case needs a GPU without bf16; torch's answers
are stood in for, the way a pre-Ampere GPU would give them.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainers import engine as ds
from trainers.config import TrainConfig
from trainers.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_the_command_line_exits_2_and_names_the_missing_cuda(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "trainers.train", "--task", "mr", "--model", "tiny-random",
                           "--device", "cuda", "--output-dir", str(tmp_path / "run")],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2, proc.stderr
    (line,) = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert "device 'cuda'" in line and "no CUDA support" in line and "--device cpu" in line
    assert not (tmp_path / "run").exists(), "nothing trained, nothing written"


def test_auto_is_the_cpu_here_and_cpu_bf16_stays_allowed():
    assert ds.select_device("auto", "fp32") == "cpu"
    assert ds.select_device("cpu", "bf16") == "cpu"  # asked for: CPU bf16 autocast is allowed


def test_bf16_on_a_gpu_without_bf16_fails_with_what_to_change(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla V100-SXM2-16GB")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 0))
    with pytest.raises(ConfigError, match=r"bf16 .*Tesla V100.*compute capability 7\.0.*--precision fp32"):
        ds.select_device("cuda", "bf16")


def test_an_unknown_device_is_refused_at_the_edge():
    with pytest.raises(ConfigError, match="unknown device 'gpu'; choose one of: auto, cpu, cuda"):
        TrainConfig(device="gpu").validate()

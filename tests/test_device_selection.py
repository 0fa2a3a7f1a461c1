"""A broken GPU setup fails at once, never trains on the CPU by accident.

This machine has no GPU, which is exactly the case to test: ``--device cuda`` must stop before any
work with exit 2 and say what is missing. The bf16 case needs a GPU without bf16; torch's answers
are stood in for, the way a pre-Ampere GPU would give them.

``precision: auto`` is resolved in the same place: bf16 where the device has bf16 units (the CPU's
flags are passed in, or stood in for), else fp32; the run records and logs what it resolved to, and
the sweep's budget resolves it the same way on its driver.
"""

import json
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


# ---------------------------------------------------------------------------- precision: auto
AVX512_BF16 = {"fpu", "avx2", "avx512f", "avx512_bf16"}  # an AMD EPYC (Zen 4) like these machines
NO_BF16 = {"fpu", "avx2", "avx512f", "avx512bw"}           # AVX-512, but no bf16 dot products


def test_auto_precision_is_bf16_exactly_when_the_cpu_flags_have_bf16_units(tmp_path):
    from trainers.config import cpu_bf16_flag, cpu_flags, resolve_precision

    assert resolve_precision("auto", "cpu", AVX512_BF16) == "bf16"
    assert resolve_precision("auto", "cpu", {"avx2", "amx_tile", "amx_bf16"}) == "bf16"  # Sapphire Rapids' AMX
    assert resolve_precision("auto", "cpu", NO_BF16) == "fp32"
    assert resolve_precision("auto", "cpu", set()) == "fp32"  # nothing known: no bf16
    assert cpu_bf16_flag(AVX512_BF16) == "avx512_bf16" and cpu_bf16_flag(NO_BF16) is None
    for asked in ("fp32", "bf16"):  # named precisions are taken as they are, flags or not
        assert resolve_precision(asked, "cpu", NO_BF16) == asked == resolve_precision(asked, "cpu", AVX512_BF16)
    with pytest.raises(ConfigError, match="unknown precision 'fp16'; choose one of: fp32, bf16, auto"):
        resolve_precision("fp16", "cpu")
    # the flags come from the `flags` line of /proc/cpuinfo; without one (another OS), none
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\n")
    assert cpu_flags(str(info)) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_flags(str(tmp_path / "missing")) == frozenset()


@pytest.mark.parametrize("flags, expected", [(AVX512_BF16, "bf16"), (NO_BF16, "fp32")])
def test_auto_is_resolved_where_the_device_is_selected(monkeypatch, flags, expected):
    import trainers.config

    monkeypatch.setattr(trainers.config, "cpu_flags", lambda *a: frozenset(flags))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # device auto is the CPU, as on this machine
    assert ds.select_device_and_precision("cpu", "auto") == ("cpu", expected)
    assert ds.select_device_and_precision("auto", "auto") == ("cpu", expected)  # no GPU here: the CPU's flags
    assert ds.select_device("cpu", "auto") == "cpu"


@pytest.mark.parametrize("supported, expected", [(False, "fp32"), (True, "bf16")])
def test_auto_on_a_gpu_follows_its_bf16_support_and_never_fails(monkeypatch, supported, expected):
    import trainers.config

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla V100-SXM2-16GB")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 0))
    monkeypatch.setattr(trainers.config, "cpu_flags", lambda *a: frozenset(AVX512_BF16))  # the host CPU does not count
    monkeypatch.setattr(ds, "_pin_deepspeed_accelerator", lambda device: None)  # this process keeps its CPU DeepSpeed
    assert ds.select_device_and_precision("cuda", "auto") == ("cuda", expected)


def test_an_unresolved_auto_never_reaches_the_engine_or_the_strategy():
    from trainers.objective import LossTerms
    from trainers.weight_strategies import build_strategy

    cfg = TrainConfig(precision="auto", method="clo").validate()
    with pytest.raises(ConfigError, match="precision 'auto' reached the engine unresolved"):
        ds.deepspeed_config(cfg, 1)
    with pytest.raises(ConfigError, match="precision 'auto' reached the loss-weight strategy unresolved"):
        build_strategy(cfg, LossTerms.build(3, "all"))


@pytest.mark.parametrize("flags, expected, why", [
    (AVX512_BF16, "bf16", "(auto: the CPU has avx512_bf16)"),
    (NO_BF16, "fp32", "(auto: the CPU has neither avx512_bf16 nor amx_bf16)"),
])
def test_a_run_records_and_logs_the_precision_auto_resolved_to(tmp_path, monkeypatch, capsys, flags, expected, why):
    import trainers.config
    from trainers.train import run

    monkeypatch.setattr(trainers.config, "cpu_flags", lambda *a: frozenset(flags))
    cfg = TrainConfig(model="tiny-random", task="mr", train_subset=32, eval_subset=40, max_length=16, epochs=1,
                      batch_size=16, threads=1, wallclock_eval=False, save_checkpoints=False, precision="auto",
                      output_dir=str(tmp_path / "run"))
    summary = run(cfg).summary
    assert summary.config["precision"] == expected
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["config"]["precision"] == expected
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("[leebert] task mr:") and f"device cpu, precision {expected} {why}" in first, first


def test_a_sweep_charges_auto_at_the_precision_its_cpu_trials_will_resolve(monkeypatch):
    """The budget resolves train.precision auto on the driver from its own CPU flags; a resolved
    precision without a measured figure stays an error, never a fallback to another figure."""
    import trainers.config
    from sweeps.budget import MEASURED_OUTER_STEP_COST, resolve_outer_step_cost
    from sweeps.presets import build_config

    monkeypatch.setattr(trainers.config, "cpu_flags", lambda *a: frozenset(NO_BF16))
    cfg = build_config(preset="smoke", overrides=["arms=[bilevel,clo]", "train.precision=auto"])
    assert cfg.arm_outer_step_cost("clo") == MEASURED_OUTER_STEP_COST[("cpu", "fp32")]["clo"]
    monkeypatch.setattr(trainers.config, "cpu_flags", lambda *a: frozenset(AVX512_BF16))
    assert resolve_outer_step_cost("auto", "clo", "cpu", "auto") == MEASURED_OUTER_STEP_COST[("cpu", "bf16")]["clo"]
    monkeypatch.delitem(MEASURED_OUTER_STEP_COST, ("cpu", "bf16"))  # the same, before the entry was measured
    with pytest.raises(ConfigError, match=r"no measured figure for cpu/bf16 \(train.precision auto: bf16, as the "
                                          r"driver's CPU has avx512_bf16; this assumes every node has the same CPUs\)"):
        build_config(preset="smoke", overrides=["arms=[bilevel,clo]", "train.precision=auto"])
    assert resolve_outer_step_cost(3.0, "clo", "cpu", "auto") == 3.0  # a number needs no precision
    # CUDA trials: a driver without a GPU cannot know whether theirs have bf16, and says so
    with pytest.raises(ConfigError, match="train.precision auto: this driver has no GPU"):
        resolve_outer_step_cost("auto", "clo", "cuda", "auto")

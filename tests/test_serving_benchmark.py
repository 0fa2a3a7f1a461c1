"""benchmarks/serving.py, short, on a tiny exported model: it reports, at batch 64 and at batch 1,
the three predictors' sentences/s with p50 and p95 latency, the wall-clock speed-up of early exit
against the layer speed-up, and the target verdict (>= 0.9 x) for both sizes. The figures
themselves are the benchmark's business (docs/serving.md), not this test's."""

from __future__ import annotations

import json
import subprocess
import sys

from test_serving import _cfg, _tiny
from test_sweep_helpers import ROOT, sweep_env


def test_the_benchmark_reports_both_batch_sizes_against_the_target(tmp_path):
    from serving.export import export_model
    from trainers.model import MultiExitEncoder, tiny_backbone

    exported = export_model(_tiny(MultiExitEncoder, tiny_backbone, num_labels=2), _cfg("mr"), tmp_path / "exported")
    (tmp_path / "policy.json").write_text(json.dumps({"policy": "patience", "setting": 1, "delta": None}))
    out = tmp_path / "serving.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "serving.py"), "--exported", str(exported),
                           "--policy", str(tmp_path / "policy.json"), "--sentences", "40", "--batch1-sentences", "12",
                           "--repeats", "2", "--threads", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=300, env=sweep_env(), cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert figures["target"] == 0.9 and 1 <= figures["mean_exit_layer"] <= 4
    assert figures["layer_speedup"] == 4 / figures["mean_exit_layer"]
    assert set(figures["batches"]) == {"64", "1"}
    assert figures["batches"]["64"]["requests"] == 1 and figures["batches"]["1"]["requests"] == 12
    for size, batch in figures["batches"].items():
        assert batch["fraction_of_layer_speedup"] == batch["speedup_over_plain"] / figures["layer_speedup"]
        assert batch["target_met"] == (batch["fraction_of_layer_speedup"] >= 0.9)
        for key in "abc":
            assert batch[key]["sentences_per_s"] > 0 and 0 < batch[key]["p50_ms"] <= batch[key]["p95_ms"], (size, key)
        assert sum(batch["breakdown_ms"][k] for k in ("validate", "tokenize", "pad", "early_exit", "to_host",
                                                      "output")) > batch["breakdown_ms"]["layers"] > 0
    assert proc.stdout.count("[target >= 0.90: ") == 2, proc.stdout
    assert "load average" in proc.stdout.splitlines()[0]
    for line in proc.stdout.splitlines():
        if line.startswith("  (a) early exit"):
            assert "latency p50" in line and "p95" in line, line

"""What a fresh trainer process pays to import DeepSpeed, with and without mlflow hidden from it.

    python benchmarks/import_cost.py            # 5 fresh processes of each kind, alternating
    python benchmarks/import_cost.py --repeats 9

Every trial of a sweep is a fresh process (or a few, with several workers) that imports the
trainer and DeepSpeed. DeepSpeed's autotuner tries ``import mlflow`` at import time;
``trainers.engine.import_deepspeed`` hides mlflow from that import (the trainer never logs to
MLflow: the driver does). Each repeat starts one process of each kind, in turn, so both see the
same machine; the figures are the medians of the child's own CPU seconds and wall seconds of
``import trainers.train`` plus DeepSpeed, and the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHILD = """
import resource, sys, time
t = time.perf_counter()
import trainers.train
from trainers.engine import import_deepspeed
{importer}
usage = resource.getrusage(resource.RUSAGE_SELF)
print(time.perf_counter() - t, usage.ru_utime + usage.ru_stime, 'mlflow' in sys.modules)
"""
KINDS = {"plain import deepspeed": "import deepspeed", "import_deepspeed (mlflow hidden)": "import_deepspeed()"}


def measure(importer: str) -> tuple[float, float, bool]:
    proc = subprocess.run([sys.executable, "-c", CHILD.format(importer=importer)], cwd=REPO, capture_output=True,
                          text=True, check=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    wall, cpu, mlflow = proc.stdout.split()[-3:]
    return float(wall), float(cpu), mlflow == "True"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5, help="fresh processes of each kind (default: 5)")
    args = p.parse_args()
    samples: dict[str, list] = {kind: [] for kind in KINDS}
    for _ in range(args.repeats):
        for kind, importer in KINDS.items():
            samples[kind].append(measure(importer))
    figures = {}
    for kind, rows in samples.items():
        figures[kind] = {"wall_s": statistics.median(r[0] for r in rows), "cpu_s": statistics.median(r[1] for r in rows),
                         "mlflow_imported": rows[0][2]}
        print(f"{kind:34s} wall {figures[kind]['wall_s']:.2f} s  CPU {figures[kind]['cpu_s']:.2f} s  "
              f"mlflow imported: {figures[kind]['mlflow_imported']}")
    plain, hidden = (figures[kind] for kind in KINDS)
    saved = {"cpu_s_saved_per_process": round(plain["cpu_s"] - hidden["cpu_s"], 3),
             "wall_s_saved_per_process": round(plain["wall_s"] - hidden["wall_s"], 3)}
    print(f"saved per trainer process: {saved['cpu_s_saved_per_process']:.2f} CPU-s, "
          f"{saved['wall_s_saved_per_process']:.2f} s wall")
    print(json.dumps({"repeats": args.repeats, **saved}))


if __name__ == "__main__":
    main()

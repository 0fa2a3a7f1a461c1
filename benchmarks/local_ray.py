"""What a benchmark that starts its own Ray nodes sets before it imports Ray: no token auth, no usage
stats, no hub, and the repository on every worker's path (the nodes' workers inherit this
process's environment)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULTS = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def prepare_environment() -> None:
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)

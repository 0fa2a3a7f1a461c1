#!/usr/bin/env python
"""Register a finished sweep's models in the MLflow model registry, calibrated to a target.

    python platform/register.py --sweep demo-20261125-131901                  # speed-up >= 2x (register_speedup)
    python platform/register.py --sweep demo-20261125-131901 --target-speedup 3
    python platform/register.py --sweep demo-20261125-131901 --max-drop 1     # <= 1 point below full depth
    python platform/register.py --sweep my-sweep --root /shared/sweeps --tracking-uri http://mlflow:5000

The work is done by ``serving.register.register_sweep``; this script finds the sweep, parses
arguments and prints.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sweeps.config import SweepConfig  # noqa: E402
from sweeps.preflight import check_tracking_uri  # noqa: E402
from sweeps.state import STATE_FILE, read_state  # noqa: E402
from trainers.errors import EXIT_BAD_INPUT, ConfigError  # noqa: E402


class Parser(argparse.ArgumentParser):
    """argparse, but bad input is one ``error: ...`` line (exit 2), as for every other bad input."""

    def error(self, message: str):
        print(f"error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


def parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python platform/register.py",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Register the best model of each arm of a finished sweep in the MLflow model registry: one "
            "registered model per task (leebert-<task>), one version per arm's best trial, with the exit "
            "policy calibrated on validation to a target speed-up or a maximum accuracy drop (the test values "
            "at that setting are only reported). Aliases: <arm>-best per arm, and champion for the arm "
            "with the best validation objective. Runs again safely: the same trial with the same policy reuses "
            "its version; a target that gives another policy adds a version.", 100),
        epilog="Bad input (an unknown or unfinished sweep, an unreachable MLflow store, an unreachable target) "
               "prints one 'error: ...' line, registers nothing and exits with code 2. See docs/sweeps.md.",
    )
    p.add_argument("--sweep", required=True, metavar="NAME", help="the sweep's name (its folder under --root)")
    p.add_argument("--root", default=None, help="folder holding the sweep folders (default: runs/sweeps)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: the one the sweep was run with)")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--target-speedup", type=float, metavar="X",
                        help="the most accurate exit policy whose validation speed-up is >= X "
                             "(default: the sweep's register_speedup, 2)")
    target.add_argument("--max-drop", type=float, metavar="D",
                        help="the fastest exit policy within D percentage points of the full-depth model's "
                             "validation metric (e.g. 1 for 1 point)")
    p.add_argument("--model-name", help="registered model name (default: the sweep's registry_prefix, else leebert-<task>)")
    return p


def find_sweep(name: str, root: str | None) -> tuple[Path, dict]:
    """The sweep folder and its saved config (sweep.json), as ``--resume`` finds them."""
    base = Path(root or "runs/sweeps").resolve()
    folder = base / name
    if not (folder / STATE_FILE).is_file():
        raise ConfigError(f"no sweep named '{name}' under {base} (missing {STATE_FILE}); pass --root of its folder")
    return folder, read_state(folder)


def tracking_uri(folder: Path, saved: dict, override: str | None) -> str:
    uri = override or saved.get("tracking_uri") or f"sqlite:///{folder / 'mlflow.db'}"
    if urlparse(uri).scheme == "sqlite":
        path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
        if not path or not Path(path).is_file():
            raise ConfigError(f"the sweep's MLflow store {uri} does not exist; pass --tracking-uri of its store")
    else:
        check_tracking_uri(uri)
    return uri


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        folder, saved = find_sweep(args.sweep, args.root)
        cfg = SweepConfig.from_dict(saved)  # the keys only: the sweep's own settings are not validated again
        uri = tracking_uri(folder, saved, args.tracking_uri)
        target = args.target_speedup
        if target is None and args.max_drop is None:
            target = cfg.register_speedup
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        quiet()
        from serving.register import register_sweep

        result = register_sweep(uri, cfg.name or args.sweep, target_speedup=target, max_drop=args.max_drop,
                                model_name=args.model_name or cfg.registry_prefix)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as err:  # noqa: BLE001 - an MLflow store that fails mid-way: one line, not a traceback
        from mlflow.exceptions import MlflowException

        if not isinstance(err, MlflowException):
            raise
        print(f"error: MLflow: {str(err).splitlines()[0]}", file=sys.stderr)
        return EXIT_BAD_INPUT

    from serving.describe import describe, serve_command

    print("\n".join(describe(result)))
    print("\nServe the champion (from the repository root):")
    print(f"  {serve_command(result)}")
    print("Load it in Python (with MLFLOW_TRACKING_URI set as above):")
    print(f"  mlflow.pyfunc.load_model('{result['champion']['uri']}')")
    return 0


def quiet() -> None:
    """No MLflow INFO lines ("Registered model ... Created version ...") and no advice warnings."""
    import logging
    import warnings

    import mlflow  # noqa: F401 - configures its loggers on import; quieten them afterwards

    warnings.filterwarnings("ignore", module=r"mlflow\..*")
    logging.getLogger("mlflow").setLevel(logging.ERROR)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Compare LeeBERT's loss-weight arms with Ray Tune × Optuna sweeps, tracked in MLflow.

    python platform/sweep.py                          # the demo preset (MR, MiniLM, CPU, < 20 min)
    python platform/sweep.py --preset smoke           # seconds: a tiny random model
    python platform/sweep.py --set trials=4 --set train.epochs=3
    python platform/sweep.py --resume                 # continue the newest demo sweep
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python platform/sweep.py --preset smoke

The work is done by the ``sweeps`` package; this script parses arguments and prints.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sweeps.config import OBJECTIVES, field_help, renamed_methods  # noqa: E402
from sweeps.presets import build_config, presets  # noqa: E402
from sweeps.state import INTERRUPTED, SweepInterrupted, resume_config, start_config  # noqa: E402
from trainers.cli import OneLineParser  # noqa: E402
from trainers.errors import EXIT_BAD_INPUT, ConfigError  # noqa: E402


class _Renamed(argparse.Action):
    """An old flag: refused with what it is called now (``--methods`` is ``--arms``)."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"error: {renamed_methods(values, flag=True)}", file=sys.stderr)  # one line, as all bad input
        raise SystemExit(EXIT_BAD_INPUT)


def parser() -> argparse.ArgumentParser:
    keys = "\n".join(
        textwrap.fill(help + ("" if default is None else f" [{default!r}]"), 100, initial_indent=f"  {name:<19} ",
                      subsequent_indent=" " * 22)
        for name, help, default in field_help(presets()))
    p = OneLineParser(
        prog="python platform/sweep.py",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Compare LeeBERT's loss-weight arms (fixed-uniform, fixed-pabee, fixed-last: fixed weights; bilevel, "
            "clo: learned weights): one Ray Tune search per arm "
            "(Optuna TPE, same budget and seeds, ASHA stopping), every trial a real DeepSpeed training, "
            "all tracked in MLflow. The config is a preset, then an optional YAML file, then --set "
            "overrides and the flags below; it is validated before anything starts.", 100),
        epilog=f"presets: {', '.join(presets())} (sweeps/presets/*.yaml)\n\nconfig keys (YAML file or --set KEY=VALUE; "
               f"train.*, space.* and env.* take a dotted key,\ne.g. --set train.train_subset=500; "
               f"[built-in defaults], which the presets override):\n{keys}\n\n"
               "Bad input prints one 'error: ...' line and exits with code 2. See docs/sweeps.md.",
    )
    p.add_argument("--preset", help=f"starting point: {', '.join(presets())} (default: demo)")
    p.add_argument("--config", metavar="FILE", help="YAML file with any config keys (may name a preset)")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                   help="override one key; the value is read as YAML (3, 1e-4, [clo, fixed], null)")
    p.add_argument("--name", help="sweep name (default: <preset>-<date>-<time>); with --resume: the sweep to continue")
    p.add_argument("--arms", type=lambda s: [m.strip() for m in s.split(",") if m.strip()],
                   help="comma-separated arms, e.g. clo,fixed-uniform")
    p.add_argument("--methods", action=_Renamed, help=argparse.SUPPRESS)  # renamed --arms: refused with a hint
    p.add_argument("--trials", type=int, help="trial budget per arm")
    p.add_argument("--objective", choices=sorted(OBJECTIVES), help="validation objective (default: hypervolume)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (http(s)://... or sqlite:///...)")
    p.add_argument("--ray-address", help="Ray cluster address host:6379 or auto (default: $RAY_ADDRESS, else local)")
    p.add_argument("--root", help="folder for sweep folders (default: runs/sweeps)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted sweep (--name, else the newest of the preset) with its saved config")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    own = p.add_argument_group("your own data (the same as --set train.<key>=VALUE; docs/sweeps.md)")
    for flag, help in OWN_DATA_FLAGS.items():
        own.add_argument(f"--{flag}", dest=flag.replace("-", "_"), metavar=flag.split("-")[-1].upper(), help=help)
    own.add_argument("--regression", action="store_true", default=None, help="train.regression: float labels")
    return p


# Flags that set a train.* key; paths are made absolute on this driver (every trial must be able to
# read them: on a cluster, a shared volume or an s3:// URI; docs/cluster.md)
OWN_DATA_FLAGS = {
    "train-file": "train.train_file: CSV, TSV, JSON lines or Parquet (.gz allowed), or a save_to_disk folder",
    "validation-file": "train.validation_file (default: carved from train, stratified)",
    "test-file": "train.test_file (default: carved from train, stratified)",
    "dataset": "train.dataset: a save_to_disk folder or a Hugging Face hub name",
    "text-columns": "train.text_columns: one column, or two comma-separated",
    "label-column": "train.label_column (default: label)",
    "metric": "train.metric: the primary metric (accuracy, macro_f1, f1, matthews, pearson, spearman)",
    "task": "train.task: your task's name (models are registered as leebert-<task>)",
}


def own_data_flags(args: argparse.Namespace) -> dict:
    """The train.* keys set by the own-data flags."""
    values = {flag.replace("-", "_"): getattr(args, flag.replace("-", "_")) for flag in OWN_DATA_FLAGS}
    values["regression"] = args.regression
    return {key: value for key, value in values.items() if value is not None}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill <pid>` stops like Ctrl-C
    flags = {"name": args.name, "arms": args.arms, "trials": args.trials, "objective": args.objective,
             "tracking_uri": args.tracking_uri, "ray_address": args.ray_address, "root": args.root,
             "train": own_data_flags(args) or None}
    try:
        cfg = build_config(preset=args.preset, config_file=args.config, overrides=args.set, flags=flags)
        if args.resume:
            if args.set or args.config or any(flags[k] is not None for k in ("arms", "trials", "objective", "train")):
                print("note: --resume continues the sweep with its saved config; other settings are ignored", file=sys.stderr)
            cfg = resume_config(cfg)
        else:
            cfg = start_config(cfg)
        if args.print_config:
            import yaml

            print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            return 0
        if not (cfg.ray_address or os.environ.get("RAY_ADDRESS")):
            # a private local Ray listens on 127.0.0.1 only; read when ray is imported (sweeps.ray_cluster)
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        from sweeps.runner import run_sweep

        result = run_sweep(cfg, resume=args.resume)  # unreachable MLflow / Ray fail first (its preflight)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (SweepInterrupted, KeyboardInterrupt) as err:
        print(f"\nsweep stopped ({err or 'Ctrl-C'}); continue it with: {python()} platform/sweep.py --resume --name {cfg.name}"
              + (f" --root {cfg.root}" if args.root else ""), file=sys.stderr)
        return INTERRUPTED

    cfg = result.cfg
    print(f"\nDone: sweep '{cfg.name}' in {result.wall_time_s / 60:.1f} min. Best trial per arm "
          f"(chosen on validation {cfg.metric}):\n")
    print(result.table)
    if result.final is not None:
        print(f"Final stage: each best configuration retrained with seeds {', '.join(map(str, cfg.final_seeds))}; "
              f"test, mean ± std over seeds:\n")
        print(result.final.table + "\n")
        if result.final.differences:
            print(f"Paired differences, {cfg.reference_arm} minus each arm, in points with 95% bootstrap intervals "
                  f"(over seeds and test examples):\n")
            print(result.final.differences + "\n")
        for line in result.final.verdicts.values():
            print(f"  {line}")
        print()
    print("\n".join(where_to_look(result, root_flag=bool(args.root))))
    failed = [o.arm for o in result.outcomes if o.best is None]
    if failed:
        print(f"\nwarning: no trial of {', '.join(failed)} finished; see the trial runs in MLflow", file=sys.stderr)
        return 1
    return 0


def python() -> str:
    """This interpreter by its path, so that a printed command runs as printed without an activated
    venv (a bare `python` there lacks torch; a bare `mlflow` is "command not found")."""
    return shlex.quote(sys.executable)


def venv_script(name: str) -> str:
    """A console script installed next to this interpreter (optuna-dashboard), by its path."""
    return shlex.quote(str(Path(sys.executable).parent / name))


def where_to_look(result, root_flag: bool = False) -> list[str]:
    """The closing lines: where the results are, and the commands that open or reuse them."""
    cfg, uri = result.cfg, result.tracking_uri
    lines = ["Where to look:"]
    # the link opens the experiment in the UI's model-training view (not its GenAI view), on its
    # charts: with the parent runs' few metric keys, the frontier section comes first
    view = f"#/experiments/{result.experiment_id}/runs?workflowType=machine_learning&compareRunsMode=CHART"
    if uri.startswith("sqlite:"):
        lines.append(f"  MLflow UI:      {python()} -m mlflow ui --backend-store-uri {uri} --port 5000   "
                     f"(then open http://127.0.0.1:5000/{view})")
    else:
        lines.append(f"  MLflow UI:      {uri.rstrip('/')}/{view}")
    lines.append(f"  experiment:     {cfg.name} (one run per arm, nested trial runs, a 'comparison' run"
                 + (", 'final/<arm>' runs with one child per seed, a 'final-comparison' run)" if result.final is not None
                    else ")"))
    if result.final is not None:
        lines.append(f"  final stage:    {result.final.files['table_md']} (and final_table.csv, verdicts.md, "
                     "final_frontiers.png)")
    if "frontiers_png" in result.files:
        lines.append(f"  frontier plot:  {result.files['frontiers_png']}")
    if "summary_md" in result.files:
        lines.append(f"  summary table:  {result.files['summary_md']} (and summary.csv, trials.csv)")
    if "optuna_journal" in result.files:
        lines.append(f"  Optuna study:   {dashboard_command(result.files['optuna_journal'])}")
    if result.registered:
        from serving.describe import serve_command

        registered = result.registered
        versions = ", ".join(f"{arm}-best = version {entry['version']}"
                             for arm, entry in registered["versions"].items())
        lines.append(f"  models:         {registered['name']}: champion = {registered['champion']['arm']} "
                     f"(version {registered['champion']['version']}); {versions}")
        lines.append(f"                  mlflow.pyfunc.load_model('{registered['champion']['uri']}')")
        lines.append(f"  serve:          {serve_command(registered)}")
        lines.append(f"  re-register:    {python()} platform/register.py --sweep {cfg.name}"
                     + (f" --root {cfg.root}" if root_flag else "") + " --target-speedup X  (or --max-drop D)")
    return lines


def dashboard_command(journal, installed: bool | None = None) -> str:
    """The command that opens the Optuna studies (a journal file: optuna-dashboard reads a file path
    as one); optuna-dashboard comes with the `dashboard` extra."""
    import importlib.util

    command = f"{venv_script('optuna-dashboard')} {journal}"
    if installed is None:
        installed = importlib.util.find_spec("optuna_dashboard") is not None
    return command if installed else f"{python()} -m pip install -e '.[dashboard]' && {command}"


if __name__ == "__main__":
    sys.exit(main())

"""The studies behind docs/results.md: CLO against every baseline, tuned and seed-replicated, on MR and on SNLI.

    python benchmarks/study.py                          # the MR study (preset mr-study): start it, or continue it
    python benchmarks/study.py --preset snli-study      # the SNLI study, beside it
    python benchmarks/study.py --results /tmp/results.md --set budget_epochs=2 --name small   # a smaller one

Each study runs ``platform/sweep.py``'s whole pipeline with its preset (sweeps/presets/mr-study.yaml,
sweeps/presets/snli-study.yaml): a search per arm under one compute budget, then each arm's best
configuration (chosen on validation) retrained with 3 seeds and compared on the same test examples
with paired bootstrap intervals. Every finished trial and seed is kept, so an interrupted study
(Ctrl-C, a closed session) continues from there when the command is run again; the wall time of
every invocation, its command line and the commit it ran from are added to the study's time file
(``<root>/<name>/study_time.json``) and reported.

It ends by writing the study's own section of docs/results.md, between ``<!-- study:<name> ... -->``
and ``<!-- /study:<name> -->``: the budget, what each arm's search used and chose, the final table,
the intervals and verdicts, the learned weights of bilevel and clo over training, and the study's
wall time and invocations; its plots are ``results-<name>-frontiers.png`` and
``results-<name>-weights.png`` beside the document. Other studies' sections stay as they are, byte
for byte; a missing section is appended; the document's head (title, newest date, what the studies
are) is rewritten. A paragraph between ``<!-- keep:KEY -->`` and ``<!-- /keep:KEY -->`` that no
longer holds the word PLACEHOLDER was written by hand, and is kept when the section is rewritten.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a private local Ray on 127.0.0.1
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sweeps.presets import build_config  # noqa: E402
from sweeps.state import STATE_FILE, SweepInterrupted, resume_config, start_config  # noqa: E402
from trainers.errors import ConfigError  # noqa: E402

# The parts: the time file, the document's bookkeeping, what a section says (their names are here too).
from benchmarks.study_clock import TIME_FILE, InvocationClock, checkout_commit, command_line  # noqa: E402
from benchmarks.study_document import PLACEHOLDER, write_section  # noqa: E402
from benchmarks.study_sections import CHANGES, pending_section, section_markdown  # noqa: E402

STUDIES = ("mr-study", "snli-study")  # the study presets (sweeps/presets/<name>.yaml)
__all__ = ["main", "STUDIES", "TIME_FILE", "InvocationClock", "PLACEHOLDER", "write_section", "CHANGES",
           "pending_section", "section_markdown"]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="mr-study", choices=STUDIES, help="the study to run (default: mr-study)")
    p.add_argument("--name", default=None, help="the study's sweep name, also its section of the results "
                                                "(default: the preset's name)")
    p.add_argument("--root", default=str(REPO / "runs" / "study"), help="folder of the studies' sweeps")
    p.add_argument("--results", default=str(REPO / "docs" / "results.md"), help="the markdown file to write")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                   help="sweep config override for a new study (ignored when continuing one)")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    invocation = {"command": command_line(), "commit": checkout_commit()}
    cfg = build_config(preset=args.preset, overrides=args.set,
                       flags={"name": args.name or args.preset, "root": args.root})
    resume = (cfg.sweep_dir / STATE_FILE).is_file()
    cfg = resume_config(cfg) if resume else start_config(cfg)
    print(f"[study] {'continuing' if resume else 'starting'} the study '{cfg.name}' ({cfg.preset}) in {cfg.sweep_dir}",
          flush=True)
    from sweeps.runner import run_sweep

    clock = InvocationClock(cfg.sweep_dir, time.time(), invocation)  # on disk at once, kept current
    try:
        result = run_sweep(cfg, resume=resume)
    except (SweepInterrupted, KeyboardInterrupt) as err:
        clock.stop(finished=False)
        print(f"[study] stopped ({err or 'Ctrl-C'}); run the same command again to continue", file=sys.stderr)
        return 130
    except ConfigError as err:  # refused before any work: no trace of this invocation
        clock.discard()
        print(f"error: {err}", file=sys.stderr)
        return 2
    total = clock.stop(finished=True)
    if result.final is None:
        print("error: the study has no final stage (final_seeds is empty); nothing to write", file=sys.stderr)
        return 2
    path = Path(args.results)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = section_markdown(result, total, path)
    write_section(path, cfg.name, body, measured=time.strftime("%Y-%m-%d"))
    print(f"[study] wrote the section '{cfg.name}' of {args.results}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

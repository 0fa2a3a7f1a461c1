"""Write an example of "your own data" from the data the package ships, to try the own-data path
from a fresh clone (README, "Your own data"):

    python -m trainers.example_data runs/reviews.csv            # MR as a CSV: review, sentiment (negative/positive)
    python -m trainers.example_data runs/nli.jsonl --task snli  # SNLI as JSON lines: premise, hypothesis, gold (3 classes)

The labels are written as words, as users usually have them; train, validation and test all go
into the one file (the trainer carves validation and test from it).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import sys
from pathlib import Path

from trainers.errors import EXIT_BAD_INPUT
from trainers.tasks import EMBEDDED_DIR, get_task


def write_example(out: Path, task: str = "mr", rows: int | None = None) -> int:
    """Write the shipped ``task``'s train split to ``out`` with word labels; returns the row count."""
    names = get_task(task).label_names
    out.parent.mkdir(parents=True, exist_ok=True)
    if task == "mr":
        lines = gzip.open(EMBEDDED_DIR / "mr" / "train.tsv.gz", "rt", encoding="utf-8").read().splitlines()[1:]
        records = [line.split("\t") for line in lines][:rows]
        with open(out, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["review", "sentiment"])
            writer.writerows((sentence, names[int(label)]) for _, label, sentence in records)
        return len(records)
    lines = gzip.open(EMBEDDED_DIR / "snli" / "train.jsonl.gz", "rt", encoding="utf-8").read().splitlines()[:rows]
    with open(out, "w", encoding="utf-8") as f:
        for line in lines:
            record = json.loads(line)
            f.write(json.dumps({"premise": record["premise"], "hypothesis": record["hypothesis"],
                                "gold": names[record["label"]]}) + "\n")
    return len(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainers.example_data", description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="the file to write (.csv for mr, .jsonl for snli)")
    p.add_argument("--task", choices=("mr", "snli"), default="mr")
    p.add_argument("--rows", type=int, help="only the first N rows")
    args = p.parse_args(argv)
    if args.rows is not None and args.rows < 1:
        print(f"error: --rows must be >= 1 (got {args.rows})", file=sys.stderr)
        return EXIT_BAD_INPUT
    count = write_example(Path(args.out), args.task, args.rows)
    print(f"wrote {count} rows to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

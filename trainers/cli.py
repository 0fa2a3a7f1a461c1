"""The trainer's command line: one flag per ``TrainConfig`` field, and bad flags as one error line."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from trainers.config import DEVICES, METHODS, PRECISIONS, TrainConfig, load_config_file


def _optional(kind):
    def parse(text: str):
        return None if text.lower() in ("none", "null") else kind(text)

    parse.__name__ = kind.__name__
    return parse


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a malformed flag is one ``error: ...`` line and exit code 2, as every other bad input."""

    def error(self, message: str):
        print(f"error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def field_choices() -> dict[str, tuple[str, ...]]:
    """The values each choice field takes, for --help (validate checks them)."""
    from trainers.config import FIXED_SCHEMES, KD_TEACHERS, LOSS_REDUCTIONS, PARAMETRIZATIONS
    from trainers.pareto import HYPERVOLUME_AXES
    from trainers.tasks import TASKS

    return {"task": tuple(sorted(TASKS)), "method": METHODS, "scheme": tuple(FIXED_SCHEMES),
            "kd": ("auto", *KD_TEACHERS), "weight_param": tuple(PARAMETRIZATIONS), "loss_reduction": tuple(LOSS_REDUCTIONS),
            "hypervolume_axis": tuple(HYPERVOLUME_AXES), "pooling": ("auto", "cls", "mean"), "precision": PRECISIONS,
            "device": DEVICES, "hypergradient_passes": ("auto", "fp32"), "attn_implementation": ("sdpa", "eager"),
            "zero_stage": ("0", "1", "2")}


PATH_FIELDS = {"data_dir": "DIR", "output_dir": "DIR", "deepspeed_config": "FILE", "model": "NAME|DIR",
               "train_file": "FILE", "validation_file": "FILE", "test_file": "FILE", "dataset": "DIR|NAME",
               "dataset_config": "NAME", "text_columns": "COLUMN[,COLUMN]", "label_column": "COLUMN",
               "task": "NAME", "metric": "NAME"}


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per config field, e.g. ``--head-lr 1e-3``; defaults come from the dataclass. A field
    whose help names its default already gets no second one; a choice field shows its choices."""
    hints = {"str": str, "int": int, "float": float}
    choices = field_choices()
    for f in dataclasses.fields(TrainConfig):
        type_text = str(f.type).replace(" | None", "")
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata["help"]
        if "default" not in help_text:
            help_text += f" (default: {'null' if f.default is None else f.default})"
        if type_text == "bool":  # --resume / --no-resume
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=help_text)
            continue
        kind = hints[type_text]
        if "None" in str(f.type):
            kind = _optional(kind)
        metavar = "{" + ",".join(choices[f.name]) + "}" if f.name in choices else PATH_FIELDS.get(f.name, type_text.upper())
        parser.add_argument(flag, dest=f.name, type=kind, default=argparse.SUPPRESS, metavar=metavar, help=help_text)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(load_config_file(args.config))
    values.update({name: getattr(args, name) for name in TrainConfig.field_names() if hasattr(args, name)})
    return TrainConfig.from_dict(values).validate()

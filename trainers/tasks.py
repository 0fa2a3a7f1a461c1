"""The task registry: which text-classification tasks exist, what they look like, where their data is.

Two kinds of tasks:

* embedded (``mr``, ``snli``): real data shipped inside the package (``task_data/``, see
  ``task_data/PROVENANCE.md``).
* GLUE: read from the Hugging Face hub (``nyu-mll/glue``) or from local files.

Local files may use the Hugging Face column names or the names of the original GLUE
distribution (``#1 String``, ``gold_label``, ``score``, string labels such as ``entailment``,
CoLA's header-less TSVs): ``TASK_FORMATS`` says which, per task.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from trainers.errors import ConfigError

EMBEDDED_DIR = Path(__file__).parent / "task_data"
GLUE_HUB_NAME = "nyu-mll/glue"


@dataclass(frozen=True)
class TaskSpec:
    name: str  # "mr", "snli", "sst2", "mnli", ...
    text_fields: tuple[str, ...]  # canonical column names: ("sentence",) or a pair
    num_labels: int  # 1 for regression (stsb)
    is_regression: bool
    metrics: tuple[str, ...]  # first is the primary one: accuracy, f1, matthews, pearson, spearman
    source: str  # "embedded" (shipped in the package) or "glue"


def _task(name, text_fields, num_labels, metrics, source="glue"):
    return TaskSpec(name, tuple(text_fields), num_labels, num_labels == 1, tuple(metrics), source)


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        _task("mr", ["sentence"], 2, ["accuracy"], source="embedded"),
        _task("snli", ["premise", "hypothesis"], 3, ["accuracy"], source="embedded"),
        _task("cola", ["sentence"], 2, ["matthews"]),
        _task("sst2", ["sentence"], 2, ["accuracy"]),
        _task("mrpc", ["sentence1", "sentence2"], 2, ["f1", "accuracy"]),
        _task("qqp", ["question1", "question2"], 2, ["accuracy", "f1"]),
        _task("stsb", ["sentence1", "sentence2"], 1, ["pearson", "spearman"]),
        _task("mnli", ["premise", "hypothesis"], 3, ["accuracy"]),
        _task("mnli_mismatched", ["premise", "hypothesis"], 3, ["accuracy"]),
        _task("qnli", ["question", "sentence"], 2, ["accuracy"]),
        _task("rte", ["sentence1", "sentence2"], 2, ["accuracy"]),
        _task("wnli", ["sentence1", "sentence2"], 2, ["accuracy"]),
    )
}


def get_task(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}") from None


@dataclass(frozen=True)
class FileFormat:
    """How a task's files may name columns and labels beyond the canonical (Hugging Face) names."""

    column_aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    label_names: Mapping[str, int] = field(default_factory=dict)  # lower-case string label -> id
    headerless_columns: tuple[str, ...] = ()  # column names for a TSV without a header row


_NLI3 = {"entailment": 0, "neutral": 1, "contradiction": 2}  # MNLI/HF label order
_NLI2 = {"entailment": 0, "not_entailment": 1}
_MNLI_FORMAT = FileFormat({"premise": ("sentence1",), "hypothesis": ("sentence2",), "label": ("gold_label",)}, _NLI3)

TASK_FORMATS: dict[str, FileFormat] = {
    "mr": FileFormat(),
    "snli": FileFormat(label_names=_NLI3),
    # The original CoLA TSVs have no header: source, label, original label (or blank), sentence.
    "cola": FileFormat(headerless_columns=("source", "label", "original_label", "sentence")),
    "sst2": FileFormat(),
    "mrpc": FileFormat({"sentence1": ("#1 String",), "sentence2": ("#2 String",), "label": ("Quality",)}),
    "qqp": FileFormat({"label": ("is_duplicate",)}),
    "stsb": FileFormat({"label": ("score",)}),
    "mnli": _MNLI_FORMAT,
    "mnli_mismatched": _MNLI_FORMAT,
    "qnli": FileFormat(label_names=_NLI2),
    "rte": FileFormat(label_names=_NLI2),
    "wnli": FileFormat(),
}


@dataclass(frozen=True)
class GlueSource:
    config: str  # the hub config name, also the (normalized) name of a per-task sub-folder
    hub_test_split: str  # the GLUE dev split that serves as our test set
    test_stems: tuple[str, ...]  # local file names (without extension) of that dev split


GLUE_SOURCES: dict[str, GlueSource] = {
    name: GlueSource(name, "validation", ("validation", "dev"))
    for name in ("cola", "sst2", "mrpc", "qqp", "stsb", "qnli", "rte", "wnli")
}
GLUE_SOURCES["mnli"] = GlueSource("mnli", "validation_matched", ("validation_matched", "dev_matched"))
GLUE_SOURCES["mnli_mismatched"] = GlueSource("mnli", "validation_mismatched", ("validation_mismatched", "dev_mismatched"))

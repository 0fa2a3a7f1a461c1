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

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

from trainers.errors import ConfigError

# the metric names a task may be scored by (trainers.metrics computes them; named here without torch)
CLASSIFICATION_METRICS = ("accuracy", "macro_f1", "f1", "matthews")
REGRESSION_METRICS = ("pearson", "spearman")
METRICS = CLASSIFICATION_METRICS + REGRESSION_METRICS

EMBEDDED_DIR = Path(__file__).parent / "task_data"
GLUE_HUB_NAME = "nyu-mll/glue"


@dataclass(frozen=True)
class TaskSpec:
    name: str  # "mr", "snli", "sst2", "mnli", ...
    text_fields: tuple[str, ...]  # canonical column names: ("sentence",) or a pair
    num_labels: int  # 1 for regression (stsb)
    is_regression: bool
    metrics: tuple[str, ...]  # first is the primary one: accuracy, macro_f1, f1, matthews, pearson, spearman
    source: str  # "embedded" (shipped in the package), "glue", or "own" (the user's files or data set)
    label_names: tuple[str, ...] = ()  # class names in label-id order (id2label); () for regression

    def with_primary_metric(self, metric: str | None) -> "TaskSpec":
        """This task scored first by ``metric`` (``--metric``): the metric the frontier and the
        hypervolume use; the task's other metrics stay beside it."""
        if metric is None or metric == self.metrics[0]:
            return self
        allowed = REGRESSION_METRICS if self.is_regression else CLASSIFICATION_METRICS
        if metric not in allowed:
            kind = "a regression" if self.is_regression else "a classification"
            raise ConfigError(f"metric '{metric}' does not apply to {kind} task ('{self.name}'); choose one of: "
                              f"{', '.join(allowed)}")
        if metric == "f1" and self.num_labels > 2:
            raise ConfigError(f"metric 'f1' is binary F1 but task '{self.name}' has {self.num_labels} classes; "
                              "use macro_f1 for several classes")
        return replace(self, metrics=(metric,) + tuple(m for m in self.metrics if m != metric))

    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.label_names))


def _task(name, text_fields, num_labels, metrics, source="glue", labels=()):
    return TaskSpec(name, tuple(text_fields), num_labels, num_labels == 1, tuple(metrics), source, tuple(labels))


_SENTIMENT = ("negative", "positive")
_NLI3_NAMES = ("entailment", "neutral", "contradiction")  # MNLI/HF label order
_NLI2_NAMES = ("entailment", "not_entailment")


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        _task("mr", ["sentence"], 2, ["accuracy"], source="embedded", labels=_SENTIMENT),
        _task("snli", ["premise", "hypothesis"], 3, ["accuracy"], source="embedded", labels=_NLI3_NAMES),
        _task("cola", ["sentence"], 2, ["matthews"], labels=("unacceptable", "acceptable")),
        _task("sst2", ["sentence"], 2, ["accuracy"], labels=_SENTIMENT),
        _task("mrpc", ["sentence1", "sentence2"], 2, ["f1", "accuracy"], labels=("not_equivalent", "equivalent")),
        _task("qqp", ["question1", "question2"], 2, ["accuracy", "f1"], labels=("not_duplicate", "duplicate")),
        _task("stsb", ["sentence1", "sentence2"], 1, ["pearson", "spearman"]),
        _task("mnli", ["premise", "hypothesis"], 3, ["accuracy"], labels=_NLI3_NAMES),
        _task("mnli_mismatched", ["premise", "hypothesis"], 3, ["accuracy"], labels=_NLI3_NAMES),
        _task("qnli", ["question", "sentence"], 2, ["accuracy"], labels=_NLI2_NAMES),
        _task("rte", ["sentence1", "sentence2"], 2, ["accuracy"], labels=_NLI2_NAMES),
        _task("wnli", ["sentence1", "sentence2"], 2, ["accuracy"], labels=("not_entailment", "entailment")),
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


_NLI3 = {name: i for i, name in enumerate(_NLI3_NAMES)}
_NLI2 = {name: i for i, name in enumerate(_NLI2_NAMES)}
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

"""Data layer: text-classification tasks, tokenized splits, the D1/D2 halves and the samplers.

Three kinds of tasks:

* embedded (``mr``, ``snli``): real data shipped inside the package (``task_data/``, see
  ``task_data/PROVENANCE.md``), so everything runs with no network. train/validation/test are
  the shipped files.
* GLUE: read from the Hugging Face hub (``nyu-mll/glue``) or from local files in ``data_dir``.
  GLUE test labels are hidden, so the GLUE dev set is our ``test`` and a seeded, stratified
  ``validation_fraction`` slice of GLUE train is our ``validation`` (removed from train).
* your own (``own``): files or a ``datasets`` data set with named text and label columns
  (``trainers.own_data``); a missing validation or test split is carved from train, stratified.

Per split, the parts, one concept each (their public names are importable from here too):

* ``trainers.tasks``       the task registry (``TaskSpec``, ``TASKS``, ``get_task``), each task's
  file format and GLUE source;
* ``trainers.data_files``  reading a split's files (TSV/CSV/JSON lines/JSON/Parquet) into rows;
* ``trainers.batches``     tokenized ``Split``s (ids ``split_code * ID_STRIDE + source row number``, so
  predictions trace back to a file row) and their batches (``collate``, ``eval_batches``);
* ``trainers.sampling``    seeded stratified subsets, the D1/D2 halves, the training sampler. Every
  random choice derives its seed from ``seed`` and its purpose (``trainers.seeding.derive_seed``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from trainers.batches import ID_STRIDE, SPLIT_CODES, Split, collate, eval_batches, labels_tensor, tokenize
from trainers.data_files import Rows, existing_dir, find_split_files, frame_to_rows, normalize_name, read_rows
from trainers.errors import ConfigError
from trainers.own_data import OwnData, check_carvable, load_own_task
from trainers.sampling import batch_indices, stratified_halves, stratified_subset
from trainers.seeding import derive_seed
from trainers.tasks import EMBEDDED_DIR, GLUE_HUB_NAME, GLUE_SOURCES, TASKS, GlueSource, TaskSpec, get_task

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

__all__ = ["TASKS", "TaskSpec", "get_task", "EMBEDDED_DIR", "TaskData", "Split", "SPLIT_CODES", "ID_STRIDE",
           "load_task_data", "collate", "eval_batches", "batch_indices", "derive_seed", "stratified_subset",
           "stratified_halves", "synthetic_task_data"]


@dataclass
class TaskData:
    task: TaskSpec
    train: Split  # D: the training data (after the optional subset)
    d1: torch.Tensor  # long indices into train: half D1
    d2: torch.Tensor  # long indices into train: half D2 (disjoint, d1 ∪ d2 = train)
    validation: Split
    test: Split
    pad_token_id: int
    notes: list[str] = field(default_factory=list)  # what loading did that a user should know (carved splits)


# ------------------------------------------------------------------------------------- loading
def load_task_data(
    task: str | TaskSpec,
    tokenizer,
    *,
    data_dir: str | None = None,
    max_length: int = 128,
    train_subset: int | None = None,
    eval_subset: int | None = None,
    seed: int = 42,
    validation_fraction: float = 0.1,
    own: OwnData | None = None,
    test_fraction: float = 0.1,
    metric: str | None = None,
) -> TaskData:
    """Load, split, subset and tokenize a task.

    ``data_dir`` overrides where the files come from: for GLUE tasks a folder with
    ``train.*`` and ``validation.*``/``dev.*`` files (or a GLUE root with one sub-folder per
    task); for embedded tasks a folder with ``train.*``, ``validation.*`` and ``test.*``.
    ``own``: the user's own task instead (``trainers.own_data``; ``task`` is then its name); its
    missing validation/test splits are carved from train (``validation_fraction``, ``test_fraction``).
    ``metric``: the primary metric, in place of the task's first.
    """
    notes: list[str] = []
    if own is None:
        spec = task if isinstance(task, TaskSpec) else get_task(task)
    _check_options(own.name if own else spec.name, "own" if own else spec.source, max_length, train_subset,
                   eval_subset, validation_fraction)
    pad_token_id = getattr(tokenizer, "pad_token_id", None)
    if pad_token_id is None:
        raise ConfigError("the tokenizer has no pad token; set tokenizer.pad_token (e.g. to its eos or unk token)")

    if own is not None:
        spec, rows, notes = _load_own(own, validation_fraction, test_fraction, seed)
    elif spec.source == "embedded":
        rows = _load_embedded(spec, data_dir)
    else:
        rows = _load_glue(spec, data_dir)
        rows["train"], rows["validation"] = _carve_validation(spec, rows["train"], validation_fraction, seed)
    spec = spec.with_primary_metric(metric)

    # Subset before tokenizing: quick runs on big tasks then do not pay for the whole file.
    if train_subset is not None:
        rows["train"] = _subset(spec, rows["train"], train_subset, derive_seed(seed, "train_subset"))
    if eval_subset is not None:
        for name in ("validation", "test"):
            rows[name] = _subset(spec, rows[name], eval_subset, derive_seed(seed, "eval_subset", name))
    for name, split_rows in rows.items():
        if len(split_rows) == 0:  # defensive: read_rows already rejects files without labelled rows
            raise ConfigError(f"the {name} split of task '{spec.name}' is empty; check the data files")

    splits = {name: tokenize(name, spec, split_rows, tokenizer, max_length) for name, split_rows in rows.items()}
    d1, d2 = stratified_halves(splits["train"].labels, seed, spec.is_regression)
    return TaskData(spec, splits["train"], d1, d2, splits["validation"], splits["test"], int(pad_token_id), notes)


def _check_options(name, source, max_length, train_subset, eval_subset, validation_fraction) -> None:
    known = {"glue": name in GLUE_SOURCES, "embedded": (EMBEDDED_DIR / name).is_dir(), "own": True}.get(source, False)
    if not known:
        raise ConfigError(
            f"no loader for task {name!r} (source {source!r}); choose one of: {', '.join(TASKS)}, or give "
            "your own data (--train-file or --dataset)"
        )
    if not isinstance(max_length, int) or max_length <= 0:
        raise ConfigError(f"max_length must be a positive number of tokens (got {max_length}); e.g. 128")
    for name, value in (("train_subset", train_subset), ("eval_subset", eval_subset)):
        if value is not None and value <= 0:
            raise ConfigError(f"{name} must be > 0 (got {value}); leave it unset to use all examples")
    if source in ("glue", "own") and not 0 < validation_fraction < 1:
        raise ConfigError(
            f"validation_fraction must be between 0 and 1 (got {validation_fraction}); "
            "it is the share of GLUE train held out as validation, e.g. 0.1"
        )


def _load_own(own: OwnData, validation_fraction: float, test_fraction: float,
              seed: int) -> tuple[TaskSpec, dict[str, Rows], list[str]]:
    """The user's task, every split present: a missing one carved from train (test first, then
    validation from what is left), stratified, with a note saying so."""
    loaded = load_own_task(own)
    spec, rows = loaded.spec, loaded.rows
    carving = [split for split in ("validation", "test") if split not in rows]
    check_carvable(spec, rows["train"], loaded.origins["train"], carving)
    notes = []
    for split in reversed(carving):
        fraction = test_fraction if split == "test" else validation_fraction
        before = len(rows["train"])
        rows["train"], rows[split] = _carve_validation(spec, rows["train"], fraction, seed, purpose=split)
        notes.append(f"no {split} split given: carved {len(rows[split])} of {before} train examples "
                     f"({fraction:g}, stratified by {'label quantile' if spec.is_regression else 'class'}, seed {seed})")
    return spec, rows, notes


def _load_embedded(spec: TaskSpec, data_dir: str | None) -> dict[str, Rows]:
    folder = existing_dir(data_dir) if data_dir is not None else EMBEDDED_DIR / spec.name
    stems = {"train": ("train",), "validation": ("validation", "dev"), "test": ("test",)}
    return {name: read_rows(spec, find_split_files(spec, [folder], name, names)) for name, names in stems.items()}


def _load_glue(spec: TaskSpec, data_dir: str | None) -> dict[str, Rows]:
    """Return {"train": GLUE train, "test": GLUE dev}; validation is carved from train later."""
    source = GLUE_SOURCES[spec.name]
    if data_dir is None:
        frames = _load_glue_hub(spec, source)
        origin = f"{GLUE_HUB_NAME}/{source.config}"
        return {name: frame_to_rows(spec, frame, f"{origin} {name}") for name, frame in frames.items()}
    root = existing_dir(data_dir)
    # Also accept a GLUE root with one folder per task ("SST-2", "sst2", "STS-B", "MNLI", ...).
    folders = [root] + sorted(p for p in root.iterdir() if p.is_dir() and normalize_name(p.name) == source.config)
    return {
        "train": read_rows(spec, find_split_files(spec, folders, "train", ("train",))),
        "test": read_rows(spec, find_split_files(spec, folders, "test", source.test_stems)),
    }


def _load_glue_hub(spec: TaskSpec, source: GlueSource) -> dict[str, pd.DataFrame]:
    try:
        import datasets

        dataset = datasets.load_dataset(GLUE_HUB_NAME, source.config)
        return {"train": dataset["train"].to_pandas(), "test": dataset[source.hub_test_split].to_pandas()}
    except Exception as exc:  # no network, offline mode, missing cache, ...: all mean the same to the user
        raise ConfigError(
            f"could not load GLUE '{source.config}' for task '{spec.name}' from the Hugging Face hub "
            f"({type(exc).__name__}: {str(exc)[:300]}); the hub is probably unreachable from here. Download the GLUE "
            "files once elsewhere and pass --data-dir DIR, a folder with train.tsv and dev.tsv "
            "(or train/validation .csv/.jsonl/.json/.parquet)"
        ) from exc


# --------------------------------------------------------------------------------- subsetting
def _carve_validation(spec: TaskSpec, train: Rows, fraction: float, seed: int,
                      purpose: str = "validation") -> tuple[Rows, Rows]:
    """Hold out a stratified share of train (GLUE's, or an own task's) as ``purpose`` (validation
    or test); both keep their source row numbers."""
    if len(train) < 2:
        raise ConfigError(
            f"task '{spec.name}' has {len(train)} training rows; at least 2 are needed to hold out a {purpose} set"
        )
    n_val = min(max(round(fraction * len(train)), 1), len(train) - 1)
    labels = labels_tensor(spec, train.labels)
    val_idx = stratified_subset(labels, n_val, derive_seed(seed, purpose), spec.is_regression)
    in_val = torch.zeros(len(train), dtype=torch.bool)
    in_val[val_idx] = True
    return train.take(torch.nonzero(~in_val).squeeze(1)), train.take(val_idx)


def _subset(spec: TaskSpec, rows: Rows, n: int, seed: int) -> Rows:
    if n >= len(rows):
        return rows
    return rows.take(stratified_subset(labels_tensor(spec, rows.labels), n, seed, spec.is_regression))


# ---------------------------------------------------------------------------------- synthetic
def synthetic_task_data(num_train: int, num_eval: int, vocab_size: int, max_length: int, num_labels: int = 2,
                        seed: int = 0) -> TaskData:
    """A learnable random task with no download: token ids of random lengths, the label a function of
    the first token. For hardware checks (benchmarks/gpu_check.py), where no tokenizer or data set is at hand."""
    gen = torch.Generator().manual_seed(seed)
    task = TaskSpec("synthetic", ("sentence",), num_labels, False, ("accuracy",), "synthetic")

    def split(name: str, code: int, n: int) -> Split:
        lengths = torch.randint(max(4, max_length // 4), max_length + 1, (n,), generator=gen).tolist()
        ids = [torch.randint(5, vocab_size, (length,), generator=gen).tolist() for length in lengths]
        labels = torch.tensor([row[0] * num_labels // vocab_size for row in ids], dtype=torch.long)
        return Split(name, ids, [[0] * len(row) for row in ids], labels, torch.arange(n) + code * ID_STRIDE)

    train = split("train", 0, num_train)
    order = torch.randperm(num_train, generator=gen)
    return TaskData(task, train, order[: num_train // 2], order[num_train // 2:], split("validation", 1, num_eval),
                    split("test", 2, num_eval), pad_token_id=0)

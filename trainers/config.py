"""The typed training config: one dataclass, validated once at the edge.

A config comes from defaults, then an optional YAML/JSON file, then command-line flags
(``trainers.cli``). Every field has a help text, which is what ``python -m trainers.train --help``
prints. Every value is type-checked against its field when the config is built (``typed_value``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainers.errors import ConfigError

METHODS = ("fixed", "bilevel", "clo")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16", "auto")
# the loss's options (trainers.objective uses them; defined here so that validating needs no torch)
KD_TEACHERS = ("all", "later", "last", "none")
PARAMETRIZATIONS = ("softmax", "sigmoid")
LOSS_REDUCTIONS = ("mean", "sum")
FIXED_SCHEMES = ("uniform", "pabee", "last")
# x86 instruction sets with native bf16 dot products (Cooper Lake / Zen 4 and later; Sapphire Rapids' AMX).
# Without one, CPU bf16 autocast is emulated and can be slower than fp32.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def _f(default, help: str, **meta):
    return field(default=default, metadata={"help": help, **meta})


@dataclass
class TrainConfig:
    # data
    task: str | None = _f(None, "task: mr, snli (embedded, offline) or a GLUE task (cola, sst2, mrpc, qqp, stsb, mnli, mnli_mismatched, "
                                "qnli, rte, wnli); with your own data (--train-file or --dataset) a name of your choice (default "
                                "'own'); otherwise the default is mr")
    train_file: str | None = _f(None, "your own task: the training file (CSV, TSV, JSON lines or Parquet, .gz allowed; a local "
                                      "path, made absolute, or a URI such as s3://... that every trial can read; or a folder "
                                      "written by datasets' save_to_disk)")
    validation_file: str | None = _f(None, "your own task: the validation file (default: carved from train, stratified, "
                                           "validation_fraction of it)")
    test_file: str | None = _f(None, "your own task: the test file (default: carved from train, stratified, test_fraction of it)")
    dataset: str | None = _f(None, "your own task from a data set: a folder written by datasets' save_to_disk, or a Hugging Face "
                                   "hub name (needs the network); its train/validation/test splits are used, missing ones carved")
    dataset_config: str | None = _f(None, "the hub data set's configuration name (e.g. sst2 for glue)")
    text_columns: str | None = _f(None, "your own task: the text column, or two comma-separated for sentence pairs (default: "
                                        "text, sentence, sentence1,sentence2 or premise,hypothesis, whichever the data has)")
    label_column: str = _f("label", "your own task: the label column (strings or integers: any number of classes; floats with --regression)")
    regression: bool = _f(False, "your own task: the labels are numbers to predict (one output; metrics pearson, spearman)")
    metric: str | None = _f(None, "the primary metric, which the frontier and the hypervolume use: accuracy, macro_f1, f1 (binary), "
                                  "matthews, or pearson/spearman for regression (default: the task's: accuracy for your own "
                                  "classification tasks, with macro_f1 reported beside it; pearson for regression)")
    test_fraction: float = _f(0.1, "your own task without a test split: share of train carved out as test, stratified")
    data_dir: str | None = _f(None, "local folder with GLUE-layout files (train.tsv, dev.tsv, ...); default: the hub for GLUE, the package for mr/snli")
    max_length: int = _f(128, "max tokens per example (batches are padded only to their longest example)")
    train_subset: int | None = _f(None, "train on a stratified sample of this many examples (quick runs)")
    eval_subset: int | None = _f(None, "evaluate on a stratified sample of this many validation/test examples")
    validation_fraction: float = _f(0.1, "GLUE and your own task without a validation split: share of train held out as "
                                         "validation (GLUE dev is the test set)")
    # model
    model: str = _f("minilm", "'minilm' (embedded all-MiniLM-L6-v2), 'tiny-random' (a 3-layer random "
                                 "BERT for smoke runs), a local model folder, or a hub name such as bert-base-uncased")
    pooling: str = _f("auto", "exit pooling: cls, mean, or auto (mean for sentence-embedding models like MiniLM, else cls)")
    attn_implementation: str = _f("sdpa", "attention kernel: sdpa or eager")
    dropout: float | None = _f(None, "dropout of the backbone (hidden and attention) and the exit heads (default: the model's own, 0.1 for BERT)")
    # objective
    method: str = _f("fixed", "loss-weight method: fixed (constant weights), bilevel (DARTS), clo (LeeBERT cross-level)")
    scheme: str = _f("uniform", "fixed weights: uniform, pabee (Σ j·L_j/Σ j, no KD) or last (KD from the last exit)")
    kd: str = _f("auto", "KD teachers T(m): all, later, last, none, or auto (all; none for scheme pabee; last for scheme last)")
    temperature: float = _f(1.0, "KD temperature τ")
    loss_reduction: str = _f("mean", "mean: L = Σ w·ℓ / n, the weighted mean of the n loss terms with weights of mean 1, for every method "
                                     "(docs/method.md, 'Loss scale'); sum: Σ w·ℓ, the convention before 2026-11")
    weight_param: str = _f("softmax", "loss-weight parametrization: softmax (w = n·softmax(φ)) or sigmoid (w = 2·sigmoid(φ))")
    # inner optimization (θ)
    epochs: int = _f(2, "training epochs (one epoch = |train| / batch_size steps for every method)")
    batch_size: int = _f(32, "global training batch size")
    lr: float = _f(5e-5, "inner learning rate of the backbone")
    head_lr: float | None = _f(1e-3, "inner learning rate of the exit heads (default 1e-3; null = same as lr)")
    weight_decay: float = _f(0.01, "AdamW weight decay")
    warmup_ratio: float = _f(0.1, "linear warm-up share of all steps, then linear decay to 0")
    max_grad_norm: float = _f(1.0, "gradient clipping norm (0 = off)")
    # outer optimization (φ)
    lr_outer: float = _f(0.05, "outer learning rate (Adam on the loss-weight logits φ)")
    outer_every: int = _f(10, "update the loss weights every N steps")
    xi: float | None = _f(None, "virtual-step size ξ (default: each parameter group's current inner learning rate)")
    fd_eps: float = _f(0.01, "finite-difference step: ε = fd_eps / ‖v‖")
    hypergradient_passes: str = _f("auto", "precision of the hypergradient's gradient passes g and v: auto (as θ's steps: bf16 "
                                           "autocast under --precision bf16; cosine >= 0.99 to fp32 measured, docs/method.md) or "
                                           "fp32; the finite-difference sides are always fp32")
    weight_log_every: int = _f(50, "log the loss weights every N steps")
    # engine
    zero_stage: int = _f(0, "DeepSpeed ZeRO stage (0, 1 or 2)")
    device: str = _f("auto", "where to train: auto (CUDA if torch sees a GPU, else the CPU), cpu, or cuda (fails at once, "
                             "exit 2, if CUDA does not work: never trains on the CPU by accident)")
    precision: str = _f("fp32", "fp32, bf16 (autocast with fp32 master weights; for GPUs with bf16 and CPUs with avx512_bf16 or "
                                "amx_bf16; allowed on any CPU when asked for, where it may be slower than fp32), or auto: bf16 "
                                "where the device has bf16 units (a CUDA GPU torch reports bf16 support for; a CPU whose "
                                "/proc/cpuinfo flags have avx512_bf16 or amx_bf16), else fp32. auto is resolved once, when the "
                                "device is chosen; the run logs the result in its first line and records it in summary.json's "
                                "config. A sweep resolves auto on its driver to charge the budget (sweeps/budget.py): for CPU "
                                "trials from the driver's CPU flags, which assumes every node of the cluster has the same CPUs. "
                                "The finite-difference sides of the hypergradient are fp32 whatever this says")
    deepspeed_config: str | None = _f(None, "a DeepSpeed JSON config (e.g. clusters/deepspeed/gpu_bf16_zero2.json); the trainer fills batch size, clipping and ZeRO stage when absent")
    threads: int | None = _f(None, "torch CPU threads (default: torch's choice; 1 per trial when trials share a machine)")
    seed: int = _f(42, "random seed (data splits, sampling, init, dropout)")
    # evaluation and output
    eval_batch_size: int = _f(128, "evaluation batch size")
    output_dir: str = _f("runs/train", "where checkpoints, the metrics log and summary.json go")
    resume: bool = _f(False, "resume from the latest complete checkpoint in output_dir")
    save_checkpoints: bool = _f(True, "save a checkpoint after every epoch")
    keep_checkpoints: int = _f(1, "epoch checkpoints kept on disk: the newest K (older ones are deleted once a newer one "
                                  "is complete); --resume needs only the newest")
    log_every: int = _f(20, "print progress every N steps")
    wallclock_eval: bool = _f(True, "time real early-exit inference at the chosen operating points")
    wallclock_repeats: int = _f(3, "timed passes over test per operating point; the wall-clock speed-up is their median")
    hypervolume_axis: str = _f("log", "speed-up axis of the hypervolume: log (every doubling weighs the same; docs/method.md) "
                                      "or linear (1..L, the convention before 2026-11)")

    # ---------------------------------------------------------------- validation
    def __post_init__(self) -> None:
        # Every value is checked against its field's type here, as the config is read (a file, a
        # sweep's --set, a searcher's draw): a string where a number belongs is one clear error,
        # not a TypeError from deep inside validate or the training
        for f in dataclasses.fields(self):
            setattr(self, f.name, typed_value(f.name, str(f.type), getattr(self, f.name), f.default))
        if self.task is None:  # own data gets a name of its own; old configs (no data keys) stay on mr
            self.task = "own" if self.train_file is not None or self.dataset is not None else "mr"
        if self.kd == "auto":
            self.kd = {"pabee": "none", "last": "last"}.get(self.scheme, "all") if self.method == "fixed" else "all"

    def validate(self) -> "TrainConfig":
        from trainers.tasks import TASKS  # noqa: late import keeps config light
        from trainers.data_config import validate_data_keys
        from trainers.pareto import HYPERVOLUME_AXES

        def choose(name, value, choices):
            if value not in choices:
                raise ConfigError(f"unknown {name} '{value}'; choose one of: {', '.join(choices)}")

        validate_data_keys(self, sorted(TASKS))
        choose("method", self.method, METHODS)
        choose("scheme", self.scheme, FIXED_SCHEMES)
        choose("kd", self.kd, KD_TEACHERS)
        choose("weight_param", self.weight_param, PARAMETRIZATIONS)
        choose("loss_reduction", self.loss_reduction, LOSS_REDUCTIONS)
        choose("hypervolume_axis", self.hypervolume_axis, HYPERVOLUME_AXES)
        choose("pooling", self.pooling, ("auto", "cls", "mean"))
        choose("precision", self.precision, PRECISIONS)
        choose("device", self.device, DEVICES)
        choose("hypergradient_passes", self.hypergradient_passes, ("auto", "fp32"))
        choose("attn_implementation", self.attn_implementation, ("sdpa", "eager"))
        positive = {"max_length": self.max_length, "epochs": self.epochs, "batch_size": self.batch_size,
                    "eval_batch_size": self.eval_batch_size, "log_every": self.log_every,
                    "weight_log_every": self.weight_log_every, "wallclock_repeats": self.wallclock_repeats,
                    "keep_checkpoints": self.keep_checkpoints}
        for name, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{name} must be > 0 (got {value})")
        for name in ("train_subset", "eval_subset", "threads"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be > 0 (got {value}); leave it unset to use everything")
        for name in ("lr", "temperature", "fd_eps"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"{name} must be a positive number (got {value})")
        if self.head_lr is not None and not self.head_lr > 0:
            raise ConfigError(f"head_lr must be > 0 (got {self.head_lr}); leave it unset to use lr")
        if not self.lr_outer > 0:
            raise ConfigError(f"lr_outer must be > 0 (got {self.lr_outer}); it is Adam's step size for the loss weights")
        if self.outer_every < 1:
            raise ConfigError(f"outer_every must be >= 1 (got {self.outer_every}); it is how many steps pass between loss-weight updates")
        if self.xi is not None and not self.xi > 0:
            raise ConfigError(f"xi must be > 0 (got {self.xi}); leave it unset to use the inner learning rate")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio must be in [0, 1) (got {self.warmup_ratio})")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1) (got {self.dropout})")
        if not 0 < self.validation_fraction < 1:
            raise ConfigError(f"validation_fraction must be in (0, 1) (got {self.validation_fraction})")
        if self.zero_stage not in (0, 1, 2):
            raise ConfigError(
                f"zero_stage must be 0, 1 or 2 (got {self.zero_stage}); stage 3 partitions the parameters, "
                "which the finite-difference hypergradient perturbs in place"
            )
        if self.method == "fixed" and self.scheme == "pabee" and self.kd != "none":
            raise ConfigError("scheme 'pabee' has no KD terms; drop --kd or pass --kd none")
        if self.method == "fixed" and self.scheme == "last" and self.kd != "last":
            raise ConfigError("scheme 'last' distills from the last exit only; drop --kd or pass --kd last")
        if self.deepspeed_config is not None:
            self.deepspeed_config = resolve_project_path(self.deepspeed_config, "DeepSpeed config")
            read_json_object(self.deepspeed_config, "DeepSpeed config")
        return self

    @property
    def is_own_task(self) -> bool:
        return self.train_file is not None or self.dataset is not None

    def own_data(self):
        """Where your own task's data is (``trainers.own_data.OwnData``), or None for a built-in task."""
        if not self.is_own_task:
            return None
        from trainers.own_data import OwnData

        columns = tuple(self.text_columns.split(",")) if self.text_columns else None
        return OwnData(self.task, self.train_file, self.validation_file, self.test_file, self.dataset,
                       self.dataset_config, columns, self.label_column, self.regression)

    def primary_metric(self) -> str:
        """The metric the frontier and the hypervolume use, known before any data is read."""
        if self.metric is not None:
            return self.metric
        if self.is_own_task:
            return "pearson" if self.regression else "accuracy"
        from trainers.tasks import get_task

        return get_task(self.task).metrics[0]

    # ---------------------------------------------------------------- construction
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "config") -> "TrainConfig":
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ConfigError(
                f"unknown {where} key(s): {', '.join(unknown)}; valid keys: {', '.join(cls.field_names())}"
            )
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def with_values(self, values: dict[str, Any], where: str = "config") -> "TrainConfig":
        """A copy with ``values`` applied (a searcher's draw, a stage's options); not validated: the
        copy is validated once, where it is used. An unknown key is refused, naming ``where``."""
        unknown = sorted(set(values) - set(self.field_names()))
        if unknown:
            raise ConfigError(
                f"unknown {where} key(s): {', '.join(unknown)}; valid keys: {', '.join(self.field_names())}"
            )
        return dataclasses.replace(self, **values)


PROJECT_ROOT = Path(__file__).resolve().parents[1]
_KINDS = {"int": "a whole number", "float": "a number", "str": "a string", "bool": "true or false"}


def typed_value(name: str, annotation: str, value: Any, default: Any = None) -> Any:
    """``value`` as the field ``name`` (annotated ``annotation``: int, float, str or bool, maybe
    ``| None``) holds it: ints widen to float, a numeric string is a float (YAML 1.1 reads ``1e-4``,
    without a dot, as a string); anything else is a ConfigError naming the field and an example."""
    optional = annotation.endswith("| None")
    kind = annotation.replace(" | None", "").strip()
    if value is None and optional:
        return None
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "int" and isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if kind == "float" and isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    if kind == "float" and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if kind == "str" and isinstance(value, str):
        return value
    if kind not in _KINDS:  # a field of another type: nothing to check here
        return value
    example = f" such as {default!r}" if default is not None else ""
    raise ConfigError(f"{name} must be {_KINDS[kind]}{example}{' or null' if optional else ''}, "
                      f"got {value!r} ({type(value).__name__})")


def read_json_object(path: str, what: str) -> dict[str, Any]:
    """A JSON file holding an object, read now: a file that is not JSON fails before any work starts."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as err:
        raise ConfigError(f"{what} '{path}' cannot be read: {err.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} '{path}' is not a text file; pass a JSON file") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{what} '{path}' is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); "
                          "fix it, e.g. after clusters/deepspeed/cpu_zero2.json") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} '{path}' must hold a JSON object ({{...}}), not {type(data).__name__}")
    return data


# ---------------------------------------------------------------------------- precision: auto
def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    """This machine's CPU feature flags (the ``flags`` line of Linux's /proc/cpuinfo); empty where
    there is none to read (another OS), so ``auto`` stays fp32 there. torch 2.13 exposes no bf16
    capability of the CPU (``torch.backends.cpu.get_cpu_capability()`` says AVX512 with or without it)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":  # every core lists the same flags: the first line is enough
            return frozenset(value.split())
    return frozenset()


def cpu_bf16_flag(flags=None) -> str | None:
    """The flag that gives this CPU (or one with ``flags``) native bf16 units, or None."""
    flags = cpu_flags() if flags is None else set(flags)
    return next((flag for flag in BF16_CPU_FLAGS if flag in flags), None)


def resolve_precision(requested: str, device: str, flags=None) -> str:
    """``requested`` as it applies on ``device`` ("cpu" or "cuda"): fp32 and bf16 as they are;
    ``auto`` is bf16 where the device has bf16 units (a CUDA GPU with ``torch.cuda.is_bf16_supported()``;
    a CPU whose ``flags``, by default this machine's, have avx512_bf16 or amx_bf16), else fp32.
    No torch import unless ``device`` is cuda: the sweep driver calls this too."""
    if requested not in PRECISIONS:
        raise ConfigError(f"unknown precision '{requested}'; choose one of: {', '.join(PRECISIONS)}")
    if requested != "auto":
        return requested
    if device == "cuda":
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_bf16_flag(flags) else "fp32"


def precision_text(requested: str, resolved: str, device: str, flags=None) -> str:
    """'bf16 (auto: the CPU has avx512_bf16)': the resolved precision and, for auto, why."""
    if requested != "auto":
        return resolved
    if device == "cuda":
        import torch

        why = f"{torch.cuda.get_device_name()} {'has' if resolved == 'bf16' else 'has no'} bf16 support"
    else:
        flag = cpu_bf16_flag(flags)
        why = f"the CPU has {flag}" if flag else f"the CPU has neither {' nor '.join(BF16_CPU_FLAGS)}"
    return f"{resolved} (auto: {why})"


def resolve_project_path(path: str, what: str) -> str:
    """An absolute path: as given, else relative to the project, so that ``clusters/...`` works from
    any working directory (Ray Tune runs each trial in its own folder)."""
    for candidate in (Path(path), PROJECT_ROOT / path):
        if candidate.is_file():
            return str(candidate.resolve())
    raise ConfigError(f"{what} '{path}' not found; pass a JSON file, e.g. clusters/deepspeed/cpu_zero2.json")


def load_yaml(path: Path, what: str) -> dict[str, Any]:
    """A YAML (or JSON, a subset of YAML) mapping; errors name the file, the line and the problem."""
    import yaml

    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"{what} '{path}' cannot be read: {err.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} '{path}' is not a text file (not UTF-8); pass a YAML or JSON file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{what} '{path}' is not valid YAML{line}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} '{path}' must hold a mapping of keys to values, not {type(data).__name__}")
    return data


def load_config_file(path: str) -> dict[str, Any]:
    if not Path(path).is_file():
        raise ConfigError(f"config file '{path}' not found")
    return load_yaml(Path(path), "config file")

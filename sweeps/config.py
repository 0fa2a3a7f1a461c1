"""The typed sweep config and its validation.

A config is layered from defaults, a preset, a file and the command line by ``sweeps.presets``
(``build_config``) and validated here, once, before Ray, MLflow or a trial starts: every field,
and every arm's trainer config, which the validated ``SweepConfig`` then holds typed
(``train_config(arm)``). A bad value raises ``trainers.errors.ConfigError`` with what to fix,
which the command line turns into one ``error: ...`` line and exit code 2. Sweep folders and
their saved config: ``sweeps.state``; reachability of MLflow and Ray: ``sweeps.preflight``.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainers.config import TrainConfig
from trainers.inputs import check_run_inputs
from trainers.errors import ConfigError

OBJECTIVES = {"hypervolume": "val_hypervolume", "last_exit": "val_last_exit"}
SCHEDULERS = ("asha", "none")
KEEP_CHECKPOINTS = ("best", "all")
TRIAL_NODES = ("auto", "required", "anywhere")  # sweeps.placement
# The final stage's trainer options unless a preset, file or --set says otherwise (merged key by key)
DEFAULT_FINAL_TRAIN = {"train_subset": None, "eval_subset": None}
MAPPINGS = ("train", "space", "env", "final_train", "diverge_trials")  # keys whose values merge key by key
DATA_PATH_KEYS = ("train_file", "validation_file", "test_file", "dataset")  # train.* keys made absolute on the driver


def _f(default, help: str, hidden: bool = False):
    """A setting; ``hidden``: a test hook, left out of --help."""
    metadata = {"help": help, "hidden": hidden}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class SweepConfig:
    preset: str = _f("demo", "the preset this config started from: {presets} (sweeps/presets/*.yaml)")
    name: str | None = _f(None, "sweep name: MLflow experiment, folder under root (default: <preset>-<date>-<time>)")
    arms: list = _f(["fixed-uniform", "fixed-pabee", "fixed-last", "bilevel", "clo"],
                    "arms to compare, one search each: fixed-uniform, fixed-pabee, fixed-last, bilevel, clo "
                    "(or fixed: the fixed loss-weight method with train.scheme)")
    trials: int | None = _f(2, "most trials per arm (the same for every arm); null: as many as budget_epochs buys")
    budget_epochs: float | None = _f(None, "training compute per arm, in fixed-epochs (one epoch of fixed-weight training; an epoch "
                                           "of bilevel/clo costs 1 + outer_step_cost/outer_every); a trial starts only if all its "
                                           "epochs fit; null: no compute budget")
    outer_step_cost: object = _f("auto", "cost of one loss-weight update of bilevel/clo in θ-steps, for budget_epochs: auto (the "
                                         "figure measured for the trials' device, cuda when gpus_per_trial > 0, and "
                                         "train.precision: sweeps/budget.py's table), a number, or one per arm, e.g. "
                                         "{bilevel: 3.0, clo: 2.8}")
    max_concurrent: int = _f(2, "trials running at once in the whole search, every arm together (all arms search at "
                                "the same time in one Ray Tune experiment)")
    seed: int = _f(0, "seed of the TPE sampler (the same for every arm); the trainer's seed is train.seed")
    tpe_startup_trials: int | None = _f(None, "random trials before TPE starts modelling (Optuna's n_startup_trials); null: "
                                              "half the expected trials, 4 to 10; below 8 trials the sweep runs random search")
    final_seeds: list = _f([1, 2, 3], "final stage: each arm's best configuration (chosen on validation) is retrained once "
                                      "per seed with final_train, and the arms are compared on test; [] skips it")
    final_train: dict = _f(dict(DEFAULT_FINAL_TRAIN),
                           "trainer options of the final stage on top of each best configuration (default: the full "
                           "training set, and every model tested on the whole test set, which pairing across arms needs)")
    final_max_concurrent: int | None = _f(None, "final-stage trainings (arms x seeds, one experiment) running at once; null: as "
                                                "many as the cluster holds at cpus_per_trial/gpus_per_trial each; more than "
                                                "max_concurrent shares the same CPUs/GPUs among more trainings, e.g. 3 on 2 "
                                                "cores, so no core idles in a last round")
    reference_arm: str = _f("clo", "the arm every other arm is compared with in the final stage (paired differences)")
    bootstrap: int = _f(2000, "bootstrap resamples (over seeds and test examples) of the final comparison's intervals")
    timing_repeats: int = _f(5, "final stage: rounds of one full and one early-exit pass over test per model, made after all "
                                "training in one task holding a whole device, the models interleaved; the wall-clock speed-up "
                                "is the median ratio")
    timing_seeds: int | None = _f(None, "final stage: how many seeds of each arm (the first ones) the timing phase times; null: all")
    objective: str = _f("hypervolume", "what the search maximizes on validation: hypervolume (of the speed-accuracy frontier) or last_exit")
    scheduler: str = _f("asha", "trial scheduler: asha (stops weak trials after each epoch) or none")
    grace_period: int = _f(1, "ASHA: epochs every trial gets before it can be stopped")
    reduction_factor: int = _f(2, "ASHA: keep the best 1/reduction_factor of trials at each rung")
    cpus_per_trial: float = _f(1.0, "CPUs reserved per training worker (also its torch threads unless train.threads is set)")
    gpus_per_trial: float = _f(0.0, "GPUs reserved per training worker; below 1 (one worker only) packs several trials per GPU")
    workers_per_trial: int = _f(1, "data-parallel DeepSpeed workers per trial (Ray Train; gloo on CPU, NCCL on GPU); "
                                   "each reserves cpus_per_trial and gpus_per_trial; train.batch_size is the global batch")
    trial_nodes: str = _f("auto", "where trial processes (and Ray Train's controllers and workers) run: auto: only on nodes "
                                  "declaring the resource leebert_trial_node if any alive node does (the worker pods of "
                                  "clusters/ do; never the head), anywhere otherwise (a local Ray); required: only there, "
                                  "and refuse to start if no node declares it; anywhere: wherever resources allow")
    max_failures: int = _f(2, "times a trial whose process or node is lost is restarted from its last epoch checkpoint")
    num_cpus: int | None = _f(None, "CPUs of the local Ray instance (default: all); ignored when connecting to a cluster")
    reuse_actors: bool = _f(False, "let a Ray worker process run several trials in turn")
    root: str = _f("runs/sweeps", "folder holding one sub-folder per sweep (local stores, reports)")
    storage: str | None = _f(None, "Ray Tune storage (trial results, per-epoch checkpoints, models): a local folder, a shared "
                                   "filesystem path or an s3:// URI; default <root>/<name>/ray; must be shared on multi-node clusters")
    tracking_uri: str | None = _f(None, "MLflow tracking URI: http(s)://server or sqlite:///file.db (default: $MLFLOW_TRACKING_URI "
                                        "if set, else sqlite:///<root>/<name>/mlflow.db)")
    ray_address: str | None = _f(None, "Ray cluster to join (host:6379 or auto); default: $RAY_ADDRESS if set (as inside `ray job submit`), else a new local Ray")
    register: bool = _f(True, "when every arm's search is finished, register each arm's best model in the MLflow model registry "
                               "(serving.register; later or again: python platform/register.py)")
    register_speedup: float = _f(2.0, "exit policy of the registered models: the most accurate setting with at least this "
                                      "validation speed-up")
    registry_prefix: str | None = _f(None, "registered model name (default: leebert-<task>), one version per arm, "
                                          "aliases champion and <arm>-best")
    keep_checkpoints: str = _f("best", "best: delete a search trial's checkpoints once nothing can need them (stopped, "
                                       "failed, or beaten by its arm's best), one model per arm is left; all: keep them")
    trial_logs: bool = _f(False, "forward the trainer's step-by-step logs of every trial to this console")
    env: dict = _f({}, "environment variables set in every trial (e.g. HF_HUB_OFFLINE: '1')")
    diverge_trials: dict = _f({}, "test hook: {<arm>-<trial number>: step} makes the training loss of that search trial NaN "
                                  "at that (1-based) step, e.g. {fixed-2: 3}", hidden=True)
    space: dict = _f({}, "search-space overrides, e.g. {lr: [1e-5, 1e-4], temperature: null} (see search_spaces/)")
    train: dict = _f({}, "trainer options shared by every trial (any `python -m trainers.train` option; method is set per arm)")
    # Not a setting (never saved, not in --help): what ``validate`` made of ``train`` for each arm
    arm_configs: dict[str, TrainConfig] = field(default_factory=dict, init=False, repr=False, compare=False)

    # ------------------------------------------------------------------ derived
    @property
    def metric(self) -> str:
        """The Ray Tune result key the search and the scheduler maximize."""
        return OBJECTIVES[self.objective]

    @property
    def sweep_dir(self) -> Path:
        return Path(self.root).resolve() / self.name

    @property
    def storage_path(self) -> str:
        """Where Ray keeps this sweep's trials: ``<storage>/<name>`` (so sweeps sharing a storage
        never share experiment folders), by default ``<root>/<name>/ray``."""
        if self.storage:
            base = self.storage.rstrip("/") if "://" in self.storage else str(Path(self.storage).resolve())
            return f"{base}/{self.name}"
        return str(self.sweep_dir / "ray")

    @property
    def resolved_tracking_uri(self) -> str:
        return self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.sweep_dir / 'mlflow.db'}"

    @property
    def artifact_location(self) -> str | None:
        """Absolute artifact root for a local store; a tracking server manages its own."""
        if self.resolved_tracking_uri.startswith(("http://", "https://")):
            return None
        return (self.sweep_dir / "mlartifacts").as_uri()

    @property
    def optuna_journal(self) -> Path:
        """The sweep's Optuna studies, one per arm, in one journal file (``sweeps.studies``)."""
        from sweeps.studies import JOURNAL_FILE

        return self.sweep_dir / JOURNAL_FILE

    @property
    def model_prefix(self) -> str:
        task = self.arm_configs[self.arms[0]].task if self.arm_configs else self.train.get("task") or "mr"
        return self.registry_prefix or f"leebert-{task}"

    def train_config(self, arm: str) -> TrainConfig:
        """The trainer config of ``arm``'s trials before the searched values are filled in, as
        ``validate`` built and validated it (a trial applies its values to it: ``TrialSpec.drawn``)."""
        if arm not in self.arm_configs:
            raise LookupError(f"no trainer config for arm '{arm}': the sweep config holds one per arm of "
                              f"{self.arms} once validated (build it with sweeps.presets.build_config, or "
                              "call validate())")
        return self.arm_configs[arm]

    @classmethod
    def settings(cls) -> list[dataclasses.Field]:
        """The fields a preset, a file or --set can give (``arm_configs`` is derived, never given)."""
        return [f for f in dataclasses.fields(cls) if f.init]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "SweepConfig":
        """A config from its settings, not validated yet."""
        known = [f.name for f in cls.settings()]
        if "methods" in values:
            raise ConfigError(renamed_methods(values["methods"]))
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"unknown sweep config key(s): {', '.join(unknown)}; valid keys: {', '.join(known)}")
        values = {k: ({} if k in MAPPINGS and v is None else v) for k, v in values.items()}
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The settings (what sweep.json saves and --print-config shows)."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in self.settings()}

    # ------------------------------------------------------------------ validation
    def validate(self) -> "SweepConfig":
        """Check every setting, and build and validate each arm's trainer config (``train`` with the
        arm's method and scheme; with ``final_train`` on top too when there is a final stage):
        the one validation of the sweep's configs. Returns the config, holding ``arm_configs``."""
        import search_spaces

        _check_types(self)
        if self.name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name):
            raise ConfigError(f"name '{self.name}' may only hold letters, digits, '.', '_' and '-'")
        if not self.arms:
            raise ConfigError("arms is empty; list at least one of: " + ", ".join(search_spaces.arms()))
        for arm in self.arms:
            if arm not in search_spaces.arms():
                raise ConfigError(f"unknown arm '{arm}'; choose from: {', '.join(search_spaces.arms())}")
        if len(set(self.arms)) != len(self.arms):
            raise ConfigError(f"arms lists an arm twice: {self.arms}")
        for name in ("trials", "max_concurrent", "tpe_startup_trials", "grace_period", "workers_per_trial",
                     "budget_epochs", "timing_repeats", "final_max_concurrent", "timing_seeds"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0 (got {getattr(self, name)})")
        if self.trials is None and self.budget_epochs is None:
            raise ConfigError("trials is null and budget_epochs is not set: give each arm a budget in trials, in "
                              "compute (budget_epochs), or both")
        if self.bootstrap < 100:
            raise ConfigError(f"bootstrap must be >= 100 (got {self.bootstrap}); 2000 gives stable 95% intervals")
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in self.final_seeds):
            raise ConfigError(f"final_seeds must be a list of integers, got {self.final_seeds!r}")
        if len(set(self.final_seeds)) != len(self.final_seeds):
            raise ConfigError(f"final_seeds lists a seed twice: {self.final_seeds}")
        if self.final_seeds and self.reference_arm not in self.arms:
            raise ConfigError(f"reference_arm '{self.reference_arm}' is not among arms {self.arms}; "
                              "add it or set reference_arm to one of them")
        for key in ("method", "scheme", "seed", "output_dir", "resume"):
            if key in self.final_train:
                raise ConfigError(f"final_train.{key} cannot be set: the final stage takes it from the arm, the seed list "
                                  "or the sweep")
        _check_outer_step_cost(self.outer_step_cost)
        if self.max_failures < 0:
            raise ConfigError(f"max_failures must be >= 0 (got {self.max_failures})")
        if self.reduction_factor < 2:
            raise ConfigError(f"reduction_factor must be >= 2 (got {self.reduction_factor})")
        if self.num_cpus is not None and self.num_cpus <= 0:
            raise ConfigError(f"num_cpus must be > 0 (got {self.num_cpus}); leave it unset to use every CPU")
        _choose("objective", self.objective, OBJECTIVES)
        _choose("scheduler", self.scheduler, SCHEDULERS)
        _choose("keep_checkpoints", self.keep_checkpoints, KEEP_CHECKPOINTS)
        _choose("trial_nodes", self.trial_nodes, TRIAL_NODES)
        if not self.cpus_per_trial > 0:
            raise ConfigError(f"cpus_per_trial must be > 0 (got {self.cpus_per_trial})")
        if self.gpus_per_trial < 0:
            raise ConfigError(f"gpus_per_trial must be >= 0 (got {self.gpus_per_trial})")
        if 0 < self.gpus_per_trial < 1 and self.workers_per_trial > 1:
            raise ConfigError(f"gpus_per_trial {self.gpus_per_trial:g} shares a GPU between trials, which needs "
                              f"workers_per_trial 1 (got {self.workers_per_trial}): a data-parallel group wants a "
                              "whole GPU per worker; use gpus_per_trial 1 with several workers")
        if self.register_speedup < 1:
            raise ConfigError(f"register_speedup must be >= 1 (got {self.register_speedup}); it is a speed-up target such as 2.0")
        if self.registry_prefix is not None:  # refused now, not after the search has run
            from serving.register import check_model_name

            check_model_name(self.registry_prefix)
        for key, value in self.env.items():
            if not isinstance(value, (str, int, float, bool)):
                raise ConfigError(f"env.{key} must be a plain value, got {value!r}")
        unknown = sorted(set(self.space) - search_spaces.all_parameters())
        if unknown:
            raise ConfigError(f"unknown search-space key(s): {', '.join(unknown)}; searched parameters: "
                              f"{', '.join(sorted(search_spaces.all_parameters()))}")
        if "method" in self.train:
            raise ConfigError("train.method cannot be set: each arm sets it (fixed-*: fixed, bilevel, clo) and gets its "
                              "own search; list the arms in `arms`")
        for key, value in self.diverge_trials.items():
            arm, _, number = str(key).rpartition("-")
            if arm not in self.arms or not number.isdigit() or not isinstance(value, int) or value < 1:
                raise ConfigError(f"diverge_trials.{key}={value!r}: use {{<arm>-<trial number>: <step >= 1>}} with an arm "
                                  f"of arms, e.g. {{{self.arms[0]}-2: 3}}")
        arm_configs = {}
        for arm in self.arms:
            search_spaces.get_space(arm, self.space)
            cfg = TrainConfig.from_dict({**self.train, **search_spaces.arm_train_values(arm)}, where="train").validate()
            if cfg.batch_size % (2 * self.workers_per_trial):
                raise ConfigError(f"train.batch_size {cfg.batch_size} must split evenly over workers_per_trial="
                                  f"{self.workers_per_trial} workers and the two halves D1/D2; use a multiple of "
                                  f"{2 * self.workers_per_trial}")
            if self.scheduler == "asha" and self.grace_period > cfg.epochs:
                raise ConfigError(f"grace_period {self.grace_period} exceeds train.epochs {cfg.epochs}")
            if self.final_seeds:
                cfg.with_values(self.final_train, where="final_train").validate()
                if cfg.primary_metric() != "accuracy":
                    raise ConfigError(f"the final comparison resamples per-example correctness, which defines accuracy, "
                                      f"not {cfg.primary_metric()} (task {cfg.task}); set final_seeds: [] for this task")
            arm_configs[arm] = cfg
        # The trainer's own checks of what the configs name (the model folder, the data folder), on
        # every arm's config before Ray starts: else every trial fails, and is retried, alike
        for cfg in {id(c): c for c in arm_configs.values()}.values():
            check_run_inputs(cfg, output=False)
        # After the values themselves are checked: `train.lr=-1` is an invalid value first
        for section in ("train", "final_train"):  # no silent override of a searched value, in either stage
            for key, value in getattr(self, section).items():
                searching = [arm for arm in self.arms if key in search_spaces.get_space(arm, self.space)]
                if searching:
                    raise ConfigError(_searched_override(section, key, value, searching))
        self.arm_configs = arm_configs
        # Your own data's paths as the driver resolved them (absolute): every trial, wherever it runs,
        # and a resumed sweep read the same files; sweep.json and the MLflow params record them so
        first = arm_configs[self.arms[0]]
        for key in DATA_PATH_KEYS:
            if self.train.get(key) is not None:
                self.train[key] = getattr(first, key)
        for arm in self.arms:  # a compute budget needs a cost for the trials' device and precision
            self.arm_outer_step_cost(arm)
        return self

    def trial_device(self) -> str:
        """Where the trials train: cuda when Ray gives them GPUs (or train.device asks for it), else cpu."""
        return "cuda" if self.gpus_per_trial > 0 or self.train.get("device") == "cuda" else "cpu"

    def arm_outer_step_cost(self, arm: str) -> float:
        """What one outer update of ``arm``'s trials costs in θ-steps (0 for fixed weights):
        ``outer_step_cost``, or with ``auto`` the figure measured for the trials' device and
        precision (sweeps/budget.py); a device/precision nobody measured is refused, never guessed.
        ``train.precision: auto`` is resolved on this driver as the trials will resolve it (CPU
        trials: this machine's CPU flags, assuming the cluster's nodes are alike)."""
        from sweeps.budget import resolve_outer_step_cost

        train = self.train_config(arm)
        return resolve_outer_step_cost(self.outer_step_cost, train.method, self.trial_device(), train.precision)


def renamed_methods(value: Any = None, flag: bool = False) -> str:
    """Why the old key ``methods`` (or the flag ``--methods``) is refused, and how to write it now."""
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    listed = ",".join(map(str, value)) if isinstance(value, list) and value else "clo,fixed-uniform"
    old = "the flag --methods" if flag else "the config key `methods`"
    return (f"{old} was renamed to `arms` (\"method\" now only names a trainer's loss-weight algorithm): "
            f"write --arms {listed}, --set arms=[{listed}] or `arms: [{listed.replace(',', ', ')}]` in a YAML file")


def _searched_override(section: str, key: str, value: Any, searching: list[str]) -> str:
    """Why ``section.key`` cannot be set while arms search ``key``, and how to pin it instead."""
    arms = f"{', '.join(searching)} search{'es' if len(searching) == 1 else ''} {key}"
    if section == "train":
        return (f"train.{key}={value!r} would be replaced by the searched value: {arms}; to pin it, also pass --set "
                f"space.{key}=null (then train.{key} applies to every arm), or search a narrower range with "
                f"--set space.{key}=[low,high] instead")
    return (f"final_train.{key}={value!r} would replace the searched value in the retraining: {arms}, and the final "
            f"stage retrains each arm's best configuration as searched; to use one value for every arm, pin it for "
            f"the search too (--set space.{key}=null --set train.{key}={value!r})")


def _choose(name: str, value: str, choices) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {name} '{value}'; choose one of: {', '.join(choices)}")


def _check_outer_step_cost(value: Any) -> None:
    from sweeps.budget import LEARNED_ARMS

    def positive(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0

    if value == "auto" or positive(value):
        return
    if isinstance(value, dict) and value and set(value) <= set(LEARNED_ARMS) and all(positive(v) for v in value.values()):
        return
    raise ConfigError(f"outer_step_cost must be auto (the measured figure for the trials' device and precision), a number "
                      f"> 0, or one per learned arm such as {{bilevel: 3.0, clo: 2.8}}; got {value!r}")


def _check_types(cfg: SweepConfig) -> None:
    for f in cfg.settings():
        value = getattr(cfg, f.name)
        kind = str(f.type).replace(" | None", "")
        if value is None and "None" in str(f.type):
            continue
        ok = {
            "str": isinstance(value, str),
            "int": isinstance(value, int) and not isinstance(value, bool),
            "float": isinstance(value, (int, float)) and not isinstance(value, bool),
            "bool": isinstance(value, bool),
            "list": isinstance(value, list),
            "dict": isinstance(value, dict),
            "object": True,  # checked by validate
        }[kind]
        if not ok:
            raise ConfigError(f"{f.name} must be {'a' if kind != 'int' else 'an'} {kind}, got {value!r}")
    for name in ("cpus_per_trial", "budget_epochs"):
        if isinstance(getattr(cfg, name), int):
            setattr(cfg, name, float(getattr(cfg, name)))


def field_help(presets: list[str]) -> list[tuple[str, str, Any]]:
    """(name, help, default) of every setting but the test hooks, for --help; ``preset`` lists
    ``presets`` (sweeps.presets.presets(), which imports this module), as --preset does."""
    return [(f.name, f.metadata["help"].replace("{presets}", ", ".join(presets)),
             f.default if f.default is not dataclasses.MISSING else f.default_factory())
            for f in SweepConfig.settings() if not f.metadata.get("hidden")]

"""Train and evaluate one LeeBERT model: the whole procedure, top to bottom.

    python -m trainers.train --task mr --method clo --epochs 2
    python -m trainers.train --config my.yaml --lr 3e-5

1. Build the multi-exit model and the task's data (train D = D1 ∪ D2, validation, test).
2. Build the objective's terms and the loss-weight strategy (fixed | bilevel | clo).
3. Put θ in a DeepSpeed engine (AdamW, warm-up + linear decay, clipping, ZeRO 0–2).
4. Each step: draw B1 ⊂ D1 and B2 ⊂ D2; the strategy may update φ from a hypergradient; θ takes
   one step on the strategy's batch with loss w · ℓ.
5. After each epoch: evaluate on validation, save a checkpoint (complete or absent, never half).
6. At the end: choose exit-policy settings on validation, report them on test, print a summary.

``run(cfg)`` is what Ray Tune trials call too. It returns a ``RunResult`` (``trainers.results``):
the trained model, its typed ``Summary`` (also written as summary.json) and every exit's test
logits. Its ``on_epoch`` callback receives each epoch's validation metrics.

A non-finite loss, hypergradient, loss weight or evaluation logit stops the run with
``TrainingDiverged`` (the command line: one ``error: diverged at step N (...)`` line, exit code 3,
no summary). Test hook: ``run(cfg, fault_step=N)`` (``--fault-step N`` on the command line) makes
the loss of (1-based) step N NaN, so a run diverges on cue.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from trainers import engine as ds
from trainers.cli import OneLineParser, add_config_arguments, config_from_args
from trainers.config import TrainConfig, precision_text
from trainers.data import TaskData, batch_indices, collate, load_task_data
from trainers.divergence import DivergenceMonitor, check_finite
from trainers.errors import EXIT_BAD_INPUT, EXIT_DIVERGED, ConfigError, TrainingDiverged
from trainers.evaluate import (collect_logits, final_report, point_key, policy_grid, report_split,
                               wallclock_speedups)
from trainers.frontier import curve_table
from trainers.inputs import TINY_MODEL, check_run_inputs
from trainers.gradient_clipping import clip_gradients
from trainers.layout import SUMMARY_FILE, TEST_LOGITS_FILE, checkpoints_dir, epoch_tag
from trainers.model import ModelSpec, MultiExitEncoder, build_model, resolve_model_source, tiny_backbone
from trainers.objective import LossTerms, inner_loss, term_losses
from trainers.progress import History, ProgressLog
from trainers.results import RunResult, Summary
from trainers.run_files import prune_epoch_checkpoints, save_exit_logits, write_json_atomic
from trainers.seeding import rank_seed, restore_rng, rng_state, seed_everything
from trainers.weight_strategies import all_reduce_mean, build_strategy


# ---------------------------------------------------------------------------- builders
def build_components(cfg: TrainConfig):
    """Model, tokenizer and data, from the validated config. Your own task's data is read first:
    it says how many classes the exits predict (and bad data fails before a model loads)."""
    from trainers.data import get_task

    data = None
    if cfg.is_own_task:
        from trainers.model import load_tokenizer

        data = load_data(cfg, load_tokenizer(cfg.model))
    task = data.task if data is not None else get_task(cfg.task)
    if cfg.model == TINY_MODEL:
        from transformers import AutoTokenizer

        from trainers.model import embedded_model_path

        tokenizer = AutoTokenizer.from_pretrained(embedded_model_path())
        backbone = tiny_backbone(num_layers=3, hidden=32, vocab_size=tokenizer.vocab_size, seed=cfg.seed,
                                 attn_implementation=cfg.attn_implementation, dropout=cfg.dropout)
        pooling = "mean" if cfg.pooling == "auto" else cfg.pooling
        model = MultiExitEncoder(backbone, task.num_labels, pooling, dropout=cfg.dropout)
    else:
        spec = ModelSpec(resolve_model_source(cfg.model), task.num_labels, cfg.pooling, cfg.attn_implementation,
                         cfg.dropout)
        model, tokenizer = build_model(spec)
    from trainers.model import check_max_length  # exit 2 naming the limit, not an index error mid-training
    check_max_length(model.backbone.config, cfg.max_length)
    data = data if data is not None else load_data(cfg, tokenizer)
    if data.task.label_names:  # the label names travel in the model's config.json (exported with it)
        model.backbone.config.id2label = data.task.id2label()
        model.backbone.config.label2id = {name: i for i, name in data.task.id2label().items()}
    return model, data


def load_data(cfg: TrainConfig, tokenizer) -> TaskData:
    """The task's splits as ``cfg`` asks for them; the sweep's timing phase rebuilds a trained
    model's test split with it."""
    return load_task_data(cfg.task, tokenizer, data_dir=cfg.data_dir, max_length=cfg.max_length,
                          train_subset=cfg.train_subset, eval_subset=cfg.eval_subset, seed=cfg.seed,
                          validation_fraction=cfg.validation_fraction, own=cfg.own_data(),
                          test_fraction=cfg.test_fraction, metric=cfg.metric)


def check_split_sizes(data: TaskData, draw: tuple[int, int], batch_size: int, world_size: int) -> None:
    for half, size, need in (("D1", len(data.d1), draw[0]), ("D2", len(data.d2), draw[1])):
        if size < need:
            raise ConfigError(
                f"training set of {len(data.train)} examples splits into halves of ~{size}, too small for "
                f"{need} examples of {half} per step at batch size {batch_size}; lower --batch-size or raise --train-subset"
            )
    if world_size > 1 and any(n % world_size for n in draw):
        raise ConfigError(f"per-step draws {draw} must divide evenly over {world_size} processes; use a batch size divisible by {2 * world_size}")


# ---------------------------------------------------------------------------- the loop
class StepDraw:
    """The examples of one step. Batches are collated on first use (bilevel needs B2 only on outer
    steps), or ahead of time by ``prefetch``: on a GPU into pinned memory and copied without
    blocking, so the host never waits for a copy and the next step's copy queues behind this one's work."""

    def __init__(self, data: TaskData, step: int, sizes: tuple[int, int], seed: int, rank: int = 0,
                 world_size: int = 1, device: torch.device | str = "cpu"):
        self.data, self.step, self.sizes, self.seed = data, step, sizes, seed
        self.rank, self.world_size, self.device = rank, world_size, torch.device(device)
        self._batches: dict[int, dict] = {}

    def _batch(self, which: int) -> dict:
        if which not in self._batches:
            half = (self.data.d1, self.data.d2)[which]
            positions = batch_indices(len(half), self.sizes[which], self.step, self.seed, salt=which + 1)
            mine = positions[self.rank::self.world_size]  # this process's shard of the global batch
            batch = collate(self.data.train, half[mine], self.data.pad_token_id)
            pin = self.device.type == "cuda"
            self._batches[which] = {key: (value.pin_memory() if pin else value).to(self.device, non_blocking=pin)
                                    for key, value in batch.items()}
        return self._batches[which]

    def prefetch(self, halves: tuple[bool, bool]) -> "StepDraw":
        for which, needed in enumerate(halves):
            if needed:
                self._batch(which)
        return self

    def b1(self) -> dict:
        return self._batch(0)

    def b2(self) -> dict:
        return self._batch(1)


def training_step(engine, strategy, terms: LossTerms, draw: StepDraw, step: int, xi: Callable[[], list[float]],
                  monitor: DivergenceMonitor, fault_step: int | None = None) -> tuple[torch.Tensor, dict | None]:
    """Step ``step`` (0-based): the strategy may update φ, then θ takes one step with loss w · ℓ / n (the weighted mean of the terms).

    No host sync: a non-finite loss is recorded in ``monitor`` on the device and the update is
    skipped there (``skip_update_unless``); ``monitor.check()``, at the loop's check points, raises.
    ``engine`` is a DeepSpeed engine or anything with its ``module``, ``optimizer``, call,
    ``backward`` and ``step``, so the step also runs without DeepSpeed (the meta-device tests).
    ``draw`` is anything with ``b1()`` and ``b2()``. Returns the loss and the outer step's info
    (None if φ did not move).
    """
    outer = strategy.outer_step(engine.module, draw.b1, draw.b2, step, xi, monitor)
    batch = strategy.theta_batch(draw.b1, draw.b2)
    loss = inner_loss(terms, strategy.weights(), term_losses(terms, engine(**batch), batch["labels"]))
    if step + 1 == fault_step:  # test hook (run's fault_step): diverge on cue
        loss = loss * float("nan")
    # The mean over processes: every rank sees any rank's NaN, so all skip the update together.
    ok = monitor.record_loss(step, all_reduce_mean([loss.detach()])[0])
    engine.backward(loss)
    clip_gradients(engine)  # on the device: DeepSpeed's own clipping waits on the host
    ds.skip_update_unless(engine, ok)
    engine.step()
    return loss, outer


def check_fault_step(fault_step) -> int | None:
    """The test hook's step: None, or a (1-based) step number."""
    if fault_step is None:
        return None
    if isinstance(fault_step, bool) or not isinstance(fault_step, int) or fault_step < 1:
        raise ConfigError(f"fault_step must be a (1-based) step number, not {fault_step!r}")
    return fault_step


def train_steps(engine, strategy, terms: LossTerms, data: TaskData, cfg: TrainConfig, start: int, stop: int,
                progress: "ProgressLog", monitor: DivergenceMonitor, fault_step: int | None = None) -> torch.Tensor:
    """Steps [start, stop) of training; the loop is the same for every method. Returns the last loss.

    The host reads from the device only every ``log_every`` steps (``progress.check``: the
    divergence check, the progress line and the weights logged since, in one sync); the caller
    checks again at the end of the epoch.
    """
    rank, world_size = ds.world()
    sizes = strategy.draw_sizes(cfg.batch_size)
    xi = lambda: ds.parameter_lrs(engine, cfg.xi)  # noqa: E731 - evaluated on outer steps only
    draw = StepDraw(data, start, sizes, cfg.seed, rank, world_size, engine.device)
    for step in range(start, stop):
        loss, outer = training_step(engine, strategy, terms, draw, step, xi, monitor, fault_step)
        if step + 1 < stop:  # the next step's batches are collated and queued while the device works
            draw = StepDraw(data, step + 1, sizes, cfg.seed, rank, world_size, engine.device).prefetch(
                strategy.halves(step + 1))
        progress.step(step + 1, loss, strategy.weights(), outer)
        if (step + 1) % cfg.log_every == 0:
            progress.check(monitor, ds.current_lrs(engine)[0])
    return loss


# ---------------------------------------------------------------------------- the recipe
def run(cfg: TrainConfig, on_epoch: Callable[[dict], None] | None = None, quiet: bool = False,
        fault_step: int | None = None) -> RunResult:
    """Train and evaluate one model. ``on_epoch(record)`` after every epoch's validation;
    ``quiet`` silences the progress lines; ``fault_step`` (a test hook) makes that step's loss NaN."""
    cfg.validate()
    check_run_inputs(cfg)  # the model, data and output folders: checked now, not an epoch into training
    fault_step = check_fault_step(fault_step)
    started = time.perf_counter()
    requested_precision = cfg.precision
    device, precision = ds.select_device_and_precision(cfg.device, cfg.precision)  # fails at once on a broken GPU setup
    if precision != cfg.precision:  # precision auto, resolved for this device: what the run uses and records
        cfg = dataclasses.replace(cfg, precision=precision)
    ds.ensure_process_group(device)
    rank, world_size = ds.world()
    is_main = rank == 0  # in a data-parallel group only rank 0 speaks and writes
    log = (lambda msg: None) if quiet or not is_main else (lambda msg: print(f"[leebert] {msg}", flush=True))
    output = Path(cfg.output_dir)
    if not cfg.resume and ds.latest_checkpoint(cfg.output_dir):
        raise ConfigError(f"output_dir '{output}' already holds a run; pass --resume to continue it, or choose another --output-dir")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)  # the same on every rank: the same data splits and initial weights

    # 1. model and data
    model, data = build_components(cfg)
    task = data.task
    log(f"task {task.name}: train {len(data.train)} (D1 {len(data.d1)}, D2 {len(data.d2)}), "
        f"validation {len(data.validation)}, test {len(data.test)}; model {cfg.model} with {model.num_layers} exits; "
        f"device {device}" + (f" x {world_size} processes" if world_size > 1 else "")
        + f", precision {precision_text(requested_precision, precision, device)}")
    if task.source == "own":
        log(f"own data: text column(s) {', '.join(task.text_fields)}; "
            + (f"{task.num_labels} classes {', '.join(task.label_names[:20])}" if not task.is_regression else "regression")
            + f"; primary metric {task.metrics[0]}")
    for note in data.notes:
        log(note)

    # 2. objective and loss-weight strategy
    terms = LossTerms.build(model.num_layers, cfg.kd, cfg.temperature, task.is_regression, cfg.loss_reduction)
    strategy = build_strategy(cfg, terms)
    check_split_sizes(data, strategy.draw_sizes(cfg.batch_size), cfg.batch_size, world_size)
    steps_per_epoch = max(1, len(data.train) // cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch

    # 3. engine
    engine = ds.build_engine(model, cfg, total_steps)
    # The weights are made on the CPU; they multiply exit losses on the engine's device (a GPU).
    strategy.to(engine.device)
    monitor = DivergenceMonitor(engine.device)
    # Each rank its own dropout masks: the streams so far were the same everywhere (initial weights).
    torch.manual_seed(rank_seed(cfg.seed, rank))

    history, start_epoch = History(), 0
    tag = ds.latest_checkpoint(cfg.output_dir) if cfg.resume else None
    if tag:
        state = ds.load_checkpoint(engine, cfg.output_dir, tag)
        strategy.load_state_dict(state["strategy"])  # lands on the device the strategy is on
        history = History(**state["history"])
        start_epoch = state["epoch"]
        if not restore_rng(ds.load_rank_state(cfg.output_dir, tag)):
            torch.manual_seed(rank_seed(cfg.seed, rank, start_epoch))
            log(f"checkpoint {tag} holds no random state for rank {rank} (written by fewer processes?): "
                "dropout reseeded from the seed, the rank and the epoch")
        log(f"resumed from checkpoint {tag} (epoch {start_epoch}/{cfg.epochs})")
    elif cfg.resume:
        log(f"no complete checkpoint in {checkpoints_dir(output)}: starting from scratch")

    # 4–5. train, evaluating and checkpointing after each epoch
    val_logits = None
    progress = ProgressLog(history, log, total_steps, cfg.weight_log_every, start_epoch * steps_per_epoch)
    for epoch in range(start_epoch, cfg.epochs):
        log(f"epoch {epoch + 1}/{cfg.epochs} ({steps_per_epoch} steps, method {cfg.method})")
        epoch_start = time.perf_counter()
        end = (epoch + 1) * steps_per_epoch
        train_steps(engine, strategy, terms, data, cfg, epoch * steps_per_epoch, end, progress, monitor, fault_step)
        progress.keep_weights(end, strategy.weights())
        progress.check(monitor, ds.current_lrs(engine)[0])  # raises TrainingDiverged naming the first bad step
        train_seconds = time.perf_counter() - epoch_start
        val_logits = collect_logits(model, data.validation, cfg.eval_batch_size, data.pad_token_id)
        # θ's last step of the epoch is seen by no loss check; NaN logits would all argmax to class 0
        check_finite(val_logits, end, "validation logits are not finite")
        val = report_split(val_logits, data.validation.labels, task, policy_grid(task, model.num_layers),
                           axis=cfg.hypervolume_axis)
        record = {"epoch": epoch + 1, "step": end,
                  "val_last_exit": val.last_exit, "val_hypervolume": val.hypervolume,
                  "val_per_exit": [e[val.primary] for e in val.per_exit],
                  "weights": strategy.weights().tolist(), "train_seconds": round(train_seconds, 2)}
        history.epochs.append(record)
        log(f"epoch {epoch + 1}: validation {val.primary} last exit {val.last_exit:.4f}, hypervolume {val.hypervolume:.4f}, "
            f"per exit {' '.join(f'{x:.3f}' for x in record['val_per_exit'])}")
        if cfg.save_checkpoints:
            ds.save_checkpoint(engine, cfg.output_dir, epoch_tag(epoch + 1), {
                "epoch": epoch + 1, "strategy": strategy.state_dict(),
                "history": {"epochs": history.epochs, "weights": history.weights}, "config": cfg.to_dict(),
                "label_names": list(task.label_names)},
                rank_state=rng_state())
            if int(os.environ.get("LOCAL_RANK", "0")) == 0:  # one process per node (node-local checkpoints too)
                prune_epoch_checkpoints(cfg.output_dir, cfg.keep_checkpoints)
        if on_epoch is not None:
            on_epoch(record)
    # The model stays; the engine, its optimizer state and ZeRO buffers go now, not when the
    # process ends: with reuse_actors the next trial in this process needs that memory.
    ds.release_engine(engine)
    del engine
    gc.collect()  # DeepSpeed's engine holds reference cycles
    if device == "cuda":
        torch.cuda.empty_cache()

    # 6. final report: settings chosen on validation, reported on test
    if val_logits is None:  # resumed after the last epoch
        val_logits = collect_logits(model, data.validation, cfg.eval_batch_size, data.pad_token_id)
        check_finite(val_logits, total_steps, "validation logits are not finite")
    test_logits = collect_logits(model, data.test, cfg.eval_batch_size, data.pad_token_id)
    check_finite(test_logits, total_steps, "test logits are not finite")
    report = final_report(val_logits, data.validation.labels, test_logits, data.test.labels, task, cfg.hypervolume_axis)
    if cfg.wallclock_eval and report.operating_points:
        timings = wallclock_speedups(model, data.test, report.operating_points, task, cfg.eval_batch_size,
                                     data.pad_token_id, cfg.wallclock_repeats)
        for op, ratios in zip(report.operating_points, timings):
            op.wallclock_speedup = float(np.median(ratios))
    summary = Summary.from_dict({
        "task": task.name, "method": cfg.method, "scheme": cfg.scheme if cfg.method == "fixed" else None,
        "model": cfg.model, "num_exits": model.num_layers, "steps": total_steps,
        "train_examples": len(data.train), "wall_time_s": round(time.perf_counter() - started, 1),
        "hypervolume_axis": cfg.hypervolume_axis,
        **report.summary(),
        "weights": {"names": terms.names, "final": strategy.weights().tolist(), "trajectory": history.weights},
        "epochs": history.epochs,
        "config": cfg.to_dict(),
        "label_names": list(task.label_names) or None,
    })
    if is_main:
        output.mkdir(parents=True, exist_ok=True)
        write_json_atomic(output / SUMMARY_FILE, summary.to_dict())
        # Every exit's test logits: the final comparison's bootstrap resamples test examples from them
        save_exit_logits(output / TEST_LOGITS_FILE, test_logits, data.test.labels, data.test.ids)
        log("per-exit test " + report.test.primary + ": " +
            " ".join(f"{e[report.test.primary] * 100:.1f}" for e in report.test.per_exit))
        log("speed-accuracy frontier (settings chosen on validation; test values):\n"
            + curve_table([report.test.point(point_key(p)) for p in report.validation.front], report.test.primary))
    return RunResult(model=model, summary=summary, test_logits=test_logits, task=task)


# ---------------------------------------------------------------------------- command line
def parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m trainers.train",
        description="Train one multi-exit (LeeBERT) model on DeepSpeed and evaluate its early-exit "
                    "speed-accuracy frontier. Flags override the --config file; the run ends with a JSON summary.",
    )
    p.add_argument("--config", metavar="FILE", help="YAML or JSON file with any of the options below")
    p.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # passed by the deepspeed launcher
    add_config_arguments(p)
    # test hook, hidden from --help: the training loss of (1-based) step N is NaN, so the run diverges on cue (exit code 3)
    p.add_argument("--fault-step", type=_step_number, metavar="N", help=argparse.SUPPRESS)
    return p


def _step_number(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a (1-based) step number, not '{text}'")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
        result = run(cfg, fault_step=args.fault_step)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except TrainingDiverged as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_DIVERGED
    if ds.world()[0] != 0:
        return 0
    summary = result.summary
    printable = {k: v for k, v in summary.to_dict().items() if k not in ("config", "epochs", "weights")}
    printable["weights"] = {"final": summary.weights.final}
    print(json.dumps(printable, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())

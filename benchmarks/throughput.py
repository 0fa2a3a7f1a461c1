"""Throughput of the trainer on this machine: training steps/s, evaluation samples/s, and the wall
time of DeepSpeed ZeRO-0 against ZeRO-2, measured side by side in one run.

    python benchmarks/throughput.py                     # MiniLM on MR, batch 32
    python benchmarks/throughput.py --steps 10 --model tiny-random
    python benchmarks/throughput.py --device cuda --precision bf16
    python benchmarks/throughput.py --task snli --threads 1 --steps 4 --warmup 1   # SNLI pairs

Both engines train copies of the same model from the same initial weights on the same batches,
taking turns step by step; warm-up steps are not timed (first calls pay for allocation).
Batches and weights follow each engine's device, and on a GPU every clock is read after a
synchronize (kernels run asynchronously: an unsynchronized clock times the launches only).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform as std_platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from trainers import engine as ds  # noqa: E402
from trainers.config import TrainConfig  # noqa: E402
from trainers.data import collate, eval_batches  # noqa: E402
from trainers.objective import LossTerms, inner_loss, term_losses  # noqa: E402
from trainers.policies import make_policy  # noqa: E402
from trainers.train import build_components  # noqa: E402


def time_training_side_by_side(models: dict, cfgs: dict, batches: list[dict], warmup: int,
                                terms: LossTerms) -> dict:
    """Steps per second of forward + backward + AdamW step through each DeepSpeed engine.

    The engines take turns, one step each, so a change in machine load hits all of them alike.
    """
    engines = {key: ds.build_engine(models[key], cfgs[key], total_steps=len(batches)) for key in models}
    seconds = dict.fromkeys(engines, 0.0)
    for index, cpu_batch in enumerate(batches):
        for key, engine in engines.items():
            batch = {k: v.to(engine.device) for k, v in cpu_batch.items()}
            weights = torch.ones(len(terms), device=engine.device)
            ds.synchronize(engine.device)
            start = time.perf_counter()
            loss = inner_loss(terms, weights, term_losses(terms, engine(**batch), batch["labels"]))
            engine.backward(loss)
            engine.step()
            ds.synchronize(engine.device)
            if index >= warmup:
                seconds[key] += time.perf_counter() - start
    return {key: (len(batches) - warmup) / seconds[key] for key in engines}


@torch.no_grad()
def time_evaluation(model, split, batch_size: int, pad_id: int, policy=None) -> float:
    """Samples per second of the all-exits forward, or of real early-exit inference with ``policy``."""
    model.eval()
    device = next(model.parameters()).device
    batches = [{k: v.to(device) for k, v in b.items()} for _, b in eval_batches(split, batch_size, pad_id)]
    run = (lambda b: model(**b)) if policy is None else (lambda b: model.early_exit(policy, **b))
    run(batches[0])
    ds.synchronize(device)
    start = time.perf_counter()
    for batch in batches:
        run(batch)
    ds.synchronize(device)
    model.train()
    return len(split) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--task", default="mr", help="the task whose batches are timed: mr or snli (embedded), or a GLUE task")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per engine")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--eval-examples", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cfg = TrainConfig(model=args.model, task=args.task, max_length=args.max_length, batch_size=args.batch_size,
                      eval_subset=args.eval_examples, output_dir="/tmp/leebert-throughput", device=args.device,
                      precision=args.precision).validate()
    device = ds.select_device(cfg.device, cfg.precision)
    model, data = build_components(cfg)
    terms = LossTerms.build(model.num_layers, "all")
    gen = torch.Generator().manual_seed(0)
    batches = [collate(data.train, torch.randperm(len(data.train), generator=gen)[: args.batch_size], data.pad_token_id)
               for _ in range(args.steps + args.warmup)]
    tokens = sum(int(b["attention_mask"].sum()) for b in batches) / len(batches)

    print(f"machine: {std_platform.processor() or std_platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, {args.threads} threads, device {device} {cfg.precision}")
    print(f"model {args.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, "
          f"{model.num_layers} exits), {args.task} batches of {args.batch_size}, mean {tokens:.0f} real tokens per batch, "
          f"padded to {sum(b['input_ids'].shape[1] for b in batches) / len(batches):.1f}")
    models = {stage: copy.deepcopy(model) for stage in (0, 2)}  # same initial weights
    cfgs = {stage: TrainConfig(**{**cfg.to_dict(), "zero_stage": stage}).validate() for stage in (0, 2)}
    results = time_training_side_by_side(models, cfgs, batches, args.warmup, terms)
    for stage, rate in results.items():
        print(f"train ZeRO-{stage}: {rate:.2f} steps/s ({1 / rate:.2f} s/step, {rate * args.batch_size:.1f} samples/s)")
    print(f"wall time ZeRO-2 / ZeRO-0: {results[0] / results[2]:.2f}x")
    model.to(device)
    full = time_evaluation(model, data.test, 128, data.pad_token_id)
    early = time_evaluation(model, data.test, 128, data.pad_token_id, make_policy("patience", 2))
    print(f"evaluation (all exits, batch 128): {full:.1f} samples/s on {len(data.test)} test examples")
    print(f"early-exit inference (patience 2, batch 128): {early:.1f} samples/s ({early / full:.2f}x the all-exits pass)")


if __name__ == "__main__":
    main()

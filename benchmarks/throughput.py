"""Throughput of the trainer on this machine: training steps/s, evaluation samples/s, and the wall
time of DeepSpeed ZeRO-0 against ZeRO-2, measured side by side in one run.

    python benchmarks/throughput.py                     # MiniLM on MR, batch 32
    python benchmarks/throughput.py --steps 10 --model tiny-random

Every engine trains the same model from the same initial weights on the same batches; each
measurement skips warm-up steps (first calls pay for allocation and kernel selection).
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
from trainers.objective import LossTerms, term_losses  # noqa: E402
from trainers.policies import make_policy  # noqa: E402
from trainers.train import build_components  # noqa: E402


def time_training(model, cfg: TrainConfig, batches: list[dict], warmup: int, terms: LossTerms) -> float:
    """Steps per second of forward + backward + AdamW step through a DeepSpeed engine."""
    engine = ds.build_engine(model, cfg, total_steps=len(batches) + warmup)
    weights = torch.ones(len(terms))

    def step(batch):
        loss = (weights * term_losses(terms, engine(**batch), batch["labels"])).sum()
        engine.backward(loss)
        engine.step()

    for batch in batches[:warmup]:
        step(batch)
    start = time.perf_counter()
    for batch in batches[warmup:]:
        step(batch)
    return (len(batches) - warmup) / (time.perf_counter() - start)


@torch.no_grad()
def time_evaluation(model, split, batch_size: int, pad_id: int, policy=None) -> float:
    """Samples per second of the all-exits forward, or of real early-exit inference with ``policy``."""
    model.eval()
    batches = [b for _, b in eval_batches(split, batch_size, pad_id)]
    run = (lambda b: model(**b)) if policy is None else (lambda b: model.early_exit(policy, **b))
    run(batches[0])
    start = time.perf_counter()
    for batch in batches:
        run(batch)
    model.train()
    return len(split) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per engine")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--eval-examples", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cfg = TrainConfig(model=args.model, task="mr", max_length=args.max_length, batch_size=args.batch_size,
                      eval_subset=args.eval_examples, output_dir="/tmp/leebert-throughput").validate()
    model, data = build_components(cfg)
    terms = LossTerms.build(model.num_layers, "all")
    gen = torch.Generator().manual_seed(0)
    batches = [collate(data.train, torch.randperm(len(data.train), generator=gen)[: args.batch_size], data.pad_token_id)
               for _ in range(args.steps + args.warmup)]
    tokens = sum(int(b["attention_mask"].sum()) for b in batches) / len(batches)

    print(f"machine: {std_platform.processor() or std_platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, {args.threads} threads")
    print(f"model {args.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, "
          f"{model.num_layers} exits), MR batches of {args.batch_size}, mean {tokens:.0f} real tokens per batch")
    results = {}
    initial = copy.deepcopy(model.state_dict())
    for stage in (0, 2):
        model.load_state_dict(initial)
        stage_cfg = TrainConfig(**{**cfg.to_dict(), "zero_stage": stage}).validate()
        results[stage] = time_training(model, stage_cfg, batches, args.warmup, terms)
        print(f"train ZeRO-{stage}: {results[stage]:.2f} steps/s ({1 / results[stage]:.2f} s/step, "
              f"{results[stage] * args.batch_size:.1f} samples/s)")
    print(f"wall time ZeRO-2 / ZeRO-0: {results[0] / results[2]:.2f}x")
    full = time_evaluation(model, data.test, 128, data.pad_token_id)
    early = time_evaluation(model, data.test, 128, data.pad_token_id, make_policy("patience", 2))
    print(f"evaluation (all exits, batch 128): {full:.1f} samples/s on {len(data.test)} test sentences")
    print(f"early-exit inference (patience 2, batch 128): {early:.1f} samples/s ({early / full:.2f}x the all-exits pass)")


if __name__ == "__main__":
    main()

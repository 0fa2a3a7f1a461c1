"""Does the hypergradient hold when its gradient passes run in bf16? (docs/method.md, "Mixed precision")

    python benchmarks/hypergradient_precision.py                   # MiniLM on MR, CPU bf16 autocast
    python benchmarks/hypergradient_precision.py --device cuda     # the same on a GPU

The finite-difference hypergradient (method §4) has four passes. The two sides ℓ± always run in
fp32 (their difference is tiny); this measures what running the other two, g and v, under bf16
autocast does to h: the cosine and the relative error of h against the all-fp32 h, on the
embedded MiniLM with MR batches, at the trainer's learning rates (ξ = lr per group) and several
``fd_eps``. The model first takes ``--warm-steps`` fixed steps, so the exit heads are not random.
CPU bf16 autocast rounds like CUDA's matmuls do (bf16 inputs, fp32 accumulation); it is slower,
not less exact.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from trainers.config import TrainConfig  # noqa: E402
from trainers.data import collate  # noqa: E402
from trainers.objective import LossTerms, LossWeights, inner_loss, term_losses  # noqa: E402
from trainers.train import build_components, seed_everything  # noqa: E402
from trainers.weight_strategies import hypergradient  # noqa: E402


def batches(data, size: int, count: int, device) -> list[tuple[dict, dict]]:
    gen = torch.Generator().manual_seed(7)
    out = []
    for _ in range(count):
        pick = lambda half: half[torch.randperm(len(half), generator=gen)[:size]]  # noqa: E731
        pair = [collate(data.train, pick(half), data.pad_token_id) for half in (data.d1, data.d2)]
        out.append(tuple({k: v.to(device) for k, v in b.items()} for b in pair))
    return out


def xi_of(model, lr: float, head_lr: float) -> list[float]:
    return [head_lr if name.startswith("exits.") else lr for name, p in model.named_parameters() if p.requires_grad]


def compare(model, terms, pairs, xi, fd_eps: float, dtype) -> list[tuple[float, float]]:
    """(cosine, relative error) of the bf16-pass h against the fp32 h, per batch pair."""
    weights = LossWeights(len(terms)).to(next(model.parameters()).device)
    with torch.no_grad():  # not uniform: the weights a learned arm has after a while
        weights.phi.copy_(torch.linspace(-0.5, 0.5, len(terms)))
    results = []
    identity = lambda tensors: tensors  # noqa: E731 - one process
    for b1, b2 in pairs:
        exact = hypergradient(model, terms, weights, b1, b2, xi, fd_eps, reduce=identity)
        mixed = hypergradient(model, terms, weights, b1, b2, xi, fd_eps, reduce=identity, grad_dtype=dtype)
        cos = torch.nn.functional.cosine_similarity(exact.double(), mixed.double(), dim=0).item()
        rel = ((mixed - exact).norm() / exact.norm()).item()
        results.append((cos, rel))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch-size", type=int, default=16, help="examples per half-batch (B1, B2)")
    parser.add_argument("--pairs", type=int, default=3, help="batch pairs per setting")
    parser.add_argument("--fd-eps", type=float, nargs="+", default=[0.003, 0.01, 0.03])
    parser.add_argument("--warm-steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = TrainConfig(task="mr", model=args.model, max_length=64, train_subset=2000, seed=1).validate()
    seed_everything(cfg.seed)
    model, data = build_components(cfg)
    model.to(args.device)
    terms = LossTerms.build(model.num_layers, "all")
    started = time.perf_counter()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    for _, (b1, b2) in zip(range(args.warm_steps), batches(data, args.batch_size, args.warm_steps, args.device)):
        loss = inner_loss(terms, torch.ones(len(terms), device=args.device), term_losses(terms, model(**b1), b1["labels"]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    xi = xi_of(model, cfg.lr, cfg.head_lr)
    pairs = batches(data, args.batch_size, args.pairs, args.device)
    print(f"hypergradient with g and v under bf16 autocast vs all fp32: {args.model} on MR, {args.device}, "
          f"{model.num_layers} exits, {len(terms)} terms, half-batches of {args.batch_size}, ξ = lr per group "
          f"(backbone {cfg.lr:g}, heads {cfg.head_lr:g}), after {args.warm_steps} warm-up steps")
    print("| fd_eps | cosine (min / mean) | 1 − cosine (max) | relative error (max / mean) |")
    print("|---|---|---|---|")
    worst = 1.0
    for fd_eps in args.fd_eps:
        res = compare(model, terms, pairs, xi, fd_eps, torch.bfloat16)
        cos, rel = [c for c, _ in res], [r for _, r in res]
        worst = min(worst, min(cos))
        print(f"| {fd_eps:g} | {min(cos):.4f} / {sum(cos) / len(cos):.4f} | {1 - min(cos):.1e} | "
              f"{max(rel):.3f} / {sum(rel) / len(rel):.3f} |")
    print(f"worst cosine {worst:.4f} (ship bf16 passes only if >= 0.99); {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()

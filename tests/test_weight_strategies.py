"""The loss-weight strategies in training: they learn, they honour the splits, they scale out."""

import os

import pytest
import torch

from tests.conftest import make_batch, start_ranks
from trainers.model import MultiExitEncoder, tiny_backbone
from trainers.objective import LossTerms, LossWeights, term_losses
from trainers.weight_strategies import BilevelWeights, CrossLevelWeights, FixedWeights, hypergradient


class HarmfulTeacher(torch.nn.Module):
    """Exit ``bad`` always answers the wrong label with high confidence (constant, untrainable)."""

    def __init__(self, inner, bad):
        super().__init__()
        self.inner, self.bad = inner, bad

    def forward(self, labels=None, **batch):
        logits = self.inner(**batch)
        classes = logits.shape[-1]
        wrong = torch.nn.functional.one_hot((labels + 1) % classes, classes).to(logits.dtype) * 6.0
        return torch.cat([logits[: self.bad], wrong.unsqueeze(0), logits[self.bad + 1:]])


def synthetic_batch(n, seed):
    """A learnable task: the label is whether the first token id is at least 52."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 100, (n, 8), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids),
            "labels": (ids[:, 0] >= 52).long()}


@pytest.mark.parametrize("strategy_cls", [BilevelWeights, CrossLevelWeights])
def test_weights_of_terms_that_distill_from_a_harmful_exit_drop(strategy_cls):
    torch.manual_seed(0)
    model = HarmfulTeacher(MultiExitEncoder(tiny_backbone(num_layers=3, seed=0), 2, "cls"), bad=1)
    terms = LossTerms.build(3, "all")
    strategy = strategy_cls(terms, "softmax", lr_outer=0.1, outer_every=1, fd_eps=0.01)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    xi = [1e-3] * sum(1 for _ in model.parameters())
    for step in range(40):
        b1, b2 = synthetic_batch(16, 2 * step), synthetic_batch(16, 2 * step + 1)
        strategy.outer_step(model, lambda: b1, lambda: b2, step, lambda: xi)
        batch = strategy.theta_batch(lambda: b1, lambda: b2)
        loss = (strategy.weights() * term_losses(terms, model(**batch), batch["labels"])).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    weights = dict(zip(terms.names, strategy.weights().tolist()))
    from_bad = [w for name, w in weights.items() if name.endswith("<-2")]  # kd/1<-2 and kd/3<-2
    other_kd = [w for name, w in weights.items() if name.startswith("kd/") and not name.endswith("<-2")]
    assert max(from_bad) < 0.75 * min(other_kd), weights
    assert sum(weights.values()) == pytest.approx(len(terms), rel=1e-5)


# ---------------------------------------------------------------------------- data-parallel
def _setup_problem():
    torch.manual_seed(0)
    model = MultiExitEncoder(tiny_backbone(num_layers=3, seed=0), 3, "mean").double()
    terms = LossTerms.build(3, "all", temperature=2.0)
    weights = LossWeights(len(terms)).double()
    with torch.no_grad():
        weights.phi.copy_(torch.linspace(-0.3, 0.3, len(terms), dtype=torch.float64))
    b1, b2 = make_batch(batch_size=8, seed=11), make_batch(batch_size=8, seed=12)
    xi = [0.05] * sum(1 for _ in model.parameters())
    return model, terms, weights, b1, b2, xi


def _shard(batch, rank, world):
    return {k: v[rank::world] for k, v in batch.items()}


def _dp_worker(rank, world, out_dir):
    torch.set_num_threads(1)
    # a file rendezvous: no TCP port that another process could take between choosing and binding it
    torch.distributed.init_process_group("gloo", init_method=f"file://{out_dir}/rendezvous", rank=rank, world_size=world)
    model, terms, weights, b1, b2, xi = _setup_problem()
    h = hypergradient(model, terms, weights, _shard(b1, rank, world), _shard(b2, rank, world), xi, 0.01)
    torch.save(h, os.path.join(out_dir, f"h{rank}.pt"))
    # Without it a loaded machine let rank 0 finish first and close its gloo pairs while rank 1
    # still waited on the last all-reduce's data: rank 1 died with SIGABRT ("terminate called
    # without an active exception"), 2 runs in 13. The barrier needs both ranks past every collective.
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def test_two_gloo_processes_give_the_single_process_hypergradient(tmp_path):
    start_ranks(_dp_worker, (2, str(tmp_path)))
    model, terms, weights, b1, b2, xi = _setup_problem()
    single = hypergradient(model, terms, weights, b1, b2, xi, 0.01, reduce=lambda tensors: tensors)
    h0, h1 = torch.load(tmp_path / "h0.pt"), torch.load(tmp_path / "h1.pt")
    assert torch.equal(h0, h1), "every rank must hold the same hypergradient"
    assert single.norm() > 0
    assert torch.allclose(h0, single, rtol=1e-6, atol=1e-9), (h0 - single).abs().max()
    # and a single shard alone is not the same: the all-reduce matters
    alone = hypergradient(model, terms, weights, _shard(b1, 0, 2), _shard(b2, 0, 2), xi, 0.01,
                          reduce=lambda tensors: tensors)
    assert not torch.allclose(alone, single, rtol=1e-3)


# ---------------------------------------------------------------------------- the splits
@pytest.mark.parametrize("method", ["fixed", "bilevel", "clo"])
def test_theta_and_phi_see_only_the_splits_their_method_allows(tmp_path, method):
    from trainers import engine as ds
    from trainers.config import TrainConfig
    from trainers.divergence import DivergenceMonitor
    from trainers.train import History, ProgressLog, build_components, train_steps
    from trainers.weight_strategies import build_strategy

    cfg = TrainConfig(model="tiny-random", task="mr", train_subset=96, eval_subset=40, max_length=24, batch_size=8,
                      method=method, outer_every=2, log_every=1000, threads=1, output_dir=str(tmp_path)).validate()
    model, data = build_components(cfg)
    terms = LossTerms.build(model.num_layers, cfg.kd, regression=False)
    strategy = build_strategy(cfg, terms)
    engine = ds.build_engine(model, cfg, total_steps=12)
    seen = {"theta": [], "hyper": []}
    original_forward = model.forward

    def recording_forward(**batch):
        seen["theta" if model.training else "hyper"].append(batch["ids"].clone())
        return original_forward(**batch)

    model.forward = recording_forward
    monitor = DivergenceMonitor(engine.device)
    train_steps(engine, strategy, terms, data, cfg, 0, 12, ProgressLog(History(), lambda msg: None, 12, 50), monitor)
    monitor.check()
    model.forward = original_forward

    d1 = set(data.train.ids[data.d1].tolist())
    d2 = set(data.train.ids[data.d2].tolist())
    theta = set(torch.cat(seen["theta"]).tolist())
    hyper = set(torch.cat(seen["hyper"]).tolist()) if seen["hyper"] else set()
    assert len(seen["theta"]) == 12, "one θ forward per step"
    assert all(i // 1_000_000_000 == 0 for i in theta | hyper), "never validation (1) or test (2) ids"
    assert theta <= d1 | d2
    if method == "bilevel":
        assert theta <= d1 and not theta & d2, "bilevel's θ must never see D2"
        assert hyper & d1 and hyper & d2
    else:
        assert theta & d1 and theta & d2, "fixed and clo train θ on both halves"
    if method == "fixed":
        assert not hyper
    else:
        # bilevel: on each outer step g (B1) + v (B2) + two finite-difference sides (B1) = 4 forwards;
        # clo does that in both directions
        assert len(seen["hyper"]) == (12 // 2) * (4 if method == "bilevel" else 8)


def test_fixed_strategy_has_no_outer_state():
    strategy = FixedWeights(LossTerms.build(3, "none"), "pabee")
    assert strategy.outer_step(None, None, None, 0, None) is None
    assert strategy.weights().tolist() == pytest.approx([0.5, 1.0, 1.5])  # L·m/Σj: mean 1
    assert strategy.draw_sizes(33) == (17, 16)

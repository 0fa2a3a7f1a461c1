"""Exact losses under bf16: the loss terms and their reductions run in fp32 whatever the logits' dtype.

DeepSpeed's ``torch_autocast`` wraps only the module's forward, so the exit logits reach the
objective as bf16. CPU bf16 autocast is the stand-in for CUDA's here; it is stricter (its
``log_softmax`` of bf16 stays bf16, where CUDA's runs in fp32), so a loss that is exact under it
is exact on a GPU too.
"""

from types import SimpleNamespace

import pytest
import torch

from tests.conftest import make_batch
from trainers import engine as ds
from trainers.config import TrainConfig
from trainers.divergence import DivergenceMonitor
from trainers.objective import LossTerms, inner_loss, outer_loss, term_losses
from trainers.train import training_step
from trainers.weight_strategies import CrossLevelWeights, FixedWeights

BF16 = torch.autocast("cpu", dtype=torch.bfloat16)


def agreeing_exit_logits(exits: int, batch: int, classes: int, seed: int = 0) -> torch.Tensor:
    """Logits of exits that nearly agree, as trained exits do: one shared signal plus small noise."""
    gen = torch.Generator().manual_seed(seed)
    shared = 3.0 * torch.randn(1, batch, classes, generator=gen)
    return (shared + 0.05 * torch.randn(exits, batch, classes, generator=gen)).to(torch.bfloat16)


@pytest.mark.parametrize("exits,batch,classes", [(12, 32, 3), (12, 16, 2)])
def test_term_losses_of_bf16_logits_are_the_fp32_losses(exits, batch, classes):
    logits = agreeing_exit_logits(exits, batch, classes)
    labels = torch.randint(0, classes, (batch,), generator=torch.Generator().manual_seed(1))
    terms = LossTerms.build(exits, "all", temperature=2.0)
    exact = term_losses(terms, logits.double(), labels)  # the same bf16 values, computed in fp64
    weights = torch.linspace(0.5, 1.5, len(terms))
    with BF16:
        losses = term_losses(terms, logits, labels)
        total = inner_loss(terms, weights, losses)
        out = outer_loss(logits, labels)
    assert losses.dtype == total.dtype == out.dtype == torch.float32
    assert (losses >= 0).all(), "a KL divergence is never negative"
    rel = ((losses.double() - exact).abs() / exact.abs()).max().item()
    assert rel < 1e-3, f"worst relative error {rel:.2e} over {len(terms)} terms"
    assert total.item() == pytest.approx(float((weights.double() * exact).sum() / len(terms)), rel=1e-3)
    assert out.item() == pytest.approx(float(exact[:exits].mean()), rel=1e-3)


def test_a_bf16_training_step_trains_on_the_fp32_loss_of_its_logits(tiny_model):
    """The whole step under bf16 autocast, on a DeepSpeed engine: the loss θ is trained on equals
    the fp32 objective of the (bf16) logits the network produced in that step."""
    model = tiny_model(num_labels=3)
    cfg = TrainConfig(model="tiny-random", precision="bf16", batch_size=12).validate()
    engine = ds.build_engine(model, cfg, total_steps=4)
    seen = []
    model.register_forward_hook(lambda module, args, output: seen.append(output.detach()) if module.training else None)
    for strategy in (FixedWeights(LossTerms.build(3, "all"), "uniform"),
                     CrossLevelWeights(LossTerms.build(3, "all"), "softmax", 0.1, 1, 0.01)):
        strategy.to(engine.device)
        b1, b2 = make_batch(seed=2), make_batch(seed=3)
        draw = SimpleNamespace(b1=lambda: b1, b2=lambda: b2)
        seen.clear()
        with BF16:
            loss, _ = training_step(engine, strategy, strategy.terms, draw, 0, lambda: ds.parameter_lrs(engine),
                                    DivergenceMonitor(engine.device))
        (logits,) = seen  # the θ forward of this step (the hypergradient's passes run in eval mode)
        assert logits.dtype == torch.bfloat16, "autocast reached the network"
        batch = strategy.theta_batch(draw.b1, draw.b2)
        exact = inner_loss(strategy.terms, strategy.weights().double(),
                           term_losses(strategy.terms, logits.double(), batch["labels"]))
        assert loss.dtype == torch.float32
        assert loss.item() == pytest.approx(exact.item(), rel=1e-3)


def test_bf16_gradient_passes_leave_the_finite_difference_sides_in_fp32(tiny_model):
    from trainers.objective import LossWeights
    from trainers.weight_strategies import hypergradient

    model, terms = tiny_model(num_labels=3), LossTerms.build(3, "all")
    xi = [1e-3] * sum(1 for _ in model.parameters())
    passes = []
    model.register_forward_hook(lambda mod, a, out: passes.append(out.dtype))
    hypergradient(model, terms, LossWeights(len(terms)), make_batch(seed=1), make_batch(seed=2), xi, 0.01,
                  grad_dtype=torch.bfloat16)
    assert passes == [torch.bfloat16, torch.bfloat16, torch.float32, torch.float32]  # g, v, ℓ+, ℓ−


@pytest.mark.integration
def test_on_minilm_the_bf16_pass_hypergradient_keeps_cosine_099_to_the_fp32_one():
    """The condition for shipping bf16 g and v passes (benchmarks/hypergradient_precision.py has the table)."""
    from trainers.data import collate
    from trainers.objective import LossWeights
    from trainers.train import build_components, seed_everything
    from trainers.weight_strategies import hypergradient

    cfg = TrainConfig(task="mr", model="minilm", max_length=64, train_subset=400, seed=1).validate()
    seed_everything(1)
    model, data = build_components(cfg)
    terms = LossTerms.build(model.num_layers, "all")
    gen = torch.Generator().manual_seed(7)
    draw = lambda half: collate(data.train, half[torch.randperm(len(half), generator=gen)[:16]], data.pad_token_id)  # noqa: E731
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    for _ in range(3):  # a few steps, so the exit heads are not random
        b = draw(data.d1)
        loss = inner_loss(terms, torch.ones(len(terms)), term_losses(terms, model(**b), b["labels"]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    xi = [cfg.head_lr if n.startswith("exits.") else cfg.lr for n, p in model.named_parameters() if p.requires_grad]
    weights = LossWeights(len(terms))
    with torch.no_grad():
        weights.phi.copy_(torch.linspace(-0.5, 0.5, len(terms)))
    b1, b2 = draw(data.d1), draw(data.d2)
    same = lambda tensors: tensors  # noqa: E731
    exact = hypergradient(model, terms, weights, b1, b2, xi, cfg.fd_eps, reduce=same)
    mixed = hypergradient(model, terms, weights, b1, b2, xi, cfg.fd_eps, reduce=same, grad_dtype=torch.bfloat16)
    cosine = torch.nn.functional.cosine_similarity(exact.double(), mixed.double(), dim=0).item()
    assert cosine >= 0.99, f"cosine {cosine:.4f}"
    assert (mixed - exact).norm() / exact.norm() < 0.1


@pytest.mark.parametrize("passes", ["auto", "fp32"])
def test_under_cpu_bf16_autocast_the_finite_difference_sides_run_in_fp32(tiny_model, monkeypatch, passes):
    """The CPU path is the GPU's: whatever autocast surrounds an outer step (here CPU bf16, what
    precision bf16, or auto on a CPU with bf16 units, gives θ's steps), every Linear of the ℓ+ and
    ℓ− forwards computes in fp32, and h is the one computed with no autocast around it. Without
    the sides' autocast_off the same check sees bf16 there (the last part)."""
    import contextlib

    import trainers.weight_strategies as ws

    model, terms = tiny_model(num_labels=3), LossTerms.build(3, "all")
    cfg = TrainConfig(model="tiny-random", method="clo", precision="bf16", hypergradient_passes=passes).validate()
    strategy = ws.build_strategy(cfg, terms)
    computed: list[set] = []  # per call of the model (a pass): the dtypes its Linear layers computed in
    model.register_forward_pre_hook(lambda module, args: computed.append(set()))
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(lambda module, args, out: computed[-1].add(out.dtype))
    b1, b2 = make_batch(seed=1), make_batch(seed=2)
    xi = [1e-3] * sum(1 for p in model.parameters() if p.requires_grad)
    fp32, grad = {torch.float32}, ({torch.bfloat16} if passes == "auto" else {torch.float32})

    with BF16:
        inside = strategy.combined_hypergradient(model, b1, b2, xi)
    assert computed == [grad, grad, fp32, fp32] * 2, computed  # clo: two hypergradients of g, v, ℓ+, ℓ− each
    outside = strategy.combined_hypergradient(model, b1, b2, xi)
    assert inside.dtype == torch.float32 and torch.isfinite(inside).all()
    assert torch.allclose(inside, outside, rtol=1e-4, atol=1e-7), (inside, outside)

    # the check has teeth: with the sides' autocast_off gone, bf16 autocast reaches ℓ±
    monkeypatch.setattr(ws, "autocast_off", lambda device_type: contextlib.nullcontext())
    computed.clear()
    with BF16:
        strategy.combined_hypergradient(model, b1, b2, xi)
    assert computed[2] == computed[3] == {torch.bfloat16}

"""The finite-difference hypergradient against the exact one (autograd through the unrolled step)."""

import torch
import torch.nn.functional as F

from tests.conftest import make_batch
from trainers.objective import LossTerms, LossWeights, inner_loss, outer_loss, term_losses
from trainers.weight_strategies import BilevelWeights, CrossLevelWeights, exact_hypergradient, hypergradient


def setup(tiny_model, teachers="all", parametrization="softmax", seed=0):
    model = tiny_model(num_layers=3, dtype=torch.float64, seed=seed)
    terms = LossTerms.build(3, teachers, temperature=2.0)
    weights = LossWeights(len(terms), parametrization).double()
    with torch.no_grad():  # away from φ = 0, so every weight differs
        weights.phi.copy_(torch.linspace(-0.5, 0.5, len(terms), dtype=torch.float64))
    b1, b2 = make_batch(seed=1), make_batch(seed=2)
    return model, terms, weights, b1, b2


def compare(h, exact):
    cosine = F.cosine_similarity(h, exact, dim=0).item()
    rel = ((h - exact).norm() / exact.norm()).item()
    return cosine, rel


def test_finite_difference_matches_exact_hypergradient(tiny_model):
    for teachers, parametrization in [("all", "softmax"), ("later", "sigmoid"), ("last", "softmax")]:
        model, terms, weights, b1, b2 = setup(tiny_model, teachers, parametrization)
        n_params = sum(1 for p in model.parameters() if p.requires_grad)
        xi = [0.05] * n_params  # a large ξ makes the Hessian term dominate, the hard case
        h = hypergradient(model, terms, weights, b1, b2, xi, fd_eps=0.01)
        exact = exact_hypergradient(model, terms, weights, b1, b2, xi)
        cosine, rel = compare(h, exact)
        assert exact.norm() > 1e-8, "degenerate check: the exact hypergradient must be non-zero"
        assert cosine >= 0.99 and rel <= 0.05, (teachers, parametrization, cosine, rel)


def test_per_group_xi_matches_exact(tiny_model):
    model, terms, weights, b1, b2 = setup(tiny_model)
    xi = [0.1 if n.startswith("exits.") else 0.01 for n, p in model.named_parameters() if p.requires_grad]
    cosine, rel = compare(hypergradient(model, terms, weights, b1, b2, xi, 0.01),
                          exact_hypergradient(model, terms, weights, b1, b2, xi))
    assert cosine >= 0.99 and rel <= 0.05, (cosine, rel)


def test_moving_teachers_would_be_wrong(tiny_model):
    """The pitfall from the method doc: teachers that move with θ ± εu measure another derivative."""
    model, terms, weights, b1, b2 = setup(tiny_model)
    xi = [0.05] * sum(1 for p in model.parameters() if p.requires_grad)
    exact = exact_hypergradient(model, terms, weights, b1, b2, xi)
    held_cos, held = compare(hypergradient(model, terms, weights, b1, b2, xi, 0.01), exact)
    import trainers.weight_strategies as ws

    original = ws.term_losses
    ws.term_losses = lambda t, logits, labels, teacher_logits=None: original(t, logits, labels)  # teachers move
    try:
        _, moving = compare(hypergradient(model, terms, weights, b1, b2, xi, 0.01), exact)
    finally:
        ws.term_losses = original
    # relative errors: held teachers are exact to FD precision, moving ones are off by far more
    assert held_cos > 0.999 and held < 1e-3 and moving > 20 * held, (held, moving)


def test_clo_is_mean_of_the_two_crossed_hypergradients(tiny_model):
    model, terms, _, b1, b2 = setup(tiny_model)
    clo = CrossLevelWeights(terms, "softmax", lr_outer=0.1, outer_every=1, fd_eps=0.01)
    clo.loss_weights.double()
    xi = [0.05] * sum(1 for p in model.parameters() if p.requires_grad)
    h12 = hypergradient(model, terms, clo.loss_weights, b1, b2, xi, 0.01)
    h21 = hypergradient(model, terms, clo.loss_weights, b2, b1, xi, 0.01)
    combined = clo.combined_hypergradient(model, b1, b2, xi)
    assert torch.allclose(combined, 0.5 * (h12 + h21), atol=1e-12)
    assert not torch.allclose(h12, h21, rtol=0.1), "the two directions should differ on different batches"
    bilevel = BilevelWeights(terms, "softmax", lr_outer=0.1, outer_every=1, fd_eps=0.01)
    bilevel.loss_weights.double()
    assert torch.allclose(bilevel.combined_hypergradient(model, b1, b2, xi), h12, atol=1e-12)


def test_hypergradient_leaves_parameters_and_mode_untouched(tiny_model):
    model, terms, weights, b1, b2 = setup(tiny_model)
    model.train()
    before = [p.detach().clone() for p in model.parameters()]
    hypergradient(model, terms, weights, b1, b2, [0.05] * len(before), 0.01)
    assert model.training
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())

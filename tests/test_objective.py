"""The inner and outer objectives and the loss weights, on hand-made logits."""

import math

import pytest
import torch
import torch.nn.functional as F

from trainers.errors import ConfigError
from trainers.objective import LossTerms, LossWeights, fixed_weights, inner_loss, outer_loss, teacher_pairs, term_losses


def test_teacher_sets():
    assert teacher_pairs(3, "all") == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]
    assert teacher_pairs(3, "later") == [(0, 1), (0, 2), (1, 2)]
    assert teacher_pairs(3, "last") == [(0, 2), (1, 2)]
    assert teacher_pairs(3, "none") == []
    with pytest.raises(ConfigError, match="choose one of"):
        teacher_pairs(3, "everyone")


def test_kd_terms_are_zero_when_all_exits_agree():
    one_exit = torch.randn(5, 4)
    logits = one_exit.expand(3, 5, 4).clone()
    terms = LossTerms.build(3, "all", temperature=2.0)
    losses = term_losses(terms, logits, torch.tensor([0, 1, 2, 3, 0]))
    assert torch.allclose(losses[3:], torch.zeros(6), atol=1e-6)
    ce = F.cross_entropy(one_exit, torch.tensor([0, 1, 2, 3, 0]))
    assert torch.allclose(losses[:3], ce.expand(3))


def test_kd_term_is_tau_squared_kl_of_teacher_to_student():
    logits = torch.tensor([[[2.0, 0.0]], [[0.0, 1.0]]])  # 2 exits, 1 sample, 2 classes
    tau = 2.0
    terms = LossTerms.build(2, "all", temperature=tau)
    losses = term_losses(terms, logits, torch.tensor([0]))
    p0, p1 = torch.softmax(logits[0, 0] / tau, -1), torch.softmax(logits[1, 0] / tau, -1)
    kl_1_to_0 = float((p1 * (p1.log() - p0.log())).sum())  # term kd/1<-2: teacher exit 2, student exit 1
    kl_0_to_1 = float((p0 * (p0.log() - p1.log())).sum())
    assert terms.names == ["ce/1", "ce/2", "kd/1<-2", "kd/2<-1"]
    assert losses[2].item() == pytest.approx(tau ** 2 * kl_1_to_0, rel=1e-5)
    assert losses[3].item() == pytest.approx(tau ** 2 * kl_0_to_1, rel=1e-5)


def test_teachers_are_detached_and_can_be_held():
    logits = torch.randn(3, 4, 2, requires_grad=True)
    terms = LossTerms.build(3, "last")
    kd = term_losses(terms, logits, torch.zeros(4, dtype=torch.long))[3:].sum()
    kd.backward()
    assert logits.grad[2].abs().sum() == 0, "the teacher (last exit) must receive no KD gradient"
    held = torch.randn(3, 4, 2)
    moved = term_losses(terms, logits.detach(), torch.zeros(4, dtype=torch.long), teacher_logits=held)
    own = term_losses(terms, logits.detach(), torch.zeros(4, dtype=torch.long))
    assert torch.equal(moved[:3], own[:3]) and not torch.allclose(moved[3:], own[3:])


def test_weights_start_at_one_and_stay_normalized():
    for parametrization in ("softmax", "sigmoid"):
        weights = LossWeights(7, parametrization)
        assert torch.allclose(weights(), torch.ones(7))
    softmax = LossWeights(7, "softmax")
    sigmoid = LossWeights(7, "sigmoid")
    for seed in range(5):
        phi = torch.randn(7, generator=torch.Generator().manual_seed(seed)) * 3
        with torch.no_grad():
            softmax.phi.copy_(phi)
            sigmoid.phi.copy_(phi)
        assert softmax().sum().item() == pytest.approx(7.0, rel=1e-6)
        assert (softmax() > 0).all()
        assert ((sigmoid() > 0) & (sigmoid() < 2)).all()


def test_pabee_scheme_is_pabees_weighted_average():
    logits = torch.randn(4, 8, 3)
    labels = torch.randint(0, 3, (8,))
    terms = LossTerms.build(4, "none")
    weighted = inner_loss(terms, fixed_weights("pabee", terms), term_losses(terms, logits, labels))
    per_layer = [F.cross_entropy(logits[j], labels) for j in range(4)]
    expected = sum((j + 1) * per_layer[j] for j in range(4)) / sum(range(1, 5))  # Σ j·L_j / Σ j
    assert weighted.item() == pytest.approx(expected.item(), rel=1e-6)


def test_fixed_schemes_and_their_errors():
    assert torch.equal(fixed_weights("uniform", LossTerms.build(3, "all")), torch.ones(9))
    assert torch.equal(fixed_weights("last", LossTerms.build(3, "last")), torch.ones(5))
    with pytest.raises(ConfigError, match="--kd none"):
        fixed_weights("pabee", LossTerms.build(3, "all"))
    with pytest.raises(ConfigError, match="choose one of"):
        fixed_weights("random", LossTerms.build(3, "all"))


def test_outer_loss_is_the_unweighted_mean_of_exit_losses():
    logits = torch.randn(3, 5, 2)
    labels = torch.randint(0, 2, (5,))
    expected = sum(F.cross_entropy(logits[m], labels) for m in range(3)) / 3
    assert outer_loss(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)


def test_regression_terms_use_mse():
    preds = torch.tensor([[[1.0], [2.0]], [[1.5], [2.0]]])  # 2 exits, 2 samples
    labels = torch.tensor([1.0, 3.0])
    terms = LossTerms.build(2, "all", regression=True)
    losses = term_losses(terms, preds, labels)
    assert losses.tolist() == pytest.approx([(0 + 1) / 2, (0.25 + 1) / 2, 0.25 / 2, 0.25 / 2])
    assert outer_loss(preds, labels, regression=True).item() == pytest.approx((0.5 + 0.625) / 2)
    assert not math.isnan(losses.sum().item())


# ---------------------------------------------------------------------------- the loss-scale convention
ARMS = {"fixed-uniform": {"method": "fixed", "scheme": "uniform"}, "fixed-pabee": {"method": "fixed", "scheme": "pabee"},
        "fixed-last": {"method": "fixed", "scheme": "last"}, "bilevel": {"method": "bilevel"}, "clo": {"method": "clo"}}


@pytest.mark.parametrize("arm", ARMS)
def test_every_arm_minimizes_a_weighted_mean_of_its_terms(arm):
    """One convention for every arm (docs/method.md, "Loss scale"): L = Σ w·ℓ / n with weights of
    mean 1, so a loss equal in every term is that loss, whatever the number of terms (6 exits:
    36 terms with KD from all exits, 11 from the last, 6 without KD)."""
    from trainers.config import TrainConfig
    from trainers.weight_strategies import build_strategy

    cfg = TrainConfig(**ARMS[arm]).validate()
    terms = LossTerms.build(6, cfg.kd, cfg.temperature)
    assert len(terms) == {"all": 36, "last": 11, "none": 6}[cfg.kd]
    strategy = build_strategy(cfg, terms)
    assert strategy.weights().mean().item() == pytest.approx(1.0)
    assert inner_loss(terms, strategy.weights(), torch.full((len(terms),), 0.7)).item() == pytest.approx(0.7)
    if cfg.method != "fixed":  # learned weights keep mean 1 wherever φ goes
        with torch.no_grad():
            strategy.loss_weights.phi.copy_(torch.randn(len(terms), generator=torch.Generator().manual_seed(0)) * 2)
        assert strategy.weights().mean().item() == pytest.approx(1.0)
        assert inner_loss(terms, strategy.weights(), torch.full((len(terms),), 0.7)).item() == pytest.approx(0.7)
    # through real exit losses: the same as the explicit weighted mean; "sum" is n times larger
    logits, labels = torch.randn(6, 8, 2), torch.randint(0, 2, (8,))
    losses = term_losses(terms, logits, labels)
    expected = (strategy.weights() * losses).sum() / len(terms)
    assert inner_loss(terms, strategy.weights(), losses).item() == pytest.approx(expected.item(), rel=1e-6)
    summed = LossTerms.build(6, cfg.kd, cfg.temperature, reduction="sum")
    assert inner_loss(summed, strategy.weights(), losses).item() == pytest.approx(len(terms) * expected.item(), rel=1e-6)


def test_gradient_is_a_convex_combination_of_the_terms_gradients(tiny_model):
    """Why the convention matters: clipping at 1.0 sees the gradient norm. Under the mean the
    gradient is a convex combination of the per-term gradients (weights w/n sum to 1), so its norm
    never exceeds the largest single term's, whatever n; the former sum was n times larger."""
    from conftest import make_batch

    model = tiny_model(num_layers=6, num_labels=2).eval()  # no dropout: the same network every pass
    batch = make_batch(batch_size=16, num_labels=2)
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "ids")}
    params = [p for p in model.parameters() if p.requires_grad]

    def grad_norm(loss):
        grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
        return torch.sqrt(sum((g ** 2).sum() for g in grads if g is not None)).item()

    for teachers, scheme in (("all", "uniform"), ("none", "pabee"), ("last", "last")):
        terms = LossTerms.build(6, teachers)
        losses = term_losses(terms, model(**inputs), batch["labels"])
        weights = fixed_weights(scheme, terms)
        mean = grad_norm(inner_loss(terms, weights, losses))
        largest = max(grad_norm(losses[i]) for i in range(len(terms)))
        assert mean <= largest * (1 + 1e-5), scheme
        summed = grad_norm(inner_loss(LossTerms.build(6, teachers, reduction="sum"), weights, losses))
        assert summed == pytest.approx(len(terms) * mean, rel=1e-4)

"""Device placement on a CPU-only machine: everything runs with the model and batches on ``meta``.

A CPU tensor mixed with a meta tensor raises just as a CPU tensor mixed with a CUDA one does, so a
weight, a φ, an optimizer moment or a hypergradient left on the CPU fails here instead of at the
first step on a GPU.
"""

from types import SimpleNamespace

import pytest
import torch

from tests.conftest import make_batch
from trainers.divergence import DivergenceMonitor
from trainers.objective import LossTerms, term_losses
from trainers.train import training_step
from trainers.weight_strategies import BilevelWeights, CrossLevelWeights, FixedWeights, concat_batches

META = torch.device("meta")

STRATEGIES = {
    "fixed-uniform": lambda: (LossTerms.build(3, "all"), lambda t: FixedWeights(t, "uniform")),
    "fixed-pabee": lambda: (LossTerms.build(3, "none"), lambda t: FixedWeights(t, "pabee")),
    "fixed-last": lambda: (LossTerms.build(3, "last"), lambda t: FixedWeights(t, "last")),
    "bilevel": lambda: (LossTerms.build(3, "all"), lambda t: BilevelWeights(t, "softmax", 0.1, 1, 0.01)),
    "clo": lambda: (LossTerms.build(3, "all"), lambda t: CrossLevelWeights(t, "sigmoid", 0.1, 1, 0.01)),
}


class TorchEngine:
    """The four members of a DeepSpeed engine that the training step uses, in plain torch."""

    def __init__(self, module: torch.nn.Module, lr: float = 1e-3):
        self.module = module
        self.optimizer = torch.optim.SGD(module.parameters(), lr=lr)

    def __call__(self, **batch):
        return self.module(**batch)

    def backward(self, loss):
        loss.backward()

    def step(self):
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


@pytest.fixture
def meta_model(tiny_model):
    return tiny_model(num_layers=3, num_labels=3).to(META)


def meta_batches():
    return tuple({k: v.to(META) for k, v in make_batch(batch_size=6, seed=seed).items()} for seed in (1, 2))


def on_meta(*tensors):
    return all(t.device.type == "meta" for t in tensors)


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_method_runs_on_the_models_device(meta_model, name):
    terms, make = STRATEGIES[name]()
    strategy = make(terms).to(META)
    b1, b2 = meta_batches()
    xi = [1e-3] * sum(1 for _ in meta_model.parameters())

    # the objective
    batch = concat_batches(b1, b2)
    losses = term_losses(terms, meta_model(**batch), batch["labels"])
    assert on_meta(losses, strategy.weights(), (strategy.weights() * losses).sum())

    # an outer step (step 0, outer_every 1): the hypergradient, φ and Adam's moments
    outer = strategy.outer_step(meta_model, lambda: b1, lambda: b2, 0, lambda: xi, DivergenceMonitor(META))
    if isinstance(strategy, FixedWeights):
        assert outer is None
    else:
        assert on_meta(outer["hypergradient"], strategy.loss_weights.phi, strategy.weights())
        moments = strategy.optimizer.state[strategy.loss_weights.phi]
        assert on_meta(moments["exp_avg"], moments["exp_avg_sq"])  # Adam keeps its step count on the CPU

    # the whole training step, with a plain-torch engine
    engine = TorchEngine(meta_model)
    draw = SimpleNamespace(b1=lambda: b1, b2=lambda: b2)
    loss, outer = training_step(engine, strategy, terms, draw, 0, lambda: xi, DivergenceMonitor(META))
    assert on_meta(loss, strategy.weights(), *(p for p in meta_model.parameters()))
    if outer is not None:
        assert on_meta(outer["hypergradient"])


@pytest.mark.filterwarnings("ignore:for phi. copying from a non-meta parameter")  # meta holds no values
@pytest.mark.parametrize("cls", [BilevelWeights, CrossLevelWeights])
def test_a_strategy_saved_on_the_cpu_resumes_on_the_models_device(tiny_model, meta_model, cls):
    terms = LossTerms.build(3, "all")
    model = tiny_model(num_layers=3, num_labels=3)
    xi = [1e-3] * sum(1 for _ in model.parameters())
    saved = cls(terms, "softmax", 0.1, 1, 0.01)
    b1, b2 = make_batch(seed=1), make_batch(seed=2)
    saved.outer_step(model, lambda: b1, lambda: b2, 0, lambda: xi)  # φ moved: Adam has moments to save

    resumed = cls(terms, "softmax", 0.1, 1, 0.01).to(META)
    resumed.load_state_dict(saved.state_dict())
    phi = resumed.loss_weights.phi
    moments = resumed.optimizer.state[phi]
    assert on_meta(phi, moments["exp_avg"], moments["exp_avg_sq"])
    # and it keeps training there
    mb1, mb2 = meta_batches()
    outer = resumed.outer_step(meta_model, lambda: mb1, lambda: mb2, 1, lambda: xi, DivergenceMonitor(META))
    moments = resumed.optimizer.state[resumed.loss_weights.phi]
    assert on_meta(outer["hypergradient"], resumed.loss_weights.phi, moments["exp_avg"], moments["exp_avg_sq"])


def test_regression_terms_are_fp32_for_bf16_logits():
    terms = LossTerms.build(2, "all", regression=True)
    logits = torch.tensor([[[1.0], [2.0]], [[1.5], [2.5]]], dtype=torch.bfloat16)
    labels = torch.tensor([3.8, 1.1])
    losses = term_losses(terms, logits, labels)
    assert losses.dtype == torch.float32
    assert losses[0].item() == pytest.approx(((1.0 - 3.8) ** 2 + (2.0 - 1.1) ** 2) / 2, rel=1e-6)

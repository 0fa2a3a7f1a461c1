"""Divergence is contained: a non-finite loss, hypergradient or logit stops the run with
TrainingDiverged (exit code 3 on the command line) instead of a NaN φ or a "completed" run."""

import pickle

import pytest
import torch

from trainers import train as train_module
from trainers import weight_strategies
from trainers.config import TrainConfig
from trainers.errors import ConfigError, EXIT_DIVERGED, TrainingDiverged
from trainers.train import main, run

TINY = dict(model="tiny-random", task="mr", train_subset=64, eval_subset=40, max_length=32, epochs=1,
            batch_size=16, log_every=100, wallclock_eval=False, save_checkpoints=False, threads=1)


def tiny_config(tmp_path, **overrides) -> TrainConfig:
    return TrainConfig(**{**TINY, "output_dir": str(tmp_path / "run"), **overrides})


def capture_strategy(monkeypatch) -> list:
    """Record the strategy ``run`` builds, to look at φ after the run has raised."""
    built = []

    def build(cfg, terms):
        strategy = weight_strategies.build_strategy(cfg, terms)
        move = strategy.to
        strategy.moved_to = []
        strategy.to = lambda device: strategy.moved_to.append(torch.device(device).type) or move(device)
        built.append(strategy)
        return strategy

    monkeypatch.setattr(train_module, "build_strategy", build)
    return built


def test_the_error_carries_step_and_reason_and_survives_pickling():
    err = TrainingDiverged(12, "loss is nan")
    assert str(err) == "diverged at step 12 (loss is nan)" and isinstance(err, RuntimeError)
    copy = pickle.loads(pickle.dumps(err))  # Ray ships a trial's exception to the driver
    assert (copy.step, copy.reason, str(copy)) == (12, "loss is nan", str(err))


@pytest.mark.parametrize("method", ["fixed", "clo"])
def test_the_fault_hook_diverges_at_the_step_it_names(tmp_path, monkeypatch, method):
    built = capture_strategy(monkeypatch)
    with pytest.raises(TrainingDiverged) as caught:
        run(tiny_config(tmp_path, method=method, outer_every=1), quiet=True, fault_step=3)
    assert caught.value.step == 3 and str(caught.value) == "diverged at step 3 (loss is nan)"
    assert not (tmp_path / "run" / "summary.json").exists()
    assert torch.isfinite(built[0].weights()).all(), "the NaN loss must not reach the weights"
    assert built[0].moved_to == ["cpu"], "run puts the strategy on the engine's device"


def test_an_absurd_learning_rate_diverges(tmp_path, monkeypatch):
    with pytest.raises(TrainingDiverged) as caught:  # weight decay alone scales θ by -1e8 per step
        run(tiny_config(tmp_path, lr=1e10, epochs=3), quiet=True)
    assert 1 < caught.value.step <= 12 and str(caught.value).startswith(f"diverged at step {caught.value.step} (")


def test_a_nan_hypergradient_stops_the_run_before_phi_moves(tmp_path, monkeypatch):
    built = capture_strategy(monkeypatch)
    monkeypatch.setattr(weight_strategies, "hypergradient",
                        lambda model, terms, loss_weights, *args, **kwargs: torch.full_like(loss_weights.phi, float("nan")))
    with pytest.raises(TrainingDiverged, match=r"^diverged at step 1 \(hypergradient is not finite\)$"):
        run(tiny_config(tmp_path, method="clo", outer_every=1), quiet=True)
    phi = built[0].loss_weights.phi
    assert torch.equal(phi, torch.zeros_like(phi)), "φ must stay at its last finite value"


def test_a_zero_virtual_step_gives_a_zero_hypergradient_not_nan(tiny_model):
    from tests.conftest import make_batch
    from trainers.objective import LossTerms, LossWeights

    model, terms = tiny_model(), LossTerms.build(3, "all")
    weights = LossWeights(len(terms))
    xi = [0.0] * sum(1 for _ in model.parameters())  # u = ξ v = 0: ε = fd_eps / ‖u‖ would divide by zero
    h = weight_strategies.hypergradient(model, terms, weights, make_batch(seed=1), make_batch(seed=2), xi, 0.01)
    assert torch.equal(h, torch.zeros_like(h))


def test_non_finite_validation_logits_stop_the_run(tmp_path, monkeypatch):
    real = train_module.collect_logits
    monkeypatch.setattr(train_module, "collect_logits", lambda *args: real(*args) * float("nan"))
    with pytest.raises(TrainingDiverged, match=r"^diverged at step 4 \(validation logits are not finite\)$"):
        run(tiny_config(tmp_path), quiet=True)
    assert not (tmp_path / "run" / "summary.json").exists()


def test_the_command_line_reports_divergence_in_one_line_and_exits_3(tmp_path, capsys):
    code = main(["--model", "tiny-random", "--train-subset", "64", "--eval-subset", "40", "--max-length", "32",
                 "--epochs", "1", "--batch-size", "16", "--threads", "1", "--output-dir", str(tmp_path / "run"),
                 "--fault-step", "2"])
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert code == EXIT_DIVERGED == 3
    assert errors == ["error: diverged at step 2 (loss is nan)"], captured.err
    assert captured.err.strip().splitlines()[-1] == errors[0]
    assert '"metric"' not in captured.out, "no summary is printed"
    assert not (tmp_path / "run" / "summary.json").exists()


def test_a_malformed_fault_step_is_bad_input(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:  # argparse: usage and one error line, exit 2
        main(["--model", "tiny-random", "--train-subset", "64", "--output-dir", str(tmp_path / "run"), "--fault-step", "three"])
    assert exited.value.code == 2
    assert "argument --fault-step: must be a (1-based) step number, not 'three'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="fault_step must be a"):
        run(tiny_config(tmp_path), quiet=True, fault_step=0)
    assert not (tmp_path / "run").exists()

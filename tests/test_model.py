"""The multi-exit encoder: its layer runner matches the backbone, and early exit matches the full pass."""

import pytest
import torch

from tests.conftest import make_batch
from trainers.errors import ConfigError
from trainers.model import resolve_model_source
from trainers.policies import make_policy, simulate


@pytest.mark.parametrize("kind", ["bert", "albert"])
def test_last_layer_matches_the_backbones_own_forward(tiny_model, kind):
    model = tiny_model(kind=kind).eval()
    batch = make_batch()
    backbone_out = model.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    runner = model.runner
    hidden = runner.embed(batch["input_ids"], batch["token_type_ids"])
    mask = runner.mask(hidden, batch["attention_mask"])
    for index in range(model.num_layers):
        hidden = runner.layer(index, hidden, mask)
    assert torch.allclose(hidden, backbone_out, atol=1e-6)


@pytest.mark.parametrize("kind", ["bert", "albert"])
@pytest.mark.parametrize("policy", [("patience", 1), ("entropy", 0.995), ("confidence", 0.34)])
def test_early_exit_gives_the_full_forwards_logits_at_the_exit_layer(tiny_model, kind, policy):
    model = tiny_model(num_layers=4, kind=kind, seed=3).eval()
    batch = make_batch(batch_size=16, seq_len=10, seed=4)
    exit_policy = make_policy(*policy)
    with torch.no_grad():
        full = model(**batch)  # [L, B, C]
    expected_layer, expected_logits = simulate(exit_policy, full)
    logits, layer = model.early_exit(exit_policy, **batch)
    assert torch.equal(layer, expected_layer)
    assert torch.allclose(logits, full[layer - 1, torch.arange(16)], atol=1e-5)
    assert torch.allclose(logits, expected_logits, atol=1e-5)
    assert 1 <= layer.min() and layer.max() <= 4


def test_early_exit_computes_no_layer_after_a_sample_has_exited(tiny_model):
    model = tiny_model(num_layers=4).eval()
    batch = make_batch(batch_size=8)
    with torch.no_grad():  # a confidence threshold that lets about half the samples leave at layer 1
        gamma = torch.softmax(model(**batch)[0], -1).max(-1).values.median().item()
    rows_seen = []
    hooks = [layer.register_forward_hook(lambda mod, args, out: rows_seen.append(args[0].shape[0]))
             for layer in model.backbone.encoder.layer]
    logits, layer = model.early_exit(make_policy("confidence", gamma), **batch)
    for hook in hooks:
        hook.remove()
    # layer m runs on exactly the samples that have not exited before it
    expected = [int((layer >= m).sum()) for m in range(1, 5)]
    assert rows_seen == [n for n in expected if n > 0]
    assert sum(rows_seen) == int(layer.sum()), "total layer computations = Σ exit layers"
    assert sum(rows_seen) < 8 * 4


def test_pooling_choices(tiny_model):
    batch = make_batch()
    model = tiny_model(pooling="mean").eval()
    hidden = torch.randn(6, 8, 32)
    mask = batch["attention_mask"]
    pooled = model.pool(hidden, mask)
    assert torch.allclose(pooled[1], hidden[1, : int(mask[1].sum())].mean(0), atol=1e-6)
    cls = tiny_model(pooling="cls")
    assert torch.equal(cls.pool(hidden, mask), hidden[:, 0])


def test_a_missing_model_path_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_model_source(str(tmp_path / "nope"))
    assert resolve_model_source(str(tmp_path)) == str(tmp_path)
    assert resolve_model_source("bert-base-uncased") == "bert-base-uncased"  # a hub name passes through

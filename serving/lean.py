"""Lean forward paths for the served model: a BERT-like backbone's embeddings, layers and exit
heads as plain tensor code, installed on a served instance only where they give the very same
bits as the modules' own forward (``install_lean_paths``, called by ``ExitPolicyModel.load``).

Shipped inside the logged model (``serving.packaging.code_paths``).
"""

from __future__ import annotations


def lean_bert_layer(runner):
    """The encoder layers of a BERT-like backbone (sdpa attention, eval mode) as plain tensor code,
    without transformers' per-call wrappers (deprecation shims, signature inspection, chunking),
    which cost about a tenth of a layer per call at batch 1 on a CPU. Returns a drop-in for
    ``runner.layer``, or None where the backbone is not one this reproduces. ``ExitPolicyModel``
    installs it only after checking that it gives the very same bits as the backbone's own layers."""
    import torch.nn.functional as F

    config = runner.backbone.config
    if (runner.kind != "bert" or getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False)
            or getattr(config, "_attn_implementation", None) != "sdpa" or getattr(config, "chunk_size_feed_forward", 0)
            or getattr(config, "position_embedding_type", "absolute") != "absolute"):
        return None
    layers = runner.backbone.encoder.layer
    try:
        parts = [(layer.attention.self, layer.attention.output, layer.intermediate, layer.output) for layer in layers]
    except AttributeError:
        return None

    def layer(index: int, hidden, mask):
        attention, attention_out, intermediate, output = parts[index]
        shape = (*hidden.shape[:-1], -1, attention.attention_head_size)
        query = attention.query(hidden).view(shape).transpose(1, 2)
        key = attention.key(hidden).view(shape).transpose(1, 2)
        value = attention.value(hidden).view(shape).transpose(1, 2)
        mixed = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=0.0,
                                               scale=attention.scaling, is_causal=False)
        mixed = mixed.transpose(1, 2).contiguous().reshape(*hidden.shape[:-1], -1).contiguous()
        attended = attention_out.LayerNorm(attention_out.dense(mixed) + hidden)
        return output.LayerNorm(output.dense(intermediate.intermediate_act_fn(intermediate.dense(attended))) + attended)

    return layer


def lean_bert_embed(runner):
    """The word + token type + position embeddings and their LayerNorm (eval mode), without the
    module's bookkeeping: a drop-in for ``runner.embed`` of a BERT-like backbone, or None."""
    embeddings = getattr(runner.backbone, "embeddings", None)
    names = ("word_embeddings", "token_type_embeddings", "position_embeddings", "LayerNorm")
    if runner.kind != "bert" or embeddings is None or not all(hasattr(embeddings, n) for n in names) \
            or getattr(runner.backbone.config, "position_embedding_type", "absolute") != "absolute":
        return None
    word, kind, position, norm = (getattr(embeddings, n) for n in names)

    def embed(input_ids, token_type_ids):
        types = kind.weight[0] if token_type_ids is None else kind(token_type_ids)  # no ids: all type 0
        return norm(word(input_ids) + types + position.weight[:input_ids.shape[1]])

    return embed


def lean_exit_head(head):
    """An exit head's dense, tanh and classifier (eval mode: dropout is the identity) as one call."""
    import torch
    import torch.nn.functional as F

    dense, classifier = head.dense, head.classifier
    return lambda pooled: F.linear(torch.tanh(F.linear(pooled, dense.weight, dense.bias)), classifier.weight,
                                   classifier.bias)


def install_lean_paths(model) -> list[str]:
    """Swap in the lean embedding, layers and exit heads of this model instance wherever they give
    the very same bits as the modules' own forward on probe inputs (with and without padding);
    returns what was swapped. Training never sees them: they live on the served instance only."""
    import torch

    runner = model.runner
    config = runner.backbone.config
    parameter = next(model.parameters())
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 9, config.hidden_size, generator=generator).to(parameter)
    ids = torch.randint(1, min(config.vocab_size, 1000), (3, 9), generator=generator).to(parameter.device)
    padding = torch.tensor([[1] * 9, [1] * 5 + [0] * 4, [1] * 7 + [0] * 2], device=parameter.device)
    types = [None, torch.zeros_like(ids)] + ([padding] if getattr(config, "type_vocab_size", 1) > 1 else [])
    installed = []

    def same(lean, own, probes) -> bool:
        try:
            return all(torch.equal(lean(*probe), own(*probe)) for probe in probes)
        except Exception:  # noqa: BLE001 - a backbone this does not know: keep its own forward
            return False

    if model.training:
        return installed
    with torch.inference_mode():
        embed = lean_bert_embed(runner)
        if embed is not None and same(embed, runner.embed, [(ids, t) for t in types]):
            runner.embed = embed
            installed.append("embeddings")
        layer = lean_bert_layer(runner)
        masks = [None, runner.mask(hidden, padding)]
        if layer is not None and same(layer, runner.layer, [(i, hidden, m) for m in masks for i in range(runner.num_layers)]):
            runner.layer = layer
            installed.append("layers")
        heads = [lean_exit_head(head) for head in model.exits]
        if all(same(lean, head, [(hidden[:, 0],)]) for lean, head in zip(heads, model.exits)):
            for lean, head in zip(heads, model.exits):
                head.forward = lean
            installed.append("exit heads")
    return installed

"""The multi-exit encoder (method §1): a pretrained Transformer with a classifier exit after every layer.

Two forward paths share one layer runner:
- ``forward`` runs every layer on the whole batch and returns all exits' logits ``[L, B, C]``;
  training and cached-logit evaluation use it.
- ``early_exit`` runs layer by layer and drops each sample from the batch as soon as the exit
  policy lets it leave, so no layer is computed for a sample after it has exited.

The layer runner drives the backbone's own embedding and layer modules, so a BERT, RoBERTa,
MiniLM or ALBERT checkpoint loads with its pretrained weights untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from trainers.errors import ConfigError
from trainers.model_source import EMBEDDED_MODEL, TINY_MODEL, embedded_model_path, resolve_model_source  # noqa: F401 - re-exported

POOLINGS = ("auto", "cls", "mean")


def default_pooling(config) -> str:
    """Sentence-embedding checkpoints were trained with mean pooling; classic BERT/ALBERT use [CLS].

    Measured (method §1): with ``cls`` pooling MiniLM's exits 1–3 never left the majority class.
    """
    name = (getattr(config, "_name_or_path", "") or "").lower()
    return "mean" if "minilm" in name or "sentence-transformers" in name else "cls"


class ExitHead(nn.Module):
    """Pooler (dense + tanh), dropout, linear to C classes: the ordinary BERT classification head."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(torch.tanh(self.dense(pooled))))


class _LayerRunner:
    """Runs a `transformers` encoder one layer at a time.

    Supported families: BERT-like (``embeddings`` + ``encoder.layer``: BERT, RoBERTa, MiniLM,
    ELECTRA, XLM-R) and ALBERT (one shared layer group reused across the depth).
    """

    def __init__(self, backbone: nn.Module):
        self.backbone = backbone
        encoder = getattr(backbone, "encoder", None)
        if encoder is not None and hasattr(encoder, "albert_layer_groups"):
            self.kind = "albert"
            self.num_layers = backbone.config.num_hidden_layers
        elif encoder is not None and hasattr(encoder, "layer") and hasattr(backbone, "embeddings"):
            self.kind = "bert"
            self.num_layers = len(encoder.layer)
        else:
            raise ConfigError(
                f"unsupported encoder architecture '{type(backbone).__name__}': the multi-exit model "
                "needs a BERT-like (embeddings + encoder.layer) or ALBERT backbone"
            )

    def embed(self, input_ids, token_type_ids) -> torch.Tensor:
        hidden = self.backbone.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        if self.kind == "albert":
            hidden = self.backbone.encoder.embedding_hidden_mapping_in(hidden)
        return hidden

    def mask(self, hidden: torch.Tensor, attention_mask: torch.Tensor):
        from transformers.masking_utils import create_bidirectional_mask

        # No "all ones? then no mask" shortcut: that test reads the mask's value (a host sync on
        # every forward); with dynamic padding a training batch is rarely unpadded anyway.
        return create_bidirectional_mask(
            config=self.backbone.config, inputs_embeds=hidden, attention_mask=attention_mask,
            allow_is_bidirectional_skip=False,
        )

    def layer(self, index: int, hidden: torch.Tensor, mask) -> torch.Tensor:
        """Apply layer ``index`` (0-based)."""
        if self.kind == "albert":
            config = self.backbone.config
            group = int(index / (config.num_hidden_layers / config.num_hidden_groups))
            return self.backbone.encoder.albert_layer_groups[group](hidden, mask)
        out = self.backbone.encoder.layer[index](hidden, mask)
        return out[0] if isinstance(out, tuple) else out


class MultiExitEncoder(nn.Module):
    def __init__(self, backbone: nn.Module, num_labels: int, pooling: str = "cls", dropout: float | None = None):
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise ConfigError(f"unknown pooling '{pooling}'; choose cls or mean")
        self.backbone = backbone
        self.runner = _LayerRunner(backbone)
        self.pooling = pooling
        self.num_labels = num_labels
        config = backbone.config
        dropout = config.hidden_dropout_prob if dropout is None else dropout
        self.exits = nn.ModuleList(
            ExitHead(config.hidden_size, num_labels, dropout) for _ in range(self.runner.num_layers)
        )
        self._init_exits(config)
        # The backbone's own pooler is never called (each exit has its own); keeping it would leave
        # parameters without gradients in the optimizer.
        if getattr(backbone, "pooler", None) is not None:
            backbone.pooler = None

    @property
    def num_layers(self) -> int:
        return self.runner.num_layers

    def _init_exits(self, config) -> None:
        pooler = getattr(self.backbone, "pooler", None)
        pretrained_dense = getattr(pooler, "dense", None)
        for head in self.exits:
            nn.init.normal_(head.dense.weight, std=config.initializer_range)
            nn.init.zeros_(head.dense.bias)
            nn.init.normal_(head.classifier.weight, std=config.initializer_range)
            nn.init.zeros_(head.classifier.bias)
            # With [CLS] pooling the pretrained pooler is the right start for every exit, as in
            # ordinary fine-tuning. Mean-pooled embeddings never went through it.
            if self.pooling == "cls" and isinstance(pretrained_dense, nn.Linear):
                head.dense.load_state_dict(pretrained_dense.state_dict())

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """[CLS] or the mean over real tokens; ``attention_mask=None``: no padding (the same sums)."""
        if self.pooling == "cls":
            return hidden[:, 0]
        if attention_mask is None:
            return hidden.sum(1) / float(hidden.shape[1])
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)

    def forward(self, input_ids, attention_mask, token_type_ids=None, **_) -> torch.Tensor:
        """All exits' logits, ``[L, B, C]``."""
        hidden = self.runner.embed(input_ids, token_type_ids)
        mask = self.runner.mask(hidden, attention_mask)
        logits = []
        for index, head in enumerate(self.exits):
            hidden = self.runner.layer(index, hidden, mask)
            logits.append(head(self.pool(hidden, attention_mask)))
        return torch.stack(logits)

    @torch.no_grad()
    def early_exit(self, policy, input_ids, attention_mask=None, token_type_ids=None, **_):
        """Incremental inference: returns ``(exit_logits [B, C], exit_layer [B])`` (layers 1-based).

        Samples that exit are removed from the running batch, so their later layers are never computed.
        The attention mask is built once, as in ``forward``, and cut down with the batch; the running
        tensors are only re-indexed at a layer where some sample leaves, and then also cut to the
        longest running row (the positions after it are padding for every row left).

        Host syncs: at most one per layer; none for a policy that never exits, and none at a layer
        before the policy's ``first_exit_layer``, where no row can leave yet (patience p: layer p + 1).
        The policy decides on the device; one integer comes back to the host per layer (how many rows
        stay, and how long the longest of them is), and every re-indexing uses index tensors of that
        known size, never a boolean mask (whose result size only the device knows: a sync each on a GPU).

        ``attention_mask=None`` says that no row is padded (a single request, rows of one length):
        no mask is built and nothing is cut, for the same logits and exits as an all-ones mask.
        """
        batch, width = input_ids.shape
        device = input_ids.device
        out_logits = None
        out_layer = torch.full((batch,), self.num_layers, dtype=torch.long, device=device)
        running = torch.arange(batch, device=device)
        padded = attention_mask is not None
        # 1 + the position of each row's last real token: what the batch must stay wide enough for
        ends = (attention_mask * torch.arange(1, width + 1, device=device)).amax(dim=1) if padded else None
        hidden = self.runner.embed(input_ids, token_type_ids)
        mask = self.runner.mask(hidden, attention_mask) if padded else None
        decides = getattr(policy, "kind", None) != "none"  # the full model needs no decision
        first_exit = getattr(policy, "first_exit_layer", 1)  # nor a layer where no row can leave yet
        state = policy.start(batch, device)
        for index, head in enumerate(self.exits):
            hidden = self.runner.layer(index, hidden, mask)
            logits = head(self.pool(hidden, attention_mask))
            if out_logits is None:
                out_logits = logits.new_zeros((batch, logits.shape[-1]))
            if index + 1 == self.num_layers:  # everyone still running answers here (out_layer's default)
                out_logits.index_copy_(0, running, logits)
                break
            if not decides:
                continue
            state, exit_now = policy.step(state, index + 1, logits)
            if index + 1 < first_exit:
                continue
            rows, seq = running.shape[0], hidden.shape[1]
            keep = ~exit_now
            # the layer's one host sync: rows that stay and their longest length, packed in one integer
            if padded:
                stay, longest = divmod(int(keep.sum() * (seq + 1) + (ends * keep).amax()), seq + 1)
            else:
                stay, longest = int(keep.sum()), seq
            if stay == rows:
                continue
            if stay == 0:  # everyone leaves (always, for a single request): no re-indexing
                out_logits.index_copy_(0, running, logits)
                out_layer.index_fill_(0, running, index + 1)
                break
            order = torch.sort(exit_now.to(torch.int32), stable=True).indices  # staying rows first, in order
            leaving, kept = order[stay:], order[:stay]
            out_logits.index_copy_(0, running[leaving], logits[leaving])
            out_layer.index_fill_(0, running[leaving], index + 1)
            running, hidden = running[kept], hidden[kept]
            state = policy.select(state, kept)
            if not padded:
                continue
            attention_mask, ends, mask = attention_mask[kept], ends[kept], _rows(mask, kept, rows)
            # Positions past the longest running row are padding for every row left: drop them.
            if 0 < longest < seq:
                hidden, attention_mask, mask = hidden[:, :longest], attention_mask[:, :longest], _columns(mask, longest)
        return out_logits, out_layer


def _rows(mask, kept: torch.Tensor, rows: int):
    """The attention mask of the rows still running (None and batch-broadcast masks stay as they are)."""
    if mask is None or mask.dim() == 0 or mask.shape[0] != rows:
        return mask
    return mask[kept]


def _columns(mask, width: int):
    """The attention mask ``[B, 1, T, T]`` (or ``[B, 1, 1, T]``) cut to the first ``width`` positions."""
    if mask is None:
        return None
    mask = mask[..., :width]
    return mask[..., :width, :] if mask.shape[-2] > width else mask


@dataclass(frozen=True)
class ModelSpec:
    """What to build: from a typed config, validated at the edge (see trainers.config)."""

    source: str  # resolved path or hub name
    num_labels: int
    pooling: str = "auto"
    attn_implementation: str = "sdpa"
    dropout: float | None = None  # None: the pretrained config's own


def dropout_overrides(dropout: float | None) -> dict:
    """Config keys of the backbone's dropout (BERT, ALBERT, RoBERTa and ELECTRA share these names)."""
    return {} if dropout is None else {"hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}


def build_model(spec: ModelSpec) -> tuple[MultiExitEncoder, object]:
    """Load the pretrained backbone and tokenizer, and put an exit on every layer."""
    from transformers import AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(spec.source)
        backbone = AutoModel.from_pretrained(spec.source, attn_implementation=spec.attn_implementation,
                                             **dropout_overrides(spec.dropout))
    except OSError as err:
        raise ConfigError(
            f"cannot load model '{spec.source}': {str(err).splitlines()[0]}. Without network, pass a "
            f"local folder (--model path/to/model) or the embedded '{EMBEDDED_MODEL}'"
        ) from None
    pooling = default_pooling(backbone.config) if spec.pooling == "auto" else spec.pooling
    model = MultiExitEncoder(backbone, spec.num_labels, pooling, dropout=spec.dropout)
    # from_pretrained hands the backbone back in eval mode while the new exits are in train mode:
    # without this the θ-steps would run without the backbone's dropout until the first
    # evaluation (or, for bilevel and clo, the first outer step) switched it on.
    return model.train(), tokenizer


# Families whose position ids start after the padding index (position = padding_idx + 1 + token index).
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "longformer")


def position_limit(backbone_config) -> int | None:
    """How many tokens the backbone's absolute position embeddings can hold (None: no fixed table)."""
    limit = getattr(backbone_config, "max_position_embeddings", None)
    if not isinstance(limit, int) or limit <= 0:
        return None
    if getattr(backbone_config, "model_type", "") in _OFFSET_POSITIONS:
        limit -= int(getattr(backbone_config, "pad_token_id", 1) or 0) + 1
    return limit


def check_max_length(backbone_config, max_length: int) -> None:
    """Refuse a ``max_length`` longer than the position embeddings: the first long example would
    fail deep inside the embedding lookup (an index error, or a CUDA device-side assert)."""
    limit = position_limit(backbone_config)
    if limit is not None and max_length > limit:
        kind = getattr(backbone_config, "model_type", "") or "this"
        raise ConfigError(f"max_length {max_length} is longer than the model's {limit} position embeddings "
                          f"({kind} model); use --max-length {limit} or less")


def tiny_backbone(num_layers: int = 3, hidden: int = 32, vocab_size: int = 100, seed: int = 0,
                  attn_implementation: str = "eager", kind: str = "bert", dropout: float | None = None):
    """A randomly initialized small encoder, for tests and the smoke preset (no download)."""
    from transformers import AlbertConfig, AlbertModel, BertConfig, BertModel

    torch.manual_seed(seed)
    common = dict(
        vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=num_layers, num_attention_heads=2,
        intermediate_size=2 * hidden, max_position_embeddings=128, attn_implementation=attn_implementation,
        **dropout_overrides(dropout),
    )
    if kind == "albert":
        return AlbertModel(AlbertConfig(embedding_size=16, **common))
    return BertModel(BertConfig(**common))


def load_tokenizer(model: str):
    """The tokenizer of a training config's ``model`` (the embedded MiniLM's for ``tiny-random``)."""
    from transformers import AutoTokenizer

    source = embedded_model_path() if model == TINY_MODEL else resolve_model_source(model)
    return AutoTokenizer.from_pretrained(source)

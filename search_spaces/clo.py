"""clo: LeeBERT's cross-level optimization of the loss weights (method §4)."""

from search_spaces import IntRange, LogUniform, Uniform  # noqa: F401 (for the optional knobs below)

SPACE = {
    "lr": LogUniform(1e-5, 3e-4),        # inner: backbone learning rate
    "head_lr": LogUniform(1e-4, 3e-3),   # inner: exit heads' learning rate
    "lr_outer": LogUniform(1e-3, 1e-1),  # outer: Adam step size on the loss-weight logits φ
    # Optional knobs; uncomment to search them too (each dimension needs more trials):
    # "temperature": Uniform(1.0, 4.0),  # KD temperature τ
    # "xi": LogUniform(1e-6, 1e-3),      # virtual-step size ξ (default: the inner learning rate)
    # "outer_every": IntRange(2, 20, log=True),
}

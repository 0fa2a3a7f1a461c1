"""bilevel: DARTS-style second-order bi-level optimization of the loss weights (method §4).

The outer knobs are searched with the inner ones: with too few or too small outer steps the
weights never leave 1.0 and the arm is fixed-uniform at a higher price (docs/method.md,
"Search spaces of the learned arms", gives the measurement behind the ranges).
"""

from search_spaces import IntRange, LogUniform, Uniform  # noqa: F401 (Uniform: for the optional knob below)

SPACE = {
    "lr": LogUniform(1e-5, 3e-4),        # inner: backbone learning rate
    "head_lr": LogUniform(1e-4, 3e-3),   # inner: exit heads' learning rate
    "lr_outer": LogUniform(1e-3, 3e-1),  # outer: Adam step size on the loss-weight logits φ
    "outer_every": IntRange(2, 20, log=True),  # steps between loss-weight updates (2: cost 3.1x fixed, 20: 1.2x)
    # Optional knob; uncomment to search it too (each dimension needs more trials):
    # "temperature": Uniform(1.0, 4.0),  # KD temperature τ
}

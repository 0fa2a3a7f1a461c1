"""fixed: constant loss weights (the baselines). Only the inner optimizer is tuned."""

from search_spaces import LogUniform

SPACE = {
    "lr": LogUniform(1e-5, 3e-4),       # backbone learning rate
    "head_lr": LogUniform(1e-4, 3e-3),  # exit heads' learning rate
}

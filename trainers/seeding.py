"""Seeds and random streams: every seed derived from a run's seed and a purpose (stable on any
machine), the seeding of a process, and the random state a checkpoint saves and restores."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch


def derive_seed(*parts) -> int:
    """A 63-bit seed from any tuple of ints/strings; stable across runs and machines (unlike hash())."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rank_seed(seed: int, rank: int, *more: int) -> int:
    """The torch seed of one data-parallel rank (dropout), derived from the trial seed and the rank."""
    return derive_seed("dropout", seed, rank, *more)


def rng_state() -> dict:
    """This process's random streams: CPU, and its own current GPU's (not every visible GPU's, so
    a checkpoint restores onto a node with another GPU count)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict | None) -> bool:
    """Restore what ``rng_state`` saved; False when there is nothing to restore."""
    if state is None:
        return False
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    return True

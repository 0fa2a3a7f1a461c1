"""Seeds: one derivation of every seed from a run's seed and a purpose, stable on any machine."""

from __future__ import annotations

import hashlib


def derive_seed(*parts) -> int:
    """A 63-bit seed from any tuple of ints/strings; stable across runs and machines (unlike hash())."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)

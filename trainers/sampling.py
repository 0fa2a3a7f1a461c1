"""Seeded sampling of examples: stratified subsets, the D1/D2 halves, and the training batches.

Randomness is always derived from ``seed`` plus a purpose-specific salt (``derive_seed``), so
the validation slice, the subsets, the halves and the sampler are independent of each other
and reproducible on any machine (torch's CPU generator is platform independent).
"""

from __future__ import annotations

import functools

import torch

from trainers.errors import ConfigError
from trainers.seeding import derive_seed

REGRESSION_BINS = 5  # quantile bins used to stratify a regression target


def _strata(labels: torch.Tensor, is_regression: bool) -> torch.Tensor:
    """Stratum of each example: its class, or its quantile bin for a regression target."""
    if not is_regression:
        return labels.long()
    values = labels.double()
    edges = torch.quantile(values, torch.linspace(0, 1, REGRESSION_BINS + 1, dtype=torch.float64)[1:-1])
    return torch.bucketize(values, edges)


def _stratified_order(labels: torch.Tensor, seed: int, is_regression: bool) -> torch.Tensor:
    """A seeded order of all examples whose every prefix is (within 1 per stratum) proportional.

    The j-th of the s shuffled members of a stratum gets the key (j + 0.5) / s, i.e. members are
    spread evenly over [0, 1]; sorting all examples by key (ties broken at random) interleaves
    the strata in proportion to their sizes.
    """
    n = len(labels)
    generator = _generator(seed, "stratified_order")
    strata = _strata(labels, is_regression)
    keys = torch.empty(n, dtype=torch.float64)
    for stratum in torch.unique(strata):
        members = torch.nonzero(strata == stratum).squeeze(1)
        shuffled = members[torch.randperm(len(members), generator=generator)]
        keys[shuffled] = (torch.arange(len(members), dtype=torch.float64) + 0.5) / len(members)
    tie_break = torch.randperm(n, generator=generator)
    order = torch.sort(keys[tie_break], stable=True).indices
    return tie_break[order]


def stratified_subset(labels: torch.Tensor, n: int, seed: int, is_regression: bool = False) -> torch.Tensor:
    """Sorted indices of a seeded stratified sample of size ``n`` (all indices if ``n`` >= len).

    Samples are nested: the sample of size n is contained in the sample of size n + 1.
    """
    if n >= len(labels):
        return torch.arange(len(labels))
    return torch.sort(_stratified_order(labels, seed, is_regression)[:n]).values


def stratified_halves(
    labels: torch.Tensor, seed: int, is_regression: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices into two disjoint halves (D1, D2), each stratum split evenly.

    Each stratum is shuffled, then examples alternate between the halves; the alternation runs
    on across strata, so per stratum and overall the halves differ by at most one example.
    """
    generator = _generator(seed, "halves")
    strata = _strata(labels, is_regression)
    chunks = []
    for stratum in torch.unique(strata):
        members = torch.nonzero(strata == stratum).squeeze(1)
        chunks.append(members[torch.randperm(len(members), generator=generator)])
    order = torch.cat(chunks) if chunks else torch.empty(0, dtype=torch.long)
    return torch.sort(order[0::2]).values, torch.sort(order[1::2]).values


def _generator(*parts) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


@functools.lru_cache(maxsize=8)  # a batch touches at most 2 passes; room for a few samplers (D1, D2, ...)
def _permutation(n: int, seed: int, salt: int, k: int) -> torch.Tensor:
    return torch.randperm(n, generator=_generator(seed, salt, k))


def batch_indices(n: int, batch_size: int, step: int, seed: int, salt: int = 0) -> torch.Tensor:
    """Indices of training batch ``step``: a stateless sampler, so resuming is exact.

    Conceptually an infinite stream of concatenated random permutations of range(n), the k-th
    seeded from (seed, salt, k); batch ``step`` is stream positions
    [step * batch_size, (step + 1) * batch_size). Batches are always full and every example
    appears once per pass; a batch may straddle two passes.
    """
    if n <= 0:
        raise ConfigError("cannot sample batches from an empty training set; check the data and train_subset")
    if batch_size <= 0:
        raise ConfigError(f"batch_size must be > 0 (got {batch_size})")
    if step < 0:
        raise ValueError(f"step must be >= 0 (got {step})")
    position, stop = step * batch_size, (step + 1) * batch_size
    parts = []
    while position < stop:
        k, offset = divmod(position, n)
        take = min(n - offset, stop - position)
        parts.append(_permutation(n, seed, salt, k)[offset:offset + take])
        position += take
    return torch.cat(parts)  # a copy: callers must never alias the cached permutations


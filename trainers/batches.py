"""Tokenized splits and their batches: tokenizing rows into a ``Split``, padding examples into a batch.

Every split keeps, per example, an id ``split_code * ID_STRIDE + source row number``
(train=0, validation=1, test=2) so predictions can always be traced back to a file row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Sequence

import torch

from trainers.errors import ConfigError
from trainers.tasks import TaskSpec

if TYPE_CHECKING:
    from trainers.data_files import Rows

SPLIT_CODES = {"train": 0, "validation": 1, "test": 2}
ID_STRIDE = 1_000_000_000  # ids are split_code * ID_STRIDE + source row number


@dataclass
class Split:
    name: str  # "train" | "validation" | "test"
    input_ids: list[list[int]]  # tokenized, truncated, not padded
    token_type_ids: list[list[int]]
    labels: torch.Tensor  # long (classification) or float32 (regression), [N]
    ids: torch.Tensor  # long [N]: split_code * ID_STRIDE + source row number

    def __len__(self) -> int:
        return len(self.input_ids)


def labels_tensor(spec: TaskSpec, labels: Sequence) -> torch.Tensor:
    return torch.tensor(labels, dtype=torch.float32 if spec.is_regression else torch.long)


def tokenize(name: str, spec: TaskSpec, rows: Rows, tokenizer, max_length: int) -> Split:
    second = rows.texts[1] if len(rows.texts) > 1 else None
    encoded = tokenizer(rows.texts[0], second, truncation=True, max_length=max_length)
    input_ids = [list(ids) for ids in encoded["input_ids"]]
    # Tokenizers without segment ids (RoBERTa-style) still get a tensor the model can ignore.
    segments = encoded.get("token_type_ids")
    token_type_ids = [list(t) for t in segments] if segments is not None else [[0] * len(ids) for ids in input_ids]
    ids = torch.tensor(rows.rows, dtype=torch.long) + SPLIT_CODES[name] * ID_STRIDE
    return Split(name, input_ids, token_type_ids, labels_tensor(spec, rows.labels), ids)


def collate(split: Split, indices: torch.Tensor | list[int], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Batch the given examples, right-padded to the longest one in this batch."""
    picked = indices.tolist() if isinstance(indices, torch.Tensor) else list(indices)
    width = max((len(split.input_ids[i]) for i in picked), default=0)
    input_ids = torch.full((len(picked), width), pad_token_id, dtype=torch.long)
    token_type_ids = torch.zeros((len(picked), width), dtype=torch.long)
    attention_mask = torch.zeros((len(picked), width), dtype=torch.long)
    for row, i in enumerate(picked):
        length = len(split.input_ids[i])
        input_ids[row, :length] = torch.tensor(split.input_ids[i], dtype=torch.long)
        token_type_ids[row, :length] = torch.tensor(split.token_type_ids[i], dtype=torch.long)
        attention_mask[row, :length] = 1
    index = torch.tensor(picked, dtype=torch.long)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": token_type_ids,
        "labels": split.labels[index],
        "ids": split.ids[index],
    }


def eval_batches(split: Split, batch_size: int, pad_token_id: int) -> Iterator[tuple[torch.Tensor, dict]]:
    """Yield (positions, batch) over every example once, longest first so padding stays small.

    Longest first also means an out-of-memory shows up on the first batch, not the last.
    """
    if batch_size <= 0:
        raise ConfigError(f"the evaluation batch size must be > 0 (got {batch_size})")
    lengths = torch.tensor([len(ids) for ids in split.input_ids], dtype=torch.long)
    order = torch.sort(lengths, descending=True, stable=True).indices
    for start in range(0, len(order), batch_size):
        positions = order[start:start + batch_size]
        yield positions, collate(split, positions, pad_token_id)


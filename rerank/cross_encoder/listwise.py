"""The list-wise loss: each liked target against its own negatives, softmax cross-entropy.

:func:`rerank.cross_encoder.pairs.build_examples` writes a positive followed by the negatives
sampled for it (random items and the first stage's hard candidates). A list is that run; the
loss is minus the log of the positive's softmax share within it, as the ranking stage's
lambdarank lists and the validation's NDCG@10 judge a list, not a pair. Dislikes (a negative
with no target of its own) belong to no list.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rerank.cross_encoder.pairs import Example

if TYPE_CHECKING:
    from torch import Tensor

NEGATIVE_KINDS = frozenset({"random", "hard"})


def example_lists(examples: Sequence[Example]) -> list[list[int]]:
    """Index runs of ``examples``: a positive, then the negatives sampled for it (lists
    without a negative are left out: they carry no ranking signal)."""
    out: list[list[int]] = []
    current: list[int] | None = None
    for n, example in enumerate(examples):
        if example.kind == "positive":
            if current is not None and len(current) > 1:
                out.append(current)
            current = [n]
        elif example.kind in NEGATIVE_KINDS and current is not None:
            current.append(n)
        else:  # a dislike: it ends the run before it
            if current is not None and len(current) > 1:
                out.append(current)
            current = None
    if current is not None and len(current) > 1:
        out.append(current)
    return out


def list_batches(lists: Sequence[list[int]], batch_size: int, seed: int) -> list[list[list[int]]]:
    """The lists shuffled by ``seed`` and packed into batches of about ``batch_size`` pairs
    (whole lists; at least one per batch)."""
    order = list(range(len(lists)))
    random.Random(seed).shuffle(order)
    batches: list[list[list[int]]] = []
    batch: list[list[int]] = []
    pairs = 0
    for n in order:
        if batch and pairs + len(lists[n]) > batch_size:
            batches.append(batch)
            batch, pairs = [], 0
        batch.append(lists[n])
        pairs += len(lists[n])
    if batch:
        batches.append(batch)
    return batches


def listwise_loss(logits: Tensor, sizes: Sequence[int]) -> Tensor:
    """Mean over lists of the softmax cross-entropy of each list's first row (its positive),
    for ``logits`` of the lists' rows, list after list."""
    import torch

    parts = torch.split(logits.reshape(-1), list(sizes))
    padded = torch.nn.utils.rnn.pad_sequence(list(parts), batch_first=True, padding_value=-1e9)
    target = torch.zeros(len(sizes), dtype=torch.long, device=logits.device)
    return torch.nn.functional.cross_entropy(padded, target)

"""Sample ids of a SimCSE batch from its token ids, for duplicate masking: a sentence that
occurs twice in a batch must not be its own negative.

Ids come from the tokens the encoder sees (padding excluded), not from the embeddings, which
dropout makes differ between two copies of one sentence."""

from __future__ import annotations

import hashlib
from typing import Optional, Sequence

import torch
from torch import Tensor


def token_keys(input_ids: Tensor, attention_mask: Tensor) -> list:
    """One hashable key per row: a digest of the row's unpadded token ids."""
    ids, mask = input_ids.cpu(), attention_mask.cpu().bool()
    return [hashlib.blake2b(row[keep].numpy().tobytes(), digest_size=16).digest() for row, keep in zip(ids, mask)]


def duplicate_ids(anchors: Sequence, positives: Sequence, hard_negatives: Optional[Sequence] = None
                  ) -> tuple[Tensor, Optional[Tensor]]:
    """(pair ids (n,), hard-negative ids (n,) or None) of a batch given each row's sentence keys.

    Rows that share a sentence, as anchor or as positive, are one sample (the union of such
    links): an NLI premise twice with two entailments, or one sentence twice in unsupervised
    SimCSE, so that neither row's key is the other's negative. A hard negative equal to a
    sentence of some row gets that row's id, so that it is no negative for that row (-1 else)."""
    n = len(anchors)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    row_of: dict = {}
    for i in range(n):
        for key in (anchors[i], positives[i]):
            j = row_of.setdefault(key, i)
            a, b = find(i), find(j)
            if a != b:
                parent[max(a, b)] = min(a, b)
    pair_ids = torch.tensor([find(i) for i in range(n)], dtype=torch.int64)
    if hard_negatives is None:
        return pair_ids, None
    negative_ids = torch.tensor([int(pair_ids[row_of[key]]) if key in row_of else -1 for key in hard_negatives],
                                dtype=torch.int64)
    return pair_ids, negative_ids

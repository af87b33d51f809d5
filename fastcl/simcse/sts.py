"""Semantic similarity evaluation of sentence embeddings: Spearman and Pearson correlation (x 100)
between the cosine similarity of embeddings and human scores.

- any STS file: the STS-B layout (tab-separated, the score in column 5 and the sentences in 6
  and 7, or a header naming sentence1/sentence2/score), SICK (sentence_A, sentence_B,
  relatedness_score), or plain `sentence1<TAB>sentence2<TAB>score` lines;
- built in, from the gensim wheel's test data: the Lee et al. (2005) document similarity
  benchmark (50 news documents, the 50x50 mean human judgements), SimLex-999 and WordSim-353.
"""

from __future__ import annotations

import csv
import math
import os
from typing import Optional, Sequence

import torch
from torch import Tensor

from ..engine import progress as heartbeat
from .data import gensim_test_file, not_utf8


def _ranks(x: Tensor) -> Tensor:
    """Ranks from 1, ties sharing their average rank (as scipy.stats.rankdata)."""
    order = torch.argsort(x, stable=True)
    sorted_x = x[order]
    ranks = torch.empty_like(x, dtype=torch.float64)
    n, i = x.numel(), 0
    boundaries = torch.nonzero(sorted_x[1:] != sorted_x[:-1]).flatten().tolist() + [n - 1]
    for end in boundaries:
        ranks[order[i:end + 1]] = (i + end) / 2 + 1
        i = end + 1
    return ranks


def pearson(x: Tensor, y: Tensor) -> float:
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    return float((x * y).sum() / (x.norm() * y.norm()))


def spearman(x: Tensor, y: Tensor) -> float:
    return pearson(_ranks(x.double()), _ranks(y.double()))


def _check_gold(gold: Tensor) -> None:
    """Human scores that a correlation can be measured against."""
    if gold.numel() < 2:
        raise ValueError(f"{gold.numel()} scored pair(s); need at least 2")
    if not bool(torch.isfinite(gold).all()):
        raise ValueError("the gold scores must be finite")
    if bool((gold == gold[0]).all()):
        raise ValueError(f"every gold score is {float(gold[0])}; no correlation is defined")


def correlations(predicted: Tensor, gold: Tensor) -> dict:
    if predicted.numel() != gold.numel():
        raise ValueError(f"need two equally long score lists, got {predicted.numel()} and {gold.numel()}")
    _check_gold(gold)
    return dict(spearman=100 * spearman(predicted, gold), pearson=100 * pearson(predicted, gold), pairs=gold.numel())


def pair_similarities(model, first: Sequence[str], second: Sequence[str], batch_size: int = 64,
                      max_length=None) -> Tensor:
    """Cosine similarity of each pair's embeddings."""
    a = model.encode(list(first), batch_size=batch_size, max_length=max_length, normalize=True)
    b = model.encode(list(second), batch_size=batch_size, max_length=max_length, normalize=True)
    return (a * b).sum(-1)


def _float(text: str):
    try:
        return float(text)
    except ValueError:
        return None


def read_sts(path: str) -> tuple[list, list, Tensor]:
    """(sentences 1, sentences 2, gold scores) from an STS-B, SICK or plain three-column file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"STS file {path!r} does not exist or is not a file")
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = [(number, row) for number, row in
                    enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), start=1) if row and any(row)]
    except UnicodeDecodeError as exc:
        raise not_utf8("STS file", path, exc) from exc
    if not rows:
        raise ValueError(f"STS file {path!r} is empty")
    numbers, rows = [n for n, _ in rows], [row for _, row in rows]
    header = [cell.strip().lower() for cell in rows[0]]
    layouts = (("sentence1", "sentence2", "score"), ("sentence_a", "sentence_b", "relatedness_score"))
    for first, second, score in layouts:
        if first in header and second in header and score in header:
            cols = header.index(first), header.index(second), header.index(score)
            body, numbers = rows[1:], numbers[1:]
            break
    else:
        body = rows
        width = len(rows[0])
        if width >= 7 and _float(rows[0][4]) is not None:
            cols = 5, 6, 4  # STS-B: genre, file, year, id, score, sentence1, sentence2
        elif width == 3 and _float(rows[0][2]) is not None:
            cols = 0, 1, 2
        elif width == 3 and _float(rows[0][0]) is not None:
            cols = 1, 2, 0
        else:
            raise ValueError(f"STS file {path!r}: cannot tell its layout; expected STS-B, SICK or "
                             "sentence1<TAB>sentence2<TAB>score lines")
    s1, s2, gold = [], [], []
    for number, row in zip(numbers, body):
        score = _float(row[cols[2]]) if len(row) > max(cols) else None
        if score is None or not math.isfinite(score):
            raise ValueError(f"STS file {path!r}, line {number}: no finite numeric score in column {cols[2] + 1}")
        s1.append(row[cols[0]])
        s2.append(row[cols[1]])
        gold.append(score)
    return s1, s2, torch.tensor(gold, dtype=torch.float64)


def load_sts(path: str) -> tuple[list, list, Tensor]:
    """read_sts, checked for a file that can be scored: at least 2 pairs, gold scores not all equal."""
    s1, s2, gold = read_sts(path)
    try:
        _check_gold(gold)
    except ValueError as exc:
        raise ValueError(f"STS file {path!r}: {exc}") from None
    return s1, s2, gold


def evaluate_pairs(model, pairs: tuple, batch_size: int = 64, max_length: Optional[int] = None) -> dict:
    """Spearman and Pearson x 100 on (sentences 1, sentences 2, gold scores), sentences of up to
    `max_length` tokens (default: the model's encode_max_length)."""
    s1, s2, gold = pairs
    return correlations(pair_similarities(model, s1, s2, batch_size, max_length), gold)


def evaluate_file(model, path: str, batch_size: int = 64, max_length: Optional[int] = None) -> dict:
    heartbeat.note(f"encoding the pairs of {path}")
    return evaluate_pairs(model, load_sts(path), batch_size, max_length)


def word_pairs(model, name: str) -> dict:
    """Correlation over one of gensim's tab-separated word-pair files (SimLex-999, WordSim-353)."""
    first, second, gold = [], [], []
    with open(gensim_test_file(name), encoding="utf-8") as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            a, b, score = line.rstrip("\n").split("\t")[:3]
            first.append(a)
            second.append(b)
            gold.append(float(score))
    return correlations(pair_similarities(model, first, second), torch.tensor(gold, dtype=torch.float64))


def lee(model, batch_size: int = 16, max_length: int = 256) -> dict:
    """Lee et al. (2005): correlation over the 1,225 document pairs (upper triangle). Documents are
    encoded up to `max_length` tokens (they run to a few hundred words)."""
    with open(gensim_test_file("lee.cor"), encoding="utf-8", errors="replace") as f:
        docs = [line.strip() for line in f if line.strip()]
    with open(gensim_test_file("similarities0-1.txt")) as f:
        human = torch.tensor([[float(v) for v in line.split()] for line in f if line.strip()], dtype=torch.float64)
    z = model.encode(docs, batch_size=batch_size, max_length=max_length, normalize=True).double()
    upper = torch.triu_indices(len(docs), len(docs), offset=1)
    return correlations((z @ z.T)[upper[0], upper[1]], human[upper[0], upper[1]])


def simlex(model) -> dict:
    return word_pairs(model, "simlex999.txt")


def wordsim(model) -> dict:
    return word_pairs(model, "wordsim353.tsv")


BUILTIN_BENCHMARKS = {"lee": lee, "simlex": simlex, "wordsim": wordsim}


def builtin(model) -> dict:
    """{benchmark: {spearman, pearson, pairs}} for Lee, SimLex-999 and WordSim-353."""
    results = {}
    for name, run in BUILTIN_BENCHMARKS.items():
        heartbeat.note(f"the {name} benchmark")
        results[name] = run(model)
    return results

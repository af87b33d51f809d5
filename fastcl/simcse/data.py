"""SimCSE training data in the SimCSE repository's formats, and the built-in corpus.

- one sentence per line (.txt): unsupervised (wiki1m_for_simcse.txt);
- CSV with a header: `sent0` alone (unsupervised), `sent0,sent1` (positive pairs) or
  `sent0,sent1,hard_neg` (nli_for_simcse.csv: entailment positives, contradiction negatives);
- `builtin`: sentences split from gensim's Lee background corpus (300 news articles, in the
  gensim wheel's test data), deduplicated.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import os
import re
from dataclasses import dataclass
from typing import Optional

SUPERVISED_COLUMNS = ("sent0", "sent1", "hard_neg")


@dataclass
class TextData:
    anchors: list  # sent0
    positives: Optional[list] = None  # sent1; None: unsupervised (the anchor is its own positive)
    hard_negatives: Optional[list] = None  # hard_neg

    @property
    def supervised(self) -> bool:
        return self.positives is not None

    def __len__(self) -> int:
        return len(self.anchors)


def gensim_test_file(name: str) -> str:
    """A file of gensim's bundled test data, found without importing gensim."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the built-in corpus and benchmarks ship inside the gensim wheel: pip install gensim "
                          "(or fastcl[nlp]); fastcl only reads its data files")
    path = os.path.join(list(spec.submodule_search_locations)[0], "test", "test_data", name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"gensim's test data has no {name!r} (looked in {path})")
    return path


def not_utf8(what: str, path: str, exc: UnicodeDecodeError) -> ValueError:
    """The error for a data file that is not UTF-8 text, naming it and where decoding failed."""
    return ValueError(f"{what} {path!r} is not UTF-8 text ({exc.reason} at byte {exc.start})")


BUILTIN_VERSION = "1"  # of builtin_corpus: bump when it splits or filters the articles otherwise


def fingerprint(spec: str, chunk: int = 1 << 20) -> dict:
    """What a run trains on, for resume to check: the built-in corpus's version (and gensim's, whose
    file it reads), or a train file's size and sha256 (read in 1 MiB chunks)."""
    if spec == "builtin":
        from importlib.metadata import PackageNotFoundError, version

        try:
            gensim = version("gensim")
        except PackageNotFoundError:
            gensim = "unknown"
        return dict(source="the built-in corpus", data="builtin",
                    version=f"{BUILTIN_VERSION}, gensim {gensim}")
    digest, size = hashlib.sha256(), 0
    try:
        with open(spec, "rb") as f:
            for block in iter(lambda: f.read(chunk), b""):
                digest.update(block)
                size += len(block)
    except OSError as exc:
        raise FileNotFoundError(f"train file {spec!r} cannot be read ({exc.strerror})") from None
    return dict(source=f"train file {spec!r}", size=size, sha256=digest.hexdigest())


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


def builtin_corpus(min_words: int = 4) -> TextData:
    with open(gensim_test_file("lee_background.cor"), encoding="utf-8", errors="replace") as f:
        articles = f.read().splitlines()
    seen, sentences = set(), []
    for article in articles:
        for sentence in _SENTENCE_END.split(article.strip()):
            sentence = sentence.strip()
            if len(sentence.split()) >= min_words and sentence not in seen:
                seen.add(sentence)
                sentences.append(sentence)
    return TextData(sentences)


def _read_lines(path: str) -> TextData:
    with open(path, encoding="utf-8-sig") as f:
        sentences = [line.strip() for line in f if line.strip()]
    if not sentences:
        raise ValueError(f"train file {path!r} holds no sentences")
    return TextData(sentences)


def _read_csv(path: str) -> TextData:
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        columns = tuple(reader.fieldnames or ())
        if columns not in (SUPERVISED_COLUMNS[:1], SUPERVISED_COLUMNS[:2], SUPERVISED_COLUMNS):
            raise ValueError(f"train file {path!r} has columns {list(columns)}; expected a header of sent0, "
                             "sent0,sent1 or sent0,sent1,hard_neg")
        rows = []
        for row in reader:
            if any(cell.strip() for cell in row.get(None) or ()):  # DictReader puts extra cells under None
                raise ValueError(f"train file {path!r}, line {reader.line_num}: more cells than the header's "
                                 f"{len(columns)} (quote sentences that hold commas)")
            missing = [c for c in columns if not (row.get(c) or "").strip()]
            if len(missing) == len(columns):
                continue  # a blank line
            if missing:
                raise ValueError(f"train file {path!r}, line {reader.line_num}: empty {', '.join(missing)}")
            rows.append(row)
    if not rows:
        raise ValueError(f"train file {path!r} holds no rows")
    column = lambda name: [row[name].strip() for row in rows] if name in columns else None  # noqa: E731
    return TextData(column("sent0"), column("sent1"), column("hard_neg"))


def _check_not_all_one_row(path: str, data: TextData) -> None:
    """A file whose rows are all the same (sentences compared as read: stripped) leaves no batch a
    negative: every other row is a copy. Refused here, before any model is loaded or step taken."""
    columns = [c for c in (data.anchors, data.positives, data.hard_negatives) if c is not None]
    first = tuple(column[0] for column in columns)
    if len(data) > 1 and all(tuple(column[i] for column in columns) == first for i in range(1, len(data))):
        shown = ", ".join(repr(s if len(s) <= 60 else s[:57] + "...") for s in first)  # repr: one line
        what = f"sentence {shown}" if len(columns) == 1 else f"row ({shown})"
        raise ValueError(f"train file {path!r}: all {len(data):,} rows are the same {what}, so every other "
                         "row of a batch is a copy and no sentence has an in-batch negative; it needs at least 2 "
                         "different rows")


def load_train_file(spec: str) -> TextData:
    """`builtin`, a .csv (see the module doc) or any other file as one sentence per line."""
    if spec == "builtin":
        return builtin_corpus()
    if not os.path.isfile(spec):
        raise FileNotFoundError(f"train file {spec!r} does not exist or is not a file")
    try:
        data = _read_csv(spec) if spec.endswith(".csv") else _read_lines(spec)
    except UnicodeDecodeError as exc:
        raise not_utf8("train file", spec, exc) from exc
    _check_not_all_one_row(spec, data)
    return data

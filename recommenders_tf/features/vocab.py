"""Vocabularies of ids (or any string feature), built once from train and kept as files.

A `Vocabulary` is ordered by train frequency (descending, ties by token) and keeps the counts:
the retrieval task's logQ correction needs the train item frequencies, and the order makes the
most frequent ids the low lookup indices. Saved as plain text (`vocab.txt`, one token per line)
with a `counts.tsv` sidecar, so a Beam job or another language can produce or read them.

The same class describes a lookup table read back from a model (`serving.export.
find_vocabularies`): tokens in lookup-index order, no counts, and where the indices start.

Example:
  items = Vocabulary.from_values(split.train["item_id"], name="item_id")
  lookup = items.string_lookup()          # "unseen id" -> 0 (the OOV index)
  items.save("runs/x/vocab/item_id"); Vocabulary.load("runs/x/vocab/item_id")
"""
from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import numpy as np

VOCAB_FILE = "vocab.txt"
COUNTS_FILE = "counts.tsv"
META_FILE = "vocab.json"


@dataclasses.dataclass
class Vocabulary:
    """Distinct tokens in lookup-index order, with their train counts when known.

    Args:
      tokens: distinct tokens; built from train they are non-empty, most frequent first (ties
        by token).
      counts: train count of each token, aligned with `tokens`; None when unknown (a table
        read back from a model), which `count`, `frequencies` and `save` refuse.
      name: what the tokens are ("item_id", "user_id", "genre"), recorded in the files; for a
        table found in a model, its dotted attribute path ("model.user_lookup").
      first_index: the lookup index of the first token (OOV buckets and the mask come first).
      contiguous: whether the indices run without gaps from `first_index`.
    """

    tokens: List[str]
    counts: Optional[List[int]] = None
    name: str = ""
    first_index: int = 0
    contiguous: bool = True

    def __post_init__(self):
        if self.counts is not None and len(self.tokens) != len(self.counts):
            raise ValueError(f"{len(self.tokens)} tokens but {len(self.counts)} counts")
        if len(set(self.tokens)) != len(self.tokens):
            raise ValueError("vocabulary tokens must be distinct")
        self._index = {token: i for i, token in enumerate(self.tokens)}

    @classmethod
    def from_values(cls, values: Iterable, name: str = "", min_count: int = 1,
                    max_size: Optional[int] = None) -> "Vocabulary":
        """Counts `values` (e.g. the train item ids) and orders them by frequency, then token.

        Args:
          values: tokens, one per occurrence; "" (the padding value) is ignored.
          name: vocabulary name.
          min_count: tokens seen fewer times are left out (they map to OOV).
          max_size: keep at most this many of the most frequent tokens.
        """
        counter = Counter(str(v) for v in values)
        counter.pop("", None)
        ranked = sorted(((t, c) for t, c in counter.items() if c >= min_count),
                        key=lambda tc: (-tc[1], tc[0]))
        if max_size is not None:
            ranked = ranked[:max_size]
        return cls([t for t, _ in ranked], [int(c) for _, c in ranked], name)

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token) -> bool:
        return token in self._index

    def _known_counts(self) -> List[int]:
        if self.counts is None:
            raise ValueError(f"vocabulary {self.name!r} has no train counts (it was read from "
                             "a lookup table); build it with from_values or load")
        return self.counts

    def count(self, token: str) -> int:
        """Train count of `token` (0 when unseen)."""
        counts = self._known_counts()
        position = self._index.get(token)
        return 0 if position is None else counts[position]

    def index(self, token: str, num_oov_indices: int = 1) -> int:
        """The index `string_lookup(num_oov_indices)` gives `token` (unseen tokens: 0)."""
        position = self._index.get(token)
        return 0 if position is None else position + num_oov_indices

    def frequencies(self, num_oov_indices: int = 1) -> np.ndarray:
        """Train counts aligned with lookup indices (OOV slots count 0), as float64."""
        return np.concatenate([np.zeros(num_oov_indices),
                               np.asarray(self._known_counts(), float)])

    def probabilities(self, num_oov_indices: int = 1) -> np.ndarray:
        """Train sampling probabilities aligned with lookup indices (for logQ correction)."""
        freq = self.frequencies(num_oov_indices)
        total = freq.sum()
        return freq / total if total > 0 else freq

    def string_lookup(self, num_oov_indices: int = 1, **kwargs):
        """A `tf.keras.layers.StringLookup` over these tokens (mask_token None).

        Index 0 .. num_oov_indices-1 are OOV; token i maps to i + num_oov_indices.
        """
        if not self.tokens:
            raise ValueError(f"vocabulary {self.name!r} is empty; build it from non-empty train")
        import recommenders_tf  # noqa: F401  (selects tf-keras before TensorFlow loads)
        import tensorflow as tf

        return tf.keras.layers.StringLookup(vocabulary=list(self.tokens), mask_token=None,
                                            num_oov_indices=num_oov_indices, **kwargs)

    def save(self, directory) -> Path:
        """Writes vocab.txt, counts.tsv and vocab.json into `directory`; returns it."""
        counts = self._known_counts()
        directory = Path(directory)
        for token in self.tokens:
            if any(ch in token for ch in "\n\r\t"):
                raise ValueError(f"token {token!r} contains a tab or newline; cannot be saved "
                                 f"as one token per line")
        directory.mkdir(parents=True, exist_ok=True)
        body = "".join(t + "\n" for t in self.tokens)
        (directory / VOCAB_FILE).write_text(body, encoding="utf-8")
        rows = "".join(f"{t}\t{c}\n" for t, c in zip(self.tokens, counts))
        (directory / COUNTS_FILE).write_text("token\tcount\n" + rows, encoding="utf-8")
        meta = {"name": self.name, "size": len(self), "total_count": int(sum(counts)),
                "order": "count desc, token asc"}
        (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return directory

    @classmethod
    def load(cls, directory) -> "Vocabulary":
        """Reads a vocabulary written by `save`."""
        directory = Path(directory)
        tokens = (directory / VOCAB_FILE).read_text(encoding="utf-8").split("\n")[:-1]
        lines = (directory / COUNTS_FILE).read_text(encoding="utf-8").split("\n")[1:-1]
        counts = {}
        for number, line in enumerate(lines, start=2):
            token, _, count = line.rpartition("\t")
            if not count.isdigit():
                raise ValueError(f"{directory / COUNTS_FILE}: line {number}: bad count "
                                 f"{count!r}")
            counts[token] = int(count)
        missing = [t for t in tokens if t not in counts]
        if missing:
            raise ValueError(f"{directory / COUNTS_FILE}: no count for token {missing[0]!r}")
        name = ""
        if (directory / META_FILE).exists():
            name = json.loads((directory / META_FILE).read_text(encoding="utf-8")).get("name", "")
        return cls(tokens, [counts[t] for t in tokens], name)


def build_vocabularies(train, columns: Iterable[str] = ("user_id", "item_id"),
                       separator: Optional[str] = None) -> Dict[str, Vocabulary]:
    """One Vocabulary per column of a TRAIN frame (never pass test data here).

    Args:
      train: train interactions (or items of the train catalog for item features).
      columns: columns to build vocabularies for.
      separator: split multi-valued string cells (e.g. "|" for genres) into tokens.
    """
    vocabularies = {}
    for column in columns:
        values = train[column].astype(str)
        if separator is not None:
            values = [token for cell in values for token in cell.split(separator)]
        vocabularies[column] = Vocabulary.from_values(values, name=column)
    return vocabularies


def save_vocabularies(vocabularies: Dict[str, Vocabulary], directory) -> Path:
    """Saves each vocabulary under `<directory>/<name>/`; returns `directory`."""
    directory = Path(directory)
    for name, vocabulary in vocabularies.items():
        vocabulary.save(directory / name)
    return directory


def load_vocabularies(directory) -> Dict[str, Vocabulary]:
    """Loads every `<directory>/<name>/` written by `save_vocabularies`."""
    directory = Path(directory)
    return {sub.name: Vocabulary.load(sub) for sub in sorted(directory.iterdir())
            if (sub / VOCAB_FILE).exists()}

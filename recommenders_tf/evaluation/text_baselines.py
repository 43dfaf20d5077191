"""Item-text nearest-neighbour baselines and chance level for BENCHMARK.md P3 (and P1/P4).

P3 ranks held-out (cold) items that no interaction in train mentions, so an ID-only model is at
chance there; a model that reads item text must beat it. The baselines here are the yardsticks:

  * `TfidfNeighbours` ("tfidf-knn"): TF-IDF vectors of the item text; user profile = the mean
    TF-IDF vector of the user's train items; score = cosine(profile, item).
  * `LMNeighbours` ("lm-knn"): the same with the pretrained language-model vectors of an
    `ItemVectors` store (`pipelines.embed_items`); profile = `build_user_profiles`.
  * `chance_metrics`: the exact expected metrics of a uniformly random ranking of the
    candidates under the evaluator's rules (train items excluded), per user, so P4 buckets
    get their own chance level; `RandomScorer` is the seeded scorer it is the mean of.

Scorers follow the peers' interface (`evaluation.registry.Recommender`): ``fit(train)`` then
``score(user_ids, item_ids=None) -> float [len(user_ids), len(item_ids)]`` with columns in the
order of `item_ids` (default the `item_ids` given at construction: pass
`TopKEvaluator.item_ids`), so ``evaluator.evaluate(scorer.score)`` works.
Users without a usable train item get all-zero scores (the evaluator then ranks by item id).

TF-IDF uses scipy.sparse (installed with the `peers` extra, as a dependency of `implicit` and
`scikit-surprise`); it is imported when a `TfidfModel` is built.

Example:
  >>> split = cold_item_split(data.interactions, seed=0)
  >>> results = evaluate_text_baselines(split.train, split.test,
  ...     items=items_for_train(data, split.train),
  ...     item_vectors=ItemVectors.load(".../item_vectors"),
  ...     candidate_items=split.info["cold_items"], ks=(10,))
  >>> {name: r.metrics["ndcg@10"] for name, r in results.items()}
"""
from __future__ import annotations

import dataclasses
import re
import time
import zlib
from typing import Dict, Hashable, Iterable, List, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from recommenders_tf.data.schema import ITEM_ID, USER_ID
from recommenders_tf.evaluation.protocol import EvalResult, TopKEvaluator
from recommenders_tf.features.item_vectors import ItemVectors, check_item_ids, item_texts
from recommenders_tf.features.profiles import build_user_profiles, profile_matrix, train_pairs

__all__ = [
    "TfidfModel",
    "TfidfNeighbours",
    "LMNeighbours",
    "RandomScorer",
    "chance_metrics",
    "evaluate_text_baselines",
]

_TOKEN = re.compile(r"(?u)\b\w\w+\b")  # words of 2+ letters or digits, as most TF-IDF tools


def tokenize(text: str) -> List[str]:
    """Lower-cased word tokens of `text` (single characters and punctuation dropped)."""
    return _TOKEN.findall(text.lower())


def _sparse():
    try:
        import scipy.sparse as sp
    except ImportError as err:  # pragma: no cover - scipy comes with the peers extra
        raise ImportError("the TF-IDF baseline needs scipy (pip install 'recommenders-tf[peers]' "
                          f"or scipy itself): {err}") from err
    return sp


@dataclasses.dataclass
class TfidfModel:
    """A fitted TF-IDF vocabulary: smoothed idf = ln((1 + n) / (1 + df)) + 1, L2-normalised rows.

    Args:
        vocabulary: token -> column.
        idf: idf weight of each column.
        sublinear_tf: use 1 + ln(count) instead of the raw count as term frequency.

    Example:
        >>> model = TfidfModel.fit(["space rocket", "pasta recipe"])
        >>> model.transform(["rocket"]).toarray().round(3)   # one column per token, sorted
        array([[0., 0., 1., 0.]])
    """

    vocabulary: Dict[str, int]
    idf: np.ndarray
    sublinear_tf: bool = False

    @classmethod
    def fit(cls, texts: Sequence[str], min_df: int = 1, stop_words: Iterable[str] = (),
            sublinear_tf: bool = False) -> "TfidfModel":
        """Vocabulary (sorted tokens in at least `min_df` texts, minus `stop_words`) and idf."""
        stop = {w.lower() for w in stop_words}
        df: Dict[str, int] = {}
        for text in texts:
            for token in set(tokenize(text)):
                df[token] = df.get(token, 0) + 1
        tokens = sorted(t for t, n in df.items() if n >= min_df and t not in stop)
        if not tokens:
            raise ValueError(f"TF-IDF: no token occurs in at least {min_df} of the {len(texts)} "
                             "texts; the item texts are empty or all stop words")
        counts = np.array([df[t] for t in tokens], dtype=np.float64)
        idf = np.log((1.0 + len(texts)) / (1.0 + counts)) + 1.0
        return cls(vocabulary={t: i for i, t in enumerate(tokens)}, idf=idf,
                   sublinear_tf=sublinear_tf)

    def transform(self, texts: Sequence[str]):
        """scipy CSR [len(texts), vocabulary] of L2-normalised TF-IDF rows (zero rows for
        texts without a known token)."""
        sp = _sparse()
        indptr, indices, data = [0], [], []
        for text in texts:
            ids = [self.vocabulary[t] for t in tokenize(text) if t in self.vocabulary]
            cols, counts = np.unique(np.asarray(ids, dtype=np.int64), return_counts=True)
            tf = 1.0 + np.log(counts) if self.sublinear_tf else counts.astype(np.float64)
            values = tf * self.idf[cols]
            norm = np.linalg.norm(values)
            indices.append(cols)
            data.append(values / norm if norm > 0 else values)
            indptr.append(indptr[-1] + len(cols))
        matrix = sp.csr_matrix(
            (np.concatenate(data) if data else np.zeros(0),
             np.concatenate(indices) if indices else np.zeros(0, dtype=np.int64),
             np.asarray(indptr)), shape=(len(texts), len(self.vocabulary)))
        return matrix


class _TextScorer:
    """Shared part of the text baselines: candidate order, fit timing, the peers' interface."""

    name = "text"
    task = "topk"

    def __init__(self, item_ids: Optional[Iterable[str]] = None, weighting: str = "mean",
                 on_missing: str = "error"):
        if on_missing not in ("error", "zero"):
            raise ValueError(f"on_missing must be 'error' or 'zero', got {on_missing!r}")
        self.item_ids = None if item_ids is None else np.asarray(
            [str(i) for i in item_ids], dtype=object)
        self.weighting = weighting
        self.on_missing = on_missing
        self.notes = ""
        self.fit_seconds = 0.0
        self._fitted = False

    def _check_candidates(self, item_ids: np.ndarray, pos: np.ndarray, what: str) -> np.ndarray:
        """`pos` (row of each of `item_ids`, -1 if absent), after applying `on_missing`."""
        if (pos < 0).any() and self.on_missing == "error":
            absent = list(item_ids[pos < 0][:5])
            raise ValueError(
                f"{self.name}: {int((pos < 0).sum())} candidate item(s) have no {what}, e.g. "
                f"{absent}; add their text (or pass on_missing='zero' to score them 0)")
        return pos

    def fit(self, train: pd.DataFrame, validation: Optional[pd.DataFrame] = None) -> "_TextScorer":
        """Builds the profiles of every train user (validation is unused: nothing to tune)."""
        start = time.perf_counter()
        if self.item_ids is None:
            self.item_ids = np.sort(train[ITEM_ID].astype(str).unique()).astype(object)
        self._fit(train)
        self._fitted = True
        self.fit_seconds = time.perf_counter() - start
        return self

    def _fit(self, train: pd.DataFrame) -> None:
        raise NotImplementedError

    def score(self, user_ids: Sequence[str],
              item_ids: Optional[Iterable[str]] = None) -> np.ndarray:
        """Cosine of each user's profile with each candidate, float [users, len(item_ids)].

        Args:
          user_ids: users to score.
          item_ids: column order; default the `item_ids` given at construction (else the
            sorted train items). Other columns follow `on_missing` as the default ones do.
        """
        if not self._fitted:
            raise RuntimeError(f"{type(self).__name__}.score called before fit")
        users = np.asarray([str(u) for u in user_ids], dtype=object)
        columns = self._candidates
        if item_ids is not None:
            ids = np.asarray([str(i) for i in item_ids], dtype=object)
            # The evaluator passes the same columns on every batch: reuse the fitted ones.
            if not np.array_equal(ids, self.item_ids):
                columns = self._columns(ids)
        return self._score(users, columns)

    def _columns(self, item_ids: np.ndarray):
        """The candidate matrix of `item_ids`, in the layout `_score` reads."""
        raise NotImplementedError

    def _score(self, users: np.ndarray, columns) -> np.ndarray:
        raise NotImplementedError

    __call__ = score


class LMNeighbours(_TextScorer):
    """Language-model neighbours: cosine(mean LM vector of the user's train items, item vector).

    Args:
        item_vectors: item text vectors covering the candidates (`pipelines.embed_items`).
        item_ids: candidate column order (`TopKEvaluator.item_ids`); default sorted train items.
        weighting: profile weighting, "mean" or "rating" (see `build_user_profiles`).
        on_missing: "error" (default) if a candidate has no vector, or "zero" to score it 0.
    """

    name = "lm-knn"

    def __init__(self, item_vectors: ItemVectors, item_ids: Optional[Iterable[str]] = None,
                 weighting: str = "mean", on_missing: str = "error"):
        super().__init__(item_ids, weighting, on_missing)
        self.item_vectors = item_vectors

    def _columns(self, item_ids):
        self._check_candidates(item_ids, self.item_vectors.positions(item_ids), "vector")
        candidates, _ = self.item_vectors.lookup(item_ids)  # zeros for missing ones
        norms = np.linalg.norm(candidates, axis=1, keepdims=True)
        return np.divide(candidates, norms, out=np.zeros_like(candidates), where=norms > 0)

    def _fit(self, train):
        self._candidates = self._columns(self.item_ids)
        self.profiles = build_user_profiles(train, self.item_vectors, weighting=self.weighting)
        self.notes = (f"{self.item_vectors.model} ({self.item_vectors.dim}-d) profile = "
                      f"{self.weighting} of train item vectors; {self.profiles.n_empty} users "
                      f"without profile, {self.profiles.missing_item_pairs} train pairs without "
                      "vector")

    def _score(self, users, columns):
        rows, _ = profile_matrix(self.profiles, users)
        return rows.astype(np.float64) @ columns.T.astype(np.float64)


class TfidfNeighbours(_TextScorer):
    """TF-IDF neighbours: cosine(mean TF-IDF vector of the user's train items, item vector).

    The vocabulary and idf are fitted on the texts of every item in `items` (item text is
    content known in advance, not interaction data, so cold items' words count too).

    Args:
        items: the catalog (item_id and the `text_fields` columns).
        item_ids: candidate column order; default sorted train items.
        text_fields: columns joined into the item text (`item_vectors.item_texts`).
        weighting: "mean" or "rating".
        min_df: keep tokens found in at least this many item texts.
        stop_words: tokens to drop.
        sublinear_tf: 1 + ln(count) term frequencies.
        on_missing: "error" if a candidate is not in `items`, or "zero" to score it 0.
    """

    name = "tfidf-knn"

    def __init__(self, items: pd.DataFrame, item_ids: Optional[Iterable[str]] = None,
                 text_fields: Sequence[str] = ("text",), weighting: str = "mean",
                 min_df: int = 1, stop_words: Iterable[str] = (), sublinear_tf: bool = False,
                 on_missing: str = "error"):
        super().__init__(item_ids, weighting, on_missing)
        self._item_index = pd.Index(check_item_ids(items))
        texts = item_texts(items, text_fields)
        self.tfidf = TfidfModel.fit(texts, min_df=min_df, stop_words=stop_words,
                                    sublinear_tf=sublinear_tf)
        self._matrix = self.tfidf.transform(texts)

    def _fit(self, train):
        sp = _sparse()
        pairs = train_pairs(train, self.weighting)
        self._users = pd.Index(np.sort(pairs[USER_ID].unique().astype(str)).astype(object))
        rows = self._item_index.get_indexer(pairs[ITEM_ID].to_numpy())
        known = rows >= 0
        user_rows = self._users.get_indexer(pairs[USER_ID].to_numpy()[known])
        weights = sp.csr_matrix((pairs["w"].to_numpy()[known], (user_rows, rows[known])),
                                shape=(len(self._users), len(self._item_index)))
        totals = np.asarray(weights.sum(axis=1)).ravel()
        scale = np.divide(1.0, totals, out=np.zeros_like(totals), where=totals > 0)
        profiles = sp.diags(scale) @ weights @ self._matrix  # weighted mean TF-IDF vectors
        norms = np.sqrt(np.asarray(profiles.multiply(profiles).sum(axis=1)).ravel())
        inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        self._profiles = (sp.diags(inv) @ profiles).tocsr()
        self._candidates = self._columns(self.item_ids)
        n_empty = int((norms == 0).sum())
        self.notes = (f"TF-IDF over {len(self.tfidf.vocabulary)} tokens of "
                      f"{len(self._item_index)} item texts; profile = {self.weighting} of train "
                      f"item vectors; {int((~known).sum())} train pairs without text, "
                      f"{n_empty} train users without profile")

    def _columns(self, item_ids):
        """[vocabulary, len(item_ids)] CSC: the candidates' TF-IDF vectors as columns."""
        sp = _sparse()
        pos = self._check_candidates(item_ids, self._item_index.get_indexer(item_ids),
                                     "text in items")
        candidates = self._matrix[np.maximum(pos, 0)]
        if (pos < 0).any():
            candidates = sp.diags((pos >= 0).astype(np.float64)) @ candidates
        return candidates.T.tocsc()

    def _score(self, users, columns):
        pos = self._users.get_indexer(users)
        out = np.zeros((len(users), columns.shape[1]), dtype=np.float64)
        known = pos >= 0
        if known.any():
            out[known] = (self._profiles[pos[known]] @ columns).toarray()
        return out


class RandomScorer:
    """Uniform random scores, seeded per (seed, user id) so a user's ranking does not depend on
    the batch it is scored in; averaged over seeds it converges to `chance_metrics`.

    Args:
        item_ids: candidate column order (`TopKEvaluator.item_ids`); default the sorted items
            of the `train` given to `fit`.
        seed: base seed.
    """

    name = "random"
    task = "topk"

    def __init__(self, item_ids: Optional[Iterable[str]] = None, seed: int = 0):
        self.item_ids = None if item_ids is None else np.asarray([str(i) for i in item_ids],
                                                                 dtype=object)
        self.seed = int(seed)
        self.notes = f"uniform random scores, seed {self.seed}"

    def fit(self, train: Optional[pd.DataFrame] = None, validation=None) -> "RandomScorer":
        if self.item_ids is None and train is not None:
            self.item_ids = np.sort(train[ITEM_ID].astype(str).unique()).astype(object)
        return self

    def score(self, user_ids: Sequence[str],
              item_ids: Optional[Iterable[str]] = None) -> np.ndarray:
        """Float [len(user_ids), len(item_ids)] in [0, 1); item_ids default as constructed."""
        columns = self.item_ids if item_ids is None else list(item_ids)
        if columns is None:
            raise RuntimeError("RandomScorer needs item_ids, at construction or from fit(train)")
        out = np.empty((len(user_ids), len(columns)), dtype=np.float64)
        for row, user in enumerate(user_ids):
            rng = np.random.default_rng([self.seed, zlib.crc32(str(user).encode("utf-8"))])
            out[row] = rng.random(len(columns))
        return out

    __call__ = score


def chance_metrics(train: pd.DataFrame, test: pd.DataFrame, ks: Sequence[int] = (10, 50),
                   candidate_items: Optional[Iterable[str]] = None,
                   user_groups: Optional[Mapping[str, Hashable]] = None) -> EvalResult:
    """Expected top-K metrics of a uniformly random ranking, under `TopKEvaluator`'s rules.

    For a user with C rankable candidates (candidates minus the user's train items), R of
    them relevant, |rel| distinct test items and k' = min(K, C): E[hits@K] = k'R/C, so
    Recall = k'R/(C|rel|), Precision = k'R/(CK), F1 = 2k'R/(C(K + |rel|)), NDCG =
    (R/C) sum_{r<k'} 1/log2(r+2) / IDCG; HR and MRR follow from the probability that the
    first hit is at rank r (sampling without replacement); MAP uses P(two given ranks both
    hit) = R(R-1)/(C(C-1)); coverage@K is 1 - prod_u P(item not in u's top K), averaged over
    candidates. Novelty and diversity are not reported.

    Args:
        train, test: the split (as given to `TopKEvaluator`).
        ks: cut-offs.
        candidate_items: restricted candidate set (P3: the held-out items); default train items.
        user_groups: optional {user_id: label} (P4 buckets) for `by_group`.
    """
    evaluator = TopKEvaluator(train, test, ks=ks, candidate_items=candidate_items)
    users, items = evaluator.user_ids, evaluator.item_ids
    n_cand = len(items)
    user_pos, item_pos = pd.Index(users), pd.Index(items)
    seen_pairs = pd.DataFrame({"u": user_pos.get_indexer(train[USER_ID].astype(str).to_numpy()),
                               "i": item_pos.get_indexer(train[ITEM_ID].astype(str).to_numpy())})
    seen_pairs = seen_pairs[(seen_pairs.u >= 0) & (seen_pairs.i >= 0)].drop_duplicates()
    n_seen = np.bincount(seen_pairs.u.to_numpy(), minlength=len(users))
    test_pairs = pd.DataFrame({"u": user_pos.get_indexer(test[USER_ID].astype(str).to_numpy()),
                               "i": item_pos.get_indexer(test[ITEM_ID].astype(str).to_numpy())})
    hittable = test_pairs[test_pairs.i >= 0].drop_duplicates()
    hittable = hittable.merge(seen_pairs, how="left", indicator=True)
    hittable = hittable[hittable["_merge"] == "left_only"]
    R = np.bincount(hittable.u.to_numpy(), minlength=len(users)).astype(np.float64)
    C = (n_cand - n_seen).astype(np.float64)
    n_rel = evaluator.n_relevant.astype(np.float64)
    p = np.divide(R, C, out=np.zeros_like(R), where=C > 0)
    both = np.divide(R * (R - 1), C * (C - 1), out=np.zeros_like(R), where=C > 1)

    table: Dict[str, np.ndarray] = {}
    metrics: Dict[str, float] = {}
    for k in evaluator.ks:
        kk = np.minimum(k, C)
        hits = kk * p
        table[f"recall@{k}"] = hits / n_rel
        table[f"precision@{k}"] = hits / k
        table[f"f1@{k}"] = 2.0 * hits / (k + n_rel)
        disc = 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))
        cum = np.concatenate([[0.0], np.cumsum(disc)])
        idcg = cum[np.minimum(n_rel, k).astype(np.int64)]
        table[f"ndcg@{k}"] = p * cum[kk.astype(np.int64)] / idcg
        none_before = np.ones(len(users))
        mrr = np.zeros(len(users))
        ap = np.zeros(len(users))
        for r in range(k):
            active = r < kk
            left = C - r
            p_hit = np.divide(R, left, out=np.zeros_like(R), where=(left > 0) & active)
            mrr += none_before * p_hit / (r + 1)
            none_before = none_before * np.clip(1.0 - p_hit, 0.0, 1.0)
            ap += active * (p + r * both) / (r + 1)
        table[f"hr@{k}"] = 1.0 - none_before
        table[f"mrr@{k}"] = mrr
        table[f"map@{k}"] = ap / np.minimum(n_rel, k)
        metrics[f"coverage@{k}"] = _expected_coverage(kk, C, seen_pairs, n_cand)
    per_user = pd.DataFrame(table)
    metrics = {**{c: float(per_user[c].mean()) for c in per_user.columns}, **metrics,
               "n_users": int(len(users))}
    per_user.insert(0, USER_ID, users)
    by_group: Dict[Hashable, Dict[str, float]] = {}
    if user_groups is not None:
        missing = [u for u in users if u not in user_groups]
        if missing:
            raise ValueError(f"user_groups has no label for {len(missing)} test user(s), "
                             f"e.g. {missing[:5]}")
        labels = pd.Series([user_groups[u] for u in users])
        for label, idx in labels.groupby(labels, sort=True).groups.items():
            sub = per_user.drop(columns=[USER_ID]).iloc[np.asarray(idx)]
            by_group[label] = {**{c: float(sub[c].mean()) for c in sub.columns},
                               "n_users": int(len(sub))}
    return EvalResult(metrics=metrics, by_group=by_group, per_user=per_user)


def _expected_coverage(kk: np.ndarray, C: np.ndarray, seen_pairs: pd.DataFrame,
                       n_cand: int) -> float:
    # q_u = P(a given rankable item is in u's top K) = k'/C; an item the user has in train is
    # never in the list. Work in log space; q_u = 1 (the user ranks everything) is counted
    # apart because log(0) would poison the sum.
    q = np.divide(kk, C, out=np.zeros_like(kk), where=C > 0)
    full = q >= 1.0
    log_miss = np.where(full, 0.0, np.log1p(-np.minimum(q, 1.0 - 1e-300)))
    u, i = seen_pairs.u.to_numpy(), seen_pairs.i.to_numpy()
    item_log = log_miss.sum() - np.bincount(i, weights=log_miss[u], minlength=n_cand)
    item_full = full.sum() - np.bincount(i, weights=full[u].astype(np.float64), minlength=n_cand)
    p_covered = np.where(item_full > 0, 1.0, 1.0 - np.exp(item_log))
    return float(p_covered.mean())


def evaluate_text_baselines(train: pd.DataFrame, test: pd.DataFrame, *,
                            items: Optional[pd.DataFrame] = None,
                            item_vectors: Optional[ItemVectors] = None,
                            ks: Sequence[int] = (10, 50),
                            candidate_items: Optional[Iterable[str]] = None,
                            user_groups: Optional[Mapping[str, Hashable]] = None,
                            text_fields: Sequence[str] = ("text",),
                            weighting: str = "mean") -> Dict[str, EvalResult]:
    """Chance, TF-IDF neighbours (if `items`) and LM neighbours (if `item_vectors`) on one split.

    Args:
        train, test: the split; profiles use `train` only.
        items: catalog with item text, for "tfidf-knn": `items_for_train(data, train)`,
            so that the text carries only the user tags `train` allows.
        item_vectors: LM item vectors, for "lm-knn".
        ks: cut-offs.
        candidate_items: P3's held-out items; default every train item (P1/P4).
        user_groups: {user_id: bucket} for P4's per-bucket metrics.
        text_fields: item columns of the TF-IDF text.
        weighting: profile weighting of both baselines.

    Returns:
        {"chance": ..., "tfidf-knn": ..., "lm-knn": ...} EvalResults (the ones that apply).
    """
    candidates = None if candidate_items is None else list(candidate_items)
    results = {"chance": chance_metrics(train, test, ks, candidates, user_groups)}
    evaluator = TopKEvaluator(train, test, ks=ks, candidate_items=candidates)
    scorers = []
    if items is not None:
        scorers.append(TfidfNeighbours(items, evaluator.item_ids, text_fields, weighting))
    if item_vectors is not None:
        scorers.append(LMNeighbours(item_vectors, evaluator.item_ids, weighting))
    for scorer in scorers:
        scorer.fit(train)
        results[scorer.name] = evaluator.evaluate(scorer.score, user_groups=user_groups)
    return results

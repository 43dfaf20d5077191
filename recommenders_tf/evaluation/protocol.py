"""Full-catalog top-K evaluation (BENCHMARK.md P1, P3, P4) and rating evaluation (P2).

`TopKEvaluator` fixes the candidate set and the per-user exclusions once, then scores any model
through a `score_fn(user_ids) -> scores[len(user_ids), len(item_ids)]` called in user batches,
so a TFRS model, an `implicit` model or a popularity count are all evaluated by the same code.

P1 rules implemented here:
  * candidates are every item in train (or `candidate_items`, e.g. the held-out items of P3),
    in sorted id order: column j of every score matrix is `evaluator.item_ids[j]`;
  * items the user has in train are excluded from that user's ranking;
  * each user's relevant set is their distinct test items, including items that are not
    candidates (absent from train) or that the user also has in train: they stay in the recall
    denominator and can never be hit;
  * ties in score are broken by item id (lower id first), independently of batch size.
"""
from __future__ import annotations

import dataclasses
from typing import (
    Callable,
    Dict,
    Hashable,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)

import numpy as np
import pandas as pd

from recommenders_tf.data.schema import GENRES, ITEM_ID, USER_ID, check_frame
from recommenders_tf.evaluation import metrics as M

__all__ = [
    "EvalResult",
    "TopKEvaluator",
    "evaluate_ratings",
    "select_topk",
    "genre_features",
]

ScoreFn = Callable[[np.ndarray], np.ndarray]

# Scores one `score_fn` call may return: users per call are capped so that a batch's score
# table (and its float64 copy, exclusion mask and top-k indices, about 22 bytes per score) stays
# near 370 MB whatever the catalogue. At 200,000 items 1,024 users per call held about 8 GB
# at once (measured at 10M interactions); 83 users now.
MAX_BATCH_SCORES = 1 << 24

_RANK_METRICS = {
    "recall": M.recall_at_k,
    "precision": M.precision_at_k,
    "f1": M.f1_at_k,
    "ndcg": M.ndcg_at_k,
    "hr": M.hit_rate_at_k,
    "mrr": M.mrr_at_k,
    "map": M.map_at_k,
}


@dataclasses.dataclass
class EvalResult:
    """Metrics of one model under one protocol.

    Args:
      metrics: mean over evaluated users, keys like `recall@10`, `ndcg@10`, `coverage@10`,
        plus `n_users`.
      by_group: {label: {metric: mean over the group's users, 'n_users': n}} when user groups
        were given (P4 sparsity buckets), else {}.
      per_user: one row per evaluated user (`user_id` and the per-user metrics), for paired
        comparisons between models.
    """

    metrics: Dict[str, float]
    by_group: Dict[Hashable, Dict[str, float]] = dataclasses.field(default_factory=dict)
    per_user: Optional[pd.DataFrame] = None


def select_topk(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k best scores per row, best first, ties broken by lower index.

    `-inf` marks excluded columns; rows with fewer than k finite scores are padded with -1.
    argpartition finds the k-th best value, then every column strictly above it plus the
    lowest-index columns equal to it are kept, so the result is exact under ties.
    """
    scores = np.asarray(scores)
    n_rows, n_cols = scores.shape
    k_eff = min(k, n_cols)
    out = np.full((n_rows, k), -1, dtype=np.int64)
    if n_rows == 0 or k_eff == 0:
        return out
    neg = -scores
    part = np.argpartition(neg, k_eff - 1, axis=1)[:, :k_eff]
    kth = np.take_along_axis(neg, part, axis=1).max(axis=1)  # k-th smallest of -score
    above = neg < kth[:, None]
    equal = neg == kth[:, None]
    need = k_eff - above.sum(axis=1)
    chosen = above | equal
    # Only rows with more columns tied at the k-th value than places left need the running
    # count that keeps the lowest-index ones; on real scores that is rarely a row, and the
    # count over every column was a fifth of a catalogue-wide evaluation's time.
    tied = np.flatnonzero(equal.sum(axis=1) > need)
    if len(tied):
        chosen[tied] = above[tied] | (equal[tied] & (
            np.cumsum(equal[tied], axis=1) <= need[tied, None]))
    cols = np.nonzero(chosen)[1].reshape(n_rows, k_eff)  # ascending column index per row
    chosen_neg = np.take_along_axis(neg, cols, axis=1)
    # Stable sort on -score over columns already in id order: equal scores keep id order.
    order = np.argsort(chosen_neg, axis=1, kind="stable")
    top = np.take_along_axis(cols, order, axis=1)
    top_scores = np.take_along_axis(scores, top, axis=1)
    out[:, :k_eff] = np.where(np.isneginf(top_scores), -1, top)
    return out


class _Csr:
    """Per-user item-index lists in CSR form (no scipy dependency in the evaluator)."""

    def __init__(self, rows: np.ndarray, cols: np.ndarray, n_rows: int):
        order = np.lexsort((cols, rows))
        rows, cols = rows[order], cols[order]
        self.indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n_rows))])
        self.indices = cols
        self._keys: Optional[np.ndarray] = None
        self._width = 1

    def dense(self, row_ids: np.ndarray, n_cols: int) -> np.ndarray:
        starts, ends = self.indptr[row_ids], self.indptr[row_ids + 1]
        lengths = ends - starts
        mask = np.zeros((len(row_ids), n_cols), dtype=bool)
        total = int(lengths.sum())
        if total:
            r = np.repeat(np.arange(len(row_ids)), lengths)
            # Position j of row r's slice is starts[r] + j: offsets from a flat arange.
            take = np.arange(total) + np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
            mask[r, self.indices[take]] = True
        return mask

    def contains(self, row_ids: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Whether each of `cols` is in its row of `row_ids` (broadcast); False for cols < 0.

        Rows are stored sorted by (row, col), so `row * width + col` is one sorted key array
        and a binary search answers each query without a dense row.
        """
        cols = np.asarray(cols, dtype=np.int64)
        if self._keys is None:
            self._width = int(self.indices.max()) + 1 if len(self.indices) else 1
            rows = np.repeat(np.arange(len(self.indptr) - 1), np.diff(self.indptr))
            self._keys = rows * self._width + self.indices
        ok = (cols >= 0) & (cols < self._width)
        query = np.asarray(row_ids, dtype=np.int64) * self._width + np.where(ok, cols, 0)
        at = np.minimum(np.searchsorted(self._keys, query), max(len(self._keys) - 1, 0))
        found = self._keys[at] == query if len(self._keys) else np.zeros(query.shape, bool)
        return ok & found


def genre_features(items: pd.DataFrame, column: str = GENRES) -> pd.DataFrame:
    """One-hot genre matrix indexed by item id, from '|'-separated genre labels.

    Suitable as `item_features` for intra-list diversity.
    """
    check_frame(items, "items", [ITEM_ID])
    if column not in items.columns:
        raise ValueError(f"items has no '{column}' column; has {list(items.columns)}")
    labels = items[column].fillna("").astype(str)
    onehot = labels.str.get_dummies(sep="|")
    # An empty label string means "no genre", not a genre named "".
    onehot = onehot.drop(columns=[c for c in onehot.columns if not str(c).strip()])
    onehot.index = items[ITEM_ID].astype(str).to_numpy()
    return onehot.astype(np.float32)


class TopKEvaluator:
    """Ranks the candidate catalog for every test user and computes top-K metrics.

    Args:
      train: train interactions (canonical schema); defines candidates, exclusions and
        item popularity for novelty.
      test: test interactions; its users are the evaluated users.
      ks: cut-offs; metrics are reported for each.
      candidate_items: restrict ranking to these items (P3 cold-start ranks held-out items
        only); default every item in train.
      item_features: for intra-list diversity: a DataFrame indexed by item id with numeric
        columns (e.g. `genre_features(items)`), or an array aligned with `item_ids`.
      user_batch_size: users scored per `score_fn` call at most; fewer once users x
        candidates would pass `MAX_BATCH_SCORES` (`batch_users` is the size used).

    Example:
      >>> ev = TopKEvaluator(train, test, ks=(10, 50))
      >>> pop = train.item_id.value_counts().reindex(ev.item_ids).to_numpy(float)
      >>> ev.evaluate(lambda users: np.tile(pop, (len(users), 1))).metrics["ndcg@10"]
    """

    def __init__(
        self,
        train: pd.DataFrame,
        test: pd.DataFrame,
        ks: Sequence[int] = (10, 50),
        candidate_items: Optional[Iterable[str]] = None,
        item_features: Union[pd.DataFrame, np.ndarray, None] = None,
        user_batch_size: int = 1024,
    ):
        check_frame(train, "train", [USER_ID, ITEM_ID])
        check_frame(test, "test", [USER_ID, ITEM_ID])
        self.ks: Tuple[int, ...] = tuple(sorted({int(k) for k in ks}))
        if not self.ks or self.ks[0] < 1:
            raise ValueError(f"ks must be positive integers, got {ks}")
        if user_batch_size < 1:
            raise ValueError("user_batch_size must be >= 1")
        self.user_batch_size = int(user_batch_size)
        train_users = train[USER_ID].astype(str).to_numpy()
        train_items = train[ITEM_ID].astype(str).to_numpy()
        test_users = test[USER_ID].astype(str).to_numpy()
        test_items = test[ITEM_ID].astype(str).to_numpy()

        if candidate_items is None:
            self.item_ids = np.unique(train_items).astype(object)
        else:
            self.item_ids = np.unique(np.asarray(list(candidate_items), dtype=str)).astype(object)
        if len(self.item_ids) == 0:
            raise ValueError("no candidate items: train is empty and no candidate_items given")
        self.user_ids = np.unique(test_users).astype(object)
        if len(self.user_ids) == 0:
            raise ValueError("test has no interactions, nothing to evaluate")
        self._item_pos = pd.Index(self.item_ids)
        user_pos = pd.Index(self.user_ids)

        # Exclusions: train items of test users that are candidates.
        tr_u = user_pos.get_indexer(train_users)
        tr_i = self._item_pos.get_indexer(train_items)
        keep = (tr_u >= 0) & (tr_i >= 0)
        self._seen = _Csr(tr_u[keep], tr_i[keep], len(self.user_ids))

        # Relevant sets: distinct test items per user; only candidates can be hit.
        pairs = pd.DataFrame({"u": user_pos.get_indexer(test_users), "i": test_items})
        pairs = pairs.drop_duplicates()
        self.n_relevant = np.bincount(pairs["u"].to_numpy(), minlength=len(self.user_ids))
        te_i = self._item_pos.get_indexer(pairs["i"].to_numpy())
        hit_ok = te_i >= 0
        self._relevant = _Csr(pairs["u"].to_numpy()[hit_ok], te_i[hit_ok], len(self.user_ids))

        # Novelty: share of train users who interacted with each candidate (Zhou et al. 2010).
        n_train_users = max(len(np.unique(train_users)), 1)
        user_counts = (
            pd.DataFrame({"u": train_users, "i": train_items}).drop_duplicates()["i"].value_counts()
        )
        counts = user_counts.reindex(self.item_ids).fillna(0).to_numpy(np.float64)
        # Candidates unseen in train (P3) get the share of one user: maximally novel but finite.
        self.item_popularity = np.maximum(counts, 1.0) / n_train_users

        self._features = self._align_features(item_features)

    def _align_features(self, item_features) -> Optional[np.ndarray]:
        if item_features is None:
            return None
        if isinstance(item_features, pd.DataFrame):
            idx = item_features.index.astype(str)
            if idx.has_duplicates:
                dup = idx[idx.duplicated()][0]
                raise ValueError(f"item_features has duplicate rows for item id '{dup}'")
            pos = idx.get_indexer(self.item_ids)
            if np.any(pos < 0):
                missing = list(self.item_ids[pos < 0][:5])
                raise ValueError(
                    f"item_features has no row for {int((pos < 0).sum())} candidate item(s), "
                    f"e.g. {missing}"
                )
            return item_features.to_numpy(np.float64)[pos]
        feats = np.asarray(item_features, dtype=np.float64)
        if feats.ndim != 2 or feats.shape[0] != len(self.item_ids):
            raise ValueError(
                f"item_features array must be [{len(self.item_ids)} items, dims] aligned with "
                f"item_ids, got shape {feats.shape}"
            )
        return feats

    @property
    def batch_users(self) -> int:
        """Users per `score_fn` call: `user_batch_size`, capped by `MAX_BATCH_SCORES`."""
        return max(1, min(self.user_batch_size, MAX_BATCH_SCORES // len(self.item_ids)))

    def _batches(self, user_rows: np.ndarray):
        size = self.batch_users
        for start in range(0, len(user_rows), size):
            yield user_rows[start : start + size]

    def _scores(self, score_fn: ScoreFn, rows: np.ndarray) -> np.ndarray:
        users = self.user_ids[rows]
        scores = np.asarray(score_fn(users))
        expected = (len(rows), len(self.item_ids))
        if scores.shape != expected:
            raise ValueError(
                f"score_fn returned shape {scores.shape} for {len(rows)} users; expected "
                f"{expected} (columns in the order of TopKEvaluator.item_ids)"
            )
        bad = ~np.isfinite(scores)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise ValueError(
                f"score_fn returned a non-finite score ({scores[r, c]}) for user "
                f"'{users[r]}', item '{self.item_ids[c]}'"
            )
        scores = scores.astype(np.float64, copy=True)
        scores[self._seen.dense(rows, len(self.item_ids))] = -np.inf
        return scores

    def topk(
        self, score_fn: ScoreFn, k: int = 10, users: Optional[Iterable[str]] = None
    ) -> Dict[str, List[str]]:
        """Recommended item ids per user, best first (train items excluded).

        Args:
          score_fn: as for `evaluate`.
          k: list length.
          users: test users to rank (default all of `user_ids`).
        """
        user_pos = pd.Index(self.user_ids)
        if users is None:
            rows = np.arange(len(self.user_ids))
        else:
            wanted = np.asarray([str(u) for u in users], dtype=object)
            rows = user_pos.get_indexer(wanted)
            if np.any(rows < 0):
                raise ValueError(f"not test users: {list(wanted[rows < 0][:5])}")
        out: Dict[str, List[str]] = {}
        for batch in self._batches(rows):
            top = select_topk(self._scores(score_fn, batch), k)
            for r, idx in zip(batch, top):
                out[self.user_ids[r]] = [self.item_ids[j] for j in idx if j >= 0]
        return out

    def expected_random(self) -> Dict[str, float]:
        """Exact expected metrics of a uniformly random ranking (the chance level of P3).

        With c rankable candidates of which h are relevant, each rank holds a relevant item
        with probability h / c, so E[hits@K] = h * min(K, c) / c and E[DCG@K] is h / c times
        the sum of the first min(K, c) discounts; HR@K is 1 - C(c - h, K) / C(c, K).
        """
        n_items = len(self.item_ids)
        c_parts, h_parts = [], []
        for rows in self._batches(np.arange(len(self.user_ids))):
            seen = self._seen.dense(rows, n_items)
            relevant = self._relevant.dense(rows, n_items) & ~seen
            c_parts.append(n_items - seen.sum(axis=1))
            h_parts.append(relevant.sum(axis=1))
        c = np.concatenate(c_parts).astype(np.float64)
        h = np.concatenate(h_parts).astype(np.float64)
        n_rel = self.n_relevant.astype(np.float64)
        p = np.divide(h, c, out=np.zeros_like(h), where=c > 0)
        out: Dict[str, float] = {}
        for k in self.ks:
            disc = 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))
            cum = np.concatenate([[0.0], np.cumsum(disc)])
            shown = np.minimum(k, c).astype(np.int64)
            out[f"recall@{k}"] = float(np.mean(p * shown / n_rel))
            out[f"precision@{k}"] = float(np.mean(p * shown / k))
            ideal = cum[np.minimum(n_rel, k).astype(np.int64)]
            out[f"ndcg@{k}"] = float(np.mean(p * cum[shown] / ideal))
            i = np.arange(k, dtype=np.float64)[None, :]
            # P(no relevant item in the first K) = prod_i (c - h - i) / (c - i), 0 once negative.
            ratio = (c[:, None] - h[:, None] - i) / np.maximum(c[:, None] - i, 1.0)
            ratio = np.clip(ratio, 0.0, 1.0)
            ratio = np.where(i < c[:, None], ratio, 1.0)
            out[f"hr@{k}"] = float(np.mean(1.0 - np.prod(ratio, axis=1)))
        out["n_users"] = int(len(self.user_ids))
        return out

    def evaluate(
        self, score_fn: ScoreFn, user_groups: Optional[Mapping[str, Hashable]] = None
    ) -> EvalResult:
        """Scores every test user in batches and averages the top-K metrics.

        Args:
          score_fn: maps an array of user ids to float scores [n_users, len(item_ids)].
          user_groups: optional {user_id: label} covering every test user; metrics are also
            averaged per label (P4 sparsity buckets).
        """
        self._check_groups(user_groups)
        kmax = self.ks[-1]
        n_items = len(self.item_ids)

        def batches():
            for rows in self._batches(np.arange(len(self.user_ids))):
                top = select_topk(self._scores(score_fn, rows), kmax)
                relevant = self._relevant.dense(rows, n_items)
                hits = np.take_along_axis(relevant, np.maximum(top, 0), axis=1) & (top >= 0)
                yield rows, top, hits

        return self._summarize(batches(), self.ks, user_groups)

    def evaluate_ranked(
        self,
        ranked_ids: np.ndarray,
        user_ids: Optional[Sequence[str]] = None,
        user_groups: Optional[Mapping[str, Hashable]] = None,
    ) -> EvalResult:
        """Top-K metrics of given ranked lists, at a cost of users x list length.

        The result is what `evaluate` gives for scores that rank each list first, in its order,
        without building those users x catalog scores: ids that are not candidates, the user's
        train items, padding ("") and repeats of an earlier id are skipped, and a list left
        shorter than a cut-off is completed the way `evaluate` ranks unscored items, with the
        user's other unseen candidates in id order. Cut-offs beyond the lists' width would
        judge mostly that completion, so their metrics are left out.

        Args:
          ranked_ids: [n_users, L] item ids per user, best first, "" padding.
          user_ids: the user of each row, every test user once in any order; default
            `self.user_ids`.
          user_groups: as for `evaluate`.

        Example:
          >>> ev = TopKEvaluator(train, test, ks=(10, 50))
          >>> lists = np.array([recs[u] for u in ev.user_ids], dtype=object)  # [U, 10]
          >>> ev.evaluate_ranked(lists).metrics["ndcg@10"]  # no recall@50 from 10-long lists
        """
        self._check_groups(user_groups)
        ranked = np.asarray(ranked_ids, dtype=object)
        if ranked.ndim != 2:
            raise ValueError(f"ranked_ids must be [users, list length], got shape {ranked.shape}")
        if user_ids is None:
            users = self.user_ids
        else:
            users = np.asarray([str(u) for u in user_ids], dtype=object)
        if len(users) != ranked.shape[0]:
            raise ValueError(f"ranked_ids has {ranked.shape[0]} rows for {len(users)} user ids")
        row_of = pd.Index(self.user_ids).get_indexer(users)
        if np.any(row_of < 0) or len(np.unique(row_of)) != len(self.user_ids):
            unknown = list(users[row_of < 0][:5])
            missing = list(np.setdiff1d(self.user_ids, users[row_of >= 0])[:5])
            raise ValueError(
                f"ranked lists need one row per test user: not test users {unknown}, "
                f"missing {missing}, {len(users) - len(np.unique(users))} repeated"
            )
        ks = tuple(k for k in self.ks if k <= ranked.shape[1])
        pos = np.empty(ranked.shape, dtype=np.int64)
        pos[row_of] = self._item_pos.get_indexer(ranked.ravel()).reshape(ranked.shape)
        width = ks[-1] if ks else 0

        def batches():
            for rows in self._batches(np.arange(len(self.user_ids))):
                top = self._ranked_top(pos[rows], rows, width)
                yield rows, top, self._relevant.contains(rows[:, None], top)

        return self._summarize(batches(), ks, user_groups)

    def _ranked_top(self, pos: np.ndarray, rows: np.ndarray, width: int) -> np.ndarray:
        """What `select_topk(scores, width)` returns when `scores` rank `pos` [n, L] first."""
        by_id = np.argsort(pos, axis=1, kind="stable")
        sorted_pos = np.take_along_axis(pos, by_id, axis=1)
        repeat_sorted = np.zeros(pos.shape, dtype=bool)
        repeat_sorted[:, 1:] = sorted_pos[:, 1:] == sorted_pos[:, :-1]
        repeat = np.zeros(pos.shape, dtype=bool)
        np.put_along_axis(repeat, by_id, repeat_sorted, axis=1)
        keep = (pos >= 0) & ~repeat & ~self._seen.contains(rows[:, None], pos)
        first = np.argsort(~keep, axis=1, kind="stable")[:, :width]
        top = np.where(
            np.take_along_axis(keep, first, axis=1), np.take_along_axis(pos, first, axis=1), -1
        )
        n_kept = np.minimum(keep.sum(axis=1), width)
        short = np.flatnonzero(n_kept < width)
        if len(short) == 0:
            return top
        # Unscored items tie at the bottom and go in id order: a short row's next entries are
        # its lowest-id candidates neither seen nor listed, all among its first width + |seen|.
        n_items = len(self.item_ids)
        n_seen = np.diff(self._seen.indptr)[rows[short]]
        span = np.minimum(width + n_seen, n_items)
        owner = np.repeat(np.arange(len(short)), span)
        starts = np.cumsum(span) - span
        col = np.arange(int(span.sum())) - np.repeat(starts, span)
        kr, kc = np.nonzero(keep[short])
        listed = np.isin(owner * n_items + col, kr * n_items + pos[short][kr, kc])
        free = ~listed & ~self._seen.contains(rows[short][owner], col)
        seen_free = np.cumsum(free)
        free_before = np.concatenate([[0], seen_free])[starts]
        rank = seen_free - free_before[owner] - 1
        fill = free & (rank < (width - n_kept[short])[owner])
        top[short[owner[fill]], n_kept[short][owner[fill]] + rank[fill]] = col[fill]
        return top

    def _check_groups(self, user_groups: Optional[Mapping[str, Hashable]]) -> None:
        if user_groups is None:
            return
        missing = [u for u in self.user_ids if u not in user_groups]
        if missing:
            raise ValueError(
                f"user_groups has no label for {len(missing)} test user(s), e.g. {missing[:5]}"
            )

    def _summarize(self, batches: Iterable[Tuple[np.ndarray, np.ndarray, np.ndarray]],
                   ks: Sequence[int], user_groups: Optional[Mapping[str, Hashable]]
                   ) -> EvalResult:
        """Averages the metrics of `(rows, top, hits)` batches covering every test user in order.

        `top` [n, >= max(ks)] holds candidate columns best first (-1 pads) and `hits` whether
        each is relevant to the row's user.
        """
        n_items = len(self.item_ids)
        per_user: Dict[str, List[np.ndarray]] = {}
        covered = {k: np.zeros(n_items, dtype=bool) for k in ks}

        def add(name: str, values: np.ndarray) -> None:
            per_user.setdefault(name, []).append(values)

        for rows, top, hits in batches:
            n_rel = self.n_relevant[rows]
            for k in ks:
                for name, fn in _RANK_METRICS.items():
                    add(f"{name}@{k}", fn(hits, n_rel, k))
                topk_k = top[:, :k]
                covered[k][topk_k[topk_k >= 0]] = True
                add(f"novelty@{k}", M.novelty(topk_k, self.item_popularity))
                if self._features is not None:
                    add(f"diversity@{k}", M.intra_list_diversity(topk_k, self._features))

        table = pd.DataFrame({name: np.concatenate(v) for name, v in per_user.items()},
                             index=pd.RangeIndex(len(self.user_ids)))
        metrics = {name: float(np.nanmean(table[name].to_numpy())) for name in table.columns}
        for k in ks:
            metrics[f"coverage@{k}"] = float(covered[k].mean())
        metrics["n_users"] = int(len(self.user_ids))
        table.insert(0, USER_ID, self.user_ids)

        by_group: Dict[Hashable, Dict[str, float]] = {}
        if user_groups is not None:
            labels = pd.Series([user_groups[u] for u in self.user_ids])
            for label, idx in labels.groupby(labels, sort=True).groups.items():
                sub = table.drop(columns=[USER_ID]).iloc[np.asarray(idx)]
                group = {c: float(np.nanmean(sub[c].to_numpy())) for c in sub.columns}
                group["n_users"] = int(len(sub))
                by_group[label] = group
        return EvalResult(metrics=metrics, by_group=by_group, per_user=table)


def evaluate_ratings(
    y_true, y_pred, rating_range: Optional[Sequence[float]] = None
) -> Dict[str, float]:
    """P2 metrics: RMSE and MAE after clipping predictions into `rating_range`."""
    pred = M.clip_ratings(y_pred, rating_range)
    return {"rmse": M.rmse(y_true, pred), "mae": M.mae(y_true, pred)}

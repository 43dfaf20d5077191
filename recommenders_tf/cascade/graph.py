"""The cascade's one computation: a TensorFlow module that evaluation, training and serving call.

`CascadeGraph` holds the fitted stages and the tables they read, and computes, batched and in
the graph:

  0. history     the real ids moved to the end, order kept: "" padding may sit anywhere
  1. retrieval   query tower over (user id, history) -> the index's top `retrieval_k` without
                 the history and exclusion ids (`RetrievalIndex.search_excluding`: any
                 exclusion width, cost k + W; ScaNN rows left short get an exact pass)
  2. ranking     `RankingModel` over those candidates with their retrieval scores ->
                 top `ranking_k`
  3. re-ranking  the re-ranker's inputs of the ranked list, the `Reranker`, MMR/DPP when
                 diversity is on, then `BusinessRulesLayer` (history and exclusions,
                 duplicates, category caps) -> top `k`
  fallback       a user id the retrieval vocabulary does not know gets popular items, blended
                 with the items most similar in text to the history when one is given; computed
                 only for the rows that use it.

Who calls what:
  `Cascade.run` (P1 stage metrics, `recommend`)   `stages`
  `diversity_curve` (the trade-off at many lambdas) `finish` on the re-ranked lists
  `fit_cascade` (the re-ranker's training lists)   `retrieve`, then `rank` with each fold's ranker
  `export_cascade` (TF Serving)                    `serve`, `serve_with_exclusions`

so what is measured is what is served: the evaluated lists are the BruteForce export's
answers (tests/test_cascade.py checks it, diversity on and off).

Example:
  >>> graph = CascadeGraph.from_cascade(cascade, index)
  >>> out = graph.stages(tf.constant(["42"]), tf.constant([["", "7", "9"]]),
  ...                    tf.constant([["7", "9"]]))
  >>> out["item_ids"]  # [1, k] final ids; out["retrieval_ids"], out["ranking_ids"], ...
"""
from __future__ import annotations

import types
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np

import recommenders_tf  # noqa: F401  (selects tf-keras before TensorFlow loads)
import tensorflow as tf

from recommenders_tf.cascade.config import CascadeConfig
from recommenders_tf.features.id_lists import PAD, compact_right, fit_width
from recommenders_tf.index.scann_index import RetrievalIndex
from recommenders_tf.models.candidate_features import RETRIEVAL_SCORE
from recommenders_tf.models.diversity import dpp_rerank_tf, mmr_rerank_tf
from recommenders_tf.models.ranking import RankingModel
from recommenders_tf.models.reranking import Reranker
from recommenders_tf.models.rules import BusinessRulesLayer
from recommenders_tf.models.tables import FrozenTable
from recommenders_tf.serving.contract import (EXCLUSION_INPUTS, RETRIEVAL_INPUTS, USER_ID,
                                              tensor_spec)

# What the export's signatures return; `stages` returns these and every stage's list.
OUTPUTS = ("item_ids", "scores", "retrieval_rank", "ranking_rank", "rerank_rank", "source")
STAGE_OUTPUTS = ("retrieval_ids", "retrieval_scores", "ranking_ids", "ranking_scores",
                 "rerank_ids", "rerank_scores")
DIVERSITY_METHODS = ("mmr", "dpp")
_NEG_INF = float("-inf")


def _table(rows: np.ndarray, name: str) -> FrozenTable:
    """A lookup table whose row 0 (unknown / padding ids) is zeros, in the SavedModel's variables
    rather than its graph proto (`models.tables`)."""
    return FrozenTable(np.asarray(rows, np.float32), name, zero_row=True)


def _rank_of(final: tf.Tensor, stage: tf.Tensor) -> tf.Tensor:
    """1-based position of each `final` id [B, k] in `stage` [B, L]; 0 if absent or ""."""
    same = tf.logical_and(tf.equal(final[:, :, None], stage[:, None, :]),
                          tf.not_equal(final, PAD)[:, :, None])
    found = tf.reduce_any(same, -1)
    return tf.where(found, tf.cast(tf.argmax(tf.cast(same, tf.int32), -1), tf.int32) + 1, 0)


_USER = tensor_spec(USER_ID)
_IDS = tf.TensorSpec([None, None], tf.string)
_SCORES = tf.TensorSpec([None, None], tf.float32)


class CascadeGraph(tf.Module):
    """The fitted stages as one TF computation (see the module docstring).

    Args:
      config: CascadeConfig (list sizes, re-ranker inputs, diversity, rules).
      query_tower: the retrieval query tower (raw user id and history in).
      index: a `RetrievalIndex` over `catalog` with its candidate embeddings.
      ranker: the `RankingModel` (its `context_features` feed the re-ranker).
      reranker: the `Reranker`, or None for a graph that only retrieves and ranks (the fit's
        out-of-fold lists).
      catalog: sorted item ids the index and the tables are aligned with.
      candidate_embeddings: [n, d] retrieval candidate vectors ("embedding" re-ranker input).
      item_tables: {name: [n, D]} catalogue-aligned tables the re-ranker may read ("text",
        "genres").
      diversity_vectors: [n, G] item vectors of MMR/DPP, or None.
      categories: {item: category} of the rules' category caps.
      popularity: [n] train counts (the unknown-user fallback).
      text: [n, D] text vectors of the fallback's history profile; or a `FrozenTable` of their
        unit rows behind a zero row (the ranker context's table, shared rather than copied);
        or None.
      query_history, ranker_history: how many recent ids each tower reads.
      fallback_text_weight: text-profile weight of the unknown-user fallback.
      user_vocabulary: ids the retrieval model knows; others get the fallback.
    """

    def __init__(self, config: CascadeConfig, query_tower: Any, index: RetrievalIndex,
                 ranker: RankingModel, reranker: Optional[Reranker], catalog: Sequence[str],
                 candidate_embeddings: np.ndarray,
                 item_tables: Mapping[str, Optional[np.ndarray]],
                 diversity_vectors: Optional[np.ndarray], categories: Mapping[str, str],
                 popularity: np.ndarray, text: Optional[np.ndarray], query_history: int,
                 ranker_history: int, user_vocabulary: Sequence[str],
                 fallback_text_weight: float = 0.5):
        super().__init__()
        cfg = config
        self.config = cfg
        self.query_tower = query_tower
        self.index_layer = index.layer
        self.catalog_rows = index.rows  # tracked: the index's id -> row table (and vectors)
        self._index = index
        self.ranker = ranker
        self.reranker = reranker
        self.rules = BusinessRulesLayer(
            cfg.rules, dict(categories) if cfg.rules.category_caps is not None else None)
        catalog = [str(i) for i in catalog]
        self.catalog_lookup = tf.keras.layers.StringLookup(
            vocabulary=catalog, num_oov_indices=1, mask_token=None, name="catalog_lookup")
        self.user_lookup = tf.keras.layers.StringLookup(
            vocabulary=[str(u) for u in user_vocabulary], num_oov_indices=1,
            mask_token=None, name="known_users")
        self.candidate_table = _table(candidate_embeddings, "candidate_embeddings")
        self.item_tables = {name: _table(t, f"item_{name}") for name, t in item_tables.items()
                            if t is not None}
        self.diversity_table = (None if diversity_vectors is None
                                else _table(diversity_vectors, "diversity_vectors"))
        # Fallback: standardised log popularity, and unit text vectors for the profile.
        log_pop = np.log1p(np.asarray(popularity, np.float64))
        self.popularity_z = tf.constant(((log_pop - log_pop.mean())
                                         / (log_pop.std() or 1.0)).astype(np.float32))
        self.catalog_ids = FrozenTable(np.asarray(catalog, dtype=object).astype(str),
                                       "catalog_ids")
        self.fallback_text = text if isinstance(text, FrozenTable) or text is None else None
        if self.fallback_text is None and text is not None:
            unit = text / np.maximum(np.linalg.norm(text, axis=1, keepdims=True), 1e-6)
            self.fallback_text = _table(unit, "fallback_text")
        self.fallback_text_weight = float(fallback_text_weight)
        self.retrieval_k, self.ranking_k, self.k = cfg.retrieval_k, cfg.ranking_k, cfg.k
        self.query_history = max(int(query_history), 1)
        self.ranker_history = max(int(ranker_history), 1)
        self.num_items = len(catalog)

        # The in-process calls sit in a plain namespace, which tf.Module does not track: a
        # SavedModel of this module then holds the two serving functions only.
        # Each wraps a closure of its own: a fit builds one graph per fold, and TF's retracing
        # warning counts traces per Python function, so bound methods of one class would
        # read as one function retraced.
        self._calls = types.SimpleNamespace(
            stages=tf.function(lambda u, h, e: self._stages(u, h, e),
                               input_signature=[_USER, _IDS, _IDS]),
            retrieve=tf.function(lambda u, h, e: self._retrieve_lists(u, h, e),
                                 input_signature=[_USER, _IDS, _IDS]),
            rank=tf.function(lambda u, h, i, s: self._rank_lists(u, h, i, s),
                             input_signature=[_USER, _IDS, _IDS, _SCORES]),
            finish={})
        # The two functions an export saves, with the serving contract's input names.
        self.serve = tf.function(self._serve, input_signature=[
            tensor_spec(n) for n in RETRIEVAL_INPUTS])
        self.serve_with_exclusions = tf.function(self._recommend, input_signature=[
            tensor_spec(n) for n in EXCLUSION_INPUTS])

    def stages(self, user_id, history, exclude) -> Dict[str, tf.Tensor]:
        """Every stage's list and the final answer: user_id [B], history [B, N] and exclude
        [B, W] string ("" padding anywhere) -> `OUTPUTS` and `STAGE_OUTPUTS`."""
        return self._calls.stages(user_id, history, exclude)

    def retrieve(self, user_id, history, exclude) -> Dict[str, tf.Tensor]:
        """Stage 1 alone: retrieval_ids, retrieval_scores [B, retrieval_k]."""
        return self._calls.retrieve(user_id, history, exclude)

    def rank(self, user_id, history, retrieval_ids, retrieval_scores) -> Dict[str, tf.Tensor]:
        """Stage 2 over given retrieval lists: ranking_ids, ranking_scores [B, ranking_k] and
        the re-ranker inputs of that list (`rerank_input_<name>`)."""
        return self._calls.rank(user_id, history, retrieval_ids, retrieval_scores)

    @classmethod
    def from_cascade(cls, cascade: Any, index: RetrievalIndex,
                     fallback_text_weight: float = 0.5) -> "CascadeGraph":
        """The graph of a fitted `Cascade` over `index` (BruteForce: exact; ScaNN: served)."""
        rec = cascade.retrieval
        cfg = cascade.config
        # The ranker's context holds the same unit text rows over the same catalogue (fit builds
        # both from one array): sharing it keeps one [n, D] table in memory and in the export.
        context = getattr(cascade, "context", None)
        text = cascade.text
        if (text is not None and getattr(context, "text", None) is not None
                and context.item_ids == [str(i) for i in cascade.catalog]):
            text = context.text
        return cls(cfg, rec.query_tower, index, cascade.ranker, cascade.reranker,
                   cascade.catalog, rec.candidate_embeddings(cascade.catalog),
                   {n: t for n, t in cascade.feature_tables.items()
                    if n in cfg.rerank_item_features},
                   cascade.diversity_vectors,
                   cascade.categories, cascade.popularity, text,
                   rec.config.history_len, cascade.ranker.history_len,
                   rec.vocabularies["user_id"].tokens, fallback_text_weight)

    # ---- stages ------------------------------------------------------------------------------

    def _vectors(self, table: FrozenTable, ids: tf.Tensor) -> tf.Tensor:
        return tf.gather(table.values, self.catalog_lookup(ids))

    def _query(self, user_id, history):
        return self._index.serving_embeddings(
            self.query_tower, {"user_id": user_id,
                               "history": fit_width(history, self.query_history)})

    def _search(self, query, history, exclude):
        scores, ids = self._index.search_excluding(query, tf.concat([history, exclude], 1),
                                                   self.retrieval_k)
        return ids, tf.where(tf.not_equal(ids, PAD), scores, _NEG_INF)

    def _retrieve_lists(self, user_id, history, exclude):
        """Stage 1: (ids, scores) [B, retrieval_k] without history and exclusions."""
        history = compact_right(history)
        ids, scores = self._search(self._query(user_id, history), history, exclude)
        return {"retrieval_ids": ids, "retrieval_scores": scores}

    def _rank(self, user_id, history, ids, scores):
        mask = tf.not_equal(ids, PAD)
        retrieval_score = tf.where(mask, scores, 0.0)
        ranker_history = fit_width(history, self.ranker_history)
        ranked = self.ranker({"user_id": user_id, "history": ranker_history, "item_id": ids,
                              RETRIEVAL_SCORE: retrieval_score}, training=False)
        ranked = tf.where(mask, ranked, _NEG_INF)
        rank_scores, rank_pos = tf.math.top_k(ranked, k=self.ranking_k)
        rank_ids = tf.gather(ids, rank_pos, batch_dims=1)
        rank_mask = tf.logical_and(tf.not_equal(rank_ids, PAD), tf.math.is_finite(rank_scores))
        return {"ranking_ids": tf.where(rank_mask, rank_ids, PAD),
                "ranking_scores": tf.where(rank_mask, rank_scores, _NEG_INF),
                "ranking_retrieval": tf.where(rank_mask, tf.gather(retrieval_score, rank_pos,
                                                                   batch_dims=1), 0.0),
                "ranking_mask": rank_mask, "ranker_history": ranker_history}

    def _rerank_inputs(self, ranked, query, features: Sequence[str], user: str):
        """The re-ranker's inputs of a ranked list (what `fit_cascade` trains it on).

        item_vectors: the concatenation of `features`: "context" (the ranker's standardised
          context features: retrieval score, popularity, text and co-occurrence similarity to
          the history), "genres" (multi-hot, so the encoder can see redundancy in the list),
          "text" (the LM vector), "embedding" (the retrieval candidate embedding);
        item_scores: [ranker score, retrieval score] (column 0 is what the list is sorted by);
        user_vector: the retrieval query embedding when `user` is "embedding".
        """
        ids, mask = ranked["ranking_ids"], ranked["ranking_mask"]
        parts = []
        for name in features:
            if name == "context":
                parts.append(self.ranker.context_features(
                    {"item_id": ids, "history": ranked["ranker_history"],
                     RETRIEVAL_SCORE: ranked["ranking_retrieval"]}))
            elif name == "embedding":
                parts.append(self._vectors(self.candidate_table, ids))
            elif name in self.item_tables:
                parts.append(self._vectors(self.item_tables[name], ids))
        if not parts:
            raise ValueError(f"no re-ranker item features available from {tuple(features)}")
        weights = tf.cast(mask, tf.float32)
        inputs = {"item_vectors": tf.concat(parts, -1) * weights[..., None],
                  "item_scores": tf.stack([tf.where(mask, ranked["ranking_scores"], 0.0),
                                           ranked["ranking_retrieval"]], -1),
                  "mask": mask}
        if user == "embedding":
            inputs["user_vector"] = query
        return inputs

    def _rank_lists(self, user_id, history, ids, scores):
        """Stage 2 over given retrieval lists, with the re-ranker inputs of its top list."""
        history = compact_right(history)
        ranked = self._rank(user_id, history, ids, scores)
        # The query tower runs only when the re-ranker reads the user's query vector.
        query = (self._query(user_id, history) if self.config.rerank_user == "embedding"
                 else None)
        inputs = self._rerank_inputs(ranked, query, self.config.rerank_item_features,
                                     self.config.rerank_user)
        return {"ranking_ids": ranked["ranking_ids"],
                "ranking_scores": ranked["ranking_scores"],
                **{f"rerank_input_{k}": v for k, v in inputs.items()}}

    def _rerank(self, ranked, query):
        inputs = self._rerank_inputs(ranked, query, self.config.rerank_item_features,
                                     self.config.rerank_user)
        mask = ranked["ranking_mask"]
        rerank = tf.where(mask, self.reranker(inputs, training=False), _NEG_INF)
        re_scores, re_pos = tf.math.top_k(rerank, k=self.ranking_k)
        re_ids = tf.where(tf.math.is_finite(re_scores),
                          tf.gather(ranked["ranking_ids"], re_pos, batch_dims=1), PAD)
        return re_ids, re_scores

    def _diversify(self, ids, scores, method: str, lam):
        """MMR / DPP re-ordering; scores keep their values (the relevance traded off), so a
        rule that cuts the list still sees each item's relevance."""
        mask = tf.not_equal(ids, PAD)
        rel = tf.where(mask, scores, 0.0)
        fn = mmr_rerank_tf if method == "mmr" else dpp_rerank_tf
        picks = fn(rel, self._vectors(self.diversity_table, ids), self.ranking_k, lam=lam,
                   mask=mask)
        valid = picks >= 0
        safe = tf.maximum(picks, 0)
        return (tf.where(valid, tf.gather(ids, safe, batch_dims=1), PAD),
                tf.where(valid, tf.gather(scores, safe, batch_dims=1), _NEG_INF))

    def _apply_rules(self, ids, scores, history, exclude):
        """Business rules over a list in its final order -> (ids, scores) [B, k].

        The rules keep the best-scored survivors, so they are handed the list's order as the
        score (a diversified order is not sorted by relevance); the scores returned are the
        list's own.
        """
        length = tf.shape(ids)[1]
        position_score = tf.cast(length - tf.range(length), tf.float32)[None, :]
        position_score = tf.where(tf.not_equal(ids, PAD), position_score, _NEG_INF)
        ruled = self.rules(ids, position_score, history=history, exclude=exclude)
        pos = ruled.positions
        return ruled.item_ids, tf.where(pos >= 0, tf.gather(scores, tf.maximum(pos, 0),
                                                            batch_dims=1), _NEG_INF)

    def _finish_lists(self, ids, scores, history, exclude, method: str, lam):
        if method != "none":
            ids, scores = self._diversify(ids, scores, method, lam)
        return self._apply_rules(ids, scores, history, exclude)

    def finish(self, rerank_ids, rerank_scores, history, exclude, method: str,
               lam: float) -> Dict[str, tf.Tensor]:
        """Diversity (`method` "mmr", "dpp" or "none", trade-off `lam`) and the rules over
        re-ranked lists: the tail of `stages` at another lambda, without re-running stages
        1-3 (the accuracy-diversity curves)."""
        if method != "none" and self.diversity_table is None:
            raise ValueError("the cascade has no item vectors (genres or text) for diversity")
        finish = self._calls.finish
        if method not in finish:
            def tail(ids, scores, hist, excl, lam):
                final_ids, final_scores = self._finish_lists(ids, scores, compact_right(hist),
                                                             excl, method, lam)
                return {"item_ids": final_ids, "scores": final_scores}

            finish[method] = tf.function(tail, input_signature=[
                _IDS, _SCORES, _IDS, _IDS, tf.TensorSpec([], tf.float32)])
        return finish[method](rerank_ids, rerank_scores, history, exclude,
                                    tf.constant(lam, tf.float32))

    def _cascade(self, user_id, history, exclude):
        query = self._query(user_id, history)
        ids, scores = self._search(query, history, exclude)
        ranked = self._rank(user_id, history, ids, scores)
        re_ids, re_scores = self._rerank(ranked, query)
        final_ids, final_scores = self._finish_lists(
            re_ids, re_scores, history, exclude,
            self.config.diversity if self.diversity_table is not None else "none",
            tf.constant(self.config.diversity_lambda, tf.float32))
        return {"item_ids": final_ids, "scores": final_scores,
                "retrieval_rank": _rank_of(final_ids, ids),
                "ranking_rank": _rank_of(final_ids, ranked["ranking_ids"]),
                "rerank_rank": _rank_of(final_ids, re_ids),
                "retrieval_ids": ids, "retrieval_scores": scores,
                "ranking_ids": ranked["ranking_ids"],
                "ranking_scores": ranked["ranking_scores"],
                "rerank_ids": re_ids, "rerank_scores": re_scores}

    def _stages(self, user_id, history, exclude):
        """Every stage's list and the served answer (the fallback's for unknown users; their
        stage lists are the towers' out-of-vocabulary answers)."""
        history = compact_right(history)
        exclude = tf.convert_to_tensor(exclude)
        out = self._cascade(user_id, history, exclude)
        known = self.user_lookup(user_id) > 0
        # The fallback scores the whole catalogue: only for the rows that use it.
        unknown = tf.where(tf.logical_not(known))  # [U, 1]
        served = [name for name in OUTPUTS if name != "source"]

        def with_fallback():
            fallback = self._fallback(tf.gather_nd(history, unknown),
                                      tf.gather_nd(exclude, unknown))
            return {name: tf.tensor_scatter_nd_update(out[name], unknown, fallback[name])
                    for name in served}

        merged = tf.cond(tf.size(unknown) > 0, with_fallback,
                         lambda: {name: out[name] for name in served})
        merged.update({name: out[name] for name in STAGE_OUTPUTS})
        merged["source"] = tf.where(known, "cascade", "fallback")
        return merged

    def _recommend(self, user_id, history, exclude_item_ids):
        out = self._stages(user_id, history, exclude_item_ids)
        return {name: out[name] for name in OUTPUTS}

    def _serve(self, user_id, history):
        return self._recommend(user_id, history, tf.fill(tf.stack([tf.shape(user_id)[0], 1]),
                                                         PAD))

    def _fallback(self, history, exclude):
        batch = tf.shape(history)[0]
        n = tf.shape(self.popularity_z)[0]
        score = tf.broadcast_to(self.popularity_z[None, :], tf.stack([batch, n]))
        if self.fallback_text is not None and self.fallback_text_weight > 0:
            rows = self.catalog_lookup(history)
            known = tf.cast(rows > 0, tf.float32)
            vectors = tf.gather(self.fallback_text.values, rows)
            profile = tf.reduce_sum(vectors * known[..., None], 1)
            profile = tf.math.l2_normalize(profile, -1, epsilon=1e-6)
            similarity = tf.matmul(profile, self.fallback_text.values[1:], transpose_b=True)
            has_history = tf.reduce_any(rows > 0, -1)[:, None]
            w = self.fallback_text_weight
            # cosine (in [-1, 1]) scaled to the popularity z-scores' spread
            blended = (1.0 - w) * score + w * 3.0 * similarity
            score = tf.where(has_history, blended, score)
        # History and exclusions masked by catalogue row: cost catalogue + W, not x W.
        banned = self.catalog_lookup(tf.concat([history, exclude], 1))  # 0: unknown or ""
        rows = tf.stack([tf.broadcast_to(tf.range(batch, dtype=banned.dtype)[:, None],
                                         tf.shape(banned)), banned], -1)
        hit = tf.scatter_nd(tf.reshape(rows, [-1, 2]), tf.ones([tf.size(banned)], tf.int32),
                            tf.cast(tf.stack([batch, n + 1]), banned.dtype))[:, 1:] > 0
        score = tf.where(hit, _NEG_INF, score)
        values, positions = tf.math.top_k(score, k=min(self.k, self.num_items))
        cand = tf.where(tf.math.is_finite(values), tf.gather(self.catalog_ids.values, positions),
                        PAD)
        missing = self.k - min(self.k, self.num_items)
        values = tf.pad(values, [[0, 0], [0, missing]], constant_values=_NEG_INF)
        cand = tf.pad(cand, [[0, 0], [0, missing]], constant_values=PAD)
        zeros = tf.zeros(tf.shape(cand), tf.int32)
        return {"item_ids": cand, "scores": values, "retrieval_rank": zeros,
                "ranking_rank": zeros, "rerank_rank": zeros}

"""The whole cascade as one SavedModel: raw ids in, the final top k out (TF Serving layout).

```
saved_models/recommender/<version>/             ScaNN retrieval (needs the ScaNN ops)
saved_models/recommender_bruteforce/<version>/  exact retrieval, stock TF ops only
```

Signatures (B users, N history ids most recent last, "" padding anywhere; any W exclusion ids):

* `serving_default(user_id [B], history [B, N]) -> outputs`
* `recommend_with_exclusions(user_id [B], history [B, N], exclude_item_ids [B, W])`

outputs: `item_ids` string [B, k], `scores` float32 [B, k] (the re-ranker's), and for each
final item its 1-based rank after every stage, `retrieval_rank`, `ranking_rank`,
`rerank_rank` int32 [B, k] (0 for the fallback), plus `source` string [B] ("cascade" or
"fallback"). Empty slots: id "", score -inf, ranks 0.

What one call runs, all in the graph:
  0. history     the real ids moved to the end, order kept: "" padding may sit anywhere
  1. retrieval   query tower over (user id, history) -> the index's top `retrieval_k` without
                 the history and exclusion ids (`RetrievalIndex.search_excluding`: any
                 exclusion width, cost k + W; ScaNN rows left short get an exact pass)
  2. ranking     `RankingModel` over those candidates with their retrieval scores ->
                 top `ranking_k`
  3. re-ranking  `Reranker` over the ranked list; MMR/DPP if the cascade has diversity on;
                 `BusinessRulesLayer` (history and exclusions, duplicates, category caps)
  fallback       a user id the retrieval vocabulary does not know gets popular items, blended
                 with the items most similar in text to the history when one is given
                 (`fallback_text_weight`), the history and exclusions removed; computed only
                 for the rows that use it.

Load a ScaNN export with `import scann` first (or in the ScaNN-enabled TF Serving build); the
BruteForce twin loads anywhere.

Example:
  >>> export_cascade(cascade, "saved_models", kind="bruteforce")
  PosixPath('saved_models/recommender_bruteforce/1')
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import numpy as np

import recommenders_tf  # noqa: F401  (selects tf-keras before TensorFlow loads)
import tensorflow as tf

from recommenders_tf.cascade.stages import Cascade, query_embeddings
from recommenders_tf.data.schema import ITEM_ID, USER_ID
from recommenders_tf.features.id_lists import compact_right, fit_width
from recommenders_tf.index.scann_index import RetrievalIndex, build_index
from recommenders_tf.models.candidate_features import RETRIEVAL_SCORE
from recommenders_tf.models.diversity import dpp_rerank_tf, mmr_rerank_tf
from recommenders_tf.models.rules import BusinessRulesLayer
from recommenders_tf.serving.export import (EXCLUDE_INPUT, EXCLUSION_NOTE, ID_ORDER_NOTE,
                                            SERVING_DEFAULT, WITH_EXCLUSIONS, package_version,
                                            save_export)
from recommenders_tf.serving.warmup import batched_requests

DEFAULT_NAMES = {"scann": "recommender", "bruteforce": "recommender_bruteforce"}
OUTPUTS = ("item_ids", "scores", "retrieval_rank", "ranking_rank", "rerank_rank", "source")
_NEG_INF = float("-inf")


def _table(rows: np.ndarray) -> tf.Tensor:
    """A constant lookup table whose row 0 (unknown / padding ids) is zeros."""
    rows = np.asarray(rows, np.float32)
    return tf.constant(np.concatenate([np.zeros((1,) + rows.shape[1:], np.float32), rows]))


def _rank_of(final: tf.Tensor, stage: tf.Tensor) -> tf.Tensor:
    """1-based position of each `final` id [B, k] in `stage` [B, L]; 0 if absent or ""."""
    same = tf.logical_and(tf.equal(final[:, :, None], stage[:, None, :]),
                          tf.not_equal(final, "")[:, :, None])
    found = tf.reduce_any(same, -1)
    return tf.where(found, tf.cast(tf.argmax(tf.cast(same, tf.int32), -1), tf.int32) + 1, 0)


class _CascadeModule(tf.Module):
    """Everything one recommendation needs, tracked so `tf.saved_model.save` keeps it."""

    def __init__(self, cascade: Cascade, index: RetrievalIndex,
                 fallback_text_weight: float):
        super().__init__()
        cfg = cascade.config
        rec = cascade.retrieval
        self.query_tower = rec.query_tower
        self.index_layer = index.layer
        self.ranker = cascade.ranker
        self.reranker = cascade.reranker
        self.rules = BusinessRulesLayer(
            cfg.rules, cascade.categories if cfg.rules.category_caps is not None else None)
        catalog = [str(i) for i in cascade.catalog]
        self.catalog_lookup = tf.keras.layers.StringLookup(
            vocabulary=catalog, num_oov_indices=1, mask_token=None, name="catalog_lookup")
        self.user_lookup = tf.keras.layers.StringLookup(
            vocabulary=list(rec.vocabularies[USER_ID].tokens), num_oov_indices=1,
            mask_token=None, name="known_users")
        self.candidate_table = _table(rec._candidates(rec._require_fitted(), cascade.catalog))
        self.item_tables = {name: _table(t) for name, t in cascade.feature_tables.items()
                            if t is not None and name in cfg.rerank_item_features}
        self.rerank_item_features = tuple(cfg.rerank_item_features)
        self.rerank_user = cfg.rerank_user
        self.diversity_table = (None if cfg.diversity == "none"
                                or cascade.diversity_vectors is None
                                else _table(cascade.diversity_vectors))
        # Fallback: standardised log popularity, and unit text vectors for the profile.
        log_pop = np.log1p(cascade.popularity)
        self.popularity_z = tf.constant(((log_pop - log_pop.mean())
                                         / (log_pop.std() or 1.0)).astype(np.float32))
        self.catalog_ids = tf.constant(np.asarray(catalog, dtype=object).astype(str))
        self.fallback_text = None
        if cascade.text is not None:
            unit = cascade.text / np.maximum(np.linalg.norm(cascade.text, axis=1,
                                                            keepdims=True), 1e-6)
            self.fallback_text = _table(unit)
        self.fallback_text_weight = float(fallback_text_weight)
        self.retrieval_k, self.ranking_k, self.k = cfg.retrieval_k, cfg.ranking_k, cfg.k
        self.query_history = max(int(rec.config.history_len), 1)
        self.ranker_history = max(int(cascade.ranker.history_len), 1)
        self.diversity, self.diversity_lambda = cfg.diversity, float(cfg.diversity_lambda)
        self.catalog_rows = index.rows  # tracked: the index's id -> row table (and vectors)
        self.search_excluding = index.search_excluding
        self.serving_embeddings = index.serving_embeddings
        self.num_items = len(catalog)

        user = tf.TensorSpec([None], tf.string, name="user_id")
        history = tf.TensorSpec([None, None], tf.string, name="history")
        exclude = tf.TensorSpec([None, None], tf.string, name=EXCLUDE_INPUT)

        @tf.function(input_signature=[user, history])
        def serve(user_id, history):
            empty = tf.fill(tf.stack([tf.shape(user_id)[0], 1]), "")
            return self._recommend(user_id, history, empty)

        @tf.function(input_signature=[user, history, exclude])
        def serve_with_exclusions(user_id, history, exclude_item_ids):
            return self._recommend(user_id, history, exclude_item_ids)

        self.serve = serve
        self.serve_with_exclusions = serve_with_exclusions

    def signatures(self) -> Dict[str, Any]:
        return {SERVING_DEFAULT: self.serve.get_concrete_function(),
                WITH_EXCLUSIONS: self.serve_with_exclusions.get_concrete_function()}

    # ---- the graph ---------------------------------------------------------------------------

    def _vectors(self, table: tf.Tensor, ids: tf.Tensor) -> tf.Tensor:
        return tf.gather(table, self.catalog_lookup(ids))

    def _recommend(self, user_id, history, exclude):
        # Real ids moved to the end first: recency is read from the right, whatever padding.
        history = compact_right(history)
        exclude = tf.convert_to_tensor(exclude)
        out = self._cascade(user_id, history, exclude)
        known = self.user_lookup(user_id) > 0
        # The fallback scores the whole catalogue: only for the rows that use it.
        unknown = tf.where(tf.logical_not(known))  # [U, 1]

        def with_fallback():
            fallback = self._fallback(tf.gather_nd(history, unknown),
                                      tf.gather_nd(exclude, unknown))
            return {name: tf.tensor_scatter_nd_update(out[name], unknown, fallback[name])
                    for name in fallback}

        merged = tf.cond(tf.size(unknown) > 0, with_fallback,
                         lambda: {name: out[name] for name in OUTPUTS if name != "source"})
        merged["source"] = tf.where(known, "cascade", "fallback")
        return merged

    def _cascade(self, user_id, history, exclude):
        query_history = fit_width(history, self.query_history)
        ranker_history = fit_width(history, self.ranker_history)
        query = self.serving_embeddings(
            self.query_tower, {"user_id": user_id, "history": query_history})
        banned = tf.concat([history, exclude], 1)
        scores, ids = self.search_excluding(query, banned, self.retrieval_k)
        mask = tf.not_equal(ids, "")
        retrieval_score = tf.where(mask, scores, 0.0)
        ranked = self.ranker({"user_id": user_id, "history": ranker_history, "item_id": ids,
                              RETRIEVAL_SCORE: retrieval_score}, training=False)
        ranked = tf.where(mask, ranked, _NEG_INF)
        rank_scores, rank_pos = tf.math.top_k(ranked, k=self.ranking_k)
        rank_ids = tf.gather(ids, rank_pos, batch_dims=1)
        rank_mask = tf.logical_and(tf.not_equal(rank_ids, ""), tf.math.is_finite(rank_scores))
        rank_ids = tf.where(rank_mask, rank_ids, "")
        rank_retrieval = tf.gather(retrieval_score, rank_pos, batch_dims=1)
        parts = []
        for name in self.rerank_item_features:  # the order `cascade.fit.rerank_inputs` uses
            if name == "context":
                parts.append(self.ranker.context_features(
                    {"item_id": rank_ids, "history": ranker_history,
                     RETRIEVAL_SCORE: tf.where(rank_mask, rank_retrieval, 0.0)}))
            elif name == "embedding":
                parts.append(self._vectors(self.candidate_table, rank_ids))
            elif self.item_tables.get(name) is not None:
                parts.append(self._vectors(self.item_tables[name], rank_ids))
        vectors = tf.concat(parts, -1)
        weights = tf.cast(rank_mask, tf.float32)
        item_scores = tf.stack([tf.where(rank_mask, rank_scores, 0.0),
                                tf.where(rank_mask, rank_retrieval, 0.0)], -1)
        inputs = {"item_vectors": vectors * weights[..., None], "item_scores": item_scores,
                  "mask": rank_mask}
        if self.rerank_user == "embedding":
            inputs["user_vector"] = query
        rerank = self.reranker(inputs, training=False)
        rerank = tf.where(rank_mask, rerank, _NEG_INF)
        re_scores, re_pos = tf.math.top_k(rerank, k=self.ranking_k)
        re_ids = tf.where(tf.math.is_finite(re_scores),
                          tf.gather(rank_ids, re_pos, batch_dims=1), "")
        order_ids, order_scores = re_ids, re_scores
        if self.diversity_table is not None:
            div_mask = tf.not_equal(re_ids, "")
            rel = tf.where(div_mask, re_scores, 0.0)
            fn = mmr_rerank_tf if self.diversity == "mmr" else dpp_rerank_tf
            picks = fn(rel, self._vectors(self.diversity_table, re_ids), self.ranking_k,
                       lam=self.diversity_lambda, mask=div_mask)
            valid = picks >= 0
            safe = tf.maximum(picks, 0)
            order_ids = tf.where(valid, tf.gather(re_ids, safe, batch_dims=1), "")
            order_scores = tf.where(valid, tf.gather(re_scores, safe, batch_dims=1), _NEG_INF)
        # The rules keep the best-scored survivors: hand them the final order as the score.
        length = tf.shape(order_ids)[1]
        position_score = tf.cast(length - tf.range(length), tf.float32)[None, :]
        position_score = tf.where(tf.not_equal(order_ids, ""), position_score, _NEG_INF)
        ruled = self.rules(order_ids, position_score, history=history, exclude=exclude)
        pos = ruled.positions
        final_ids = ruled.item_ids
        final_scores = tf.where(pos >= 0, tf.gather(order_scores, tf.maximum(pos, 0),
                                                    batch_dims=1), _NEG_INF)
        return {"item_ids": final_ids, "scores": final_scores,
                "retrieval_rank": _rank_of(final_ids, ids),
                "ranking_rank": _rank_of(final_ids, rank_ids),
                "rerank_rank": _rank_of(final_ids, re_ids)}

    def _fallback(self, history, exclude):
        batch = tf.shape(history)[0]
        n = tf.shape(self.popularity_z)[0]
        score = tf.broadcast_to(self.popularity_z[None, :], tf.stack([batch, n]))
        if self.fallback_text is not None and self.fallback_text_weight > 0:
            rows = self.catalog_lookup(history)
            known = tf.cast(rows > 0, tf.float32)
            profile = tf.reduce_sum(tf.gather(self.fallback_text, rows) * known[..., None], 1)
            profile = tf.math.l2_normalize(profile, -1, epsilon=1e-6)
            similarity = tf.matmul(profile, self.fallback_text[1:], transpose_b=True)
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
        cand = tf.where(tf.math.is_finite(values), tf.gather(self.catalog_ids, positions), "")
        missing = self.k - min(self.k, self.num_items)
        values = tf.pad(values, [[0, 0], [0, missing]], constant_values=_NEG_INF)
        cand = tf.pad(cand, [[0, 0], [0, missing]], constant_values="")
        zeros = tf.zeros(tf.shape(cand), tf.int32)
        return {"item_ids": cand, "scores": values, "retrieval_rank": zeros,
                "ranking_rank": zeros, "rerank_rank": zeros}


def build_cascade_index(cascade: Cascade, kind: str, search_width: int,
                        target_recall: float = 0.95, log=print):
    """The retrieval index of an export: exact BruteForce, or ScaNN tuned on the train users'
    real query embeddings to recall@retrieval_k >= target_recall against BruteForce."""
    from recommenders_tf.index.tuning import tune_scann

    rec = cascade.retrieval
    catalog = cascade.catalog
    embeddings = rec._candidates(rec._require_fitted(), catalog)
    if kind == "bruteforce":
        return build_index("bruteforce", None, catalog, embeddings, k=search_width), {}
    users = np.unique(cascade.train[USER_ID].astype(str).to_numpy()).astype(object)
    queries = query_embeddings(rec, users)
    tuned = tune_scann(catalog, embeddings, queries, k=cascade.config.retrieval_k,
                       target_recall=target_recall, min_reordering_candidates=search_width)
    log(f"ScaNN for the cascade: recall@{cascade.config.retrieval_k} {tuned.recall:.4f} "
        f"vs exact ({tuned.params.to_dict()})")
    index = build_index("scann", None, catalog, embeddings, k=search_width,
                        scann_params=tuned.params)
    return index, {"scann_params": tuned.params.to_dict(),
                   f"recall@{cascade.config.retrieval_k}_vs_exact": round(tuned.recall, 4),
                   "target_met": bool(tuned.target_met)}


def cascade_warmup_requests(cascade: Cascade, n_users: int = 8) -> List[tuple]:
    """Warmup requests from real users and their real histories, both signatures; the last
    rows are an unknown user with a history and one without (the fallback path)."""
    users = np.unique(cascade.train[USER_ID].astype(str).to_numpy())[:max(n_users - 2, 1)]
    hist = cascade.histories_for(users)
    users = np.concatenate([users, ["__warmup_unknown_user__"] * 2]).astype(object)
    hist = np.concatenate([hist, hist[:1], np.full((1, hist.shape[1]), "", object)])
    seen = cascade.train.groupby(cascade.train[USER_ID].astype(str))[ITEM_ID].agg(list)
    exclude = np.full((len(users), 1), "", object)
    for r, u in enumerate(users):
        items = seen.get(u, [])
        if items:
            exclude[r, 0] = str(items[0])
    rows = {"user_id": users.astype(object), "history": hist.astype(object)}
    return (batched_requests(SERVING_DEFAULT, rows, batch_sizes=(1, len(users)))
            + batched_requests(WITH_EXCLUSIONS, rows, batch_sizes=(1, len(users)),
                               extra={EXCLUDE_INPUT: exclude}))


def export_cascade(cascade: Cascade, base_dir="saved_models", kind: str = "scann",
                   name: Optional[str] = None, exclusion_budget: int = 100,
                   fallback_text_weight: float = 0.5, metadata: Optional[Mapping] = None,
                   log=print) -> Path:
    """Exports the whole cascade as the next integer version of `base_dir/<name>`.

    Args:
      cascade: a fitted `Cascade`.
      base_dir: TF Serving model base path.
      kind: "scann" (tuned, needs the ScaNN ops) or "bruteforce" (exact, stock ops).
      name: model name (default "recommender" / "recommender_bruteforce").
      exclusion_budget: ScaNN's reordering budget beyond `retrieval_k`: up to this many
        history and exclusion ids are removed within the approximate pass; rows with more
        get an exact pass over the catalogue (BruteForce is exact at any width).
      fallback_text_weight: text-profile weight of the unknown-user fallback.
      metadata: extra facts for metadata.json.
    """
    if kind not in DEFAULT_NAMES:
        raise ValueError(f"kind must be one of {sorted(DEFAULT_NAMES)}, got {kind!r}")
    cfg = cascade.config
    n = len(cascade.catalog)
    width = n if kind == "bruteforce" else min(n, cfg.retrieval_k + int(exclusion_budget))
    index, index_facts = build_cascade_index(cascade, kind, width, log=log)
    module = _CascadeModule(cascade, index, fallback_text_weight)
    rec = cascade.retrieval
    meta = {
        "format_version": 1, "model_name": name or DEFAULT_NAMES[kind], "kind": "cascade",
        "index_type": kind, "requires_scann_ops": kind == "scann",
        "stages": {"retrieval": {"model": "two-tower", "k": cfg.retrieval_k,
                                 "search_width": width, "notes": rec.notes, **index_facts},
                   "ranking": {"model": "RankingModel", "loss": cfg.ranking.loss,
                               "k": cfg.ranking_k,
                               "context_features": cascade.context.feature_names},
                   "reranking": {"model": "Reranker", "loss": cfg.reranker.loss,
                                 "diversity": cfg.diversity,
                                 "diversity_lambda": cfg.diversity_lambda,
                                 "rules": dataclasses.asdict(cfg.rules)}},
        "k": cfg.k, "num_candidates": n, "num_users": len(rec.vocabularies[USER_ID].tokens),
        "history_len": max(module.query_history, module.ranker_history),
        "fallback": {"unknown_users": "popularity blended with the history's text profile",
                     "text_weight": fallback_text_weight if cascade.text is not None else 0.0},
        "outputs": list(OUTPUTS), "pad_item_id": "",
        "exclusion_width": None,
        "input_order": {"history": ID_ORDER_NOTE, EXCLUDE_INPUT: EXCLUSION_NOTE},
        "versions": {p: package_version(p) for p in ("tensorflow", "tf-keras",
                                                      "tensorflow-recommenders", "scann")},
        **dict(metadata or {}),
    }
    options = tf.saved_model.SaveOptions(
        namespace_whitelist=["Scann"] if kind == "scann" else None)
    return save_export(module, module.signatures(), base_dir, meta["model_name"], meta,
                       cascade_warmup_requests(cascade), options=options,
                       extra_vocabularies={"candidate_ids": [str(i) for i in cascade.catalog]})

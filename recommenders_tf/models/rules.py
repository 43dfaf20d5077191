"""Business rules, applied last to a scored list: exclusions, de-duplication, category caps, top k.

The rules, in the order they act on each list (sorted by score, best first; ties keep the
input order):

  1. padding   entries with id "" or a non-finite score (or mask False) are dropped
  2. exclude   ids in the user's history (when `exclude_seen`) or in the explicit exclusion
               list are dropped ("already watched", "hidden by the user", "out of stock")
  3. dedupe    a repeated id keeps only its first, i.e. best-scored, occurrence (lists merged
               from several sources repeat items)
  4. caps      at most `cap` items of a category survive, the best-scored ones: an int caps
               every category, a {category: cap} dict caps only the listed ones (cap 0 bans
               a category); items without a category are never capped. One category per item
               (use the primary genre for multi-genre items).
  5. top k     the first k survivors; short lists are padded with id "", score -inf and
               position -1

A cap decision only depends on earlier items of the same category, so "at most c per
category in the final k" is exactly "the first c survivors of each category".

`BusinessRulesLayer` applies them, vectorised in TensorFlow for exports: the item -> category
map is a `tf.lookup.StaticHashTable` inside the layer, so a SavedModel carries it.
A readable loop per list of the same rules, `apply_rules` in tests/oracles.py, is the
reference the layer is tested against.

Example:
  >>> rules = BusinessRules(k=10, exclude_seen=True, dedupe=True, category_caps=3)
  >>> layer = BusinessRulesLayer(rules, genre_of)
  >>> out = layer(item_ids, scores, history=history)   # traceable in a tf.function
  >>> out.item_ids, out.scores, out.positions          # [B, 10] each
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Mapping, NamedTuple, Optional, Union

import numpy as np

import recommenders_tf  # noqa: F401  (selects tf-keras before TensorFlow loads)
import tensorflow as tf

__all__ = ["BusinessRules", "RuleOutput", "BusinessRulesLayer"]


@dataclasses.dataclass
class BusinessRules:
    """Which rules to apply (see the module docstring for their order).

    Args:
      k: items in the final list.
      exclude_seen: drop ids in the user's history; explicit exclusions are always dropped.
      dedupe: keep only the first (best) occurrence of a repeated id.
      category_caps: None (no caps), an int (every category at most that many), or
        {category: cap} (only the listed categories capped).
    """

    k: int = 10
    exclude_seen: bool = True
    dedupe: bool = True
    category_caps: Optional[Union[int, Dict[str, int]]] = None

    def __post_init__(self):
        if int(self.k) != self.k or int(self.k) < 1:
            raise ValueError(f"BusinessRules.k must be an integer >= 1, got {self.k!r}")
        self.k = int(self.k)
        caps = self.category_caps
        values = (caps.values() if isinstance(caps, Mapping)
                  else [] if caps is None else [caps])
        for cap in values:
            if isinstance(cap, bool) or int(cap) != cap or int(cap) < 0:
                raise ValueError(f"BusinessRules.category_caps must be integers >= 0, "
                                 f"got {caps!r}")
        if isinstance(caps, Mapping):
            self.category_caps = {str(c): int(v) for c, v in caps.items()}
        elif caps is not None:
            self.category_caps = int(caps)

    def cap_for(self, category: Optional[str]) -> Optional[int]:
        """The cap of `category` (None: uncapped; items without a category are uncapped)."""
        if category is None or self.category_caps is None:
            return None
        if isinstance(self.category_caps, int):
            return self.category_caps
        return self.category_caps.get(category)


class RuleOutput(NamedTuple):
    """The final lists: item_ids [B, k] ("" padding), scores [B, k] (-inf padding),
    positions [B, k] (index into the input list, -1 padding)."""

    item_ids: object
    scores: object
    positions: object


def _check_categories(rules: BusinessRules, item_categories) -> Dict[str, str]:
    if rules.category_caps is None:
        return {}
    if item_categories is None:
        raise ValueError("BusinessRules.category_caps is set but no item_categories "
                         "({item id: category}) were given")
    return {str(i): str(c) for i, c in item_categories.items()}


class BusinessRulesLayer(tf.keras.layers.Layer):
    """The rules (module docstring) over B lists of L scored candidates, vectorised and
    traceable with fixed k.

    Exclusion, duplicate and category checks compare every pair of list entries ([B, L, L]
    and [B, L, H] boolean tensors), fine for the few hundred candidates a re-ranking stage
    sees and free of data-dependent loops.

    Args:
      rules: BusinessRules.
      item_categories: {item id: category}; needed when `rules.category_caps` is set. Held
        as a StaticHashTable item id -> category index (unknown ids: no category).

    Call:
      item_ids [B, L] string, scores [B, L] float, history [B, H] string (optional),
      exclude [B, W] string (optional), mask [B, L] bool (optional) ->
      RuleOutput(item_ids [B, k] string, scores [B, k] float32, positions [B, k] int32).
    """

    def __init__(self, rules: BusinessRules, item_categories: Optional[Mapping[str, str]] = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.rules = rules
        categories = _check_categories(rules, item_categories)
        self.table = None
        if categories:
            names = sorted(set(categories.values()))
            index = {c: i for i, c in enumerate(names)}
            keys = sorted(categories)
            self.table = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(
                    tf.constant(keys, tf.string),
                    tf.constant([index[categories[i]] for i in keys], tf.int64)),
                default_value=-1)
            # -1 = uncapped; the cap of category index c is caps[c].
            caps = [rules.cap_for(c) for c in names]
            self.caps = tf.constant([-1 if c is None else c for c in caps], tf.int32)

    def call(self, item_ids, scores, history=None, exclude=None, mask=None) -> RuleOutput:
        ids = tf.convert_to_tensor(item_ids, tf.string)
        vals = tf.cast(scores, tf.float32)
        k = self.rules.k
        valid = tf.logical_and(tf.math.is_finite(vals), tf.not_equal(ids, ""))
        if mask is not None:
            valid = tf.logical_and(valid, tf.cast(mask, tf.bool))
        # Best first; top_k-based descending sort is stable (lower index first on ties).
        order = tf.argsort(tf.where(valid, vals, -np.inf), axis=1, direction="DESCENDING",
                           stable=True)
        ids_s = tf.gather(ids, order, batch_dims=1)
        vals_s = tf.gather(vals, order, batch_dims=1)
        keep = tf.gather(valid, order, batch_dims=1)
        for drop in ((history if self.rules.exclude_seen else None), exclude):
            if drop is not None:
                drop = tf.convert_to_tensor(drop, tf.string)
                hit = tf.equal(ids_s[:, :, None], drop[:, None, :])
                keep = tf.logical_and(keep, tf.logical_not(tf.reduce_any(hit, axis=-1)))
        length = tf.shape(ids_s)[1]
        # earlier[i, j]: entry j comes before entry i in the sorted list.
        earlier = tf.range(length)[None, :] < tf.range(length)[:, None]
        if self.rules.dedupe:
            same = tf.logical_and(tf.equal(ids_s[:, :, None], ids_s[:, None, :]),
                                  tf.logical_and(earlier[None], keep[:, None, :]))
            keep = tf.logical_and(keep, tf.logical_not(tf.reduce_any(same, axis=-1)))
        if self.table is not None:
            category = self.table.lookup(ids_s)                               # [B, L]
            cap = tf.where(category >= 0, tf.gather(self.caps, tf.maximum(category, 0)), -1)
            same = tf.logical_and(tf.equal(category[:, :, None], category[:, None, :]),
                                  tf.logical_and(earlier[None], keep[:, None, :]))
            before = tf.reduce_sum(tf.cast(same, tf.int32), axis=-1)
            keep = tf.logical_and(keep, tf.logical_or(cap < 0, before < cap))
        # The survivors' sorted indices, in order, padded with `length` up to k.
        slots = tf.sort(tf.where(keep, tf.range(length)[None, :], length), axis=1)
        slots = tf.concat([slots, tf.fill(tf.stack([tf.shape(slots)[0], k]), length)],
                          axis=1)[:, :k]
        real = slots < length
        safe = tf.minimum(slots, tf.maximum(length - 1, 0))
        return RuleOutput(
            item_ids=tf.where(real, tf.gather(ids_s, safe, batch_dims=1), ""),
            scores=tf.where(real, tf.gather(vals_s, safe, batch_dims=1), -np.inf),
            positions=tf.where(real, tf.gather(order, safe, batch_dims=1), -1))

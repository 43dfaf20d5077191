"""Item text -> an `ItemVectors` store through the pretrained sentence encoder and its cache.

The one place that turns an items frame into text vectors: `pipelines.embed_items` (which also
builds user profiles and writes a run folder) and `pipelines.run_all` (which only needs the item
vectors, and must not load the interactions a second time to get them) both call it.

    >>> items = items_for_train(data, split.train)   # the text a train part may read
    >>> encoded = encode_item_texts(items, cache_dir="runs/text_cache", progress=False)
    >>> encoded.vectors.save(out / "item_vectors"); encoded.facts["encoded_per_second"]
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from typing import Any, Dict, Mapping, Optional, Sequence

import pandas as pd

from recommenders_tf.features.item_vectors import ItemVectors, check_item_ids, item_texts
from recommenders_tf.features.text_cache import text_key
from recommenders_tf.features.text_encoder import DEFAULT_MODEL, SentenceEncoder

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class EncodedItems:
    """What `encode_item_texts` produced.

    Args:
      vectors: the store, one L2-normalised vector per item of the frame, in its order.
      facts: JSON-ready counts and rates: `items`, `empty_texts`, `cache_hits`,
        `cache_misses`, `encoded` (distinct texts run through the model),
        `model_load_seconds`, `encode_seconds`, `items_per_second` (cache hits included)
        and `encoded_per_second` (model throughput; None when all came from the cache).
      encoder: the encoder (its name, fingerprint and dim describe the vectors).
    """

    vectors: ItemVectors
    facts: Dict[str, Any]
    encoder: SentenceEncoder


def encode_item_texts(items: pd.DataFrame, *, model: str = DEFAULT_MODEL,
                      max_length: int = 128, batch_size: int = 64,
                      cache_dir: Optional[str] = "runs/text_cache",
                      text_fields: Sequence[str] = ("text",), progress: bool = True,
                      source: str = "items", extra: Optional[Mapping[str, Any]] = None
                      ) -> EncodedItems:
    """Encodes the text of every item of `items` (cold ones included).

    Args:
      items: items frame with an item id column and `text_fields`; pass the frame of
        `data.items_for_train(data, split.train)` so the text carries only admitted tags.
      model, max_length, batch_size, cache_dir: the `SentenceEncoder` settings.
      text_fields: item columns joined into the encoded text.
      progress: progress bar while encoding.
      source: what `items` is, for the error of a bad or duplicate id.
      extra: facts stored in the store's metadata (dataset, split, ...).
    """
    ids = check_item_ids(items, source=source)
    texts = item_texts(items, text_fields)
    empty = [str(i) for i, t in zip(ids, texts) if not t]
    if empty:
        logger.warning("%d items have empty text (e.g. %s); they get the vector of an empty "
                       "text", len(empty), empty[:5])
    encoder = SentenceEncoder(model, max_length, batch_size, cache_dir)
    # Load the model up front only when something is to be encoded, and time it apart, so
    # the throughput below is encoding alone and a fully cached re-run never loads it.
    cache = encoder.vector_cache()
    cache.refresh()
    load_seconds = 0.0
    if any(text_key(t) not in cache for t in texts):
        start = time.perf_counter()
        encoder.load()
        load_seconds = time.perf_counter() - start
    start = time.perf_counter()
    vectors = encoder.encode_cached(texts, progress=progress)
    encode_seconds = time.perf_counter() - start
    stats = encoder.last_stats

    texts_sha = hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()
    store = ItemVectors(
        ids=ids, vectors=vectors, model=encoder.name, fingerprint=encoder.fingerprint,
        text_fields=tuple(text_fields),
        extra={**dict(extra or {}), "max_length": max_length, "texts_sha256": texts_sha,
               "empty_texts": len(empty)})
    facts = {
        "items": len(ids),
        "empty_texts": len(empty),
        "cache_hits": stats.hits,
        "cache_misses": stats.misses,
        "encoded": stats.encoded,
        "model_load_seconds": round(load_seconds, 3),
        "encode_seconds": round(encode_seconds, 3),
        "items_per_second": round(len(ids) / encode_seconds, 1) if encode_seconds > 0 else None,
        "encoded_per_second": (round(stats.encoded / encode_seconds, 1)
                               if stats.encoded and encode_seconds > 0 else None),
    }
    return EncodedItems(store, facts, encoder)

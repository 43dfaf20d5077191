"""Text-enhanced two-tower: a new item added after training is retrievable from its text alone.

Data: synthetic-tiny (8 topics, every item's text is drawn from its topics' words). The item
"text vectors" are an L2-normalised bag of topic words of the item's text: a cheap, exact
stand-in for the frozen language-model vectors (the tower treats both the same way: a frozen
input with a trained projection), so the test needs no model load.

After training, a brand-new item whose text is written from one topic's words is embedded by the
SAVED candidate tower (SavedModel, as `pipelines.reindex` does), appended with
`recommenders_tf.index.add_items`, and searched with the BruteForce index. The user who loves
that topic must get it in their top 10 (of ~150 items, their train items excluded); the user
who cares least for the topic must not.
"""
from __future__ import annotations

import numpy as np
import pytest

import recommenders_tf  # noqa: F401
import tensorflow as tf

from recommenders_tf.data import load_dataset
from recommenders_tf.data.schema import ITEM_ID, TEXT, USER_ID
from recommenders_tf.data.synthetic import TOPIC_WORDS
from recommenders_tf.features.item_vectors import ItemVectors
from recommenders_tf.index import CandidateStore, add_items, build_index
from recommenders_tf.index.candidate_store import load_tower, save_tower
from recommenders_tf.models.recommender import TwoTowerConfig, TwoTowerRecommender
from recommenders_tf.models.towers import ColdStartItemId

WORDS = sorted({w for words in TOPIC_WORDS.values() for w in words.split()})
WORD_POS = {w: i for i, w in enumerate(WORDS)}


def bag_of_topic_words(text: str) -> np.ndarray:
    vec = np.zeros(len(WORDS), np.float32)
    for token in text.lower().replace(".", " ").replace(",", " ").split():
        if token in WORD_POS:
            vec[WORD_POS[token]] += 1.0
    return vec / max(np.linalg.norm(vec), 1e-9)


def test_cold_start_item_id_zeroes_unknown_ids_and_drops_in_training():
    from recommenders_tf.models.towers import ItemIdEmbedding

    inner = ItemIdEmbedding(["a", "b"], 3)
    layer = ColdStartItemId(inner, num_oov=1, dropout=0.0)
    ids = tf.constant(["a", "zzz", "b", ""])
    out = layer(ids).numpy()
    raw = inner(ids).numpy()
    np.testing.assert_allclose(out[0], raw[0])
    np.testing.assert_allclose(out[2], raw[2])
    assert not out[1].any() and not out[3].any()       # OOV and mask slot: zero vectors
    assert np.abs(raw[1]).sum() > 0                    # ... although their table rows are not
    tf.random.set_seed(0)
    dropped = ColdStartItemId(inner, num_oov=1, dropout=0.5)(tf.constant(["a"] * 400),
                                                             training=True).numpy()
    zero_share = float((np.abs(dropped).sum(axis=1) == 0).mean())
    assert 0.4 < zero_share < 0.6
    kept = ColdStartItemId(inner, num_oov=1, dropout=0.5)(tf.constant(["a"] * 5),
                                                          training=False).numpy()
    assert (np.abs(kept).sum(axis=1) > 0).all()        # no dropout at inference


@pytest.mark.slow
def test_new_item_retrievable_from_text_after_training(tmp_path):
    data = load_dataset("synthetic-tiny")
    items = data.items
    vectors = ItemVectors(ids=items[ITEM_ID].astype(str).to_numpy(),
                          vectors=np.stack([bag_of_topic_words(t) for t in items[TEXT]]),
                          model="bag-of-topic-words")
    config = TwoTowerConfig(seed=0, verbose=0, epochs=8, history_len=10, use_genres=False,
                            item_id_dropout=0.5, batch_size=128, learning_rate=5e-3)
    rec = TwoTowerRecommender(config, items=items, text_vectors=vectors)
    rec.fit(data.interactions)

    # The candidate tower goes through a SavedModel, as the reindex pipeline loads it.
    tower_dir = save_tower(rec.candidate_tower, tmp_path / "candidate_tower",
                           rec.candidate_feature_spec())
    tower = load_tower(tower_dir)
    train_items = np.sort(np.asarray(rec.vocabularies[ITEM_ID].tokens, dtype=object))
    store = CandidateStore(train_items.astype(str), rec.candidate_embeddings(train_items))

    topics = data.extras["topic_names"]
    prefs = np.asarray(data.extras["user_preferences"])
    users = data.users[USER_ID].astype(str).to_numpy()
    counts = data.interactions[USER_ID].astype(str).value_counts().reindex(users).fillna(0)
    active = counts.to_numpy() >= 10
    # The topic whose biggest fan is most devoted, among users with some history.
    fan_pref = np.where(active[:, None], prefs, -1.0)
    topic = int(np.argmax(fan_pref.max(axis=0)))
    fan = users[int(np.argmax(fan_pref[:, topic]))]
    sceptic = users[int(np.argmin(np.where(active, prefs[:, topic], 2.0)))]
    words = TOPIC_WORDS[topics[topic]].split()
    text = (f"The {words[0].capitalize()} {words[1].capitalize()}. A tale of "
            f"{', '.join(words[2:9])} and {words[9]}. Genres: {topics[topic]}.")
    new_id = "brand-new-item"
    assert new_id not in set(store.ids)
    grown = add_items(store, tower, {ITEM_ID: np.asarray([new_id], dtype=object),
                                     "item_text_vector": bag_of_topic_words(text)[None]})
    assert len(grown) == len(store) + 1

    index = build_index("bruteforce", None, grown.ids, grown.embeddings, k=10)
    queries = tf.constant(np.stack([
        rec.query_tower({k: tf.constant(v) for k, v in
                         rec.query_features([u]).items()}, training=False).numpy()[0]
        for u in (fan, sceptic)]))
    seen = data.interactions.groupby(USER_ID)[ITEM_ID].apply(lambda s: list(s.astype(str)))
    width = max(len(seen[fan]), len(seen[sceptic]))
    exclude = np.asarray([seen[u] + [""] * (width - len(seen[u])) for u in (fan, sceptic)],
                         dtype=object)
    _, top = index.search_with_exclusions(queries, exclude, k=10)
    assert new_id in list(top[0]), (topics[topic], list(top[0]))
    assert new_id not in list(top[1])

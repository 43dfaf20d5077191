"""Hand-made tiny towers and a fake `train_retrieval` run for the index/recommend tests.

The right answers are known by construction: an item's embedding points along the axes of its
genres (plus a small id-and-title-hashed part so no two items tie), a user's query points along
their favourite genre's axis (plus a small user-hashed part). The catalogue's Horror items are
all half something else and user `u-horror` prefers Horror, so a pure Horror item added later
must become that user's top 1.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

import recommenders_tf  # noqa: F401
import tensorflow as tf

from recommenders_tf.features.vocab import Vocabulary, save_vocabularies
from recommenders_tf.index import CandidateStore

GENRES = ["Action", "Comedy", "Drama", "Horror"]
NOISE_DIMS = 4
DIM = len(GENRES) + NOISE_DIMS
ITEMS = [f"i{i:03d}" for i in range(300)]
# Every tenth item also has a second genre; items 5, 15, ... are half Horror, so the Horror
# region is populated (ScaNN partitions it) but no item points along the Horror axis alone.
ITEM_GENRES = [GENRES[i % 3] + ("|" + GENRES[(i + 1) % 3] if i % 10 == 0 else
                                "|Horror" if i % 10 == 5 else "")
               for i in range(len(ITEMS))]
ITEM_TITLES = [f"Movie number {i}" for i in range(len(ITEMS))]
USERS = [f"u{i}" for i in range(20)] + ["u-horror"]
FAVOURITE = {**{f"u{i}": GENRES[i % 3] for i in range(20)}, "u-horror": "Horror"}
CANDIDATE_SPEC = {name: tf.TensorSpec([None], tf.string, name=name)
                  for name in ("item_id", "item_title", "item_genres")}


def hashed_noise(text: tf.Tensor, scale: float) -> tf.Tensor:
    """A fixed pseudo-random [B, NOISE_DIMS] vector per string (continuous, so no ties)."""
    bucket = tf.cast(tf.strings.to_hash_bucket_fast(text, 1_000_003), tf.float32)
    phases = tf.range(1, NOISE_DIMS + 1, dtype=tf.float32)
    return scale * tf.sin(bucket[:, None] * 0.001 * phases + phases)


class GenreCandidateTower(tf.keras.Model):
    """Item embedding = normalize([genre multi-hot, 0.3 * hash(item_id, title)])."""

    def call(self, features):
        tokens = tf.strings.split(features["item_genres"], sep="|")
        hot = tf.stack([tf.cast(tf.reduce_any(tf.equal(tokens, g), axis=1), tf.float32)
                        for g in GENRES], axis=1)
        key = tf.strings.join([features["item_id"], features["item_title"]], separator="#")
        return tf.math.l2_normalize(tf.concat([hot, hashed_noise(key, 0.3)], axis=1), axis=1)


class GenreQueryTower(tf.keras.Model):
    """Query = normalize([favourite-genre one-hot, 0.3 * hash(user) + 0.1 * hash(last item)])."""

    def __init__(self):
        super().__init__()
        self.users = tf.keras.layers.StringLookup(vocabulary=USERS, num_oov_indices=1)
        prefs = np.full((len(USERS) + 1, len(GENRES)), 0.5, np.float32)  # row 0: unknown user
        for row, user in enumerate(USERS, start=1):
            prefs[row] = np.eye(len(GENRES))[GENRES.index(FAVOURITE[user])]
        self.prefs = tf.constant(prefs)

    def call(self, features):
        pref = tf.gather(self.prefs, self.users(features["user_id"]))
        history = features["history"]
        last = tf.cond(tf.shape(history)[1] > 0, lambda: history[:, -1],
                       lambda: tf.fill(tf.shape(features["user_id"]), ""))
        noise = hashed_noise(features["user_id"], 0.3) + hashed_noise(last, 0.1)
        return tf.math.l2_normalize(tf.concat([pref, noise], axis=1), axis=1)


def item_features(ids, titles, genres) -> dict:
    return {"item_id": tf.constant(ids), "item_title": tf.constant(titles),
            "item_genres": tf.constant(genres)}


def write_interactions(path: Path) -> Path:
    """Each user rates 8 catalogue items of their favourite genre (u-horror: Drama ones)."""
    rows = ["user_id,item_id,rating,timestamp"]
    for u, user in enumerate(USERS):
        genre = FAVOURITE[user] if FAVOURITE[user] != "Horror" else "Drama"
        liked = [item for item, g in zip(ITEMS, ITEM_GENRES) if g.split("|")[0] == genre]
        for j, item in enumerate(liked[u % 5: u % 5 + 8]):
            rows.append(f"{user},{item},4,{1_000_000 + 100 * u + j}")
    path.write_text("\n".join(rows) + "\n")
    return path


def make_training_run(run_dir: Path) -> dict:
    """A run folder shaped like `pipelines.train_retrieval`'s: candidate_store/, vocab/,
    config.yaml naming a loadable dataset."""
    run_dir.mkdir(parents=True, exist_ok=True)
    query, candidate = GenreQueryTower(), GenreCandidateTower()
    embeddings = candidate(item_features(ITEMS, ITEM_TITLES, ITEM_GENRES)).numpy()
    CandidateStore(ITEMS, embeddings).save(run_dir / "candidate_store", candidate_tower=candidate,
                                           query_tower=query,
                                           candidate_feature_spec=CANDIDATE_SPEC)
    data = write_interactions(run_dir / "interactions.csv")
    save_vocabularies({"user_id": Vocabulary.from_values(USERS, "user_id"),
                       "item_id": Vocabulary.from_values(ITEMS, "item_id")}, run_dir / "vocab")
    (run_dir / "config.yaml").write_text(yaml.safe_dump(
        {"dataset": f"file:{data}", "seed": 0, "tower": {"history_len": 5}}))
    return {"run_dir": run_dir, "query": query, "candidate": candidate,
            "embeddings": embeddings, "dataset": f"file:{data}"}

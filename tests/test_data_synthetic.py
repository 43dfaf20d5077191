"""The synthetic generator: deterministic, and realistic in the ways the models rely on."""
import numpy as np
import pandas as pd
import pytest

from recommenders_tf.data import schema
from recommenders_tf.data.synthetic import TOPIC_WORDS, SyntheticConfig, generate_synthetic


def _index(ids: pd.Series) -> np.ndarray:
    return ids.str[1:].astype(int).to_numpy()  # "u00042" -> 42


def test_same_seed_same_frames_different_seed_different(synthetic_tiny):
    again = generate_synthetic(SyntheticConfig.tiny())
    pd.testing.assert_frame_equal(synthetic_tiny.interactions, again.interactions)
    pd.testing.assert_frame_equal(synthetic_tiny.items, again.items)
    other = generate_synthetic(SyntheticConfig.tiny(seed=1))
    assert not synthetic_tiny.interactions.equals(other.interactions)
    assert synthetic_tiny.extras["cold_items"] != other.extras["cold_items"]


def test_schema_and_sizes(synthetic_tiny):
    cfg = SyntheticConfig.tiny()
    inter = synthetic_tiny.interactions
    assert dict(inter.dtypes.astype(str)) == {"user_id": "object", "item_id": "object",
                                              "rating": "float32", "timestamp": "int64"}
    assert abs(len(inter) - cfg.num_interactions) <= 0.01 * cfg.num_interactions
    assert len(synthetic_tiny.items) == cfg.num_items
    assert set(inter[schema.RATING].unique()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert synthetic_tiny.report.duplicates == 0  # a user never picks an item twice
    assert set(schema.ITEM_REQUIRED) <= set(synthetic_tiny.items.columns)


def test_cold_items_are_listed_but_never_interacted(synthetic_tiny):
    cold = synthetic_tiny.extras["cold_items"]
    assert len(cold) == round(0.05 * SyntheticConfig.tiny().num_items)
    assert set(cold) <= set(synthetic_tiny.items[schema.ITEM_ID])
    assert not set(cold) & set(synthetic_tiny.interactions[schema.ITEM_ID])


def test_default_popularity_is_power_law_and_activity_heavy_tailed():
    data = generate_synthetic(SyntheticConfig())
    counts = data.interactions[schema.ITEM_ID].value_counts()
    top = counts.iloc[: len(data.items) // 10].sum() / len(data.interactions)
    assert top > 0.3  # uniform would give ~0.1
    activity = data.interactions[schema.USER_ID].value_counts()
    assert (activity <= 5).sum() >= 20  # some users with 1-5 interactions
    assert (activity >= 200).sum() >= 10  # and some with hundreds
    assert activity.min() >= 1


def test_users_concentrate_on_their_preferred_topics(synthetic_tiny):
    inter = synthetic_tiny.interactions
    item_topics = synthetic_tiny.extras["item_topics"]
    prefs = synthetic_tiny.extras["user_preferences"]
    users, items = _index(inter[schema.USER_ID]), _index(inter[schema.ITEM_ID])
    favourite = prefs.argmax(axis=1)
    on_topic = item_topics[items, favourite[users]] > 0
    chance = (item_topics > 0).mean(axis=0)[favourite[users]]  # share of catalog on that topic
    assert on_topic.mean() > 2.5 * chance.mean()
    # Ratings follow affinity: on-topic interactions are rated higher.
    ratings = inter[schema.RATING].to_numpy()
    assert ratings[on_topic].mean() > ratings[~on_topic].mean() + 1.0


def test_item_text_carries_topic_words(synthetic_tiny):
    names = synthetic_tiny.extras["topic_names"]
    for _, row in synthetic_tiny.items.head(30).iterrows():
        topics = row["topics"].split("|")
        assert set(topics) <= set(names) and row[schema.GENRES] == row["topics"]
        words = set(row[schema.TEXT].lower().replace(",", " ").replace(".", " ").split())
        vocabulary = {w for t in topics for w in TOPIC_WORDS[t].split()}
        assert len(words & vocabulary) >= 5


def test_timestamps_increase_per_user(synthetic_tiny):
    inter = synthetic_tiny.interactions
    assert inter.groupby(schema.USER_ID)[schema.TIMESTAMP].apply(
        lambda t: bool(np.all(np.diff(t.to_numpy()) > 0))).all()


def test_config_validation():
    with pytest.raises(ValueError, match="num_topics"):
        generate_synthetic(SyntheticConfig(num_topics=40))

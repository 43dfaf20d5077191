"""The scale presets and their vectorised sampler: sizes, shape, determinism, and agreement
with the per-user sampler. Only the 100K preset is generated here (about a second)."""
import dataclasses

import numpy as np
import pandas as pd
import pytest

from recommenders_tf.data import registry, schema
from recommenders_tf.data.registry import load_dataset
from recommenders_tf.data.synthetic import (TOPIC_WORDS, SyntheticConfig, _MixLadder, _repeats,
                                            generate_synthetic)


def _index(ids: pd.Series) -> np.ndarray:
    return ids.str[1:].astype(int).to_numpy()  # "u00042" -> 42


@pytest.fixture(scope="module")
def preset_100k():
    return load_dataset("synthetic-100k")


def test_presets_are_specs_with_growing_sizes():
    assert {"synthetic-100k", "synthetic-1m", "synthetic-10m"} <= set(registry.SPECS)
    sizes = [(c.num_users, c.num_items, c.num_interactions, c.sampler)
             for c in map(SyntheticConfig.scale, ("100k", "1m", "10m"))]
    assert sizes == [(4_000, 2_000, 100_000, "vectorised"),
                     (40_000, 20_000, 1_000_000, "vectorised"),
                     (400_000, 200_000, 10_000_000, "vectorised")]
    with pytest.raises(ValueError, match="100k, 1m, 10m"):
        SyntheticConfig.scale("5m")
    with pytest.raises(ValueError, match="sampler"):
        generate_synthetic(SyntheticConfig(sampler="loop"))


def test_100k_preset_sizes_and_schema(preset_100k):
    inter = preset_100k.interactions
    assert preset_100k.name == "synthetic-100k"
    assert dict(inter.dtypes.astype(str)) == schema.INTERACTION_DTYPES
    # _activity meets the target to 0.2%; 1% leaves room for other seeds.
    assert abs(len(inter) - 100_000) <= 1_000
    assert inter[schema.USER_ID].nunique() == 4_000  # every user has at least one
    assert len(preset_100k.items) == 2_000 and len(preset_100k.users) == 4_000
    assert not inter.duplicated([schema.USER_ID, schema.ITEM_ID]).any()
    assert set(inter[schema.RATING].unique()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    pd.testing.assert_frame_equal(inter, schema.canonical_interactions(inter))


def test_100k_preset_has_5_percent_cold_items(preset_100k):
    cold = set(preset_100k.extras["cold_items"])
    assert len(cold) == 100 == preset_100k.report.counts["cold_items"]
    interacted = set(preset_100k.interactions[schema.ITEM_ID])
    assert not cold & interacted
    assert len(interacted) >= 0.99 * (2_000 - 100)  # and nearly every warm item is used


def test_100k_preset_popularity_is_power_law_and_activity_heavy_tailed(preset_100k):
    inter = preset_100k.interactions
    counts = inter[schema.ITEM_ID].value_counts().to_numpy()
    assert counts[:20].sum() / len(inter) > 0.08  # top 1% of the catalogue; uniform: 0.01
    assert counts[:200].sum() / len(inter) > 0.3  # top 10%; uniform: 0.1
    activity = inter[schema.USER_ID].value_counts()
    assert (activity <= 5).sum() >= 200 and (activity >= 200).sum() >= 10


def test_100k_preset_is_deterministic(preset_100k):
    again = load_dataset("synthetic-100k")
    pd.testing.assert_frame_equal(preset_100k.interactions, again.interactions)
    pd.testing.assert_frame_equal(preset_100k.items, again.items)
    other = load_dataset("synthetic-100k", seed=1)
    assert not preset_100k.interactions.equals(other.interactions)
    assert not preset_100k.items.equals(other.items)
    assert preset_100k.extras["cold_items"] != other.extras["cold_items"]


def test_100k_preset_every_item_has_text_from_its_topics(preset_100k):
    items = preset_100k.items
    assert items[schema.TEXT].str.len().min() > 0 and items[schema.TITLE].str.len().min() > 0
    for topics, text in zip(items["topics"], items[schema.TEXT]):
        words = set(text.lower().replace(",", " ").replace(".", " ").split())
        vocabulary = {w for t in topics.split("|") for w in TOPIC_WORDS[t].split()}
        assert len(words & vocabulary) >= 5, text
    names = preset_100k.extras["topic_names"]
    item_topics = preset_100k.extras["item_topics"]
    expected = ["|".join(names[t] for t in np.flatnonzero(row)) for row in item_topics]
    assert items[schema.GENRES].tolist() == expected


def test_100k_preset_users_follow_their_drifting_topics(preset_100k):
    inter = preset_100k.interactions
    item_topics = preset_100k.extras["item_topics"]
    users, items = _index(inter[schema.USER_ID]), _index(inter[schema.ITEM_ID])
    favourite = preset_100k.extras["user_preferences"].argmax(axis=1)
    on_topic = item_topics[items, favourite[users]] > 0
    chance = (item_topics > 0).mean(axis=0)[favourite[users]]
    assert on_topic.mean() > 2.5 * chance.mean()
    ratings = inter[schema.RATING].to_numpy()
    assert ratings[on_topic].mean() > ratings[~on_topic].mean() + 1.0
    # Drift: the first half of a history follows the start preferences, the second the end.
    start = np.einsum("ij,ij->i", item_topics[items],
                      preset_100k.extras["user_start_preferences"][users])
    end = np.einsum("ij,ij->i", item_topics[items],
                    preset_100k.extras["user_end_preferences"][users])
    position = inter.groupby(schema.USER_ID).cumcount().to_numpy()
    length = inter.groupby(schema.USER_ID)[schema.ITEM_ID].transform("size").to_numpy()
    early = position < length // 2
    assert (start - end)[early].mean() > (start - end)[~early].mean() + 0.02


def test_100k_preset_timestamps_increase_per_user(preset_100k):
    inter = preset_100k.interactions
    same_user = inter[schema.USER_ID].to_numpy()[1:] == inter[schema.USER_ID].to_numpy()[:-1]
    steps = np.diff(inter[schema.TIMESTAMP].to_numpy())
    assert (steps[same_user] > 0).all()
    cfg = SyntheticConfig.scale("100k")
    end = cfg.start_timestamp + cfg.span_days * 86400
    assert inter[schema.TIMESTAMP].min() > cfg.start_timestamp
    # Gaps are exponential, so a history may run past the window (as with the per-user sampler).
    assert (inter[schema.TIMESTAMP] <= end).mean() > 0.9


def test_mix_ladder_draws_popularity_times_affinity():
    # 3 topics, 5 items: two single-topic items share topic 0, item 3 mixes topics 1 and 2,
    # item 4 is cold. Oracle: p(item) ∝ popularity × (affinity + exploration) ** strength.
    cfg = SyntheticConfig(num_topics=3, exploration=0.01, affinity_strength=2.0)
    item_topics = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, .5, .5], [0, 0, 1]], float)
    popularity = np.array([1.0, 0.5, 0.25, 0.2, 0.0])
    pref = np.array([0.2, 0.7, 0.1])
    weights = popularity * (item_topics @ pref + 0.01) ** 2
    expected = weights / weights.sum()
    ladder_sampler = _MixLadder(cfg, item_topics, popularity)
    ladder = ladder_sampler.mix_ladder(pref[None])
    draws = ladder_sampler.draw(ladder, np.zeros(200_000, dtype=np.int64),
                                np.random.default_rng(0))
    observed = np.bincount(draws, minlength=5) / len(draws)
    np.testing.assert_allclose(observed, expected, atol=0.004)
    assert observed[4] == 0  # cold items are never drawn
    # The exact fallback takes distinct items outside the excluded ones.
    top = ladder_sampler.top_k(pref, 2, np.array([2]), np.random.default_rng(0))
    assert len(set(top)) == 2 and set(top) <= {0, 1, 3}


def test_repeats_keep_accepted_rows():
    keys = np.array([5, 3, 5, 3, 7])
    assert _repeats(keys, np.zeros(5, bool)).tolist() == [False, False, True, True, False]
    # A redrawn (pending) row that lands on an accepted row's key is the repeat, even first.
    pending = np.array([True, False, False])
    assert _repeats(np.array([4, 4, 2]), pending).tolist() == [True, False, False]


def test_samplers_agree_on_shape_of_the_data():
    """Same config under both samplers: popularity concentration, topic focus and ratings."""
    base = SyntheticConfig(num_users=1000, num_items=300, num_interactions=20_000)
    stats = {}
    for sampler in ("per_user", "vectorised"):
        data = generate_synthetic(dataclasses.replace(base, sampler=sampler))
        inter = data.interactions
        counts = inter[schema.ITEM_ID].value_counts().to_numpy()
        users, items = _index(inter[schema.USER_ID]), _index(inter[schema.ITEM_ID])
        favourite = data.extras["user_preferences"].argmax(axis=1)
        stats[sampler] = np.array([
            counts[:30].sum() / len(inter),  # top 10% of items
            (data.extras["item_topics"][items, favourite[users]] > 0).mean(),
            inter[schema.RATING].mean(),
            len(inter) / 20_000,
        ])
        assert not inter.duplicated([schema.USER_ID, schema.ITEM_ID]).any()
    np.testing.assert_allclose(stats["vectorised"], stats["per_user"], rtol=0.08)

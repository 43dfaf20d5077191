"""A seeded synthetic dataset with a known preference structure: the offline default data.

The generative story, chosen so that models have something real to learn and tests can check
that they learned it:
- `num_topics` topics, each with a vocabulary of ordinary English words; every item has one or
  two topics and a title and description drawn from its topics' words (so a pretrained sentence
  encoder can recover topics from text), its genres are its topic names;
- item popularity follows a Zipf law; a fraction of items gets no interactions at all (cold);
- each user has Dirichlet topic preferences (concentrated on a few topics) that drift from a
  start mix to an end mix over the user's history, and a heavy-tailed (log-normal) activity;
- a user picks distinct items with probability ∝ popularity × topic affinity, rates them 1–5
  according to affinity plus noise, at increasing timestamps.

The ground truth is kept in `RecDataset.extras` (never in feature columns): `topic_names`,
`item_topics` [items × topics], `user_preferences` [users × topics] (mean over the drift),
`cold_items`.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
import pandas as pd

from recommenders_tf.data import schema
from recommenders_tf.data.validation import build_report

TOPIC_WORDS = {
    "Space": "galaxy rocket astronaut planet orbit alien starship nebula comet cosmos "
             "satellite moon launch gravity asteroid",
    "Romance": "love wedding kiss heart romance valentine bride passion sweetheart couple "
               "letters affair darling honeymoon crush",
    "Crime": "detective murder heist gangster police robbery thief mafia prison witness "
             "smuggler alibi bandit fraud crime",
    "Cooking": "recipe kitchen chef baking bread pasta dessert spice soup cake grill "
               "flavor oven feast cookbook",
    "Sports": "football soccer coach championship stadium league tournament goal athlete "
              "marathon basketball medal team trophy olympic",
    "War": "soldier battle army war general trench tank invasion regiment siege "
           "commander frontline navy rifle veteran",
    "Music": "guitar band concert melody song piano jazz orchestra singer rhythm album "
             "drummer chorus opera tour",
    "Horror": "ghost haunted vampire zombie nightmare curse demon graveyard monster scream "
              "werewolf witch terror blood fear",
    "Fantasy": "dragon wizard kingdom sword quest magic elf castle sorcerer prophecy "
               "enchanted knight realm spell throne",
    "Western": "cowboy sheriff saloon desert ranch outlaw horse frontier gunslinger canyon "
               "cattle wagon marshal prairie rodeo",
    "Comedy": "funny joke prank laugh comedian clown party sitcom mischief silly roommates "
              "blunder parody giggle wacky",
    "Nature": "forest river wildlife mountain ocean jungle animals safari volcano glacier "
              "birds wolves rainforest island climate",
    "Technology": "robot computer hacker software startup internet algorithm virtual "
                  "android gadget network code data cyber engineer",
    "History": "empire ancient dynasty revolution pharaoh medieval colonial emperor "
               "archaeology rome viking renaissance kingdom chronicle artifact",
    "Family": "children parents school puppy birthday holiday grandmother siblings "
              "friendship summer camp toys adventure home twins",
    "Mystery": "secret clue puzzle disappearance riddle manor investigation enigma "
               "inheritance hidden diary suspect locked cipher vanish",
}
TOPIC_NAMES = tuple(TOPIC_WORDS)
_CONNECTORS = ("a tale of", "a story about", "featuring", "where", "with", "and", "amid",
               "set among")


@dataclasses.dataclass
class SyntheticConfig:
    """Size and shape of the synthetic data.

    Args:
      num_users: number of users.
      num_items: number of catalog items (including cold ones).
      num_interactions: target number of interactions (met to within rounding).
      num_topics: topics used (at most len(TOPIC_NAMES) = 16).
      cold_item_fraction: share of items that get no interactions at all.
      zipf_exponent: popularity ∝ rank ** -zipf_exponent.
      preference_concentration: Dirichlet alpha of user preferences (small = few topics).
      exploration: affinity floor, so users sometimes pick items off their topics.
      affinity_strength: exponent on affinity in the choice probability (larger = users
        stick to their topics more, popularity matters less).
      activity_sigma: log-normal sigma of user activity (heavier tail when larger).
      drift: how far a user's preferences move from start to end of their history (0..1).
      two_topic_fraction: share of items with two topics.
      rating_noise: standard deviation of the rating noise.
      start_timestamp: epoch seconds of the earliest possible interaction.
      span_days: length of the observation window.
      seed: random seed; the same config gives identical frames.
    """

    num_users: int = 1000
    num_items: int = 800
    num_interactions: int = 40000
    num_topics: int = 12
    cold_item_fraction: float = 0.05
    zipf_exponent: float = 1.0
    preference_concentration: float = 0.2
    exploration: float = 0.01
    affinity_strength: float = 2.0
    activity_sigma: float = 1.0
    drift: float = 0.3
    two_topic_fraction: float = 0.3
    rating_noise: float = 0.6
    start_timestamp: int = 1_577_836_800  # 2020-01-01
    span_days: int = 730
    seed: int = 0

    @classmethod
    def tiny(cls, seed: int = 0) -> "SyntheticConfig":
        """A few thousand interactions: enough structure for tests, fast to train on."""
        return cls(num_users=150, num_items=150, num_interactions=2500, num_topics=8,
                   seed=seed)

    def validate(self) -> None:
        if not 1 <= self.num_topics <= len(TOPIC_NAMES):
            raise ValueError(f"num_topics must be in [1, {len(TOPIC_NAMES)}], "
                             f"got {self.num_topics}")
        if self.num_users < 1 or self.num_items < 2:
            raise ValueError("need at least 1 user and 2 items")
        if not 0 <= self.cold_item_fraction < 1:
            raise ValueError("cold_item_fraction must be in [0, 1)")
        if self.num_interactions < self.num_users:
            raise ValueError("num_interactions must be at least num_users (one each)")


def _item_topics(cfg: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """[items, topics] membership weights, each row sums to 1 (one or two topics)."""
    k = cfg.num_topics
    matrix = np.zeros((cfg.num_items, k))
    primary = rng.permutation(np.arange(cfg.num_items) % k)  # every topic gets items
    matrix[np.arange(cfg.num_items), primary] = 1.0
    two = rng.random(cfg.num_items) < cfg.two_topic_fraction
    if k > 1:
        secondary = (primary + rng.integers(1, k, size=cfg.num_items)) % k
        matrix[np.flatnonzero(two), secondary[two]] = 1.0
    return matrix / matrix.sum(axis=1, keepdims=True)


def _item_texts(item_topics: np.ndarray, rng: np.random.Generator):
    titles, texts, genres = [], [], []
    words = {name: TOPIC_WORDS[name].split() for name in TOPIC_NAMES}
    for row in item_topics:
        names = [TOPIC_NAMES[t] for t in np.flatnonzero(row)]
        pool = [w for n in names for w in words[n]]
        title_words = rng.choice(pool, size=int(rng.integers(2, 4)), replace=False)
        title = "The " + " ".join(w.capitalize() for w in title_words)
        body = rng.choice(pool, size=int(rng.integers(5, 9)), replace=False)
        connector = _CONNECTORS[int(rng.integers(len(_CONNECTORS)))]
        sentence = f"{connector.capitalize()} {', '.join(body[:-1])} and {body[-1]}"
        titles.append(title)
        genres.append("|".join(names))
        texts.append(f"{title}. {sentence}. Genres: {', '.join(names)}.")
    return titles, texts, genres


def _activity(cfg: SyntheticConfig, rng: np.random.Generator, max_items: int) -> np.ndarray:
    """Heavy-tailed interactions per user summing to ~num_interactions, each in [1, max_items]."""
    raw = rng.lognormal(mean=0.0, sigma=cfg.activity_sigma, size=cfg.num_users)
    scale = cfg.num_interactions / raw.sum()
    counts = np.ones(cfg.num_users)
    for _ in range(30):  # clipping at max_items loses mass: raise the scale until it is back
        counts = np.clip(np.rint(raw * scale), 1, max_items)
        if abs(counts.sum() - cfg.num_interactions) <= 0.002 * cfg.num_interactions:
            break
        scale *= cfg.num_interactions / counts.sum()
    return counts.astype(np.int64)


def generate_synthetic(config: Optional[SyntheticConfig] = None) -> schema.RecDataset:
    """Generates the synthetic dataset described in the module docstring.

    Args:
      config: sizes, shape and seed; `SyntheticConfig()` by default (~40K interactions).

    Returns:
      A RecDataset named "synthetic" with rating range (1, 5); items include the cold ones;
      ground truth in `extras`.
    """
    cfg = config or SyntheticConfig()
    cfg.validate()
    rng = np.random.default_rng(cfg.seed)
    k = cfg.num_topics
    item_ids = np.array([f"i{j:05d}" for j in range(cfg.num_items)], dtype=object)
    user_ids = np.array([f"u{u:05d}" for u in range(cfg.num_users)], dtype=object)

    item_topics = _item_topics(cfg, rng)
    titles, texts, genres = _item_texts(item_topics, rng)
    num_cold = int(round(cfg.cold_item_fraction * cfg.num_items))
    cold = np.sort(rng.choice(cfg.num_items, size=num_cold, replace=False))
    warm = np.setdiff1d(np.arange(cfg.num_items), cold)
    popularity = np.zeros(cfg.num_items)
    ranks = rng.permutation(len(warm)) + 1
    popularity[warm] = ranks.astype(float) ** -cfg.zipf_exponent
    log_popularity = np.log(np.where(popularity > 0, popularity, 1.0))

    alpha = np.full(k, cfg.preference_concentration)
    start_pref = rng.dirichlet(alpha, size=cfg.num_users)
    other = rng.dirichlet(alpha, size=cfg.num_users)
    end_pref = (1 - cfg.drift) * start_pref + cfg.drift * other
    counts = _activity(cfg, rng, max_items=max(1, int(0.6 * len(warm))))

    span = cfg.span_days * 86400
    users_col, items_col, ratings_col, times_col = [], [], [], []
    for u in range(cfg.num_users):
        n = int(counts[u])
        chosen = np.zeros(cfg.num_items, dtype=bool)
        chosen[cold] = True  # never sampled
        picks = []
        # Two phases (start / end preferences) model the drift; a Gumbel top-k per phase
        # samples distinct items with probability ∝ popularity × affinity.
        for phase, pref in enumerate((start_pref[u], end_pref[u])):
            m = n // 2 if phase == 0 else n - len(picks)
            if m == 0:
                continue
            affinity = item_topics @ pref
            keys = (log_popularity
                    + cfg.affinity_strength * np.log(affinity + cfg.exploration)
                    + rng.gumbel(size=cfg.num_items))
            keys[chosen] = -np.inf
            top = np.argpartition(-keys, m - 1)[:m]
            top = top[np.argsort(-keys[top], kind="stable")]
            top = rng.permutation(top)  # order in time is not the order of preference
            chosen[top] = True
            picks.extend(top.tolist())
        picks = np.asarray(picks)
        mean_pref = (start_pref[u] + end_pref[u]) / 2
        affinity = item_topics[picks] @ mean_pref / max(mean_pref.max(), 1e-9)
        ratings = np.clip(np.rint(1.5 + 3.5 * affinity + rng.normal(0, cfg.rating_noise, n)),
                          1, 5)
        start = rng.uniform(0, 0.6 * span)
        gaps = rng.exponential(scale=(span - start) / (n + 1), size=n)
        times = cfg.start_timestamp + int(start) + np.cumsum(np.floor(gaps) + 1).astype(np.int64)
        users_col.append(np.full(n, u))
        items_col.append(picks)
        ratings_col.append(ratings)
        times_col.append(times)

    user_index = np.concatenate(users_col)
    interactions = schema.canonical_interactions(pd.DataFrame({
        schema.USER_ID: user_ids[user_index], schema.ITEM_ID: item_ids[np.concatenate(items_col)],
        schema.RATING: np.concatenate(ratings_col), schema.TIMESTAMP: np.concatenate(times_col)}))
    items = pd.DataFrame({
        schema.ITEM_ID: schema.object_column(item_ids),
        schema.TITLE: schema.object_column(titles),
        schema.TEXT: schema.object_column(texts),
        schema.GENRES: schema.object_column(genres),
        "topics": schema.object_column(genres),
    })
    users = pd.DataFrame({schema.USER_ID: schema.object_column(user_ids)})
    rating_range = (1.0, 5.0)
    report = build_report(f"synthetic(seed={cfg.seed})", interactions, rating_range,
                          notes=[f"{num_cold} cold items with no interactions"])
    report.counts["catalog_items"] = cfg.num_items
    report.counts["cold_items"] = num_cold
    extras = {
        "config": dataclasses.asdict(cfg),
        "topic_names": list(TOPIC_NAMES[:k]),
        "item_topics": item_topics,
        "user_preferences": (start_pref + end_pref) / 2,
        "user_start_preferences": start_pref,
        "user_end_preferences": end_pref,
        "cold_items": [str(i) for i in item_ids[cold]],
    }
    return schema.RecDataset(name="synthetic", interactions=interactions, items=items,
                             users=users, report=report, rating_range=rating_range,
                             extras=extras)

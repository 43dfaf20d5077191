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

Two samplers draw the interactions from that same story (`SyntheticConfig.sampler`):
- "per_user" (the default): one Gumbel top-k over the whole catalogue per user and phase, so
  O(users × items). It is kept because `synthetic`, `synthetic-tiny` and every figure measured
  on them depend on its exact random stream, which no vectorised rewrite can reproduce.
- "vectorised": all users at once. Items with the same topic mix share an affinity, so a
  draw picks a topic mix (∝ its popularity mass × affinity) and then an item inside it
  (∝ popularity); a draw of an item the user already has is redrawn, and the few users who
  want most of the items they like at all finish with the exact per-user top-k. Redrawing
  repeats is sampling without replacement, as the top-k is, so the data follow the same law
  (not the same draws; only which phase keeps an item both phases drew can differ) in
  O(interactions + users × topic mixes); the scale presets (`SyntheticConfig.scale`) use it.
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
SAMPLERS = ("per_user", "vectorised")
# Interactions, users and items of the scale presets: catalogue and user base grow with the
# interactions (about 25 per user, 50 per item).
SCALE_PRESETS = {
    "100k": (4_000, 2_000, 100_000),
    "1m": (40_000, 20_000, 1_000_000),
    "10m": (400_000, 200_000, 10_000_000),
}
# Users sampled together by the vectorised sampler: bounds its working memory (about 1M rows
# at a time) whatever the preset, and fixes the random stream independently of the machine.
_CHUNK_USERS = 1 << 15
# Redraw rounds before a user's remaining repeats go to the exact per-user top-k. Repeats
# roughly halve each round, and a round only revisits the users who still have some, so many
# rounds are cheap while every top-k costs a pass over the catalogue.
_REDRAW_ROUNDS = 64


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
      sampler: "per_user" or "vectorised" (see the module docstring); the same config and
        seed give different, equally distributed data under the two.

    Example:
      >>> data = generate_synthetic(SyntheticConfig.scale("100k"))  # ~100K interactions
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
    sampler: str = "per_user"

    @classmethod
    def tiny(cls, seed: int = 0) -> "SyntheticConfig":
        """A few thousand interactions: enough structure for tests, fast to train on."""
        return cls(num_users=150, num_items=150, num_interactions=2500, num_topics=8,
                   seed=seed)

    @classmethod
    def scale(cls, size: str, seed: int = 0) -> "SyntheticConfig":
        """A scale preset ("100k", "1m" or "10m" interactions) on the vectorised sampler."""
        if size not in SCALE_PRESETS:
            raise ValueError(f"unknown synthetic scale {size!r}; expected one of "
                             f"{', '.join(SCALE_PRESETS)}")
        users, items, interactions = SCALE_PRESETS[size]
        return cls(num_users=users, num_items=items, num_interactions=interactions,
                   sampler="vectorised", seed=seed)

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
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, "
                             f"got {self.sampler!r}")


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


def _item_texts_vectorised(item_topics: np.ndarray, rng: np.random.Generator):
    """`_item_texts`' titles, texts and genres with the random draws made for all items at once."""
    num_items, k = item_topics.shape
    words = [TOPIC_WORDS[name].split() for name in TOPIC_NAMES[:k]]
    width = max(len(w) for w in words)
    vocabulary = [w for topic in words for w in topic]
    capitalized = [w.capitalize() for w in vocabulary]
    # Row t holds topic t's word numbers; the extra last row (all -1) pads items with fewer
    # topics than the most any item has.
    table = np.full((k + 1, width), -1)
    offset = 0
    for t, topic in enumerate(words):
        table[t, :len(topic)] = np.arange(offset, offset + len(topic))
        offset += len(topic)
    member = item_topics > 0
    most = int(member.sum(axis=1).max())
    topics = np.sort(np.where(member, np.arange(k), k), axis=1)[:, :most]
    pool = table[topics].reshape(num_items, most * width)

    def shuffled_pool():  # each row: its item's words in random order, padding last
        keys = rng.random(pool.shape)
        keys[pool < 0] = 2.0
        return np.take_along_axis(pool, np.argsort(keys, axis=1), axis=1)

    # Lists, not arrays, for the per-item string assembly below: indexing them is far cheaper.
    title_words = shuffled_pool()[:, :3].tolist()
    title_sizes = rng.integers(2, 4, size=num_items).tolist()
    body_words = shuffled_pool()[:, :8].tolist()
    body_sizes = rng.integers(5, 9, size=num_items).tolist()
    connectors = [_CONNECTORS[c].capitalize()
                  for c in rng.integers(len(_CONNECTORS), size=num_items)]
    labels, label_of = np.unique(topics, axis=0, return_inverse=True)
    names = [[TOPIC_NAMES[t] for t in row if t < k] for row in labels]
    label_of = label_of.reshape(-1).tolist()

    titles, texts, genres = [], [], []
    for i in range(num_items):
        topic_names = names[label_of[i]]
        title = "The " + " ".join([capitalized[w] for w in title_words[i][:title_sizes[i]]])
        body = [vocabulary[w] for w in body_words[i][:body_sizes[i]]]
        sentence = f"{connectors[i]} {', '.join(body[:-1])} and {body[-1]}"
        titles.append(title)
        genres.append("|".join(topic_names))
        texts.append(f"{title}. {sentence}. Genres: {', '.join(topic_names)}.")
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


def _sample_per_user(cfg, rng, item_topics, popularity, start_pref, end_pref, counts):
    """The "per_user" sampler: (user, item, rating, timestamp) arrays, one user at a time."""
    cold = np.flatnonzero(popularity == 0)
    log_popularity = np.log(np.where(popularity > 0, popularity, 1.0))
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
    return (np.concatenate(users_col), np.concatenate(items_col), np.concatenate(ratings_col),
            np.concatenate(times_col))


class _MixLadder:
    """Draws items ∝ popularity × (affinity + exploration) ** strength without a catalogue scan.

    Items with the same row of `item_topics` (a topic mix: at most k + k(k-1)/2 of them) share
    their affinity to every user, so a draw is a mix, ∝ the mix's popularity mass × its
    affinity weight, then an item of that mix ∝ its popularity. Both draws are one
    `searchsorted` on a "ladder": step j of rung r sits at r + (cumulative share of j in r), so
    a uniform u in (0, 1] on rung r lands on r's steps with the right probabilities.
    """

    def __init__(self, cfg: SyntheticConfig, item_topics: np.ndarray, popularity: np.ndarray):
        self.cfg = cfg
        self.mixes, mix_of = np.unique(item_topics, axis=0, return_inverse=True)
        self.item_mix = mix_of.reshape(-1)
        self.log_popularity = np.log(np.where(popularity > 0, popularity, 1.0))
        self.warm = popularity > 0
        warm = np.flatnonzero(self.warm)
        self.by_mix = warm[np.argsort(self.item_mix[warm], kind="stable")]
        self.mass = np.bincount(self.item_mix[self.by_mix], weights=popularity[self.by_mix],
                                minlength=len(self.mixes))
        self.item_ladder = _ladder(self.item_mix[self.by_mix], popularity[self.by_mix])

    def mix_ladder(self, prefs: np.ndarray) -> np.ndarray:
        """[len(prefs) × mixes] ladder: rung r draws a mix for preference row r."""
        weights = self.mass * (prefs @ self.mixes.T + self.cfg.exploration) ** (
            self.cfg.affinity_strength)
        cum = np.cumsum(weights, axis=1)
        # Each row divided by its own total ends exactly on rung + 1 (see `_ladder`).
        return (np.arange(len(prefs))[:, None] + cum / cum[:, -1:]).reshape(-1)

    def draw(self, ladder: np.ndarray, rungs: np.ndarray, rng: np.random.Generator):
        """Items for preference rows `rungs` of `ladder` (from `mix_ladder`)."""
        steps = np.searchsorted(ladder, rungs + (1.0 - rng.random(len(rungs))))
        mix = steps - rungs * len(self.mixes)
        return self.by_mix[np.searchsorted(self.item_ladder, mix + (1.0 - rng.random(len(mix))))]

    def top_k(self, pref: np.ndarray, m: int, exclude: np.ndarray, rng: np.random.Generator):
        """`m` distinct items outside `exclude`, the per-user sampler's exact Gumbel top-k."""
        affinity = (self.mixes @ pref)[self.item_mix]
        keys = (self.log_popularity
                + self.cfg.affinity_strength * np.log(affinity + self.cfg.exploration)
                + rng.gumbel(size=len(affinity)))
        keys[~self.warm] = -np.inf
        keys[exclude] = -np.inf
        return rng.permutation(np.argpartition(-keys, m - 1)[:m])


def _ladder(rungs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """rung + cumulative share of each step within its rung; `rungs` sorted, weights >= 0."""
    cum = np.cumsum(weights)
    first = np.r_[True, rungs[1:] != rungs[:-1]]
    last = np.r_[rungs[1:] != rungs[:-1], True]
    group = np.cumsum(first) - 1
    before = (cum - weights)[first][group]
    total = cum[last][group] - before
    # Dividing by the rung's own cumsum difference keeps steps non-decreasing and ends every
    # rung exactly on rung + 1, so a draw can never fall through to the next rung.
    return rungs + (cum - before) / np.where(total > 0, total, 1.0)


def _repeats(keys: np.ndarray, pending: np.ndarray) -> np.ndarray:
    """Rows whose key an earlier row already holds; accepted (not pending) rows keep theirs."""
    order = np.lexsort((pending, keys))
    ordered = keys[order]
    repeat = np.empty(len(keys), dtype=bool)
    repeat[order] = np.r_[False, ordered[1:] == ordered[:-1]]
    return repeat


def _sample_vectorised(cfg, rng, item_topics, popularity, start_pref, end_pref, counts):
    """The "vectorised" sampler: `_sample_per_user`'s arrays, a chunk of users at a time."""
    sampler = _MixLadder(cfg, item_topics, popularity)
    span = cfg.span_days * 86400
    columns = []
    for first_user in range(0, cfg.num_users, _CHUNK_USERS):
        users = np.arange(first_user, min(first_user + _CHUNK_USERS, cfg.num_users))
        n = counts[users]
        local = np.repeat(np.arange(len(users)), n)
        offsets = np.cumsum(n) - n
        position = np.arange(len(local)) - offsets[local]
        phase = (position >= (n // 2)[local]).astype(np.int64)
        # Rung 2u draws from user u's start preferences, rung 2u + 1 from the end ones: the
        # first half of a user's history comes from the start mix, the rest from the end mix.
        prefs = np.stack([start_pref[users], end_pref[users]], axis=1).reshape(-1, cfg.num_topics)
        ladder = sampler.mix_ladder(prefs)
        rungs = 2 * local + phase
        items = sampler.draw(ladder, rungs, rng)
        keys = local.astype(np.int64) * cfg.num_items + items
        pending = _repeats(keys, np.zeros(len(keys), dtype=bool))
        for _ in range(_REDRAW_ROUNDS):
            redo = np.flatnonzero(pending)
            if not len(redo):
                break
            items[redo] = sampler.draw(ladder, rungs[redo], rng)
            keys[redo] = local[redo].astype(np.int64) * cfg.num_items + items[redo]
            affected = np.zeros(len(users), dtype=bool)
            affected[local[redo]] = True
            rows = np.flatnonzero(affected[local])
            pending[rows] = _repeats(keys[rows], pending[rows])
        # Users who want nearly every item they like keep drawing ones they have; finish them
        # with the exact top-k over the items they do not have yet.
        for rung in np.unique(rungs[pending]):
            user = rung // 2
            mine = np.arange(offsets[user], offsets[user] + n[user])
            rows = mine[pending[mine] & (rungs[mine] == rung)]
            have = items[mine][~pending[mine]]
            items[rows] = sampler.top_k(prefs[rung], len(rows), have, rng)
            pending[rows] = False

        mean_pref = (start_pref[users] + end_pref[users]) / 2
        affinity = (mean_pref @ sampler.mixes.T) / np.maximum(mean_pref.max(axis=1), 1e-9)[:, None]
        noise = rng.normal(0, cfg.rating_noise, len(items))
        ratings = np.clip(np.rint(1.5 + 3.5 * affinity[local, sampler.item_mix[items]] + noise),
                          1, 5).astype(np.float32)
        start = rng.uniform(0, 0.6 * span, len(users))
        gaps = rng.exponential(size=len(items)) * ((span - start) / (n + 1))[local]
        elapsed = np.cumsum(np.floor(gaps).astype(np.int64) + 1)
        elapsed -= np.r_[0, elapsed][offsets][local]
        times = cfg.start_timestamp + start.astype(np.int64)[local] + elapsed
        columns.append((users[local].astype(np.int32), items.astype(np.int32), ratings, times))
    return tuple(np.concatenate(parts) for parts in zip(*columns))


_SAMPLERS = {"per_user": (_item_texts, _sample_per_user),
             "vectorised": (_item_texts_vectorised, _sample_vectorised)}


def _ids(prefix: str, count: int) -> np.ndarray:
    width = max(5, len(str(count - 1)))  # 5 digits keeps the historical ids of small data
    return np.array([f"{prefix}{j:0{width}d}" for j in range(count)], dtype=object)


def _interactions_frame(users: np.ndarray, items: np.ndarray, ratings: np.ndarray,
                        times: np.ndarray) -> pd.DataFrame:
    """The canonical interaction frame, its id columns sharing one str object per id.

    `schema.canonical_interactions` would round-trip the ids through pandas' string dtype and
    back, creating a new str for every row: about 140 MB more per million rows than columns
    of references into the user and item id arrays.
    """
    return pd.DataFrame({
        schema.USER_ID: pd.Series(users, dtype=object),
        schema.ITEM_ID: pd.Series(items, dtype=object),
        schema.RATING: pd.Series(ratings, dtype="float32"),
        schema.TIMESTAMP: pd.Series(times, dtype="int64"),
    })


def generate_synthetic(config: Optional[SyntheticConfig] = None) -> schema.RecDataset:
    """Generates the synthetic dataset described in the module docstring.

    Args:
      config: sizes, shape, sampler and seed; `SyntheticConfig()` by default (~40K
        interactions).

    Returns:
      A RecDataset named "synthetic" with rating range (1, 5); items include the cold ones;
      ground truth in `extras`.
    """
    cfg = config or SyntheticConfig()
    cfg.validate()
    item_texts, sample = _SAMPLERS[cfg.sampler]
    rng = np.random.default_rng(cfg.seed)
    k = cfg.num_topics
    item_ids = _ids("i", cfg.num_items)
    user_ids = _ids("u", cfg.num_users)

    item_topics = _item_topics(cfg, rng)
    titles, texts, genres = item_texts(item_topics, rng)
    num_cold = int(round(cfg.cold_item_fraction * cfg.num_items))
    cold = np.sort(rng.choice(cfg.num_items, size=num_cold, replace=False))
    warm = np.setdiff1d(np.arange(cfg.num_items), cold)
    popularity = np.zeros(cfg.num_items)
    ranks = rng.permutation(len(warm)) + 1
    popularity[warm] = ranks.astype(float) ** -cfg.zipf_exponent

    alpha = np.full(k, cfg.preference_concentration)
    start_pref = rng.dirichlet(alpha, size=cfg.num_users)
    other = rng.dirichlet(alpha, size=cfg.num_users)
    end_pref = (1 - cfg.drift) * start_pref + cfg.drift * other
    counts = _activity(cfg, rng, max_items=max(1, int(0.6 * len(warm))))

    user_index, item_index, ratings, times = sample(cfg, rng, item_topics, popularity,
                                                    start_pref, end_pref, counts)
    interactions = _interactions_frame(user_ids[user_index], item_ids[item_index], ratings,
                                       times)
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

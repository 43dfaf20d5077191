"""The (user, timestamp, item) row order every split and history is built on.

One function instead of a three-key `np.lexsort` written out at every split and history.
Integer codes combined into one int64 key (or the (user, time) rank and the item, when the
three do not fit) and sorted stably give the same permutation: ties, i.e. repeated rows, keep
their input order as lexsort's do. A stable sort is nearly free on rows that arrive ordered by
user and time: measured on synthetic-1m 0.01 s against lexsort's 0.39 s. At 10M rows on this
machine it is no faster (5.6 s against 5.4 s): there the time goes to allocating the 80 MB
key and rank arrays, not to sorting.

Example:
  >>> time_order(np.array([1, 0, 0]), np.array([5, 9, 5]), np.array([0, 1, 0]))
  array([2, 1, 0])
"""
from __future__ import annotations

import numpy as np

__all__ = ["time_order"]

_KEY_LIMIT = 2 ** 62


def _codes(values: np.ndarray):
    """Non-negative int64 codes that sort like integer `values` (their offset from the
    minimum) and the codes' span; None for other dtypes."""
    values = np.asarray(values)
    if not np.issubdtype(values.dtype, np.integer):
        return None, 0
    if len(values) == 0:
        return values.astype(np.int64), 1
    low = int(values.min())
    return values.astype(np.int64) - low, int(values.max()) - low + 1


def time_order(user_codes: np.ndarray, timestamps: np.ndarray,
               item_codes: np.ndarray) -> np.ndarray:
    """`np.lexsort((item_codes, timestamps, user_codes))`: rows by user, then time, then item.

    One stable argsort of the combined key when user, time and item fit in one int64; else
    (user, time) is replaced by its dense rank, found by a first stable argsort, and the rank
    and item are sorted together; else lexsort itself.

    Args:
      user_codes, item_codes: integer codes of the ids (e.g. `pd.factorize(..., sort=True)`).
      timestamps: the rows' timestamps (any dtype numpy orders).
    """
    users, n_users = _codes(user_codes)
    items, n_items = _codes(item_codes)
    times, n_times = _codes(timestamps)
    if users is None or items is None or times is None or n_users * n_times >= _KEY_LIMIT:
        return np.lexsort((item_codes, timestamps, user_codes))
    user_time = users * n_times + times
    if n_users * n_times * n_items < _KEY_LIMIT:
        return np.argsort(user_time * n_items + items, kind="stable")
    # Too wide with the item: replace (user, time) by its dense rank, at most the row count.
    by_user_time = np.argsort(user_time, kind="stable")
    ranked = user_time[by_user_time]
    rank = np.empty(len(ranked), np.int64)
    rank[by_user_time] = np.cumsum(np.r_[False, ranked[1:] != ranked[:-1]])
    if (int(rank.max(initial=0)) + 1) * n_items >= _KEY_LIMIT:
        return np.lexsort((item_codes, timestamps, user_codes))
    return np.argsort(rank * n_items + items, kind="stable")

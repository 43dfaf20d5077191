"""time_order: the (user, timestamp, item) order of lexsort, from one combined key."""
import numpy as np
import pytest

from recommenders_tf.data.ordering import time_order


def _lexsort(users, times, items):
    return np.lexsort((items, times, users))


@pytest.mark.parametrize("times_kind", ["dense", "sparse_seconds", "float", "negative"])
def test_same_permutation_as_lexsort_with_ties(times_kind):
    rng = np.random.default_rng(0)
    n = 20000
    users = rng.integers(0, 300, n)
    items = rng.integers(0, 50, n)  # few items: many repeated (user, time, item) rows
    times = {"dense": rng.integers(0, 40, n),
             "sparse_seconds": rng.integers(0, 40, n) * 10_000_019 + 880_000_000,
             "float": rng.integers(0, 40, n) * 0.5,
             "negative": rng.integers(-20, 20, n)}[times_kind]
    np.testing.assert_array_equal(time_order(users, times, items),
                                  _lexsort(users, times, items))


@pytest.mark.parametrize("limit, uses_lexsort", [
    (2 ** 62, False),       # one combined key
    (30 ** 3 - 1, False),   # user x time fits, x item does not: ranked user-times
    (30 ** 2 - 1, True),    # not even user x time: lexsort itself
])
def test_every_path_gives_the_lexsort_permutation(monkeypatch, limit, uses_lexsort):
    from recommenders_tf.data import ordering

    rng = np.random.default_rng(1)
    users, times, items = (rng.integers(0, 30, 2000) for _ in range(3))
    expected = _lexsort(users, times, items)
    calls = []
    real = np.lexsort
    monkeypatch.setattr(ordering.np, "lexsort", lambda keys: calls.append(1) or real(keys))
    monkeypatch.setattr(ordering, "_KEY_LIMIT", limit)
    np.testing.assert_array_equal(time_order(users, times, items), expected)
    assert bool(calls) == uses_lexsort


def test_empty_and_example():
    assert time_order(np.array([], int), np.array([], int), np.array([], int)).size == 0
    np.testing.assert_array_equal(
        time_order(np.array([1, 0, 0]), np.array([5, 9, 5]), np.array([0, 1, 0])), [2, 1, 0])

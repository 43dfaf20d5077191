"""User tags reach item text only from a split's train part (BENCHMARK.md, side information
produced by interactions), on tiny ml-latest-small folders with hand-worked answers."""
import pandas as pd
import pytest

from recommenders_tf.data import (allowed_tags, cold_item_split, items_for_train,
                                  load_movielens_dir, split_boundaries, split_for_protocol,
                                  temporal_split)
from recommenders_tf.data import schema
from recommenders_tf.data.validation import DataValidationError

MOVIES = ("movieId,title,genres\n1,One (1995),Comedy\n2,Two (1996),Drama\n3,Three (1997),Drama\n"
          "4,Four (1998),Action\n5,Five (1999),Action\n6,Six (2001),Drama\n")
# user 1: five ratings, the last (item 5 at t=50) is P1 test, so the boundary is 50.
# users 2 and 4: fewer than five ratings, wholly in train (no boundary).
# user 3: six ratings, the last (item 5 at t=11) is P1 test.
RATINGS = ("userId,movieId,rating,timestamp\n"
           "1,1,4.0,10\n1,2,4.0,20\n1,3,4.0,30\n1,4,4.0,40\n1,5,4.0,50\n"
           "2,6,3.0,10\n2,2,3.0,20\n2,5,3.0,30\n"
           "3,1,5.0,5\n3,2,5.0,6\n3,3,5.0,7\n3,4,5.0,8\n3,6,5.0,9\n3,5,5.0,11\n"
           "4,4,2.0,60\n")
TAGS = ("userId,movieId,tag,timestamp\n"
        "1,1,pixar,100\n"      # (1, 1) is a train pair: in, even after the boundary
        "3,1,Pixar,1\n"        # train pair again; counted with the one above (case folded)
        "1,1,fun,1\n"          # train pair
        "1,5,spoiler,5\n"      # (1, 5) is the P1 test pair: out, though before the boundary
        "1,6,early,49\n"       # user 1 never rated 6; 49 < boundary 50: in
        "1,6,late,50\n"        # untied, at the boundary: out
        "9,1,stranger,1\n"     # user 9 never rated anything: out
        "2,3,anytime,1000\n"   # user 2 wholly in train, never rated 3: in
        "3,6,heldout,1\n")     # (3, 6) is a P1 train pair; item 6 is P3's cold item


def _write(folder, tags=TAGS):
    folder.mkdir()
    (folder / "movies.csv").write_text(MOVIES)
    (folder / "ratings.csv").write_text(RATINGS)
    (folder / "tags.csv").write_text(tags)
    return folder


@pytest.fixture
def data(tmp_path):
    return load_movielens_dir(_write(tmp_path / "ml-latest-small"))


def _tags_by_item(items):
    return dict(zip(items[schema.ITEM_ID], items["tags"]))


def test_load_keeps_tags_apart_and_item_text_without_them(data):
    assert "tags" not in data.items.columns
    assert not data.items[schema.TEXT].str.contains("Tags:").any()
    assert data.items.set_index(schema.ITEM_ID).loc["1", schema.TEXT] == (
        "One (1995). Genres: Comedy. Year: 1995.")
    assert list(data.tags.columns) == list(schema.TAG_COLUMNS)
    assert data.tags.iloc[1].tolist() == ["3", "1", "Pixar", 1]  # case kept as written
    assert len(data.tags) == 9 and data.tags[schema.TIMESTAMP].dtype == "int64"


def test_items_for_train_needs_the_train_part(data):
    with pytest.raises(TypeError, match="split.train"):
        items_for_train(data, None)


def test_split_boundaries_are_each_users_earliest_held_out_time(data):
    split = temporal_split(data.interactions)
    boundary = split_boundaries(data.interactions, split.train)
    assert boundary.to_dict() == {"1": 50, "3": 11}  # users 2 and 4 are wholly in train


def test_p1_text_has_train_pairs_and_untied_tags_before_the_boundary(data):
    split = split_for_protocol("P1", data)
    items = items_for_train(data, split.train)
    assert _tags_by_item(items) == {"1": "pixar|fun", "2": "", "3": "anytime", "4": "",
                                    "5": "", "6": "early|heldout"}
    text = items.set_index(schema.ITEM_ID)[schema.TEXT]
    assert text["1"] == "One (1995). Genres: Comedy. Year: 1995. Tags: pixar, fun."
    assert text["5"] == "Five (1999). Genres: Action. Year: 1999."  # spoiler: a test pair
    assert text["6"] == "Six (2001). Genres: Drama. Year: 2001. Tags: early, heldout."
    admitted = allowed_tags(data.tags, data.interactions, split.train)
    assert sorted(admitted[schema.TAG]) == ["Pixar", "anytime", "early", "fun", "heldout",
                                            "pixar"]
    assert not data.items[schema.TEXT].str.contains("Tags:").any()  # the load is untouched


def test_p3_cold_item_carries_no_tags(data):
    split = cold_item_split(data.interactions, seed=0)
    assert split.info["cold_items"] == ["6"]
    assert _tags_by_item(items_for_train(data, data.interactions))["6"] == "early|heldout|late"
    items = items_for_train(data, split.train)
    # heldout: (3, 6) is now a test pair. early: user 1 never rated 6 and tagged it before
    # their boundary, but a cold item carries no tags at all. anytime: user 2's rating of the
    # cold item 6 at t=10 is held out, so user 2's boundary is 10 and t=1000 is after it.
    assert _tags_by_item(items) == {"1": "pixar|fun", "2": "", "3": "", "4": "", "5": "",
                                    "6": ""}
    assert items.set_index(schema.ITEM_ID).loc["6", schema.TEXT] == (
        "Six (2001). Genres: Drama. Year: 2001.")


def test_users_without_train_interactions_contribute_no_tags(data):
    # User 4's only rating (item 4) is held out here, so user 4 has no train part at all.
    train = data.interactions[data.interactions[schema.USER_ID] != "4"]
    tags = pd.DataFrame({schema.USER_ID: ["4", "4"], schema.ITEM_ID: ["1", "2"],
                         schema.TAG: ["a", "b"], schema.TIMESTAMP: [1, 1]})
    assert len(allowed_tags(tags, data.interactions, train)) == 0
    # With that rating in train, user 4 has no boundary and both untied tags count.
    assert len(allowed_tags(tags, data.interactions, data.interactions)) == 2


def test_dataset_without_tags_gets_its_items_unchanged(synthetic_tiny):
    split = temporal_split(synthetic_tiny.interactions)
    assert items_for_train(synthetic_tiny, split.train) is synthetic_tiny.items


def test_tags_file_without_user_or_time_is_refused(tmp_path):
    folder = _write(tmp_path / "ml-latest-small", tags="movieId,tag\n1,pixar\n")
    with pytest.raises(DataValidationError, match="userId|user_id"):
        load_movielens_dir(folder)

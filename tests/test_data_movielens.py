"""MovieLens directory loaders: the real 100K folder and tiny hand-written 1M / latest folders."""
import numpy as np
import pytest

from recommenders_tf.data import schema
from recommenders_tf.data.movielens import detect_layout, load_movielens_dir
from recommenders_tf.data.registry import DatasetNotFoundError, load_dataset
from recommenders_tf.data.side_info import items_for_train
from recommenders_tf.data.validation import DataValidationError


def test_ml100k_real_directory(ml100k_dir):
    data = load_movielens_dir(ml100k_dir)
    inter = data.interactions
    assert data.name == "ml-100k"
    assert len(inter) == 100000
    assert inter[schema.USER_ID].nunique() == 943
    assert inter[schema.ITEM_ID].nunique() == 1682
    assert dict(inter.dtypes.astype(str)) == {"user_id": "object", "item_id": "object",
                                              "rating": "float32", "timestamp": "int64"}
    # First line of u.data: 196 242 3 881250949.
    assert inter.iloc[0].tolist() == ["196", "242", 3.0, 881250949]
    assert data.rating_range == (1.0, 5.0)
    assert data.report.duplicates == 0 and data.report.out_of_range == 0
    train, test = data.predefined_splits["u1"]
    assert (len(train), len(test)) == (80000, 20000)
    toy = data.items.set_index(schema.ITEM_ID).loc["1"]
    assert toy[schema.TITLE] == "Toy Story (1995)"
    assert toy[schema.GENRES] == "Animation|Children's|Comedy"
    assert toy[schema.TEXT] == ("Toy Story (1995). Genres: Animation, Children's, Comedy. "
                                "Year: 1995.")
    assert len(data.items) == 1682
    user = data.users.set_index(schema.USER_ID).loc["1"]
    assert user.tolist() == ["24", "M", "technician", "85711"]


def test_ml100k_via_registry_path(ml100k_dir):
    data = load_dataset("ml-100k", path=ml100k_dir)
    assert len(data.interactions) == 100000 and "u1" in data.predefined_splits


def _write_ml1m(folder):
    folder.mkdir()
    (folder / "ratings.dat").write_bytes(
        b"1::10::5::978300760\n1::20::3::978302109\n2::10::4::978301968\n"
        b"2::10::4::978301968\n")
    (folder / "movies.dat").write_bytes(
        "10::Caf\u00e9 Society (1999)::Comedy|Romance\n20::Heat (1995)::Action|Crime|Thriller\n"
        "30::Never Rated (2000)::Drama\n".encode("latin-1"))
    (folder / "users.dat").write_bytes(b"1::F::1::10::48067\n2::M::56::16::70072\n")
    return folder


def test_ml1m_layout(tmp_path):
    data = load_movielens_dir(_write_ml1m(tmp_path / "ml-1m"))
    assert detect_layout(tmp_path / "ml-1m") == "ml-1m"
    assert data.name == "ml-1m"
    assert data.interactions[schema.ITEM_ID].tolist() == ["10", "20", "10", "10"]
    assert data.report.duplicates == 1  # user 2 rated item 10 twice at the same second: kept
    items = data.items.set_index(schema.ITEM_ID)
    assert items.loc["10", schema.TITLE] == "Caf\u00e9 Society (1999)"  # latin-1 decoded
    assert items.loc["10", schema.TEXT] == ("Caf\u00e9 Society (1999). Genres: Comedy, Romance. "
                                            "Year: 1999.")
    assert "30" in items.index  # catalog keeps never-rated movies
    users = data.users.set_index(schema.USER_ID)
    assert users.loc["1"].tolist() == ["1", "F", "K-12 student", "48067"]
    assert users.loc["2", "occupation"] == "self-employed"


def test_ml_latest_layout_with_tags(tmp_path):
    folder = tmp_path / "ml-latest-small"
    folder.mkdir()
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n"
                                        "1,3,0.5,964981247\n6,1,5.5,845553522\n")
    (folder / "movies.csv").write_text(
        'movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n'
        '3,"Grumpier Old Men, The (1995)",(no genres listed)\n')
    (folder / "tags.csv").write_text("userId,movieId,tag,timestamp\n1,1,pixar,1\n2,1,Fun,2\n"
                                     "3,1,pixar,3\n4,3,old,4\n")
    data = load_movielens_dir(folder)
    assert data.name == "ml-latest-small" and data.rating_range == (0.5, 5.0)
    assert data.report.out_of_range == 1  # the 5.5 is kept and counted
    assert data.interactions[schema.RATING].tolist() == [4.0, 0.5, 5.5]
    items = data.items.set_index(schema.ITEM_ID)
    # Tags are side information produced by interactions: kept apart, never in the loaded text.
    assert items.loc["1", schema.TEXT] == ("Toy Story (1995). Genres: Adventure, Animation. "
                                           "Year: 1995.")
    assert items.loc["3", schema.GENRES] == ""
    assert items.loc["3", schema.TITLE] == "Grumpier Old Men, The (1995)"
    assert "tags" not in items.columns
    assert data.tags.values.tolist() == [["1", "1", "pixar", 1], ["2", "1", "Fun", 2],
                                         ["3", "1", "pixar", 3], ["4", "3", "old", 4]]
    # All ratings in train: user 1's own tag counts; users 2-4 never rated anything.
    with_tags = items_for_train(data, data.interactions).set_index(schema.ITEM_ID)
    assert with_tags.loc["1", schema.TEXT].endswith("Year: 1995. Tags: pixar.")
    assert with_tags.loc["3", "tags"] == ""


def test_unknown_folder_layout_names_expected_files(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(DataValidationError, match="u.data .*ratings.dat .*ratings.csv"):
        load_movielens_dir(tmp_path)


def test_rated_item_missing_from_movies_file_is_an_error(tmp_path):
    folder = _write_ml1m(tmp_path / "ml-1m")
    (folder / "movies.dat").write_bytes(b"10::A (1999)::Comedy\n")
    with pytest.raises(DataValidationError, match="missing from the movies file.*'20'"):
        load_movielens_dir(folder)


def test_bad_rating_in_u_data_names_file_line_and_field(tmp_path):
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    (folder / "u.data").write_text("1\t2\t3\t881250949\n1\t3\tfour\t881250950\n")
    (folder / "u.item").write_text("2|A (1995)|01-Jan-1995||url" + "|0" * 19 + "\n")
    with pytest.raises(DataValidationError) as err:
        load_movielens_dir(folder)
    assert err.value.line == 2 and err.value.field == "rating"
    assert "u.data" in str(err.value) and "'four'" in str(err.value)


def test_registry_errors_are_actionable(monkeypatch, tmp_path):
    monkeypatch.setenv("RECS_ML1M_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DatasetNotFoundError, match="path=.*tfds:movielens/1m-ratings"):
        load_dataset("ml-1m")
    monkeypatch.setenv("RECS_ML1M_DIR", str(_write_ml1m(tmp_path / "ml-1m")))
    assert len(load_dataset("ml-1m").interactions) == 4
    with pytest.raises(ValueError, match="unknown dataset spec"):
        load_dataset("netflix")


def test_registry_file_and_dir_specs(tmp_path):
    (tmp_path / "r.csv").write_text("user_id,item_id,timestamp\nu,a,1\nu,b,2\n")
    (tmp_path / "i.csv").write_text("item_id,title\na,Alpha\nb,Beta\n")
    data = load_dataset(f"file:{tmp_path / 'r.csv'},items={tmp_path / 'i.csv'}")
    assert data.items[schema.TITLE].tolist() == ["Alpha", "Beta"]
    assert np.all(data.interactions[schema.RATING] == 1.0)
    assert len(load_dataset(f"dir:{_write_ml1m(tmp_path / 'ml-1m')}").interactions) == 4
    tiny = load_dataset("synthetic-tiny", seed=3)
    assert tiny.name == "synthetic-tiny" and tiny.extras["config"]["seed"] == 3

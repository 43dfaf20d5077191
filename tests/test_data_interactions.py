"""Generic interactions files: parsing, the LoadReport, and an error per kind of bad input."""
import numpy as np
import pandas as pd
import pytest

from recommenders_tf.data import schema
from recommenders_tf.data.interactions import load_interactions_file
from recommenders_tf.data.validation import DataValidationError


def _write(tmp_path, name, text, encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def test_tsv_sniffed_with_iso_and_epoch_timestamps(tmp_path):
    path = _write(tmp_path, "log.tsv",
                  "userId\tmovieId\tscore\ttime\n"
                  "u1\ta\t4\t2020-01-01T00:00:10\n"
                  "u1\tb\t2.5\t1577836800\n"
                  "u2\ta\t1\t2020-01-01 01:00:00+01:00\n")
    data = load_interactions_file(path)
    inter = data.interactions
    assert inter[schema.USER_ID].tolist() == ["u1", "u1", "u2"]
    assert inter[schema.RATING].tolist() == [4.0, 2.5, 1.0]
    # 2020-01-01T00:00:00Z is 1577836800; +01:00 at 01:00 is midnight UTC.
    assert inter[schema.TIMESTAMP].tolist() == [1577836810, 1577836800, 1577836800]
    assert data.rating_range == (1.0, 4.0)  # observed range when none is given
    assert data.name == "log"
    assert data.items[schema.TITLE].tolist() == ["a", "b"]  # no items file: ids stand in


def test_report_counts_duplicates_and_out_of_range_and_keeps_them(tmp_path):
    path = _write(tmp_path, "r.csv", "user_id,item_id,rating,timestamp\n"
                  "u,a,5,1\nu,a,5,1\nu,b,7,2\nv,a,0,3\nu,a,5,1\n")
    data = load_interactions_file(path, rating_range=(1, 5))
    assert len(data.interactions) == 5  # nothing dropped
    report = data.report
    assert report.rows_read == 5
    assert report.duplicates == 2  # the 2nd and 3rd copies of (u, a, 1)
    assert report.out_of_range == 2  # 7 and 0
    assert any("lines 3, 6" in note for note in report.notes)
    assert any("lines 4, 5" in note for note in report.notes)
    assert report.counts == {"interactions": 5, "users": 2, "items": 2,
                             "items_without_metadata": 0, "catalog_items": 2}


def test_missing_rating_means_implicit_weight_one(tmp_path):
    path = _write(tmp_path, "r.csv", "user_id,item_id,timestamp\nu,a,1\nu,b,2\n")
    data = load_interactions_file(path)
    assert data.interactions[schema.RATING].tolist() == [1.0, 1.0]
    assert data.interactions[schema.RATING].dtype == np.float32
    assert data.rating_range is None


def test_items_file_builds_text_and_keeps_columns(tmp_path):
    inter = _write(tmp_path, "r.csv", "u,i,ts\n1,A,1\n1,B,2\n1,C,3\n")
    items = _write(tmp_path, "items.csv",
                   "item_id,title,description,genres,price\n"
                   "A,Red Shoes,Comfortable running shoes,Sport|Shoes,49.5\n"
                   "B,Blue Hat,,Hats,10\n")
    data = load_interactions_file(inter, items_path=items,
                                  columns={"u": "user_id", "i": "item_id", "ts": "timestamp"})
    table = data.items.set_index(schema.ITEM_ID)
    assert table.loc["A", schema.TEXT] == ("Red Shoes. Comfortable running shoes. "
                                           "Genres: Sport, Shoes")
    assert table.loc["B", schema.TEXT] == "Blue Hat. Genres: Hats"
    assert table.loc["A", "price"] == 49.5  # numeric column kept as a feature, not text
    assert table.loc["C", schema.TITLE] == "C"  # only in interactions: id stands in
    assert data.report.counts["items_without_metadata"] == 1


def test_parquet_input(tmp_path):
    frame = pd.DataFrame({"user_id": ["u", "v"], "item_id": ["a", "b"], "rating": [3.0, 4.0],
                          "timestamp": pd.to_datetime(["2021-05-01", "2021-05-02"])})
    path = tmp_path / "r.parquet"
    frame.to_parquet(path)
    data = load_interactions_file(path)
    assert data.interactions[schema.TIMESTAMP].tolist() == [1619827200, 1619913600]


def _error(tmp_path, text, encoding="utf-8", name="bad.csv", **kw) -> DataValidationError:
    path = _write(tmp_path, name, text, encoding)
    with pytest.raises(DataValidationError) as info:
        load_interactions_file(path, **kw)
    err = info.value
    assert str(path) in str(err)  # every error names the file
    return err


def test_error_missing_column(tmp_path):
    err = _error(tmp_path, "user_id,item_id,rating\nu,a,1\n")
    assert err.field == "timestamp"
    assert "missing column 'timestamp'" in str(err) and "columns=" in str(err)


def test_error_non_numeric_rating_names_row_line_field(tmp_path):
    err = _error(tmp_path, "user_id,item_id,rating,timestamp\nu,a,4,1\nu,b,great,2\n")
    assert (err.row, err.line, err.field) == (2, 3, "rating")
    assert "row 2 (line 3)" in str(err) and "'great'" in str(err)


def test_error_unparsable_timestamp(tmp_path):
    err = _error(tmp_path, "user_id,item_id,rating,timestamp\nu,a,4,1\nu,b,3,2\n"
                 "v,c,3,last tuesday\n")
    assert (err.row, err.field) == (3, "timestamp")
    assert "'last tuesday'" in str(err) and "ISO-8601" in str(err)


def test_error_empty_file(tmp_path):
    assert "empty" in str(_error(tmp_path, ""))
    assert "no data rows" in str(_error(tmp_path, "user_id,item_id,timestamp\n", name="h.csv"))


def test_error_wrong_delimiter_suggests_the_right_one(tmp_path):
    err = _error(tmp_path, "user_id\titem_id\trating\ttimestamp\nu\ta\t4\t1\n", delimiter=",")
    message = str(err)
    assert "single column" in message and "comma (',')" in message
    assert "delimiter='\\t'" in message and err.line == 1


def test_error_bad_encoding_names_byte_offset_and_line(tmp_path):
    text = "user_id,item_id,timestamp\nu,caf\u00e9,1\n"
    err = _error(tmp_path, text, encoding="latin-1")
    offset = len("user_id,item_id,timestamp\nu,caf".encode())
    assert f"byte offset {offset}" in str(err) and err.line == 2
    assert "encoding='latin-1'" in str(err)
    data = load_interactions_file(tmp_path / "bad.csv", encoding="latin-1")
    assert data.interactions[schema.ITEM_ID].tolist() == ["caf\u00e9"]


def test_error_empty_id_names_row(tmp_path):
    err = _error(tmp_path, "user_id,item_id,timestamp\nu,a,1\n,b,2\n")
    assert (err.row, err.line, err.field) == (2, 3, "user_id")
    assert "empty id" in str(err)


def test_error_line_numbers_survive_blank_lines(tmp_path):
    err = _error(tmp_path, "user_id,item_id,rating,timestamp\nu,a,1,1\n\nu,b,x,2\n")
    assert err.line == 4 and err.row == 3


def test_error_ragged_row_is_located(tmp_path):
    err = _error(tmp_path, "user_id,item_id,rating,timestamp\nu,a,1,1\nu,b,1,2,9\n")
    assert err.line == 3 and "comma" in str(err)


def test_error_mapping_to_absent_column(tmp_path):
    err = _error(tmp_path, "a,b,c\n1,2,3\n", columns={"uid": "user_id"})
    assert err.field == "uid" and "not a column" in str(err)


def test_error_duplicate_item_in_items_file(tmp_path):
    inter = _write(tmp_path, "r.csv", "user_id,item_id,timestamp\nu,a,1\n")
    items = _write(tmp_path, "items.csv", "item_id,title\na,X\nb,Y\na,Z\n")
    with pytest.raises(DataValidationError) as info:
        load_interactions_file(inter, items_path=items)
    assert str(items) in str(info.value) and info.value.row == 3
    assert info.value.field == "item_id"

"""Data edge cases that used to load silently wrong or fail with a raw error.

Each test writes a tiny file to tmp_path and checks the hand-worked result: the located
DataValidationError, or the loaded values and the LoadReport.
"""
import numpy as np
import pandas as pd
import pytest

from recommenders_tf.data import schema
from recommenders_tf.data.interactions import load_interactions_file
from recommenders_tf.data.movielens import load_movielens_dir
from recommenders_tf.data.registry import DatasetSpecError, load_dataset
from recommenders_tf.data.validation import DataValidationError


def _write(tmp_path, name, text, encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def _load_error(path, **kw) -> DataValidationError:
    with pytest.raises(DataValidationError) as info:
        load_interactions_file(path, **kw)
    assert str(path) in str(info.value)  # every error names the file
    return info.value


# 1. Timestamps that do not fit in int64 used to become INT64_MIN (first in time → train).

@pytest.mark.parametrize("stamp", ["1e25", "-1e25", "inf", "9223372036854775808"])
def test_timestamp_beyond_int64_is_an_error(tmp_path, stamp):
    path = _write(tmp_path, "r.csv",
                  f"user_id,item_id,rating,timestamp\nu,a,4,1\nv,b,3,{stamp}\n")
    err = _load_error(path)
    assert (err.row, err.line, err.field) == (2, 3, "timestamp")
    assert "out of range" in str(err) and repr(stamp) in str(err)


def test_largest_timestamps_that_fit_still_load(tmp_path):
    # 9.2e18 < 2**63 ≈ 9.223e18 and is a multiple of float64's spacing there (1024): exact.
    path = _write(tmp_path, "r.csv", "user_id,item_id,timestamp\nu,a,9.2e18\nv,b,-9.2e18\n")
    data = load_interactions_file(path)
    assert data.interactions[schema.TIMESTAMP].tolist() == [9200000000000000000,
                                                           -9200000000000000000]


def test_integer_parquet_timestamps_are_taken_exactly(tmp_path):
    # Through float64 this nanosecond-looking value would become ...768 (2**53 < it).
    frame = pd.DataFrame({"user_id": ["u"], "item_id": ["a"],
                          "timestamp": np.array([1619827200123456789], dtype=np.int64)})
    frame.to_parquet(tmp_path / "r.parquet")
    data = load_interactions_file(tmp_path / "r.parquet")
    assert data.interactions[schema.TIMESTAMP].tolist() == [1619827200123456789]


# 2. Float ids from Parquet: 25.0 is the item "25" of the items file, never a second id.

def test_parquet_float_ids_are_read_as_integers(tmp_path):
    pd.DataFrame({"user_id": [1.0, 2.0, 1.0], "item_id": [25.0, 26.0, 26.0],
                  "rating": [4.0, 5.0, 3.0], "timestamp": [1, 2, 3]}).to_parquet(
        tmp_path / "r.parquet")
    items = _write(tmp_path, "items.csv", "item_id,title\n25,Alpha\n26,Beta\n")
    data = load_interactions_file(tmp_path / "r.parquet", items_path=items)
    assert data.interactions[schema.USER_ID].tolist() == ["1", "2", "1"]
    assert data.interactions[schema.ITEM_ID].tolist() == ["25", "26", "26"]
    assert data.items[schema.ITEM_ID].tolist() == ["25", "26"]  # no "25.0" row added
    assert data.items[schema.TITLE].tolist() == ["Alpha", "Beta"]
    counts = data.report.counts
    assert counts["float_ids_as_integers"] == 6  # 3 user ids + 3 item ids
    assert counts["items_without_metadata"] == 0 and counts["catalog_items"] == 2
    assert any("'item_id'" in n and "25.0" in n and "'25'" in n for n in data.report.notes)


def test_parquet_float_ids_in_the_items_file(tmp_path):
    inter = _write(tmp_path, "r.csv", "user_id,item_id,timestamp\nu,25,1\nu,7,2\n")
    pd.DataFrame({"item_id": [7.0, 25.0], "title": ["Seven", "TwentyFive"]}).to_parquet(
        tmp_path / "items.parquet")
    data = load_interactions_file(inter, items_path=tmp_path / "items.parquet")
    assert data.items[schema.ITEM_ID].tolist() == ["25", "7"]  # string order
    assert data.items[schema.TITLE].tolist() == ["TwentyFive", "Seven"]
    assert data.report.counts["float_ids_as_integers"] == 2
    assert data.report.counts["items_without_metadata"] == 0


@pytest.mark.parametrize("bad, message", [(25.5, "not a whole number"),
                                          (2.0 ** 53 + 2, "beyond 2**53")])
def test_parquet_float_id_that_is_not_an_exact_integer_is_an_error(tmp_path, bad, message):
    pd.DataFrame({"user_id": [1.0, 2.0], "item_id": [25.0, bad],
                  "timestamp": [1, 2]}).to_parquet(tmp_path / "r.parquet")
    err = _load_error(tmp_path / "r.parquet")
    assert (err.row, err.line, err.field) == (2, None, "item_id")
    assert message in str(err) and repr(bad) in str(err)


# 3. Negative ratings no longer widen the inferred range; the range can be declared.

def test_negative_ratings_are_out_of_the_inferred_range(tmp_path):
    path = _write(tmp_path, "r.csv",
                  "user_id,item_id,rating,timestamp\nu,a,4,1\nu,b,-1,2\nv,a,5,3\nv,b,1,4\n")
    data = load_interactions_file(path)
    assert data.rating_range == (1.0, 5.0)  # min and max of 4, 5, 1; -1 left out
    assert data.report.out_of_range == 1
    assert data.interactions[schema.RATING].tolist() == [4.0, -1.0, 5.0, 1.0]  # kept
    assert any("1 ratings outside [1.0, 5.0] kept, e.g. lines 3" in n for n in data.report.notes)
    assert any("1 negative ratings" in n for n in data.report.notes)


def test_rating_range_declared_in_the_spec(tmp_path):
    path = _write(tmp_path, "r.csv",
                  "user_id,item_id,rating,timestamp\nu,a,4,1\nu,b,-1,2\nv,a,0.5,3\n")
    data = load_dataset(f"file:{path},rating_range=1:5")
    assert data.rating_range == (1.0, 5.0)
    assert data.report.rating_range == (1.0, 5.0)
    assert data.report.out_of_range == 2  # -1 and 0.5
    signed = load_dataset(f"file:{path},rating_range=-1:5")
    assert signed.rating_range == (-1.0, 5.0) and signed.report.out_of_range == 0
    for bad in ("1-5", "5:1", "1:inf", "a:b"):
        with pytest.raises(DatasetSpecError, match="expected MIN:MAX with MIN <= MAX"):
            load_dataset(f"file:{path},rating_range={bad}")
    with pytest.raises(DatasetSpecError, match="both"):
        load_dataset(f"file:{path},rating_range=1:5", rating_range=(1, 5))
    with pytest.raises(ValueError, match="finite min <= max"):
        load_interactions_file(path, rating_range=(5, 1))


def test_only_negative_ratings_need_a_declared_range(tmp_path):
    path = _write(tmp_path, "r.csv", "user_id,item_id,rating,timestamp\nu,a,-2,1\nu,b,-1,2\n")
    err = _load_error(path)
    assert err.field == "rating" and "rating_range" in str(err)
    assert load_interactions_file(path, rating_range=(-2, 2)).report.out_of_range == 0


# 4. Control characters in ids would corrupt the one-id-per-line vocabulary files.

@pytest.mark.parametrize("cell, char", [('"a\nb"', "\n"), ('"a\rb"', "\r"), ("a\tb", "\t"),
                                        ("a\x00b", "\x00"), ("a\x1fb", "\x1f")])
def test_id_with_a_control_character_is_an_error(tmp_path, cell, char):
    path = _write(tmp_path, "r.csv", f"user_id,item_id,timestamp\nu,a,1\nu,{cell},2\n")
    err = _load_error(path)
    assert (err.row, err.line, err.field) == (2, 3, "item_id")
    assert "control character" in str(err) and repr(char) in str(err)


def test_user_id_with_a_newline_in_parquet_is_an_error(tmp_path):
    pd.DataFrame({"user_id": ["u", "v\nw"], "item_id": ["a", "b"],
                  "timestamp": [1, 2]}).to_parquet(tmp_path / "r.parquet")
    err = _load_error(tmp_path / "r.parquet")
    assert (err.row, err.field) == (2, "user_id") and "'\\n'" in str(err)


def test_line_numbers_count_line_breaks_inside_quoted_fields(tmp_path):
    # Row 1 spans lines 2-3, so row 2 is on line 4.
    path = _write(tmp_path, "r.csv", 'user_id,item_id,rating,timestamp,comment\n'
                  'u,a,4,1,"two\nlines"\nu,b,x,2,\n')
    err = _load_error(path)
    assert (err.row, err.line, err.field) == (2, 4, "rating")


# 5. A directory, or something else named .parquet, given as the file.

@pytest.mark.parametrize("name", ["folder", "folder.csv", "folder.parquet"])
def test_directory_given_as_the_file_is_an_error(tmp_path, name):
    (tmp_path / name).mkdir()
    with pytest.raises(DataValidationError, match="is a directory") as info:
        load_dataset(f"file:{tmp_path / name}")
    assert info.value.file == str(tmp_path / name)
    inter = _write(tmp_path, "r.csv", "user_id,item_id,timestamp\nu,a,1\n")
    with pytest.raises(DataValidationError, match="is a directory") as info:
        load_dataset(f"file:{inter},items={tmp_path / name}")
    assert info.value.file == str(tmp_path / name)


def test_csv_named_parquet_is_an_error_that_says_so(tmp_path):
    path = _write(tmp_path, "r.parquet", "user_id,item_id,timestamp\nu,a,1\n")
    err = _load_error(path)
    assert "not a Parquet file" in str(err) and "'user'" in str(err) and ".csv" in str(err)


def test_corrupt_parquet_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "r.parquet"
    path.write_bytes(b"PAR1 not really parquet PAR1")
    assert "cannot read as Parquet" in str(_load_error(path))
    (tmp_path / "empty.parquet").write_bytes(b"")
    assert "it is empty" in str(_load_error(tmp_path / "empty.parquet"))


# 6. A delimiter mismatch names the delimiter instead of reporting an empty value.

@pytest.mark.parametrize("header_sep, row_sep, header_name, row_name", [
    (",", ";", "comma (',')", "semicolon (';')"),
    ("\t", ",", "tab ('\\t')", "comma (',')"),
])
def test_rows_split_by_another_delimiter_than_the_header(tmp_path, header_sep, row_sep,
                                                         header_name, row_name):
    header = header_sep.join(["user_id", "item_id", "rating", "timestamp"])
    path = _write(tmp_path, "r.txt", f"{header}\nu{row_sep}a{row_sep}4{row_sep}1\n")
    err = _load_error(path)
    message = str(err)
    assert (err.row, err.line) == (1, 2)
    assert "the delimiter is the likely cause" in message
    assert f"split with {header_name}, sniffed from the header line" in message
    assert f"header line looks like it uses {header_name}" in message
    assert f"by {row_name}" in message


def test_short_row_names_the_delimiter_used(tmp_path):
    path = _write(tmp_path, "r.csv", "user_id,item_id,rating,timestamp\nu,a\n")
    err = _load_error(path)
    assert (err.row, err.field) == (1, "rating")
    assert "empty value" in str(err) and "the delimiter is the likely cause" in str(err)
    assert "rows were split with comma (',')" in str(err)


def test_passed_delimiter_is_named_as_passed(tmp_path):
    path = _write(tmp_path, "r.csv", "user_id|item_id|timestamp\nu|a\n")
    err = _load_error(path, delimiter="|")
    assert err.field == "timestamp"
    assert "rows were split with pipe ('|'), as passed" in str(err)


# 7. encoding= and delimiter= in the file: spec, passed through to the loader.

def test_spec_encoding_and_delimiter(tmp_path):
    path = _write(tmp_path, "r.csv", "user_id;item_id;timestamp\nu;caf\u00e9;1\n",
                  encoding="latin-1")
    with pytest.raises(DataValidationError, match="encoding=latin-1"):
        load_dataset(f"file:{path}")
    data = load_dataset(f"file:{path},encoding=latin-1,delimiter=;")
    assert data.interactions[schema.ITEM_ID].tolist() == ["caf\u00e9"]
    with pytest.raises(DataValidationError, match="single column with delimiter comma"):
        load_dataset(f"file:{path},encoding=latin-1,delimiter=comma")


@pytest.mark.parametrize("written", ["tab", "TAB", "\\t"])
def test_spec_tab_delimiter_spellings(tmp_path, written):
    # Sniffing the header alone would also find the tab; the comma inside the user id shows
    # the rows were split by tab and not by comma.
    path = _write(tmp_path, "r.tsv", "user_id\titem_id\ttimestamp\nu,x\ta\t1\n")
    data = load_dataset(f"file:{path},delimiter={written}")
    assert data.interactions[schema.USER_ID].tolist() == ["u,x"]


def test_spec_option_errors(tmp_path):
    # DatasetSpecError is a DataValidationError, which command lines report as a user error.
    path = _write(tmp_path, "r.csv", "user_id,item_id,timestamp\nu,a,1\n")
    with pytest.raises(DatasetSpecError, match="delimiter=comma"):
        load_dataset(f"file:{path},delimiter=,")
    with pytest.raises(DatasetSpecError, match="delimiter=tab"):
        load_dataset(f"file:{path},delimiter=\t,encoding=utf-8")  # a literal tab
    with pytest.raises(DatasetSpecError, match="unknown option 'sep=;'.*delimiter="):
        load_dataset(f"file:{path},sep=;")
    with pytest.raises(DatasetSpecError, match="given twice"):
        load_dataset(f"file:{path},encoding=utf-8,encoding=latin-1")
    with pytest.raises(DatasetSpecError, match="both"):
        load_dataset(f"file:{path},delimiter=comma", delimiter=",")
    with pytest.raises(DataValidationError, match="unknown dataset spec"):
        load_dataset("netflix")
    with pytest.raises(DataValidationError, match="unknown encoding 'klingon'"):
        load_dataset(f"file:{path},encoding=klingon")


def test_pipeline_dataset_flag_reaches_the_loader(tmp_path):
    """`--dataset` is a plain string all the way to load_dataset, options included."""
    from pipelines.prepare_data import main, parse_args

    inter = _write(tmp_path, "r.csv", "user_id;item_id;rating;timestamp\n" + "".join(
        f"u{u};i{(u + k) % 4};{1 + k};{10 * k + u}\n" for u in range(3) for k in range(4))
        + "u0;i9;3;99\n")
    items = _write(tmp_path, "items.csv", "item_id,title\ni0,A\ni1,B\ni2,C\ni3,D\n")
    spec = (f"file:{inter},items={items},delimiter=semicolon,rating_range=1:5,"
            f"on_unknown_items=drop")
    config = parse_args(["--dataset", spec, "--set", f"out_dir={tmp_path / 'runs'}"])
    assert config.dataset == spec
    results = main(config)
    report = results["load_report"]
    assert (report["rows_read"], report["dropped"]) == (13, 1)
    assert report["dropped_examples"][0][schema.ITEM_ID] == "i9"
    summary = (tmp_path / "runs" / "r-P1" / "summary.md").read_text()
    assert "1 rows dropped on load" in summary and "'i9' (row 13, line 14)" in summary


# 8. on_unknown_items: ratings of movies the movies file does not list.

def _write_ml1m(folder):
    folder.mkdir()
    # Line 3 rates movie 40, which movies.dat does not list.
    (folder / "ratings.dat").write_bytes(
        b"1::10::5::978300760\n1::20::3::978302109\n2::40::4::978301968\n2::10::4::978301969\n")
    (folder / "movies.dat").write_bytes(b"10::Heat (1995)::Action\n20::Up (2009)::Animation\n")
    return folder


def test_unknown_items_are_an_error_by_default(tmp_path):
    folder = _write_ml1m(tmp_path / "ml-1m")
    with pytest.raises(DataValidationError) as info:
        load_movielens_dir(folder)
    err = info.value
    assert (err.row, err.line, err.field) == (3, 3, "item_id")
    assert "missing from the movies file (movies.dat)" in str(err) and "['40']" in str(err)
    assert "on_unknown_items=drop" in str(err)


def test_unknown_items_dropped_on_request_and_reported(tmp_path):
    folder = _write_ml1m(tmp_path / "ml-1m")
    data = load_dataset(f"dir:{folder},on_unknown_items=drop")
    assert data.interactions[schema.ITEM_ID].tolist() == ["10", "20", "10"]
    report = data.report
    assert (report.rows_read, report.dropped, report.counts["interactions"]) == (4, 1, 3)
    example = {"row": 3, "line": 3, "user_id": "2", "item_id": "40",
               "reason": "item missing from the movies file (movies.dat)"}
    assert report.dropped_examples == [example]
    assert report.to_dict()["dropped_examples"] == [example]
    assert report.summary() == (
        "4 rows read, 3 kept, 0 duplicates and 0 out-of-range ratings (kept), 1 dropped "
        "(item missing from the movies file (movies.dat), e.g. item '40' (row 3, line 3))")
    assert data.summary().endswith(
        "; 1 rows dropped on load (item missing from the movies file (movies.dat), "
        "e.g. item '40' (row 3, line 3))")
    assert any(n.startswith("1 rows dropped (on_unknown_items='drop')") for n in report.notes)


def test_unknown_items_option_for_movielens_names(tmp_path, monkeypatch):
    monkeypatch.setenv("RECS_ML1M_DIR", str(_write_ml1m(tmp_path / "ml-1m")))
    assert load_dataset("ml-1m,on_unknown_items=drop").report.dropped == 1
    with pytest.raises(DatasetSpecError, match="on_unknown_items='skip' in "
                                               "'ml-1m,on_unknown_items=skip': expected one of "
                                               "error, drop"):
        load_dataset("ml-1m,on_unknown_items=skip")
    with pytest.raises(DatasetSpecError, match="unknown option 'items=x'"):
        load_dataset("ml-1m,items=x")
    with pytest.raises(ValueError, match="on_unknown_items='skip': expected one of 'error', "
                                         "'drop'"):
        load_movielens_dir(tmp_path / "ml-1m", on_unknown_items="skip")


def test_unknown_items_dropped_from_ml100k_predefined_splits(tmp_path):
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    rows = "1\t2\t3\t881250949\n1\t9\t4\t881250950\n2\t2\t5\t881250951\n"
    (folder / "u.data").write_text(rows)
    (folder / "u1.base").write_text("1\t2\t3\t881250949\n1\t9\t4\t881250950\n")
    (folder / "u1.test").write_text("2\t2\t5\t881250951\n")
    (folder / "u.item").write_text("2|A (1995)|01-Jan-1995||url" + "|0" * 19 + "\n")
    data = load_movielens_dir(folder, on_unknown_items="drop")
    assert data.report.dropped == 1 and len(data.interactions) == 2
    base, test = data.predefined_splits["u1"]
    assert base[schema.ITEM_ID].tolist() == ["2"] and test[schema.ITEM_ID].tolist() == ["2"]
    assert any("1 rows of the predefined split files dropped" in n for n in data.report.notes)
    (folder / "u.data").write_text("1\t2\t3\t881250949\n2\t2\t5\t881250951\n")
    with pytest.raises(DataValidationError) as info:  # a stray row only in a fold
        load_movielens_dir(folder)
    assert str(folder / "u1.base") in str(info.value) and info.value.line == 2


def test_unknown_items_option_for_file_spec(tmp_path):
    inter = _write(tmp_path, "r.csv", "user_id,item_id,timestamp\nu,a,1\nu,zz,2\nv,a,3\n")
    items = _write(tmp_path, "items.csv", "item_id,title\na,Alpha\n")
    kept = load_dataset(f"file:{inter},items={items}")  # default: keep, titled by its id
    assert kept.items[schema.TITLE].tolist() == ["Alpha", "zz"]
    dropped = load_dataset(f"file:{inter},items={items},on_unknown_items=drop")
    assert dropped.interactions[schema.ITEM_ID].tolist() == ["a", "a"]
    assert dropped.items[schema.ITEM_ID].tolist() == ["a"]
    assert dropped.report.dropped == 1
    assert dropped.report.dropped_examples[0]["line"] == 3
    assert dropped.report.counts["items_without_metadata"] == 0
    with pytest.raises(DataValidationError) as info:
        load_dataset(f"file:{inter},items={items},on_unknown_items=error")
    assert (info.value.row, info.value.line) == (2, 3) and "['zz']" in str(info.value)
    with pytest.raises(DatasetSpecError, match="expected one of keep, error, drop"):
        load_dataset(f"file:{inter},items={items},on_unknown_items=ignore")
    with pytest.raises(DatasetSpecError, match="needs an items file"):
        load_dataset(f"file:{inter},on_unknown_items=drop")
    with pytest.raises(ValueError, match="expected one of 'keep', 'error', 'drop'"):
        load_interactions_file(inter, items_path=items, on_unknown_items="ignore")

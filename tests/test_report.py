import json

import pytest

from recommenders_tf.evaluation.report import render_benchmarks_md, write_results


def test_results_file_follows_the_protocol_format_and_renders(tmp_path):
    rows = [
        {"model": "most-popular", "kind": "peer", "metrics": {"ndcg@10": 0.1, "recall@10": 0.05},
         "train_seconds": 0.01},
        {"model": "two-tower", "kind": "project", "metrics": {"recall@10": 0.2, "ndcg@10": 0.3},
         "train_seconds": 12.5, "notes": "dim 64"},
    ]
    path = write_results(tmp_path / "results", protocol="P1", dataset="ml-100k", seed=0,
                         command="python -m pipelines.benchmark", rows=rows)
    payload = json.loads(path.read_text())
    assert path.name == "ml-100k-P1.json"
    assert payload["machine"]["cores"] >= 1 and payload["rows"] == rows
    write_results(tmp_path / "results", protocol="P2", dataset="ml-100k", seed=0, command="c",
                  rows=[{"model": "global-mean", "kind": "peer", "metrics": {"rmse": 1.15}}])
    text = render_benchmarks_md(tmp_path / "results", tmp_path / "BENCHMARKS.md")
    # P1 before P2, metric columns in canonical order (recall@10 before ndcg@10), project bold.
    assert text.index("P1") < text.index("P2 —")
    assert "| model | kind | recall@10 | ndcg@10 | train s | notes |" in text
    assert "| **two-tower** | project | 0.2000 | 0.3000 | 12.50 | dim 64 |" in text
    assert "| global-mean | peer | 1.1500 |  |" in text


def test_metric_keys_must_be_lower_case(tmp_path):
    with pytest.raises(ValueError, match="lower case"):
        write_results(tmp_path, protocol="P1", dataset="d", seed=0, command="c",
                      rows=[{"model": "m", "kind": "peer", "metrics": {"NDCG@10": 0.1}}])

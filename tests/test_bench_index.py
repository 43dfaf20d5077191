"""P5 index benchmark pipeline: results file and BENCHMARKS.md written where the config says,
rows named per index and size, the ScaNN/BruteForce ratio and 1M verdict computed from the rows,
and the serving rows timed on exports loaded in fresh processes."""
import json
import os
from pathlib import Path

import pytest

from pipelines import bench_index
from recommenders_tf.index import ScannParams

NOTE = ("5000 items, dim 64, ...; tuned: {'num_leaves': 71, 'num_leaves_to_search': 14, "
        "'dimensions_per_block': 2, 'num_reordering_candidates': 100, 'training_iterations': "
        "12, 'parallelize_batch_searches': True}; recall@10=0.970 >= 0.95 on 200 queries")


def test_size_labels_and_params_from_notes():
    assert [bench_index.size_label(n) for n in (100_000, 1_000_000, 2_000_000, 2500)] == [
        "100k", "1m", "2m", "2500"]
    assert bench_index.tuned_params_from_notes(NOTE) == ScannParams(
        num_leaves=71, num_leaves_to_search=14, dimensions_per_block=2,
        num_reordering_candidates=100)
    assert bench_index.tuned_params_from_notes("no params here") is None


def fake_rows(qps):
    """benchmark_indexes-shaped rows with chosen single-query QPS (brute, scann)."""
    def rows(n_items, dim, n_queries, seed, **kwargs):
        return [
            {"model": "index-bruteforce", "kind": "project", "notes": "exact",
             "metrics": {"qps_single": qps[0], "qps_batch256": 1000.0, "build_seconds": 0.5,
                         "recall@10_vs_exact": 1.0}},
            {"model": "index-scann", "kind": "project", "notes": NOTE,
             "metrics": {"qps_single": qps[1], "qps_batch256": 8000.0, "build_seconds": 30.0,
                         "recall@10_vs_exact": 0.961}},
        ]
    return rows


@pytest.mark.parametrize("qps, verdict", [((40.0, 240.0), "MET (6.0x at recall 0.961)"),
                                          ((40.0, 180.0), "NOT MET (4.5x at recall 0.961)")])
def test_one_million_verdict_and_ratio_notes(tmp_path, monkeypatch, qps, verdict):
    monkeypatch.setattr(bench_index, "benchmark_indexes", fake_rows(qps))
    config = bench_index.BenchIndexConfig(
        sizes=(1_000_000,), serving=False, results_dir=str(tmp_path / "results"),
        benchmarks_md=str(tmp_path / "BENCHMARKS.md"), work_dir=str(tmp_path / "work"))
    results = bench_index.main(config)
    payload = json.loads((tmp_path / "results" / "synthetic-catalog-P5.json").read_text())
    assert payload["protocol"] == "P5" and payload["dataset"] == "synthetic-catalog"
    assert [r["model"] for r in payload["rows"]] == ["bruteforce-1m", "scann-1m"]
    assert payload["notes"][0].endswith(verdict + ".")
    ratio = qps[1] / qps[0]
    assert payload["notes"][1].startswith(
        f"1m: ScaNN/BruteForce single-query QPS ratio {ratio:.1f}x (batch-256 8.0x) at "
        "recall@10 0.961")
    assert payload["notes"][-1].startswith(f"Machine: {os.cpu_count()} cores")
    assert results["rows"] == payload["rows"]
    markdown = (tmp_path / "BENCHMARKS.md").read_text()
    assert "`synthetic-catalog`" in markdown and "| **scann-1m** |" in markdown


@pytest.mark.slow
def test_real_small_run_with_serving_rows(tmp_path):
    config = bench_index.BenchIndexConfig(
        sizes=(3000,), n_queries=200, min_seconds=0.1, serving_requests=50,
        serving_min_seconds=0.2, results_dir=str(tmp_path / "results"),
        benchmarks_md=str(tmp_path / "BENCHMARKS.md"), work_dir=str(tmp_path / "work"))
    results = bench_index.main(config)
    rows = {r["model"]: r for r in results["rows"]}
    assert list(rows) == ["bruteforce-3k", "scann-3k", "bruteforce-3k-serving",
                          "scann-3k-serving"]
    assert all(r["kind"] == "project" for r in rows.values())
    assert rows["bruteforce-3k"]["metrics"]["recall@10_vs_exact"] == 1.0
    assert set(rows["scann-3k"]["metrics"]) == {"qps_single", "qps_batch256", "build_seconds",
                                                "recall@10_vs_exact"}
    for kind in ("bruteforce", "scann"):
        serving = rows[f"{kind}-3k-serving"]["metrics"]
        assert 0 < serving["latency_p50_ms"] <= serving["latency_p99_ms"]
        assert serving["qps_batch256"] > 0
    # The export re-builds ScaNN with the tuned parameters; its k-means partitions are not
    # seeded, so its recall varies around the tuned index's (0.85 to 0.97 seen on 3K items).
    assert rows["scann-3k-serving"]["metrics"]["recall@10_vs_exact"] >= 0.75
    assert not (Path(config.work_dir) / "latest" / "exports-3k").exists()
    assert Path(results["results_file"]) == tmp_path / "results" / "synthetic-catalog-P5.json"

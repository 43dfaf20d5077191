"""The scale ladder's growth exponents, plot and tables, on results with known growth."""
import json

import pytest

from pipelines import bench_scale
from recommenders_tf.evaluation.report import render_benchmarks_md, write_results


def _payload(tmp_path, size, n):
    # "linear" costs n / 1e4 seconds and a constant 500 MB; "quadratic" n^2 / 1e9 seconds and
    # memory growing like n; the peer is linear too.
    rows = [
        {"model": "data", "kind": "stage",
         "metrics": {"seconds": n / 1e5, "peak_rss_mb": 400.0, "interactions": n}},
        {"model": "linear", "kind": "stage",
         "metrics": {"seconds": n / 1e4, "peak_rss_mb": 500.0}},
        {"model": "quadratic", "kind": "stage",
         "metrics": {"seconds": n * n / 1e9, "peak_rss_mb": n / 1e3}},
        {"model": "implicit-ALS", "kind": "peer", "metrics": {"seconds": n / 2e4,
                                                              "peak_rss_mb": 300.0,
                                                              "ndcg@10": 0.2}},
        {"model": "full cascade", "kind": "project", "metrics": {"ndcg@10": 0.3}},
    ]
    path = write_results(tmp_path, protocol="P5-scale", dataset=f"synthetic-{size}", seed=0,
                         command="x", rows=rows, columns=["seconds", "peak_rss_mb", "ndcg@10"])
    path.replace(tmp_path / f"scale-{size}.json")


def test_growth_exponents_plot_and_tables(tmp_path):
    for size, n in (("100k", 100_000), ("1m", 1_000_000), ("10m", 10_000_000)):
        _payload(tmp_path, size, n)
    payloads = bench_scale._load(tmp_path)
    assert [p["interactions"] for p in sorted(payloads, key=lambda p: p["interactions"])] == \
        [100_000, 1_000_000, 10_000_000]
    rows = {r["model"]: r for r in bench_scale.growth(payloads)}
    assert set(rows) == {"data", "linear", "quadratic", "implicit-ALS"}  # not the metric rows
    assert rows["linear"]["metrics"]["time_exponent"] == pytest.approx(1.0, abs=0.01)
    assert rows["linear"]["metrics"]["memory_exponent"] == pytest.approx(0.0, abs=0.01)
    assert rows["quadratic"]["metrics"]["time_exponent"] == pytest.approx(2.0, abs=0.01)
    assert rows["quadratic"]["metrics"]["memory_exponent"] == pytest.approx(1.0, abs=0.01)
    assert rows["implicit-ALS"]["kind"] == "peer"
    assert rows["quadratic"]["metrics"]["seconds_10m"] == pytest.approx(1e5)

    plot = bench_scale.plot_growth(payloads, tmp_path / "scale.png")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    write_results(tmp_path, protocol="P5-scale-growth", dataset="synthetic", seed=0,
                  command="x", rows=bench_scale.growth(payloads),
                  columns=bench_scale.growth_columns(payloads))
    text = render_benchmarks_md(tmp_path, tmp_path / "BENCHMARKS.md")
    growth_table = text[text.index("how each stage's time and memory grow"):]
    header = next(line for line in growth_table.splitlines() if line.startswith("| model"))
    assert header.split(" | ")[2:6] == ["seconds_100k", "seconds_1m", "seconds_10m",
                                        "time_exponent"]
    assert "| 2.00 |" in growth_table or "| 2.0000 |" in growth_table
    assert json.loads((tmp_path / "scale-100k.json").read_text())["columns"][0] == "seconds"


def test_unknown_size_is_refused():
    with pytest.raises(ValueError, match="sizes must be among"):
        bench_scale.main(bench_scale.BenchScaleConfig(sizes=("5m",)))


def test_latency_requests_are_seeded_test_users_with_their_train_items_excluded():
    import numpy as np
    import pandas as pd

    from recommenders_tf.serving.latency import recommend_requests

    train = pd.DataFrame({"user_id": ["a", "a", "b", "c", "a"], "item_id": [1, 2, 3, 4, 1]})
    test = pd.DataFrame({"user_id": ["a", "b", "d"], "item_id": [5, 6, 7]})
    histories = lambda users: np.array([[f"h_{u}"] for u in users], dtype=object)  # noqa: E731
    users, hist, exclude = recommend_requests(train, test, histories, users=10, seed=0)
    assert users == ["a", "b", "d"]  # every test user when the sample is larger, sorted
    assert hist == [["h_a"], ["h_b"], ["h_d"]]
    assert exclude == [["1", "2"], ["3", ""], ["", ""]]  # train items, repeats once, "" padded
    two = recommend_requests(train, test, histories, users=2, seed=0)[0]
    assert len(two) == 2 and set(two) <= {"a", "b", "d"}
    assert two == recommend_requests(train, test, histories, users=2, seed=0)[0]


@pytest.mark.slow
def test_workers_rows_train_the_same_model_on_one_and_two_worker_processes(tmp_path):
    """The P5-scale-workers rows from real runs: train_retrieval on one worker, then on two
    MultiWorkerMirroredStrategy processes, on tiny data."""
    tiny = str(bench_scale.Path(__file__).resolve().parents[1] / "configs"
               / "retrieval_synthetic_tiny.yaml")
    config = bench_scale.BenchScaleConfig(
        sizes=(), results_dir=str(tmp_path / "results"), out_dir=str(tmp_path / "runs"),
        workers_flags=("--config", tiny, "--set", "retrieval.epochs=2",
                       "--set", "recall_curve_max_k=10"))
    path = bench_scale.run_workers(config, "synthetic-tiny", timeout=240)
    payload = json.loads(path.read_text())
    assert payload["protocol"] == "P5-scale-workers"
    one, two = payload["rows"]
    assert one["model"].endswith("1 worker") and "workers 1" in one["notes"]
    assert two["model"].endswith("2 workers") and "workers 2" in two["notes"]
    # Two workers split each global batch into two in-batch softmaxes: the same quality (the
    # tolerance of the multi-worker tests), not the same numbers.
    assert abs(one["metrics"]["ndcg@10"] - two["metrics"]["ndcg@10"]) <= 0.03
    assert min(one["metrics"]["ndcg@10"], two["metrics"]["ndcg@10"]) > 0.2  # most-popular 0.18
    assert "wall time of one" in payload["notes"][0]


def test_a_peer_runs_in_a_process_of_its_own_with_the_in_process_metrics(tmp_path):
    """The child process's rows are `pipelines.benchmark`'s on the same split and test users,
    with the child's own cost row beside them."""
    from pipelines import benchmark, run_all

    config = bench_scale.BenchScaleConfig(out_dir=str(tmp_path / "runs"))
    # After another one: a second peer at the same size must not trip over the first's files.
    bench_scale._peer_in_process(config, "100k", "EASE")
    child = bench_scale._peer_in_process(config, "100k", "most-popular")
    here = benchmark.main(benchmark.BenchmarkConfig(
        dataset="synthetic-100k", protocol="P1", models=("most-popular",), seed=0,
        results_dir=str(tmp_path / "here"), benchmarks_md=str(tmp_path / "here" / "B.md"),
        run_dir=str(tmp_path / "here"), max_eval_users=run_all.RunAllConfig().max_eval_users))
    assert [r["model"] for r in child["rows"]] == ["most-popular"]
    assert child["rows"][0]["metrics"]["ndcg@10"] == here["rows"][0]["metrics"]["ndcg@10"] > 0
    assert child["evaluation_users"] == here["evaluation_users"]
    assert child["cost"]["stage"] == "most-popular" and child["cost"]["seconds"] > 0
    assert child["cost"]["peak_rss_mb"] > 0


def test_a_resumed_run_without_a_retrieval_epoch_still_writes_its_note():
    """A 10m run that resumed finished retrieval fits crashed on formatting a None throughput
    after two hours of work, before writing its results."""
    resumed = bench_scale.run_note(10_000_172, 2_400.4, None)
    assert "10000172 interactions; run_all 2400 s" in resumed
    assert "resumed" in resumed and "examples/s" not in resumed
    assert "17059 examples/s" in bench_scale.run_note(10, 1.0, 17_058.7)

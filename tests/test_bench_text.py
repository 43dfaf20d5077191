"""pipelines.bench_text end to end on synthetic-tiny: P3/P4 results files with the right rows.

Uses the bundled MiniLM encoder (model load + 150 texts) with a cache in tmp_path, one epoch per
project model. Checks what the tables promise: the chance row equals the exact expectation on
the same split, P4 bucket sizes add up to the "all" row, a re-run is served from the cache.
"""
from __future__ import annotations

import json

import pytest

from pipelines import bench_text
from recommenders_tf.data import load_dataset, split_for_protocol
from recommenders_tf.evaluation.text_baselines import chance_metrics


@pytest.mark.slow
def test_bench_text_writes_p3_and_p4(tmp_path):
    config = bench_text.BenchTextConfig(
        p3_datasets=("synthetic-tiny",), p4_datasets=("synthetic-tiny",),
        models=("two-tower-text", "dmf-hybrid"), max_epochs=1,
        cache_dir=str(tmp_path / "cache"), embed_dir=str(tmp_path / "embed"),
        results_dir=str(tmp_path / "results"), benchmarks_md=str(tmp_path / "BENCHMARKS.md"),
        run_dir=str(tmp_path / "runs"), plot_dir=str(tmp_path / "plots"),
        p4_peers=("EASE",), p4_text_dropouts=(0.0, 0.5))
    bench_text.main(config)

    p3 = json.loads((tmp_path / "results" / "synthetic-tiny-P3.json").read_text())
    assert p3["protocol"] == "P3"
    assert [r["model"] for r in p3["rows"]] == ["chance", "tfidf-knn", "lm-knn",
                                                 "two-tower-text", "dmf-hybrid"]
    data = load_dataset("synthetic-tiny")
    split = split_for_protocol("P3", data, seed=0)
    chance = chance_metrics(split.train, split.test, (10, 50),
                            candidate_items=split.info["cold_items"]).metrics
    assert p3["rows"][0]["metrics"]["recall@10"] == pytest.approx(chance["recall@10"], abs=1e-5)
    assert p3["split"]["cold items"] == len(split.info["cold_items"])
    # The DMF hybrid carries the text popularity prior, its weight chosen on validation.
    assert "text popularity prior of 100 neighbours (weight" in p3["rows"][4]["notes"]
    # The LM neighbours read topic words: far above chance on this data.
    assert p3["rows"][2]["metrics"]["ndcg@10"] > 2 * p3["rows"][0]["metrics"]["ndcg@10"]

    p4 = json.loads((tmp_path / "results" / "synthetic-tiny-P4.json").read_text())
    assert {r["model"]: r["kind"] for r in p4["rows"]} == {
        "two-tower-text": "project", "dmf-hybrid": "project", "EASE": "peer",
        "cascade": "project"}
    # The cascade's final lists are bucketed like the models' scores: the same users.
    cascade_all = [r for r in p4["rows"] if r["model"] == "cascade" and r["bucket"] == "all"]
    assert cascade_all[0]["n_users"] == text_all_users(p4)
    assert "LM text context" in cascade_all[0]["notes"]
    text_all = [r for r in p4["rows"] if r["model"] == "two-tower-text" and r["bucket"] == "all"]
    assert "item_id_dropout chosen on validation" in text_all[0]["notes"]
    assert any(n.startswith("Best project model vs best peer") for n in p4["notes"])
    for model in ("two-tower-text", "dmf-hybrid", "EASE"):
        rows = [r for r in p4["rows"] if r["model"] == model]
        total = [r for r in rows if r["bucket"] == "all"][0]["n_users"]
        assert sum(r["n_users"] for r in rows if r["bucket"] != "all") == total
        assert {"ndcg@10", "recall@10"} == set(rows[0]["metrics"])
    md = (tmp_path / "BENCHMARKS.md").read_text()
    assert "synthetic-tiny" in md and "two-tower-text" in md and "cache hits" in md
    plot = tmp_path / "plots" / "p4-synthetic-tiny.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and str(plot) in md

    # The second embedding of the same texts comes entirely from the cache.
    _, metrics = bench_text.item_vectors_for(config, "synthetic-tiny")
    assert metrics["cache_misses"] == 0 and metrics["cache_hits"] == metrics["items"]


def text_all_users(p4):
    return [r for r in p4["rows"] if r["model"] == "two-tower-text"
            and r["bucket"] == "all"][0]["n_users"]


def test_p4_bucket_plot_draws_one_bar_per_model_and_bucket(tmp_path, monkeypatch):
    drawn = []
    from matplotlib.axes import Axes

    original = Axes.bar

    def spy(self, xs, ys, **kwargs):
        drawn.append((kwargs["label"], list(ys)))
        return original(self, xs, ys, **kwargs)

    monkeypatch.setattr(Axes, "bar", spy)
    rows = [{"model": m, "bucket": b, "n_users": n, "metrics": {"ndcg@10": v}}
            for m, vals in (("text", (0.3, 0.2, 0.25)), ("id", (0.1, 0.2, 0.15)))
            for (b, n), v in zip((("1-20", 5), ("21-50", 7), ("all", 12)), vals)]
    rows = [r for r in rows if not (r["model"] == "id" and r["bucket"] == "21-50")]
    path = bench_text.plot_buckets(rows, tmp_path / "p4.png", "tiny")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert drawn[0] == ("text", [0.3, 0.2, 0.25])
    # a model without a bucket's row leaves a gap there, never a zero bar
    assert drawn[1][0] == "id" and drawn[1][1][0] == 0.1 and drawn[1][1][1] != drawn[1][1][1]


def test_p4_verdict_reads_margins_off_the_rows():
    def row(model, kind, bucket, value):
        return {"model": model, "kind": kind, "bucket": bucket, "metrics": {"ndcg@10": value}}

    rows = [row("two-tower-text", "project", "1-20", 0.21),
            row("two-tower-id", "project", "1-20", 0.20),
            row("implicit-ALS", "peer", "1-20", 0.15),
            row("EASE", "peer", "1-20", 0.25),
            row("two-tower-text", "project", ">150", 0.40),
            row("two-tower-id", "project", ">150", 0.42),
            row("implicit-ALS", "peer", ">150", 0.30),
            row("EASE", "peer", ">150", 0.35)]
    lines = bench_text.p4_verdict(rows)
    assert lines[0] == ("Bucket 1-20: two-tower-text 0.2100 vs two-tower-id 0.2000 (+5.0%), "
                        "implicit-ALS 0.1500 (+40.0%).")
    # the best of each side per bucket, whichever model it is
    assert "1-20: two-tower-text 0.2100 vs EASE 0.2500 (-16.0%)" in lines[1]
    assert ">150: two-tower-id 0.4200 vs EASE 0.3500 (+20.0%)" in lines[1]
    assert len(lines) == 2  # no 21-50 rows: no sentence for it
    # The served cascade gets the same sentence when it is in the table.
    lines = bench_text.p4_verdict(rows + [row("cascade", "project", "1-20", 0.30)])
    assert lines[1] == ("Bucket 1-20: cascade 0.3000 vs two-tower-id 0.2000 (+50.0%), "
                        "implicit-ALS 0.1500 (+100.0%).")
    assert "1-20: cascade 0.3000 vs EASE 0.2500 (+20.0%)" in lines[2]


def test_p4_peers_must_be_topk_peers():
    with pytest.raises(ValueError, match="p4_peers"):
        bench_text.BenchTextConfig(p4_peers=("two-tower-id",)).validate()
    with pytest.raises(ValueError, match="p4_text_dropouts"):
        bench_text.BenchTextConfig(p4_text_dropouts=()).validate()

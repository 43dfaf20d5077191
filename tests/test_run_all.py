"""`pipelines.run_all` end to end on synthetic-tiny: every stage measured, the item text vectors
saved in the run folder, four exports written and reloaded, the ScaNN exports tuned on a stated
sample of users. The catalogue (142 items) is smaller than the cascade's retrieval k (200), which
the ScaNN cascade export must serve: every item, then padding."""
import json

import numpy as np
import pytest

import recommenders_tf  # noqa: F401

from pipelines.run_all import RunAllConfig, main
from recommenders_tf.features.item_vectors import ItemVectors

STAGES = ["data", "split", "text vectors", "retrieval training", "ranker lists",
          "context tables", "ranker training", "re-ranker training", "evaluation", "diversity curves", "export"]


@pytest.mark.slow
def test_run_all_on_tiny_data_end_to_end(tmp_path):
    out, models = tmp_path / "run", tmp_path / "models"
    result = main(RunAllConfig(dataset="synthetic-tiny", out_dir=str(out),
                               export_dir=str(models), diversity_lambdas=(1.0, 0.5),
                               max_index_query_users=60,
                               text_cache=str(tmp_path / "text_cache")))
    metrics = result["metrics"]
    assert [r["stage"] for r in metrics["cost"]] == STAGES
    for row in metrics["cost"]:
        # What a stage added on top of what it found resident is in the row.
        assert 0 < row["rss_start_mb"] <= row["peak_rss_mb"] + 1
        assert row["rss_end_mb"] <= row["peak_rss_mb"] + 1
    # The run worked on the split alone: the loaded interactions were released.
    assert len(result["split"].train) + len(result["split"].test) == metrics["cost"][0][
        "interactions"]

    vectors = ItemVectors.load(out / "item_vectors")
    assert len(vectors.ids) == 150 and vectors.vectors.shape == (150, 384)
    assert vectors.extra["text_split"]["protocol"] == "P1"
    text = next(r for r in metrics["cost"] if r["stage"] == "text vectors")
    assert text["encoded"] == 150 and text["texts_per_second"] > 0

    final = metrics["stages"]["final"]
    most_popular_floor = 0.05
    assert final["ndcg@10"] > most_popular_floor

    train_users = result["split"].train["user_id"].nunique()
    assert set(metrics["exports"]) == {"cascade_scann", "cascade_bruteforce",
                                       "retrieval_scann", "retrieval_bruteforce"}
    for name, facts in metrics["exports"].items():
        top = facts["first_user_top"]
        assert len(top) == 5 and all(top), name
    cascade_meta = json.loads((models / "recommender" / "1" / "metadata.json").read_text())
    retrieval = cascade_meta["stages"]["retrieval"]
    assert f"a sample of 60 of {train_users} users (seed 0)" in retrieval["queries"]
    assert retrieval["tune_queries"] + retrieval["held_out_queries"] == 60
    # 142 items: the retrieval searches all of them (k 200 asks for more than there are).
    assert cascade_meta["num_candidates"] == 142 == retrieval["search_width"]
    retrieval_meta = json.loads((models / "retrieval_scann" / "1" / "metadata.json").read_text())
    assert "a sample of 60 of" in retrieval_meta["index_build"]["query_note"]

    # Every catalogue item the user has not seen, then padding.
    stages, train = result["stages"], result["split"].train
    seen = train.groupby(train["user_id"].astype(str))["item_id"].nunique()
    catalog = set(map(str, result["cascade"].catalog))
    assert len(catalog) == 142
    filled = np.sum(stages.retrieval_ids != "", axis=1)
    expected = np.asarray([142 - seen.get(u, 0) for u in stages.user_ids])
    np.testing.assert_array_equal(filled, expected)

"""The benchmark's cap on evaluated users: run_all's sample of the test users, a capped
validation for the grid-searched peers, and the sample recorded in the results."""
import dataclasses
import json
import types

import numpy as np
import pandas as pd
import pytest

from pipelines import benchmark
from recommenders_tf.data import load_dataset, sample_users, temporal_split
from recommenders_tf.data.schema import USER_ID
from recommenders_tf.evaluation.peer_base import GridSearchPeer
from recommenders_tf.evaluation.protocol import TopKEvaluator, genre_features
from recommenders_tf.evaluation.report import round_metrics


@pytest.fixture
def seen_users(monkeypatch):
    """The user ids of every TopKEvaluator the benchmark builds, in order."""
    seen = []

    class Spy(TopKEvaluator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.append(list(self.user_ids))

    monkeypatch.setattr(benchmark, "TopKEvaluator", Spy)
    return seen


def _config(tmp_path, **kwargs):
    return benchmark.BenchmarkConfig(
        dataset="synthetic-tiny", results_dir=str(tmp_path / "results"),
        benchmarks_md=str(tmp_path / "B.md"), run_dir=str(tmp_path / "runs"), **kwargs)


def _run_all_sample(max_users, seed):
    """The test users pipelines.run_all evaluates (its P1 split and sampling, line for line)."""
    data = load_dataset("synthetic-tiny")
    split = temporal_split(data.interactions, seed=seed, dataset=data.name)
    test_users = split.test[USER_ID].astype(str)
    eval_users, report = sample_users(test_users, max_users, seed)
    test = split.test[test_users.isin(eval_users).to_numpy()]
    return split, sorted(np.unique(test[USER_ID].astype(str))), report


def test_capped_benchmark_evaluates_run_alls_sample_and_records_it(tmp_path, seen_users):
    _, expected, report = _run_all_sample(30, seed=1)
    assert report == {"sampled": 30, "of": 119, "seed": 1}
    results = benchmark.main(_config(tmp_path, models=("most-popular",), seed=1,
                                     max_eval_users=30))
    assert len(seen_users) == 1 and sorted(seen_users[0]) == expected
    assert results["evaluation_users"] == report
    note = "evaluated on 30 of 119 test users (seed 1)"
    assert results["rows"][0]["notes"].endswith(note)
    payload = json.loads((tmp_path / "results" / "synthetic-tiny-P1.json").read_text())
    assert payload["rows"][0]["notes"].endswith(note)
    assert any(note in n for n in payload["notes"])
    assert "max_eval_users: 30" in (next((tmp_path / "runs").iterdir()) / "config.yaml").read_text()
    # A different seed draws different users, still as many.
    _, other, _ = _run_all_sample(30, seed=2)
    assert len(other) == 30 and other != expected


def test_no_cap_keeps_every_test_user_and_the_uncapped_metrics(tmp_path, seen_users):
    results = benchmark.main(_config(tmp_path, models=("most-popular",)))
    split, everyone, report = _run_all_sample(0, seed=0)
    assert len(everyone) == 119 and sorted(seen_users[0]) == everyone
    assert results["evaluation_users"] == report == {"sampled": 119, "of": 119, "seed": 0}
    row = results["rows"][0]
    assert "evaluated on" not in row["notes"]
    payload = json.loads((tmp_path / "results" / "synthetic-tiny-P1.json").read_text())
    assert "notes" not in payload
    # The metrics of an evaluation over all of test, as before the cap existed.
    model = benchmark.build_model("most-popular", benchmark.BenchmarkConfig(), None)
    model.fit(split.train)
    ev = TopKEvaluator(split.train, split.test, ks=(10, 50),
                       item_features=genre_features(load_dataset("synthetic-tiny").items))
    full = ev.evaluate(lambda users: model.score(users, ev.item_ids)).metrics
    assert row["metrics"] == round_metrics(dict(full))
    # A cap at or above the number of test users samples nobody out: same users, same figures.
    capped = benchmark.main(_config(tmp_path / "b", models=("most-popular",),
                                    max_eval_users=119))
    assert sorted(seen_users[-1]) == everyone
    assert capped["rows"][0]["metrics"] == row["metrics"]
    assert capped["rows"][0]["notes"] == row["notes"]


def test_p4_buckets_cover_the_sampled_users(tmp_path):
    results = benchmark.main(_config(tmp_path, protocol="P4", models=("most-popular",),
                                     max_eval_users=25))
    assert sum(r["n_users"] for r in results["rows"]) == 25
    assert all(r["notes"] == "evaluated on 25 of 119 test users (seed 0)"
               for r in results["rows"])


def test_build_model_gives_the_tuned_peers_the_validation_cap():
    config = benchmark.BenchmarkConfig(max_eval_users=40, seed=3)
    peer = benchmark.build_model("EASE", config, None, item_ids=["a", "b"])
    assert isinstance(peer, GridSearchPeer)
    assert (peer.max_validation_users, peer.validation_seed) == (40, 3)
    default = benchmark.build_model("EASE", benchmark.BenchmarkConfig(), None)
    assert default.max_validation_users == 0


@pytest.mark.parametrize("bad", [-1, 1.5, "10", True, None])
def test_max_eval_users_must_be_a_non_negative_int(bad):
    with pytest.raises(ValueError, match="max_eval_users must be 0 \\(all\\) or a positive"):
        benchmark.BenchmarkConfig(max_eval_users=bad)


class _Counting(GridSearchPeer):
    """Ranks 'good' first when `level` >= 1; records the users each `score` call sees."""

    name = "counting"
    default_params = {"level": 0}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.scored = []

    def _fit_setting(self, train, params):
        self._set_catalog(train)
        self.fitted_on = len(train)
        self.level = params["level"]

    def _known_user_scores(self, users, cols):
        self.scored.extend(users)
        good = np.asarray(self._train_items)[cols] == "good"
        row = np.where(good, 1.0, 0.0) if self.level >= 1 else np.where(good, 0.0, 1.0)
        return np.tile(row, (len(users), 1)), np.ones(len(users), dtype=bool)


def _frame(pairs):
    return pd.DataFrame({"user_id": [u for u, _ in pairs], "item_id": [i for _, i in pairs]})


USERS = [f"u{n}" for n in range(8)]
TRAIN = _frame([(u, "x") for u in USERS] + [("z", "good"), ("z", "bad")])
# Every user's validation item is 'good'; u0 and u1 have two rows.
VALIDATION = _frame([(u, "good") for u in USERS] + [("u0", "good"), ("u1", "good")])


def test_grid_search_scores_each_setting_on_at_most_the_cap_of_validation_users():
    peer = _Counting(grid={"level": (0, 1, 2)})
    peer.max_validation_users, peer.validation_seed = 3, 5
    peer.fit(TRAIN, VALIDATION)
    expected, report = sample_users(VALIDATION["user_id"].astype(str), 3, 5)
    assert report == {"sampled": 3, "of": 8, "seed": 5}
    # Three settings, each scored on the same three sampled users.
    assert len(peer.scored) == 9
    assert sorted(peer.scored) == sorted(list(expected) * 3)
    assert peer.chosen_params == {"level": 1}
    assert "validation scored on 3 of 8 users (seed 5)" in peer.notes
    # The refit still covers every validation interaction.
    assert peer.fitted_on == len(TRAIN) + len(VALIDATION)


def test_grid_search_without_a_cap_scores_every_validation_user():
    peer = _Counting(grid={"level": (0, 1)}).fit(TRAIN, VALIDATION)
    assert sorted(peer.scored) == sorted(USERS * 2)
    assert "validation scored on" not in peer.notes
    peer = _Counting(grid={"level": (0, 1)})
    peer.max_validation_users = 8  # as many as there are: nobody sampled out
    peer.fit(TRAIN, VALIDATION)
    assert sorted(peer.scored) == sorted(USERS * 2)
    assert "validation scored on" not in peer.notes
    peer = _Counting(grid={"level": (0, 1)})
    peer.max_validation_users = -1
    with pytest.raises(ValueError, match="max_validation_users must be 0"):
        peer.fit(TRAIN, VALIDATION)


def test_bench_scale_evaluates_the_peers_on_run_alls_users(tmp_path, monkeypatch, seen_users):
    from pipelines import bench_scale, run_all
    from recommenders_tf.serving import latency

    split, expected, report = _run_all_sample(30, seed=0)

    @dataclasses.dataclass
    class Capped(run_all.RunAllConfig):
        max_eval_users: int = 30

    def fake_run_all(config):
        # What run_size reads of run_all's result; the cascade evaluated run_all's sample.
        assert config.max_eval_users == 30
        metrics = {"cost": [{"stage": "data", "seconds": 0.1, "peak_rss_mb": 1.0,
                             "interactions": 2500}],
                   "cascade_report": {"retrieval": {"examples_per_second": 1.0}},
                   "stages": {s: {"ndcg@10": 0.1, "recall@10": 0.1}
                              for s in ("retrieval", "ranking", "final")},
                   "exports": {}, "evaluation_users": report}
        return {"metrics": metrics, "split": split,
                "cascade": types.SimpleNamespace(histories_for=None)}

    monkeypatch.setattr(run_all, "RunAllConfig", Capped)
    monkeypatch.setattr(run_all, "main", fake_run_all)
    monkeypatch.setattr(latency, "recommend_requests", lambda *a: ([], [], [[]]))

    def peer_here(config, size, peer):
        # run_peer as the child process runs it, here where the spy sees its evaluator.
        return json.loads(bench_scale.run_peer(config, size, peer).read_text())

    monkeypatch.setattr(bench_scale, "_peer_in_process", peer_here)
    config = bench_scale.BenchScaleConfig(peers=("most-popular",), use_text=False,
                                          results_dir=str(tmp_path / "results"),
                                          out_dir=str(tmp_path / "out"))
    path = bench_scale.run_size(config, "tiny")
    assert len(seen_users) == 1 and sorted(seen_users[0]) == expected
    peer = next(r for r in json.loads(path.read_text())["rows"] if r["kind"] == "peer")
    assert peer["notes"] == ("fit (validation-tuned) and P1 evaluation on 30 of 119 test users "
                             "(seed 0), the cascade's, in a process of its own")

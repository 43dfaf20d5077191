"""`make demo` ends on the cascade's stages beside the peers of the same split."""
from pipelines.demo import PEERS, DemoConfig, comparison_lines


def test_demo_runs_the_cheap_strong_peers_by_default():
    assert DemoConfig().peers == PEERS
    assert {"EASE", "RP3beta", "implicit-ALS", "most-popular"} == set(PEERS)


def test_comparison_states_the_full_cascades_margin_over_every_row():
    stages = {"retrieval": {"ndcg@10": 0.20, "recall@10": 0.1, "diversity@10": 0.5},
              "ranking": {"ndcg@10": 0.25, "recall@10": 0.2, "diversity@10": 0.5},
              "final": {"ndcg@10": 0.30, "recall@10": 0.3, "diversity@10": 0.5}}
    peers = [{"model": "EASE", "metrics": {"ndcg@10": 0.32, "recall@10": 0.3}},
             {"model": "most-popular", "metrics": {"ndcg@10": 0.15, "recall@10": 0.1}}]
    lines = comparison_lines(stages, peers)
    assert len(lines) == 1 + 3 + 2
    by_label = {line[:24].strip(): line for line in lines[1:]}
    assert by_label["retrieval"].rstrip().endswith("+50.0%")   # 0.30 / 0.20 - 1
    assert by_label["retrieval + ranking"].rstrip().endswith("+20.0%")
    assert by_label["peer EASE"].rstrip().endswith("-6.2%")     # a peer ahead shows negative
    assert by_label["peer most-popular"].rstrip().endswith("+100.0%")
    assert "nan" in by_label["peer EASE"]  # a peer without diversity says so, not 0

"""StageMeter: per-stage wall time and peak RSS, reset between stages."""
import time

import numpy as np
import pytest

from recommenders_tf.resources import StageMeter, maybe_stage, reset_peak, rss_mb


def test_each_stage_reports_its_own_peak_and_time():
    if not reset_peak():
        pytest.skip("this system cannot reset the peak RSS counter")
    meter = StageMeter()
    base = rss_mb()
    with meter.stage("big", examples=3) as row:
        block = np.ones(300 * 1024 * 1024 // 8)  # 300 MB, touched
        row["extra"] = float(block[-1])
        del block
    with meter.stage("small"):
        time.sleep(0.05)
    big, small = meter.rows
    assert big["stage"] == "big" and big["examples"] == 3 and big["extra"] == 1.0
    assert big["peak_rss_mb"] >= base + 280
    # The second stage's peak starts from the RSS after the first freed its 300 MB.
    assert small["peak_rss_mb"] < big["peak_rss_mb"] - 200
    assert small["seconds"] >= 0.05 and big["peak_scope"] == small["peak_scope"] == "stage"
    assert meter.peak_mb() == big["peak_rss_mb"]
    assert meter.total_seconds() == pytest.approx(big["seconds"] + small["seconds"], abs=1e-3)


def test_maybe_stage_without_a_meter_is_a_no_op():
    with maybe_stage(None, "x", a=1) as row:
        row["b"] = 2
    meter = StageMeter()
    with maybe_stage(meter, "x", a=1) as row:
        row["b"] = 2
    assert meter.rows[0]["a"] == 1 and meter.rows[0]["b"] == 2


def test_a_stage_hands_back_the_heap_it_freed(monkeypatch):
    """Thousands of freed 64 KB blocks below one still alive: glibc keeps those pages (they
    are not at the top of the heap), so without the trim the next stage would start 180 MB
    higher."""
    import recommenders_tf.resources as resources

    if not resources.release_free_memory() or rss_mb() is None:
        pytest.skip("no glibc malloc_trim or no /proc on this system")

    def one_stage():
        meter = StageMeter()
        with meter.stage("fragments"):
            blocks = [np.ones(64 * 1024 // 8) for _ in range(3000)]
            survivor = blocks[-1]
            del blocks
        return meter.rows[0], survivor

    trimmed, _ = one_stage()
    assert trimmed["rss_end_mb"] < trimmed["peak_rss_mb"] - 150
    assert trimmed["rss_end_mb"] < trimmed["rss_start_mb"] + 30
    # The oracle: the same stage with the trim switched off keeps the freed pages resident.
    monkeypatch.setattr(resources, "release_free_memory", lambda: False)
    kept, _ = one_stage()
    assert kept["rss_end_mb"] > kept["rss_start_mb"] + 150

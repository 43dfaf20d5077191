"""Run folders (naming, claiming, reading back) and the shared command-line config parsing."""
import dataclasses
import json
from typing import Tuple

import pytest

from recommenders_tf import cli
from recommenders_tf.config import ConfigError
from recommenders_tf.runs import (claim_run_dir, default_run_dir, find_setting, read_run_config,
                                  record_run, slug)


@dataclasses.dataclass
class Inner:
    rate: float = 0.1
    verbose: int = 0


@dataclasses.dataclass
class Settings:
    dataset: str = "synthetic"
    seed: int = 0
    sizes: Tuple[int, ...] = (8, 4)
    inner: Inner = dataclasses.field(default_factory=Inner)
    run_dir: str = ""


def test_slug_and_default_run_dir():
    assert slug("file:/data/r.csv") == "file_data_r.csv"
    assert slug("ml-100k") == "ml-100k" and slug("::") == "dataset"
    assert default_run_dir("train_retrieval", "dir:/x y") == \
        default_run_dir("train_retrieval", "dir:/x y", "runs")
    assert str(default_run_dir("embed_items", "dir:/x y")) == "runs/embed_items/dir_x_y"


def test_claim_accepts_the_same_run_and_refuses_another(tmp_path):
    path = claim_run_dir(tmp_path, Settings(), data={"train": "abc"})
    assert json.loads(path.read_text())["data"] == {"train": "abc"}
    claim_run_dir(tmp_path, Settings(), data={"train": "abc"})  # resuming: accepted
    with pytest.raises(ConfigError, match=r"another config \(inner.rate: 0.1 -> 0.5"):
        claim_run_dir(tmp_path, Settings(inner=Inner(rate=0.5)), data={"train": "abc"})
    with pytest.raises(ValueError, match="another train data"):
        claim_run_dir(tmp_path, Settings(), data={"train": "abd"})
    # Keys that may change on resumption are left out of the comparison.
    claim_run_dir(tmp_path, Settings(inner=Inner(verbose=2)), data={"train": "abc"},
                  ignore={"inner.verbose"})


@dataclasses.dataclass
class NewerInner(Inner):
    steps: int = 1  # a setting added after a folder was claimed


@dataclasses.dataclass
class NewerSettings(Settings):
    inner: NewerInner = dataclasses.field(default_factory=NewerInner)
    workers: int = 1


def test_a_setting_added_since_the_claim_counts_only_when_moved_off_its_default(tmp_path):
    claim_run_dir(tmp_path, Settings(), data={"train": "abc"})
    # The upgraded code at its defaults is the run the folder holds: it resumes.
    claim_run_dir(tmp_path, NewerSettings(), data={"train": "abc"})
    claim_run_dir(tmp_path / "b", Settings(), data={"train": "abc"})
    with pytest.raises(ConfigError, match=r"inner.steps: None -> 4"):
        claim_run_dir(tmp_path / "b", NewerSettings(inner=NewerInner(steps=4)),
                      data={"train": "abc"})
    with pytest.raises(ConfigError, match=r"workers: None -> 2"):
        claim_run_dir(tmp_path / "b", NewerSettings(workers=2), data={"train": "abc"})


def test_claim_written_elsewhere_is_checked_against_the_run_dir(tmp_path):
    shared, own = tmp_path / "shared", tmp_path / "worker"
    claim_run_dir(shared, Settings())
    claim_run_dir(shared, Settings(), write_to=own)
    assert (own / "claim.json").exists()
    with pytest.raises(ConfigError):
        claim_run_dir(shared, Settings(seed=1), write_to=own)


def test_a_recorded_config_reads_back(tmp_path):
    record_run(tmp_path, Settings(seed=3), {"ok": 1}, ["line"])
    config = read_run_config(tmp_path)
    assert find_setting(config, "seed") == 3 and find_setting(config, "rate") == 0.1
    assert read_run_config(tmp_path / "none") == {}


def test_flags_override_set_which_overrides_the_file(tmp_path):
    (tmp_path / "c.yaml").write_text("dataset: ml-100k\nseed: 5\ninner: {rate: 0.2}\n")
    parser = cli.config_parser("test", Settings, dataset=True)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--run-dir")
    config = cli.parse_config(Settings, parser, ["--config", str(tmp_path / "c.yaml"),
                                                 "--set", "seed=6", "--set", "inner.rate=0.3",
                                                 "--dataset", "007"], fields=("seed", "run_dir"))
    assert (config.dataset, config.seed, config.inner.rate, config.run_dir) == \
        ("007", 6, 0.3, "")  # a string flag stays a string, an unset flag is not applied
    assert cli.parse_config(Settings, parser, ["--seed", "9", "--set", "seed=6"],
                            fields=("seed",)).seed == 9
    with pytest.raises(ConfigError, match="inner.rat"):
        cli.parse_config(Settings, parser, ["--set", "inner.rat=1"])

import dataclasses
from typing import Optional, Tuple

import pytest
import yaml

from recommenders_tf.config import ConfigError, load_config, save_config, to_dict


@dataclasses.dataclass
class Inner:
    dim: int = 8
    rate: float = 0.1


@dataclasses.dataclass
class Outer:
    name: str = "run"
    ks: Tuple[int, ...] = (10, 50)
    seed: Optional[int] = None
    shuffle: bool = True
    inner: Inner = dataclasses.field(default_factory=Inner)


def test_yaml_then_overrides_take_precedence_and_types_are_coerced(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: from-yaml\nks: [5, 20]\ninner: {dim: 16}\n")
    cfg = load_config(Outer, str(path), ["inner.rate=0.5", "seed=3", "shuffle=false", "ks=1,2,3"])
    assert cfg == Outer(name="from-yaml", ks=(1, 2, 3), seed=3, shuffle=False, inner=Inner(16, 0.5))


def test_unknown_key_and_bad_type_fail_loudly(tmp_path):
    with pytest.raises(ConfigError, match="inner.dims"):
        load_config(Outer, None, ["inner.dims=4"])
    with pytest.raises(ConfigError, match="inner.dim: expected an integer"):
        load_config(Outer, None, ["inner.dim=2.5"])
    with pytest.raises(ConfigError, match="shuffle"):
        load_config(Outer, None, ["shuffle=maybe"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Outer, str(tmp_path / "missing.yaml"))


def test_saved_config_round_trips(tmp_path):
    cfg = Outer(name="x", ks=(3,), seed=None, inner=Inner(4, 0.25))
    path = save_config(cfg, tmp_path)
    assert yaml.safe_load(path.read_text()) == to_dict(cfg)
    assert load_config(Outer, str(path)) == cfg

"""Run folders: every pipeline run writes its resolved config, vocabularies, metrics and a short
Markdown summary beside its artifacts, under `runs/<step>/<run name>/`.

* `default_run_dir` / `slug` name a step's folder for a dataset; `make_run_dir` creates one.
* `claim_run_dir` ties a folder to one config and one set of data, so a re-run resumes its own
  checkpoints and a different run is refused instead of continuing someone else's model.
* `record_run` writes config.yaml, metrics.json and summary.md; `read_run_config` and
  `find_setting` read a finished run's settings back (e.g. the training run an index is for).
* `Progress` prints one timestamped line per step of a long run.
"""
from __future__ import annotations

import datetime as _dt
import json
import re
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional

import yaml

from recommenders_tf.config import (ConfigError, atomic_write_text, save_config, to_dict,
                                    write_json)

RUNS_ROOT = "runs"
CLAIM_FILE = "claim.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def slug(name: str) -> str:
    """`name` as one safe path component ("file:/data/r.csv" -> "file_data_r.csv")."""
    return _UNSAFE.sub("_", str(name)).strip("_") or "dataset"


def default_run_dir(step: str, name: str, root: str | Path = RUNS_ROOT) -> Path:
    """`root/step/<slug of name>`, the folder a step writes for a dataset when none is given."""
    return Path(root) / step / slug(name)


def make_run_dir(base: str | Path, name: Optional[str] = None) -> Path:
    """Creates (or reuses, for resuming) `base/name`; a missing name gets a timestamp."""
    name = name or _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(base) / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _default_settings(config: Any) -> Dict[str, Any]:
    """The flattened settings of a default-constructed config of the same type ({} if the
    type has required arguments)."""
    try:
        default = type(config)()
    except Exception:  # noqa: BLE001  (any constructor that needs arguments)
        return {}
    return _flatten(json.loads(json.dumps(to_dict(default), default=str)))


def claim_run_dir(run_dir: str | Path, config: Any, *,
                  data: Optional[Mapping[str, str]] = None, ignore: Iterable[str] = (),
                  what: str = "run", claim_file: str = CLAIM_FILE,
                  write_to: str | Path | None = None) -> Path:
    """Claims `run_dir` for one config and one set of data; refuses a folder claimed by another.

    Training loops resume from the checkpoints they find, which is right for an interrupted run
    and silently wrong for a different one (it would continue a model fitted with other
    settings or data). The first call writes the claim; a later call with the same config and
    data passes (the run resumes), any other raises.

    Args:
      run_dir: the run folder.
      config: the run's config (a dataclass, or anything `config.to_dict` converts).
      data: fingerprints of what the run learns from, {name: hash} (e.g. the sha256 of each
        split part from `Split.manifest()`).
      ignore: dotted config keys that may change when resuming (verbosity, the distribution
        strategy).
      what: what the folder holds, for the error ("cascade", "ranking run").
      claim_file: the claim's file name in `run_dir`.
      write_to: folder the claim is written to, default `run_dir` (a worker that must not write
        the shared folder checks it and writes into its own).

    Returns:
      The path of the claim written.

    Raises:
      ConfigError: `run_dir` holds a run of another config (the first differences named).
      ValueError: it holds a run of the same config on other data.
    """
    run_dir = Path(run_dir)
    claim = {"config": json.loads(json.dumps(to_dict(config), default=str)),
             "data": dict(data or {})}
    held_path = run_dir / claim_file
    if held_path.exists():
        held = json.loads(held_path.read_text(encoding="utf-8"))
        skip = set(ignore)
        old, new = _flatten(held.get("config") or {}), _flatten(claim["config"])
        # A setting added to the config after the folder was claimed, left at its default,
        # is what the earlier code did: not a change of config (a re-run after an upgrade
        # resumes instead of being refused).
        defaults = _default_settings(config)
        changed = sorted(k for k in set(old) | set(new)
                         if k not in skip and old.get(k) != new.get(k)
                         and not (k not in old and k in defaults and new.get(k) == defaults[k]))
        if changed:
            diffs = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:5])
            raise ConfigError(f"{run_dir} holds a {what} with another config ({diffs}; "
                              f"{held_path}); choose another run folder or delete this one "
                              "to start over")
        held_data = held.get("data") or {}
        for name in sorted(set(held_data) | set(claim["data"])):
            if held_data.get(name) != claim["data"].get(name):
                raise ValueError(f"{run_dir} holds a {what} with another {name} data "
                                 f"({held_path}); the data changed since, so choose another "
                                 "run folder or delete this one to start over")
    path = Path(write_to or run_dir) / claim_file
    atomic_write_text(path, json.dumps(claim, indent=2, sort_keys=True) + "\n")
    return path


def record_run(run_dir: Path, config: Any, metrics: Dict[str, Any], summary_lines=()) -> None:
    save_config(config, run_dir)
    write_json(Path(run_dir) / "metrics.json", metrics)
    lines = [f"# Run {Path(run_dir).name}", "",
             "Command: `" + " ".join(["python"] + sys.argv) + "`", ""]
    lines += list(summary_lines)
    atomic_write_text(Path(run_dir) / "summary.md", "\n".join(lines) + "\n")


def read_run_config(run_dir: str | Path) -> Dict[str, Any]:
    """A run folder's config.yaml as a dict ({} if it has none)."""
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        return {}
    loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    return loaded if isinstance(loaded, dict) else {}


def find_setting(config: Mapping[str, Any], key: str) -> Any:
    """`key` at the top of a (possibly nested) run config, else in its nested sections."""
    if key in config:
        return config[key]
    for value in config.values():
        if isinstance(value, Mapping):
            found = find_setting(value, key)
            if found is not None:
                return found
    return None


class Progress:
    """Prints one timestamped line per step, so a long run shows where it is.

    Example:
        >>> log = Progress("build_index")
        >>> log("tuning ScaNN")   # [build_index     3.2s] tuning ScaNN
    """

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        print(f"[{self.prefix} {time.perf_counter() - self.start:7.1f}s] {message}", flush=True)

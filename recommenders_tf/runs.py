"""Run folders: every pipeline run writes its resolved config, vocabularies, metrics and a short
Markdown summary beside its artifacts, under `runs/<step>/<run name>/`."""
from __future__ import annotations

import datetime as _dt
import sys
from pathlib import Path
from typing import Any, Dict, Optional

from recommenders_tf.config import atomic_write_text, save_config, write_json


def make_run_dir(base: str | Path, name: Optional[str] = None) -> Path:
    """Creates (or reuses, for resuming) `base/name`; a missing name gets a timestamp."""
    name = name or _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(base) / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def record_run(run_dir: Path, config: Any, metrics: Dict[str, Any], summary_lines=()) -> None:
    save_config(config, run_dir)
    write_json(Path(run_dir) / "metrics.json", metrics)
    lines = [f"# Run {Path(run_dir).name}", "", "Command: `" + " ".join(["python"] + sys.argv) + "`", ""]
    lines += list(summary_lines)
    atomic_write_text(Path(run_dir) / "summary.md", "\n".join(lines) + "\n")

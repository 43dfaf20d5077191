"""Every notebook runs top to bottom on tiny data in a fresh process.

  * `test_notebook_runs` concatenates the code cells into a script (RECS_NOTEBOOK_SIZE=tiny);
    IPython-only lines (`!pip ...`, `%magic`) only run in Colab and are skipped.
  * `end_to_end.ipynb` is executed by nbclient in a real ipykernel kernel
    (RECS_NOTEBOOK_DATASET=synthetic-tiny); its test reads the outputs a user would see.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
END_TO_END = Path(__file__).resolve().parents[1] / "notebooks" / "end_to_end.ipynb"
# Notebooks with their own executed-outputs test below (not run twice).
SCRIPT_NOTEBOOKS = [p for p in NOTEBOOKS if p != END_TO_END]


def notebook_script(path: Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    lines = []
    for cell in cells:
        if cell["cell_type"] != "code":
            continue
        for line in "".join(cell["source"]).splitlines():
            stripped = line.lstrip()
            if stripped.startswith(("!", "%")):
                line = line[: len(line) - len(stripped)] + "pass  # notebook-only: " + stripped
            lines.append(line)
        lines.append("")
    return "\n".join(lines)


@pytest.mark.slow
@pytest.mark.parametrize("path", SCRIPT_NOTEBOOKS, ids=[p.stem for p in SCRIPT_NOTEBOOKS])
def test_notebook_runs(path, tmp_path):
    script = tmp_path / f"{path.stem}.py"
    script.write_text(notebook_script(path))
    env = dict(os.environ, RECS_NOTEBOOK_SIZE="tiny", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, str(script)], cwd=path.parents[1], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_there_is_a_notebook():
    assert NOTEBOOKS, "notebooks/ should hold at least the quickstart"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebooks_are_saved_without_outputs(path):
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in cells), \
        f"clear the outputs of {path.name} before committing it"


def _outputs(nb, cell_text: str):
    """Outputs of the code cells whose source contains `cell_text`."""
    cells = [c for c in nb["cells"]
             if c["cell_type"] == "code" and cell_text in "".join(c["source"])]
    assert cells, f"no code cell contains {cell_text!r}"
    return [o for c in cells for o in c["outputs"]]


@pytest.mark.slow
def test_end_to_end_notebook_runs_on_tiny_data(tmp_path, monkeypatch):
    """The whole cascade, its table and plots, and the export's answers, on synthetic-tiny:
    also the end-to-end test of `pipelines.run_all` and `pipelines.recommend` (the notebook
    runs both), so the suite pays for that run once.

    Executed by nbclient in a real IPython kernel (ipykernel), working directory and TMPDIR
    in a scratch folder so nothing is written into the repo.
    """
    import nbformat
    from nbclient import NotebookClient

    from recommenders_tf.cascade.evaluate import STAGE_LABELS

    monkeypatch.setenv("RECS_NOTEBOOK_DATASET", "synthetic-tiny")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    monkeypatch.setenv("TF_USE_LEGACY_KERAS", "1")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    nb = nbformat.read(str(END_TO_END), as_version=4)
    client = NotebookClient(nb, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell's traceback, on any error
    nbformat.write(nb, str(tmp_path / "end_to_end.executed.ipynb"))
    errors = [o for c in nb["cells"] for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert not errors, "\n".join(errors[0]["traceback"][-30:])

    # The per-stage table: one row per stage, rendered as HTML.
    tables = [o["data"]["text/html"] for o in _outputs(nb, "stage_table")
              if "text/html" in o.get("data", {})]
    assert tables, "the per-stage metrics table was not displayed"
    assert all(label in tables[-1] for label in STAGE_LABELS.values()), tables[-1][:2000]
    assert "ndcg@10" in tables[-1] and "recall@10" in tables[-1]

    # Every cell that plots shows its figure inline (run_all switches matplotlib to Agg).
    plotting = [c for c in nb["cells"] if c["cell_type"] == "code"
                and "plt.show()" in "".join(c["source"])]
    assert len(plotting) >= 3
    for cell in plotting:
        images = [o["data"]["image/png"] for o in cell["outputs"]
                  if "image/png" in o.get("data", {})]
        assert images, f"no figure shown by the cell starting {cell['source'][0]!r}"
        assert images[0].startswith("iVBORw0KGgo")  # base64 of the PNG signature

    printed = "".join(o.get("text", "") for c in nb["cells"] if c["cell_type"] == "code"
                      for o in c["outputs"] if o["output_type"] == "stream")
    assert "answered by the cascade" in printed and "answered by: fallback" in printed
    assert "| full cascade (re-ranker + rules) |" in printed  # run_all's summary table

    # The notebook is run_all's end-to-end test: its run folder holds every artifact.
    [work] = tmp_path.glob("recs_end_to_end_*")
    # run_all's own metrics.json is the shallowest one (each stage's run has its own below).
    metrics_path = min((work / "run").rglob("metrics.json"), key=lambda p: len(p.parts))
    run_dir = metrics_path.parent
    for name in ("summary.md", "config.yaml", "recall_at_k.png", "diversity_tradeoff.png",
                 "vocabularies/items.txt", "cascade/ranking/training_curves.png"):
        assert (run_dir / name).exists(), name
    metrics = json.loads(metrics_path.read_text())
    assert set(metrics["stages"]) >= {"retrieval", "ranking", "final"}
    assert {"cascade_bruteforce", "retrieval_bruteforce"} <= set(metrics["exports"])
    # Every stage's wall time and peak memory, in run order.
    measured = [row["stage"] for row in metrics["cost"]]
    assert measured == ["data", "split", "text vectors", "retrieval training", "ranker lists",
                        "context tables", "ranker training", "re-ranker training", "evaluation",
                        "diversity curves", "export"], measured
    assert all(row["seconds"] > 0 and row["peak_rss_mb"] > 100 for row in metrics["cost"])
    # The notebook caps the evaluation at 100 of synthetic-tiny's 119 test users: the metrics
    # and the stage lists cover that seeded sample, and the summary says so.
    assert metrics["evaluation_users"] == {"sampled": 100, "of": 119, "seed": 0}
    assert next(r for r in metrics["cost"] if r["stage"] == "evaluation")["users"] == 100
    assert "P1 metrics on a sample of 100 of 119 test users" in printed
    assert not list(END_TO_END.parent.glob("runs")), "the notebook wrote into the repository"


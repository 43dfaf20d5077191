"""Every notebook runs top to bottom on tiny data in a fresh process.

No Jupyter kernel is needed (nbclient and ipykernel are not in the locked environment):
  * `test_notebook_runs` concatenates the code cells into a script (RECS_NOTEBOOK_SIZE=tiny);
    IPython-only lines (`!pip ...`, `%magic`) only run in Colab and are skipped.
  * `end_to_end.ipynb` is executed cell by cell by `execute_notebook` (this file run as a
    script), which records what a kernel would show: printed text, each cell's last expression
    (`text/html` for DataFrames), matplotlib figures as PNGs through an inline backend, and the
    first error. Its test reads those outputs.
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
INLINE_BACKEND = "module://notebook_inline"


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


def _cell_source(cell) -> str:
    """The cell's code with IPython syntax made plain Python, as a kernel would run it here."""
    lines = []
    for line in "".join(cell["source"]).splitlines():
        stripped = line.lstrip()
        indent = line[: len(line) - len(stripped)]
        if stripped.startswith("%matplotlib inline"):
            # Figures left open under another backend are not shown by Jupyter either.
            line = f"{indent}import matplotlib.pyplot; matplotlib.pyplot.close('all'); " \
                   f"matplotlib.pyplot.switch_backend({INLINE_BACKEND!r})"
        elif stripped.startswith(("!", "%")):
            line = indent + "pass  # notebook-only: " + stripped
        lines.append(line)
    return "\n".join(lines)


def execute_notebook(path: Path, out_path: Path) -> bool:
    """Runs `path`'s code cells in one namespace and writes it with outputs to `out_path`.

    Stops at the first exception (recorded as an `error` output), as nbclient does. Figures
    show when `plt.show()` is called or the cell ends, but only while the inline backend is
    active, as in Jupyter: code that switches the backend to Agg hides them.
    """
    import ast
    import base64
    import builtins
    import contextlib
    import io
    import traceback
    import types

    import matplotlib
    from matplotlib import _pylab_helpers
    from matplotlib.backends import backend_agg

    outputs = []

    def show(*_, **__):
        for manager in _pylab_helpers.Gcf.get_all_fig_managers():
            buf = io.BytesIO()
            manager.canvas.figure.savefig(buf, format="png")
            outputs.append({"output_type": "display_data", "metadata": {}, "data": {
                "image/png": base64.b64encode(buf.getvalue()).decode(),
                "text/plain": repr(manager.canvas.figure)}})
        import matplotlib.pyplot as plt
        plt.close("all")

    def rich(value):
        data = {"text/plain": repr(value)}
        html = getattr(value, "_repr_html_", None)
        if callable(html) and html():
            data["text/html"] = html()
        return data

    def display(*values):
        for value in values:
            outputs.append({"output_type": "display_data", "metadata": {}, "data": rich(value)})

    inline = types.ModuleType("notebook_inline")
    inline.FigureCanvas = backend_agg.FigureCanvasAgg
    inline.FigureManager = backend_agg.FigureManager
    inline.show = show
    sys.modules["notebook_inline"] = inline
    matplotlib.use(INLINE_BACKEND)

    class Tee(io.TextIOBase):
        def __init__(self, name, real):
            self.name, self.real = name, real

        def write(self, text):
            self.real.write(text)
            if outputs and outputs[-1].get("name") == self.name:
                outputs[-1]["text"] += text
            else:
                outputs.append({"output_type": "stream", "name": self.name, "text": text})
            return len(text)

        def flush(self):
            self.real.flush()

    nb = json.loads(path.read_text())
    namespace = {"__name__": "__main__", "__builtins__": builtins, "display": display}
    ok, count = True, 0
    for cell in nb["cells"]:
        if cell["cell_type"] != "code" or not ok:
            continue
        count += 1
        outputs = cell["outputs"] = []
        cell["execution_count"] = count
        name = f"<cell {count}>"
        try:
            with contextlib.redirect_stdout(Tee("stdout", sys.__stdout__)), \
                    contextlib.redirect_stderr(Tee("stderr", sys.__stderr__)):
                tree = ast.parse(_cell_source(cell), name)
                last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) \
                    else None
                exec(compile(tree, name, "exec"), namespace)
                if last is not None:
                    value = eval(compile(ast.Expression(last.value), name, "eval"), namespace)
                    if value is not None:
                        outputs.append({"output_type": "execute_result", "metadata": {},
                                        "execution_count": count, "data": rich(value)})
                if matplotlib.get_backend() == INLINE_BACKEND:
                    show()
        except Exception as exc:  # recorded in the notebook, as a kernel would
            ok = False
            outputs.append({"output_type": "error", "ename": type(exc).__name__,
                            "evalue": str(exc), "traceback": traceback.format_exc().splitlines()})
            traceback.print_exc()
    out_path.write_text(json.dumps(nb, indent=1))
    return ok


def _outputs(nb, cell_text: str):
    """Outputs of the code cells whose source contains `cell_text`."""
    cells = [c for c in nb["cells"]
             if c["cell_type"] == "code" and cell_text in "".join(c["source"])]
    assert cells, f"no code cell contains {cell_text!r}"
    return [o for c in cells for o in c["outputs"]]


@pytest.mark.slow
def test_end_to_end_notebook_runs_on_tiny_data(tmp_path):
    """The whole cascade, its table and plots, and the export's answers, on synthetic-tiny.

    Runs in a scratch working directory (and TMPDIR) so nothing is written into the repo.
    """
    from recommenders_tf.cascade.evaluate import STAGE_LABELS

    executed = tmp_path / "end_to_end.executed.ipynb"
    env = dict(os.environ, RECS_NOTEBOOK_DATASET="synthetic-tiny", TF_CPP_MIN_LOG_LEVEL="2",
               TMPDIR=str(tmp_path))
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), str(END_TO_END),
                           str(executed)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert executed.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    nb = json.loads(executed.read_text())
    errors = [o for c in nb["cells"] for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert not errors, "\n".join(errors[0]["traceback"][-30:])
    assert proc.returncode == 0, proc.stderr[-3000:]

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
    assert not list(END_TO_END.parent.glob("runs")), "the notebook wrote into the repository"


if __name__ == "__main__":
    sys.exit(0 if execute_notebook(Path(sys.argv[1]), Path(sys.argv[2])) else 1)

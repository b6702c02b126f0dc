"""examples/quickstart.ipynb runs top to bottom, as a reader runs it, on a tiny budget; it is kept without outputs."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from .conftest import ROOT, SMOKE

NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"


def test_the_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_the_quickstart_notebook_runs_top_to_bottom(corpus, tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    (params,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    params.source = f"text_file = {str(corpus)!r}\nout = {str(tmp_path / 'run')!r}\nsettings = {{'config': {SMOKE!r}}}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    client = NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "examples")}}
    )
    client.km_kwargs = {"env": env}
    client.execute()
    printed = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []) if o.output_type == "stream")
    assert "ROMEO:" in printed and "bits/char" in printed
    assert Path(tmp_path / "run" / "best.pt").is_file()
    last = nb.cells[-1].outputs[-1]["data"]["text/plain"]
    assert "torch.Size([5, 3, 16])" in last and "gru_lm.Model" in last

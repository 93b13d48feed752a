"""Every notebook in notebooks/ runs top to bottom (nbclient), so none can rot."""

from __future__ import annotations

import glob
import os

import pytest

NOTEBOOKS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "notebooks", "*.ipynb")))
# paper_reproduction.ipynb reads a run of the paper preset: tests/test_paper.py runs it on one
NOTEBOOKS = [p for p in NOTEBOOKS if not p.endswith("paper_reproduction.ipynb")]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[os.path.basename(p) for p in NOTEBOOKS])
def test_notebook_runs(path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": os.path.dirname(path)}}
    ).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "mean pairwise Jaccard" in text and "faithfulness" in text


def test_there_is_a_quickstart():
    assert any(p.endswith("quickstart.ipynb") for p in NOTEBOOKS)

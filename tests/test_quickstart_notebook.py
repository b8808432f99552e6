"""docs/quickstart.ipynb runs from top to bottom in a fresh kernel (nbclient), and shows what
it says: predictions and search hits as tables with thumbnails, pandas tables, the plot."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import vitrina

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "quickstart.ipynb"

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")


# a kernel, torch and a short training run (~25 s of CPU): in `make test`, so CI runs it
def test_quickstart_notebook_runs_and_shows_its_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the kernel imports this checkout's vitrina, whatever is installed
    src = str(Path(vitrina.__file__).resolve().parents[1])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebook's work folder lands here
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any error

    code = [c for c in nb.cells if c.cell_type == "code"]
    outputs = {i: c.outputs for i, c in enumerate(code)}
    html = {
        i: "".join(o.get("data", {}).get("text/html", "") for o in outs)
        for i, outs in outputs.items()
    }
    # cell 2 (a PIL image) and 3 (an array): one prediction each, with the right fruit
    assert "prediction: tomato" in html[2] and "data:image/jpeg;base64," in html[2]
    assert "prediction: lime" in html[3]
    # the mixed list: three rows, the missing file's reason shown
    assert "3 predictions (1 unreadable)" in html[4] and "file not found" in html[4]
    assert html[4].count("data:image/jpeg;base64,") == 2
    # pandas renders its own table (to_pandas worked)
    assert "<table" in html[5] and "dataframe" in html[5] and "blueberry" in html[5]
    # search: the query and its four hits, all blueberries
    assert html[6].count("data:image/jpeg;base64,") == 5
    assert html[6].count("blueberry") >= 4 and "tomato" not in html[6]
    assert "similarity" in html[7] and "dataframe" in html[7]
    # the training curves, shown as an image
    assert any("image/png" in o.get("data", {}) for o in outputs[8])
    assert not any(o.get("output_type") == "error" for outs in outputs.values() for o in outs)

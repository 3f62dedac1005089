"""Every notebook runs top to bottom against the smoke study's results."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_notebooks_are_stored_without_outputs() -> None:
    assert {nb.stem for nb in NOTEBOOKS} == {"sampling_interval", "layer_norm", "adaptation", "smoothness"}
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        assert all(
            not cell.get("outputs") and not cell.get("execution_count") for cell in nb.cells if cell.cell_type == "code"
        )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path: Path, smoke_results: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    settings = nb.cells[1]
    assert settings.source.startswith("# Where the results are")
    settings.source = f'RESULTS = "{smoke_results}"\nSTUDY = "{ROOT / "ablations" / "smoke.yaml"}"\nBUDGET = "full"'
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    images = [o for cell in nb.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, "the notebook shows no figure"
    errors = [o for cell in nb.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors

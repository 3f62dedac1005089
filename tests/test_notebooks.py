"""Every notebook runs top to bottom: against the smoke study's results, and the chain notebook
against the committed reference results of the chain study."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
ON_SMOKE = [p for p in NOTEBOOKS if p.stem != "chain"]


def test_notebooks_are_stored_without_outputs() -> None:
    assert {nb.stem for nb in NOTEBOOKS} == {"sampling_interval", "layer_norm", "adaptation", "smoothness", "chain"}
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        assert all(
            not cell.get("outputs") and not cell.get("execution_count") for cell in nb.cells if cell.cell_type == "code"
        )


def _execute(path: Path, settings: str | None = None) -> None:
    """Run the notebook (with its settings cell replaced, if given); it must show a figure and raise nothing."""
    nb = nbformat.read(path, as_version=4)
    assert nb.cells[1].source.startswith("# Where the results are")
    if settings is not None:
        nb.cells[1].source = settings
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    images = [o for cell in nb.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, "the notebook shows no figure"
    errors = [o for cell in nb.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors


@pytest.mark.parametrize("path", ON_SMOKE, ids=[p.stem for p in ON_SMOKE])
def test_notebook_executes(path: Path, smoke_results: Path) -> None:
    _execute(path, f'RESULTS = "{smoke_results}"\nSTUDY = "{ROOT / "ablations" / "smoke.yaml"}"\nBUDGET = "full"')


def test_chain_notebook_executes_on_the_reference_results() -> None:
    _execute(ROOT / "notebooks" / "chain.ipynb")

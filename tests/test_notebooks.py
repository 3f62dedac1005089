"""Every notebook runs top to bottom as shipped, from the notebooks folder as a user runs it, on the
committed reference results. The layer-norm notebook also runs on the smoke study's results, whose
layer_norm factor crosses the sampling interval instead of the noise."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from study.__main__ import main
from study.config import load_study
from study.store import DONE, NoResultsError, load_results, run_status

ROOT = Path(__file__).resolve().parent.parent
FOLDER = ROOT / "notebooks"
NOTEBOOKS = sorted(FOLDER.glob("*.ipynb"))
REFERENCE = ROOT / "results" / "reference"
ON_SMOKE = [p for p in NOTEBOOKS if p.stem == "layer_norm"]


def _settings(path: Path) -> dict[str, object]:
    """The notebook's settings cell, evaluated; its paths are relative to the notebooks folder."""
    nb = nbformat.read(path, as_version=4)
    assert nb.cells[1].source.startswith("# Where the results are")
    values: dict[str, object] = {}
    exec(nb.cells[1].source, values)
    return values


def _execute(path: Path, settings: str | None = None) -> str:
    """Run the notebook in its folder (with `settings` appended to its settings cell, if given); it
    must show a figure and raise nothing. Returns its printed and displayed text."""
    nb = nbformat.read(path, as_version=4)
    if settings is not None:
        nb.cells[1].source += "\n" + settings
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(FOLDER)}}).execute()
    outputs = [o for cell in nb.cells for o in cell.get("outputs", [])]
    assert any("image/png" in o.get("data", {}) for o in outputs), "the notebook shows no figure"
    errors = [f"{o['ename']}: {o['evalue']}" for o in outputs if o.get("output_type") == "error"]
    assert not errors, errors
    return "\n".join(o.get("text", "") or o.get("data", {}).get("text/plain", "") for o in outputs)


def test_notebooks_are_stored_without_outputs() -> None:
    assert {nb.stem for nb in NOTEBOOKS} == {"sampling_interval", "layer_norm", "adaptation", "smoothness", "chain"}
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        assert all(
            not cell.get("outputs") and not cell.get("execution_count") for cell in nb.cells if cell.cell_type == "code"
        )


# reference studies committed in part: per factor, the levels whose runs are all committed
PARTIAL_REFERENCE = {
    "noise_types_mountaincar": {"noise": {"none", "unstructured", "OU", "param noise", "gSDE-8"}},
}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_reads_its_study_at_its_committed_budget(path: Path) -> None:
    """Each notebook reads its own study at the budget of its committed reference results, whose
    runs (of the committed levels) are all there."""
    settings = _settings(path)
    assert (FOLDER / str(settings["STUDY"])).resolve() == ROOT / "ablations" / f"{path.stem}.yaml"
    assert (FOLDER / str(settings["RESULTS"])).resolve() == REFERENCE
    study = load_study(FOLDER / str(settings["STUDY"]), budget=str(settings["BUDGET"]))
    committed = PARTIAL_REFERENCE.get(study.name, {})
    runs = [spec for spec in study.runs if all(spec.factors[key] in levels for key, levels in committed.items())]
    assert runs and all(run_status(REFERENCE, spec) == DONE for spec in runs), f"{study.name} is not complete"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes_as_shipped(path: Path) -> None:
    assert re.search(r"\b[1-9]\d* complete runs", _execute(path))


@pytest.mark.parametrize("path", ON_SMOKE, ids=[p.stem for p in ON_SMOKE])
def test_notebook_executes_on_the_smoke_study(path: Path, smoke_results: Path) -> None:
    text = _execute(
        path, f'RESULTS = "{smoke_results}"\nSTUDY = "{ROOT / "ablations" / "smoke.yaml"}"\nBUDGET = "full"'
    )
    assert "These are NOT results" not in text and "4 complete runs" in text


def test_results_of_another_budget_are_named_not_a_key_error(tmp_path: Path, capsys) -> None:
    """What a notebook or README snippet reading the wrong folder or budget gets: an error naming
    the folder and the budgets it holds (from meta.json, or spec.yaml); `study report` names the
    command that reports them, and exits 2."""
    path = ROOT / "ablations" / "sampling_interval.yaml"
    full = load_study(path)  # the reference results are of budgets halfcheetah, hopper, mountaincar and reduced
    with pytest.raises(
        NoResultsError,
        match="reference/sampling_interval; it holds 80 runs of budget 'halfcheetah', 80 runs of budget 'hopper', "
        "80 runs of budget 'mountaincar', 40 runs of budget 'reduced'",
    ) as err:
        load_results(full, REFERENCE)
    assert err.value.found == {"halfcheetah": 80, "hopper": 80, "mountaincar": 80, "reduced": 40}
    assert err.value.folder == REFERENCE / "sampling_interval"
    with pytest.raises(NoResultsError, match=re.escape(f"under {tmp_path / 'sampling_interval'}: no such folder")):
        load_results(full, tmp_path)
    run = next((REFERENCE / "sampling_interval").glob("Pendulum-v1_*"))
    copy = tmp_path / "sampling_interval" / run.name
    shutil.copytree(run, copy)
    meta = json.loads((copy / "meta.json").read_text())
    del meta["budget"]  # an older record: the budget comes from spec.yaml
    (copy / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(NoResultsError, match="it holds 1 run of budget 'reduced'"):
        load_results(full, tmp_path)

    assert main(["report", str(path), "--results", str(REFERENCE)]) == 2
    message = capsys.readouterr().err
    assert "no complete runs of study 'sampling_interval' (budget 'full')" in message
    assert f"python -m study report {path} --budget reduced --results {REFERENCE}" in message

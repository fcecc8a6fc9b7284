"""Executes every notebook in ``notebooks/`` top to bottom.

The notebooks are committed without outputs; this test runs each in
a fresh Python kernel with nbclient and fails on the first cell that raises.
It also checks that no output, execution count or widget state was committed.
"""

import os
from pathlib import Path
import time

import pytest

from tests._procs import REPO

NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
# Each notebook must run in under 3 minutes on 2 CPU cores; the per-cell limit
# only stops a hung kernel from hanging CI.
CELL_TIMEOUT_S = 600


def _ids(path: Path) -> str:
  return path.stem


def test_there_are_notebooks():
  assert len(NOTEBOOKS) >= 4, [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_committed_without_outputs(path):
  nbformat = pytest.importorskip("nbformat")
  nb = nbformat.read(path, as_version=4)
  nbformat.validate(nb)
  assert "widgets" not in nb.metadata, f"{path.name}: widget state committed"
  for index, cell in enumerate(nb.cells):
    if cell.cell_type != "code":
      continue
    assert cell.outputs == [], f"{path.name}: cell {index} has outputs"
    assert cell.execution_count is None, f"{path.name}: cell {index} was run"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_notebook_runs(path, monkeypatch, tmp_path):
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  # The kernel inherits the environment: CPU only, and a matplotlib cache
  # outside the repository.
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
  monkeypatch.setenv("ADAM_JAX_NOTEBOOK_QUICK", "1")
  monkeypatch.setenv(
    "PYTHONPATH",
    os.pathsep.join([str(NOTEBOOK_DIR.parent), os.environ.get("PYTHONPATH", "")]),
  )
  nb = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(
    nb,
    timeout=CELL_TIMEOUT_S,
    kernel_name="python3",
    resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
  )
  start = time.perf_counter()
  client.execute()
  seconds = time.perf_counter() - start
  print(f"{path.name}: executed in {seconds:.1f} s")
  figures = sum(
    1
    for cell in nb.cells
    if cell.cell_type == "code"
    for out in cell.outputs
    if "image/png" in out.get("data", {})
  )
  assert figures >= 1, f"{path.name} draws no figure"

"""The notebooks in ``notebooks/`` are committed without outputs: no output,
execution count or widget state. The documentation build executes each one
(``tests/suites/test_docs.py``, in their quick mode) and fails on the first
cell that raises."""

from pathlib import Path

import pytest

from tests._procs import REPO

NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))


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

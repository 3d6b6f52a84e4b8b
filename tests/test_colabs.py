"""Every notebook in colabs/ runs top to bottom (with few training steps), is
committed without outputs, and matches its source in make_notebooks.py."""

import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import FAST_COMPILE_FLAGS

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "colabs").glob("*.ipynb"))


def test_notebooks_exist_and_are_generated_from_source():
  import importlib.util
  spec = importlib.util.spec_from_file_location("make_notebooks", ROOT / "colabs/make_notebooks.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  assert [p.name for p in NOTEBOOKS] == sorted(module.NOTEBOOKS)
  for path in NOTEBOOKS:
    committed = nbformat.read(path, as_version=4)
    generated = module.build(module.NOTEBOOKS[path.name])
    assert [c.source for c in committed.cells] == [c.source for c in generated.cells], (
        f"{path.name} differs from colabs/make_notebooks.py: rerun it")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stripped_and_runs(path, tmp_path, data_dir, monkeypatch):
  nb = nbformat.read(path, as_version=4)
  for cell in nb.cells:
    if cell.cell_type == "code":
      assert cell.outputs == [] and cell.execution_count is None, f"{path.name} has outputs"
  # The kernel inherits this environment: few steps and routers, the session's TFDS dir,
  # the run's compile-time XLA flags and no fake-device flags (notebook 4 sets its own),
  # and a temporary folder that pytest removes.
  monkeypatch.setenv("MOEJAX_NOTEBOOK_STEPS", "6")
  monkeypatch.setenv("MOEJAX_NOTEBOOK_ROUTERS", "1")
  monkeypatch.setenv("TFDS_DATA_DIR", data_dir)
  monkeypatch.setenv("MPLBACKEND", "Agg")
  monkeypatch.setenv("XLA_FLAGS", FAST_COMPILE_FLAGS)
  monkeypatch.setenv("TMPDIR", str(tmp_path))   # the notebooks' tempfile.mkdtemp workdirs
  NotebookClient(nb, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": str(tmp_path)}}).execute()
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if o.output_type == "error"]
  assert not errors

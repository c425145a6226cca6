"""The teaching notebooks: every one runs in fast mode, and every committed one is clean.

* ``test_notebook_runs_in_fast_mode`` executes each ``notebooks/*.ipynb`` and
  ``notebooks/solutions/*.ipynb`` (found by glob, so notebooks added later are covered) with
  nbclient, ``MINISOLO_FAST=1``, 300 s per cell, kernel ``python3``. It runs a temporary copy
  (the committed file is never written) with the notebook's own folder as working directory,
  as a learner's Jupyter would, and prints the run time (``pytest -s`` or ``-rP`` shows it;
  a run over the 90 s fast-mode budget raises a warning).
* ``test_notebook_is_clean`` checks without running anything that a committed notebook is
  stripped (no execution counts, no ``execution`` metadata, no widget state), that a lesson has
  an ``## Exercises`` section, a solutions notebook and an ``assert_close`` check cell, and
  that a solutions notebook asserts its answers.
* ``test_notebook_matches_its_source`` reads each jupytext source in ``notebooks/src/`` and
  checks that the committed notebook has the same cells, in the same order, with the same text
  (so nobody edits a notebook by hand and loses the change at the next build).
"""

from __future__ import annotations

import importlib.util
import shutil
import time
import warnings
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
SOLUTION_DIR = NOTEBOOK_DIR / "solutions"
SOURCE_DIR = NOTEBOOK_DIR / "src"
LESSONS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
SOLUTIONS = sorted(SOLUTION_DIR.glob("*.ipynb"))
ALL_NOTEBOOKS = LESSONS + SOLUTIONS
FAST_BUDGET_S = 90.0
CELL_TIMEOUT_S = 300


def _name(path: Path) -> str:
    return str(path.relative_to(NOTEBOOK_DIR))


def _source(cell) -> str:
    source = cell.get("source", "")
    return source if isinstance(source, str) else "".join(source)


@pytest.mark.slow
@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=_name)
def test_notebook_runs_in_fast_mode(path: Path, tmp_path: Path, monkeypatch) -> None:
    nbclient = pytest.importorskip("nbclient")
    from jupyter_client.kernelspec import KernelSpecManager

    if "python3" not in KernelSpecManager().find_kernel_specs():
        pytest.skip("no 'python3' Jupyter kernel installed (pip install ipykernel)")
    monkeypatch.setenv("MINISOLO_FAST", "1")  # the kernel inherits the environment

    copy = tmp_path / path.name
    shutil.copyfile(path, copy)
    nb = nbformat.read(copy, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},  # run where the notebook lives
    )
    start = time.perf_counter()
    try:
        client.execute()
    finally:
        seconds = time.perf_counter() - start
        nbformat.write(nb, copy)  # the executed copy, to inspect a failure
        print(f"\n{_name(path)}: {seconds:.1f} s in fast mode (executed copy: {copy})")
    if seconds > FAST_BUDGET_S:
        warnings.warn(
            f"{_name(path)} took {seconds:.0f} s in fast mode (budget {FAST_BUDGET_S:.0f} s)",
            stacklevel=1,
        )


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=_name)
def test_notebook_is_clean(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    problems = []
    for index, cell in enumerate(nb.cells):
        if "execution" in cell.get("metadata", {}):
            problems.append(f"cell {index} has metadata.execution")
        if cell.cell_type != "code":
            continue
        if cell.get("execution_count") is not None:
            problems.append(f"cell {index} has execution_count {cell['execution_count']}")
        for output in cell.get("outputs", []):
            if output.get("execution_count") is not None:
                problems.append(f"an output of cell {index} has an execution_count")
    if "widgets" in nb.metadata:
        problems.append("notebook metadata holds widget state")
    assert not problems, (
        f"{_name(path)} is not stripped ({'; '.join(problems[:5])}); "
        "run `python tools/build_notebooks.py --strip-only`"
    )

    markdown = "\n".join(_source(c) for c in nb.cells if c.cell_type == "markdown")
    code = "\n".join(_source(c) for c in nb.cells if c.cell_type == "code")
    if path.parent == SOLUTION_DIR:
        assert "assert" in code, f"{_name(path)} does not assert its answers"
        return
    assert any(line.strip() == "## Exercises" for line in markdown.splitlines()), (
        f"{_name(path)} has no '## Exercises' section"
    )
    solution = SOLUTION_DIR / f"{path.stem}_solutions.ipynb"
    assert solution.is_file(), f"{_name(path)} has no solutions notebook {_name(solution)}"
    assert "assert_close" in code, (
        f"{_name(path)} has no check cell comparing its derivation with the package (assert_close)"
    )


SOURCES = sorted(SOURCE_DIR.glob("[0-9][0-9]_*.py"))


def _builder():
    spec = importlib.util.spec_from_file_location(
        "build_notebooks", ROOT / "tools" / "build_notebooks.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_notebook_matches_its_source(source: Path) -> None:
    pytest.importorskip("jupytext")
    builder = _builder()
    problems = builder.differences(source)
    assert not problems, (
        f"{_name(builder.target_of(source))} differs from {source.relative_to(ROOT)} "
        f"({'; '.join(problems[:4])}): edit the source and rebuild with "
        f"`python tools/build_notebooks.py {source.stem[:2]} --execute`"
    )


def test_every_notebook_has_a_source() -> None:
    stems = {p.stem for p in SOURCES}
    orphans = [_name(p) for p in ALL_NOTEBOOKS if p.stem not in stems]
    assert not orphans, f"notebooks without a source in notebooks/src/: {orphans}"


def test_source_check_notices_an_edit(tmp_path: Path, monkeypatch) -> None:
    """The comparison fails when a committed cell and its source disagree."""
    pytest.importorskip("jupytext")
    builder = _builder()
    source = SOURCES[0]
    edited = tmp_path / source.name
    edited.write_text(
        source.read_text().replace("# %% [markdown]", "# %% [markdown]\n# new text", 1)
    )
    built = tmp_path / "built.ipynb"
    nbformat.write(builder.read_source(source), built)
    monkeypatch.setattr(builder, "target_of", lambda _: built)
    assert builder.differences(source) == []
    assert builder.differences(edited) == ["cell 0 (markdown) differs"]

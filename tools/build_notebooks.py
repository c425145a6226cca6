#!/usr/bin/env python
"""Build the teaching notebooks from their jupytext sources, run them, check and strip them.

    python tools/build_notebooks.py --check              # do the notebooks match their sources?
    python tools/build_notebooks.py 06 --execute         # build and run in full mode (commit this)
    python tools/build_notebooks.py 06 --execute --fast  # the same in fast mode (a quick try)
    python tools/build_notebooks.py --sync               # carry source edits that leave the code
                                                         # unchanged (text, formatting) into the
                                                         # committed notebooks, keeping outputs
    python tools/build_notebooks.py --strip-only         # only strip notebooks already there

Sources are plain Python files in jupytext's ``py:percent`` format: ``# %%`` starts a code
cell, ``# %% [markdown]`` a markdown cell (its lines are comments). ``notebooks/src/NN_name.py``
builds ``notebooks/NN_name.ipynb``; ``notebooks/src/NN_name_solutions.py`` builds
``notebooks/solutions/NN_name_solutions.ipynb``. A notebook runs with its own folder as the
working directory, exactly as a learner's Jupyter would run it.

Stripping removes what changes from run to run: every ``execution_count``, cell
``metadata.execution`` and the notebook's widget state; the kernelspec and language_info are
reduced to a minimum; cell ids are ``name-NN``. Outputs (text and figures) stay: the committed
notebooks carry a full-mode run so a learner can read them on the web.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import time
from pathlib import Path

import jupytext
import nbformat

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
SOURCES = NOTEBOOKS / "src"
SOLUTIONS = NOTEBOOKS / "solutions"
KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}


def target_of(source: Path) -> Path:
    """The ``.ipynb`` a source builds: solutions go to ``notebooks/solutions/``."""
    folder = SOLUTIONS if source.stem.endswith("_solutions") else NOTEBOOKS
    return folder / f"{source.stem}.ipynb"


def read_source(source: Path) -> nbformat.NotebookNode:
    """The notebook a ``py:percent`` source describes: cells, deterministic ids, no outputs."""
    nb = jupytext.read(source, fmt="py:percent")
    for k, cell in enumerate(nb.cells):
        cell["id"] = f"{source.stem.replace('_', '-')}-{k:02d}"
        cell["metadata"] = {}
        if cell.cell_type == "code":
            cell["outputs"], cell["execution_count"] = [], None
    nb.metadata = {"kernelspec": dict(KERNELSPEC), "language_info": {"name": "python"}}
    return nb


def cells_of(nb: nbformat.NotebookNode) -> list[tuple[str, str]]:
    """What must agree between a source and its notebook: each cell's type and text."""
    return [(cell.cell_type, _text(cell)) for cell in nb.cells]


def _text(cell) -> str:
    source = cell.get("source", "")
    return source if isinstance(source, str) else "".join(source)


def code_meaning(text: str) -> str:
    """The code of a cell with formatting and comments removed (its AST), so that a cell
    reformatted by ``ruff format`` counts as unchanged. IPython magics (``%...``) and shell
    lines (``!...``) are compared as text."""
    lines = [
        ("pass  # " + line) if line.lstrip()[:1] in "%!" else line for line in text.split("\n")
    ]
    magics = [line.strip() for line in text.split("\n") if line.lstrip()[:1] in "%!"]
    try:
        tree = ast.dump(ast.parse("\n".join(lines)))
    except SyntaxError:
        return text
    return tree + "\n".join(magics)


def strip_notebook(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Remove volatile metadata in place (and return the notebook)."""
    for cell in nb.cells:
        cell.get("metadata", {}).pop("execution", None)
        if cell.cell_type == "code":
            cell["execution_count"] = None
            for output in cell.get("outputs", []):
                if "execution_count" in output:
                    output["execution_count"] = None
    nb.metadata.pop("widgets", None)
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def execute_notebook(
    nb: nbformat.NotebookNode,
    cwd: Path,
    fast: bool,
    timeout: int = 600,
    threads: int | None = None,
) -> float:
    """Run ``nb`` in place with nbclient (working directory ``cwd``); return the seconds taken.

    ``threads`` sets ``OMP_NUM_THREADS`` for the kernel (torch's intra-op threads).
    """
    from nbclient import NotebookClient

    saved = {name: os.environ.get(name) for name in ("MINISOLO_FAST", "OMP_NUM_THREADS")}
    os.environ["MINISOLO_FAST"] = "1" if fast else "0"  # the kernel inherits our environment
    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        client = NotebookClient(
            nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
        )
        start = time.perf_counter()
        client.execute()
        return time.perf_counter() - start
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def differences(source: Path) -> list[str]:
    """How the committed notebook differs from its source (empty when they agree)."""
    target = target_of(source)
    if not target.is_file():
        return [f"{target.relative_to(ROOT)} is missing"]
    expected = cells_of(read_source(source))
    actual = cells_of(nbformat.read(target, as_version=4))
    problems = []
    if len(expected) != len(actual):
        problems.append(f"{len(actual)} cells in the notebook, {len(expected)} in the source")
    for k, (want, have) in enumerate(zip(expected, actual)):  # noqa: B905 (counts checked above)
        if want != have:
            problems.append(f"cell {k} ({want[0]}) differs")
    return problems


def sync(source: Path) -> str:
    """Copy the source's text into the committed notebook where the code's meaning is
    unchanged (markdown edits, formatting, comments); outputs stay. Refuses otherwise."""
    target = target_of(source)
    fresh = read_source(source)
    committed = nbformat.read(target, as_version=4)
    if [c.cell_type for c in fresh.cells] != [c.cell_type for c in committed.cells]:
        raise SystemExit(f"{source.name}: cells added or removed; rebuild it with --execute")
    for k, (new, old) in enumerate(zip(fresh.cells, committed.cells, strict=True)):
        if new.cell_type == "code" and code_meaning(_text(new)) != code_meaning(_text(old)):
            raise SystemExit(f"{source.name}: the code of cell {k} changed; rebuild with --execute")
        old["source"] = new["source"]
        old["id"] = new["id"]
    nbformat.validate(committed)
    nbformat.write(strip_notebook(committed), target)
    return str(target.relative_to(ROOT))


def find_sources(names: list[str], solutions: bool = True) -> list[Path]:
    sources = sorted(SOURCES.glob("[0-9][0-9]_*.py"))
    if not solutions:
        sources = [p for p in sources if not p.stem.endswith("_solutions")]
    if not names:
        return sources
    chosen = [p for p in sources if any(p.stem.startswith(n) for n in names)]
    missing = [n for n in names if not any(p.stem.startswith(n) for p in sources)]
    if missing:
        raise SystemExit(f"no notebook source matches {missing}; have {[p.stem for p in sources]}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="notebook names or prefixes (default: all)")
    parser.add_argument("--execute", action="store_true", help="build and run with nbclient")
    parser.add_argument("--fast", action="store_true", help="run in fast mode (MINISOLO_FAST=1)")
    parser.add_argument("--no-solutions", action="store_true", help="skip solutions notebooks")
    parser.add_argument("--check", action="store_true", help="compare notebooks with sources")
    parser.add_argument("--sync", action="store_true", help="carry code-neutral source edits over")
    parser.add_argument("--strip-only", action="store_true", help="only strip existing notebooks")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the kernel")
    args = parser.parse_args(argv)
    sources = find_sources(args.names, solutions=not args.no_solutions)

    if args.strip_only:
        for path in sorted(NOTEBOOKS.glob("*.ipynb")) + sorted(SOLUTIONS.glob("*.ipynb")):
            nbformat.write(strip_notebook(nbformat.read(path, as_version=4)), path)
            print(f"stripped {path.relative_to(ROOT)}")
        return 0
    if args.check:
        failed = False
        for source in sources:
            problems = differences(source)
            failed |= bool(problems)
            print(f"{source.name}: {'; '.join(problems[:4]) if problems else 'matches'}")
        return 1 if failed else 0
    if args.sync:
        for source in sources:
            print(f"synced {sync(source)}")
        return 0

    timings = []
    for source in sources:
        target = target_of(source)
        nb = read_source(source)
        if args.execute:
            mode = "fast" if args.fast else "full"
            print(f"executing {target.relative_to(ROOT)} ({mode} mode) ...", flush=True)
            seconds = execute_notebook(nb, target.parent, args.fast, args.timeout, args.threads)
            timings.append((target.stem, mode, seconds))
            print(f"  {seconds:6.1f} s", flush=True)
        nbformat.validate(nb)
        target.parent.mkdir(exist_ok=True)
        nbformat.write(strip_notebook(nb), target)
        print(f"wrote {target.relative_to(ROOT)}")
    if timings:
        print("\nrun times:")
        for name, mode, seconds in timings:
            print(f"  {name:40s} {mode:4s} {seconds:7.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

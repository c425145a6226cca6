#!/usr/bin/env python
"""Build the teaching notebooks from their sources, optionally execute them, and strip them.

    python tools/build_notebooks.py                      # build every notebook (no outputs)
    python tools/build_notebooks.py --execute            # build + run in full mode (commit this)
    python tools/build_notebooks.py 01 03 --execute --fast   # some notebooks, fast mode
    python tools/build_notebooks.py --strip-only         # only strip notebooks already there

Sources: ``notebooks/src/NN_name.py``, each defining ``NAME``, ``CELLS`` and ``SOLUTION_CELLS``
(see ``notebooks/src/_nbgen.py``). Outputs: ``notebooks/NN_name.ipynb`` and
``notebooks/solutions/NN_name_solutions.ipynb``. A notebook runs with its own folder as the
working directory, exactly as a learner's Jupyter would run it.

Stripping removes what changes from run to run and makes diffs noisy: every code cell's
``execution_count`` and those of its outputs become null, cell ``metadata.execution`` and
notebook ``metadata.widgets`` are removed, and the kernelspec/language_info are reduced to a
minimum. Outputs (text and figures) stay: the committed notebooks carry a full-mode run so a
learner can read them on the web without running anything.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
SOURCES = NOTEBOOKS / "src"
SOLUTIONS = NOTEBOOKS / "solutions"
KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}


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

    ``threads`` sets ``OMP_NUM_THREADS`` for the kernel (torch's intra-op threads); on a
    machine shared with other jobs, 1 thread avoids oversubscription and is often faster.
    """
    from nbclient import NotebookClient

    saved = {name: os.environ.get(name) for name in ("MINISOLO_FAST", "OMP_NUM_THREADS")}
    os.environ["MINISOLO_FAST"] = "1" if fast else "0"  # the kernel inherits our environment
    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        client = NotebookClient(
            nb,
            timeout=timeout,
            kernel_name="python3",
            resources={"metadata": {"path": str(cwd)}},
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


def load_source(path: Path):
    """Import a generator script as a module."""
    if str(SOURCES) not in sys.path:
        sys.path.insert(0, str(SOURCES))
    spec = importlib.util.spec_from_file_location(f"nbsrc_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def find_sources(names: list[str]) -> list[Path]:
    sources = sorted(p for p in SOURCES.glob("[0-9][0-9]_*.py"))
    if not names:
        return sources
    chosen = [p for p in sources if any(p.stem == n or p.stem.startswith(n) for n in names)]
    missing = [n for n in names if not any(p.stem == n or p.stem.startswith(n) for p in sources)]
    if missing:
        raise SystemExit(f"no notebook source matches {missing}; have {[p.stem for p in sources]}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="notebook names or prefixes (default: all)")
    parser.add_argument("--execute", action="store_true", help="run the notebooks with nbclient")
    parser.add_argument("--fast", action="store_true", help="run in fast mode (MINISOLO_FAST=1)")
    parser.add_argument("--no-solutions", action="store_true", help="skip solutions notebooks")
    parser.add_argument("--strip-only", action="store_true", help="only strip existing notebooks")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the kernel")
    args = parser.parse_args(argv)

    if args.strip_only:
        for path in sorted(NOTEBOOKS.glob("*.ipynb")) + sorted(SOLUTIONS.glob("*.ipynb")):
            nb = nbformat.read(path, as_version=4)
            nbformat.write(strip_notebook(nb), path)
            print(f"stripped {path.relative_to(ROOT)}")
        return 0

    sys.path.insert(0, str(SOURCES))
    from _nbgen import make_notebook

    timings = []
    for source in find_sources(args.names):
        module = load_source(source)
        jobs = [(NOTEBOOKS / f"{module.NAME}.ipynb", module.CELLS, NOTEBOOKS)]
        if not args.no_solutions:
            SOLUTIONS.mkdir(exist_ok=True)
            jobs.append(
                (SOLUTIONS / f"{module.NAME}_solutions.ipynb", module.SOLUTION_CELLS, SOLUTIONS)
            )
        for out_path, cells, cwd in jobs:
            nb = make_notebook(cells, out_path.stem)
            if args.execute:
                mode = "fast" if args.fast else "full"
                print(f"executing {out_path.relative_to(ROOT)} ({mode} mode) ...", flush=True)
                seconds = execute_notebook(nb, cwd, args.fast, args.timeout, args.threads)
                timings.append((out_path.stem, mode, seconds))
                print(f"  {seconds:6.1f} s", flush=True)
            nbformat.validate(nb)
            nbformat.write(strip_notebook(nb), out_path)
            print(f"wrote {out_path.relative_to(ROOT)}")
    if timings:
        print("\nrun times:")
        for name, mode, seconds in timings:
            print(f"  {name:40s} {mode:4s} {seconds:7.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

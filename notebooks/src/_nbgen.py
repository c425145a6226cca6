"""Tiny helpers the notebook generator scripts share (not part of the package).

Each ``notebooks/src/NN_name.py`` defines ``NAME``, ``CELLS`` and ``SOLUTION_CELLS``: lists of
cells made with :func:`md` and :func:`code`. ``tools/build_notebooks.py`` turns them into
``notebooks/NN_name.ipynb`` and ``notebooks/solutions/NN_name_solutions.ipynb``. Keeping the
source as plain Python makes the notebooks reproducible and their changes reviewable.
"""

from __future__ import annotations

from textwrap import dedent

import nbformat

KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}


def md(text: str) -> nbformat.NotebookNode:
    """A markdown cell (the text is dedented and stripped)."""
    return nbformat.v4.new_markdown_cell(dedent(text).strip("\n").rstrip())


def code(text: str) -> nbformat.NotebookNode:
    """A code cell (the source is dedented and stripped)."""
    return nbformat.v4.new_code_cell(dedent(text).strip("\n").rstrip())


def setup_cell(extra_imports: str = "") -> nbformat.NotebookNode:
    """The first code cell of every notebook: imports, fast mode, device, seeds, plot style."""
    extra = dedent(extra_imports).strip()
    return code(
        '''
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

# Make `import minisolo` work from a fresh checkout too (without `pip install -e .`).
for _parent in [Path.cwd(), *Path.cwd().parents]:
    if (_parent / "minisolo" / "__init__.py").is_file():
        sys.path.insert(0, str(_parent))
        break

import minisolo
from minisolo.utils import is_fast_mode, pick_device, seed_everything
'''
        + (extra + "\n" if extra else "")
        + '''
FAST = is_fast_mode()  # MINISOLO_FAST=1 picks tiny sizes (the tests run every notebook so)
device = pick_device("auto")  # CUDA when a GPU is present, else the CPU
seed_everything(0)
plt.rcParams.update({"figure.dpi": 90, "font.size": 11, "axes.titlesize": 12})
print(f"minisolo {minisolo.__version__} | torch {torch.__version__} | device: {device} | FAST={FAST}")
'''
    )


def make_notebook(cells: list, name: str) -> nbformat.NotebookNode:
    """A notebook with deterministic cell ids (``name-NN``) and minimal metadata."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.from_dict(dict(c)) for c in cells]
    for k, cell in enumerate(nb.cells):
        cell["id"] = f"{name.replace('_', '-')}-{k:02d}"
    nb.metadata = {"kernelspec": dict(KERNELSPEC), "language_info": {"name": "python"}}
    return nb

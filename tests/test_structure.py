"""The structure the docs promise: no model module imports another model module, and the
query core of the explorer needs no widgets (tests/test_grid_cells.py checks the latter)."""

from __future__ import annotations

import ast
from pathlib import Path

import minisolo
from minisolo.models import MODEL_CLASSES

PACKAGE = Path(minisolo.__file__).parent
MODEL_MODULES = {cls.__module__.rsplit(".", 1)[-1] for cls in MODEL_CLASSES.values()}


def _imported_modules(path: Path) -> set[str]:
    """The sibling modules ``path`` imports (``from .x import``, ``from minisolo.x import``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 1:
                names.add(module.split(".")[0])
            elif module.startswith("minisolo."):
                names.add(module.split(".")[1])
    return names


def test_the_model_modules_are_known():
    assert {"solo", "solov2", "yolact"} <= MODEL_MODULES


def test_no_model_module_imports_another_model_module():
    for name in MODEL_MODULES:
        imported = _imported_modules(PACKAGE / f"{name}.py")
        siblings = (imported & MODEL_MODULES) - {name}
        assert not siblings, f"minisolo/{name}.py imports the model module(s) {sorted(siblings)}"


def test_the_import_check_sees_a_sibling_import(tmp_path):
    """The check above can fail: a file importing a model module is caught."""
    offender = tmp_path / "bad.py"
    offender.write_text("from .yolact import YOLACT\nfrom minisolo.solo import SOLO\n")
    assert {"yolact", "solo"} <= _imported_modules(offender)

"""The model kinds and :func:`build_model`: which class a config's ``model`` field names.

A plain dict, read top to bottom; adding a model is one import and one line here (and its
config class and presets in ``config.py``).
"""

from __future__ import annotations

from torch import nn

from .solo import SOLO, DecoupledSOLO
from .solov2 import SOLOv2
from .yolact import YOLACT

MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "solo": SOLO,
    "decoupled_solo": DecoupledSOLO,
    "solov2": SOLOv2,
    "yolact": YOLACT,
}


def build_model(config) -> nn.Module:
    """The model a config describes (``config.model``: solo, decoupled_solo, solov2 or yolact)."""
    if config.model not in MODEL_CLASSES:
        raise ValueError(
            f"unknown model kind {config.model!r}; choose from {sorted(MODEL_CLASSES)}"
        )
    return MODEL_CLASSES[config.model](config)


__all__ = ["MODEL_CLASSES", "build_model"]

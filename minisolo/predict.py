"""Predictions on image files, drawn to PNGs (``minisolo predict``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn

from .data.coco import DataError
from .data.transforms import pad_to_multiple
from .engine import make_transforms
from .viz import save_instances


def load_image(path: str | Path) -> Image.Image:
    """Open an image file as RGB; a missing or broken file raises a ``DataError`` naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise DataError(f"{path}: not a readable image ({error})") from error


@torch.no_grad()
def predict_image(model: nn.Module, image: Image.Image) -> dict[str, torch.Tensor]:
    """Run ``model`` on one PIL image; masks come back at the image's own size."""
    device = next(model.parameters()).device
    tensor, target = make_transforms(model.config, train=False)(image, {})
    size = target.get("size", tuple(tensor.shape[-2:]))
    batch = pad_to_multiple(tensor, 32)[None].to(device)
    return model.predict(batch, [size], [(image.height, image.width)])[0]


def predict_files(
    model: nn.Module,
    paths: Sequence[str | Path],
    out_dir: str | Path,
    score_threshold: float = 0.3,
) -> list[Path]:
    """One PNG per input image, with masks, class names and scores drawn on it."""
    out_dir = Path(out_dir)
    names = list(model.config.class_names) or None
    written = []
    for path in paths:
        image = load_image(path)
        result = predict_image(model, image)
        keep = result["scores"] >= score_threshold
        written.append(
            save_instances(
                out_dir / f"{Path(path).stem}_pred.png",
                np.asarray(image, dtype=np.float32) / 255.0,
                result["masks"][keep].cpu(),
                result["labels"][keep].cpu(),
                result["scores"][keep].cpu(),
                names,
            )
        )
    return written

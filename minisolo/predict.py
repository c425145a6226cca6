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


#: What :func:`prepare_image` accepts, for error messages.
ACCEPTED_IMAGES = (
    "an image path (str or Path), a PIL image, a uint8 numpy array [H, W, 3] (RGB) or [H, W] "
    "(grayscale), or a normalised float torch tensor [3, H, W] (a dataset image)"
)

#: ImageNet-normalised ``[0, 1]`` pixels lie in about ``[-2.12, 2.64]``: a float tensor with no
#: negative value and a value above ``PIXEL_LIMIT``, or any value beyond ``FAR_LIMIT``, is taken
#: to be unnormalised (e.g. ``[0, 255]`` pixels) and refused.
PIXEL_LIMIT = 2.7
FAR_LIMIT = 20.0


def _describe(image: object) -> str:
    """``type``, and ``dtype`` / ``shape`` where it has them, for error messages."""
    text = type(image).__name__
    if isinstance(image, np.ndarray | torch.Tensor):
        text += f" (dtype={image.dtype}, shape={tuple(image.shape)})"
    elif isinstance(image, Image.Image):
        text += f" (mode={image.mode}, size={image.size})"
    return text


def prepare_image(image, config) -> tuple[torch.Tensor, tuple[int, int]]:
    """The image a user holds -> ``(tensor, (h, w))``: the model's input and its original size.

    ``tensor`` is float32 ``[3, H, W]``, resized and normalised exactly as
    ``make_transforms(config, train=False)`` does for the dataset (not padded); ``(h, w)`` is
    the size of the image as given, the size to return masks at.

    Accepted:

    * a path (``str`` or ``Path``): opened with :func:`load_image` (a missing or unreadable
      file raises a ``DataError`` naming it);
    * a PIL image (any mode; converted to RGB);
    * a ``uint8`` numpy array ``[H, W, 3]`` (RGB) or ``[H, W]`` (grayscale, repeated to 3
      channels);
    * a float torch tensor ``[3, H, W]`` already normalised the dataset's way (what
      ``CocoInstances`` with ``make_transforms(config, False)`` returns): used as it is, not
      resized again, and ``(h, w)`` is its own size.

    Decision on float tensors: they are taken as normalised, since a normalised image and an
    unnormalised one cannot be told apart in general. But one that looks like raw pixels is
    refused with a ``ValueError`` rather than silently fed to the model: no negative value and
    a maximum above 2.7 (ImageNet-normalised ``[0, 1]`` pixels lie in about ``[-2.12, 2.64]``,
    and a real normalised image has negative values), e.g. a ``[0, 255]`` image; or any value
    beyond +-20. Pass such pixels as a ``uint8`` numpy array or a PIL image instead. A ``[0, 1]``
    tensor that was never normalised is not detected.

    Anything else raises a ``TypeError`` (wrong type) or ``ValueError`` (wrong dtype, shape or
    values) that names what was given and what is accepted.
    """
    if isinstance(image, str | Path):
        image = load_image(image)
    elif isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(
                f"image: got {_describe(image)}; numpy arrays must be uint8 (0-255). "
                f"Accepted: {ACCEPTED_IMAGES}"
            )
        if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
            raise ValueError(
                f"image: got {_describe(image)}; numpy arrays must be [H, W, 3] or [H, W]. "
                f"Accepted: {ACCEPTED_IMAGES}"
            )
        image = Image.fromarray(np.ascontiguousarray(image)).convert("RGB")
    elif isinstance(image, torch.Tensor):
        if not image.is_floating_point() or image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(
                f"image: got {_describe(image)}; tensors must be normalised float [3, H, W]. "
                f"Accepted: {ACCEPTED_IMAGES}"
            )
        tensor = image.detach().float().cpu()
        low, high = (float(tensor.min()), float(tensor.max())) if tensor.numel() else (0, 0)
        if (low >= 0 and high > PIXEL_LIMIT) or max(-low, high) > FAR_LIMIT:
            raise ValueError(
                f"image: got {_describe(image)} with values in "
                f"[{low:.3g}, {high:.3g}], which does not look "
                "normalised (expected about [-2.2, 2.7]); pass raw pixels as a uint8 numpy "
                "array or a PIL image and they are normalised here"
            )
        return tensor, (int(tensor.shape[-2]), int(tensor.shape[-1]))
    elif not isinstance(image, Image.Image):
        raise TypeError(f"image: got {_describe(image)}. Accepted: {ACCEPTED_IMAGES}")
    size = (image.height, image.width)
    tensor, _ = make_transforms(config, train=False)(image, {})
    return tensor, size


@torch.no_grad()
def predict_image(model: nn.Module, image, score_threshold: float = 0.0) -> dict[str, torch.Tensor]:
    """Run ``model`` (via ``model.predict``) on one image in any form :func:`prepare_image`
    accepts. Returns ``masks`` (bool ``[K, h, w]`` at the original image size), ``labels`` and
    ``scores``, highest score first, keeping the instances with ``score >= score_threshold``."""
    device = next(model.parameters()).device
    tensor, size = prepare_image(image, model.config)
    batch = pad_to_multiple(tensor, 32)[None].to(device)
    result = model.predict(batch, [tuple(tensor.shape[-2:])], [size])[0]
    keep = result["scores"] >= score_threshold
    return {key: value[keep] for key, value in result.items()}


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
        result = predict_image(model, image, score_threshold)
        written.append(
            save_instances(
                out_dir / f"{Path(path).stem}_pred.png",
                np.asarray(image, dtype=np.float32) / 255.0,
                result["masks"].cpu(),
                result["labels"].cpu(),
                result["scores"].cpu(),
                names,
            )
        )
    return written

"""Image + target transforms for instance segmentation, written with plain torch.

Every transform is a callable ``(image, target) -> (image, target)`` where ``target`` is the
dict produced by :class:`minisolo.data.CocoInstances` (``masks`` bool ``[N, H, W]``,
``boxes`` float ``[N, 4]`` as ``x1, y1, x2, y2``, ``size`` ``(h, w)``, ...). Transforms that
move pixels move the masks with them and recompute the boxes from the masks, so boxes are
always the tight boxes of the masks (``x2`` = last column + 1, ``y2`` = last row + 1).

A typical pipeline (what :func:`build_transforms` returns)::

    Compose([ToTensor(), Resize(800, 1333), RandomHorizontalFlip(0.5), Normalize()])

Random choices use torch's global RNG, so ``torch.manual_seed`` makes a run reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..targets import masks_to_boxes

Target = dict
ImageLike = Image.Image | torch.Tensor

#: ImageNet statistics, what torchvision's pretrained ResNets expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL image -> float32 ``[3, H, W]`` in ``[0, 1]`` (converted to RGB first)."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    array = np.asarray(image, dtype=np.uint8).copy()  # copy: PIL's buffer is read-only
    return torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0)


def _as_tensor(image: ImageLike) -> torch.Tensor:
    return pil_to_tensor(image) if isinstance(image, Image.Image) else image


def pad_to_size(tensor: torch.Tensor, size: tuple[int, int], value: float = 0) -> torch.Tensor:
    """Pad the last two dims of ``tensor`` on the right/bottom to ``size = (h, w)``."""
    h, w = tensor.shape[-2:]
    ph, pw = size[0] - h, size[1] - w
    if ph < 0 or pw < 0:
        raise ValueError(f"cannot pad {tuple(tensor.shape[-2:])} to smaller size {tuple(size)}")
    if ph == 0 and pw == 0:
        return tensor
    out = tensor.new_full((*tensor.shape[:-2], size[0], size[1]), value)
    out[..., :h, :w] = tensor
    return out


def pad_to_multiple(tensor: torch.Tensor, divisor: int = 32, value: float = 0) -> torch.Tensor:
    """Pad the last two dims on the right/bottom up to multiples of ``divisor``."""
    h, w = tensor.shape[-2:]
    size = (math.ceil(h / divisor) * divisor, math.ceil(w / divisor) * divisor)
    return pad_to_size(tensor, size, value)


def denormalize(
    image: torch.Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """Undo :class:`Normalize`: float ``[3, H, W]`` back to ``[0, 1]`` (clamped), for plots."""
    m = torch.as_tensor(mean, dtype=image.dtype, device=image.device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=image.dtype, device=image.device).view(-1, 1, 1)
    return (image * s + m).clamp(0.0, 1.0)


def resize_masks(masks: torch.Tensor, size: tuple[int, int], chunk: int = 16) -> torch.Tensor:
    """Resize bool masks ``[N, H, W]`` to ``size`` the way images are resized, then binarise.

    We use the same (antialiased) bilinear filter as for the image and keep a pixel where the
    interpolated value is >= 0.5, so mask edges line up with the image's edges; nearest
    neighbour would shift edges by up to half an input pixel. Masks are processed ``chunk`` at
    a time to bound memory (100 float masks at 800x1333 would need 400 MB).
    """
    n = masks.shape[0]
    if n == 0:
        return torch.zeros((0, *size), dtype=torch.bool)
    out = []
    for start in range(0, n, chunk):
        m = masks[start : start + chunk, None].float()
        m = F.interpolate(m, size=size, mode="bilinear", align_corners=False, antialias=True)
        out.append(m[:, 0] >= 0.5)
    return torch.cat(out)


# --------------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------------


class Compose:
    """Apply transforms one after another."""

    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, image: ImageLike, target: Target) -> tuple[ImageLike, Target]:
        for t in self.transforms:
            image, target = t(image, target)
        return image, target

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"


class ToTensor:
    """PIL image -> float32 ``[3, H, W]`` in ``[0, 1]``. The target passes through."""

    def __call__(self, image: ImageLike, target: Target) -> tuple[torch.Tensor, Target]:
        return _as_tensor(image), target

    def __repr__(self) -> str:
        return "ToTensor()"


class Resize:
    """Resize keeping the aspect ratio: short side to ``short_side``, long side <= ``max_size``.

    ``short_side`` may be a sequence (multi-scale training): one value is drawn per call with
    torch's RNG. The image uses antialiased bilinear interpolation; masks see the same filter
    and are thresholded at 0.5 (see :func:`resize_masks`); boxes are recomputed from the
    resized masks. ``target["size"]`` becomes the new ``(h, w)``.
    """

    def __init__(self, short_side: int | Sequence[int], max_size: int = 1333):
        self.short_sides = (short_side,) if isinstance(short_side, int) else tuple(short_side)
        if not self.short_sides:
            raise ValueError("short_side must be an int or a non-empty sequence of ints")
        self.max_size = max_size

    @staticmethod
    def output_size(h: int, w: int, short_side: int, max_size: int) -> tuple[int, int]:
        """The ``(h, w)`` an ``h x w`` image is resized to."""
        scale = short_side / min(h, w)
        if max(h, w) * scale > max_size:
            scale = max_size / max(h, w)
        return max(1, int(round(h * scale))), max(1, int(round(w * scale)))

    def __call__(self, image: ImageLike, target: Target) -> tuple[torch.Tensor, Target]:
        image = _as_tensor(image)
        k = int(torch.randint(len(self.short_sides), (1,))) if len(self.short_sides) > 1 else 0
        h, w = image.shape[-2:]
        new_h, new_w = self.output_size(h, w, self.short_sides[k], self.max_size)
        if (new_h, new_w) == (h, w):
            return image, target
        image = F.interpolate(
            image[None], size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True
        )[0]
        target = dict(target)
        if "masks" in target:
            target["masks"] = resize_masks(target["masks"], (new_h, new_w))
            target["boxes"] = masks_to_boxes(target["masks"])
        elif "boxes" in target:
            scale = torch.tensor([new_w / w, new_h / h, new_w / w, new_h / h])
            target["boxes"] = target["boxes"] * scale
        target["size"] = (new_h, new_w)
        return image, target

    def __repr__(self) -> str:
        s = self.short_sides[0] if len(self.short_sides) == 1 else self.short_sides
        return f"Resize({s}, max_size={self.max_size})"


class Squash:
    """Resize to a fixed ``size x size`` square, ignoring the aspect ratio (YOLACT's input).

    Masks are resized with the image (same rule as :class:`Resize`), boxes recomputed from them.
    """

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image: ImageLike, target: Target) -> tuple[torch.Tensor, Target]:
        image = _as_tensor(image)
        size = (self.size, self.size)
        if tuple(image.shape[-2:]) != size:
            image = F.interpolate(
                image[None], size=size, mode="bilinear", align_corners=False, antialias=True
            )[0]
            target = dict(target)
            if "masks" in target:
                target["masks"] = resize_masks(target["masks"], size)
                target["boxes"] = masks_to_boxes(target["masks"])
        target = dict(target, size=size)
        return image, target

    def __repr__(self) -> str:
        return f"Squash({self.size})"


class RandomHorizontalFlip:
    """Mirror image and masks left-right with probability ``p``.

    A box covering columns ``[x1, x2)`` covers ``[W - x2, W - x1)`` after the flip.
    """

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image: ImageLike, target: Target) -> tuple[torch.Tensor, Target]:
        image = _as_tensor(image)
        if float(torch.rand(1)) >= self.p:
            return image, target
        w = image.shape[-1]
        image = image.flip(-1)
        target = dict(target)
        if "masks" in target:
            target["masks"] = target["masks"].flip(-1)
        if "boxes" in target:
            b = target["boxes"]
            target["boxes"] = torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], dim=1)
        return image, target

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class Normalize:
    """``(image - mean) / std`` per channel (ImageNet statistics by default)."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.mean = tuple(mean)
        self.std = tuple(std)

    def __call__(self, image: ImageLike, target: Target) -> tuple[torch.Tensor, Target]:
        image = _as_tensor(image)
        m = torch.as_tensor(self.mean, dtype=image.dtype).view(-1, 1, 1)
        s = torch.as_tensor(self.std, dtype=image.dtype).view(-1, 1, 1)
        return (image - m) / s, target

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"


def build_transforms(
    train: bool,
    short_side: int = 800,
    max_size: int = 1333,
    multiscale: Sequence[int] | None = None,
    squash: int | None = None,
) -> Compose:
    """The standard pipeline: ToTensor, Resize, (flip when training), Normalize.

    ``multiscale``: when training, a sequence of short sides to pick from at random
    (e.g. ``(640, 672, 704, 736, 768, 800)``); ignored for evaluation. ``squash``: resize to
    a ``squash x squash`` square instead (YOLACT).
    """
    sides = tuple(multiscale) if (train and multiscale) else short_side
    resize = Squash(squash) if squash else Resize(sides, max_size)
    steps: list[Callable] = [ToTensor(), resize]
    if train:
        steps.append(RandomHorizontalFlip(0.5))
    steps.append(Normalize())
    return Compose(steps)

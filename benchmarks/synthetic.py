"""Synthetic inputs for the benchmarks: random instance masks and candidate masks.

Nothing here is learned; the point is realistic *shapes*: object sizes that span every FPN
level, near-duplicate candidate masks as a SOLO head produces them, and so on.
"""

from __future__ import annotations

import math

import torch


def random_instance_masks(
    num: int,
    height: int,
    width: int,
    *,
    min_size: float = 8.0,
    max_size: float = 700.0,
    num_classes: int = 80,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``num`` random ellipses and rectangles on a ``height x width`` canvas.

    Sizes (``sqrt(w * h)`` of the box) are log-uniform in ``[min_size, max_size]`` so objects
    fall on every SOLO level (paper ranges 1-96 ... 384-2048); aspect ratios are in
    ``[1/3, 3]``; shapes may be cut by the image border. Returns ``(Bool[N, H, W], Long[N])``.
    """
    g = generator
    ys = torch.arange(height, dtype=torch.float32)[:, None]
    xs = torch.arange(width, dtype=torch.float32)[None, :]
    masks = torch.zeros((num, height, width), dtype=torch.bool)
    for n in range(num):
        size = math.exp(
            math.log(min_size) + torch.rand(1, generator=g).item() * math.log(max_size / min_size)
        )
        aspect = math.exp((torch.rand(1, generator=g).item() * 2 - 1) * math.log(3.0))
        half_w = 0.5 * size * math.sqrt(aspect)
        half_h = 0.5 * size / math.sqrt(aspect)
        cx = torch.rand(1, generator=g).item() * width
        cy = torch.rand(1, generator=g).item() * height
        if torch.rand(1, generator=g).item() < 0.5:  # ellipse
            masks[n] = ((xs - cx) / half_w) ** 2 + ((ys - cy) / half_h) ** 2 <= 1.0
        else:  # rectangle
            masks[n] = ((xs - cx).abs() <= half_w) & ((ys - cy).abs() <= half_h)
    labels = torch.randint(0, num_classes, (num,), generator=g)
    return masks, labels


def clustered_candidates(
    num: int,
    height: int,
    width: int,
    *,
    num_objects: int = 40,
    num_classes: int = 8,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``num`` candidate masks as a SOLO head emits them before NMS.

    ``num_objects`` underlying objects (ellipses of size 10-40% of the short side); each
    candidate is a jittered copy of one of them (shifted and rescaled by a few percent), so
    candidates come in clusters of near-duplicates, with several classes (a cluster usually
    keeps its object's class, sometimes another). Returns ``(Bool[N, H, W] masks,
    Long[N] labels, scores[N] sorted descending)``.
    """
    g = generator
    short = min(height, width)
    ys = torch.arange(height, dtype=torch.float32)[:, None]
    xs = torch.arange(width, dtype=torch.float32)[None, :]
    centres = torch.rand(num_objects, 2, generator=g) * torch.tensor([width, height])
    sizes = (0.1 + 0.3 * torch.rand(num_objects, 2, generator=g)) * short
    object_labels = torch.randint(0, num_classes, (num_objects,), generator=g)
    owner = torch.randint(0, num_objects, (num,), generator=g)
    masks = torch.empty((num, height, width), dtype=torch.bool)
    labels = object_labels[owner].clone()
    relabel = torch.rand(num, generator=g) < 0.15
    labels[relabel] = torch.randint(0, num_classes, (int(relabel.sum()),), generator=g)
    jitter = 1 + 0.08 * torch.randn(num, 4, generator=g)
    for n in range(num):
        o = int(owner[n])
        cx = centres[o, 0] + 0.05 * sizes[o, 0] * (jitter[n, 0] - 1) / 0.08
        cy = centres[o, 1] + 0.05 * sizes[o, 1] * (jitter[n, 1] - 1) / 0.08
        half_w = 0.5 * sizes[o, 0] * jitter[n, 2]
        half_h = 0.5 * sizes[o, 1] * jitter[n, 3]
        masks[n] = ((xs - cx) / half_w) ** 2 + ((ys - cy) / half_h) ** 2 <= 1.0
    scores = torch.rand(num, generator=g).sort(descending=True).values
    return masks, labels, scores

"""The naive SOLO label assignment: Python loops over objects and grid cells.

This is the baseline the vectorised :func:`minisolo.solo_targets` is measured against (and
checked equal to in ``tests/test_benchmarks.py``). It follows the structure of the official
``solo_target_single`` (SOLO repository, ``mmdet/models/anchor_heads/solo_head.py``):

    for each level:
        for each object whose box size falls in the level's scale range:
            centre of mass with NumPy, centre region in grid cells, 3x3 clamp,
            resize this object's mask to the level's mask size,
            for i in top..down:
                for j in left..right:
                    category[i, j] = label; mask[i * S + j] = resized mask

The rules (DESIGN.md Sec. 3) are the same as in :mod:`minisolo.targets`; only the way they are
computed differs. The arithmetic is done in float64 with NumPy, as ``scipy.ndimage`` would.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from minisolo.targets import LevelTargets


def _center_of_mass(mask: np.ndarray) -> tuple[float, float]:
    """``(cx, cy)`` of a boolean mask, in pixel-index coordinates (float64, like SciPy)."""
    ys, xs = np.nonzero(mask)
    return float(xs.mean()), float(ys.mean())


def _tight_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """``x1, y1, x2, y2`` of a boolean mask, x2 and y2 exclusive; zeros when empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return 0.0, 0.0, 0.0, 0.0
    return float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)


def _resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """One mask to ``size``: bilinear on a float copy, then ``>= 0.5`` (as in targets.py)."""
    if tuple(mask.shape) == tuple(size):
        return mask.clone()
    resized = F.interpolate(
        mask[None, None].float(), size=size, mode="bilinear", align_corners=False
    )
    return resized[0, 0] >= 0.5


def loop_solo_targets(
    masks: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_classes: int,
    grids: Sequence[int],
    scale_ranges: Sequence[Sequence[float]],
    strides: Sequence[int],
    sigma: float = 0.2,
    boxes: torch.Tensor | None = None,
    min_mask_area: int = 10,
) -> list[LevelTargets]:
    """SOLO targets of one image with plain loops; same arguments and result as
    :func:`minisolo.solo_targets` (``LevelTargets`` per level, positives in ascending ``k``)."""
    masks_np = masks.bool().cpu().numpy()
    labels_np = labels.long().cpu().numpy()
    height, width = masks_np.shape[-2:]
    if boxes is None:
        boxes_np = np.array([_tight_box(m) for m in masks_np], dtype=np.float64).reshape(-1, 4)
    else:
        boxes_np = boxes.double().cpu().numpy()

    levels = []
    for grid, (lower, upper), stride in zip(grids, scale_ranges, strides, strict=True):
        mask_stride = stride / 2
        mask_size = (round(height / mask_stride), round(width / mask_stride))
        category = np.full((grid, grid), num_classes, dtype=np.int64)
        cell_mask: dict[int, torch.Tensor] = {}  # k -> mask target (a later object overwrites)
        cell_instance: dict[int, int] = {}

        for n in range(masks_np.shape[0]):
            x1, y1, x2, y2 = boxes_np[n]
            box_size = math.sqrt(max(x2 - x1, 0.0) * (y2 - y1))
            if not (lower <= box_size <= upper):
                continue
            area = int(masks_np[n].sum())
            if area < max(min_mask_area, 1):
                continue  # official: tiny masks assign nothing

            cx, cy = _center_of_mass(masks_np[n])
            half_w = 0.5 * (x2 - x1) * sigma
            half_h = 0.5 * (y2 - y1) * sigma
            i0 = math.floor(cy / height * grid)
            j0 = math.floor(cx / width * grid)
            top = max(0, math.floor((cy - half_h) / height * grid))
            down = min(grid - 1, math.floor((cy + half_h) / height * grid))
            left = max(0, math.floor((cx - half_w) / width * grid))
            right = min(grid - 1, math.floor((cx + half_w) / width * grid))
            top, down = max(top, i0 - 1), min(down, i0 + 1)
            left, right = max(left, j0 - 1), min(right, j0 + 1)

            resized = _resize_mask(masks[n].bool(), mask_size)
            for i in range(top, down + 1):
                for j in range(left, right + 1):
                    category[i, j] = labels_np[n]
                    cell_mask[i * grid + j] = resized
                    cell_instance[i * grid + j] = n

        positives = sorted(cell_mask)
        if positives:
            level_masks = torch.stack([cell_mask[k] for k in positives])
        else:
            level_masks = torch.zeros((0, *mask_size), dtype=torch.bool)
        levels.append(
            LevelTargets(
                category=torch.from_numpy(category),
                positive_index=torch.tensor(positives, dtype=torch.long),
                masks=level_masks,
                instance=torch.tensor([cell_instance[k] for k in positives], dtype=torch.long),
            )
        )
    return levels

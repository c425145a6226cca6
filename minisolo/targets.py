"""SOLO grid label assignment: which grid cell must predict which object (paper Sec. 3.1-3.2).

SOLO divides the image into an S x S grid per FPN level. An object belongs to a level when the
square root of its box area lies in that level's (overlapping) scale range. Within a level, the
cells near the object's centre of mass are "positive": they must predict the object's class in
the category branch, and the object's mask in mask channel ``k = i * S + j``.

The rules, exactly as the official ``solo_target_single`` implements them:

1. centre of mass ``(cx, cy)`` of the mask at the padded input resolution ``(H, W)``;
2. the centre region: half extents ``0.5 * box_w * sigma`` and ``0.5 * box_h * sigma``
   (``sigma = 0.2``, the paper's epsilon), centred on the centre of mass;
3. cell of the centre ``i0 = floor(cy / H * S)``, ``j0 = floor(cx / W * S)``; region rows
   ``top = max(0, floor((cy - half_h) / H * S))`` and
   ``down = min(S - 1, floor((cy + half_h) / H * S))``, columns likewise;
4. the region is clamped to the 3x3 neighbourhood of ``(i0, j0)``;
5. every cell of the region gets the object's class; a later object overwrites an earlier one;
   each positive cell's mask target is the object's mask resized to the level's mask size.

Everything below is vectorised per level with tensor operations on the masks' device.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LevelTargets:
    """Targets of one FPN level for one image (or, from :func:`solo_targets_batch`, a batch).

    Attributes:
        category: ``Long[S, S]`` class id per cell, ``num_classes`` for background
            (``Long[B, S, S]`` for a batch).
        positive_index: ``Long[P]`` flat index ``k = i * S + j`` of each positive cell,
            ascending (for a batch: ``b * S * S + k``).
        masks: ``Bool[P, h, w]`` the mask target of each positive cell at the level's mask
            resolution (input size / (stride / 2), or / ``mask_stride`` when given).
        instance: ``Long[P]`` which ground-truth object each positive cell came from.
    """

    category: torch.Tensor
    positive_index: torch.Tensor
    masks: torch.Tensor
    instance: torch.Tensor

    @property
    def num_positives(self) -> int:
        return int(self.positive_index.numel())


def pixel_counts(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Number of set pixels in every row ``Int[N, H]`` and every column ``Int[N, W]`` of
    boolean masks ``[N, H, W]``.

    Everything the assignment needs from the full-resolution masks follows from these two
    profiles: the area, the tight box and the (exact) centre of mass. They are the only pass
    over the full-resolution masks, so they are computed the fast way (see
    :func:`_count_along`).
    """
    pixels = masks.bool().contiguous().view(torch.uint8)
    return _count_along(pixels, 2), _count_along(pixels, 1)


def _largest_divisor(n: int, limit: int) -> int:
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def _count_along(pixels: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum a contiguous uint8 0/1 tensor ``[N, H, W]`` along ``dim`` (1 or 2), as int32.

    The plain ``pixels.sum(dim, dtype=torch.int32)`` converts every pixel on the way and is
    tens of times slower on a CPU than this "SIMD within a register" trick: view each run of 8
    pixel bytes as one int64 *word*. Adding words adds their 8 bytes independently, as long as
    no byte sum exceeds 255 (a carry would spill into the next byte); we add at most 127 words
    at a time, so no byte passes 127 and the int64 never turns negative. Reading the summed
    words back as bytes gives 8 partial counts per word, which are then added in int32. On a
    little-endian machine byte ``k`` of word ``j`` is pixel ``8 * j + k``.
    """
    n, h, w = pixels.shape
    if w % 8 or sys.byteorder != "little":
        return pixels.sum(dim, dtype=torch.int32)
    words = pixels.view(torch.int64)  # [N, H, W / 8]
    if dim == 2:  # per row: add the W / 8 words of each row
        chunk = _largest_divisor(w // 8, 127)
        lanes = words.view(n, h, w // 8 // chunk, chunk).sum(3)  # [N, H, W / 8 / chunk]
        return lanes.view(torch.uint8).view(n, h, w // chunk).sum(2, dtype=torch.int32)
    chunk = _largest_divisor(h, 127)  # per column: add the rows, chunk rows at a time
    lanes = words.view(n, h // chunk, chunk, w // 8).sum(2)  # [N, H / chunk, W / 8]
    return lanes.view(torch.uint8).view(n, h // chunk, w).sum(1, dtype=torch.int32)


def _boxes_from_counts(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Tight ``x1, y1, x2, y2`` boxes (float32, x2/y2 exclusive) from row and column counts."""
    rows, cols = rows > 0, cols > 0
    ys = torch.arange(rows.shape[1], device=rows.device)
    xs = torch.arange(cols.shape[1], device=cols.device)
    big = max(rows.shape[1], cols.shape[1]) + 1
    y1 = torch.where(rows, ys, big).amin(dim=1)
    y2 = torch.where(rows, ys, -1).amax(dim=1) + 1
    x1 = torch.where(cols, xs, big).amin(dim=1)
    x2 = torch.where(cols, xs, -1).amax(dim=1) + 1
    boxes = torch.stack([x1, y1, x2, y2], dim=1).float()
    return torch.where(rows.any(dim=1, keepdim=True), boxes, torch.zeros_like(boxes))


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight ``x1, y1, x2, y2`` boxes of boolean masks ``[N, H, W]`` (x2, y2 exclusive).

    An empty mask gets the box ``0, 0, 0, 0``.
    """
    if masks.shape[0] == 0:
        return masks.new_zeros((0, 4), dtype=torch.float32)
    return _boxes_from_counts(*pixel_counts(masks))


def _centres_from_counts(
    rows: torch.Tensor, cols: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact centres of mass ``(cx, cy)`` in float64 from row and column counts.

    The moments ``sum(y * count_y)`` are summed in int64, so nothing is rounded before the one
    division: the result equals NumPy's / SciPy's float64 ``center_of_mass``.
    """
    rows, cols = rows.long(), cols.long()
    area = rows.sum(dim=1).clamp(min=1).double()
    ys = torch.arange(rows.shape[1], device=rows.device)
    xs = torch.arange(cols.shape[1], device=cols.device)
    cy = (rows * ys).sum(dim=1).double() / area
    cx = (cols * xs).sum(dim=1).double() / area
    return cx, cy


def center_of_mass(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre of mass ``(cx, cy)`` of each mask in pixel-index coordinates (like SciPy's),
    as float32 (:func:`solo_targets` keeps the exact float64 values)."""
    cx, cy = _centres_from_counts(*pixel_counts(masks))
    return cx.float(), cy.float()


def resize_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize boolean masks ``[N, H, W]`` to ``size`` (bilinear, then >= 0.5), as the official
    code does with ``mmcv.imrescale`` on uint8 masks (OpenCV rounds half up).

    Shortcut with the identical result: when shrinking by an even integer factor ``f`` per
    axis, bilinear interpolation (``align_corners=False``) samples output pixel ``i`` at input
    coordinate ``f * i + f / 2 - 0.5``, exactly halfway between pixels ``f*i + f/2 - 1`` and
    ``f*i + f/2``. Each output value is then the mean of those 2 x 2 input pixels, and ``>= 0.5``
    means "at least two of the four are set": integer work on strided views, no float copy.
    """
    if masks.shape[0] == 0:
        return masks.new_zeros((0, *size), dtype=torch.bool)
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks.bool()
    factors = _even_factors(tuple(masks.shape[-2:]), size)
    if masks.dtype == torch.bool and factors is not None:
        fy, fx = factors
        pixels = masks.view(torch.uint8)
        ay, ax = fy // 2 - 1, fx // 2 - 1
        row_pairs = pixels[:, ay::fy] + pixels[:, ay + 1 :: fy]  # [N, out_h, W], each 0..2
        votes = row_pairs[:, :, ax::fx] + row_pairs[:, :, ax + 1 :: fx]  # 0..4
        return votes >= 2
    resized = F.interpolate(masks[:, None].float(), size=size, mode="bilinear", align_corners=False)
    return resized[:, 0] >= 0.5


def _even_factors(shape: tuple[int, int], size: tuple[int, int]) -> tuple[int, int] | None:
    """``(fy, fx)`` when ``shape`` shrinks to ``size`` by even integer factors, else None."""
    (height, width), (out_h, out_w) = shape, size
    fy, fx = height // out_h, width // out_w
    if fy * out_h == height and fx * out_w == width and fy % 2 == 0 and fx % 2 == 0:
        return fy, fx
    return None


def _resize_selected(
    masks: torch.Tensor, index: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """``resize_masks(masks[index], size)``, in the cheaper order: the integer shortcut is
    cheap enough to run on every mask (selecting first would copy full-resolution masks);
    the float interpolation is not, so it gets only the selected ones."""
    if index.numel() == 0:
        return masks.new_zeros((0, *size), dtype=torch.bool)
    if masks.dtype == torch.bool and _even_factors(tuple(masks.shape[-2:]), size):
        return resize_masks(masks, size)[index]
    return resize_masks(masks[index], size)


def center_regions(
    cx: torch.Tensor,
    cy: torch.Tensor,
    boxes: torch.Tensor,
    image_size: tuple[int, int],
    grid: int,
    sigma: float = 0.2,
) -> torch.Tensor:
    """Rows and columns ``[G, 4]`` (top, down, left, right; inclusive) of each object's
    positive cells on an S x S grid: the sigma centre region clamped to the 3x3 neighbourhood."""
    h, w = image_size
    half_w = 0.5 * (boxes[:, 2] - boxes[:, 0]) * sigma
    half_h = 0.5 * (boxes[:, 3] - boxes[:, 1]) * sigma
    i0 = torch.floor(cy / h * grid).long()
    j0 = torch.floor(cx / w * grid).long()
    top = torch.floor((cy - half_h) / h * grid).long().clamp(min=0)
    down = torch.floor((cy + half_h) / h * grid).long().clamp(max=grid - 1)
    left = torch.floor((cx - half_w) / w * grid).long().clamp(min=0)
    right = torch.floor((cx + half_w) / w * grid).long().clamp(max=grid - 1)
    # clamp to the 3x3 neighbourhood of the centre cell
    top = torch.maximum(top, i0 - 1)
    down = torch.minimum(down, i0 + 1)
    left = torch.maximum(left, j0 - 1)
    right = torch.minimum(right, j0 + 1)
    return torch.stack([top, down, left, right], dim=1)


def _check_inputs(
    masks: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    grids: Sequence[int],
    scale_ranges: Sequence[Sequence[float]],
    strides: Sequence[int],
    boxes: torch.Tensor | None,
) -> None:
    if not isinstance(masks, torch.Tensor) or masks.dim() != 3:
        shape = tuple(masks.shape) if isinstance(masks, torch.Tensor) else type(masks).__name__
        raise ValueError(f"masks must be a bool tensor [N, H, W], got {shape}")
    if masks.dtype not in (torch.bool, torch.uint8):
        raise ValueError(f"masks must be bool (or uint8 0/1), got dtype {masks.dtype}")
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1:
        raise ValueError("labels must be a 1-D integer tensor [N]")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    if labels.numel() != masks.shape[0]:
        raise ValueError(f"got {masks.shape[0]} masks but {labels.numel()} labels")
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got min {int(labels.min())}, "
            f"max {int(labels.max())}"
        )
    if not (len(grids) == len(scale_ranges) == len(strides)):
        raise ValueError(
            f"grids, scale_ranges and strides need one entry per level, got {len(grids)}, "
            f"{len(scale_ranges)}, {len(strides)}"
        )
    if boxes is not None and (boxes.dim() != 2 or boxes.shape != (masks.shape[0], 4)):
        raise ValueError(f"boxes must be [N, 4], got {tuple(boxes.shape)}")


def solo_targets(
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
    mask_stride: int | None = None,
) -> list[LevelTargets]:
    """SOLO targets of one image, one :class:`LevelTargets` per FPN level.

    Args:
        masks: ``Bool[N, H, W]`` instance masks at the padded input size.
        labels: ``Long[N]`` class ids in ``[0, num_classes)``.
        num_classes: C; the background id is C.
        grids: S per level, e.g. ``(40, 36, 24, 16, 12)``.
        scale_ranges: ``(lower, upper)`` per level on ``sqrt(box_w * box_h)``, inclusive.
        strides: head-input stride per level; masks are predicted at ``stride / 2``.
        sigma: the centre-region scale (paper: epsilon = 0.2).
        boxes: ``[N, 4]`` x1, y1, x2, y2 in pixels; default the masks' tight boxes.
        min_mask_area: masks with fewer pixels assign nothing (official SOLO: 10).
        mask_stride: the stride of every level's mask targets; default ``stride / 2`` per
            level (SOLO). SOLOv2 predicts every level's masks from one stride-4 feature map,
            so it asks for ``mask_stride=4``.
    """
    _check_inputs(masks, labels, num_classes, grids, scale_ranges, strides, boxes)
    masks = masks.bool()
    labels = labels.long()
    device = masks.device
    height, width = masks.shape[-2:]
    # one pass over the full-resolution masks: row and column pixel counts
    rows, cols = pixel_counts(masks)
    if boxes is None:
        boxes = _boxes_from_counts(rows, cols)
    boxes = boxes.to(device=device, dtype=torch.float64)
    box_size = torch.sqrt((boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]))
    area = rows.sum(dim=1)
    usable = (area >= max(min_mask_area, 1)) & (area > 0)
    cx, cy = _centres_from_counts(rows, cols)

    levels = []
    for grid, (lower, upper) in zip(grids, scale_ranges, strict=True):
        category = torch.full((grid, grid), num_classes, dtype=torch.long, device=device)
        in_level = usable & (box_size >= lower) & (box_size <= upper)
        hit = in_level.nonzero().squeeze(1)  # ascending: later objects come later
        if hit.numel() == 0:
            empty = torch.zeros(0, dtype=torch.long, device=device)
            levels.append((category, empty, empty))
            continue

        region = center_regions(cx[hit], cy[hit], boxes[hit], (height, width), grid, sigma)
        cells = torch.arange(grid, device=device)
        rows_in = (cells >= region[:, 0:1]) & (cells <= region[:, 1:2])  # [G, S]
        cols_in = (cells >= region[:, 2:3]) & (cells <= region[:, 3:4])  # [G, S]
        covers = rows_in[:, :, None] & cols_in[:, None, :]  # [G, S, S]
        # "a later GT overwrites an earlier one": each cell belongs to the last object covering it
        order = torch.arange(1, hit.numel() + 1, device=device)
        owner = (covers.long() * order[:, None, None]).amax(dim=0) - 1  # [S, S], -1 = none
        positive = owner >= 0
        category[positive] = labels[hit][owner[positive]]

        flat_owner = owner.flatten()
        positive_index = positive.flatten().nonzero().squeeze(1)  # k = i * S + j, ascending
        instance = hit[flat_owner[positive_index]]
        levels.append((category, positive_index, instance))

    # Mask targets of the objects that own a positive cell, resized once per mask size
    # (levels with the same stride share it).
    mask_strides = [s / 2 if mask_stride is None else mask_stride for s in strides]
    mask_sizes = [(round(height / s), round(width / s)) for s in mask_strides]
    level_masks: list[torch.Tensor] = [torch.empty(0)] * len(levels)
    slot = torch.full((masks.shape[0],), -1, dtype=torch.long, device=device)
    for size in dict.fromkeys(mask_sizes):  # distinct sizes, in level order
        members = [k for k, level_size in enumerate(mask_sizes) if level_size == size]
        used = torch.cat([levels[k][2] for k in members]).unique()
        resized = _resize_selected(masks, used, size)
        slot[used] = torch.arange(used.numel(), device=device)
        for k in members:
            level_masks[k] = resized[slot[levels[k][2]]]
    return [
        LevelTargets(category, positive_index, level_masks[k], instance)
        for k, (category, positive_index, instance) in enumerate(levels)
    ]


def solo_targets_batch(
    masks: Sequence[torch.Tensor],
    labels: Sequence[torch.Tensor],
    **kwargs,
) -> list[LevelTargets]:
    """Targets for a batch: per level, ``category`` is ``[B, S, S]`` and ``positive_index``
    indexes the flattened ``[B * S * S]`` cells (``b * S * S + k``); ``instance`` is the object's
    index within its own image. Keyword arguments are those of :func:`solo_targets`."""
    per_image = [solo_targets(m, l, **kwargs) for m, l in zip(masks, labels, strict=True)]
    batched = []
    for level in range(len(kwargs["grids"])):
        parts = [image_levels[level] for image_levels in per_image]
        cells = kwargs["grids"][level] ** 2
        batched.append(
            LevelTargets(
                category=torch.stack([p.category for p in parts]),
                positive_index=torch.cat(
                    [p.positive_index + b * cells for b, p in enumerate(parts)]
                ),
                masks=torch.cat([p.masks for p in parts]),
                instance=torch.cat([p.instance for p in parts]),
            )
        )
    return batched

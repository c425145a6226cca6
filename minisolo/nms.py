"""Non-maximum suppression, from SOLO's 2x2 "points NMS" to Matrix NMS and YOLACT's Fast NMS.

Neighbouring grid cells around an object's centre are all trained to predict it (about three
per object), so at test time several cells fire for one object: duplicates. SOLO removes them
in two steps: ``points_nms`` keeps only local maxima of the category heat map, then Matrix NMS
(SOLOv2 paper, Sec. 4) decays the scores of masks that overlap a higher-scoring mask of the
same class, all in parallel. The classic sequential mask NMS and YOLACT's Fast NMS are here for
comparison.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def points_nms(heat: torch.Tensor, kernel: int = 2) -> torch.Tensor:
    """Keep a cell's score only where it is the maximum of its 2x2 window, else zero.

    ``heat`` is ``[N, C, S, S]`` (probabilities). This is the official
    ``max_pool2d(heat, 2, stride=1, padding=1)[..., :-1, :-1] == heat`` test: the window of
    cell (i, j) covers cells (i-1..i, j-1..j).
    """
    if heat.dim() != 4:
        raise ValueError(f"points_nms expects [N, C, S, S], got {tuple(heat.shape)}")
    pooled = F.max_pool2d(heat, (kernel, kernel), stride=1, padding=1)
    keep = (pooled[:, :, :-1, :-1] == heat).to(heat.dtype)
    return heat * keep


def mask_iou(masks_a: torch.Tensor, masks_b: torch.Tensor | None = None) -> torch.Tensor:
    """IoU matrix ``[N, M]`` between binary masks ``[N, H, W]`` and ``[M, H, W]``."""
    if masks_b is None:
        masks_b = masks_a
    a = masks_a.reshape(masks_a.shape[0], -1).float()
    b = masks_b.reshape(masks_b.shape[0], -1).float()
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return inter / union.clamp(min=1e-6)


def box_iou(boxes_a: torch.Tensor, boxes_b: torch.Tensor | None = None) -> torch.Tensor:
    """IoU matrix ``[N, M]`` between boxes given as ``x1, y1, x2, y2``."""
    if boxes_b is None:
        boxes_b = boxes_a
    area_a = (boxes_a[:, 2] - boxes_a[:, 0]).clamp(min=0) * (boxes_a[:, 3] - boxes_a[:, 1]).clamp(
        min=0
    )
    area_b = (boxes_b[:, 2] - boxes_b[:, 0]).clamp(min=0) * (boxes_b[:, 3] - boxes_b[:, 1]).clamp(
        min=0
    )
    top_left = torch.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])
    bottom_right = torch.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-6)


def _sequential_nms(iou: torch.Tensor, labels: torch.Tensor, iou_threshold: float) -> list[int]:
    """Greedy NMS on a precomputed IoU matrix of candidates already sorted by score."""
    same_class = labels[:, None] == labels[None, :]
    suppressed = torch.zeros(iou.shape[0], dtype=torch.bool)
    overlaps = ((iou > iou_threshold) & same_class).cpu()
    kept = []
    for i in range(iou.shape[0]):
        if suppressed[i]:
            continue
        kept.append(i)
        suppressed |= overlaps[i]
    return kept


def mask_nms(
    masks: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor, iou_threshold: float = 0.5
) -> torch.Tensor:
    """Classic sequential NMS on masks: walk down the score order; keep a mask unless it
    overlaps an already kept mask of the same class by IoU > ``iou_threshold``.

    Returns the kept indices (into the inputs), highest score first.
    """
    if masks.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=masks.device)
    order = torch.argsort(scores, descending=True)
    iou = mask_iou(masks[order])
    kept = _sequential_nms(iou, labels[order], iou_threshold)
    return order[torch.tensor(kept, dtype=torch.long, device=order.device)]


def box_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    iou_threshold: float = 0.5,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Classic sequential NMS on boxes (class-aware when ``labels`` is given).

    Returns the kept indices, highest score first.
    """
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    if labels is None:
        labels = torch.zeros(boxes.shape[0], dtype=torch.long, device=boxes.device)
    order = torch.argsort(scores, descending=True)
    kept = _sequential_nms(box_iou(boxes[order]), labels[order], iou_threshold)
    return order[torch.tensor(kept, dtype=torch.long, device=order.device)]


def matrix_nms(
    masks: torch.Tensor,
    labels: torch.Tensor,
    scores: torch.Tensor,
    kernel: str = "gaussian",
    sigma: float = 2.0,
    mask_areas: torch.Tensor | None = None,
) -> torch.Tensor:
    """Matrix NMS (SOLOv2, Alg. 1): returns the decayed scores, in the input order.

    The inputs must be sorted by score, descending. For each mask j, every higher-scored mask i
    of the same class decays it by ``f(IoU_ij) / f(comp_i)``, where ``comp_i`` is the largest IoU
    of mask i with any mask scored above it (how much i was itself suppressed), and the decay
    actually applied is the minimum over i:

    * gaussian: ``f(x) = exp(-sigma * x**2)``
    * linear:   ``decay = (1 - IoU_ij) / (1 - comp_i)``
    """
    n = labels.shape[0]
    if n == 0:
        return scores.new_zeros(0)
    if kernel not in ("gaussian", "linear"):
        raise ValueError(f"kernel must be 'gaussian' or 'linear', got {kernel!r}")
    flat = masks.reshape(n, -1).float()
    if mask_areas is None:
        mask_areas = flat.sum(1)
    inter = flat @ flat.T
    union = mask_areas[:, None] + mask_areas[None, :] - inter
    # upper triangle: row i (higher score) against column j (lower score)
    iou = (inter / union.clamp(min=1e-6)).triu(diagonal=1)
    same_class = (labels[:, None] == labels[None, :]).float().triu(diagonal=1)
    decay_iou = iou * same_class
    # comp_i: column max, i.e. the largest IoU of mask i with a higher-scored mask
    compensate_iou = decay_iou.max(dim=0).values
    compensate_iou = compensate_iou[:, None].expand(n, n)  # row i holds comp_i
    if kernel == "gaussian":
        decay = torch.exp(-sigma * decay_iou**2) / torch.exp(-sigma * compensate_iou**2)
    else:
        decay = (1 - decay_iou) / (1 - compensate_iou)
    decay_coefficient = decay.min(dim=0).values
    return scores * decay_coefficient


def fast_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    iou_threshold: float = 0.5,
    top_k: int = 200,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """YOLACT's Fast NMS (YOLACT paper, Sec. 3.4): sort, keep the ``top_k``, compute the
    upper-triangular IoU matrix and keep a box when its largest IoU with any *higher-scored*
    box (the column max) is ``<= iou_threshold``. Unlike classic NMS an already removed box can
    still remove others, which is what makes it one matrix operation.

    When ``labels`` is given, only boxes of the same class suppress each other (the per-class
    use). Returns kept indices into the inputs, highest score first.
    """
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.argsort(scores, descending=True)[:top_k]
    iou = box_iou(boxes[order]).triu(diagonal=1)
    if labels is not None:
        ordered_labels = labels[order]
        iou = iou * (ordered_labels[:, None] == ordered_labels[None, :])
    max_iou = iou.max(dim=0).values
    return order[max_iou <= iou_threshold]

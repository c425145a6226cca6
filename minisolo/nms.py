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

from .targets import _boxes_from_counts, pixel_counts


def points_nms(heat: torch.Tensor) -> torch.Tensor:
    """Keep a cell's score only where it is the maximum of its 2x2 window, else zero.

    ``heat`` is ``[N, C, S, S]`` (probabilities). This is the official
    ``max_pool2d(heat, 2, stride=1, padding=1)[..., :-1, :-1] == heat`` test: the window of
    cell (i, j) covers cells (i-1..i, j-1..j).
    """
    if heat.dim() != 4:
        raise ValueError(f"points_nms expects [N, C, S, S], got {tuple(heat.shape)}")
    pooled = F.max_pool2d(heat, 2, stride=1, padding=1)
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


def same_class_intersections(masks: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Pixel counts ``|A_i & A_j|`` ``[N, N]`` (float32) for pairs of binary masks of the same
    class; pairs of different classes get 0. The diagonal holds the mask areas.

    The textbook way is one ``[N, P] @ [P, N]`` product over all pairs (P pixels): fine on a
    GPU, but on a CPU it is most of the inference time. NMS only compares masks of one class,
    and two masks whose boxes do not overlap have no pixel in common. So on a CPU we split the
    masks into groups (connected components of "same class and boxes overlap"), and do one
    small product per group, cropped to the box that holds the group. The sums are of 0/1
    products, integers below 2^24, which float32 holds exactly in any order: every entry equals
    the full product's.
    """
    n = masks.shape[0]
    if n == 0:
        return torch.zeros((0, 0), dtype=torch.float32, device=masks.device)
    same_class = labels[:, None] == labels[None, :]
    if masks.device.type != "cpu":
        flat = masks.reshape(n, -1).float()
        return (flat @ flat.T) * same_class
    masks = masks.bool()
    rows, cols = pixel_counts(masks)  # [N, H], [N, W] pixel counts
    inter = torch.diag(rows.sum(dim=1).float())  # a mask's intersection with itself: its area
    boxes = _boxes_from_counts(rows, cols)  # x1, y1, x2, y2 (exclusive)
    group = _overlap_groups(boxes, same_class)
    pixels = masks.view(torch.uint8)
    for g in group.unique():
        index = (group == g).nonzero().squeeze(1)
        if index.numel() < 2:
            continue
        x1, y1 = boxes[index, :2].amin(dim=0).long().tolist()
        x2, y2 = boxes[index, 2:].amax(dim=0).long().tolist()
        crop = pixels[index, y1:y2, x1:x2].reshape(index.numel(), -1)
        flat = crop.float()  # from uint8: bool -> float conversion is ~10x slower on a CPU
        inter[index[:, None], index[None, :]] = flat @ flat.T
    return inter


def _overlap_groups(boxes: torch.Tensor, same_class: torch.Tensor) -> torch.Tensor:
    """Group id ``Long[N]`` per box: connected components of the graph whose edges join boxes
    of the same class that overlap (label propagation: every box takes the smallest group id
    among its neighbours until nothing changes)."""
    x1, y1, x2, y2 = boxes.unbind(dim=1)
    overlap = (
        same_class
        & (x1[:, None] < x2[None, :])
        & (x1[None, :] < x2[:, None])
        & (y1[:, None] < y2[None, :])
        & (y1[None, :] < y2[:, None])
    )
    n = boxes.shape[0]
    group = torch.arange(n, device=boxes.device)
    while True:
        smallest = torch.where(overlap, group[None, :], n).amin(dim=1)
        new = torch.minimum(group, smallest)
        new = new[new]  # pointer jumping: take the group of my group's representative
        if torch.equal(new, group):
            return group
        group = new


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
    inter = same_class_intersections(masks, labels)  # other classes never suppress: 0 there
    areas = inter.diagonal()
    iou = inter / (areas[:, None] + areas[None, :] - inter).clamp(min=1e-6)
    kept = _sequential_nms(iou[order][:, order], labels[order], iou_threshold)
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
    inter = same_class_intersections(masks, labels)  # 0 across classes, as decay needs
    if mask_areas is None:
        mask_areas = inter.diagonal()
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
    """YOLACT's Fast NMS (YOLACT paper, Sec. 5 "Fast NMS"): sort, keep the ``top_k``, compute the
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

"""YOLACT: real-time instance segmentation with prototypes and per-instance coefficients.

Paper: Bolya et al., "YOLACT: Real-time Instance Segmentation", ICCV 2019. The numbers and
choices below follow the official code (``yolact_base_config``, YOLACT-550) unless a comment
says otherwise.

YOLACT splits instance segmentation into two parallel tasks (paper Sec. 3, Fig. 2):

* a **protonet** (Sec. 3.1) turns the finest FPN level P3 into ``k = 32`` image-sized
  *prototype masks* ``P`` (``h x w x k``), shared by every instance in the image;
* a one-stage box detector (Sec. 3.2 and 4) predicts, for every anchor ("prior"), class scores, a
  box and ``k`` *mask coefficients* ``c`` (tanh).

An instance's mask is a linear combination of the prototypes, ``M = sigmoid(P c^T)``
(Sec. 3.3, Eq. 1), cropped with the instance's box. Duplicates are removed with Fast NMS
(Sec. 5), which does NMS with one upper-triangular IoU matrix.

Reading order: backbone and FPN -> protonet -> prediction head -> anchors -> matching and box
coding -> losses -> the model (forward, loss, predict).

Conventions: boxes are ``x1, y1, x2, y2`` *relative* to the network input (0..1) inside the
model and its losses; priors are ``cx, cy, w, h`` relative; ``predict`` returns boxes in pixels
of the original image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import ResNet
from .config import YOLACTConfig
from .inference import forward_for_inference
from .nms import box_iou, fast_nms
from .targets import masks_to_boxes

VARIANCES = (0.1, 0.2)  # SSD box-coding variances (centre, size)


# ============================================================================ backbone + FPN
class YOLACTFPN(nn.Module):
    """FPN on C3..C5 -> P3..P7 (paper Sec. 4; official ``FPN`` with ``use_conv_downsample``).

    Differences from :class:`minisolo.backbone.FPN` (the SOLO one), all as in the official code:
    lateral 1x1 convs on C3, C4, C5 only; the top-down pathway upsamples *bilinearly*; each
    merged map goes through a 3x3 conv **followed by a ReLU**; P6 and P7 come from stride-2 3x3
    convs (P6 from P5, P7 from P6), without ReLU.
    """

    def __init__(
        self, in_channels: Sequence[int], out_channels: int = 256, num_downsample: int = 2
    ) -> None:
        super().__init__()
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.pred_convs = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels
        )
        self.downsample_convs = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
            for _ in range(num_downsample)
        )

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, features, strict=True)]
        for k in range(len(laterals) - 1, 0, -1):  # top-down: P5 -> P3
            laterals[k - 1] = laterals[k - 1] + F.interpolate(
                laterals[k], size=laterals[k - 1].shape[-2:], mode="bilinear", align_corners=False
            )
        outs = [F.relu(conv(x)) for conv, x in zip(self.pred_convs, laterals, strict=True)]
        for conv in self.downsample_convs:  # P6 = conv(P5), P7 = conv(P6)
            outs.append(conv(outs[-1]))
        return outs


def yolact_feature_sizes(image_size: int | tuple[int, int], num_levels: int = 5) -> list[tuple]:
    """Feature-map sizes of P3..P7 for an input of ``image_size`` (int or ``(H, W)``).

    Every stride-2 layer of the ResNet (3x3 or 7x7 with padding, max-pool 3/2/1) maps ``n`` to
    ``ceil(n / 2)``, so 550 -> 275 -> 138 -> 69 (P3) -> 35 -> 18 -> 9 -> 5 (P7).
    """
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    sizes = []
    for step in range(2 + num_levels):  # conv1, maxpool, then layer2 .. P7
        h, w = (h + 1) // 2, (w + 1) // 2
        if step >= 2:
            sizes.append((h, w))
    return sizes


# ============================================================================ protonet
class ProtoNet(nn.Module):
    """Protonet (paper Sec. 3.1, Fig. 3): P3 -> ``k`` prototype masks at twice P3's size.

    Three 3x3 conv(256)+ReLU, bilinear x2 upsample, one 3x3 conv+ReLU, a 1x1 conv to ``k``
    channels and a final ReLU (official ``mask_proto_prototype_activation``): prototypes are
    unbounded above and non-negative. 138 x 138 for a 550 input (stride ~4).
    """

    def __init__(self, in_channels: int, channels: int = 256, num_prototypes: int = 32) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.refine = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, num_prototypes, 1),
            nn.ReLU(inplace=True),
        )

    def forward(self, p3: torch.Tensor) -> torch.Tensor:
        x = self.convs(p3)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return self.refine(x)  # [B, k, 2*H3, 2*W3]


# ============================================================================ prediction head
class PredictionHead(nn.Module):
    """The head shared by P3..P7 (paper Sec. 3.2 and 4, Fig. 4): one extra 3x3 conv+ReLU, then three
    3x3 output convs: ``C + 1`` class logits (softmax, background = 0), 4 box deltas and ``k``
    mask coefficients (tanh), for each of ``A = len(aspect_ratios)`` anchors per location.

    Outputs are flattened in (level, row, column, anchor) order, the order of
    :func:`prior_boxes`.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_classes: int,
        num_prototypes: int,
        num_anchors: int = 3,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes  # foreground classes; the logits have C + 1 channels
        self.num_prototypes = num_prototypes
        self.num_anchors = num_anchors
        self.upfeature = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1), nn.ReLU(inplace=True)
        )
        self.class_conv = nn.Conv2d(channels, num_anchors * (num_classes + 1), 3, padding=1)
        self.box_conv = nn.Conv2d(channels, num_anchors * 4, 3, padding=1)
        self.coef_conv = nn.Conv2d(channels, num_anchors * num_prototypes, 3, padding=1)

    @staticmethod
    def _flatten(x: torch.Tensor, size: int) -> torch.Tensor:
        """``[B, A*size, H, W]`` -> ``[B, H*W*A, size]`` (row, column, anchor order)."""
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, size)

    def forward(self, features: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        classes, boxes, coefs = [], [], []
        for x in features:
            x = self.upfeature(x)
            classes.append(self._flatten(self.class_conv(x), self.num_classes + 1))
            boxes.append(self._flatten(self.box_conv(x), 4))
            coefs.append(self._flatten(self.coef_conv(x), self.num_prototypes))
        return {
            "class_logits": torch.cat(classes, dim=1),  # [B, num_priors, C + 1]
            "box_deltas": torch.cat(boxes, dim=1),  # [B, num_priors, 4]
            "coefficients": torch.tanh(torch.cat(coefs, dim=1)),  # [B, num_priors, k]
        }


# ============================================================================ anchors (priors)
def prior_boxes(
    image_size: int | tuple[int, int] = 550,
    scales: Sequence[float] = (24, 48, 96, 192, 384),
    aspect_ratios: Sequence[float] = (1, 0.5, 2),
    square: bool = True,
    feature_sizes: Sequence[tuple[int, int]] | None = None,
) -> torch.Tensor:
    """Anchors ``[num_priors, 4]`` as ``cx, cy, w, h`` relative to the image (official
    ``make_priors``).

    For each level (feature size ``(h, w)``, default :func:`yolact_feature_sizes`), for each row
    ``j``, column ``i`` and aspect ratio ``ar``: centre ``((i + 0.5) / w, (j + 0.5) / h)``, width
    ``scale * sqrt(ar) / W`` and height ``scale / sqrt(ar) / H`` (``W, H`` the image size).

    ``square=True`` reproduces the released models: the official ``use_square_anchors`` flag
    (a bug the authors kept because the models were trained with it) sets ``h = w``, so the
    three anchors are squares of side ``scale * {1, 0.707, 1.414}``. ``square=False`` gives
    the intended boxes with ``w / h = ar``. At 550 there are ``3 * (69² + 35² + 18² + 9² + 5²)
    = 19,248`` priors.
    """
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    if feature_sizes is None:
        feature_sizes = yolact_feature_sizes((height, width), len(scales))
    if len(feature_sizes) != len(scales):
        raise ValueError(f"{len(feature_sizes)} feature sizes for {len(scales)} scales")
    ratios = torch.tensor([math.sqrt(a) for a in aspect_ratios], dtype=torch.float32)
    levels = []
    for (h, w), scale in zip(feature_sizes, scales, strict=True):
        rows, cols = torch.meshgrid(
            torch.arange(h, dtype=torch.float32),
            torch.arange(w, dtype=torch.float32),
            indexing="ij",
        )
        cx = ((cols + 0.5) / w)[..., None].expand(h, w, len(ratios))
        cy = ((rows + 0.5) / h)[..., None].expand(h, w, len(ratios))
        box_w = (scale * ratios / width).expand(h, w, -1)
        if square:  # the kept bug: h = w (in pixels; identical to the official h = w at W = H)
            box_h = (scale * ratios / height).expand(h, w, -1)
        else:
            box_h = (scale / ratios / height).expand(h, w, -1)
        levels.append(torch.stack([cx, cy, box_w, box_h], dim=-1).reshape(-1, 4))
    return torch.cat(levels)


def point_form(boxes: torch.Tensor) -> torch.Tensor:
    """``cx, cy, w, h`` -> ``x1, y1, x2, y2``."""
    return torch.cat([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2], dim=1)


def center_size(boxes: torch.Tensor) -> torch.Tensor:
    """``x1, y1, x2, y2`` -> ``cx, cy, w, h``."""
    return torch.cat([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], dim=1)


# ============================================================================ box coding
def encode(
    matched: torch.Tensor, priors: torch.Tensor, variances: tuple[float, float] = VARIANCES
) -> torch.Tensor:
    """SSD box encoding of GT boxes ``matched`` (``x1y1x2y2``) against ``priors`` (``cxcywh``):

    ``t_xy = (g_cxy - p_cxy) / (v0 * p_wh)``, ``t_wh = log(g_wh / p_wh) / v1``, with
    ``(v0, v1) = (0.1, 0.2)``.
    """
    g = center_size(matched)
    t_xy = (g[:, :2] - priors[:, :2]) / (variances[0] * priors[:, 2:])
    t_wh = torch.log(g[:, 2:] / priors[:, 2:]) / variances[1]
    return torch.cat([t_xy, t_wh], dim=1)


def decode(
    loc: torch.Tensor, priors: torch.Tensor, variances: tuple[float, float] = VARIANCES
) -> torch.Tensor:
    """Inverse of :func:`encode`: deltas ``[P, 4]`` + priors -> boxes ``x1y1x2y2``."""
    cxy = priors[:, :2] + loc[:, :2] * variances[0] * priors[:, 2:]
    wh = priors[:, 2:] * torch.exp(loc[:, 2:] * variances[1])
    return torch.cat([cxy - wh / 2, cxy + wh / 2], dim=1)


# ============================================================================ matching
def match(
    gt_boxes: torch.Tensor,
    gt_labels: torch.Tensor,
    priors: torch.Tensor,
    pos_threshold: float = 0.5,
    neg_threshold: float = 0.4,
    crowd_boxes: torch.Tensor | None = None,
    crowd_iou_threshold: float = 0.7,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Assign a GT to every prior (official ``box_utils.match``).

    ``gt_boxes`` ``[N, 4]`` are ``x1y1x2y2`` relative, ``gt_labels`` ``[N]`` in ``[0, C)``,
    ``priors`` ``[P, 4]`` ``cxcywh`` relative.

    1. IoU between every GT and every prior (in point form); each prior takes its best GT.
    2. Each GT is forced onto its best prior, in the official greedy order: repeatedly take the
       (GT, prior) pair with the highest remaining IoU, give that prior to that GT with overlap
       2 (never thresholded away), and remove both from further picks.
    3. Best overlap ``>= pos_threshold`` -> positive, class ``label + 1``; ``< neg_threshold`` ->
       background ``0``; in between -> neutral ``-1`` (ignored by every loss).
    4. A non-positive prior covered by a crowd box by more than ``crowd_iou_threshold`` becomes
       neutral. As in the official code (``jaccard(..., iscrowd=True)``) the crowd overlap is
       ``intersection / prior area``: the fraction of the prior inside the crowd region.

    Returns ``conf`` (``Long[P]``: -1, 0 or label + 1), ``loc`` (``[P, 4]`` encoded deltas of
    the matched GT, see :func:`encode`) and ``index`` (``Long[P]``, the matched GT per prior;
    meaningful for positives).
    """
    num_priors = priors.shape[0]
    device = priors.device
    if gt_boxes.shape[0] == 0:
        conf = torch.zeros(num_priors, dtype=torch.long, device=device)
        loc = torch.zeros(num_priors, 4, dtype=priors.dtype, device=device)
        return conf, loc, torch.zeros(num_priors, dtype=torch.long, device=device)
    prior_points = point_form(priors)
    overlaps = box_iou(gt_boxes, prior_points)  # [N, P]
    best_overlap, best_index = overlaps.max(dim=0)  # step 1: per prior
    overlaps = overlaps.clone()
    for _ in range(gt_boxes.shape[0]):  # step 2: force each GT onto a prior
        best_prior_overlap, best_prior = overlaps.max(dim=1)
        j = best_prior_overlap.argmax()
        i = best_prior[j]
        overlaps[:, i] = -1
        overlaps[j, :] = -1
        best_overlap[i] = 2.0
        best_index[i] = j
    conf = gt_labels[best_index].long() + 1  # step 3
    conf[best_overlap < pos_threshold] = -1
    conf[best_overlap < neg_threshold] = 0
    if crowd_boxes is not None and crowd_boxes.shape[0] > 0:  # step 4
        top_left = torch.maximum(prior_points[:, None, :2], crowd_boxes[None, :, :2])
        bottom_right = torch.minimum(prior_points[:, None, 2:], crowd_boxes[None, :, 2:])
        inter = (bottom_right - top_left).clamp(min=0).prod(dim=-1)  # [P, M]
        prior_area = (priors[:, 2] * priors[:, 3])[:, None]
        crowd_overlap = (inter / prior_area).max(dim=1).values
        conf[(conf <= 0) & (crowd_overlap > crowd_iou_threshold)] = -1
    loc = encode(gt_boxes[best_index], priors)
    return conf, loc, best_index


# ============================================================================ masks
def assemble_masks(prototypes: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """Masks from prototypes and coefficients (paper Sec. 3.3, Eq. 1): ``M = sigmoid(P C^T)``.

    ``prototypes`` ``[k, h, w]`` with ``coefficients`` ``[N, k]`` -> ``[N, h, w]``; batched
    ``[B, k, h, w]`` with ``[B, N, k]`` -> ``[B, N, h, w]``. Returns probabilities.
    """
    return torch.sigmoid(torch.einsum("...khw,...nk->...nhw", prototypes, coefficients))


def crop(masks: torch.Tensor, boxes: torch.Tensor, padding: int = 1) -> torch.Tensor:
    """Zero each mask ``[N, h, w]`` outside its box ``[N, 4]`` (``x1y1x2y2`` relative).

    Official ``crop``: pixel column ``c`` is kept when ``x1 * w - padding <= c < x2 * w +
    padding`` (both bounds clamped to ``[0, w]``), rows likewise; the official default
    ``padding = 1`` keeps one extra pixel around the box. ``padding=0`` crops to the box.
    """
    n, h, w = masks.shape
    boxes = boxes.to(masks.dtype)
    x1 = (torch.minimum(boxes[:, 0], boxes[:, 2]) * w - padding).clamp(min=0)
    x2 = (torch.maximum(boxes[:, 0], boxes[:, 2]) * w + padding).clamp(max=w)
    y1 = (torch.minimum(boxes[:, 1], boxes[:, 3]) * h - padding).clamp(min=0)
    y2 = (torch.maximum(boxes[:, 1], boxes[:, 3]) * h + padding).clamp(max=h)
    cols = torch.arange(w, device=masks.device, dtype=masks.dtype).view(1, 1, w)
    rows = torch.arange(h, device=masks.device, dtype=masks.dtype).view(1, h, 1)
    inside_x = (cols >= x1.view(n, 1, 1)) & (cols < x2.view(n, 1, 1))
    inside_y = (rows >= y1.view(n, 1, 1)) & (rows < y2.view(n, 1, 1))
    return masks * (inside_x & inside_y).to(masks.dtype)


def downsample_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """GT masks ``[N, H, W]`` -> float ``{0, 1}`` ``[N, h, w]``: bilinear resize, then > 0.5
    (official ``mask_proto_binarize_downsampled_gt``)."""
    if masks.shape[0] == 0:
        return masks.new_zeros((0, *size), dtype=torch.float32)
    resized = F.interpolate(masks[None].float(), size=size, mode="bilinear", align_corners=False)
    return (resized[0] > 0.5).float()


# ============================================================================ losses
def ohem_negatives(
    class_logits: torch.Tensor, conf_targets: torch.Tensor, negpos_ratio: int = 3
) -> torch.Tensor:
    """Online hard example mining (SSD; official ``ohem_conf_loss``): per image, the
    ``negpos_ratio * num_positives`` background priors with the largest background loss
    ``-log softmax(logits)[0]`` (at most ``num_priors - 1``). Returns a bool ``[B, P]`` mask.

    ``class_logits`` ``[B, P, C + 1]``; ``conf_targets`` ``[B, P]`` with -1 neutral, 0
    background, ``c + 1`` positive.
    """
    with torch.no_grad():
        background_loss = -F.log_softmax(class_logits.float(), dim=-1)[..., 0]
        background_loss = background_loss.masked_fill(conf_targets != 0, -math.inf)
        order = background_loss.argsort(dim=1, descending=True)
        rank = order.argsort(dim=1)  # rank[b, p]: position of prior p in the hardness order
        num_pos = (conf_targets > 0).sum(dim=1, keepdim=True)
        num_neg = (negpos_ratio * num_pos).clamp(max=conf_targets.shape[1] - 1)
        return (rank < num_neg) & (conf_targets == 0)


def ohem_class_loss(
    class_logits: torch.Tensor, conf_targets: torch.Tensor, negpos_ratio: int = 3
) -> torch.Tensor:
    """Class loss (paper Sec. 4, official ``ohem_conf_loss``):

    ``L_cls = sum_{p in pos ∪ hard neg} CE(softmax(logits_p), conf_p) / num_pos``

    softmax cross-entropy over ``C + 1`` classes on the positives and the OHEM negatives
    (:func:`ohem_negatives`, 3 per positive), summed and divided by the batch's number of
    positives (at least 1).
    """
    positive = conf_targets > 0
    selected = positive | ohem_negatives(class_logits, conf_targets, negpos_ratio)
    loss = F.cross_entropy(class_logits[selected].float(), conf_targets[selected], reduction="sum")
    return loss / positive.sum().clamp(min=1)


def box_loss(
    box_deltas: torch.Tensor, loc_targets: torch.Tensor, positive: torch.Tensor
) -> torch.Tensor:
    """Box loss: ``L_box = sum_{p in pos} smoothL1(t_p - t*_p) / num_pos`` (smooth-L1 with
    beta 1, summed over the 4 coordinates; unweighted, the model multiplies by 1.5)."""
    loss = F.smooth_l1_loss(
        box_deltas[positive].float(), loc_targets[positive].float(), reduction="sum"
    )
    return loss / positive.sum().clamp(min=1)


def mask_bce(
    mask_logits: torch.Tensor, gt_masks: torch.Tensor, boxes: torch.Tensor
) -> torch.Tensor:
    """Per-mask loss ``[N]`` (paper Sec. 3.3, "Losses" and "Cropping Masks"; official
    ``lincomb_mask_loss``):

    ``l_n = sum_{pixels in crop(box_n)} BCE(sigmoid(P c_n^T), gt_n) / (box_w * box_h)``

    ``mask_logits`` ``[N, h, w]`` are ``P c^T`` at prototype resolution, ``gt_masks`` the GT
    masks downsampled to it, ``boxes`` ``[N, 4]`` the GT boxes (``x1y1x2y2`` relative). The box
    area is in prototype pixels (clamped at 1). Outside the crop the official code compares
    the cropped prediction 0 with the GT, which costs nothing where the GT is 0 and carries
    no gradient anywhere, so only pixels inside the crop are summed here.
    """
    h, w = mask_logits.shape[-2:]
    inside = crop(torch.ones_like(mask_logits, dtype=torch.float32), boxes.float())
    bce = F.binary_cross_entropy_with_logits(
        mask_logits.float(), gt_masks.float(), reduction="none"
    )
    area = ((boxes[:, 2] - boxes[:, 0]) * w * (boxes[:, 3] - boxes[:, 1]) * h).float()
    return (bce * inside).sum(dim=(1, 2)) / area.clamp(min=1.0)


def mask_loss(
    prototypes: torch.Tensor,
    coefficients: torch.Tensor,
    positive: torch.Tensor,
    matched_index: torch.Tensor,
    gt_masks: Sequence[torch.Tensor],
    gt_boxes: Sequence[torch.Tensor],
    masks_to_train: int = 100,
) -> torch.Tensor:
    """Mask loss over a batch, normalised as the official code:

    ``L_mask = sum_b (n_b / m_b) sum_{p in S_b} l_p / num_pos``

    where ``l_p`` is :func:`mask_bce` of positive prior ``p`` against the mask of its matched
    GT, ``S_b`` a random subset of at most ``masks_to_train`` of image ``b``'s ``n_b`` positive
    priors (``m_b = |S_b|``; the factor ``n_b / m_b`` makes up for the subsampling) and
    ``num_pos`` the batch's positives. (Official: ``loss * mask_alpha / mask_h / mask_w`` with
    a per-mask factor ``mask_h * mask_w / box area``: the ``mask_h * mask_w`` cancel out.)

    ``prototypes`` ``[B, k, h, w]``, ``coefficients`` ``[B, P, k]``, ``positive`` /
    ``matched_index`` ``[B, P]``, ``gt_masks[b]`` ``[N_b, H, W]`` at the input size and
    ``gt_boxes[b]`` ``[N_b, 4]`` relative.
    """
    proto_size = tuple(prototypes.shape[-2:])
    total = prototypes.float().sum() * 0.0  # keeps the graph when there is nothing to learn
    for b in range(prototypes.shape[0]):
        chosen = positive[b].nonzero(as_tuple=True)[0]
        num_pos = chosen.numel()
        if num_pos == 0:
            continue
        if num_pos > masks_to_train:
            chosen = chosen[torch.randperm(num_pos, device=chosen.device)[:masks_to_train]]
        gt_index = matched_index[b, chosen]
        targets = downsample_masks(gt_masks[b], proto_size)[gt_index]
        logits = torch.einsum("khw,nk->nhw", prototypes[b].float(), coefficients[b, chosen].float())
        per_mask = mask_bce(logits, targets, gt_boxes[b][gt_index])
        total = total + per_mask.sum() * (num_pos / chosen.numel())
    return total / positive.sum().clamp(min=1)


def semantic_loss(
    semantic_logits: torch.Tensor,
    gt_masks: Sequence[torch.Tensor],
    gt_labels: Sequence[torch.Tensor],
) -> torch.Tensor:
    """Semantic-segmentation auxiliary loss (paper Sec. 5 "Semantic Segmentation Loss";
    official ``semantic_segmentation_loss``), training only:

    ``L_sem = (1 / B) sum_b sum_{c, pixels} BCE(sigmoid(s_bc), y_bc) / (h * w)``

    ``semantic_logits`` ``[B, C, h, w]`` come from a 1x1 conv on P3; the target ``y_bc`` is the
    pixel-wise max of image ``b``'s GT masks of class ``c`` downsampled to ``h x w``.
    """
    batch, num_classes, h, w = semantic_logits.shape
    total = semantic_logits.float().sum() * 0.0
    for b in range(batch):
        masks = downsample_masks(gt_masks[b], (h, w))
        target = masks.new_zeros(num_classes, h, w)
        for mask, label in zip(masks, gt_labels[b].tolist(), strict=True):
            target[label] = torch.maximum(target[label], mask)
        total = total + F.binary_cross_entropy_with_logits(
            semantic_logits[b].float(), target, reduction="sum"
        )
    return total / (h * w) / batch


# ============================================================================ the model
class YOLACT(nn.Module):
    """YOLACT: ResNet + FPN (P3..P7) + protonet + shared prediction head (+ semantic conv).

    Same interface as :class:`minisolo.solo.SOLO`: ``forward(images)`` returns raw outputs,
    ``loss(outputs, targets)`` the training losses, ``predict(images, ...)`` instances.
    """

    model_kind = "yolact"
    train_forward_kwargs: dict = {}  # what the training loop passes to forward (nothing extra)

    def __init__(self, config: YOLACTConfig) -> None:
        super().__init__()
        if not isinstance(config, YOLACTConfig):
            raise TypeError(f"YOLACT needs a YOLACTConfig, got {type(config).__name__}")
        self.config = config
        self.backbone = ResNet(
            config.backbone_depth, config.backbone_width, config.frozen_stages, config.norm_eval
        )
        self.fpn = YOLACTFPN(self.backbone.out_channels[1:], config.fpn_channels)
        self.protonet = ProtoNet(config.fpn_channels, config.proto_channels, config.num_prototypes)
        self.head = PredictionHead(
            config.fpn_channels,
            config.head_channels,
            config.num_classes,
            config.num_prototypes,
            num_anchors=len(config.aspect_ratios),
        )
        self.semantic_conv = nn.Conv2d(config.fpn_channels, config.num_classes, 1)
        # official init_weights: Xavier-uniform weights and zero biases outside the backbone
        for module in (self.fpn, self.protonet, self.head, self.semantic_conv):
            for m in module.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.xavier_uniform_(m.weight)
                    nn.init.zeros_(m.bias)
        self._prior_cache: dict[tuple, torch.Tensor] = {}

    # ----------------------------------------------------------------------------- forward
    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """P3..P7 for a batch of images."""
        return self.fpn(self.backbone(images)[1:])

    def prototypes(self, images: torch.Tensor) -> torch.Tensor:
        """The prototype masks ``[B, k, h, w]`` (protonet on P3)."""
        return self.protonet(self.features(images)[0])

    def priors(
        self, image_size: tuple[int, int], feature_sizes: Sequence[tuple[int, int]], device
    ) -> torch.Tensor:
        """Priors for the actual feature-map sizes, cached by size and device."""
        key = (tuple(image_size), tuple(tuple(s) for s in feature_sizes), str(device))
        if key not in self._prior_cache:
            cfg = self.config
            self._prior_cache[key] = prior_boxes(
                tuple(image_size),
                cfg.anchor_scales,
                cfg.aspect_ratios,
                cfg.square_anchors,
                feature_sizes,
            ).to(device)
        return self._prior_cache[key]

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw outputs: ``class_logits`` ``[B, P, C + 1]``, ``box_deltas`` ``[B, P, 4]``,
        ``coefficients`` ``[B, P, k]`` (tanh), ``prototypes`` ``[B, k, h, w]`` (ReLU), ``priors``
        ``[P, 4]`` and, in training mode, ``semantic_logits`` ``[B, C, h3, w3]``."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        features = self.features(images)
        outputs = self.head(features)
        outputs["prototypes"] = self.protonet(features[0])
        outputs["priors"] = self.priors(
            tuple(images.shape[-2:]), [tuple(f.shape[-2:]) for f in features], images.device
        )
        if self.training:  # the semantic branch only exists to help training
            outputs["semantic_logits"] = self.semantic_conv(features[0])
        return outputs

    # ----------------------------------------------------------------------------- loss
    def match_targets(
        self, outputs: dict, targets: Sequence[dict]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[dict]]:
        """Match every image's GT to the priors. Returns ``conf`` ``[B, P]``, ``loc``
        ``[B, P, 4]``, ``index`` ``[B, P]`` and per image the kept GT (``masks``, ``labels``,
        relative ``boxes``), after dropping boxes under ``discard_box_size``."""
        cfg = self.config
        priors = outputs["priors"].float()
        confs, locs, indices, kept = [], [], [], []
        for target in targets:
            masks = target["masks"]
            height, width = masks.shape[-2:]
            scale = torch.tensor([width, height, width, height], device=priors.device)
            boxes = target.get("boxes")
            if boxes is None:  # default: the masks' tight boxes
                boxes = masks_to_boxes(masks)
            boxes = boxes.to(priors.device).float().reshape(-1, 4) / scale
            size = boxes[:, 2:] - boxes[:, :2]
            keep = (size > cfg.discard_box_size).all(dim=1)  # official: drop boxes under 4 px
            boxes, labels = boxes[keep], target["labels"].to(priors.device)[keep]
            crowd = target.get("crowd_boxes")
            if crowd is not None:
                crowd = crowd.to(priors.device).float().reshape(-1, 4) / scale
            conf, loc, index = match(
                boxes,
                labels,
                priors,
                cfg.positive_iou,
                cfg.negative_iou,
                crowd,
                cfg.crowd_iou,
            )
            confs.append(conf)
            locs.append(loc)
            indices.append(index)
            kept.append({"masks": masks[keep.to(masks.device)], "labels": labels, "boxes": boxes})
        return torch.stack(confs), torch.stack(locs), torch.stack(indices), kept

    def loss(self, outputs: dict, targets: Sequence[dict]) -> dict[str, torch.Tensor]:
        """``L = 1 * L_cls + 1.5 * L_box + 6.125 * L_mask + 1 * L_sem`` for a batch.

        ``targets[b]``: ``masks`` (bool ``[N, H, W]`` at the input size), ``labels``
        (``Long[N]`` in ``[0, C)``), ``boxes`` (``[N, 4]`` ``x1y1x2y2`` pixels) and optionally
        ``crowd_boxes`` (``[M, 4]`` pixels). The returned parts are already *weighted*, so
        ``loss`` is their sum (as the official code logs them). ``L_sem`` is zero when
        ``outputs`` come from eval mode (no ``semantic_logits``). All loss math is float32
        with autocast off.
        """
        cfg = self.config
        device = outputs["class_logits"].device
        with torch.autocast(device_type=device.type, enabled=False):
            conf, loc, index, gts = self.match_targets(outputs, targets)
            positive = conf > 0
            loss_class = ohem_class_loss(outputs["class_logits"], conf, cfg.negpos_ratio)
            loss_box = box_loss(outputs["box_deltas"], loc, positive)
            gt_masks = [g["masks"].to(device) for g in gts]
            loss_mask = mask_loss(
                outputs["prototypes"],
                outputs["coefficients"],
                positive,
                index,
                gt_masks,
                [g["boxes"] for g in gts],
                cfg.masks_to_train,
            )
            if "semantic_logits" in outputs:
                loss_sem = semantic_loss(
                    outputs["semantic_logits"], gt_masks, [g["labels"] for g in gts]
                )
            else:
                loss_sem = torch.zeros((), device=device)
            parts = {
                "loss_class": cfg.class_loss_weight * loss_class,
                "loss_box": cfg.box_loss_weight * loss_box,
                "loss_mask": cfg.mask_loss_weight * loss_mask,
                "loss_semantic": cfg.semantic_loss_weight * loss_sem,
            }
        return {
            "loss": sum(parts.values()),
            **parts,
            "num_positives": positive.sum().detach(),
        }

    # ----------------------------------------------------------------------------- inference
    @torch.no_grad()
    def predict(
        self,
        images: torch.Tensor,
        image_sizes: Sequence[tuple[int, int]] | None = None,
        original_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> list[dict[str, torch.Tensor]]:
        """Instances per image: ``masks`` (bool ``[K, h0, w0]`` at the original size),
        ``labels`` (``Long[K]`` in ``[0, C)``), ``scores`` ``[K]`` and ``boxes`` ``[K, 4]``
        (``x1y1x2y2`` in original pixels), highest score first.

        ``image_sizes`` are the sizes before any padding (default: the input size) and
        ``original_sizes`` the sizes to return results at (default: ``image_sizes``); with
        YOLACT's squashed 550 x 550 input, ``original_sizes`` undoes the squash.
        """
        outputs, image_sizes, original_sizes = forward_for_inference(
            self, images, image_sizes, original_sizes
        )
        height, width = images.shape[-2:]
        return [
            self.post_process(outputs, b, (height, width), image_sizes[b], original_sizes[b])
            for b in range(len(image_sizes))
        ]

    def detect(self, outputs: dict, image: int) -> dict[str, torch.Tensor]:
        """Official ``Detect``: softmax scores; candidates are priors whose best foreground
        score exceeds ``score_threshold``; per class, Fast NMS over that class's top
        ``nms_top_k`` candidates; then the ``max_per_image`` best (class, prior) pairs.

        Returns ``scores``, ``labels`` (in ``[0, C)``), ``boxes`` (relative ``x1y1x2y2``) and
        ``coefficients`` of the kept detections, highest score first.
        """
        cfg = self.config
        scores = F.softmax(outputs["class_logits"][image].float(), dim=-1)[:, 1:]  # [P, C]
        boxes = decode(outputs["box_deltas"][image].float(), outputs["priors"].float())
        coefs = outputs["coefficients"][image].float()
        candidate = scores.max(dim=1).values > cfg.score_threshold
        scores, boxes, coefs = scores[candidate], boxes[candidate], coefs[candidate]
        kept_index, kept_label, kept_score = [], [], []
        for label in range(scores.shape[1]):  # per-class Fast NMS (Sec. 5)
            if scores.shape[0] == 0:
                break
            keep = fast_nms(boxes, scores[:, label], cfg.nms_iou, cfg.nms_top_k)
            kept_index.append(keep)
            kept_label.append(torch.full_like(keep, label))
            kept_score.append(scores[keep, label])
        if not kept_index:
            index = torch.zeros(0, dtype=torch.long, device=scores.device)
            label, score = index.clone(), torch.zeros(0, device=scores.device)
        else:
            index, label, score = (
                torch.cat(kept_index),
                torch.cat(kept_label),
                torch.cat(kept_score),
            )
        if cfg.second_threshold:
            keep = score > cfg.score_threshold
            index, label, score = index[keep], label[keep], score[keep]
        order = torch.argsort(score, descending=True)[: cfg.max_per_image]
        index = index[order]
        return {
            "scores": score[order],
            "labels": label[order],
            "boxes": boxes[index],
            "coefficients": coefs[index],
        }

    def post_process(
        self,
        outputs: dict,
        image: int,
        input_size: tuple[int, int],
        image_size: tuple[int, int],
        original_size: tuple[int, int],
    ) -> dict[str, torch.Tensor]:
        """Detections of image ``image`` -> masks and boxes at ``original_size``.

        Masks: ``sigmoid(P c^T)`` at prototype resolution, cropped with the predicted box
        (official: "crop masks before upsampling"), upsampled to the input size, cut to
        ``image_size`` (drops padding), resized to ``original_size`` and thresholded at 0.5.
        """
        cfg = self.config
        found = self.detect(outputs, image)
        h0, w0 = original_size
        ih, iw = image_size
        height, width = input_size
        boxes = found["boxes"]
        if boxes.shape[0] == 0:
            return {
                "masks": torch.zeros((0, h0, w0), dtype=torch.bool, device=boxes.device),
                "labels": found["labels"],
                "scores": found["scores"],
                "boxes": boxes.new_zeros(0, 4),
            }
        probs = assemble_masks(outputs["prototypes"][image].float(), found["coefficients"])
        probs = crop(probs, boxes)
        if (ih, iw) == (height, width):  # no padding: one resize, as the official code
            probs = F.interpolate(probs[None], size=(h0, w0), mode="bilinear", align_corners=False)
        else:
            probs = F.interpolate(
                probs[None], size=(height, width), mode="bilinear", align_corners=False
            )
            probs = F.interpolate(
                probs[:, :, :ih, :iw], size=(h0, w0), mode="bilinear", align_corners=False
            )
        # boxes: relative to the input -> input pixels, clipped to the image -> original pixels
        pixel = boxes * boxes.new_tensor([width, height, width, height])
        pixel = torch.minimum(pixel.clamp(min=0), pixel.new_tensor([iw, ih, iw, ih]))
        pixel = pixel * pixel.new_tensor([w0 / iw, h0 / ih, w0 / iw, h0 / ih])
        return {
            "masks": probs[0] > cfg.mask_threshold,
            "labels": found["labels"],
            "scores": found["scores"],
            "boxes": pixel,
        }


__all__ = [
    "YOLACT",
    "YOLACTFPN",
    "ProtoNet",
    "PredictionHead",
    "prior_boxes",
    "yolact_feature_sizes",
    "point_form",
    "center_size",
    "encode",
    "decode",
    "match",
    "assemble_masks",
    "crop",
    "downsample_masks",
    "masks_to_boxes",
    "ohem_negatives",
    "ohem_class_loss",
    "box_loss",
    "mask_bce",
    "mask_loss",
    "semantic_loss",
]

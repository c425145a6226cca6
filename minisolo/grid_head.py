"""What every SOLO-family model shares: the grid of cells, how it is scored, how it is read out.

SOLO (Wang et al., ECCV 2020) and SOLOv2 (Wang et al., NeurIPS 2020) differ only in how they
predict the *mask* of grid cell ``(i, j)``: SOLO has one output channel per cell, SOLOv2 a
predicted 1x1 kernel per cell applied to shared mask features. Everything else is the same,
and lives here so that neither model module imports the other:

* :func:`head_inputs`: the five head inputs at strides 8, 8, 16, 32, 32 from FPN P2..P6;
* :class:`CategoryBranch`: features resized to S x S, a conv-GN-ReLU tower, a 3x3 conv to C
  class logits per cell, with the focal-loss prior bias (:func:`prior_bias`);
* the official inference, in three steps: :func:`grid_candidates` (points NMS, score > 0.1,
  binary masks, the small-mask filter, maskness rescoring), :func:`suppress_duplicates`
  (top 500, Matrix NMS, keep >= 0.05, top 100) and :func:`masks_at_original_size`.

The model supplies the one model-specific piece to :func:`grid_candidates`: a function that
returns the mask probabilities of a list of cells.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .inference import forward_for_inference
from .layers import conv_gn_relu_tower
from .losses import solo_category_loss, solo_mask_loss
from .nms import mask_nms, matrix_nms, points_nms

#: Stride of the mask probabilities the inference compares (level 0's masks, the input / 4).
MASK_STRIDE = 4


def head_inputs(fpn_features: list[torch.Tensor]) -> list[torch.Tensor]:
    """P2..P6 -> the five head inputs at strides 8, 8, 16, 32, 32 (official ``split_feats``):
    P2 is downsampled x0.5 and P6 is resized to P5's size."""
    p2, p3, p4, p5, p6 = fpn_features
    return [
        F.interpolate(p2, scale_factor=0.5, mode="bilinear", align_corners=False),
        p3,
        p4,
        p5,
        F.interpolate(p6, size=p5.shape[-2:], mode="bilinear", align_corners=False),
    ]


def init_head_convs(module: nn.Module) -> None:
    """Official initialisation: normal(std=0.01) for every head convolution, zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def prior_bias(prior_probability: float = 0.01) -> float:
    """Bias that makes ``sigmoid(bias) = prior_probability`` (focal loss paper, Sec. 4.1)."""
    return -math.log((1 - prior_probability) / prior_probability)


class CategoryBranch(nn.Module):
    """Features -> bilinear resize to S x S -> tower -> 3x3 conv to C class logits.

    ``config`` is a :class:`minisolo.SOLOConfig` or :class:`minisolo.SOLOv2Config`: it reads
    ``fpn_channels``, ``head_channels``, ``stacked_convs``, ``num_groups``, ``num_classes``.
    """

    def __init__(self, config) -> None:
        super().__init__()
        c = config.head_channels
        self.tower = conv_gn_relu_tower(
            config.fpn_channels, c, config.stacked_convs, config.num_groups
        )
        self.classifier = nn.Conv2d(c, config.num_classes, 3, padding=1)
        init_head_convs(self)
        nn.init.constant_(self.classifier.bias, prior_bias(0.01))

    def forward(self, features: torch.Tensor, grid: int) -> torch.Tensor:
        x = F.interpolate(features, size=(grid, grid), mode="bilinear", align_corners=False)
        return self.classifier(self.tower(x))


# ------------------------------------------------------------------------------------------
# inference
# ------------------------------------------------------------------------------------------

#: ``(level, rows, cols) -> [P, h, w]``: mask probabilities of cells ``(rows[p], cols[p])`` of
#: one image, at the common stride-4 mask size.
CellMaskProbs = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


def grid_candidates(
    category_logits: list[torch.Tensor],
    image: int,
    config,
    cell_mask_probs: CellMaskProbs,
    mask_size: tuple[int, int],
) -> dict[str, torch.Tensor]:
    """Steps 1-4 of the official inference for image ``image``; nothing is suppressed yet.

    1. points NMS on the sigmoid class scores (a cell must be its 2x2 window's maximum);
    2. every (cell, class) with score > ``config.score_threshold`` is a candidate, and only
       their masks are computed, by ``cell_mask_probs``;
    3. binary mask = probability > ``config.mask_threshold``; masks whose area (in stride-4
       pixels) is not larger than the level's stride are dropped;
    4. maskness, the mean probability inside the binary mask, multiplies the class score.

    Returns ``scores``, ``labels``, ``probs`` and ``masks`` (``[K, h, w]`` at ``mask_size``),
    ``areas``, and which cell each candidate comes from: ``levels`` and ``cells``
    (``k = i * S + j``).
    """
    device = category_logits[0].device
    found: dict[str, list[torch.Tensor]] = {
        k: [] for k in ("scores", "labels", "probs", "strides", "cells", "levels")
    }
    for level, logits in enumerate(category_logits):
        heat = points_nms(torch.sigmoid(logits[image : image + 1].float()))[0]  # [C, S, S]
        label, row, col = (heat > config.score_threshold).nonzero(as_tuple=True)
        if label.numel() == 0:
            continue
        found["scores"].append(heat[label, row, col])
        found["labels"].append(label)
        found["probs"].append(cell_mask_probs(level, row, col).float())
        found["strides"].append(torch.full_like(label, config.strides[level], dtype=torch.float))
        found["cells"].append(row * config.grids[level] + col)
        found["levels"].append(torch.full_like(label, level))
    if not found["scores"]:
        empty = torch.zeros(0, device=device)
        return {
            "scores": empty,
            "labels": empty.long(),
            "probs": torch.zeros((0, *mask_size), device=device),
            "masks": torch.zeros((0, *mask_size), dtype=torch.bool, device=device),
            "areas": empty,
            "cells": empty.long(),
            "levels": empty.long(),
        }
    cat = {k: torch.cat(v) for k, v in found.items()}
    probs = cat["probs"]
    masks = probs > config.mask_threshold
    areas = masks.sum(dim=(1, 2)).float()
    keep = areas > cat["strides"]  # drop masks no larger than the level's stride
    masks, probs, areas = masks[keep], probs[keep], areas[keep]
    # maskness: the mean probability inside the binary mask rescales the class score
    maskness = (probs * masks).sum(dim=(1, 2)) / areas
    return {
        "scores": cat["scores"][keep] * maskness,
        "labels": cat["labels"][keep],
        "probs": probs,
        "masks": masks,
        "areas": areas,
        "cells": cat["cells"][keep],
        "levels": cat["levels"][keep],
    }


def suppress_duplicates(found: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """Steps 5-7: the ``config.nms_pre`` best candidates, Matrix NMS among same-class masks
    (``config.nms == "matrix"``, gaussian sigma 2; or classic sequential mask NMS), keep decayed
    scores >= ``config.update_threshold``, the ``config.max_per_image`` best.

    ``found`` is :func:`grid_candidates`' output; returns ``probs``, ``labels`` and ``scores``
    of the instances kept, highest score first.
    """
    order = torch.argsort(found["scores"], descending=True)[: config.nms_pre]
    found = {k: v[order] for k, v in found.items()}
    if config.nms == "matrix":
        scores = matrix_nms(
            found["masks"],
            found["labels"],
            found["scores"],
            kernel=config.nms_kernel,
            sigma=config.nms_sigma,
            mask_areas=found.get("areas"),
        )
        keep = scores >= config.update_threshold
    else:
        keep_index = mask_nms(found["masks"], found["labels"], found["scores"], config.mask_nms_iou)
        scores = found["scores"]
        keep = torch.zeros_like(scores, dtype=torch.bool)
        keep[keep_index] = True
    scores = scores[keep]
    order = torch.argsort(scores, descending=True)[: config.max_per_image]
    return {
        "probs": found["probs"][keep][order],
        "labels": found["labels"][keep][order],
        "scores": scores[order],
    }


def masks_at_original_size(
    probs: torch.Tensor,
    image_size: tuple[int, int],
    original_size: tuple[int, int],
    threshold: float = 0.5,
) -> torch.Tensor:
    """Stride-4 mask probabilities ``[K, h, w]`` -> the padded input size ``(4h, 4w)`` -> crop
    the padding to ``image_size`` -> resize to ``original_size`` -> ``> threshold`` (bool)."""
    if probs.shape[0] == 0:
        return torch.zeros((0, *original_size), dtype=torch.bool, device=probs.device)
    h, w = probs.shape[-2:]
    full = F.interpolate(
        probs[None], size=(MASK_STRIDE * h, MASK_STRIDE * w), mode="bilinear", align_corners=False
    )
    full = full[:, :, : image_size[0], : image_size[1]]
    if tuple(original_size) != tuple(image_size):  # the image was resized: undo it
        full = F.interpolate(full, size=tuple(original_size), mode="bilinear", align_corners=False)
    return full[0] > threshold


# ------------------------------------------------------------------------------------------
# the loss and the batch inference, shared by SOLO, Decoupled SOLO and SOLOv2
# ------------------------------------------------------------------------------------------

#: ``(level, image, i, j) -> [P, h, w]`` mask probabilities of the cells ``(i, j)`` of the
#: images ``image`` (three ``Long[P]`` tensors): the one model-specific piece of the loss.
CellMaskProbs = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def grid_loss(
    category_logits: list[torch.Tensor], level_targets: list, cell_mask_probs: CellMaskProbs, config
) -> dict[str, torch.Tensor]:
    """``L = L_cate + lambda * L_mask`` (paper Eq. 1, lambda = ``config.mask_loss_weight`` = 3).

    ``L_cate`` is the focal loss over every cell of every level divided by (positives + 1);
    ``L_mask`` the Dice loss averaged over the positive cells, whose masks come from
    ``cell_mask_probs`` only for those cells (SOLO: their channels; SOLOv2: their kernels).
    Returns ``loss``, ``loss_cate``, ``loss_mask`` (before the weight) and ``num_positives``.
    """
    mask_probs, mask_targets = [], []
    for level, lt in enumerate(level_targets):
        grid = config.grids[level]
        image, cell = lt.positive_index // (grid * grid), lt.positive_index % (grid * grid)
        probs = cell_mask_probs(level, image, cell // grid, cell % grid)
        if probs.shape[-2:] != lt.masks.shape[-2:]:
            raise ValueError(
                f"level {level}: mask prediction {tuple(probs.shape[-2:])} and target "
                f"{tuple(lt.masks.shape[-2:])} differ; are the target masks at the padded "
                "input size?"
            )
        mask_probs.append(probs)
        mask_targets.append(lt.masks)
    num_positives = sum(lt.num_positives for lt in level_targets)
    loss_cate = solo_category_loss(
        category_logits,
        [lt.category for lt in level_targets],
        config.num_classes,
        num_positives,
        config.focal_gamma,
        config.focal_alpha,
    )
    loss_mask = solo_mask_loss(mask_probs, mask_targets)
    return {
        "loss": loss_cate + config.mask_loss_weight * loss_mask,
        "loss_cate": loss_cate,
        "loss_mask": loss_mask,
        "num_positives": torch.tensor(num_positives),
    }


@torch.no_grad()
def predict_batch(
    model: nn.Module,
    images: torch.Tensor,
    image_sizes=None,
    original_sizes=None,
) -> list[dict[str, torch.Tensor]]:
    """One forward pass (eval mode), then ``model.post_process`` per image: the ``predict``
    of every grid model. ``image_sizes`` are the sizes before padding (default: the padded
    size), ``original_sizes`` the sizes to return masks at (default: ``image_sizes``).

    The forward pass gets ``model.predict_forward_kwargs``: SOLO's are ``full_masks=False``,
    so that only the candidate cells' mask channels are computed (step 2 of
    :func:`grid_candidates`), not all S^2 of every level."""
    outputs, image_sizes, original_sizes = forward_for_inference(
        model, images, image_sizes, original_sizes, **getattr(model, "predict_forward_kwargs", {})
    )
    return [
        model.post_process(outputs, b, size, original)
        for b, (size, original) in enumerate(zip(image_sizes, original_sizes, strict=True))
    ]


__all__ = [
    "grid_loss",
    "predict_batch",
    "CategoryBranch",
    "CellMaskProbs",
    "MASK_STRIDE",
    "grid_candidates",
    "head_inputs",
    "init_head_convs",
    "masks_at_original_size",
    "prior_bias",
    "suppress_duplicates",
]

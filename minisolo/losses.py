"""SOLO's losses: sigmoid focal loss for the category branch, Dice loss for the masks.

Paper Eq. (1): ``L = L_cate + lambda * L_mask`` with ``lambda = 3``.

* ``L_cate`` is the focal loss (Lin et al., 2017) over every cell of every level and every
  class, summed and divided by ``number of positive cells + 1`` (the official normalisation).
* ``L_mask`` is the Dice loss (paper Eq. 3, with the official smoothing constants), averaged over
  all positive cells of the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, gamma: float = 2.0, alpha: float = 0.25
) -> torch.Tensor:
    """Per-element focal loss ``-alpha_t * (1 - p_t)^gamma * log(p_t)``.

    ``logits`` and ``targets`` (one-hot floats, 0 or 1) have the same shape; nothing is reduced.
    ``p_t = p`` where the target is 1 and ``1 - p`` where it is 0; ``alpha_t`` likewise is
    ``alpha`` or ``1 - alpha``.
    """
    if not isinstance(logits, torch.Tensor) or not isinstance(targets, torch.Tensor):
        raise ValueError("sigmoid_focal_loss expects two tensors")
    if logits.shape != targets.shape:
        raise ValueError(
            f"logits and targets must have the same shape, got {tuple(logits.shape)} and "
            f"{tuple(targets.shape)} (targets are one-hot, not class ids)"
        )
    if not logits.dtype.is_floating_point:
        raise ValueError(f"logits must be floating point, got {logits.dtype}")
    targets = targets.to(logits.dtype)
    probs = torch.sigmoid(logits)
    p_t = probs * targets + (1 - probs) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    cross_entropy = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return alpha_t * (1 - p_t).pow(gamma) * cross_entropy


def dice_loss(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-mask Dice loss ``1 - 2 sum(p q) / (sum(p^2) + 0.001 + sum(q^2) + 0.001)``.

    ``probs`` are mask probabilities (after the sigmoid) and ``targets`` binary masks, both
    ``[P, h, w]`` (any trailing shape); returns ``[P]``.
    """
    if not isinstance(probs, torch.Tensor) or not isinstance(targets, torch.Tensor):
        raise ValueError("dice_loss expects two tensors")
    if probs.shape != targets.shape:
        raise ValueError(
            f"probs and targets must have the same shape, got {tuple(probs.shape)} and "
            f"{tuple(targets.shape)}"
        )
    if probs.dim() < 1:
        raise ValueError("dice_loss expects [P, ...] tensors, got a scalar")
    if not probs.dtype.is_floating_point:
        raise ValueError(f"probs must be floating point probabilities, got {probs.dtype}")
    p = probs.flatten(start_dim=1)
    q = targets.flatten(start_dim=1).to(p.dtype)
    overlap = (p * q).sum(dim=1)
    p_energy = (p * p).sum(dim=1) + 0.001
    q_energy = (q * q).sum(dim=1) + 0.001
    return 1 - 2 * overlap / (p_energy + q_energy)


def solo_category_loss(
    category_logits: list[torch.Tensor],
    category_targets: list[torch.Tensor],
    num_classes: int,
    num_positives: int,
    gamma: float = 2.0,
    alpha: float = 0.25,
) -> torch.Tensor:
    """L_cate: focal loss over all cells of all levels, divided by (positives + 1).

    ``category_logits[l]`` is ``[B, C, S, S]``; ``category_targets[l]`` is ``Long[B, S, S]``
    with background ``C``.
    """
    logits = torch.cat([x.permute(0, 2, 3, 1).reshape(-1, num_classes) for x in category_logits])
    labels = torch.cat([t.reshape(-1) for t in category_targets])
    if labels.numel() and (labels.min() < 0 or labels.max() > num_classes):
        raise ValueError(f"category targets must lie in [0, {num_classes}] (C = background)")
    # one-hot with an extra background column, which is then dropped: background is all zeros
    one_hot = F.one_hot(labels, num_classes + 1)[:, :num_classes].to(logits.dtype)
    loss = sigmoid_focal_loss(logits.float(), one_hot.float(), gamma, alpha).sum()
    return loss / (num_positives + 1)


def solo_mask_loss(
    mask_probs: list[torch.Tensor], mask_targets: list[torch.Tensor]
) -> torch.Tensor:
    """L_mask: Dice loss averaged over all positive cells of all levels.

    ``mask_probs[l]`` and ``mask_targets[l]`` are ``[P_l, h_l, w_l]`` (levels differ in size).
    With no positive cell at all the loss is zero (with a gradient, so training goes on).
    """
    losses = [dice_loss(p.float(), t) for p, t in zip(mask_probs, mask_targets, strict=True)]
    losses = torch.cat(losses) if losses else torch.zeros(0)
    if losses.numel() == 0:
        return sum(p.sum() for p in mask_probs) * 0.0
    return losses.mean()

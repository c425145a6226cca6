"""SOLO and Decoupled SOLO: heads, the full model, its loss and its inference.

Paper: Wang et al., "SOLO: Segmenting Objects by Locations", ECCV 2020 (Fig. 2-4).

For every FPN level the head has two branches on the same features:

* **category branch**: the features are resized to S x S, go through a tower of
  conv-GN-ReLU blocks and a 3x3 conv to C channels: one class score per grid cell;
* **mask branch**: the features get two coordinate channels (CoordConv), go through a tower,
  are upsampled x2 and a 1x1 conv gives S^2 channels; channel ``k = i * S + j`` is the mask of
  the object whose centre falls in cell (i, j).

Decoupled SOLO (paper Sec. 3.5, Fig. 4) replaces the S^2 channels by two sets of S: an X
branch (columns, sees only the x coordinate) and a Y branch (rows, only y); the mask of cell
(i, j) is ``sigmoid(Y_i) * sigmoid(X_j)``.

What SOLOv2 shares with SOLO (the head inputs, the category branch, the inference recipe) lives
in :mod:`minisolo.grid_head`; this module holds only what is SOLO's own: the mask branches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import FPN, ResNet
from .config import SOLOConfig
from .grid_head import (
    CategoryBranch,
    grid_candidates,
    grid_loss,
    head_inputs,
    init_head_convs,
    masks_at_original_size,
    predict_batch,
    prior_bias,  # noqa: F401 (re-exported: minisolo.solo.prior_bias)
    suppress_duplicates,
)
from .layers import conv_gn_relu_tower, coord_features
from .targets import solo_targets_batch


class SOLOHead(nn.Module):
    """Vanilla SOLO head: towers shared over levels, one S^2-channel 1x1 conv per level."""

    def __init__(self, config: SOLOConfig) -> None:
        super().__init__()
        c = config.head_channels
        self.grids = tuple(config.grids)
        self.category_branch = CategoryBranch(config)
        # CoordConv: the first conv sees the features plus the two coordinate channels
        self.mask_tower = conv_gn_relu_tower(
            config.fpn_channels + 2, c, config.stacked_convs, config.num_groups
        )
        self.mask_outputs = nn.ModuleList(nn.Conv2d(c, s * s, 1) for s in self.grids)
        init_head_convs(self.mask_tower)
        init_head_convs(self.mask_outputs)

    def forward(
        self, features: list[torch.Tensor], full_masks: bool = True
    ) -> dict[str, list[torch.Tensor]]:
        """Per level: ``category`` ``[B, C, S, S]`` and ``mask`` ``[B, S*S, 2h, 2w]`` logits.

        With ``full_masks=False`` the head stops before the S^2-channel 1x1 conv and returns
        ``mask_features`` (the tower output ``[B, c, h, w]``) instead of ``mask``: training
        needs only the few channels of positive cells, and :meth:`cell_mask_logits` computes
        exactly those (same numbers, a fraction of the work).
        """
        category, masks, mask_features = [], [], []
        for level, (x, grid) in enumerate(zip(features, self.grids, strict=True)):
            m = self.mask_tower(torch.cat([x, coord_features(x)], dim=1))
            if full_masks:
                m = F.interpolate(m, scale_factor=2, mode="bilinear", align_corners=False)
                masks.append(self.mask_outputs[level](m))  # [B, S*S, 2h, 2w]
            else:
                mask_features.append(m)  # [B, c, h, w]
            category.append(self.category_branch(x, grid))  # [B, C, S, S]
        if full_masks:
            return {"category": category, "mask": masks}
        return {"category": category, "mask_features": mask_features}

    def cell_mask_logits(
        self,
        outputs: dict,
        level: int,
        image: torch.Tensor | int,
        rows: torch.Tensor,
        cols: torch.Tensor,
    ) -> torch.Tensor:
        """Mask logits ``[P, 2h, 2w]`` of cells (rows[p], cols[p]) in image(s) ``image``:
        channel ``k = i * S + j``, read from ``mask`` or computed from ``mask_features``."""
        channel = rows * self.grids[level] + cols
        if "mask" in outputs:
            return outputs["mask"][level][image, channel]
        features = outputs["mask_features"][level]
        if not torch.is_tensor(image):
            image = torch.full_like(channel, image)
        return self._selected_channels(features, level, image, channel)

    def _selected_channels(
        self, features: torch.Tensor, level: int, image: torch.Tensor, channel: torch.Tensor
    ) -> torch.Tensor:
        """Channels ``channel[p]`` of image ``image[p]`` without computing the other S^2 - P.

        A 1x1 conv is one matrix product per pixel, and the x2 bilinear upsampling is linear
        with weights that sum to 1, so ``conv(upsample(f)) == upsample(conv(f))``: we apply
        only the P needed rows of the conv weight to each image's features, then upsample.
        """
        conv = self.mask_outputs[level]
        order = torch.argsort(image, stable=True)  # group the cells image by image
        counts = torch.bincount(image[order], minlength=features.shape[0]).tolist()
        weights = conv.weight[channel[order], :, 0, 0].split(counts)  # [P_b, c] per image
        # the loss runs outside autocast, so under AMP the features may be bf16 / fp16: these
        # few channels are computed in the weight's fp32
        low = torch.cat(
            [
                torch.einsum("pc,chw->phw", w, f.to(w.dtype))
                for w, f in zip(weights, features, strict=True)
            ]
        )
        low = low + conv.bias[channel[order]][:, None, None]
        if low.shape[0] == 0:  # no cell asked for: an empty result, still in the autograd graph
            return low.new_zeros(0, 2 * low.shape[1], 2 * low.shape[2]) + low.sum()
        logits = F.interpolate(low[None], scale_factor=2, mode="bilinear", align_corners=False)
        return logits[0][torch.argsort(order)]  # back to the caller's order

    def cell_mask_probs(
        self,
        outputs: dict,
        level: int,
        image: torch.Tensor | int,
        rows: torch.Tensor,
        cols: torch.Tensor,
    ) -> torch.Tensor:
        return torch.sigmoid(self.cell_mask_logits(outputs, level, image, rows, cols))


class DecoupledSOLOHead(nn.Module):
    """Decoupled SOLO head: X and Y mask towers with S output channels each."""

    def __init__(self, config: SOLOConfig) -> None:
        super().__init__()
        c = config.head_channels
        self.grids = tuple(config.grids)
        self.category_branch = CategoryBranch(config)
        # each tower sees the features plus one coordinate: x for the X tower, y for the Y tower
        tower_args = (config.fpn_channels + 1, c, config.stacked_convs, config.num_groups)
        self.mask_tower_x = conv_gn_relu_tower(*tower_args)
        self.mask_tower_y = conv_gn_relu_tower(*tower_args)
        self.mask_outputs_x = nn.ModuleList(nn.Conv2d(c, s, 3, padding=1) for s in self.grids)
        self.mask_outputs_y = nn.ModuleList(nn.Conv2d(c, s, 3, padding=1) for s in self.grids)
        for module in (self.mask_tower_x, self.mask_tower_y):
            init_head_convs(module)
        for module in (self.mask_outputs_x, self.mask_outputs_y):
            init_head_convs(module)

    def forward(
        self, features: list[torch.Tensor], full_masks: bool = True
    ) -> dict[str, list[torch.Tensor]]:
        """``category``, ``mask_x`` and ``mask_y`` per level. The X/Y outputs have only 2 S
        channels, so they are always computed in full; ``full_masks`` is accepted for a
        uniform interface with :class:`SOLOHead`."""
        category, masks_x, masks_y = [], [], []
        for level, (x, grid) in enumerate(zip(features, self.grids, strict=True)):
            coords = coord_features(x)
            fx = self.mask_tower_x(torch.cat([x, coords[:, 0:1]], dim=1))
            fy = self.mask_tower_y(torch.cat([x, coords[:, 1:2]], dim=1))
            fx = F.interpolate(fx, scale_factor=2, mode="bilinear", align_corners=False)
            fy = F.interpolate(fy, scale_factor=2, mode="bilinear", align_corners=False)
            masks_x.append(self.mask_outputs_x[level](fx))  # [B, S, 2h, 2w]: column j
            masks_y.append(self.mask_outputs_y[level](fy))  # [B, S, 2h, 2w]: row i
            category.append(self.category_branch(x, grid))
        return {"category": category, "mask_x": masks_x, "mask_y": masks_y}

    def cell_mask_probs(
        self,
        outputs: dict,
        level: int,
        image: torch.Tensor | int,
        rows: torch.Tensor,
        cols: torch.Tensor,
    ) -> torch.Tensor:
        """Mask of cell (i, j) = sigmoid(Y_i) * sigmoid(X_j)."""
        y = torch.sigmoid(outputs["mask_y"][level][image, rows])
        x = torch.sigmoid(outputs["mask_x"][level][image, cols])
        return y * x


class SOLO(nn.Module):
    """SOLO: ResNet + FPN + SOLO head. ``forward`` returns raw logits per level;
    ``loss(outputs, targets)`` and ``predict(images)`` implement training and inference."""

    head_class: type[nn.Module] = SOLOHead
    model_kind = "solo"
    # what the training loop passes to forward: the loss needs only the positive cells' mask
    # channels, so training skips the other S^2 - P (see SOLOHead.forward)
    train_forward_kwargs: dict = {"full_masks": False}
    # and what predict passes: inference too needs only the candidate cells' channels (the
    # official code computes all S^2; the masks are the same, the work a fraction of it)
    predict_forward_kwargs: dict = {"full_masks": False}

    def __init__(self, config: SOLOConfig) -> None:
        super().__init__()
        if config.model != self.model_kind:
            config = dataclasses.replace(config, model=self.model_kind)
        self.config = config
        self.backbone = ResNet(
            config.backbone_depth, config.backbone_width, config.frozen_stages, config.norm_eval
        )
        self.fpn = FPN(self.backbone.out_channels, config.fpn_channels, num_outs=5)
        self.head = self.head_class(config)
        if len(config.grids) != 5:
            raise ValueError(f"SOLO uses five FPN levels; got {len(config.grids)} grids")

    # ----------------------------------------------------------------------------- forward
    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The five head inputs (strides 8, 8, 16, 32, 32) for a batch of padded images."""
        return head_inputs(self.fpn(self.backbone(images)))

    def forward(
        self, images: torch.Tensor, full_masks: bool = True
    ) -> dict[str, list[torch.Tensor]]:
        """Raw head outputs for padded images; ``full_masks=False`` is for training (see
        :meth:`SOLOHead.forward`): the loss then computes only the positive cells' masks."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        if images.shape[-2] % 32 or images.shape[-1] % 32:
            raise ValueError(
                f"image height and width must be multiples of 32 (pad them), got "
                f"{tuple(images.shape[-2:])}"
            )
        return self.head(self.features(images), full_masks=full_masks)

    # ----------------------------------------------------------------------------- loss
    def targets(self, targets: Sequence[dict]) -> list:
        """Grid targets for a batch of per-image dicts with ``masks`` and ``labels``."""
        cfg = self.config
        return solo_targets_batch(
            [t["masks"] for t in targets],
            [t["labels"] for t in targets],
            num_classes=cfg.num_classes,
            grids=cfg.grids,
            scale_ranges=cfg.scale_ranges,
            strides=cfg.strides,
            sigma=cfg.sigma,
            min_mask_area=cfg.min_mask_area,
        )

    def loss(self, outputs: dict, targets: Sequence[dict]) -> dict[str, torch.Tensor]:
        """``L = L_cate + 3 * L_mask`` (paper Eq. 1) for a batch.

        ``targets[b]`` holds ``masks`` (bool ``[N, H, W]`` at the padded input size) and
        ``labels`` (``Long[N]`` in ``[0, C)``). Returns ``loss``, ``loss_cate``, ``loss_mask``
        (the Dice mean before the x3 weight) and ``num_positives``.
        """
        cfg = self.config
        return grid_loss(
            outputs["category"],
            self.targets(targets),
            lambda level, image, i, j: self.head.cell_mask_probs(outputs, level, image, i, j),
            cfg,
        )

    # ----------------------------------------------------------------------------- inference
    @torch.no_grad()
    def predict(
        self,
        images: torch.Tensor,
        image_sizes: Sequence[tuple[int, int]] | None = None,
        original_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> list[dict[str, torch.Tensor]]:
        """Instances per image: ``masks`` (bool ``[K, h0, w0]`` at the original size),
        ``labels`` (``Long[K]``), ``scores`` (``[K]``), highest score first.

        ``images`` are normalised and padded ``[B, 3, H, W]``; ``image_sizes`` are the sizes
        before padding (default: the padded size) and ``original_sizes`` the sizes to return
        masks at (default: ``image_sizes``).
        """
        return predict_batch(self, images, image_sizes, original_sizes)

    def candidates(self, outputs: dict, image: int) -> dict[str, torch.Tensor]:
        """Steps 1-4 of the official inference (:func:`minisolo.grid_head.grid_candidates`):
        points NMS, score > 0.1, binary masks at stride 4, the small-mask filter and maskness
        rescoring. Nothing is suppressed yet."""
        mask_size = self._mask_size(outputs)

        def cell_mask_probs(level: int, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
            probs = self.head.cell_mask_probs(outputs, level, image, rows, cols).float()
            # all levels are compared at the stride-4 size of level 0 (official eval path)
            probs = F.interpolate(probs[None], size=mask_size, mode="bilinear", align_corners=False)
            return probs[0]

        return grid_candidates(outputs["category"], image, self.config, cell_mask_probs, mask_size)

    def post_process(
        self,
        outputs: dict,
        image: int,
        image_size: tuple[int, int],
        original_size: tuple[int, int],
    ) -> dict[str, torch.Tensor]:
        """The official inference recipe for image ``image`` of a batch's ``outputs``:
        :meth:`candidates`, then Matrix NMS and the top 100
        (:func:`minisolo.grid_head.suppress_duplicates`), masks at the original size."""
        kept = suppress_duplicates(self.candidates(outputs, image), self.config)
        return {
            "masks": self._to_original(kept["probs"], outputs, image_size, original_size),
            "labels": kept["labels"],
            "scores": kept["scores"],
        }

    def _mask_size(self, outputs: dict) -> tuple[int, int]:
        """Level 0's mask size (stride 4): the masks' own, or twice the tower output's."""
        if "mask_features" in outputs:
            height, width = outputs["mask_features"][0].shape[-2:]
            return (2 * height, 2 * width)
        key = "mask" if "mask" in outputs else "mask_x"
        return tuple(outputs[key][0].shape[-2:])

    def _to_original(
        self,
        probs: torch.Tensor,
        outputs: dict,
        image_size: tuple[int, int],
        original_size: tuple[int, int],
    ) -> torch.Tensor:
        """Stride-4 mask probabilities -> padded input size -> crop -> original size -> > 0.5."""
        return masks_at_original_size(probs, image_size, original_size, self.config.mask_threshold)


class DecoupledSOLO(SOLO):
    """Decoupled SOLO: the same model with the X/Y mask head (paper Sec. 3.5)."""

    head_class = DecoupledSOLOHead
    model_kind = "decoupled_solo"

"""SOLOv2: dynamic mask kernels, a shared mask feature map, and SOLO's grid everywhere else.

Paper: Wang et al., "SOLOv2: Dynamic and Fast Instance Segmentation", NeurIPS 2020 (Sec. 3,
Fig. 2); official code ``solov2_head.py`` and ``mask_feat_head.py`` in WXinlong/SOLO.

SOLO predicts the mask of grid cell ``k = i * S + j`` as output channel k of a per-level
S²-channel 1x1 conv: with S = 40 that is 1600 full-size masks per image, nearly all wasted.
SOLOv2 splits "mask" into *what* and *where*:

* **mask features** ``F`` (:class:`MaskFeatureBranch`): one ``[E, H/4, W/4]`` map per image,
  fused from FPN P2..P5, shared by every cell of every level;
* **mask kernels** (:class:`KernelBranch`): each cell predicts E numbers, the weights of a
  1x1 convolution. The mask of cell k is ``sigmoid(kernel_k * F)``
  (:func:`dynamic_conv`): the E-dimensional dot product of the kernel with ``F`` at every
  pixel. The 1x1 conv's weights are an *output* of the network: a dynamic convolution.

Only the cells that matter are ever turned into masks: the positive cells in training, the
cells above the score threshold at inference. The category branch, the label assignment
(:func:`minisolo.solo_targets`, with every level's mask target at stride 4), the losses
(focal + 3 x Dice) and the inference (points NMS, maskness, Matrix NMS) are SOLO's.

Official model zoo (COCO minival mask AP / ms per image): SOLOv2 R50 1x 34.8 / 54 ms, against
SOLO R50 1x 32.9 / 77 ms: better masks (stride 4 everywhere, one feature map learnt from all
levels), and faster (no S² channels).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import FPN, ResNet
from .config import SOLOv2Config
from .grid_head import (
    MASK_STRIDE,
    CategoryBranch,
    grid_candidates,
    grid_loss,
    head_inputs,
    init_head_convs,
    masks_at_original_size,
    predict_batch,
    suppress_duplicates,
)
from .layers import ConvGNReLU, conv_gn_relu_tower, coord_features, scale_gradient
from .targets import solo_targets_batch


def dynamic_conv(mask_features: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Mask logits ``[P, h, w]`` of P cells: their kernels ``[P, E]`` applied as 1x1
    convolutions (no bias) to one image's mask features ``[E, h, w]``.

    Pixel by pixel this is ``logits[p, y, x] = sum_e kernels[p, e] * mask_features[e, y, x]``:
    a 1x1 convolution is one matrix product ``[P, E] @ [E, h * w]``. The official code writes
    it as ``F.conv2d(features[None], kernels.view(P, E, 1, 1))``, the same numbers, except that
    ``conv2d`` refuses P = 0 (an image without positive cells), which the product allows.
    """
    if mask_features.dim() != 3 or kernels.dim() != 2:
        raise ValueError(
            f"dynamic_conv expects mask features [E, h, w] and kernels [P, E], got "
            f"{tuple(mask_features.shape)} and {tuple(kernels.shape)}"
        )
    if kernels.shape[1] != mask_features.shape[0]:
        raise ValueError(
            f"{kernels.shape[1]} kernel weights per cell, but {mask_features.shape[0]} "
            "mask feature channels: they must be the same E"
        )
    return torch.einsum("pe,ehw->phw", kernels, mask_features)


class KernelBranch(nn.Module):
    """Features + 2 coordinate channels -> bilinear resize to S x S -> conv-GN-ReLU tower ->
    3x3 conv to E: the E weights of cell (i, j)'s dynamic 1x1 kernel, at ``[:, :, i, j]``.

    The coordinates (CoordConv) are what let two cells that see the same object predict
    different kernels, hence masks at different places. No activation on the output; every
    conv starts from normal(std 0.01) (official ``init_weights``). The features are read
    through ``scale_gradient(x, config.mask_grad_to_backbone)``: the same numbers, but the
    gradient this branch sends into the shared FPN is scaled (see :class:`SOLOv2`).
    """

    def __init__(self, config: SOLOv2Config) -> None:
        super().__init__()
        self.mask_grad_to_backbone = config.mask_grad_to_backbone
        c = config.head_channels
        self.tower = conv_gn_relu_tower(
            config.fpn_channels + 2, c, config.stacked_convs, config.num_groups
        )
        self.kernel_conv = nn.Conv2d(c, config.kernel_channels, 3, padding=1)
        init_head_convs(self)

    def forward(self, features: torch.Tensor, grid: int) -> torch.Tensor:
        features = scale_gradient(features, self.mask_grad_to_backbone)
        # as the official head: the coordinates are added at the feature resolution, then
        # resized with the features (so they are the resized ramps, not linspace(-1, 1, S))
        x = torch.cat([features, coord_features(features)], dim=1)
        x = F.interpolate(x, size=(grid, grid), mode="bilinear", align_corners=False)
        return self.kernel_conv(self.tower(x))  # [B, E, S, S]


class MaskFeatureBranch(nn.Module):
    """FPN P2..P5 -> the shared mask features ``[B, E, H/4, W/4]`` (official
    ``MaskFeatHead``, paper Fig. 3).

    Level ``l`` (P2 = 0 .. P5 = 3) gets ``max(l, 1)`` conv-GN-ReLU blocks, each but P2's
    followed by a bilinear x2 upsampling, so that all four reach stride 4; the two coordinate
    channels are added only to P5's input (the coarsest level, where position is cheapest to
    encode). The four maps are summed, and a 1x1 conv-GN-ReLU maps them to E channels. Like
    the kernel branch, it reads the FPN through ``scale_gradient(x,
    config.mask_grad_to_backbone)``.
    """

    def __init__(self, config: SOLOv2Config) -> None:
        super().__init__()
        self.mask_grad_to_backbone = config.mask_grad_to_backbone
        fpn, c, groups = config.fpn_channels, config.mask_feature_channels, config.num_groups
        self.levels = nn.ModuleList()
        for level in range(4):
            blocks: list[nn.Module] = []
            for step in range(max(level, 1)):
                if step == 0:
                    in_channels = fpn + 2 if level == 3 else fpn
                else:
                    in_channels = c
                blocks.append(ConvGNReLU(in_channels, c, groups))
                if level > 0:
                    blocks.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.levels.append(nn.Sequential(*blocks))
        self.fuse = ConvGNReLU(c, config.kernel_channels, groups, kernel_size=1)
        init_head_convs(self)

    def forward(self, fpn_features: Sequence[torch.Tensor]) -> torch.Tensor:
        """``fpn_features``: P2..P5 (strides 4, 8, 16, 32); more levels are ignored."""
        total = None
        for level, (x, branch) in enumerate(zip(fpn_features[:4], self.levels, strict=True)):
            x = scale_gradient(x, self.mask_grad_to_backbone)
            if level == 3:
                x = torch.cat([x, coord_features(x)], dim=1)
            y = branch(x)
            total = y if total is None else total + y
        return self.fuse(total)


class SOLOv2Head(nn.Module):
    """The per-level part, weights shared over the levels: the category and kernel branches."""

    def __init__(self, config: SOLOv2Config) -> None:
        super().__init__()
        self.grids = tuple(config.grids)
        self.category_branch = CategoryBranch(config)
        self.kernel_branch = KernelBranch(config)

    def forward(self, features: list[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
        """Per level: ``category`` ``[B, C, S, S]`` logits and ``kernel`` ``[B, E, S, S]``."""
        category, kernel = [], []
        for x, grid in zip(features, self.grids, strict=True):
            category.append(self.category_branch(x, grid))
            kernel.append(self.kernel_branch(x, grid))
        return {"category": category, "kernel": kernel}


def cell_kernels(
    kernel: torch.Tensor, image: torch.Tensor | int, rows: torch.Tensor, cols: torch.Tensor
) -> torch.Tensor:
    """The kernels ``[P, E]`` of cells ``(rows[p], cols[p])`` of image(s) ``image`` from one
    level's kernel map ``[B, E, S, S]``."""
    return kernel.permute(0, 2, 3, 1)[image, rows, cols]


class SOLOv2(nn.Module):
    """SOLOv2: ResNet + FPN + the SOLOv2 head and mask feature branch.

    ``forward(images)`` returns ``category`` (per level ``[B, C, S, S]`` logits), ``kernel``
    (per level ``[B, E, S, S]``) and ``mask_features`` (``[B, E, H/4, W/4]``); the mask of
    cell ``(i, j)`` of image b is ``sigmoid(dynamic_conv(mask_features[b], kernel[b, :, i, j]))``.
    ``loss(outputs, targets)`` and ``predict(images)`` implement training and inference.

    ``config.mask_grad_to_backbone`` scales the gradient that the kernel and mask feature
    branches send back into the shared backbone and FPN (the forward pass does not change).
    The official recipe (1) starts from ImageNet weights; from scratch, the mask loss pushes
    the shared features about 4x as hard as the category loss (a predicted kernel multiplies
    unit-scale features, where SOLO's S²-channel conv starts at std 0.01), the backbone learns
    features for masks, and the classes lag. The tiny preset uses 0.03 (docs/results.md).
    """

    model_kind = "solov2"
    mask_stride = MASK_STRIDE  # every level's masks (and mask targets) are at stride 4
    # what the training loop passes to forward: nothing; the forward pass never builds masks
    # (the loss builds those of the positive cells only)
    train_forward_kwargs: dict = {}

    def __init__(self, config: SOLOv2Config) -> None:
        super().__init__()
        if not isinstance(config, SOLOv2Config):
            raise TypeError(
                f"SOLOv2 needs a SOLOv2Config, e.g. preset('tiny', model='solov2'); got "
                f"{type(config).__name__}"
            )
        if len(config.grids) != 5:
            raise ValueError(f"SOLOv2 uses five FPN levels; got {len(config.grids)} grids")
        self.config = config
        self.backbone = ResNet(
            config.backbone_depth, config.backbone_width, config.frozen_stages, config.norm_eval
        )
        self.fpn = FPN(self.backbone.out_channels, config.fpn_channels, num_outs=5)
        self.head = SOLOv2Head(config)
        self.mask_feature_branch = MaskFeatureBranch(config)

    # ----------------------------------------------------------------------------- forward
    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The five head inputs (strides 8, 8, 16, 32, 32) for a batch of padded images."""
        return head_inputs(self.fpn(self.backbone(images)))

    def forward(self, images: torch.Tensor) -> dict:
        """Raw outputs for padded images ``[B, 3, H, W]`` (H, W multiples of 32)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        if images.shape[-2] % 32 or images.shape[-1] % 32:
            raise ValueError(
                f"image height and width must be multiples of 32 (pad them), got "
                f"{tuple(images.shape[-2:])}"
            )
        fpn = self.fpn(self.backbone(images))  # P2..P6
        outputs = self.head(head_inputs(fpn))
        outputs["mask_features"] = self.mask_feature_branch(fpn[:4])  # from P2..P5
        return outputs

    def cell_mask_logits(
        self,
        outputs: dict,
        level: int,
        image: torch.Tensor | int,
        rows: torch.Tensor,
        cols: torch.Tensor,
    ) -> torch.Tensor:
        """Mask logits ``[P, H/4, W/4]`` of cells ``(rows[p], cols[p])`` of ``level`` in
        image(s) ``image``: the cells' kernels applied to their image's mask features, in
        float32 (under AMP the outputs may be bf16 / fp16; these few masks need not be)."""
        kernels = cell_kernels(outputs["kernel"][level], image, rows, cols).float()
        if not torch.is_tensor(image):
            return dynamic_conv(outputs["mask_features"][image].float(), kernels)
        features = outputs["mask_features"].float()
        order = torch.argsort(image, stable=True)  # group the cells image by image
        counts = torch.bincount(image[order], minlength=features.shape[0]).tolist()
        groups = kernels[order].split(counts)
        logits = torch.cat([dynamic_conv(f, k) for f, k in zip(features, groups, strict=True)])
        return logits[torch.argsort(order)]  # back to the caller's order

    def cell_mask_probs(
        self,
        outputs: dict,
        level: int,
        image: torch.Tensor | int,
        rows: torch.Tensor,
        cols: torch.Tensor,
    ) -> torch.Tensor:
        """``sigmoid`` of :meth:`cell_mask_logits`: the masks of the cells."""
        return torch.sigmoid(self.cell_mask_logits(outputs, level, image, rows, cols))

    # ----------------------------------------------------------------------------- loss
    def targets(self, targets: Sequence[dict]) -> list:
        """SOLO's grid targets for a batch, every level's mask targets at stride 4."""
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
            mask_stride=self.mask_stride,
        )

    def loss(self, outputs: dict, targets: Sequence[dict]) -> dict[str, torch.Tensor]:
        """``L = L_cate + 3 * L_mask`` for a batch, as SOLO's (paper Eq. 1).

        ``targets[b]`` holds ``masks`` (bool ``[N, H, W]`` at the padded input size) and
        ``labels`` (``Long[N]`` in ``[0, C)``). The dynamic convolution runs only for the
        positive cells: P masks, not S² per level. Returns ``loss``, ``loss_cate``,
        ``loss_mask`` (the Dice mean before the x3 weight) and ``num_positives``.
        """
        cfg = self.config
        return grid_loss(
            outputs["category"],
            self.targets(targets),
            lambda level, image, i, j: self.cell_mask_probs(outputs, level, image, i, j),
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
        points NMS, score > 0.1, the dynamic convolution for the kept cells only, binary masks
        (> 0.5) at stride 4, the small-mask filter and maskness rescoring."""
        mask_size = tuple(outputs["mask_features"].shape[-2:])

        def cell_mask_probs(level: int, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
            return self.cell_mask_probs(outputs, level, image, rows, cols)

        return grid_candidates(outputs["category"], image, self.config, cell_mask_probs, mask_size)

    def post_process(
        self,
        outputs: dict,
        image: int,
        image_size: tuple[int, int],
        original_size: tuple[int, int],
    ) -> dict[str, torch.Tensor]:
        """The official inference recipe for image ``image`` of a batch's ``outputs``:
        :meth:`candidates`, then top 500, Matrix NMS (gaussian, sigma 2), keep >= 0.05, top
        100 (:func:`minisolo.grid_head.suppress_duplicates`), masks at the original size."""
        kept = suppress_duplicates(self.candidates(outputs, image), self.config)
        masks = masks_at_original_size(
            kept["probs"], image_size, original_size, self.config.mask_threshold
        )
        return {"masks": masks, "labels": kept["labels"], "scores": kept["scores"]}


__all__ = [
    "KernelBranch",
    "MaskFeatureBranch",
    "SOLOv2",
    "SOLOv2Head",
    "cell_kernels",
    "dynamic_conv",
]

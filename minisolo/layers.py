"""Small building blocks: CoordConv, conv-GN-ReLU, and a gradient scaler.

SOLO's mask branch must know *where* it is looking: the mask for grid cell (i, j) is a
different output channel, so the same pattern at two places must give two different answers.
A plain convolution is translation-equivariant and cannot do that on its own. CoordConv
(Liu et al., 2018) fixes it by appending two channels that hold the normalised pixel
coordinates (SOLO paper, Sec. 3.3.2, "CoordConv").
"""

from __future__ import annotations

import torch
from torch import nn


def coord_features(x: torch.Tensor) -> torch.Tensor:
    """Return the two coordinate channels for a feature map ``x`` of shape ``[N, C, H, W]``.

    Channel 0 holds the x (column) coordinate and channel 1 the y (row) coordinate, each going
    linearly from -1 (left/top) to +1 (right/bottom), exactly as the official SOLO head builds
    them with ``torch.linspace(-1, 1, W)`` and ``torch.linspace(-1, 1, H)``.
    """
    if x.dim() != 4:
        raise ValueError(f"coord_features expects [N, C, H, W], got shape {tuple(x.shape)}")
    n, _, h, w = x.shape
    xs = torch.linspace(-1.0, 1.0, w, device=x.device, dtype=x.dtype)
    ys = torch.linspace(-1.0, 1.0, h, device=x.device, dtype=x.dtype)
    x_channel = xs.view(1, 1, 1, w).expand(n, 1, h, w)
    y_channel = ys.view(1, 1, h, 1).expand(n, 1, h, w)
    return torch.cat([x_channel, y_channel], dim=1)


class CoordConv2d(nn.Conv2d):
    """A ``Conv2d`` that first concatenates :func:`coord_features` to its input.

    ``in_channels`` is the number of channels of the input *without* the coordinates; the
    convolution itself sees ``in_channels + 2``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, **kwargs) -> None:
        super().__init__(in_channels + 2, out_channels, kernel_size, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.cat([x, coord_features(x)], dim=1))


class ConvGNReLU(nn.Sequential):
    """3x3 convolution, GroupNorm, ReLU: the unit of every SOLO head tower.

    The convolution has no bias because GroupNorm's affine shift plays that role.
    """

    def __init__(
        self, in_channels: int, out_channels: int, num_groups: int = 32, kernel_size: int = 3
    ) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.GroupNorm(num_groups, out_channels),
            nn.ReLU(inplace=True),
        )


def conv_gn_relu_tower(
    in_channels: int, channels: int, num_convs: int, num_groups: int = 32
) -> nn.Sequential:
    """``num_convs`` stacked :class:`ConvGNReLU` blocks, the first one mapping ``in_channels``."""
    blocks = [
        ConvGNReLU(in_channels if k == 0 else channels, channels, num_groups)
        for k in range(num_convs)
    ]
    return nn.Sequential(*blocks)


class _ScaleGradient(torch.autograd.Function):
    """Identity in the forward pass; multiplies the gradient by ``factor`` in the backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.factor, None


def scale_gradient(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``x`` unchanged, but the gradient that flows back through it is multiplied by
    ``factor``: 1 is a no-op, 0 is ``x.detach()``.

    A branch that reads shared features through ``scale_gradient(features, 0.1)`` still
    learns at full speed itself; it only pushes the shared features a tenth as hard.
    """
    if factor == 1.0:
        return x
    if factor == 0.0:
        return x.detach()
    return _ScaleGradient.apply(x, factor)

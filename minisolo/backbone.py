"""ResNet-18/34/50 and a Feature Pyramid Network (FPN), written out by hand.

The ResNet here mirrors torchvision's module names one for one (``conv1``, ``bn1``,
``layer1.0.conv1``, ``layer1.0.downsample.0`` ...) so a torchvision ImageNet checkpoint such as
``resnet50-0676ba61.pth`` loads with :func:`load_torchvision_weights` without renaming. The
classifier (``fc``) is left out: SOLO only needs the feature maps C2..C5.

The FPN (Lin et al., 2017) turns C2..C5 into P2..P6, all with the same number of channels.
P6 is a stride-2 subsample of P5, as in the official SOLO configuration (mmdetection's FPN
with ``num_outs=5`` and no extra convolutions).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_channels, channels * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride, "ResNet v1.5"), 1x1 expand x4 (ResNet-50)."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, channels * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_channels, channels * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Sequential | None:
    """The projection shortcut (``downsample.0`` conv, ``downsample.1`` BN) when shapes change."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


RESNET_LAYOUTS = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}


class ResNet(nn.Module):
    """ResNet returning the four stage outputs C2, C3, C4, C5 (strides 4, 8, 16, 32).

    Args:
        depth: 18, 34, 50 or 101.
        width: channels of the stem and first stage; 64 is torchvision's ResNet. A smaller
            width (e.g. 32) gives a small network for CPU training; its keys are unchanged.
        frozen_stages: -1 trains everything; 0 freezes the stem (conv1, bn1); k >= 1 also
            freezes ``layer1`` .. ``layer{k}`` (official SOLO uses 1 with ImageNet weights).
        norm_eval: keep every BatchNorm in eval mode (frozen statistics) while training, as
            the official configs do with small per-GPU batches and pretrained weights.
    """

    def __init__(
        self, depth: int = 50, width: int = 64, frozen_stages: int = -1, norm_eval: bool = False
    ) -> None:
        super().__init__()
        if depth not in RESNET_LAYOUTS:
            raise ValueError(f"ResNet depth must be one of {sorted(RESNET_LAYOUTS)}, got {depth}")
        block, blocks_per_stage = RESNET_LAYOUTS[depth]
        self.depth = depth
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_channels = width
        self.out_channels: list[int] = []
        for stage, num_blocks in enumerate(blocks_per_stage):
            channels = width * 2**stage
            stride = 1 if stage == 0 else 2
            blocks = []
            for b in range(num_blocks):
                blocks.append(block(in_channels, channels, stride if b == 0 else 1))
                in_channels = channels * block.expansion
            self.add_module(f"layer{stage + 1}", nn.Sequential(*blocks))
            self.out_channels.append(in_channels)
        self._init_weights()
        self._freeze()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # Zero-init the last BN of each residual branch: every block starts as the identity,
        # which makes training from scratch noticeably more stable.
        for m in self.modules():
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)
            elif isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        modules: list[nn.Module] = [self.conv1, self.bn1]
        modules += [getattr(self, f"layer{k}") for k in range(1, self.frozen_stages + 1)]
        return modules

    def _freeze(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            for p in module.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> ResNet:
        super().train(mode)
        self._freeze()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        features = []
        for k in range(1, 5):
            x = getattr(self, f"layer{k}")(x)
            features.append(x)
        return features


def load_torchvision_weights(backbone: ResNet, path: str | Path) -> list[str]:
    """Load a torchvision ImageNet ``.pth`` (e.g. ``resnet50-0676ba61.pth``) into ``backbone``.

    ``path`` may also be ``"imagenet"``: torchvision's file for the backbone's depth, from the
    cache of :mod:`minisolo.weights` (downloaded there once, hash-checked).
    The classifier keys ``fc.weight`` / ``fc.bias`` are dropped. Every other key must match
    exactly; a missing or unexpected key raises a ``ValueError`` naming the file and the keys.
    Returns the list of keys that were ignored.
    """
    if str(path) == "imagenet":
        from .weights import resolve_backbone_weights

        width = backbone.conv1.out_channels
        if width != 64:  # say so before downloading ~100 MB that cannot fit
            raise ValueError(
                f"ImageNet weights are for full-width ResNets (64 stem channels); this "
                f"ResNet-{backbone.depth} has {width} (the tiny presets): use a paper preset "
                "or backbone_width=64"
            )
        path = resolve_backbone_weights(path, backbone.depth)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or non-torch file
        raise ValueError(f"{path}: cannot be read as a PyTorch state dict ({error})") from error
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    ignored = [k for k in state if k.startswith("fc.")]
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = backbone.state_dict()
    # Older torchvision files lack BatchNorm's ``num_batches_tracked``; PyTorch fills it in.
    missing = sorted(k for k in set(own) - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong_shape:
        raise ValueError(
            f"{path}: does not fit ResNet-{backbone.depth}: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}, "
            f"wrong shape {wrong_shape[:5]}"
        )
    backbone.load_state_dict(state, strict=True)
    backbone._freeze()
    return ignored


class FPN(nn.Module):
    """Feature Pyramid Network: C2..C5 -> P2..P6, all with ``out_channels`` channels.

    lateral 1x1 conv on each C, top-down pathway (nearest x2 upsample and add), a 3x3 conv on
    each merged map, and P6 = P5 subsampled with stride 2 (max-pool of kernel 1).
    """

    def __init__(self, in_channels: list[int], out_channels: int = 256, num_outs: int = 5) -> None:
        super().__init__()
        self.num_outs = num_outs
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.fpn_convs = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, features, strict=True)]
        for k in range(len(laterals) - 1, 0, -1):  # top-down: P5 -> P2
            laterals[k - 1] = laterals[k - 1] + F.interpolate(
                laterals[k], size=laterals[k - 1].shape[-2:], mode="nearest"
            )
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals, strict=True)]
        while len(outs) < self.num_outs:
            outs.append(F.max_pool2d(outs[-1], 1, stride=2))
        return outs

"""Configurations as plain dataclasses, and named presets.

One flat dataclass per model keeps every hyperparameter in sight. ``preset("paper")`` is the
official SOLO R50 1x setting (SOLO paper, Sec. 4 and the official config
``solo_r50_fpn_8gpu_1x.py``); ``preset("tiny")`` is a small model that trains on a 2-core CPU
in minutes on the synthetic shapes data.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SOLOConfig:
    """Everything that defines a SOLO / Decoupled SOLO model and how it is trained."""

    model: str = "solo"  # "solo" or "decoupled_solo"
    num_classes: int = 80
    class_names: tuple[str, ...] = ()

    # Backbone (ResNet) and FPN.
    backbone_depth: int = 50
    backbone_width: int = 64
    frozen_stages: int = 1  # stem + layer1 frozen, as with ImageNet weights in the paper
    norm_eval: bool = True  # BatchNorm statistics frozen
    fpn_channels: int = 256

    # Head (Sec. 3.3 of the paper).
    head_channels: int = 256
    stacked_convs: int = 7
    num_groups: int = 32  # GroupNorm groups
    grids: tuple[int, ...] = (40, 36, 24, 16, 12)
    strides: tuple[int, ...] = (8, 8, 16, 32, 32)  # head-input strides; masks at stride / 2
    scale_ranges: tuple[tuple[float, float], ...] = (
        (1, 96),
        (48, 192),
        (96, 384),
        (192, 768),
        (384, 2048),
    )
    sigma: float = 0.2  # the centre-region scale epsilon
    min_mask_area: int = 10  # official: GT masks under 10 pixels assign nothing

    # Losses: L = L_cate + mask_loss_weight * L_mask (Eq. 1, lambda = 3).
    focal_gamma: float = 2.0
    focal_alpha: float = 0.25
    mask_loss_weight: float = 3.0

    # Inference (official test_cfg).
    score_threshold: float = 0.1
    mask_threshold: float = 0.5
    nms_pre: int = 500
    nms: str = "matrix"  # "matrix" or "mask" (sequential)
    nms_kernel: str = "gaussian"  # "gaussian" or "linear"
    nms_sigma: float = 2.0
    mask_nms_iou: float = 0.5
    update_threshold: float = 0.05
    max_per_image: int = 100

    # Data and training (paper 1x schedule).
    image_short_side: int | tuple[int, ...] = 800
    image_max_size: int = 1333
    flip_probability: float = 0.5
    batch_size: int = 16
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    grad_clip: float = 35.0
    warmup_iters: int = 500
    warmup_ratio: float = 1.0 / 3.0
    epochs: int = 12
    lr_steps: tuple[int, ...] = (9, 11)  # lr x 0.1 after these epochs

    def __post_init__(self) -> None:
        n = len(self.grids)
        if not (len(self.strides) == len(self.scale_ranges) == n):
            raise ValueError(
                f"grids, strides and scale_ranges need one entry per level: got {len(self.grids)},"
                f" {len(self.strides)} and {len(self.scale_ranges)}"
            )
        if self.model not in ("solo", "decoupled_solo"):
            raise ValueError(f"model must be 'solo' or 'decoupled_solo', got {self.model!r}")
        if self.nms not in ("matrix", "mask"):
            raise ValueError(f"nms must be 'matrix' or 'mask', got {self.nms!r}")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"{len(self.class_names)} class_names given for num_classes={self.num_classes}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _tiny_solo() -> dict[str, Any]:
    """A small SOLO for 256-px images on a CPU: half-width ResNet-18, 64-channel head."""
    return dict(
        backbone_depth=18,
        backbone_width=32,
        frozen_stages=-1,  # trained from scratch: nothing to freeze
        norm_eval=False,
        fpn_channels=64,
        head_channels=64,
        stacked_convs=3,
        num_groups=16,
        grids=(24, 20, 16, 12, 8),
        strides=(8, 8, 16, 32, 32),
        # the paper's ranges scaled to a 256-px input (800 -> 256 is about x0.32)
        scale_ranges=((1, 32), (16, 64), (32, 128), (64, 256), (128, 512)),
        image_short_side=256,
        image_max_size=256,
        batch_size=8,
        lr=0.02,
        warmup_iters=100,
        epochs=12,
        lr_steps=(9, 11),
    )


PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "tiny": _tiny_solo(),
}


def _from_dict(cls: type, values: dict[str, Any]) -> Any:
    """Build a dataclass from a dict, turning JSON lists back into tuples."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {unknown}")
    fixed = {}
    for key, value in values.items():
        if isinstance(value, list):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        fixed[key] = value
    return cls(**fixed)


CONFIG_CLASSES: dict[str, type] = {"solo": SOLOConfig, "decoupled_solo": SOLOConfig}
MODEL_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "solo": PRESETS,
    "decoupled_solo": PRESETS,
}


def preset(name: str, model: str = "solo", **overrides: Any):
    """Return the named preset (``"tiny"`` or ``"paper"``) for ``model``, with overrides.

    >>> preset("tiny", num_classes=3).grids
    (24, 20, 16, 12, 8)
    """
    if model not in MODEL_PRESETS:
        raise ValueError(f"unknown model {model!r}; choose from {sorted(MODEL_PRESETS)}")
    presets = MODEL_PRESETS[model]
    if name not in presets:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(presets)}")
    values = dict(presets[name])
    if model in ("solo", "decoupled_solo"):
        values["model"] = model
    values.update(overrides)
    return _from_dict(CONFIG_CLASSES[model], values)


def config_from_dict(values: dict[str, Any]):
    """Rebuild a config saved with ``to_dict()`` (e.g. from a checkpoint)."""
    model = values.get("model", "solo")
    if model not in CONFIG_CLASSES:
        raise ValueError(f"unknown model kind {model!r} in config")
    return _from_dict(CONFIG_CLASSES[model], values)


__all__ = ["SOLOConfig", "preset", "config_from_dict", "PRESETS", "field"]

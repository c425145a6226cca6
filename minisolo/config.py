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
    optimizer: str = "sgd"  # "sgd" (paper) or "adamw" (tiny preset: from scratch on a CPU)
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    grad_clip: float = 35.0
    warmup_iters: int = 500
    warmup_ratio: float = 1.0 / 3.0
    epochs: int = 12
    lr_steps: tuple[int, ...] = (9, 11)  # lr x 0.1 after these epochs
    lr_schedule: str = "step"  # "step" (paper: lr_steps) or "cosine" (minisolo demo)

    def __post_init__(self) -> None:
        n = len(self.grids)
        if not (len(self.strides) == len(self.scale_ranges) == n):
            raise ValueError(
                f"grids, strides and scale_ranges need one entry per level: got {len(self.grids)},"
                f" {len(self.strides)} and {len(self.scale_ranges)}"
            )
        if self.model not in ("solo", "decoupled_solo"):
            raise ValueError(f"model must be 'solo' or 'decoupled_solo', got {self.model!r}")
        if self.lr_schedule not in ("step", "cosine"):
            raise ValueError(f"lr_schedule must be 'step' or 'cosine', got {self.lr_schedule!r}")
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
        grids=(16, 14, 10, 8, 6),  # about the paper's cell size at 256 px, a bit finer
        strides=(8, 8, 16, 32, 32),
        # the paper's ranges scaled to a 256-px input (800 -> 256 is about x0.32)
        scale_ranges=((1, 32), (16, 64), (32, 128), (64, 256), (128, 512)),
        image_short_side=256,
        image_max_size=256,
        batch_size=8,
        # From scratch on a CPU, AdamW reaches in 250 iterations the loss SGD reaches in 850
        # (docs/results.md); the paper preset keeps the paper's SGD.
        optimizer="adamw",
        lr=0.002,
        weight_decay=0.05,
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


@dataclass
class YOLACTConfig:
    """Everything that defines a YOLACT model and how it is trained (official YOLACT-550).

    Defaults follow ``yolact_base_config`` / ``yolact_resnet50_config`` of the official code
    (Bolya et al., ICCV 2019). The training fields carry the same names as
    :class:`SOLOConfig` so one training loop reads both.
    """

    model: str = "yolact"
    num_classes: int = 80  # foreground classes; the class head predicts num_classes + 1
    class_names: tuple[str, ...] = ()

    # Backbone (ResNet) and FPN P3..P7 (P6, P7 from stride-2 3x3 convs).
    backbone_depth: int = 50  # the released models: 50 (yolact_resnet50) or 101 (yolact_base)
    backbone_width: int = 64
    frozen_stages: int = -1  # official YOLACT trains the whole backbone
    norm_eval: bool = False  # batch 8 on one GPU: BatchNorm is trained (train.py)
    fpn_channels: int = 256

    # Protonet (Sec. 3.2) and prediction head (Sec. 3.3).
    proto_channels: int = 256
    num_prototypes: int = 32  # k
    head_channels: int = 256  # the shared extra 3x3 conv ("upfeature")

    # Anchors (priors): one scale per level, three aspect ratios, square by the kept bug flag.
    image_size: int = 550  # images are squashed to image_size x image_size
    anchor_scales: tuple[float, ...] = (24, 48, 96, 192, 384)
    aspect_ratios: tuple[float, ...] = (1.0, 0.5, 2.0)
    square_anchors: bool = True  # use_square_anchors=True in every released config

    # Matching and losses (multibox_loss.py).
    positive_iou: float = 0.5
    negative_iou: float = 0.4
    crowd_iou: float = 0.7
    negpos_ratio: int = 3  # OHEM: negatives per positive
    masks_to_train: int = 100  # at most this many positive priors per image in the mask loss
    discard_box_size: float = 4 / 550  # GTs narrower or shorter than this (relative) are dropped
    class_loss_weight: float = 1.0
    box_loss_weight: float = 1.5
    mask_loss_weight: float = 6.125
    semantic_loss_weight: float = 1.0

    # Inference (Detect with Fast NMS).
    score_threshold: float = 0.05  # a prior is a candidate if its best class score exceeds this
    nms_iou: float = 0.5
    nms_top_k: int = 200  # per class
    second_threshold: bool = False  # official default: no score filter after Fast NMS
    max_per_image: int = 100
    mask_threshold: float = 0.5

    # Data and training (official: 800k iterations at batch 8 = about 54 COCO epochs; lr x0.1 at
    # iterations 280k, 600k, 700k, 750k, i.e. after epochs 19, 41, 47, 51).
    image_short_side: int | None = None  # mirrors image_size (set in __post_init__)
    image_max_size: int | None = None  # mirrors image_size (set in __post_init__)
    flip_probability: float = 0.5
    batch_size: int = 8
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    grad_clip: float | None = None  # the official code does not clip gradients
    warmup_iters: int = 500
    warmup_ratio: float = 0.1  # lr_warmup_init 1e-4 = 0.1 x lr
    epochs: int = 54
    lr_steps: tuple[int, ...] = (19, 41, 47, 51)
    lr_schedule: str = "step"  # "step" (official) or "cosine"

    def __post_init__(self) -> None:
        if self.model != "yolact":
            raise ValueError(f"YOLACTConfig.model must be 'yolact', got {self.model!r}")
        if len(self.anchor_scales) != 5:
            raise ValueError(
                f"YOLACT uses five levels P3..P7; got {len(self.anchor_scales)} anchor scales"
            )
        if not 0 <= self.negative_iou <= self.positive_iou <= 1:
            raise ValueError("need 0 <= negative_iou <= positive_iou <= 1")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"{len(self.class_names)} class_names given for num_classes={self.num_classes}"
            )
        # YOLACT squashes every image to a square: the SOLO-style resize fields mirror it.
        self.image_short_side = self.image_size
        self.image_max_size = self.image_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _tiny_yolact() -> dict[str, Any]:
    """A small YOLACT for 256-px images on a CPU: half-width ResNet-18, 64-channel FPN/heads."""
    return dict(
        backbone_depth=18,
        backbone_width=32,
        frozen_stages=-1,
        norm_eval=False,
        fpn_channels=64,
        proto_channels=64,
        num_prototypes=16,
        head_channels=64,
        image_size=256,
        # the paper's scales times 256 / 550, rounded
        anchor_scales=(12, 24, 48, 96, 192),
        batch_size=8,
        lr=1e-3,
        grad_clip=10.0,  # from-scratch training on a CPU: clip for stability
        warmup_iters=100,
        warmup_ratio=0.1,
        epochs=12,
        lr_steps=(9, 11),
    )


YOLACT_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "tiny": _tiny_yolact(),
}


CONFIG_CLASSES: dict[str, type] = {
    "solo": SOLOConfig,
    "decoupled_solo": SOLOConfig,
    "yolact": YOLACTConfig,
}
MODEL_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "solo": PRESETS,
    "decoupled_solo": PRESETS,
    "yolact": YOLACT_PRESETS,
}


def preset(name: str, model: str = "solo", **overrides: Any):
    """Return the named preset (``"tiny"`` or ``"paper"``) for ``model``, with overrides.

    >>> preset("tiny", num_classes=3).grids
    (16, 14, 10, 8, 6)
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


__all__ = ["SOLOConfig", "YOLACTConfig", "preset", "config_from_dict", "PRESETS", "field"]

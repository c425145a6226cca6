"""Configurations as plain dataclasses, and named presets.

One flat dataclass per model keeps every hyperparameter in sight. ``preset("paper")`` is the
official SOLO R50 1x setting (SOLO paper, Sec. 4 and the official config
``solo_r50_fpn_8gpu_1x.py``); ``preset("tiny")`` is a small model that trains on a 2-core CPU
in minutes on the synthetic shapes data. ``preset(name, model="solov2")`` and
``preset(name, model="yolact")`` are the same two for SOLOv2 (:class:`SOLOv2Config`, official
``solov2_r50_fpn_8gpu_1x.py``) and YOLACT (:class:`YOLACTConfig`).

``load_config`` and ``parse_overrides`` turn what a user types (a preset name or a JSON file,
``key=value`` strings) into a config, each value checked against the field's type annotation.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import json
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The mixed-precision choices of training (``minisolo.engine.autocast_dtype``, ``--amp``).
AMP_CHOICES = ("auto", "bf16", "fp16", "off")


@dataclass(slots=True)
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
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
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


@dataclass(slots=True)
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
    optimizer: str = "sgd"  # "sgd" (official) or "adamw" (tiny preset: from scratch on a CPU)
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
        if self.lr_schedule not in ("step", "cosine"):
            raise ValueError(f"lr_schedule must be 'step' or 'cosine', got {self.lr_schedule!r}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
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
    """A small YOLACT for 256-px images on a CPU: half-width ResNet-18, 64-channel FPN/heads.

    Trained from scratch, so the recipe differs from the official one (which fine-tunes an
    ImageNet backbone with SGD at lr 1e-3 for 800k iterations); docs/results.md has the runs:

    * the anchors keep the official **pixel** scales 24..384: the strides do not shrink with
      the image, so scaling the anchors by 256/550 (12..192) halved anchor side / stride and
      left 1.7 positive priors per object instead of about 7;
    * AdamW (lr 2e-3, weight decay 0.05) with a cosine schedule, like the tiny SOLO: with SGD
      at the official lr 1e-3 the model learns next to nothing in a CPU budget;
    * no gradient clipping, as the official code (clipping at 10 cut every step to 10-15 %).
    """
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
        anchor_scales=(24, 48, 96, 192, 384),  # the official pixel scales (see above)
        batch_size=8,
        optimizer="adamw",
        lr=2e-3,
        weight_decay=0.05,
        lr_schedule="cosine",
        grad_clip=None,
        warmup_iters=100,
        warmup_ratio=0.1,
        epochs=12,
        lr_steps=(9, 11),
    )


YOLACT_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "tiny": _tiny_yolact(),
}


@dataclass(slots=True)
class SOLOv2Config:
    """Everything that defines a SOLOv2 model and how it is trained (official R50 1x).

    Defaults follow ``solov2_r50_fpn_8gpu_1x.py`` of the official code (Wang et al., "SOLOv2:
    Dynamic and Fast Instance Segmentation", NeurIPS 2020): the backbone, FPN, grids, strides,
    scale ranges, losses and inference are SOLO's (:class:`SOLOConfig`, same field names, so
    one training loop and one inference recipe read both); the head differs. Official model
    zoo, COCO minival mask AP / ms per image: R50 1x 34.8 / 54 (SOLO R50 1x: 32.9 / 77).
    """

    model: str = "solov2"
    num_classes: int = 80
    class_names: tuple[str, ...] = ()

    # Backbone (ResNet) and FPN, as SOLO.
    backbone_depth: int = 50
    backbone_width: int = 64
    frozen_stages: int = 1
    norm_eval: bool = True
    fpn_channels: int = 256

    # Head: the kernel and category branches share these (seg_feat_channels, stacked_convs).
    head_channels: int = 512
    stacked_convs: int = 4
    num_groups: int = 32  # GroupNorm groups, in the head and the mask feature branch
    kernel_channels: int = 256  # E: each cell's dynamic 1x1 kernel (ins_out_channels)
    mask_feature_channels: int = 128  # width of the mask feature branch before its 1x1 to E
    # The factor on the gradient that the mask path (kernel branch, mask feature branch) sends
    # back into the shared backbone and FPN; 1 = official. The category branch's is never scaled.
    mask_grad_to_backbone: float = 1.0
    grids: tuple[int, ...] = (40, 36, 24, 16, 12)
    strides: tuple[int, ...] = (8, 8, 16, 32, 32)  # head-input strides; every mask at stride 4
    scale_ranges: tuple[tuple[float, float], ...] = (
        (1, 96),
        (48, 192),
        (96, 384),
        (192, 768),
        (384, 2048),
    )
    sigma: float = 0.2
    min_mask_area: int = 1  # official SOLOv2 skips only empty GT masks (SOLO: under 10 pixels)

    # Losses: L = L_cate + mask_loss_weight * L_mask, as SOLO.
    focal_gamma: float = 2.0
    focal_alpha: float = 0.25
    mask_loss_weight: float = 3.0

    # Inference (official test_cfg), as SOLO.
    score_threshold: float = 0.1
    mask_threshold: float = 0.5
    nms_pre: int = 500
    nms: str = "matrix"  # "matrix" or "mask" (sequential)
    nms_kernel: str = "gaussian"
    nms_sigma: float = 2.0
    mask_nms_iou: float = 0.5
    update_threshold: float = 0.05
    max_per_image: int = 100

    # Data and training (1x schedule; warm-up from lr x 0.01, where SOLO starts at lr / 3).
    image_short_side: int | tuple[int, ...] = 800
    image_max_size: int = 1333
    flip_probability: float = 0.5
    batch_size: int = 16
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    grad_clip: float = 35.0
    warmup_iters: int = 500
    warmup_ratio: float = 0.01
    epochs: int = 12
    lr_steps: tuple[int, ...] = (9, 11)
    lr_schedule: str = "step"

    def __post_init__(self) -> None:
        n = len(self.grids)
        if not (len(self.strides) == len(self.scale_ranges) == n):
            raise ValueError(
                f"grids, strides and scale_ranges need one entry per level: got {len(self.grids)},"
                f" {len(self.strides)} and {len(self.scale_ranges)}"
            )
        if self.model != "solov2":
            raise ValueError(f"SOLOv2Config.model must be 'solov2', got {self.model!r}")
        if not 0.0 <= self.mask_grad_to_backbone <= 1.0:
            raise ValueError(
                f"mask_grad_to_backbone must lie in [0, 1], got {self.mask_grad_to_backbone!r}"
            )
        if self.lr_schedule not in ("step", "cosine"):
            raise ValueError(f"lr_schedule must be 'step' or 'cosine', got {self.lr_schedule!r}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.nms not in ("matrix", "mask"):
            raise ValueError(f"nms must be 'matrix' or 'mask', got {self.nms!r}")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"{len(self.class_names)} class_names given for num_classes={self.num_classes}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _tiny_solov2() -> dict[str, Any]:
    """A small SOLOv2 for 256-px images on a CPU: the tiny SOLO's backbone, FPN, grids, scale
    ranges and optimiser (but SOLOv2's warm-up), with a small SOLOv2 head (E = 64 = the FPN
    width, as the paper's E = 256) whose mask path pushes the shared backbone only gently."""
    return dict(
        backbone_depth=18,
        backbone_width=32,
        frozen_stages=-1,
        norm_eval=False,
        fpn_channels=64,
        head_channels=64,
        stacked_convs=3,  # as the tiny SOLO's towers
        num_groups=16,
        kernel_channels=64,
        # Trained from scratch, the mask loss's gradient into the shared backbone is 4x the
        # category loss's and the classes never catch up (mask AP 0.227 at the demo's budget);
        # scaled by 0.03 the backbone learns the classes, and the mask feature branch, which
        # must then build the mask features itself, needs E channels, not the paper's E / 2
        # (docs/results.md, "The cause, and the fix").
        mask_grad_to_backbone=0.03,
        mask_feature_channels=64,
        grids=(16, 14, 10, 8, 6),
        strides=(8, 8, 16, 32, 32),
        scale_ranges=((1, 32), (16, 64), (32, 128), (64, 256), (128, 512)),
        image_short_side=256,
        image_max_size=256,
        batch_size=8,
        optimizer="adamw",
        lr=0.002,
        weight_decay=0.05,
        warmup_iters=100,
        # the official SOLOv2 warm-up from lr x 0.01, not the tiny SOLO's lr / 3: early large
        # steps saturate some cells' kernels for good (docs/results.md: at 400 iterations on
        # the demo shapes mask AP 0.124 / 0.120 against 0.099 / 0.072 with lr / 3, two seeds)
        warmup_ratio=0.01,
        epochs=12,
        lr_steps=(9, 11),
    )


SOLOV2_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "tiny": _tiny_solov2(),
}


CONFIG_CLASSES: dict[str, type] = {
    "solo": SOLOConfig,
    "decoupled_solo": SOLOConfig,
    "solov2": SOLOv2Config,
    "yolact": YOLACTConfig,
}
MODEL_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "solo": PRESETS,
    "decoupled_solo": PRESETS,
    "solov2": SOLOV2_PRESETS,
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


# ---- settings from the command line or a JSON file ----------------------------------------
class ConfigError(ValueError):
    """A configuration that cannot be built as asked: an unknown preset, file or key, a value
    of the wrong type, or one that ``__post_init__`` refuses. ``minisolo`` prints it on one
    line and exits with code 2."""


_BOOLEANS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


class _Mismatch(Exception):
    """A value that does not fit a type (turned into a :class:`ConfigError` by the caller)."""


def _coerce(value: Any, kind: Any) -> Any:
    """``value`` (a JSON or Python literal) as the type ``kind``, or :class:`_Mismatch`.

    An int is a float too (as in Python's typing) and stays as written; lists become tuples;
    a union takes the first type that fits (``int | tuple[int, ...]``: 800 or [640, 800])."""
    origin = typing.get_origin(kind)
    if origin in (types.UnionType, typing.Union):
        for arm in typing.get_args(kind):
            try:
                return _coerce(value, arm)
            except _Mismatch:
                pass
        raise _Mismatch
    if kind is type(None):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
    elif kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _BOOLEANS:
            return _BOOLEANS[value.lower()]
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
    elif kind is str:
        if isinstance(value, str):
            return value
    elif origin is tuple:
        if isinstance(value, str) and "," in value:  # a,b,c
            value = [_literal(part.strip()) for part in value.split(",")]
        if isinstance(value, (list, tuple)):
            args = typing.get_args(kind)
            if len(args) == 2 and args[1] is Ellipsis:  # tuple[int, ...]: any length
                return tuple(_coerce(item, args[0]) for item in value)
            if len(value) == len(args):  # tuple[float, float]: this many
                return tuple(_coerce(item, arg) for item, arg in zip(value, args, strict=True))
    raise _Mismatch


def _literal(text: str) -> Any:
    """``text`` read as JSON (``[[1, 64], [32, 128]]``, ``true``, ``null``), else as a Python
    literal (``(9, 11)``, ``None``), else as the string it is (``cosine``)."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def _check_key(cls: type, key: str) -> dataclasses.Field:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if key in fields:
        return fields[key]
    close = difflib.get_close_matches(key, list(fields), n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    keys = close + sorted(set(fields) - set(close))
    raise ConfigError(f"unknown {cls.__name__} key {key!r}; {hint}valid keys: {', '.join(keys)}")


def _typed(cls: type, key: str, value: Any, shown: str) -> Any:
    """``value`` checked against the annotation of ``cls.key``; ``shown`` is how the user
    wrote it (for the message)."""
    spec = _check_key(cls, key)
    try:
        return _coerce(value, typing.get_type_hints(cls)[key])
    except _Mismatch:
        default = spec.default
        if default is dataclasses.MISSING and spec.default_factory is not dataclasses.MISSING:
            default = spec.default_factory()
        example = json.dumps(default, separators=(",", ":"))
        raise ConfigError(
            f"{key}={shown}: {cls.__name__}.{key} is {spec.type} (e.g. {key}={example})"
        ) from None


def parse_overrides(cls: type, items: Iterable[str]) -> dict[str, Any]:
    """``["lr=0.005", "grids=[12,10,8,6,4]", ...]`` -> ``{"lr": 0.005, "grids": (12, ...)}``.

    Each value is read as JSON, else as a Python literal, else as a plain string, and checked
    against the field's type annotation in ``cls`` (int, float, bool, str, ``int | None``,
    tuples): an unknown key or a value of the wrong type is a :class:`ConfigError` (unknown
    keys list the valid ones, the closest first). A later item wins over an earlier one.

    >>> parse_overrides(SOLOConfig, ["lr=0.005", "lr_steps=[8, 11]", "norm_eval=false"])
    {'lr': 0.005, 'lr_steps': (8, 11), 'norm_eval': False}
    """
    values: dict[str, Any] = {}
    for item in items:
        key, equals, text = item.partition("=")
        key = key.strip()
        if not equals or not key:
            raise ConfigError(f"expected key=value, got {item!r}")
        if typing.get_type_hints(cls).get(key) is str:
            parsed = _literal(text)  # a str field takes the text as written ("123" too)
            values[key] = _typed(cls, key, parsed if isinstance(parsed, str) else text, text)
        else:
            values[key] = _typed(cls, key, _literal(text), text)
    return values


def check_overrides(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """A dict of already-parsed values (from a JSON file) checked as :func:`parse_overrides`
    checks its strings; lists become tuples."""
    if not isinstance(values, dict):
        raise ConfigError(f"overrides must be a JSON object of key: value, got {values!r}")
    return {key: _typed(cls, key, value, json.dumps(value)) for key, value in values.items()}


def _build(cls: type, values: dict[str, Any]):
    try:
        return cls(**values)
    except ValueError as error:  # __post_init__ refused a value
        raise ConfigError(str(error)) from error


def with_overrides(config, overrides: dict[str, Any]):
    """A copy of ``config`` with ``overrides`` (checked values), validated again."""
    return _build(type(config), {**config.to_dict(), **overrides})


def _model_for(source: str, in_file: str | None, asked: str | None) -> str:
    if asked and in_file and asked != in_file:
        raise ConfigError(f"{source} is a {in_file} config, not {asked}: leave out --model")
    model = asked or in_file or "solo"
    if model not in CONFIG_CLASSES:
        raise ConfigError(
            f"unknown model {model!r} in {source}; choose from {sorted(CONFIG_CLASSES)}"
        )
    return model


def load_config(source: str | Path = "tiny", model: str | None = None):
    """The configuration named by ``source``: a preset (``"tiny"``, ``"paper"``) of ``model``
    (default ``"solo"``), or a JSON file (a path ending in ``.json``) holding either

    * a whole config as ``config.to_dict()`` writes it (a run folder's ``config.json``), its
      ``model`` key saying which; keys left out keep the dataclass defaults (the paper's), or
    * ``{"preset": "tiny", "model": "solo", "overrides": {"lr": 0.005}}`` (model and
      overrides optional).

    Every value is type-checked; any problem is a :class:`ConfigError`. A ``model`` that
    differs from the file's is an error too.
    """
    name = str(source)
    presets = MODEL_PRESETS.get(model or "solo", PRESETS)
    if name in presets and not name.endswith(".json"):
        return preset(name, _model_for(name, None, model))
    if not name.endswith(".json") and not Path(name).is_file():
        raise ConfigError(
            f"unknown preset {name!r}; choose from {', '.join(sorted(presets))} or give a "
            ".json file"
        )
    try:
        data = json.loads(Path(name).read_text())
    except OSError as error:
        raise ConfigError(f"cannot read config file {name}: {error.strerror or error}") from None
    except ValueError as error:
        raise ConfigError(f"{name} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{name} must hold a JSON object, got {type(data).__name__}")
    if "preset" in data:
        extra = sorted(set(data) - {"preset", "model", "overrides"})
        if extra:
            raise ConfigError(
                f"{name}: unknown keys {extra}; a preset file has preset, model and overrides"
            )
        chosen = _model_for(name, data.get("model"), model)
        if data["preset"] not in MODEL_PRESETS[chosen]:
            raise ConfigError(
                f"{name}: unknown preset {data['preset']!r}; choose from "
                f"{', '.join(sorted(MODEL_PRESETS[chosen]))}"
            )
        base = preset(data["preset"], chosen)
        return with_overrides(base, check_overrides(type(base), data.get("overrides", {})))
    chosen = _model_for(name, data.get("model"), model)
    cls = CONFIG_CLASSES[chosen]
    values = check_overrides(cls, data)
    if chosen in ("solo", "decoupled_solo"):
        values["model"] = chosen
    return _build(cls, values)


__all__ = [
    "SOLOConfig",
    "SOLOv2Config",
    "YOLACTConfig",
    "preset",
    "config_from_dict",
    "ConfigError",
    "load_config",
    "parse_overrides",
    "check_overrides",
    "with_overrides",
    "PRESETS",
    "field",
]

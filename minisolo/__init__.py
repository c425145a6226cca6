"""minisolo: SOLO instance segmentation (and YOLACT beside it), built from scratch to learn from."""

from .backbone import FPN, ResNet, load_torchvision_weights
from .config import SOLOConfig, YOLACTConfig, config_from_dict, preset
from .layers import CoordConv2d, coord_features
from .losses import dice_loss, sigmoid_focal_loss
from .nms import box_iou, box_nms, fast_nms, mask_iou, mask_nms, matrix_nms, points_nms
from .solo import SOLO, DecoupledSOLO, build_model
from .targets import LevelTargets, solo_targets, solo_targets_batch
from .yolact import YOLACT

__version__ = "0.1.0"

__all__ = [
    "FPN",
    "ResNet",
    "load_torchvision_weights",
    "SOLOConfig",
    "YOLACTConfig",
    "config_from_dict",
    "preset",
    "CoordConv2d",
    "coord_features",
    "dice_loss",
    "sigmoid_focal_loss",
    "box_iou",
    "box_nms",
    "fast_nms",
    "mask_iou",
    "mask_nms",
    "matrix_nms",
    "points_nms",
    "SOLO",
    "DecoupledSOLO",
    "YOLACT",
    "build_model",
    "LevelTargets",
    "solo_targets",
    "solo_targets_batch",
]

"""minisolo: SOLO instance segmentation (and YOLACT beside it), built from scratch to learn from."""

from .backbone import FPN, ResNet, load_torchvision_weights
from .config import SOLOConfig, SOLOv2Config, YOLACTConfig, config_from_dict, preset
from .layers import CoordConv2d, coord_features
from .losses import dice_loss, sigmoid_focal_loss
from .model_cache import pretrained
from .models import build_model
from .nms import box_iou, box_nms, fast_nms, mask_iou, mask_nms, matrix_nms, points_nms
from .solo import SOLO, DecoupledSOLO
from .solov2 import SOLOv2
from .targets import LevelTargets, solo_targets, solo_targets_batch
from .yolact import YOLACT

__version__ = "0.1.0"

__all__ = [
    "FPN",
    "ResNet",
    "load_torchvision_weights",
    "SOLOConfig",
    "SOLOv2Config",
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
    "SOLOv2",
    "YOLACT",
    "build_model",
    "pretrained",
    "LevelTargets",
    "solo_targets",
    "solo_targets_batch",
]

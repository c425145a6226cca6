"""Data for minisolo: synthetic shapes, COCO-format loading, transforms, COCO subsets.

* :func:`make_shapes_dataset` writes a synthetic COCO-format dataset (fast, CPU friendly).
* :class:`CocoInstances` reads any COCO-format folder as ``(image, target)`` pairs and
  :func:`collate_batch` pads a list of them into a batch.
* :func:`build_transforms` and the transform classes resize, flip and normalise images
  together with their masks and boxes.
* :func:`build_coco_subset` copies or downloads a small subset of real COCO.
* :func:`find_coco_folder` finds real COCO photos on this machine (``$MINISOLO_COCO``,
  ``data/coco-*``, ``../shared/coco-mini``) for the notebooks.
"""

from .coco import CocoInstances, DataError, collate_batch, decode_rles, find_split
from .locate import COCO_ENV, CocoFolder, coco_splits, coco_subset_hint, find_coco_folder
from .shapes import SHAPE_CLASSES, make_shapes_dataset, render_shapes_image
from .subset import (
    ANNOTATIONS_MD5,
    ANNOTATIONS_SIZE,
    DownloadError,
    build_coco_subset,
    download_file,
    file_hash,
    read_image_ids,
)
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Compose,
    Normalize,
    RandomHorizontalFlip,
    Resize,
    Squash,
    ToTensor,
    build_transforms,
    denormalize,
    masks_to_boxes,
    pad_to_multiple,
    pad_to_size,
    pil_to_tensor,
    resize_masks,
)

__all__ = [
    "ANNOTATIONS_MD5",
    "ANNOTATIONS_SIZE",
    "COCO_ENV",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SHAPE_CLASSES",
    "CocoFolder",
    "CocoInstances",
    "Compose",
    "DataError",
    "DownloadError",
    "Normalize",
    "RandomHorizontalFlip",
    "Resize",
    "Squash",
    "ToTensor",
    "build_coco_subset",
    "build_transforms",
    "coco_splits",
    "coco_subset_hint",
    "collate_batch",
    "decode_rles",
    "denormalize",
    "download_file",
    "file_hash",
    "find_coco_folder",
    "find_split",
    "make_shapes_dataset",
    "masks_to_boxes",
    "pad_to_multiple",
    "pad_to_size",
    "pil_to_tensor",
    "read_image_ids",
    "render_shapes_image",
    "resize_masks",
]

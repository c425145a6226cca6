"""A torch ``Dataset`` over any COCO-format instance-segmentation folder, via pycocotools.

Folder layout (real COCO, ``coco-mini`` and the synthetic shapes all look like this)::

    root/annotations/instances_<split>*.json     e.g. instances_val2017.json
    root/<split>*/<file_name>                      e.g. val2017/000000397133.jpg

``CocoInstances(root, "val")[i]`` returns ``(image, target)``: a float ``[3, H, W]`` image
and a dict with ``masks`` (bool ``[N, H, W]``), ``labels`` (int64 ``[N]``, contiguous
``0..C-1``), ``boxes`` (float ``[N, 4]``, ``x1, y1, x2, y2``, the tight boxes of the masks),
``image_id``, ``orig_size`` and ``size``.

How bad input is handled (so that a problem never shows up as a crash deep inside torch or,
worse, as a silently wrong target):

* The JSON is not COCO (not a dict, a required key missing, an annotation pointing at an image
  or category that does not exist, duplicate ids): :class:`DataError` at construction, naming
  the file and the offending id.
* An annotation is unusable (every polygon has fewer than 3 points, the mask is empty, the
  bbox lies entirely outside the image, an RLE of the wrong size, no segmentation): the
  annotation is skipped, and one ``warnings.warn`` at construction gives the count and ids.
  Polygon *parts* with fewer than 3 points are dropped from an annotation that has other,
  valid parts (as detectron2 does). Skipped annotations are also removed from ``self.coco``
  so that training and evaluation see the same ground truth.
* An image file is missing, corrupt, truncated or not the size its JSON record says:
  :class:`DataError` naming the path and image id when the image is loaded; or, with
  ``skip_bad=True``, every file is opened and decoded once at construction and bad images
  are dropped with a warning (``self.skipped_images``).

Crowd annotations (``iscrowd=1``) are not training targets: they are left out of ``target``
but stay in ``self.coco``, where ``COCOeval`` uses them as "ignore" regions.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import torch
from PIL import Image
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from .transforms import masks_to_boxes, pad_to_size, pil_to_tensor


class DataError(ValueError):
    """A dataset file is malformed, missing or inconsistent. The message says which and where."""


# --------------------------------------------------------------------------------------------
# Finding the files
# --------------------------------------------------------------------------------------------


def find_split(root: str | Path, split: str) -> tuple[Path, Path]:
    """Locate ``(annotation_file, image_dir)`` of ``split`` under ``root``.

    Looks for ``root/annotations/instances_<split>*.json`` (an exact
    ``instances_<split>.json`` wins) and the image folder named like the file's suffix
    (``instances_val2017.json`` -> ``root/val2017``), else any ``root/<split>*`` folder.
    Raises :class:`DataError` listing what was found when the choice is missing or ambiguous.
    """
    ann_file = _find_annotation_file(Path(root), split)
    return ann_file, _find_image_dir(Path(root), split, ann_file)


def _find_annotation_file(root: Path, split: str) -> Path:
    ann_dir = root / "annotations"
    if not ann_dir.is_dir():
        raise DataError(f"no annotations folder at {ann_dir} (expected COCO layout under {root})")
    found = sorted(ann_dir.glob("instances_*.json"))
    exact = ann_dir / f"instances_{split}.json"
    matches = [p for p in found if p.name.startswith(f"instances_{split}")]
    if exact.is_file():
        return exact
    if len(matches) == 1:
        return matches[0]
    names = [p.name for p in found] or ["(none)"]
    what = "several" if matches else "no"
    raise DataError(
        f"{what} annotation files match split {split!r} in {ann_dir}; found: {', '.join(names)}"
    )


def _find_image_dir(root: Path, split: str, ann_file: Path) -> Path:
    stem = ann_file.stem[len("instances_") :]  # "instances_val2017.json" -> "val2017"
    if (root / stem).is_dir():
        return root / stem
    dirs = sorted(p for p in root.glob(f"{split}*") if p.is_dir())
    if len(dirs) == 1:
        return dirs[0]
    listing = sorted(p.name for p in root.iterdir() if p.is_dir())
    raise DataError(
        f"cannot pick the image folder for split {split!r} under {root} (annotation file "
        f"{ann_file.name}); expected {root / stem}; folders there: {', '.join(listing) or '(none)'}"
    )


# --------------------------------------------------------------------------------------------
# Validation of the JSON
# --------------------------------------------------------------------------------------------

_REQUIRED = {
    "images": ("id", "file_name", "height", "width"),
    "annotations": ("id", "image_id", "category_id"),
    "categories": ("id", "name"),
}


def _check_structure(data: object, ann_file: Path) -> None:
    """Raise DataError unless ``data`` looks like a COCO instances file."""
    if not isinstance(data, dict):
        raise DataError(f"{ann_file}: not a COCO file (top level is {type(data).__name__})")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise DataError(f"{ann_file}: not a COCO file, missing key(s) {missing}")
    for key, fields in _REQUIRED.items():
        entries = data[key]
        if not isinstance(entries, list):
            raise DataError(f"{ann_file}: '{key}' must be a list, got {type(entries).__name__}")
        seen: set = set()
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise DataError(f"{ann_file}: {key}[{i}] is not a dict")
            lacking = [f for f in fields if f not in entry]
            if lacking:
                ident = entry.get("id", f"at index {i}")
                raise DataError(f"{ann_file}: {key} entry {ident} lacks field(s) {lacking}")
            if entry["id"] in seen:
                raise DataError(f"{ann_file}: duplicate id {entry['id']} in '{key}'")
            seen.add(entry["id"])
    image_ids = {im["id"] for im in data["images"]}
    cat_ids = {c["id"] for c in data["categories"]}
    for ann in data["annotations"]:
        if ann["image_id"] not in image_ids:
            raise DataError(
                f"{ann_file}: annotation {ann['id']} refers to image id {ann['image_id']}, "
                "which is not in 'images'"
            )
        if ann["category_id"] not in cat_ids:
            raise DataError(
                f"{ann_file}: annotation {ann['id']} refers to category id "
                f"{ann['category_id']}, which is not in 'categories'"
            )


def _is_valid_polygon(poly: object) -> bool:
    """A polygon is a flat list of >= 3 (x, y) points: an even count of >= 6 numbers."""
    return isinstance(poly, list) and len(poly) >= 6 and len(poly) % 2 == 0


def _check_annotation(ann: dict, height: int, width: int) -> tuple[str | None, bool]:
    """Check one non-crowd annotation, cleaning polygon lists in place.

    Returns ``(reason, cleaned)``: ``reason`` is None if the annotation is usable, else why
    it must be skipped; ``cleaned`` says whether degenerate polygon parts were removed.
    """
    segm = ann.get("segmentation")
    cleaned = False
    if segm is None or (isinstance(segm, list) and len(segm) == 0):
        return "no segmentation", cleaned
    if isinstance(segm, list):  # polygons
        good = [p for p in segm if _is_valid_polygon(p)]
        if not good:
            return "polygon with fewer than 3 points", cleaned
        if len(good) != len(segm):
            ann["segmentation"] = good
            cleaned = True
        segm = good
    elif isinstance(segm, dict) and "counts" in segm and "size" in segm:  # RLE
        if list(segm["size"]) != [height, width]:
            return f"RLE size {list(segm['size'])} != image size {[height, width]}", cleaned
    else:
        return "unknown segmentation format", cleaned
    try:
        rle = _to_rle(segm, height, width)
    except Exception as err:  # pycocotools raises assorted errors on malformed input
        return f"unreadable segmentation ({type(err).__name__})", cleaned

    bbox = ann.get("bbox")
    if bbox is not None and len(bbox) == 4:
        x, y, w, h = (float(v) for v in bbox)
        if x + w <= 0 or y + h <= 0 or x >= width or y >= height:
            return "bbox entirely outside the image", cleaned
    if float(mask_utils.area(rle)) <= 0:
        return "zero-area mask", cleaned
    return None, cleaned


def _to_rle(segm: dict | list, height: int, width: int) -> dict:
    """Any COCO segmentation (polygons, uncompressed or compressed RLE) -> compressed RLE."""
    if isinstance(segm, list):
        return mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
    if isinstance(segm["counts"], list):  # uncompressed RLE (used by crowd annotations)
        return mask_utils.frPyObjects(segm, height, width)
    return segm  # compressed RLE: counts is a str (or bytes); pycocotools decodes both


def decode_rles(rles: list[dict]) -> np.ndarray:
    """Decode compressed RLEs to a bool array ``[H, W, N]`` with pycocotools."""
    with warnings.catch_warnings():
        # pycocotools' decode trips a numpy-2 DeprecationWarning about __array__(copy=...);
        # it is harmless and would otherwise be printed for every image.
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rles).astype(bool)


# --------------------------------------------------------------------------------------------
# Loading images
# --------------------------------------------------------------------------------------------


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB (grayscale, 16-bit, palette, RGBA, CMYK, ...)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # high bit depth grayscale
        a = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I") and a.max() > 255 else 255.0
        a = np.clip(a / top * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(a).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # avoids PIL's warning about palette transparency
    # RGBA / LA: the alpha channel is dropped (the colour values are kept as they are)
    return image.convert("RGB")


def _open_image(path: Path, image_id: int, height: int, width: int) -> Image.Image:
    """Open and fully decode one image; DataError if missing, corrupt, truncated or resized."""
    if not path.is_file():
        raise DataError(f"image file not found: {path} (image id {image_id})")
    # EXIF orientation is deliberately not applied: COCO's masks refer to the stored pixels
    # (as in torchvision's CocoDetection), and the size check below catches rotated files.
    try:
        with Image.open(path) as im:
            im.load()  # decode now: truncation only shows up here
            image = _to_rgb(im)
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot decode image {path} (image id {image_id}): {err}") from err
    if image.size != (width, height):
        raise DataError(
            f"image {path} (image id {image_id}) is {image.size[1]}x{image.size[0]} (h x w) "
            f"but its JSON record says {height}x{width}"
        )
    return image


# --------------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------------


class CocoInstances(Dataset):
    """COCO-format instance segmentation as ``(image, target)`` pairs.

    Args:
        root: folder with ``annotations/`` and the image folders (see :func:`find_split`).
        split: ``"train"``, ``"val"``, ``"val2017"``, ... (prefix of the annotation file).
        transforms: callable ``(image, target) -> (image, target)``, e.g. from
            :func:`minisolo.data.build_transforms`. Without it the image is only converted to
            a float tensor in ``[0, 1]``.
        skip_bad: open every image file at construction and drop the bad ones with a warning
            (slower start); otherwise a bad file raises :class:`DataError` when loaded.

    Validating annotations rasterises every polygon once at construction (about 60 us per
    annotation: a second for 15k annotations, about a minute for COCO train2017's 860k).

    Attributes:
        coco: the ``pycocotools.coco.COCO`` object (crowd annotations kept, skipped ones not).
        ids: image ids in dataset order.
        category_ids: contiguous label -> COCO category id (sorted by COCO id).
        class_names: contiguous label -> category name.
        cat_to_label: COCO category id -> contiguous label.
        skipped_annotations: ``{annotation id: reason}`` of annotations left out.
        skipped_images: ``{image id: reason}`` of images dropped (only with ``skip_bad``).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transforms: Callable | None = None,
        skip_bad: bool = False,
    ):
        self.root = Path(root)
        self.split = split
        self.transforms = transforms
        self.ann_file = _find_annotation_file(self.root, split)

        try:
            data = json.loads(self.ann_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(f"{self.ann_file}: not valid JSON ({err})") from err
        _check_structure(data, self.ann_file)
        self.image_dir = _find_image_dir(self.root, split, self.ann_file)

        # categories: sorted COCO ids -> contiguous labels 0..C-1
        cats = sorted(data["categories"], key=lambda c: c["id"])
        self.category_ids: list[int] = [c["id"] for c in cats]
        self.class_names: list[str] = [str(c["name"]) for c in cats]
        self.cat_to_label: dict[int, int] = {cid: i for i, cid in enumerate(self.category_ids)}

        # per-annotation validation (crowd annotations are only kept for evaluation)
        images = {im["id"]: im for im in data["images"]}
        self.skipped_annotations: dict[int, str] = {}
        cleaned: list[int] = []
        kept = []
        for ann in data["annotations"]:
            ann.setdefault("iscrowd", 0)
            if not ann["iscrowd"]:
                im = images[ann["image_id"]]
                reason, was_cleaned = _check_annotation(ann, int(im["height"]), int(im["width"]))
                if was_cleaned:
                    cleaned.append(ann["id"])
                if reason is not None:
                    self.skipped_annotations[ann["id"]] = reason
                    continue
            kept.append(ann)
        data["annotations"] = kept
        self._warn_skipped_annotations(cleaned, len(kept) + len(self.skipped_annotations))

        # pycocotools' index (it prints progress; keep the console quiet)
        self.coco = COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco.createIndex()

        self.ids: list[int] = [im["id"] for im in data["images"]]
        self.skipped_images: dict[int, str] = {}
        if skip_bad:
            self._drop_bad_images()

    # ---- construction helpers ---------------------------------------------------------------

    def _warn_skipped_annotations(self, cleaned: list[int], total: int) -> None:
        if not self.skipped_annotations and not cleaned:
            return
        by_reason: dict[str, list[int]] = {}
        for ann_id, reason in self.skipped_annotations.items():
            by_reason.setdefault(reason, []).append(ann_id)
        parts = [f"{reason}: {len(ids)} (ids {_short(ids)})" for reason, ids in by_reason.items()]
        msg = f"{self.ann_file}: skipped {len(self.skipped_annotations)} of {total} annotations"
        if parts:
            msg += f" [{'; '.join(parts)}]"
        if cleaned:
            msg += (
                f"; dropped polygon parts with fewer than 3 points from {len(cleaned)} "
                f"annotation(s) that kept other parts (ids {_short(cleaned)})"
            )
        warnings.warn(msg, stacklevel=3)

    def _drop_bad_images(self) -> None:
        good = []
        for image_id in self.ids:
            info = self.coco.imgs[image_id]
            try:
                _open_image(self._path(info), image_id, int(info["height"]), int(info["width"]))
            except DataError as err:
                self.skipped_images[image_id] = str(err)
                continue
            good.append(image_id)
        self.ids = good
        if self.skipped_images:
            first = "; ".join(list(self.skipped_images.values())[:3])
            warnings.warn(
                f"{self.ann_file}: dropped {len(self.skipped_images)} bad image(s) "
                f"(ids {_short(list(self.skipped_images))}), e.g. {first}",
                stacklevel=3,
            )

    def _path(self, info: dict) -> Path:
        return self.image_dir / info["file_name"]

    # ---- public helpers ------------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def label_to_category_id(self, label: int) -> int:
        """Contiguous label ``0..C-1`` -> COCO category id."""
        return self.category_ids[int(label)]

    def image_path(self, idx: int) -> Path:
        """The file of the image at dataset position ``idx``."""
        return self._path(self.coco.imgs[self.ids[idx]])

    def load_image(self, idx: int) -> Image.Image:
        """The RGB PIL image at dataset position ``idx`` (no transforms)."""
        image_id = self.ids[idx]
        info = self.coco.imgs[image_id]
        return _open_image(self._path(info), image_id, int(info["height"]), int(info["width"]))

    def load_target(self, idx: int) -> dict:
        """The target at the original image size (no transforms); crowd annotations excluded."""
        image_id = self.ids[idx]
        info = self.coco.imgs[image_id]
        h, w = int(info["height"]), int(info["width"])
        anns = [a for a in self.coco.imgToAnns.get(image_id, []) if not a["iscrowd"]]
        if anns:
            rles = [_to_rle(a["segmentation"], h, w) for a in anns]
            masks = torch.from_numpy(decode_rles(rles)).permute(2, 0, 1).contiguous()
            # tight boxes straight from the RLEs (cheaper than scanning the masks)
            xywh = torch.from_numpy(mask_utils.toBbox(rles)).float().reshape(-1, 4)
            boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
        else:
            masks = torch.zeros((0, h, w), dtype=torch.bool)
            boxes = torch.zeros((0, 4), dtype=torch.float32)
        labels = torch.tensor([self.cat_to_label[a["category_id"]] for a in anns], dtype=torch.long)
        return {
            "image_id": int(image_id),
            "masks": masks,
            "labels": labels,
            "boxes": boxes,
            "orig_size": (h, w),
            "size": (h, w),
        }

    # ---- Dataset protocol -------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, dict]:
        image: Image.Image | torch.Tensor = self.load_image(idx)
        target = self.load_target(idx)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        if isinstance(image, Image.Image):
            image = pil_to_tensor(image)
        # An object can vanish when the image is shrunk (a 2-pixel sliver at 1/4 scale).
        # Drop such instances rather than hand the model an empty mask; boxes are always the
        # tight boxes of the final masks.
        keep = target["masks"].flatten(1).any(dim=1)
        if not bool(keep.all()):
            target["masks"] = target["masks"][keep]
            target["labels"] = target["labels"][keep]
        target["boxes"] = masks_to_boxes(target["masks"])
        target["size"] = tuple(int(s) for s in image.shape[-2:])
        return image, target

    def __repr__(self) -> str:
        return (
            f"CocoInstances(root={str(self.root)!r}, split={self.split!r}, images={len(self)}, "
            f"classes={self.num_classes})"
        )


def _short(ids: Sequence[int], limit: int = 20) -> str:
    """Format a list of ids, truncated after ``limit`` entries."""
    ids = list(ids)
    text = ", ".join(str(i) for i in ids[:limit])
    return text + (f", ... ({len(ids) - limit} more)" if len(ids) > limit else "")


# --------------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------------


def collate_batch(
    items: Sequence[tuple[torch.Tensor, dict]], size_divisor: int = 32
) -> tuple[torch.Tensor, list[dict]]:
    """DataLoader ``collate_fn``: pad images (zeros) and masks (False) to a common size.

    The batch size is the largest ``(h, w)`` in the batch rounded up to a multiple of
    ``size_divisor``; padding goes on the right and bottom, so pixel coordinates and boxes do
    not change. ``target["size"]`` keeps the unpadded size.
    """
    if len(items) == 0:
        raise ValueError("collate_batch got an empty batch")
    max_h = max(int(img.shape[-2]) for img, _ in items)
    max_w = max(int(img.shape[-1]) for img, _ in items)
    size = (
        math.ceil(max_h / size_divisor) * size_divisor,
        math.ceil(max_w / size_divisor) * size_divisor,
    )
    images = torch.stack([pad_to_size(img, size, 0.0) for img, _ in items])
    targets = []
    for _, t in items:
        t = copy.copy(t)  # shallow copy: do not modify the caller's dict
        if "masks" in t:
            t["masks"] = pad_to_size(t["masks"], size, False)
        targets.append(t)
    return images, targets

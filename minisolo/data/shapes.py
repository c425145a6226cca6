"""A synthetic instance-segmentation dataset of coloured shapes, written in COCO format.

Real COCO is large and slow to train on a CPU. This module paints small images of circles,
squares, triangles and stars on textured backgrounds and writes them exactly like COCO does
(an ``annotations/instances_<split>.json`` file plus a folder of images), so the same
:class:`minisolo.data.CocoInstances` loader, the same training loop and the same
``pycocotools`` evaluation work on both.

What makes the task non-trivial (and a fair teaching example for SOLO):

* **Sizes** span roughly 12 px to 180 px (``sqrt(w * h)`` of the box on a 256 px image), drawn
  log-uniformly, so objects land on several FPN levels whose box-size ranges overlap.
* **Occlusion**: objects are painted one after another, a later object covers the earlier
  ones, and every annotation stores only the *visible* part of its object. We never keep an
  object that ends up mostly hidden: a new object is placed only if every object already on
  the canvas keeps at least 30% of its full area (and at least 30 px) visible; otherwise we
  try another placement. So every visible shape in an image is annotated: no unlabelled
  fragments confuse the model.
* **Textured backgrounds** (smooth noise, gradients, stripes, plus pixel noise), so a single
  colour threshold cannot segment the image.

Everything is drawn from ``numpy.random.Generator`` objects seeded from ``seed``, so the same
seed gives byte-identical JSON and PNG files.

Example::

    from minisolo.data import make_shapes_dataset, CocoInstances
    root = make_shapes_dataset("data/shapes", num_train=500, num_val=100)
    train = CocoInstances(root, "train")
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

#: Class names; COCO category id of ``SHAPE_CLASSES[i]`` is ``i + 1``.
SHAPE_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star")

#: Smallest and largest object size, ``sqrt(w * h)`` of its box, for a 256 px image.
#: For other image sizes both are scaled by ``image_size / 256``.
MIN_SIZE = 12.0
MAX_SIZE = 180.0

#: An object must keep this fraction of its area (and this many pixels) visible.
MIN_VISIBLE_FRACTION = 0.3
MIN_VISIBLE_PIXELS = 30


@dataclass
class ShapeInstance:
    """One painted object: its class index (0-based), full mask and visible mask."""

    label: int
    full_mask: np.ndarray  # bool [H, W], the whole shape as if nothing covered it
    visible_mask: np.ndarray  # bool [H, W], what remains visible in the final image


# --------------------------------------------------------------------------------------------
# Shape outlines
# --------------------------------------------------------------------------------------------


def _unit_outline(label: int, angle: float) -> np.ndarray | None:
    """Polygon vertices (K, 2) of a shape of circumradius 1 centred at 0; None for a circle."""
    name = SHAPE_CLASSES[label]
    if name == "circle":
        return None
    if name == "square":
        t = angle + np.arange(4) * (np.pi / 2)
        r = np.ones(4)
    elif name == "triangle":
        t = angle + np.arange(3) * (2 * np.pi / 3)
        r = np.ones(3)
    elif name == "star":
        # five outer points alternating with five inner points
        t = angle + np.arange(10) * (np.pi / 5)
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
    else:  # pragma: no cover - SHAPE_CLASSES and this function must stay in sync
        raise ValueError(f"unknown shape {name!r}")
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _draw_shape(
    label: int, size: float, cx: float, cy: float, angle: float, image_size: int
) -> np.ndarray:
    """Rasterise one shape whose box has ``sqrt(w * h) == size``; returns bool [H, W]."""
    canvas = Image.new("L", (image_size, image_size), 0)
    draw = ImageDraw.Draw(canvas)
    outline = _unit_outline(label, angle)
    if outline is None:  # circle: the box is a square of side `size`
        r = size / 2
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
    else:
        # rescale the unit outline so that its bounding box has sqrt(w * h) == size
        w, h = np.ptp(outline, axis=0)
        pts = outline * (size / math.sqrt(w * h))
        pts = pts - (pts.min(0) + pts.max(0)) / 2 + np.array([cx, cy])  # box centred on cx, cy
        draw.polygon([tuple(p) for p in pts.tolist()], fill=1)
    return np.asarray(canvas, dtype=bool)


# --------------------------------------------------------------------------------------------
# Backgrounds and colours
# --------------------------------------------------------------------------------------------


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=3).astype(np.float32)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A textured float32 [H, W, 3] background in [0, 255]."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c0, c1 = _random_colour(rng), _random_colour(rng)
    kind = rng.integers(0, 3)
    if kind == 0:  # smooth blobs: coarse random grid upsampled with bicubic interpolation
        cells = int(rng.integers(3, 9))
        coarse = rng.random((cells, cells)).astype(np.float32)
        t = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
        t = np.clip(np.asarray(t), 0.0, 1.0)
    elif kind == 1:  # linear gradient in a random direction
        theta = rng.uniform(0, 2 * np.pi)
        t = np.cos(theta) * xx + np.sin(theta) * yy
        t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    else:  # soft stripes at a random angle and period
        theta = rng.uniform(0, np.pi)
        period = rng.uniform(0.05, 0.3)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * (np.cos(theta) * xx + np.sin(theta) * yy) / period)
    img = c0 + (c1 - c0) * t[..., None]
    img += rng.normal(0.0, rng.uniform(4.0, 16.0), size=img.shape).astype(np.float32)
    return img


def _object_colour(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """A random colour not too close to the average background colour (up to 10 tries)."""
    mean = background.reshape(-1, 3).mean(0)
    colour = _random_colour(rng)
    for _ in range(10):
        if np.abs(colour - mean).sum() > 120:
            break
        colour = _random_colour(rng)
    return colour


# --------------------------------------------------------------------------------------------
# One image
# --------------------------------------------------------------------------------------------


def render_shapes_image(
    rng: np.random.Generator,
    image_size: int = 256,
    max_objects: int = 6,
    max_tries: int = 20,
    min_size: float = MIN_SIZE,
    max_size: float = MAX_SIZE,
) -> tuple[np.ndarray, list[ShapeInstance]]:
    """Paint one image; returns ``(uint8 [H, W, 3], instances in painting order)``.

    Each object gets a class, a size (log-uniform between ``min_size`` and ``max_size``, given
    for a 256 px image and scaled to ``image_size``), a position that keeps its box inside the
    image, a rotation and a colour. A candidate is rejected (and re-drawn, up to ``max_tries``
    times) if it would hide too much of an object already painted.
    """
    scale = image_size / 256
    if not 0 < min_size <= max_size:
        raise ValueError(f"need 0 < min_size <= max_size, got {min_size} and {max_size}")
    lo, hi = math.log(min_size * scale), math.log(max_size * scale)
    img = _background(rng, image_size)
    owner = np.full((image_size, image_size), -1, dtype=np.int16)  # who is visible where
    full_masks: list[np.ndarray] = []
    labels: list[int] = []
    full_areas: list[int] = []

    num_objects = int(rng.integers(1, max_objects + 1))
    for _ in range(num_objects):
        for _try in range(max_tries):
            label = int(rng.integers(0, len(SHAPE_CLASSES)))
            size = math.exp(rng.uniform(lo, hi))
            half = size / 2
            cx = rng.uniform(half, image_size - half)
            cy = rng.uniform(half, image_size - half)
            mask = _draw_shape(label, size, cx, cy, rng.uniform(0, 2 * np.pi), image_size)
            area = int(mask.sum())
            if area < MIN_VISIBLE_PIXELS:
                continue
            # would any earlier object become (mostly) hidden?
            covered = owner[mask]
            ok = True
            for k, full_area in enumerate(full_areas):
                visible_after = int((owner == k).sum()) - int((covered == k).sum())
                if visible_after < max(MIN_VISIBLE_FRACTION * full_area, MIN_VISIBLE_PIXELS):
                    ok = False
                    break
            if ok:
                break
        else:
            break  # could not place another object: stop with what we have

        colour = _object_colour(rng, img)
        # a little shading and pixel noise so objects are not perfectly flat
        shade = rng.uniform(0.85, 1.15, size=(1, 1, 1)).astype(np.float32)
        noise = rng.normal(0.0, 6.0, size=(int(area), 3)).astype(np.float32)
        img[mask] = colour * shade[0] + noise
        owner[mask] = len(full_masks)
        full_masks.append(mask)
        labels.append(label)
        full_areas.append(area)

    image = np.clip(img, 0, 255).round().astype(np.uint8)
    instances = [
        ShapeInstance(label=labels[k], full_mask=full_masks[k], visible_mask=owner == k)
        for k in range(len(full_masks))
    ]
    return image, instances


# --------------------------------------------------------------------------------------------
# COCO writing
# --------------------------------------------------------------------------------------------


def _mask_to_coco(mask: np.ndarray) -> tuple[dict, list[float], float]:
    """Compressed RLE, box [x, y, w, h] and area of a bool mask, as COCO stores them."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")  # bytes are not JSON-serialisable
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    bbox = [float(x0), float(y0), float(xs.max() + 1 - x0), float(ys.max() + 1 - y0)]
    return {"counts": rle["counts"], "size": list(rle["size"])}, bbox, float(mask.sum())


def _write_split(
    out_dir: Path,
    split: str,
    split_code: int,
    num_images: int,
    image_size: int,
    seed: int,
    progress: bool,
    shape_options: dict,
) -> dict:
    image_dir = out_dir / split
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in tqdm(range(num_images), desc=f"shapes/{split}", disable=not progress):
        # one independent generator per image: same (seed, split, index) -> same image
        rng = np.random.default_rng([seed, split_code, i])
        pixels, instances = render_shapes_image(rng, image_size, **shape_options)
        image_id = i + 1  # COCO ids start at 1
        file_name = f"{image_id:06d}.png"
        Image.fromarray(pixels).save(image_dir / file_name, compress_level=1)
        images.append(
            {"id": image_id, "file_name": file_name, "height": image_size, "width": image_size}
        )
        for inst in instances:
            rle, bbox, area = _mask_to_coco(inst.visible_mask)
            annotations.append(
                {
                    "id": len(annotations) + 1,  # pycocotools treats id 0 as "unmatched"
                    "image_id": image_id,
                    "category_id": inst.label + 1,
                    "segmentation": rle,
                    "area": area,
                    "bbox": bbox,
                    "iscrowd": 0,
                    # not COCO, but handy for teaching: the area before occlusion
                    "full_area": float(inst.full_mask.sum()),
                }
            )
    return {
        "info": {
            "description": "minisolo synthetic shapes",
            "version": "1.0",
            "seed": seed,
            "image_size": image_size,
            **shape_options,
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": k + 1, "name": name, "supercategory": "shape"}
            for k, name in enumerate(SHAPE_CLASSES)
        ],
    }


def make_shapes_dataset(
    out_dir: str | Path,
    num_train: int = 500,
    num_val: int = 100,
    image_size: int = 256,
    seed: int = 0,
    progress: bool = True,
    min_size: float = MIN_SIZE,
    max_size: float = MAX_SIZE,
    max_objects: int = 6,
) -> Path:
    """Write a synthetic COCO-format shapes dataset and return ``out_dir`` as a ``Path``.

    Layout::

        out_dir/annotations/instances_train.json   out_dir/train/000001.png ...
        out_dir/annotations/instances_val.json     out_dir/val/000001.png ...

    Segmentations are compressed RLE (exact, via ``pycocotools.mask.encode``); ``bbox`` and
    ``area`` describe the visible mask. The same ``seed`` gives byte-identical files.
    ``min_size`` and ``max_size`` bound the object sizes (``sqrt(w * h)`` of the box, in pixels
    of a 256 px image) and every image gets 1 to ``max_objects`` objects.
    """
    shape_options = dict(min_size=min_size, max_size=max_size, max_objects=max_objects)
    out_dir = Path(out_dir)
    (out_dir / "annotations").mkdir(parents=True, exist_ok=True)
    for split_code, (split, n) in enumerate((("train", num_train), ("val", num_val))):
        data = _write_split(
            out_dir, split, split_code, n, image_size, seed, progress, shape_options
        )
        text = json.dumps(data, separators=(",", ":"))
        (out_dir / "annotations" / f"instances_{split}.json").write_text(text, encoding="utf-8")
    return out_dir

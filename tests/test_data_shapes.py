"""Tests for the synthetic shapes dataset (minisolo.data.shapes)."""

from __future__ import annotations

import json
import math

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from PIL import Image

from minisolo.data import SHAPE_CLASSES, decode_rles, make_shapes_dataset, render_shapes_image

# FPN levels' box-size ranges (sqrt(w*h)) for a 256 px image, overlapping on purpose
LEVEL_RANGES = [(1, 32), (16, 64), (32, 128), (64, 256), (128, 512)]


@pytest.fixture(scope="module")
def data_shapes(tmp_path_factory):
    """A 40-image shapes dataset, shared by the tests of this module."""
    root = make_shapes_dataset(
        tmp_path_factory.mktemp("shapes"), num_train=40, num_val=4, seed=0, progress=False
    )
    data = json.loads((root / "annotations" / "instances_train.json").read_text())
    return root, data


def _decode(ann: dict) -> np.ndarray:
    return decode_rles([ann["segmentation"]])[:, :, 0]


def test_layout_and_categories(data_shapes):
    root, data = data_shapes
    for split, n in (("train", 40), ("val", 4)):
        assert (root / "annotations" / f"instances_{split}.json").is_file()
        assert len(list((root / split).glob("*.png"))) == n
    cats = data["categories"]
    assert len(cats) >= 4
    assert [c["id"] for c in cats] == list(range(1, len(SHAPE_CLASSES) + 1))
    assert [c["name"] for c in cats] == list(SHAPE_CLASSES)
    # every class actually occurs
    assert {a["category_id"] for a in data["annotations"]} == {c["id"] for c in cats}


def test_ids_start_at_one_and_records_are_coco(data_shapes):
    root, data = data_shapes
    ann_ids = [a["id"] for a in data["annotations"]]
    assert ann_ids == list(range(1, len(ann_ids) + 1))  # never id 0 (pycocotools quirk)
    image_ids = [im["id"] for im in data["images"]]
    assert image_ids == list(range(1, 41))
    for im in data["images"]:
        with Image.open(root / "train" / im["file_name"]) as f:
            assert f.size == (im["width"], im["height"]) == (256, 256)
            assert f.mode == "RGB"
    per_image: dict[int, int] = {}
    for a in data["annotations"]:
        assert a["iscrowd"] == 0
        assert isinstance(a["segmentation"]["counts"], str)
        assert a["segmentation"]["size"] == [256, 256]
        per_image[a["image_id"]] = per_image.get(a["image_id"], 0) + 1
    assert set(per_image) == set(image_ids)  # every image has at least one object
    assert max(per_image.values()) <= 6
    assert max(per_image.values()) >= 3  # 1-6 objects: some images are busy


def test_masks_decode_to_stored_area_and_bbox(data_shapes):
    _, data = data_shapes
    for a in data["annotations"]:
        m = _decode(a)
        assert m.sum() == a["area"]
        ys, xs = np.nonzero(m)
        x, y = xs.min(), ys.min()
        assert a["bbox"] == [x, y, xs.max() + 1 - x, ys.max() + 1 - y]
        assert mask_utils.area(a["segmentation"]) == a["area"]


def test_visible_masks_are_disjoint_and_mostly_visible(data_shapes):
    _, data = data_shapes
    by_image: dict[int, list] = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    for anns in by_image.values():
        total = np.zeros((256, 256), dtype=np.int32)
        for a in anns:
            total += _decode(a)
            # the 30% / 30 px visibility rule
            assert a["area"] >= 0.3 * a["full_area"] - 1e-6
            assert a["area"] >= 30
        assert total.max() <= 1  # a pixel belongs to at most one visible object


def test_occlusion_happens(data_shapes):
    _, data = data_shapes
    occluded = [a for a in data["annotations"] if a["area"] < a["full_area"]]
    assert len(occluded) >= 3
    # and some objects are heavily occluded, not just clipped by a pixel
    assert min(a["area"] / a["full_area"] for a in occluded) < 0.8


def test_sizes_cover_several_fpn_levels(data_shapes):
    _, data = data_shapes
    sizes = np.array([math.sqrt(a["bbox"][2] * a["bbox"][3]) for a in data["annotations"]])
    # a level counts as covered when at least 3 objects fall in its range
    covered = [int(((sizes >= lo) & (sizes <= hi)).sum()) >= 3 for lo, hi in LEVEL_RANGES]
    assert sum(covered) >= 3
    assert sizes.min() < 24  # small objects exist ...
    assert sizes.max() > 110  # ... and large ones


def test_backgrounds_are_textured(data_shapes):
    root, data = data_shapes
    # the background is not a flat colour: lots of distinct values even in a corner patch
    for im in data["images"][:5]:
        pixels = np.asarray(Image.open(root / "train" / im["file_name"]))
        patch = pixels[:16, :16].reshape(-1, 3)
        assert len(np.unique(patch, axis=0)) > 50


def test_same_seed_is_byte_identical_other_seed_differs(tmp_path):
    a = make_shapes_dataset(tmp_path / "a", num_train=3, num_val=2, seed=7, progress=False)
    b = make_shapes_dataset(tmp_path / "b", num_train=3, num_val=2, seed=7, progress=False)
    c = make_shapes_dataset(tmp_path / "c", num_train=3, num_val=2, seed=8, progress=False)
    for split in ("train", "val"):
        ja = (a / "annotations" / f"instances_{split}.json").read_bytes()
        jb = (b / "annotations" / f"instances_{split}.json").read_bytes()
        jc = (c / "annotations" / f"instances_{split}.json").read_bytes()
        assert ja == jb
        assert ja != jc
        for f in sorted((a / split).glob("*.png")):
            assert f.read_bytes() == (b / split / f.name).read_bytes()
    # train and val are different images
    assert (a / "train" / "000001.png").read_bytes() != (a / "val" / "000001.png").read_bytes()


def test_other_image_size(tmp_path):
    root = make_shapes_dataset(tmp_path, num_train=2, num_val=1, image_size=128, progress=False)
    data = json.loads((root / "annotations" / "instances_val.json").read_text())
    assert data["images"][0]["height"] == data["images"][0]["width"] == 128
    for a in data["annotations"]:
        assert a["segmentation"]["size"] == [128, 128]
        assert _decode(a).sum() == a["area"]


def test_render_shapes_image_visible_inside_full():
    rng = np.random.default_rng(3)
    image, instances = render_shapes_image(rng, 96)
    assert image.shape == (96, 96, 3) and image.dtype == np.uint8
    assert 1 <= len(instances) <= 6
    for inst in instances:
        assert 0 <= inst.label < len(SHAPE_CLASSES)
        assert not np.any(inst.visible_mask & ~inst.full_mask)
        assert inst.visible_mask.sum() >= 30


def test_size_range_and_object_count_options():
    """min_size / max_size (px of a 256 px image, scaled to image_size) bound every full
    object's box; max_objects bounds the count."""
    sizes, counts = [], []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        _, instances = render_shapes_image(rng, 192, max_objects=8, min_size=32, max_size=200)
        counts.append(len(instances))
        for inst in instances:
            ys, xs = np.nonzero(inst.full_mask)
            sizes.append(math.sqrt((np.ptp(xs) + 1) * (np.ptp(ys) + 1)))
    scale = 192 / 256
    # rasterisation may add or drop a pixel row or column at each side
    assert min(sizes) >= 32 * scale - 2 and max(sizes) <= 200 * scale + 2
    assert max(counts) <= 8 and max(counts) > 6
    with pytest.raises(ValueError, match="min_size"):
        render_shapes_image(np.random.default_rng(0), 96, min_size=50, max_size=20)

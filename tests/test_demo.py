"""The demo's data and recipe: the shapes set is generated once and again only when its
options change (a stale set from other options must never be trained on silently); the demo's
data keeps the shapes spec and its scale ranges are the tiny preset's doubled."""

from __future__ import annotations

import json

import numpy as np
import torch

from minisolo import preset
from minisolo.data.shapes import render_shapes_image
from minisolo.demo import (
    DEMO_IMAGE_SIZE,
    DEMO_OVERRIDES,
    DEMO_SCALE_RANGES,
    DEMO_SHAPES,
    ensure_shapes,
)
from minisolo.targets import masks_to_boxes


def _info(root):
    return json.loads((root / "annotations" / "instances_train.json").read_text())["info"]


def test_ensure_shapes_reuses_the_same_set_and_rewrites_a_different_one(tmp_path):
    root = tmp_path / "shapes"
    ensure_shapes(root, 3, 1, seed=0, image_size=64, **DEMO_SHAPES)
    train_json = root / "annotations" / "instances_train.json"
    first = train_json.stat().st_mtime_ns
    assert _info(root)["image_size"] == 64
    assert _info(root)["max_objects"] == DEMO_SHAPES["max_objects"]

    ensure_shapes(root, 3, 1, seed=0, image_size=64, **DEMO_SHAPES)
    assert train_json.stat().st_mtime_ns == first  # same options: kept

    ensure_shapes(root, 3, 1, seed=0, image_size=96, **DEMO_SHAPES)
    assert _info(root)["image_size"] == 96  # other size: written again

    ensure_shapes(root, 5, 1, seed=0, image_size=96, **DEMO_SHAPES)
    assert len(json.loads(train_json.read_text())["images"]) == 5  # other count: again

    train_json.write_text("{not json")
    ensure_shapes(root, 5, 1, seed=0, image_size=96, **DEMO_SHAPES)
    assert _info(root)["seed"] == 0  # unreadable: written again


def test_demo_objects_span_at_least_three_levels_of_the_tiny_preset():
    """The demo's data keeps the shapes spec: object sizes on >= 3 FPN levels of the tiny
    preset (and of the demo's own ranges), at most max_objects per image, some occlusion."""
    sizes, counts, occluded = [], [], 0
    for seed in range(30):
        rng = np.random.default_rng(seed)
        _, instances = render_shapes_image(rng, DEMO_IMAGE_SIZE, **DEMO_SHAPES)
        counts.append(len(instances))
        full = torch.from_numpy(np.stack([inst.full_mask for inst in instances]))
        x1, y1, x2, y2 = masks_to_boxes(full).unbind(1)
        sizes += torch.sqrt((x2 - x1) * (y2 - y1)).tolist()  # solo_targets' box size
        occluded += sum(int(i.visible_mask.sum() < i.full_mask.sum()) for i in instances)
    assert max(counts) <= DEMO_SHAPES["max_objects"]
    assert occluded > 0
    for ranges in (preset("tiny").scale_ranges, DEMO_SCALE_RANGES):
        levels = {k for s in sizes for k, (lo, hi) in enumerate(ranges) if lo <= s <= hi}
        assert len(levels) >= 3, (ranges, sorted(levels))


def test_demo_scale_ranges_are_the_tiny_presets_doubled():
    tiny = preset("tiny").scale_ranges
    doubled = tuple((1 if lo == 1 else 2 * lo, 2 * hi) for lo, hi in tiny)
    assert DEMO_SCALE_RANGES == doubled
    assert preset("tiny", **DEMO_OVERRIDES).scale_ranges == doubled

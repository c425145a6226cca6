"""The demo's data step: the shapes set is generated once and again only when its options
change (a stale set from other options must never be trained on silently)."""

from __future__ import annotations

import json

from minisolo.demo import DEMO_SHAPES, ensure_shapes


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

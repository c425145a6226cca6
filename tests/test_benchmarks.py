"""The benchmarks' naive baseline is a real second implementation of the SOLO assignment:
it must agree with ``minisolo.solo_targets`` exactly. And ``benchmarks/run.py`` must produce
well-formed JSON rows (one cheap group only; the full run is not part of the tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.loop_targets import loop_solo_targets  # noqa: E402
from benchmarks.mask_ceiling import oracle_ap, oracle_mask  # noqa: E402
from benchmarks.synthetic import clustered_candidates, random_instance_masks  # noqa: E402
from minisolo import preset, solo_targets  # noqa: E402
from minisolo.data import make_shapes_dataset  # noqa: E402
from minisolo.nms import same_class_intersections  # noqa: E402
from minisolo.targets import resize_masks  # noqa: E402

PAPER = dict(
    grids=(40, 36, 24, 16, 12),
    strides=(8, 8, 16, 32, 32),
    scale_ranges=((1, 96), (48, 192), (96, 384), (192, 768), (384, 2048)),
)


def _assert_same_targets(masks, labels, **kwargs):
    fast = solo_targets(masks, labels, **kwargs)
    slow = loop_solo_targets(masks, labels, **kwargs)
    assert len(fast) == len(slow)
    for level, (a, b) in enumerate(zip(fast, slow, strict=True)):
        assert torch.equal(a.category, b.category), f"category differs at level {level}"
        assert torch.equal(a.positive_index, b.positive_index), f"positives differ at {level}"
        assert torch.equal(a.instance, b.instance), f"instances differ at level {level}"
        assert a.masks.shape == b.masks.shape and a.masks.dtype == b.masks.dtype
        assert torch.equal(a.masks, b.masks), f"mask targets differ at level {level}"
    return fast


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loop_baseline_equals_vectorised_paper_settings(seed):
    g = torch.Generator().manual_seed(seed)
    masks, labels = random_instance_masks(
        12, 320, 448, min_size=6, max_size=400, num_classes=5, generator=g
    )
    levels = _assert_same_targets(masks, labels, num_classes=5, **PAPER)
    assert sum(lt.num_positives for lt in levels) > 0


@pytest.mark.parametrize("seed", [3, 4])
def test_loop_baseline_equals_vectorised_with_given_boxes_and_sigma(seed):
    g = torch.Generator().manual_seed(seed)
    masks, labels = random_instance_masks(
        8, 128, 192, min_size=4, max_size=120, num_classes=3, generator=g
    )
    # loose boxes (bigger than the masks), as annotations sometimes are
    boxes = torch.zeros(len(masks), 4)
    for n, m in enumerate(masks):
        ys, xs = m.nonzero(as_tuple=True)
        if len(ys):
            boxes[n] = torch.tensor([xs.min() - 3.5, ys.min() - 1.25, xs.max() + 4, ys.max() + 2])
    _assert_same_targets(
        masks,
        labels,
        num_classes=3,
        grids=(12, 8, 5),
        strides=(8, 16, 32),
        scale_ranges=((1, 48), (24, 96), (48, 400)),
        sigma=0.3,
        boxes=boxes,
    )


def test_loop_baseline_equals_vectorised_on_grid_boundaries():
    """Integer rectangles on a size that the grids divide: centres and region edges fall
    exactly on cell boundaries, where float rounding would show."""
    g = torch.Generator().manual_seed(5)
    masks = torch.zeros(20, 160, 160, dtype=torch.bool)
    for n in range(20):
        y1, x1 = torch.randint(0, 120, (2,), generator=g).tolist()
        h, w = torch.randint(2, 40, (2,), generator=g).tolist()
        masks[n, y1 : y1 + h, x1 : x1 + w] = True
    labels = torch.randint(0, 4, (20,), generator=g)
    _assert_same_targets(
        masks,
        labels,
        num_classes=4,
        grids=(40, 20, 10),
        strides=(4, 8, 16),
        scale_ranges=((1, 20), (10, 40), (20, 200)),
        min_mask_area=1,
    )


def test_odd_sizes_and_uint8_masks_use_the_interpolation_path():
    """Sizes that the mask strides do not divide fall back to F.interpolate."""
    g = torch.Generator().manual_seed(6)
    masks, labels = random_instance_masks(6, 100, 150, min_size=8, max_size=90, generator=g)
    kwargs = dict(num_classes=80, grids=(10, 6), strides=(8, 16), scale_ranges=((1, 64), (32, 256)))
    _assert_same_targets(masks.to(torch.uint8), labels, **kwargs)


def test_integer_resize_shortcut_equals_bilinear():
    g = torch.Generator().manual_seed(7)
    masks, _ = random_instance_masks(10, 96, 160, min_size=3, max_size=80, generator=g)
    for size in ((48, 80), (24, 40), (12, 20), (6, 10), (48, 40), (12, 80)):
        expected = torch.nn.functional.interpolate(
            masks[:, None].float(), size=size, mode="bilinear", align_corners=False
        )[:, 0]
        assert torch.equal(resize_masks(masks, size), expected >= 0.5), size


@pytest.mark.parametrize("width", [64, 61])  # 61: no 8-pixel words, the plain-sum path
def test_grouped_intersections_equal_the_full_product(width):
    g = torch.Generator().manual_seed(8)
    masks, labels, _ = clustered_candidates(
        80, 40, width, num_objects=12, num_classes=3, generator=g
    )
    flat = masks.flatten(1).float()
    expected = (flat @ flat.T) * (labels[:, None] == labels[None, :])
    assert torch.equal(same_class_intersections(masks, labels), expected)


def test_run_py_only_writes_well_formed_rows(tmp_path):
    out = tmp_path / "rows.json"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "run.py"),
            "--only",
            "decoupled_memory",
            "--json",
            str(out),
            "--threads",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text())
    assert [r["name"] for r in rows] == [
        "decoupled_mask_memory_ratio",
        "decoupled_mask_memory_ratio/S40",
    ]
    for r in rows:
        assert set(r) == {"name", "value", "unit", "device", "config", "detail"}
        assert isinstance(r["value"], float)
    # S = 40: 2 * 40 channels instead of 40^2
    assert rows[1]["value"] == pytest.approx(80 / 1600)
    assert 0 < rows[0]["value"] < 0.1


def test_oracle_mask_keeps_aligned_edges_rounds_corners_and_loses_small_discs():
    def iou(a, b):
        return ((a & b).sum() / (a | b).sum()).item()

    square = torch.zeros(64, 64, dtype=torch.bool)
    square[16:48, 16:48] = True  # cells 1..2 of a stride-16 grid: the 2 x 2 target is exact
    upsampled = oracle_mask(square, 16)
    # bilinear upsampling crosses 0.5 exactly on the cell borders along each edge ...
    assert torch.equal(upsampled[31], square[31]) and torch.equal(upsampled[:, 31], square[:, 31])
    # ... but in 2-D it is the product of two ramps: the corners are rounded off
    assert not upsampled[16, 16] and 0.85 < iou(upsampled, square) < 1.0
    rows, cols = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    disc = (rows - 31.5) ** 2 + (cols - 31.5) ** 2 <= 10**2  # 20 px across
    # at stride 16 no target pixel is set (its 2 x 2 samples at 23-24 px lie outside the disc)
    assert oracle_mask(disc, 16).sum() == 0
    assert iou(oracle_mask(disc, 8), disc) < iou(oracle_mask(disc, 4), disc)


def test_oracle_ap_is_one_at_full_resolution_and_lower_at_solo_strides(tmp_path):
    data = make_shapes_dataset(tmp_path, num_train=1, num_val=12, image_size=96, progress=False)
    tiny = preset("tiny")
    full_resolution = oracle_ap(data, "val", tiny.scale_ranges, (2, 2, 2, 2, 2))
    assert full_resolution["AP"] == pytest.approx(1.0)
    finest = oracle_ap(data, "val", tiny.scale_ranges, tiny.strides, "finest")
    coarsest = oracle_ap(data, "val", tiny.scale_ranges, tiny.strides, "coarsest")
    assert coarsest["AP"] <= finest["AP"] < 1.0
    assert finest["objects_outside_all_ranges"] == 0


def test_mask_ceiling_command_with_the_demos_wider_ranges(tmp_path, capsys):
    """The demo doubles the tiny preset's scale ranges: each object moves to a level of the
    same or a finer mask stride, so the oracle's coarsest-level AP cannot drop."""
    from benchmarks.mask_ceiling import main

    data = make_shapes_dataset(
        tmp_path / "d", num_train=1, num_val=12, image_size=128, progress=False
    )
    reports = {}
    for ranges in ("tiny", "demo"):
        out = tmp_path / f"{ranges}.json"
        assert main([str(data), "--scale-ranges", ranges, "--json", str(out)]) == 0
        reports[ranges] = json.loads(out.read_text())
    assert "oracle (coarsest level)" in capsys.readouterr().out
    assert reports["demo"]["coarsest"]["AP"] >= reports["tiny"]["coarsest"]["AP"]
    assert reports["demo"]["coarsest"]["AP"] <= reports["demo"]["finest"]["AP"] <= 1.0


def test_cpu_speed_helpers_measure_and_say_when_the_cached_model_is_missing(tmp_path, monkeypatch):
    from benchmarks import run as bench_run
    from benchmarks.common import Context

    for dtype in (torch.float32, torch.bfloat16):
        gflops = bench_run.matmul_gflop_per_s(dtype, 128, repeats=2)
        assert 0 < gflops < 1e5  # a number of the right kind, not a claim about this machine
    monkeypatch.setattr("minisolo.model_cache.entry_dir", lambda name, fast=None: tmp_path / name)
    row = bench_run.trained_inference_row(Context(quick=True))
    assert row["name"] == "inference_ms_per_image/solo_trained"
    assert row["value"] is None and "minisolo models build solo" in row["detail"]


def test_trained_inference_default_wait_row_runs_a_child_without_the_wait_policy(
    tmp_path, monkeypatch
):
    """The child process measures with OMP_WAIT_POLICY unset (this process has PASSIVE, set by
    benchmarks/run.py); with an empty cache it says what is missing."""
    from benchmarks import run as bench_run
    from benchmarks.common import Context

    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.setenv("MINISOLO_DATA", str(tmp_path))  # no cached model there
    row = bench_run.trained_inference_default_wait_row(Context(quick=True))
    assert row["name"] == "inference_ms_per_image/solo_trained_default_wait"
    assert row["config"]["OMP_WAIT_POLICY"] == "unset (OpenMP's default)"
    assert row["value"] is None and "minisolo models build solo" in row["detail"]


@pytest.mark.parametrize("kind", ["solo", "solov2"])
def test_fake_training_step_memory_runs_the_solo_family_loss(kind):
    """The paper-memory rows' computation on fake tensors, at a tiny size: SOLOv2's masks are
    built image by image (its grouping has data-dependent sizes)."""
    from benchmarks.common import random_batch
    from benchmarks.memory import fake_training_step_memory, solo_fake_loss
    from minisolo.models import build_model

    config = preset("tiny", model=kind, num_classes=3)
    _, targets = random_batch(2, 128, 128, 3, config.num_classes, 0)
    level_targets = build_model(config).targets(targets)  # the model's own (real) targets
    assert sum(lt.num_positives for lt in level_targets) > 0
    result = fake_training_step_memory(
        lambda: build_model(config),
        (2, 3, 128, 128),
        solo_fake_loss(level_targets, config.num_classes, config.grids),
    )
    # parameters, momentum buffers of the same size, and the activations on top of them
    assert result["optimizer_state"] == pytest.approx(result["parameters"], rel=0.05)
    assert result["peak"] > result["forward_peak"] > 2 * result["parameters"]

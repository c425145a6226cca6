"""Tests for minisolo.grid_cells, the explorer's query core, without ipywidgets.

Untrained tiny models on a synthetic 128x128 image; every answer is checked by hand against
the model's own outputs (channel ``k = i * S + j`` for SOLO, ``sigmoid(Y_i) * sigmoid(X_j)``
for Decoupled SOLO, ``sigmoid(kernel_k * F)`` for SOLOv2, the positive cells of
``solo_targets``, ``model.candidates`` ...).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from minisolo import SOLO, DecoupledSOLO, SOLOv2, preset, solo_targets
from minisolo.grid_cells import (
    CELL_MASKS,
    GridCells,
    decoupled_factors,
    run_once,
    solo_cell_mask,
    solov2_kernel,
)

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("circle", "square", "triangle", "star")
GRIDS = preset("tiny").grids
# a few cells of every level: corners, edges and inside, as (level, i, j)
CELLS = [
    (lv, i, j)
    for lv, s in enumerate(GRIDS)
    for i, j in [(0, 0), (0, s - 1), (s - 1, 0), (s // 2, s // 3), (s - 1, s - 1)]
]


def _scene(h=128, w=128):
    """A normalised image and two objects of different sizes."""
    g = torch.Generator().manual_seed(0)
    image = torch.randn(3, h, w, generator=g)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    masks = torch.zeros(2, h, w, dtype=torch.bool)
    masks[0] = (ys - 40) ** 2 + (xs - 44) ** 2 <= 14**2  # ~ 28 px
    masks[1, 60:120, 56:124] = True  # ~ 64 px
    return image, {"masks": masks, "labels": torch.tensor([0, 2])}


def _model(cls, seed=0):
    torch.manual_seed(seed)
    return cls(preset("tiny", num_classes=4, class_names=NAMES)).eval()


def _outputs(model, image):
    with torch.no_grad():
        return model(image[None])


@pytest.fixture(scope="module")
def solo():
    image, target = _scene()
    model = _model(SOLO)
    return GridCells(model, image, targets=target), model, _outputs(model, image), target


@pytest.fixture(scope="module")
def decoupled():
    image, target = _scene()
    model = _model(DecoupledSOLO)
    return GridCells(model, (image, target)), model, _outputs(model, image)


def _solov2_model(seed=0):
    torch.manual_seed(seed)
    return SOLOv2(preset("tiny", model="solov2", num_classes=4, class_names=NAMES)).eval()


@pytest.fixture(scope="module")
def solov2():
    image, target = _scene()
    model = _solov2_model()
    return GridCells(model, image, targets=target), model, _outputs(model, image), target


def test_importing_and_querying_needs_no_ipywidgets_or_ipython():
    """In a fresh interpreter where ipywidgets and IPython cannot be imported at all."""
    script = textwrap.dedent(
        """
        import sys
        sys.modules["ipywidgets"] = None  # any import of them now raises ImportError
        sys.modules["IPython"] = None
        import torch
        from minisolo import SOLO, preset
        from minisolo.grid_cells import GridCells
        torch.manual_seed(0)
        model = SOLO(preset("tiny", num_classes=2)).eval()
        cells = GridCells(model, torch.randn(3, 64, 64))
        level, i, j = cells.best_cell()
        print("mask", cells.cell_mask(level, i, j).shape, "candidates",
              int(cells.candidates["scores"].numel()))
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("ipywidgets", "IPython")
                        and sys.modules[m] is not None)
        print("loaded:", loaded)
        """
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mask (" in result.stdout
    assert "loaded: []" in result.stdout, result.stdout


@pytest.mark.parametrize("level, i, j", CELLS)
def test_solo_cell_mask_is_the_sigmoid_of_channel_i_times_s_plus_j(solo, level, i, j):
    cells, model, outputs, _ = solo
    s = GRIDS[level]
    k = cells.channel_index(level, i, j)
    assert k == i * s + j
    mask = torch.from_numpy(cells.cell_mask(level, i, j))
    assert_close(mask, torch.sigmoid(outputs["mask"][level][0, i * s + j]))
    rows, cols = torch.tensor([i]), torch.tensor([j])  # and the head's own answer
    assert_close(mask, model.head.cell_mask_probs(outputs, level, 0, rows, cols)[0])
    assert cells.mask_shape(level) == tuple(outputs["mask"][level].shape[-2:])


@pytest.mark.parametrize("level, i, j", CELLS)
def test_decoupled_cell_mask_is_sigmoid_y_i_times_sigmoid_x_j(decoupled, level, i, j):
    cells, model, outputs = decoupled
    mask = torch.from_numpy(cells.cell_mask(level, i, j))
    y_i = torch.sigmoid(outputs["mask_y"][level][0, i])
    x_j = torch.sigmoid(outputs["mask_x"][level][0, j])
    assert_close(mask, y_i * x_j)
    rows, cols = torch.tensor([i]), torch.tensor([j])
    assert_close(mask, model.head.cell_mask_probs(outputs, level, 0, rows, cols)[0])
    fx, fy = decoupled_factors(cells.outputs, level, i, j)
    assert_close(fx, x_j)
    assert_close(fy, y_i)


@pytest.mark.parametrize("level, i, j", CELLS)
def test_solov2_cell_mask_is_the_sigmoid_of_the_cells_kernel_on_the_mask_features(
    solov2, level, i, j
):
    cells, model, outputs, _ = solov2
    assert CELL_MASKS[cells.kind] is CELL_MASKS["solov2"]
    kernel = outputs["kernel"][level][0, :, i, j]  # the cell's E weights
    by_hand = F.conv2d(outputs["mask_features"], kernel.view(1, -1, 1, 1))[0, 0]  # a 1x1 conv
    mask = torch.from_numpy(cells.cell_mask(level, i, j))
    assert_close(mask, torch.sigmoid(by_hand))
    rows, cols = torch.tensor([i]), torch.tensor([j])  # and the model's own answer
    assert_close(mask, model.cell_mask_probs(outputs, level, 0, rows, cols)[0])
    assert_close(solov2_kernel(cells.outputs, level, i, j), kernel)
    assert cells.mask_shape(level) == (32, 32)  # every level's masks at stride 4


def test_solov2_outputs_targets_and_candidates(solov2, solo):
    cells, model, outputs, target = solov2
    # the shared mask features are one tensor, not a list per level
    assert torch.is_tensor(cells.outputs["mask_features"])
    assert cells.outputs["mask_features"].shape == (1, 64, 32, 32)
    assert not np.array_equal(cells.cell_mask(1, 4, 4), cells.cell_mask(1, 4, 5))
    # the same assignment as SOLO's, with the mask targets at stride 4
    for lt, solo_lt in zip(cells.level_targets, solo[0].level_targets, strict=True):
        assert torch.equal(lt.positive_index, solo_lt.positive_index)
        assert lt.masks.shape[-2:] == (32, 32)
    assert all(np.array_equal(a, b) for a, b in zip(cells.owners, solo[0].owners, strict=True))
    assert any((owner >= 0).any() for owner in cells.owners)
    # many firing cells with large masks: the candidates and NMS are the model's
    image, _ = _scene()
    model = _solov2_model()
    with torch.no_grad():
        model.head.category_branch.classifier.bias.fill_(2.0)
        model.head.kernel_branch.kernel_conv.bias.fill_(1.0)
    many = GridCells(model, image)
    cand = many.candidates
    assert int(cand["scores"].numel()) > 20
    expected = model.candidates(_outputs(model, image), 0)
    assert_close(cand["scores"], expected["scores"])
    assert torch.equal(cand["cells"], expected["cells"])
    pred = many.predictions
    assert 0 < int(pred["scores"].numel()) < int(cand["scores"].numel())
    assert pred["masks"].shape[-2:] == many.padded_size


def test_neighbouring_cells_have_different_masks(solo, decoupled):
    for cells in (solo[0], decoupled[0]):
        assert not np.array_equal(cells.cell_mask(1, 4, 4), cells.cell_mask(1, 4, 5))
        assert not np.array_equal(cells.cell_mask(1, 4, 4), cells.cell_mask(1, 5, 4))


@pytest.mark.parametrize("level, i, j", CELLS)
def test_cell_scores_are_the_sigmoid_of_the_category_branch(solo, level, i, j):
    cells, _, outputs, _ = solo
    scores = torch.from_numpy(cells.cell_scores(level, i, j))
    assert scores.shape == (4,)
    assert_close(scores, torch.sigmoid(outputs["category"][level][0, :, i, j]))


def test_cell_owner_follows_the_positive_cells_of_solo_targets(solo):
    cells, model, _, target = solo
    cfg = model.config
    expected = solo_targets(
        target["masks"],
        target["labels"],
        num_classes=4,
        grids=cfg.grids,
        scale_ranges=cfg.scale_ranges,
        strides=cfg.strides,
        sigma=cfg.sigma,
    )
    total = 0
    for level, lt in enumerate(expected):
        s = cfg.grids[level]
        owners = {int(k): int(g) for k, g in zip(lt.positive_index, lt.instance, strict=True)}
        total += len(owners)
        for k in range(s * s):
            assert cells.cell_owner(level, k // s, k % s) == owners.get(k)
    assert total > 0  # the scene does have positive cells
    assert {cells.cell_owner(*c) for c in CELLS if cells.cell_owner(*c) is not None} <= {0, 1}


def test_without_targets_no_cell_has_an_owner():
    image, _ = _scene()
    cells = GridCells(_model(SOLO), image)
    assert cells.targets is None and cells.level_targets is None
    assert all(cells.cell_owner(*c) is None for c in CELLS)


def test_heat_map_and_best_cell(solo):
    cells, _, outputs, _ = solo
    probs = [torch.sigmoid(c[0]) for c in outputs["category"]]
    for level in range(len(GRIDS)):
        assert_close(torch.from_numpy(cells.heat_map(level)), probs[level].max(0).values)
        assert_close(torch.from_numpy(cells.heat_map(level, 2)), probs[level][2])
    # the best cell of all levels, found by hand
    best_level = max(range(len(GRIDS)), key=lambda lv: float(probs[lv].max()))
    flat = int(probs[best_level].max(0).values.argmax())
    s = GRIDS[best_level]
    assert cells.best_cell() == (best_level, flat // s, flat % s)
    level, i, j = cells.best_cell(level=3, class_index=1)
    assert level == 3
    assert cells.cell_scores(3, i, j)[1] == pytest.approx(float(probs[3][1].max()))


def test_candidates_before_and_after_nms():
    image, target = _scene()
    model = _model(SOLO)
    with torch.no_grad():  # make every cell fire and every mask large: many candidates
        model.head.category_branch.classifier.bias.fill_(2.0)
        for conv in model.head.mask_outputs:
            conv.bias.fill_(2.0)
    cells = GridCells(model, image, targets=target)
    outputs = _outputs(model, image)
    cand = cells.candidates
    n = int(cand["scores"].numel())
    assert n > 20
    expected = model.candidates(outputs, 0)
    assert_close(cand["scores"], expected["scores"])
    assert torch.equal(cand["labels"], expected["labels"])
    # each candidate comes from a cell whose class score passed the threshold
    for level, k, label in zip(cand["levels"], cand["cells"], cand["labels"], strict=True):
        s = GRIDS[int(level)]
        score = cells.cell_scores(int(level), int(k) // s, int(k) % s)[int(label)]
        assert score > model.config.score_threshold
    pred = cells.predictions
    assert 0 < int(pred["scores"].numel()) < n  # NMS removed duplicates
    assert pred["masks"].shape[-2:] == cells.padded_size
    after = model.post_process(outputs, 0, (128, 128), (128, 128))
    assert_close(pred["scores"], after["scores"])
    assert cells.candidates is cand  # computed once


def test_padding_sizes_and_the_model_mode():
    image, target = _scene(120, 100)
    model = _model(SOLO).train()
    cells = GridCells(model, (image, target), class_names=NAMES)
    assert model.training  # restored after the eval-mode forward pass
    assert cells.image_size == (120, 100) and cells.padded_size == (128, 128)
    assert cells.image.shape == (3, 128, 128) and cells.targets["masks"].shape == (2, 128, 128)
    assert cells.mask_shape(0) == (32, 32)
    assert cells.class_names == list(NAMES)
    assert all(t.device.type == "cpu" for t in cells.outputs["mask"])
    outputs = run_once(model, cells.image)
    assert_close(outputs["category"][2], cells.outputs["category"][2])


def test_bad_inputs_raise():
    image, _ = _scene()
    cells = GridCells(_model(SOLO), image)
    s = GRIDS[0]
    with pytest.raises(ValueError, match="outside"):
        cells.cell_mask(0, s, 0)
    with pytest.raises(ValueError, match="outside"):
        cells.cell_scores(0, 0, -1)
    with pytest.raises(ValueError, match="level"):
        cells.cell_owner(len(GRIDS), 0, 0)
    with pytest.raises(ValueError, match="3, H, W"):
        GridCells(_model(SOLO), torch.zeros(1, 3, 64, 64))
    not_a_grid_model = types.SimpleNamespace(model_kind="yolact", config=preset("tiny"))
    with pytest.raises(ValueError, match="CELL_MASKS"):
        GridCells(not_a_grid_model, image)


def test_a_new_model_kind_is_one_function_in_cell_masks(monkeypatch):
    """What SOLOv2 did: register its "mask of cell (i, j)" and every query works."""

    def inverted(model, outputs, level, i, j):
        return 1 - solo_cell_mask(model, outputs, level, i, j)

    monkeypatch.setitem(CELL_MASKS, "inverted_solo", inverted)
    image, _ = _scene()
    model = _model(SOLO)
    model.model_kind = "inverted_solo"
    cells = GridCells(model, image)
    outputs = _outputs(model, image)
    s = GRIDS[2]
    assert_close(
        torch.from_numpy(cells.cell_mask(2, 3, 4)),
        1 - torch.sigmoid(outputs["mask"][2][0, 3 * s + 4]),
    )

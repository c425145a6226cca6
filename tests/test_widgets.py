"""Tests for minisolo.widgets.GridExplorer with untrained tiny models on a 256x256 image."""

from __future__ import annotations

import io
import time

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch

from minisolo import SOLO, DecoupledSOLO, preset, solo_targets

pytest.importorskip("ipywidgets", reason="the explorer needs ipywidgets (pip install ipywidgets)")
from minisolo.grid_cells import GridCells  # noqa: E402
from minisolo.widgets import GridExplorer  # noqa: E402

NAMES = ("circle", "square", "triangle", "star")


def _scene(h=256, w=256):
    """A normalised image and three objects: small, medium and large."""
    g = torch.Generator().manual_seed(0)
    image = torch.randn(3, h, w, generator=g)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    masks = torch.zeros(3, h, w, dtype=torch.bool)
    masks[0] = (ys - 60) ** 2 + (xs - 70) ** 2 <= 12**2  # ~ 24 px
    masks[1, 120:200, 20:110] = True  # ~ 85 px
    masks[2] = (ys - 150) ** 2 + (xs - 180) ** 2 <= 60**2  # ~ 120 px, overlaps nothing else
    masks[2] &= ~masks[1]
    labels = torch.tensor([0, 1, 3])
    return image, {"masks": masks, "labels": labels}


def _model(cls, seed=0):
    torch.manual_seed(seed)
    return cls(preset("tiny", num_classes=4, class_names=NAMES)).eval()


@pytest.fixture(scope="module")
def solo_explorer():
    image, target = _scene()
    model = _model(SOLO)
    explorer = GridExplorer(model, image, targets=target)
    with torch.no_grad():
        outputs = model(image[None])
    return explorer, model, outputs, image, target


@pytest.fixture(scope="module")
def decoupled_explorer():
    image, target = _scene()
    model = _model(DecoupledSOLO)
    explorer = GridExplorer(model, (image, target))  # the dataset's (image, target) pair
    with torch.no_grad():
        outputs = model(image[None])
    return explorer, model, outputs


# cells as fractions of the grid (the tiny preset's grid sizes may change): (level, y, x)
PLACES = [
    (0, 0.0, 0.0),
    (0, 0.2, 0.9),
    (1, 0.99, 0.2),
    (2, 0.5, 0.55),
    (3, 0.99, 0.99),
    (4, 0.6, 0.3),
]
GRIDS = preset("tiny").grids
CELLS = [(lv, int(y * GRIDS[lv]), int(x * GRIDS[lv])) for lv, y, x in PLACES]


@pytest.mark.parametrize("level, i, j", CELLS)
def test_select_returns_the_sigmoid_of_channel_i_times_s_plus_j(solo_explorer, level, i, j):
    explorer, model, outputs, _, _ = solo_explorer
    s = model.config.grids[level]
    mask = explorer.select(level, i, j)
    expected = torch.sigmoid(outputs["mask"][level][0, i * s + j])
    torch.testing.assert_close(torch.from_numpy(mask), expected)
    assert explorer.selected == (level, i, j)
    assert explorer.displayed_mask is mask
    assert explorer.i_slider.value == i and explorer.j_slider.value == j
    assert explorer.level_toggle.value == level
    assert f"k = i·S + j = {i}·{s} + {j} = {i * s + j}" in explorer.info.value


@pytest.mark.parametrize("level, i, j", CELLS)
def test_decoupled_select_returns_sigmoid_y_i_times_sigmoid_x_j(decoupled_explorer, level, i, j):
    explorer, _, outputs = decoupled_explorer
    mask = explorer.select(level, i, j)
    expected = torch.sigmoid(outputs["mask_y"][level][0, i]) * torch.sigmoid(
        outputs["mask_x"][level][0, j]
    )
    torch.testing.assert_close(torch.from_numpy(mask), expected)
    assert mask.shape == tuple(outputs["mask_x"][level].shape[-2:])


def test_changing_the_cell_changes_the_displayed_mask(solo_explorer):
    explorer = solo_explorer[0]
    first = explorer.select(1, 4, 4).copy()
    png = explorer.mask_image.value
    second = explorer.select(1, 4, 5)
    assert not np.array_equal(first, second)
    assert np.array_equal(explorer.displayed_mask, second)
    assert explorer.mask_image.value != png


def test_channel_index_and_grid_size(solo_explorer):
    explorer, model, _, _, _ = solo_explorer
    for level, s in enumerate(model.config.grids):
        assert explorer.grid_size(level) == s
        for i, j in [(0, 0), (0, s - 1), (s - 1, 0), (s // 2, s // 3)]:
            assert explorer.channel_index(level, i, j) == i * s + j
    with pytest.raises(ValueError):
        explorer.channel_index(0, model.config.grids[0], 0)
    with pytest.raises(ValueError):
        explorer.select(5, 0, 0)


def test_targets_mark_the_positive_cells_of_solo_targets(solo_explorer):
    explorer, model, _, _, target = solo_explorer
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
            assert explorer.cell_owner(level, k // s, k % s) == owners.get(k)
        if owners:  # the info text and the button of a positive cell say which object
            k, g = next(iter(owners.items()))
            explorer.select(level, k // s, k % s)
            assert f"positive for object #{g}" in explorer.info.value
            assert explorer._buttons[level][k].description == str(g)
    assert total > 0
    explorer.select(0, 0, 0)  # a corner cell is background here
    assert "negative" in explorer.info.value


def test_clicks_sliders_and_level_toggle_drive_the_selection(solo_explorer):
    explorer = solo_explorer[0]
    explorer.select(2, 3, 3)
    s, s3 = explorer.grid_size(2), explorer.grid_size(3)
    explorer._buttons[2][5 * s + 6].click()  # what a click in the browser does
    assert explorer.selected == (2, 5, 6)
    explorer.j_slider.value = 7
    assert explorer.selected == (2, 5, 7)
    explorer.level_toggle.value = 3  # same place in the image on the next grid
    level, i, j = explorer.selected
    assert level == 3 and (i, j) == (int(5.5 * s3 / s), int(7.5 * s3 / s))
    assert explorer.grid_holder.children[0] is explorer._grid_boxes[3]
    explorer.heat_class.value = 1
    assert explorer.selected == (3, i, j)
    explorer.heat_class.value = -1
    # exactly one button of each visited grid is outlined: the level's current cell
    explorer.select(2, 0, 0)
    explorer.select(3, 1, 1)
    explorer.select(2, 4, 4)
    for level, cell in ((2, 4 * s + 4), (3, 1 * s3 + 1)):
        marked = [
            k
            for k, b in enumerate(explorer._buttons[level])
            if "minisolo-selected" in b._dom_classes
        ]
        assert marked == [cell]


def test_explorer_is_a_view_over_grid_cells(solo_explorer):
    explorer = solo_explorer[0]
    cells = explorer.cells
    assert isinstance(cells, GridCells)
    assert explorer.outputs is cells.outputs and explorer.owners is cells.owners
    np.testing.assert_array_equal(explorer.select(2, 3, 4), cells.cell_mask(2, 3, 4))
    explorer.best_button.click()  # the best cell of the current level and "colour by" class
    assert explorer.selected == cells.best_cell(2)
    explorer.heat_class.value = 1
    explorer.best_button.click()
    assert explorer.selected == cells.best_cell(2, class_index=1)
    explorer.heat_class.value = -1


def test_selection_is_fast(solo_explorer):
    explorer = solo_explorer[0]
    explorer.select(1, 0, 0)  # build the level's views once
    times = []
    for j in range(1, 6):
        start = time.perf_counter()
        explorer.select(1, 10, j)
        times.append(time.perf_counter() - start)
    print(
        f"\nGridExplorer.select: median {np.median(times) * 1000:.0f} ms, "
        f"max {max(times) * 1000:.0f} ms (target < 1 s on a CPU)"
    )
    assert np.median(times) < 5.0


def test_image_is_padded_and_pair_input_is_accepted():
    image, target = _scene(240, 200)
    model = _model(SOLO)
    explorer = GridExplorer(model, (image, target), class_names=NAMES)
    assert explorer.padded_size == (256, 224)
    assert explorer.image_size == (240, 200)
    assert explorer.targets["masks"].shape[-2:] == (256, 224)
    mask = explorer.select(0, 2, 3)
    assert mask.shape == (64, 56)
    assert explorer.widget is explorer._app
    with pytest.raises(ValueError, match="3, H, W"):
        GridExplorer(model, torch.zeros(1, 3, 64, 64))


def test_predictions_tab_with_many_candidates():
    image, target = _scene(128, 128)
    model = _model(SOLO)
    with torch.no_grad():  # make every cell fire and every mask large: many candidates
        model.head.category_branch.classifier.bias.fill_(2.0)
        for conv in model.head.mask_outputs:
            conv.bias.fill_(2.0)
    explorer = GridExplorer(model, image, targets=target)
    assert not explorer.before_image.value  # drawn only when the tab is opened
    explorer.tabs.selected_index = 1
    n = int(explorer.candidates["scores"].numel())
    assert n > 20
    assert explorer.before_image.value and explorer.after_image.value
    assert explorer.top_n.value == 20 and explorer.top_n.max == n
    assert f"{n} candidates" in explorer.predictions_info.value
    before = explorer.before_image.value
    explorer.top_n.value = 5
    assert explorer.before_image.value != before
    # the model was restored to its mode and its outputs are on the CPU
    assert not model.training
    assert all(t.device.type == "cpu" for t in explorer.outputs["category"])


def test_display_bundle_has_the_widget_and_a_static_snapshot(solo_explorer):
    from PIL import Image

    explorer = solo_explorer[0]
    bundle = explorer._repr_mimebundle_()
    view = bundle["application/vnd.jupyter.widget-view+json"]
    assert view["model_id"] == explorer.widget.model_id
    with Image.open(io.BytesIO(bundle["image/jpeg"])) as snapshot:
        assert snapshot.format == "JPEG"
        assert snapshot.width >= 600 and snapshot.height >= 600

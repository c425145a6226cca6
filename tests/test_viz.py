"""Tests for minisolo.viz: every figure function runs on small inputs and shows the right data."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

from minisolo import preset, solo_targets, viz

NAMES = ("circle", "square", "triangle", "star")


def _render(fig: Figure) -> bytes:
    """Draw the figure for real (catches errors that only show up at draw time)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=40)
    return buffer.getvalue()


def _disk(h, w, cy, cx, r):
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return (ys - cy) ** 2 + (xs - cx) ** 2 <= r**2


@pytest.fixture()
def scene():
    """A 128x96 image with three objects of different sizes."""
    h, w = 128, 96
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, h, w, generator=g)
    masks = torch.zeros(3, h, w, dtype=torch.bool)
    masks[0] = _disk(h, w, 40, 30, 20)
    masks[1, 80:120, 50:90] = True
    masks[2] = _disk(h, w, 20, 75, 6)
    labels = torch.tensor([0, 1, 3])
    scores = torch.tensor([0.9, 0.75, 0.3])
    return image, masks, labels, scores


def test_draw_instances_draws_masks_contours_and_tags(scene):
    image, masks, labels, scores = scene
    fig = Figure()
    ax = fig.subplots()
    out = viz.draw_instances(ax, image, masks, labels, scores, NAMES, title="three objects")
    assert out is ax
    texts = {t.get_text() for t in ax.texts}
    assert {"circle 0.90", "square 0.75", "star 0.30"} <= texts
    assert ax.get_title() == "three objects"
    assert len(ax.images) == 2  # the image and the mask overlay
    overlay = ax.images[1].get_array()
    # the overlay is coloured with instance 1's colour inside mask 1, transparent outside
    np.testing.assert_allclose(overlay[100, 70, :3], viz.instance_color(1), atol=1e-6)
    assert overlay[5, 5, 3] == 0
    _render(fig)


def test_draw_instances_accepts_numpy_normalised_and_low_res_masks(scene):
    image, masks, labels, _ = scene
    fig = Figure()
    ax1, ax2, ax3 = fig.subplots(1, 3)
    viz.draw_instances(ax1, image.permute(1, 2, 0).numpy(), masks.numpy(), labels)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    normalised = (image - mean) / std
    viz.draw_instances(ax2, normalised, masks, labels, boxes=torch.tensor([[0, 0, 10, 10]] * 3))
    np.testing.assert_allclose(ax2.images[0].get_array(), image.permute(1, 2, 0).numpy(), atol=1e-5)
    low_res = masks[:, ::4, ::4]  # e.g. masks at stride 4
    viz.draw_instances(ax3, image, low_res, None, None)
    assert ax3.images[1].get_array().shape[:2] == (128, 96)
    _render(fig)


def test_save_instances_writes_a_png_of_the_image_size(scene, tmp_path):
    image, masks, labels, scores = scene
    path = viz.save_instances(
        tmp_path / "a" / "b" / "pred.png", image, masks, labels, scores, NAMES
    )
    assert path.is_file()
    with Image.open(path) as png:
        assert png.format == "PNG"
        assert png.size == (96, 128)  # (width, height)
        pixels = np.asarray(png.convert("RGB"))
    assert pixels.std() > 0


def test_compare_prediction_colours_matched_predictions_like_their_gt(scene):
    image, masks, labels, scores = scene
    # predictions: object 1 (slightly shrunk), then a false positive
    pred = torch.zeros(2, 128, 96, dtype=torch.bool)
    pred[0, 82:120, 52:90] = True
    pred[1, 0:10, 0:10] = True
    fig = viz.compare_prediction(
        image, masks, labels, pred, torch.tensor([1, 2]), torch.tensor([0.8, 0.5]), NAMES
    )
    assert isinstance(fig, Figure)
    ax_gt, ax_pred = fig.axes[:2]
    assert "ground truth" in ax_gt.get_title() and "3" in ax_gt.get_title()
    assert "1 match" in ax_pred.get_title()
    overlay = ax_pred.images[1].get_array()
    np.testing.assert_allclose(overlay[100, 70, :3], viz.instance_color(1), atol=1e-6)
    np.testing.assert_allclose(overlay[5, 5, :3], viz.instance_color(3), atol=1e-6)
    _render(fig)


def test_draw_grid_fills_positive_cells_with_their_object_colour(scene):
    image, masks, labels, _ = scene
    cfg = preset("tiny", num_classes=4)
    pad = torch.zeros(3, 128, 128)
    pad[:, :, :96] = image
    masks = torch.nn.functional.pad(masks, (0, 32))
    targets = solo_targets(
        masks,
        labels,
        num_classes=4,
        grids=cfg.grids,
        scale_ranges=cfg.scale_ranges,
        strides=cfg.strides,
    )
    level = max(range(5), key=lambda lv: targets[lv].num_positives)
    lt, s = targets[level], cfg.grids[level]
    owner = viz.owner_map(lt, s)
    assert (owner >= 0).sum() == lt.num_positives
    assert set(np.flatnonzero(owner >= 0)) == set(lt.positive_index.tolist())
    fig = Figure()
    ax = fig.subplots()
    viz.draw_grid(ax, pad, s, positives=lt, highlight=(1, 2), title="grid")
    filled = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_fill()]
    assert len(filled) == lt.num_positives
    cell = 128 / s
    for p in filled:
        i, j = round(p.get_y() / cell), round(p.get_x() / cell)
        np.testing.assert_allclose(p.get_facecolor()[:3], viz.instance_color(owner[i, j]))
    outlines = [p for p in ax.patches if not p.get_fill()]
    assert {(p.get_x(), p.get_y()) for p in outlines} == {(2 * cell, 1 * cell)}
    # the same with an [S, S] owner array and the channel numbers printed
    fig2 = Figure()
    viz.draw_grid(fig2.subplots(), pad, s, positives=owner, show_numbers=True)
    assert str(s * s - 1) in {t.get_text() for t in fig2.axes[0].texts}
    _render(fig)


def test_plot_level_assignment_has_one_panel_per_level(scene):
    image, masks, labels, _ = scene
    masks = torch.nn.functional.pad(masks, (0, 32))
    image = torch.nn.functional.pad(image, (0, 32))
    cfg = preset("tiny", num_classes=4, class_names=NAMES)
    fig = viz.plot_level_assignment(image, masks, labels, cfg)
    targets = solo_targets(
        masks,
        labels,
        num_classes=4,
        grids=cfg.grids,
        scale_ranges=cfg.scale_ranges,
        strides=cfg.strides,
    )
    panels = [ax for ax in fig.axes if ax.axison]
    assert len(panels) == 1 + len(cfg.grids)
    assert "ground truth" in panels[0].get_title()
    for level, ax in enumerate(panels[1:]):
        title = ax.get_title()
        assert f"level {level}: S = {cfg.grids[level]}" in title
        assert f"{targets[level].num_positives} positive cells" in title
    _render(fig)


def test_plot_category_heatmap_one_panel_per_class():
    probs = torch.rand(4, 12, 12, generator=torch.Generator().manual_seed(1))
    fig = viz.plot_category_heatmap(probs, NAMES, highlight=(3, 4))
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 4
    for c, ax in enumerate(panels):
        np.testing.assert_allclose(ax.images[0].get_array(), probs[c].numpy())
        assert ax.get_title().startswith(NAMES[c])
    _render(fig)
    many = viz.plot_category_heatmap(torch.rand(30, 5, 5), max_panels=6)
    assert len([ax for ax in many.axes if ax.images]) == 6


@pytest.mark.parametrize("s, h, w", [(4, 6, 6), (5, 3, 7)])
def test_mask_mosaic_places_channel_k_at_row_k_div_s_col_k_mod_s(s, h, w):
    # channel k is a constant map of value k / S^2 plus a marker pixel at its top-left corner
    probs = torch.arange(s * s, dtype=torch.float32).view(-1, 1, 1).expand(-1, h, w).clone()
    probs /= s * s
    probs[:, 0, 0] = 1.0
    fig = viz.plot_mask_channels(probs, s, highlight=[(1, 2), 3])
    shown = np.ma.getdata(fig.axes[0].images[0].get_array())
    np.testing.assert_array_equal(
        np.nan_to_num(shown, nan=-1), np.nan_to_num(viz.mask_mosaic(probs, s), nan=-1)
    )
    pad = 1
    for k in range(s * s):
        i, j = k // s, k % s
        tile = shown[i * (h + pad) : i * (h + pad) + h, j * (w + pad) : j * (w + pad) + w]
        np.testing.assert_allclose(tile, probs[k].numpy())
    # separators are NaN (drawn white)
    assert np.isnan(shown[h, :]).all()
    # the list form gives the same mosaic
    from_list = viz.mask_mosaic([p for p in probs], s)
    np.testing.assert_array_equal(np.nan_to_num(from_list), np.nan_to_num(shown))
    outlines = [p for p in fig.axes[0].patches if isinstance(p, Rectangle)]
    assert len(outlines) == 2
    _render(fig)


def test_mask_mosaic_rejects_the_wrong_number_of_channels():
    with pytest.raises(ValueError, match="S\\*S"):
        viz.mask_mosaic(torch.zeros(10, 4, 4), 3)


def test_plot_decoupled_shows_x_y_and_their_product():
    g = torch.Generator().manual_seed(2)
    mask_x, mask_y = torch.randn(6, 8, 8, generator=g), torch.randn(6, 8, 8, generator=g)
    fig = viz.plot_decoupled(mask_x, mask_y, i=2, j=5, image=torch.rand(3, 32, 32))
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 4
    x_shown, y_shown, prod = (np.asarray(ax.images[0].get_array()) for ax in panels[:3])
    np.testing.assert_allclose(x_shown, torch.sigmoid(mask_x[5]).numpy(), rtol=1e-6)
    np.testing.assert_allclose(y_shown, torch.sigmoid(mask_y[2]).numpy(), rtol=1e-6)
    np.testing.assert_allclose(
        prod, (torch.sigmoid(mask_y[2]) * torch.sigmoid(mask_x[5])).numpy(), rtol=1e-6
    )
    assert "j = 5" in panels[0].get_title() and "i = 2" in panels[1].get_title()
    _render(fig)


def test_plot_loss_curve_plots_every_loss_key_and_saves(tmp_path):
    history = [
        {
            "iteration": 10 * n,
            "loss": 3.0 / (n + 1),
            "loss_cate": 1.0 / (n + 1),
            "loss_mask": 0.5,
            "lr": 0.01,
        }
        for n in range(20)
    ]
    path = tmp_path / "curves" / "loss.png"
    fig = viz.plot_loss_curve(history, path=path, smooth=3)
    assert path.is_file()
    ax = fig.axes[0]
    labels = [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")]
    assert labels == ["loss", "loss_cate", "loss_mask"]
    raw = ax.get_lines()[0]
    np.testing.assert_allclose(raw.get_xdata(), [10 * n for n in range(20)])
    with pytest.raises(ValueError):
        viz.plot_loss_curve([])


def test_no_pyplot_figures_are_left_open(scene):
    import matplotlib.pyplot as plt

    image, masks, labels, scores = scene
    before = len(plt.get_fignums())
    viz.compare_prediction(image, masks, labels, masks, labels, scores, NAMES)
    viz.plot_mask_channels(torch.rand(9, 4, 4), 3)
    assert len(plt.get_fignums()) == before


def test_tags_of_overlapping_instances_do_not_cover_each_other(scene):
    image, masks, _, _ = scene
    same = masks[:1].repeat(3, 1, 1)  # three instances with the same top-left corner
    fig = Figure()
    ax = fig.subplots()
    viz.draw_instances(ax, image, same, torch.tensor([0, 1, 2]), torch.tensor([0.9, 0.8, 0.7]),
                       NAMES)  # fmt: skip
    positions = [text.get_position() for text in ax.texts]
    assert len(positions) == 3
    assert len({round(y) for _, y in positions}) == 3


def test_a_photo_figure_is_shown_once_as_jpeg_and_a_plot_once_as_png():
    """matplotlib's inline backend adds a PNG for every Figure; a SoloFigure of a photo must
    still be stored only as JPEG (not twice), a plot only as PNG."""
    pytest.importorskip("IPython")
    from IPython.core.interactiveshell import InteractiveShell
    from matplotlib_inline.backend_inline import set_matplotlib_formats

    shell = InteractiveShell.instance()
    set_matplotlib_formats("png")  # what the inline backend does in a notebook kernel
    try:
        photo, plot = viz.SoloFigure(photo=True), viz.SoloFigure()
        photo.subplots().imshow(np.random.default_rng(0).random((8, 8, 3)))
        plot.subplots().plot([0, 1], [1, 0])
        photo_formats, _ = shell.display_formatter.format(photo)
        plot_formats, _ = shell.display_formatter.format(plot)
    finally:
        InteractiveShell.clear_instance()
    assert {"image/jpeg"} == {k for k in photo_formats if k.startswith("image/")}
    assert {"image/png"} == {k for k in plot_formats if k.startswith("image/")}


def test_predictions_match_only_ground_truth_of_their_class():
    """A "star" mask lying exactly on a square is a false positive for COCOeval; the picture
    must not colour it as a match."""
    gt = np.zeros((1, 16, 16), bool)
    gt[0, 4:12, 4:12] = True
    pred = np.stack([gt[0], gt[0]])  # the same mask twice: a wrong and a right class
    # without labels: first come wins
    assert viz.match_to_ground_truth(gt, pred).tolist() == [0, -1]
    assert viz.match_to_ground_truth(gt, pred, np.array([1]), np.array([3, 1])).tolist() == [-1, 0]
    assert viz.match_to_ground_truth(gt, pred, np.array([1]), np.array([3, 2])).tolist() == [-1, -1]


def test_place_labels_moves_a_label_off_one_at_the_same_spot():
    """Two labels for the same point: the second goes elsewhere (inside the panel, with a
    leader line), so that neither covers the other."""
    fig = viz.SoloFigure(figsize=(4, 4))
    ax = fig.subplots()
    ax.imshow(np.zeros((100, 100, 3)))
    labels = viz.place_labels(
        ax, [50, 50], [50, 50], ["first", "second"], ["tab:blue", "tab:orange"], text_color=None
    )
    renderer = fig.canvas.get_renderer()
    first, second = (label.get_window_extent(renderer) for label in labels)
    assert not first.overlaps(second)
    assert labels[0].get_text() == "first" and labels[0].xyann == (0, 0)  # the first stays put
    for box in (first, second):
        assert ax.bbox.contains(box.x0, box.y0) and ax.bbox.contains(box.x1, box.y1)
    _render(fig)

"""Matplotlib figures for SOLO: instances, the S x S grid, category heat maps, mask channels.

Every ``plot_*`` function returns a :class:`matplotlib.figure.Figure` (a :class:`SoloFigure`)
built *without* pyplot, so nothing is shown twice in Jupyter and no global figure registry
fills up: make the figure the last expression of a cell (or call ``display(fig)``) to see it,
``fig.savefig(path)`` to save it. The ``draw_*`` functions draw into an ``Axes`` you pass in.

Images may be given as an ``H x W x 3`` float array in ``[0, 1]`` or a ``[3, H, W]`` tensor.
A tensor with values outside ``[0, 1]`` is taken to be ImageNet-normalised (the output of
:class:`minisolo.data.Normalize`) and is de-normalised for display.

Colours: instance ``n`` is always drawn in ``instance_color(n)``, in every panel, so the same
object has the same colour in the ground truth, the grid assignment and the predictions.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

# ImageNet statistics, as in minisolo.data.transforms (kept here so viz has no data import)
_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

#: Distinct, colour-blind-friendlier colours (Tableau 10, then the dark/light tab20 halves).
PALETTE: tuple[tuple[float, float, float], ...] = tuple(
    to_rgb(c)
    for c in (
        "#1f77b4",
        "#ff7f0e",
        "#2ca02c",
        "#d62728",
        "#9467bd",
        "#8c564b",
        "#e377c2",
        "#17becf",
        "#bcbd22",
        "#7f7f7f",
        "#aec7e8",
        "#ffbb78",
        "#98df8a",
        "#ff9896",
        "#c5b0d5",
        "#c49c94",
        "#f7b6d2",
        "#9edae5",
        "#dbdb8d",
        "#393b79",
    )
)

#: Colour map of probabilities (masks, category scores): dark = 0, bright = 1.
PROB_CMAP = "magma"


def instance_color(n: int) -> tuple[float, float, float]:
    """The RGB colour (floats in ``[0, 1]``) of instance ``n``; it cycles after 20."""
    return PALETTE[int(n) % len(PALETTE)]


def class_color(c: int) -> tuple[float, float, float]:
    """The RGB colour of class ``c`` (a different order from instances' colours)."""
    return PALETTE[(int(c) * 3 + 1) % len(PALETTE)]


class SoloFigure(Figure):
    """A matplotlib ``Figure`` that Jupyter shows when it is a cell's value.

    The ``plot_*`` functions build figures without pyplot (no global state, nothing shown
    twice); ``_repr_png_`` / ``_repr_jpeg_`` make them display in any Jupyter frontend even
    when no ``%matplotlib`` integration is active. Figures of photos (``photo=True``) are
    shown as JPEG, which keeps notebooks small (textured images compress badly as PNG)."""

    def __init__(self, *args, photo: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.photo = photo
        _register_with_ipython()

    def _render(self, fmt: str, **kwargs) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format=fmt, bbox_inches="tight", **kwargs)
        return buffer.getvalue()

    def _repr_png_(self) -> bytes | None:
        return None if self.photo else self._render("png")

    def _repr_jpeg_(self) -> bytes | None:
        return self._render("jpeg", pil_kwargs={"quality": 88}) if self.photo else None


def _register_with_ipython() -> None:
    """Make Jupyter show a SoloFigure once, in its own format.

    matplotlib's inline backend registers a PNG printer for every ``Figure``; without this a
    photo figure would be stored twice in the notebook (its JPEG and the backend's PNG). A
    printer registered for the exact class wins over the one for ``Figure``, and a printer
    that returns ``None`` adds nothing."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return
    formatters = shell.display_formatter.formatters
    formatters["image/png"].for_type(SoloFigure, SoloFigure._repr_png_)
    formatters["image/jpeg"].for_type(SoloFigure, SoloFigure._repr_jpeg_)


# ------------------------------------------------------------------------------------------
# conversions
# ------------------------------------------------------------------------------------------


def _numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy() if x.is_floating_point() else x.cpu().numpy()
    return np.asarray(x)


def as_image(image) -> np.ndarray:
    """An ``H x W x 3`` float image in ``[0, 1]`` from a ``[3, H, W]`` tensor (normalised or
    not) or an ``H x W x 3`` array (floats in ``[0, 1]`` or ``uint8``)."""
    if isinstance(image, torch.Tensor):
        array = image.detach().float().cpu()
        if array.dim() != 3 or array.shape[0] != 3:
            raise ValueError(f"image tensor must be [3, H, W], got {tuple(array.shape)}")
        array = array.permute(1, 2, 0).numpy()
        if array.min() < -1e-3 or array.max() > 1 + 1e-3:  # ImageNet-normalised
            array = array * _STD + _MEAN
    else:
        array = np.asarray(image)
        if array.ndim == 3 and array.shape[0] == 3 and array.shape[-1] != 3:
            return as_image(torch.from_numpy(np.ascontiguousarray(array)))
        if array.ndim != 3 or array.shape[-1] != 3:
            raise ValueError(f"image array must be H x W x 3, got {array.shape}")
        array = array.astype(np.float32) / (255.0 if array.dtype == np.uint8 else 1.0)
    return np.clip(array, 0.0, 1.0)


def _as_masks(masks, size: tuple[int, int] | None = None) -> np.ndarray:
    """Bool ``[N, H, W]`` numpy masks, resized (bilinear, > 0.5) to ``size`` when it differs."""
    if masks is None:
        return np.zeros((0, *(size or (1, 1))), dtype=bool)
    m = masks if isinstance(masks, torch.Tensor) else torch.as_tensor(np.asarray(masks))
    m = m.detach().cpu()
    if m.dim() == 2:
        m = m[None]
    if m.dtype != torch.bool:
        m = m > 0.5
    if size is not None and tuple(m.shape[-2:]) != tuple(size) and m.shape[0] > 0:
        # masks cover the (possibly padded) image: scale by the mask stride, then crop
        m = (
            F.interpolate(
                m[:, None].float(), size=tuple(size), mode="bilinear", align_corners=False
            )[:, 0]
            > 0.5
        )
    return m.numpy().astype(bool)


def _tag(label, score, class_names) -> str:
    parts = []
    if label is not None:
        label = int(label)
        if class_names is not None and 0 <= label < len(class_names):
            parts.append(str(class_names[label]))
        else:
            parts.append(f"class {label}")
    if score is not None:
        parts.append(f"{float(score):.2f}")
    return " ".join(parts)


def _free_tag_spot(placed: list, x: float, top: float, chars: int, h: int, w: int):
    """Where to put an instance's tag: just above its mask (or inside, at the image's top
    edge), moved down until it does not cover a tag drawn before. Sizes are rough estimates
    in pixels of the image (a tag is about 5.5% of the image high)."""
    row = 0.055 * h
    width = 0.6 * row * chars
    x = float(min(max(x, 0), max(w - width, 0)))
    y = float(top - row - 1 if top - row - 1 >= 0 else top + 1)
    for _ in range(12):
        box = (x, y, x + width, y + row)
        if not any(b[0] < box[2] and box[0] < b[2] and b[1] < box[3] and box[1] < b[3]
                   for b in placed):  # fmt: skip
            break
        y += row + 1
    placed.append((x, y, x + width, y + row))
    return x, y


def _text_color(rgb) -> str:
    r, g, b = rgb[:3]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.55 else "white"


def _clean_axes(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _renderer_of(fig):
    """A renderer for ``fig`` after a full draw (so that every panel has its final place).
    Figures made without pyplot get an Agg canvas for this."""
    canvas = fig.canvas
    if not hasattr(canvas, "get_renderer"):
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def place_labels(
    ax,
    xs: Sequence[float],
    ys: Sequence[float],
    texts: Sequence[str],
    colours: Sequence,
    fontsize: float = 7,
    text_color: str | None = "white",
    alpha: float = 0.8,
) -> list:
    """Write ``texts[n]`` at ``(xs[n], ys[n])`` (data coordinates) in a box of ``colours[n]``,
    moving a label a little away from its point, with a thin leader line, where it would cover
    a label written before it: the first free spot inside the panel wins (labels keep their
    order of priority). ``text_color=None`` picks black or white for each box's colour.

    Call it once the figure's layout is final (after ``tight_layout``): labels are placed in
    screen space. Returns the label artists (``Annotation`` objects), in the order given."""
    from matplotlib.text import Text

    renderer = _renderer_of(ax.figure)
    steps = [(0, 0)] + [
        (45 * r * dx, 20 * r * dy)  # in points: about one label width / height per step
        for r in (1, 2, 3)
        for dx, dy in ((0, 1), (0, -1), (1, 0), (-1, 0), (1, 1), (-1, 1), (1, -1), (-1, -1))
    ]

    def write(x, y, text, colour, dx, dy):
        label = ax.annotate(
            text,
            (x, y),
            xytext=(dx, dy),
            textcoords="offset points",
            ha="center",
            va="center",
            color=_text_color(to_rgb(colour)) if text_color is None else text_color,
            fontsize=fontsize,
            zorder=4,
            bbox=dict(facecolor=colour, alpha=alpha, lw=0, pad=1),
        )
        label.update_positions(renderer)  # places the text, so that it can be measured
        return label

    placed, labels = [], []
    for x, y, text, colour in zip(xs, ys, texts, colours, strict=True):
        x, y = float(x), float(y)
        for dx, dy in steps:
            label = write(x, y, text, colour, dx, dy)
            box = Text.get_window_extent(label, renderer).padded(2)
            inside = ax.bbox.contains(box.x0, box.y0) and ax.bbox.contains(box.x1, box.y1)
            if inside and not any(box.overlaps(other) for other in placed):
                break
            label.remove()
        else:  # no free spot: back on the point itself
            dx, dy = 0, 0
            label = write(x, y, text, colour, dx, dy)
            box = Text.get_window_extent(label, renderer).padded(2)
        placed.append(box)
        labels.append(label)
        if (dx, dy) != (0, 0):  # a leader line from the point to its label, under all labels
            line = dict(arrowstyle="-", color=colour, lw=1)
            ax.annotate("", (x, y), xytext=(dx, dy), textcoords="offset points", arrowprops=line)
    return labels


# ------------------------------------------------------------------------------------------
# instances
# ------------------------------------------------------------------------------------------


def _finish_image_axes(ax, w: int, h: int, title: str | None):
    """Limits in image pixels (y pointing down), no ticks, an optional title."""
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    _clean_axes(ax)
    if title is not None:
        ax.set_title(title, fontsize=12)
    return ax


def draw_instances(
    ax,
    image,
    masks,
    labels=None,
    scores=None,
    class_names: Sequence[str] | None = None,
    boxes=None,
    alpha: float = 0.5,
    title: str | None = None,
    colors: Sequence | None = None,
    contour_width: float = 2.0,
):
    """Draw an image with translucent instance masks, their contours and a "name score" tag.

    Args:
        ax: a matplotlib ``Axes``.
        image: ``H x W x 3`` float array in ``[0, 1]`` or a ``[3, H, W]`` tensor.
        masks: bool ``[N, H, W]`` (masks at another resolution are resized to the image).
        labels, scores: ``[N]`` class ids and scores (either may be ``None``).
        class_names: names of the class ids.
        boxes: optional ``[N, 4]`` x1, y1, x2, y2 boxes, drawn as dashed rectangles.
        alpha: opacity of the mask fill.
        colors: one colour per instance (default ``instance_color(n)``).
    Returns:
        ``ax``.
    """
    img = as_image(image)
    h, w = img.shape[:2]
    m = _as_masks(masks, (h, w))
    n = m.shape[0]
    labels = None if labels is None else _numpy(labels).reshape(-1)
    scores = None if scores is None else _numpy(scores).reshape(-1)
    colors = [instance_color(k) for k in range(n)] if colors is None else list(colors)
    ax.imshow(img, extent=(0, w, h, 0), interpolation="nearest")
    overlay = np.zeros((h, w, 4), dtype=np.float32)
    for k in range(n):
        overlay[m[k]] = (*to_rgb(colors[k]), alpha)
    if n:
        ax.imshow(overlay, extent=(0, w, h, 0), interpolation="nearest")
    placed: list[tuple[float, float, float, float]] = []  # tags already drawn (x0, y0, x1, y1)
    for k in range(n):
        if not m[k].any():
            continue
        color = to_rgb(colors[k])
        # contour at the pixel borders: pad so masks touching the edge close their outline
        padded = np.pad(m[k].astype(np.float32), 1)
        ax.contour(
            np.arange(-1, w + 1) + 0.5,
            np.arange(-1, h + 1) + 0.5,
            padded,
            levels=[0.5],
            colors=[color],
            linewidths=contour_width,
        )
        ys, xs = np.nonzero(m[k])
        text = _tag(
            None if labels is None else labels[k],
            None if scores is None else scores[k],
            class_names,
        )
        if text:
            x, y = _free_tag_spot(placed, xs.min(), ys.min(), len(text), h, w)
            ax.text(
                x,
                y,
                text,
                fontsize=10,
                color=_text_color(color),
                va="top",
                ha="left",
                bbox=dict(facecolor=color, alpha=0.85, pad=1.5, edgecolor="none"),
                clip_on=True,
            )
    if boxes is not None:
        for k, (x1, y1, x2, y2) in enumerate(_numpy(boxes).reshape(-1, 4)):
            ax.add_patch(
                Rectangle(
                    (x1, y1),
                    x2 - x1,
                    y2 - y1,
                    fill=False,
                    linestyle="--",
                    linewidth=1.2,
                    edgecolor=to_rgb(colors[k % max(len(colors), 1)]),
                )
            )
    return _finish_image_axes(ax, w, h, title)


def save_instances(
    path,
    image,
    masks,
    labels=None,
    scores=None,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
    dpi: int = 100,
) -> Path:
    """Draw instances on the image and write a PNG of the image's size (parent folders are
    created). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = as_image(image)
    h, w = img.shape[:2]
    fig = Figure(figsize=(w / dpi, h / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    draw_instances(ax, img, masks, labels, scores, class_names)
    if title:
        ax.text(
            4,
            4,
            title,
            fontsize=10,
            va="top",
            color="white",
            bbox=dict(facecolor="black", alpha=0.6, pad=2, edgecolor="none"),
        )
    ax.set_axis_off()
    fig.savefig(path, dpi=dpi)
    return path


def match_to_ground_truth(
    gt: np.ndarray,
    pred: np.ndarray,
    gt_labels=None,
    pred_labels=None,
    threshold: float = 0.5,
) -> np.ndarray:
    """For each predicted mask the index of the GT mask with the highest IoU (>= threshold),
    greedily in prediction order (highest score first), else -1. With labels, as COCOeval,
    a prediction can only match a GT object of its own class."""
    match = np.full(pred.shape[0], -1)
    if gt.shape[0] == 0 or pred.shape[0] == 0:
        return match
    g = gt.reshape(gt.shape[0], -1).astype(np.float32)
    p = pred.reshape(pred.shape[0], -1).astype(np.float32)
    inter = p @ g.T
    union = p.sum(1, keepdims=True) + g.sum(1)[None] - inter
    iou = inter / np.maximum(union, 1)
    if gt_labels is not None and pred_labels is not None:
        same = _numpy(pred_labels).reshape(-1, 1) == _numpy(gt_labels).reshape(1, -1)
        iou = np.where(same, iou, 0.0)
    taken = set()
    for k in range(p.shape[0]):
        for g_idx in np.argsort(-iou[k]):
            if iou[k, g_idx] < threshold:
                break
            if g_idx not in taken:
                taken.add(int(g_idx))
                match[k] = g_idx
                break
    return match


def _count(n: int, noun: str) -> str:
    """``1 object``, ``2 objects``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def compare_prediction(
    image,
    gt_masks,
    gt_labels,
    pred_masks,
    pred_labels,
    pred_scores,
    class_names: Sequence[str] | None = None,
    score_threshold: float = 0.0,
    title: str | None = None,
) -> Figure:
    """Ground truth (left) beside the prediction (right).

    A prediction that overlaps a ground-truth object **of its class** with IoU >= 0.5 (the
    match COCOeval makes) gets that object's colour; unmatched predictions (false positives:
    wrong place, too loose, or wrong class) are drawn in the later palette colours.
    Predictions scoring below ``score_threshold`` are left out.
    """
    img = as_image(image)
    size = img.shape[:2]
    gt = _as_masks(gt_masks, size)
    pred = _as_masks(pred_masks, size)
    scores = _numpy(pred_scores).reshape(-1) if pred_scores is not None else None
    labels = _numpy(pred_labels).reshape(-1) if pred_labels is not None else None
    if scores is not None and score_threshold > 0:
        keep = scores >= score_threshold
        pred, scores = pred[keep], scores[keep]
        labels = labels[keep] if labels is not None else None
    match = match_to_ground_truth(gt, pred, gt_labels, labels)
    spare = iter(range(gt.shape[0], gt.shape[0] + 10_000))
    colors = [instance_color(g) if g >= 0 else instance_color(next(spare)) for g in match]
    fig = SoloFigure(figsize=(11, 5.8), layout="constrained", photo=True)
    ax_gt, ax_pred = fig.subplots(1, 2)
    draw_instances(
        ax_gt,
        img,
        gt,
        gt_labels,
        None,
        class_names,
        title=f"ground truth: {_count(gt.shape[0], 'object')}",
    )
    matched = int((match >= 0).sum())
    draw_instances(
        ax_pred,
        img,
        pred,
        labels,
        scores,
        class_names,
        colors=colors,
        title=f"prediction: {_count(pred.shape[0], 'instance')}, "
        f"{matched} match a GT of their class (IoU≥0.5)",
    )
    if title:
        fig.suptitle(title, fontsize=13)
    return fig


# ------------------------------------------------------------------------------------------
# the S x S grid
# ------------------------------------------------------------------------------------------


def owner_map(level_targets, grid_size: int) -> np.ndarray:
    """``[S, S]`` int array: the GT index each positive cell was assigned to, -1 elsewhere.

    ``level_targets`` is a :class:`minisolo.LevelTargets` of one image."""
    owner = np.full(grid_size * grid_size, -1, dtype=np.int64)
    owner[_numpy(level_targets.positive_index)] = _numpy(level_targets.instance)
    return owner.reshape(grid_size, grid_size)


def draw_grid(
    ax,
    image,
    grid_size: int,
    positives=None,
    colors: Sequence | None = None,
    labels=None,
    class_names: Sequence[str] | None = None,
    highlight: tuple[int, int] | None = None,
    show_numbers: bool = False,
    title: str | None = None,
    alpha: float = 0.55,
    cell_text: str | None = "object",
):
    """Draw the S x S grid over the image; fill each positive cell with its object's colour.

    Args:
        image: the (padded) input image; the grid spans all of it.
        grid_size: S.
        positives: where objects are assigned: a :class:`minisolo.LevelTargets` of one image, or
            an ``[S, S]`` integer array holding the GT index of each positive cell (-1: none).
        colors: colour per GT index (default ``instance_color``).
        labels, class_names: the GT's classes, for ``cell_text="class"``.
        highlight: a cell ``(i, j)`` outlined in thick white and black.
        show_numbers: print the channel index ``k = i * S + j`` in every cell (small S only).
        cell_text: what positive cells show: ``"object"`` (the GT index), ``"class"`` (the
            first letters of its class name; needs ``labels`` and ``class_names``) or ``None``.
    """
    img = as_image(image)
    h, w = img.shape[:2]
    s = int(grid_size)
    ax.imshow(img, extent=(0, w, h, 0), interpolation="nearest")
    cell_h, cell_w = h / s, w / s
    if positives is not None:
        owner = positives if isinstance(positives, np.ndarray | torch.Tensor) else None
        owner = owner_map(positives, s) if owner is None else _numpy(owner).astype(np.int64)
        labels_np = None if labels is None else _numpy(labels).reshape(-1)
        for i, j in zip(*np.nonzero(owner >= 0), strict=True):
            g = int(owner[i, j])
            color = instance_color(g) if colors is None else to_rgb(colors[g])
            ax.add_patch(
                Rectangle(
                    (j * cell_w, i * cell_h),
                    cell_w,
                    cell_h,
                    facecolor=color,
                    alpha=alpha,
                    edgecolor=color,
                    linewidth=1.5,
                )
            )
            text = None
            if cell_text == "object":
                text = str(g)
            elif cell_text == "class" and labels_np is not None and class_names is not None:
                text = str(class_names[int(labels_np[g])])[:2]
            if text and cell_w > 9:
                ax.text(
                    (j + 0.5) * cell_w,
                    (i + 0.5) * cell_h,
                    text,
                    ha="center",
                    va="center",
                    fontsize=min(9, cell_w * 0.5),
                    color=_text_color(color),
                )
    lw = 0.6 if s <= 24 else 0.4
    for t in range(s + 1):
        ax.axhline(t * cell_h, color="white", linewidth=lw, alpha=0.7)
        ax.axvline(t * cell_w, color="white", linewidth=lw, alpha=0.7)
    if show_numbers:
        for i in range(s):
            for j in range(s):
                ax.text(
                    (j + 0.5) * cell_w,
                    (i + 0.5) * cell_h,
                    str(i * s + j),
                    ha="center",
                    va="center",
                    fontsize=max(5, min(9, cell_w / 4)),
                    color="white",
                )
    if highlight is not None:
        i, j = highlight
        for color, lw_ in (("black", 4.5), ("white", 2.2)):
            ax.add_patch(
                Rectangle(
                    (j * cell_w, i * cell_h),
                    cell_w,
                    cell_h,
                    fill=False,
                    edgecolor=color,
                    linewidth=lw_,
                )
            )
    return _finish_image_axes(ax, w, h, title)


def draw_contours(
    ax,
    masks,
    colors: Sequence | None = None,
    size=None,
    linewidth: float = 2.0,
    linestyle: str = "solid",
):
    """Outline bool masks ``[N, h, w]`` on an axes showing an image of size ``size`` (H, W)
    (default: the masks' own size); masks at a lower resolution are stretched over it."""
    m = _as_masks(masks)
    if m.shape[0] == 0:
        return ax
    mh, mw = m.shape[-2:]
    H, W = size if size is not None else (mh, mw)
    sy, sx = H / mh, W / mw
    ys = (np.arange(-1, mh + 1) + 0.5) * sy
    xs = (np.arange(-1, mw + 1) + 0.5) * sx
    for k in range(m.shape[0]):
        if m[k].any():
            color = instance_color(k) if colors is None else to_rgb(colors[k])
            ax.contour(
                xs,
                ys,
                np.pad(m[k].astype(np.float32), 1),
                levels=[0.5],
                colors=[color],
                linewidths=linewidth,
                linestyles=linestyle,
            )
    return ax


def plot_level_assignment(
    image,
    masks,
    labels,
    config,
    class_names: Sequence[str] | None = None,
    levels: Sequence[int] | None = None,
) -> Figure:
    """One panel per FPN level: its S x S grid, the cells :func:`minisolo.solo_targets`
    makes positive (filled with the object's colour) and the contours of the level's objects.

    ``masks`` are bool ``[N, H, W]`` at the image's (padded) size; ``config`` is a
    :class:`minisolo.SOLOConfig` (grids, strides, scale ranges, sigma).
    """
    from .targets import masks_to_boxes, solo_targets

    img = as_image(image)
    size = img.shape[:2]
    m = torch.as_tensor(_as_masks(masks, size))
    lab = torch.as_tensor(_numpy(labels)).long().reshape(-1)
    targets = solo_targets(
        m,
        lab,
        num_classes=config.num_classes,
        grids=config.grids,
        scale_ranges=config.scale_ranges,
        strides=config.strides,
        sigma=config.sigma,
        min_mask_area=getattr(config, "min_mask_area", 10),
    )
    boxes = masks_to_boxes(m)
    box_size = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    levels = list(range(len(config.grids))) if levels is None else list(levels)
    names = class_names or getattr(config, "class_names", None) or None
    panels = len(levels) + 1  # the ground truth first
    cols = 3 if panels > 4 else panels
    rows = math.ceil(panels / cols)
    fig = SoloFigure(figsize=(3.9 * cols, 4.1 * rows + 0.4), layout="constrained", photo=True)
    axes = np.atleast_1d(fig.subplots(rows, cols)).reshape(-1)
    sizes = ", ".join(f"#{k}: {float(b):.0f}" for k, b in enumerate(box_size))
    draw_instances(
        axes[0], img, m, lab, None, names, title=f"ground truth; box sizes √(wh) in px:\n{sizes}"
    )
    axes[0].title.set_fontsize(10)
    colors = [instance_color(k) for k in range(m.shape[0])]
    for ax, level in zip(axes[1:], levels, strict=False):
        s = config.grids[level]
        lo, hi = config.scale_ranges[level]
        lt = targets[level]
        in_level = ((box_size >= lo) & (box_size <= hi)).numpy()
        draw_grid(ax, img, s, positives=lt, labels=lab, class_names=names)
        shown = [k for k in range(m.shape[0]) if in_level[k]]
        draw_contours(ax, m[shown], [colors[k] for k in shown], size=size, linewidth=1.8)
        objects = ", ".join(f"#{k}" for k in shown) or "none"
        ax.set_title(
            f"level {level}: S = {s}, stride {config.strides[level]}, √(wh) in [{lo:g}, {hi:g}]\n"
            f"objects {objects}: {lt.num_positives} positive cells",
            fontsize=10,
        )
    for ax in axes[panels:]:
        ax.set_axis_off()
    fig.suptitle(
        "Which grid cells must predict which object (positive cells, per FPN level)", fontsize=13
    )
    return fig


# ------------------------------------------------------------------------------------------
# model outputs
# ------------------------------------------------------------------------------------------


def plot_category_heatmap(
    category_probs,
    class_names: Sequence[str] | None = None,
    highlight: tuple[int, int] | None = None,
    title: str | None = None,
    max_panels: int = 12,
) -> Figure:
    """One S x S heat map per class (category probabilities after the sigmoid), on a shared
    0..1 colour scale. ``category_probs``: ``[C, S, S]``. With more than ``max_panels``
    classes the classes with the highest maximum score are shown."""
    probs = _numpy(category_probs)
    if probs.ndim != 3:
        raise ValueError(f"category_probs must be [C, S, S], got {probs.shape}")
    c, s, _ = probs.shape
    classes = list(range(c))
    if c > max_panels:
        classes = sorted(np.argsort(-probs.reshape(c, -1).max(1))[:max_panels].tolist())
    cols = min(len(classes), 4)
    rows = math.ceil(len(classes) / cols)
    fig = SoloFigure(figsize=(3.3 * cols + 0.8, 3.3 * rows + 0.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).reshape(-1)
    im = None
    for ax, cls in zip(axes, classes, strict=False):
        im = ax.imshow(probs[cls], cmap=PROB_CMAP, vmin=0, vmax=1, interpolation="nearest")
        i, j = np.unravel_index(np.argmax(probs[cls]), (s, s))
        name = class_names[cls] if class_names is not None else f"class {cls}"
        ax.set_title(f"{name}: max {probs[cls].max():.2f} at ({i}, {j})", fontsize=10)
        ticks = np.arange(0, s, max(1, s // 6))
        ax.set_xticks(ticks)
        ax.set_yticks(ticks)
        ax.set_xlabel("column j", fontsize=9)
        ax.set_ylabel("row i", fontsize=9)
        ax.tick_params(labelsize=8)
        if highlight is not None:
            hi, hj = highlight
            ax.add_patch(
                Rectangle((hj - 0.5, hi - 0.5), 1, 1, fill=False, edgecolor="cyan", linewidth=2)
            )
    for ax in axes[len(classes) :]:
        ax.set_axis_off()
    if im is not None:
        fig.colorbar(im, ax=axes.tolist(), shrink=0.8, label="category probability")
    fig.suptitle(
        title or f"Category branch: one S x S = {s} x {s} score map per class", fontsize=12
    )
    return fig


def mask_mosaic(mask_probs, grid_size: int, pad: int = 1) -> np.ndarray:
    """The S^2 mask channels tiled as the S x S grid: channel ``k = i * S + j`` goes to tile
    row ``i = k // S``, column ``j = k % S``. Tiles are separated by ``pad`` NaN pixels.

    ``mask_probs``: ``[S*S, h, w]`` (tensor or array) or a list of S*S ``[h, w]`` maps."""
    if isinstance(mask_probs, list | tuple):
        mask_probs = np.stack([_numpy(m) for m in mask_probs])
    probs = _numpy(mask_probs).astype(np.float32)
    s = int(grid_size)
    if probs.ndim != 3 or probs.shape[0] != s * s:
        raise ValueError(f"need [S*S={s * s}, h, w] mask channels, got {probs.shape}")
    _, h, w = probs.shape
    mosaic = np.full((s * (h + pad) - pad, s * (w + pad) - pad), np.nan, dtype=np.float32)
    for k in range(s * s):
        i, j = divmod(k, s)
        mosaic[i * (h + pad) : i * (h + pad) + h, j * (w + pad) : j * (w + pad) + w] = probs[k]
    return mosaic


def plot_mask_channels(
    mask_probs,
    grid_size: int,
    highlight=None,
    title: str | None = None,
    figsize: float = 9.0,
) -> Figure:
    """The paper's view of the mask branch: all S^2 mask channels (probabilities) laid out as
    the S x S grid, channel ``k = i * S + j`` at row ``i``, column ``j``.

    ``highlight``: a cell ``(i, j)``, a channel index ``k``, or a list of either, outlined.
    The mosaic array is ``fig.axes[0].images[0].get_array()`` (see :func:`mask_mosaic`)."""
    s = int(grid_size)
    pad = 1
    mosaic = mask_mosaic(mask_probs, s, pad)
    h = (mosaic.shape[0] + pad) // s - pad
    w = (mosaic.shape[1] + pad) // s - pad
    fig = SoloFigure(figsize=(figsize + 1.2, figsize + 0.6), layout="constrained")
    ax = fig.subplots()
    cmap = colormaps[PROB_CMAP].with_extremes(bad="white")
    im = ax.imshow(mosaic, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    step = max(1, s // 8)
    ax.set_xticks([j * (w + pad) + w / 2 for j in range(0, s, step)], range(0, s, step))
    ax.set_yticks([i * (h + pad) + h / 2 for i in range(0, s, step)], range(0, s, step))
    ax.set_xlabel("grid column j", fontsize=11)
    ax.set_ylabel("grid row i", fontsize=11)
    cells = []
    if highlight is not None:
        items = highlight if isinstance(highlight, list) else [highlight]
        for item in items:
            cells.append(divmod(int(item), s) if np.ndim(item) == 0 else tuple(item))
    for i, j in cells:
        ax.add_patch(
            Rectangle(
                (j * (w + pad) - 1, i * (h + pad) - 1),
                w + 1,
                h + 1,
                fill=False,
                edgecolor="cyan",
                linewidth=2.5,
            )
        )
    fig.colorbar(im, ax=ax, shrink=0.7, label="mask probability")
    ax.set_title(
        title
        or f"All {s}x{s} = {s * s} mask channels; channel k = i·S + j sits at row i, column j",
        fontsize=12,
    )
    return fig


def plot_decoupled(
    mask_x,
    mask_y,
    i: int,
    j: int,
    from_logits: bool = True,
    image=None,
) -> Figure:
    """Decoupled SOLO: the column map ``X_j``, the row map ``Y_i`` and their product, the mask
    of cell ``(i, j)``. ``mask_x``, ``mask_y``: ``[S, h, w]`` logits (``from_logits=True``)
    or probabilities. With ``image`` a fourth panel shows the product over the image."""
    x = torch.as_tensor(_numpy(mask_x)).float()
    y = torch.as_tensor(_numpy(mask_y)).float()
    if from_logits:
        x, y = torch.sigmoid(x), torch.sigmoid(y)
    px, py = x[j].numpy(), y[i].numpy()
    prod = py * px
    panels = [
        (px, f"sigmoid(X_j), j = {j}\n(column branch: sees x only)"),
        (py, f"sigmoid(Y_i), i = {i}\n(row branch: sees y only)"),
        (prod, f"mask of cell ({i}, {j}) =\nsigmoid(Y_i) · sigmoid(X_j)"),
    ]
    n = len(panels) + (image is not None)
    fig = SoloFigure(figsize=(3.6 * n + 0.8, 4.2), layout="constrained", photo=image is not None)
    axes = fig.subplots(1, n)
    im = None
    for ax, (data, text) in zip(axes, panels, strict=False):
        im = ax.imshow(data, cmap=PROB_CMAP, vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(text, fontsize=10)
        _clean_axes(ax)
    if image is not None:
        img = as_image(image)
        hh, ww = img.shape[:2]
        axes[-1].imshow(img, extent=(0, ww, hh, 0))
        axes[-1].imshow(prod, cmap=PROB_CMAP, vmin=0, vmax=1, alpha=0.6, extent=(0, ww, hh, 0))
        axes[-1].set_title("mask over the image", fontsize=10)
        _clean_axes(axes[-1])
    fig.colorbar(im, ax=list(axes), shrink=0.8, label="probability")
    fig.suptitle(
        f"Decoupled SOLO: S = {x.shape[0]} column maps and S row maps give "
        f"S² = {x.shape[0] ** 2} masks",
        fontsize=12,
    )
    return fig


def plot_loss_curve(
    history: Sequence[Mapping],
    path=None,
    keys: Sequence[str] | None = None,
    smooth: int = 1,
    title: str = "Training loss",
) -> Figure:
    """Loss curves from a list of dicts with ``"iteration"`` and loss values (every numeric key
    starting with ``loss``, or ``keys``). ``smooth > 1``: a running mean over that many
    points is drawn over the raw curve. Saves a PNG when ``path`` is given."""
    if not history:
        raise ValueError("history is empty")
    if keys is None:
        keys = [k for k in history[0] if k.startswith("loss")]
    iters = np.array([float(h.get("iteration", n)) for n, h in enumerate(history)])
    fig = SoloFigure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    for n, key in enumerate(keys):
        values = np.array([float(h[key]) if key in h else np.nan for h in history])
        color = PALETTE[n % len(PALETTE)]
        if smooth > 1 and len(values) >= smooth:
            kernel = np.ones(smooth) / smooth
            smoothed = np.convolve(values, kernel, mode="valid")
            ax.plot(iters, values, color=color, alpha=0.25, linewidth=1)
            ax.plot(iters[smooth - 1 :], smoothed, color=color, linewidth=2, label=key)
        else:
            ax.plot(iters, values, color=color, linewidth=2, label=key)
    ax.set_xlabel("iteration", fontsize=11)
    ax.set_ylabel("loss", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=10)
    ax.set_title(title, fontsize=12)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    return fig


__all__ = [
    "PALETTE",
    "SoloFigure",
    "PROB_CMAP",
    "as_image",
    "class_color",
    "compare_prediction",
    "draw_contours",
    "draw_grid",
    "draw_instances",
    "instance_color",
    "mask_mosaic",
    "match_to_ground_truth",
    "owner_map",
    "place_labels",
    "plot_category_heatmap",
    "plot_decoupled",
    "plot_level_assignment",
    "plot_loss_curve",
    "plot_mask_channels",
    "save_instances",
]

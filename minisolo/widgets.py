"""Interactive explorers (ipywidgets) for SOLO's grid: click a cell, see what it predicts.

:class:`GridExplorer` is the view; the questions it asks of the model (a cell's mask, its class
scores, the object it is positive for, the candidates before and after NMS) are answered by
:class:`minisolo.grid_cells.GridCells`, which needs no widgets. The explorer runs a model once
on one image and lets you walk over its S x S grids:

* pick an FPN level, then a grid cell, by clicking the grid of small buttons (coloured by the
  cell's category score) or with the row/column sliders;
* see the image with the cell highlighted, the cell's mask (mask channel ``k = i * S + j``
  after the sigmoid; for Decoupled SOLO ``sigmoid(Y_i) * sigmoid(X_j)``; for SOLOv2
  ``sigmoid(kernel_k * F)``), the cell's class
  scores and the level's category heat map;
* with ground-truth targets, whether the cell is positive and for which object;
* a second tab shows the candidates before NMS and the predictions after Matrix NMS.

Every picture is a matplotlib figure (drawn with :mod:`minisolo.viz` where it has the piece)
rendered to PNG into an ``ipywidgets.Image``: it works in JupyterLab, Notebook 7 and VS Code
without any extra frontend extension. The model runs once, at construction; a selection only
slices the cached outputs and draws (well under a second on a CPU for the tiny model).

Example::

    from minisolo.widgets import GridExplorer
    explorer = GridExplorer(model, val_dataset[0], class_names=val_dataset.class_names)
    explorer          # displays the app in Jupyter
    explorer.select(level=1, i=5, j=7)   # the same from code; returns the mask probabilities
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Sequence
from functools import partial

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from . import viz
from .grid_cells import GridCells, decoupled_factors

#: Number of colour steps of the grid buttons (one CSS class per step).
_COLOR_STEPS = 20


def _button_css() -> str:
    """CSS rules of the grid buttons' colour classes ``minisolo-c00`` ... (magma colour map)."""
    cmap = colormaps[viz.PROB_CMAP]
    rules = []
    for step in range(_COLOR_STEPS):
        rgb = cmap((step + 0.5) / _COLOR_STEPS)[:3]
        rules.append(
            f".minisolo-grid button.minisolo-c{step:02d} {{ background-color: {to_hex(rgb)} "
            f"!important; color: {viz._text_color(rgb)} !important; }}"
        )
    return "\n".join(rules)


_CSS = """
<style>
.minisolo-grid .jupyter-button, .minisolo-grid button {
  padding: 0 !important; margin: 0 !important; min-width: 0 !important;
  font-size: 9px !important; line-height: 1 !important; border-radius: 1px !important;
  box-shadow: none !important; font-weight: bold !important;
}
.minisolo-grid .jupyter-button:hover, .minisolo-grid button:hover {
  outline: 2px solid #ffffff; outline-offset: -2px; z-index: 2;
}
.minisolo-grid button.minisolo-selected, .minisolo-grid .minisolo-selected {
  outline: 3px solid #00e5ff !important; outline-offset: -1px; z-index: 3;
}
.minisolo-explorer .minisolo-info .widget-html-content {
  line-height: 1.4 !important; font-size: 13px;
}
.minisolo-explorer .widget-image, .minisolo-explorer img { object-fit: contain; }
</style>
"""
_CSS = _CSS.replace("</style>", _button_css() + "\n</style>")


#: Resolution of the rendered views (pixels per inch of the figures' sizes).
_DPI = 80


def _png(fig: Figure, dpi: int = _DPI) -> bytes:
    """Render a figure to PNG bytes (fast zlib level: these images are only displayed)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, pil_kwargs={"compress_level": 1})
    return buffer.getvalue()


#: How the header names each model kind (others show their class name).
_KIND_NAMES = {"solo": "SOLO", "decoupled_solo": "Decoupled SOLO", "solov2": "SOLOv2"}


class GridExplorer:
    """Explore what each grid cell of a SOLO / Decoupled SOLO / SOLOv2 model predicts on one
    image.

    Args:
        model: a :class:`minisolo.SOLO`, :class:`minisolo.DecoupledSOLO` or
            :class:`minisolo.SOLOv2`.
        image: a normalised float ``[3, H, W]`` tensor (padded here to multiples of 32 if
            needed), or an ``(image, target)`` pair from :class:`minisolo.data.CocoInstances`;
            or an image path, a PIL image or a uint8 ``[H, W, 3]`` / ``[H, W]`` array
            (:func:`minisolo.predict.prepare_image`).
        targets: optional dict with ``masks`` (bool ``[N, H, W]``) and ``labels`` (``[N]``);
            taken from the pair when ``image`` is one. Shows which cells are positive.
        class_names: names of the classes (default ``model.config.class_names``).
        level, cell: the first selection (default: the highest-scoring cell of all levels).

    Attributes:
        widget: the ipywidgets app (display it, or display the explorer itself).
        cells: the :class:`minisolo.grid_cells.GridCells` that answers every query; its data
            (``outputs``, ``targets``, ``owners``, ``grids``, ...) is also reachable here.
        outputs: the cached model outputs (on the CPU) of the padded image, batch of one.
        level_targets: the :func:`minisolo.solo_targets` of the image (``None`` without
            targets).
        selected: ``(level, i, j)`` of the current cell.
        displayed_mask: the mask probabilities currently shown, at mask resolution.
        last_update_seconds: how long the last selection took to compute and draw.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        image,
        targets: dict | None = None,
        class_names: Sequence[str] | None = None,
        level: int | None = None,
        cell: tuple[int, int] | None = None,
    ) -> None:
        # ---- the queries: the model runs once here; everything after only slices its outputs
        self.cells = GridCells(model, image, targets=targets, class_names=class_names)
        cells = self.cells
        # the core's data under the explorer's names (the same objects, nothing is copied)
        self.model = cells.model
        self.config = cells.config
        self.grids = cells.grids
        self.image = cells.image  # padded to multiples of 32
        self.image_size = cells.image_size  # before padding
        self.padded_size = cells.padded_size
        self.class_names = cells.class_names
        self.outputs = cells.outputs
        self.category_probs = cells.category_probs
        self.model_seconds = cells.model_seconds
        self.targets = cells.targets
        self.level_targets = cells.level_targets
        self.owners = cells.owners
        self.decoupled = cells.kind == "decoupled_solo"  # four mask panels instead of two
        self.dynamic = cells.kind == "solov2"  # the mask is kernel_k * F, not a channel
        self.display_image = viz.as_image(self.image)

        self._predictions_drawn = False
        self._views: dict[tuple, dict] = {}
        self._grid_boxes: dict[int, widgets.GridBox] = {}
        self._buttons: dict[int, list[widgets.Button]] = {}
        self._button_colors: dict[int, list[str]] = {}
        self._button_selected: dict[int, list[bool]] = {}
        self._syncing = False
        self.displayed_mask: np.ndarray | None = None
        self.last_update_seconds = 0.0
        self._build_widgets()

        if level is None or cell is None:
            level, *cell = cells.best_cell(level)
        self.select(level, *cell)

    # ------------------------------------------------------------------------------ API
    # The queries are GridCells'; the explorer keeps their names so code can ask either one.
    @property
    def candidates(self) -> dict:
        """``model.candidates`` of the image: every cell that passes the score threshold,
        before NMS (computed on first use)."""
        return self.cells.candidates

    @property
    def predictions(self) -> dict:
        """``model.post_process`` of the image (after Matrix NMS), on the padded canvas."""
        return self.cells.predictions

    def show_predictions(self) -> None:
        """Draw the predictions tab (done automatically the first time the tab is opened)."""
        n = int(self.candidates["scores"].numel())
        self._syncing = True
        try:
            self.top_n.max = max(n, 1)
            if not self._predictions_drawn:
                self.top_n.value = min(20, n)
                # show at least the three best instances (a young model scores low)
                scores = self.predictions["scores"]
                if int((scores >= 0.3).sum()) < 3 and len(scores) >= 1:
                    third = float(scores[:3].min())
                    self.show_threshold.value = max(0.05, math.floor(third * 20) / 20)
        finally:
            self._syncing = False
        self._predictions_drawn = True
        self._render_predictions()

    def grid_size(self, level: int) -> int:
        """S of ``level``."""
        return self.cells.grid_size(level)

    def channel_index(self, level: int, i: int, j: int) -> int:
        """The mask channel of cell ``(i, j)``: ``k = i * S + j`` (for Decoupled SOLO the
        same index names the cell; its mask is ``sigmoid(Y_i) * sigmoid(X_j)``)."""
        return self.cells.channel_index(level, i, j)

    @property
    def selected(self) -> tuple[int, int, int]:
        return (self._level, self._i, self._j)

    def cell_mask(self, level: int, i: int, j: int) -> np.ndarray:
        """Mask probabilities ``[h, w]`` of cell ``(i, j)`` (see
        :meth:`minisolo.grid_cells.GridCells.cell_mask`)."""
        return self.cells.cell_mask(level, i, j)

    def cell_scores(self, level: int, i: int, j: int) -> np.ndarray:
        """Category probabilities ``[C]`` of cell ``(i, j)``."""
        return self.cells.cell_scores(level, i, j)

    def cell_owner(self, level: int, i: int, j: int) -> int | None:
        """Index of the ground-truth object the cell is assigned to, ``None`` if negative (or
        no targets were given)."""
        return self.cells.cell_owner(level, i, j)

    def select(self, level: int, i: int, j: int) -> np.ndarray:
        """Select cell ``(i, j)`` of ``level``, redraw the views and return the 2-D mask
        probabilities shown for it (at mask resolution)."""
        start = time.perf_counter()
        level = int(level)
        self.channel_index(level, i, j)  # validates the level and the cell
        previous = getattr(self, "_level", None)
        self._level, self._i, self._j = level, int(i), int(j)
        self._syncing = True
        try:
            if previous != level:
                self._show_level(level)
            self._mark_selected(level, self._i * self.grids[level] + self._j)
            s = self.grids[level]
            self.level_toggle.value = level
            self.i_slider.max = self.j_slider.max = s - 1
            self.i_slider.value, self.j_slider.value = self._i, self._j
        finally:
            self._syncing = False
        mask = self.cell_mask(level, self._i, self._j)
        self.displayed_mask = mask
        self._render_cell(mask)
        self.last_update_seconds = time.perf_counter() - start
        return mask

    @property
    def widget(self) -> widgets.Widget:
        return self._app

    def __repr__(self) -> str:
        level, i, j = self.selected
        return f"GridExplorer(level={level}, cell=({i}, {j}), S={self.grids[level]})"

    def snapshot(self) -> bytes:
        """A JPEG of the current views (cell, heat map, mask, class scores) in one picture: the
        static stand-in for the widget where no kernel runs (GitHub, nbviewer, HTML export)."""
        from PIL import Image, ImageDraw, ImageFont

        def load(data: bytes) -> Image.Image:
            return Image.open(io.BytesIO(data)).convert("RGB")

        cell, heat, mask, scores = (
            load(w.value) for w in (self.cell_image, self.heat_image, self.mask_image,
                                    self.score_image)
        )  # fmt: skip
        header = 30
        width = max(cell.width + heat.width, mask.width, scores.width)
        height = header + max(cell.height, heat.height) + mask.height + scores.height
        canvas = Image.new("RGB", (width, height), "white")
        canvas.paste(cell, (0, header))
        canvas.paste(heat, (cell.width, header))
        y = header + max(cell.height, heat.height)
        canvas.paste(mask, (0, y))
        canvas.paste(scores, (0, y + mask.height))
        level, i, j = self.selected
        kind = self._kind_name()
        text = (f"{kind} grid explorer (static snapshot): level {level}, cell ({i}, {j}). "
                "Run the notebook to click through the cells.")  # fmt: skip
        try:
            font = ImageFont.load_default(size=14)
        except TypeError:  # Pillow < 10.1
            font = ImageFont.load_default()
        ImageDraw.Draw(canvas).text((8, 7), text, fill="black", font=font)
        buffer = io.BytesIO()
        canvas.save(buffer, format="JPEG", quality=85)
        return buffer.getvalue()

    def _repr_mimebundle_(self, **kwargs) -> dict:
        """The widget for live frontends, plus a JPEG snapshot that static renderers show."""
        bundle = dict(self._app._repr_mimebundle_(**kwargs) or {})
        bundle["image/jpeg"] = self.snapshot()
        return bundle

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self._repr_mimebundle_(), raw=True)

    def _kind_name(self) -> str:
        return _KIND_NAMES.get(self.cells.kind, type(self.model).__name__)

    # ------------------------------------------------------------------------------ widgets
    @staticmethod
    def _color_class(score: float) -> str:
        """The CSS class of a grid button: one of ``_COLOR_STEPS`` steps of the colour map."""
        step = max(0, min(int(score * _COLOR_STEPS), _COLOR_STEPS - 1))
        return f"minisolo-c{step:02d}"

    def _set_button(self, level: int, k: int, color: str | None = None, selected=None) -> None:
        """Set a grid button's colour class and/or selection mark (one message to the page).

        Buttons are coloured and marked with CSS classes rather than with per-button style or
        layout widgets: a class list is a plain trait that every frontend applies reliably."""
        if color is not None:
            self._button_colors[level][k] = color
        if selected is not None:
            self._button_selected[level][k] = bool(selected)
        classes = [self._button_colors[level][k]]
        if self._button_selected[level][k]:
            classes.append("minisolo-selected")
        button = self._buttons[level][k]
        if tuple(button._dom_classes) != tuple(classes):
            button._dom_classes = tuple(classes)

    def _heat_class_index(self) -> int | None:
        """The class the "colour by" menu picks (``None``: the maximum over the classes)."""
        cls = self.heat_class.value
        return None if cls < 0 else cls

    def _heat(self, level: int) -> np.ndarray:
        """The ``[S, S]`` map the grid buttons and the heat map show for ``level``."""
        return self.cells.heat_map(level, self._heat_class_index())

    def _cell_px(self, s: int) -> int:
        return int(min(28, max(8, 336 // s)))

    def _grid_box(self, level: int) -> widgets.GridBox:
        if level in self._grid_boxes:
            return self._grid_boxes[level]
        s = self.grids[level]
        px = self._cell_px(s)
        # one Layout shared by all buttons of this size; the selected cell is marked with a CSS
        # class (robust in every frontend), never by swapping Layout widgets
        self._layouts = getattr(self, "_layouts", {})
        plain = self._layouts.setdefault(px, widgets.Layout(width=f"{px}px", height=f"{px}px"))
        heat = self._heat(level)
        owner = self.owners[level]
        buttons = []
        for i in range(s):
            for j in range(s):
                k = i * s + j
                tip = f"cell ({i}, {j}), channel k = {k}, score {heat[i, j]:.2f}"
                text = ""
                if owner is not None and owner[i, j] >= 0:
                    g = int(owner[i, j])
                    text = str(g) if g < 10 and px >= 11 else "•"
                    tip += f", positive for object #{g}"
                button = widgets.Button(description=text, tooltip=tip, layout=plain)
                button._dom_classes = (self._color_class(heat[i, j]),)
                button.on_click(partial(self._on_cell_click, level, i, j))
                buttons.append(button)
        box = widgets.GridBox(
            buttons,
            layout=widgets.Layout(
                grid_template_columns=f"repeat({s}, {px}px)",
                grid_auto_rows=f"{px}px",
                grid_gap="1px",
                width="fit-content",
            ),
        )
        box.add_class("minisolo-grid")
        self._grid_boxes[level] = box
        self._buttons[level] = buttons
        self._button_colors[level] = [b._dom_classes[0] for b in buttons]
        self._button_selected[level] = [False] * len(buttons)
        return box

    def _mark_selected(self, level: int, k: int) -> None:
        """Outline button ``k`` of ``level``'s grid, and only that one."""
        for other, marked in enumerate(self._button_selected[level]):
            if marked and other != k:
                self._set_button(level, other, selected=False)
        self._set_button(level, k, selected=True)

    def _recolor_buttons(self) -> None:
        for level in self._buttons:
            heat = self._heat(level).reshape(-1)
            for k in range(heat.size):
                self._set_button(level, k, color=self._color_class(heat[k]))

    def _show_level(self, level: int) -> None:
        self.grid_holder.children = (self._grid_box(level),)
        s = self.grids[level]
        lo, hi = self.config.scale_ranges[level]
        stride = self.config.strides[level]
        mask_h, mask_w = self.cells.mask_shape(level)
        self.grid_title.value = (
            f"<b>Level {level}</b>: S = {s} (S² = {s * s} "
            + ("dynamic kernels" if self.dynamic else "mask channels")
            + f"), head stride {stride},"
            f" masks {mask_h}×{mask_w}, objects with √(wh) in [{lo:g}, {hi:g}] px.<br>"
            "Click a cell. Colour = category score"
            + (
                " (max over classes)"
                if self.heat_class.value < 0
                else f" of {self.class_names[self.heat_class.value]}"
            )
            + ("; digits = GT object the cell is positive for." if self.targets else ".")
        )

    def _build_widgets(self) -> None:
        level_options = [(f"{lv}: S={s}", lv) for lv, s in enumerate(self.grids)]
        self.level_toggle = widgets.ToggleButtons(
            options=level_options,
            description="FPN level",
            tooltips=[f"level {lv}: {s}x{s} grid" for lv, s in enumerate(self.grids)],
            style={"button_width": "78px", "description_width": "64px"},
        )
        s0 = self.grids[0]
        slider_layout = widgets.Layout(width="290px")
        slider_style = {"description_width": "64px"}
        self.i_slider = widgets.IntSlider(
            0, 0, s0 - 1, description="row i", continuous_update=False, layout=slider_layout,
            style=slider_style,
        )  # fmt: skip
        self.j_slider = widgets.IntSlider(
            0, 0, s0 - 1, description="column j", continuous_update=False, layout=slider_layout,
            style=slider_style,
        )  # fmt: skip
        self.heat_class = widgets.Dropdown(
            options=[("max over classes", -1)] + [(n, c) for c, n in enumerate(self.class_names)],
            value=-1,
            description="colour by",
            layout=widgets.Layout(width="250px"),
            style={"description_width": "70px"},
        )
        self.best_button = widgets.Button(
            description="best cell",
            tooltip="select the cell of this level with the highest score",
            icon="star",
            layout=widgets.Layout(width="110px"),
        )
        column = widgets.Layout(width="350px", margin="0 8px 0 0")
        self.grid_title = widgets.HTML(layout=widgets.Layout(width="340px"))
        self.grid_holder = widgets.Box(layout=widgets.Layout(min_height="120px"))
        self.info = widgets.HTML(layout=widgets.Layout(width="340px"))
        self.grid_title.add_class("minisolo-info")
        self.info.add_class("minisolo-info")
        image_layout = dict(max_width="100%", object_fit="contain")
        self.cell_image = widgets.Image(format="png", layout=widgets.Layout(**image_layout))
        self.heat_image = widgets.Image(format="png", layout=widgets.Layout(**image_layout))
        self.mask_image = widgets.Image(format="png", layout=widgets.Layout(**image_layout))
        self.score_image = widgets.Image(format="png", layout=widgets.Layout(**image_layout))
        self.cell_image.add_class("minisolo-cell-image")
        self.mask_image.add_class("minisolo-cell-mask")
        self.heat_image.add_class("minisolo-heatmap")
        self.score_image.add_class("minisolo-scores")

        self.level_toggle.observe(self._on_level, names="value")
        self.i_slider.observe(self._on_slider, names="value")
        self.j_slider.observe(self._on_slider, names="value")
        self.heat_class.observe(self._on_heat_class, names="value")
        self.best_button.on_click(self._on_best)

        wrap = widgets.Layout(flex_flow="row wrap", align_items="flex-start")
        cells_tab = widgets.VBox(
            [
                widgets.HBox([self.level_toggle, self.best_button], layout=wrap),
                widgets.HBox([self.i_slider, self.j_slider, self.heat_class], layout=wrap),
                # rows of two: about 680 px wide, so it fits a notebook next to a sidebar
                widgets.HBox(
                    [
                        widgets.VBox([self.grid_title, self.grid_holder], layout=column),
                        self.cell_image,
                    ],
                    layout=wrap,
                ),  # fmt: skip
                widgets.HBox(
                    [widgets.VBox([self.info, self.score_image], layout=column), self.heat_image],
                    layout=wrap,
                ),
                widgets.HBox([self.mask_image]),  # in a row: keeps its natural size
            ]
        )

        # ---- predictions tab
        self.top_n = widgets.IntSlider(
            20,
            0,
            100,
            description="top N shown",
            continuous_update=False,
            layout=widgets.Layout(width="360px"),
        )
        self.show_threshold = widgets.FloatSlider(
            0.3,
            min=0.05,
            max=1.0,
            step=0.05,
            description="score ≥",
            continuous_update=False,
            layout=widgets.Layout(width="360px"),
        )
        self.before_image = widgets.Image(format="png", layout=widgets.Layout(**image_layout))
        self.after_image = widgets.Image(format="png", layout=widgets.Layout(**image_layout))
        self.before_image.add_class("minisolo-before-nms")
        self.after_image.add_class("minisolo-after-nms")
        self.predictions_info = widgets.HTML()
        self.top_n.observe(self._on_predictions_control, names="value")
        self.show_threshold.observe(self._on_predictions_control, names="value")
        predictions_tab = widgets.VBox(
            [
                self.predictions_info,
                widgets.HBox([self.top_n, self.show_threshold]),
                widgets.HBox(
                    [self.before_image, self.after_image],
                    layout=widgets.Layout(flex_flow="row wrap"),
                ),
            ]
        )

        self.tabs = widgets.Tab(children=[cells_tab, predictions_tab])
        self.tabs.titles = ("Grid cells", "Before / after NMS")
        self.tabs.observe(self._on_tab, names="selected_index")
        kind = self._kind_name()
        header = widgets.HTML(
            _CSS + f"<h3 style='margin:4px 0'>{kind} grid explorer</h3>"
            f"<div>image {self.image_size[0]}×{self.image_size[1]}"
            + (
                f" (padded to {self.padded_size[0]}×{self.padded_size[1]})"
                if self.padded_size != self.image_size
                else ""
            )
            + f", {len(self.grids)} FPN levels, grids S = {list(self.grids)}; the model ran "
            f"once ({self.model_seconds:.2f} s), each click only slices its outputs.</div>"
        )
        self._app = widgets.VBox([header, self.tabs])
        self._app.add_class("minisolo-explorer")

    # ------------------------------------------------------------------------------ events
    def _on_cell_click(self, level: int, i: int, j: int, _button=None) -> None:
        self.select(level, i, j)

    def _on_level(self, change) -> None:
        if self._syncing:
            return
        level = change["new"]
        s = self.grids[level]
        old = self.grids[self._level]
        # keep the same place in the image: scale the cell to the new grid
        i = min(int((self._i + 0.5) * s / old), s - 1)
        j = min(int((self._j + 0.5) * s / old), s - 1)
        self.select(level, i, j)

    def _on_slider(self, change) -> None:
        if self._syncing:
            return
        self.select(self._level, self.i_slider.value, self.j_slider.value)

    def _on_heat_class(self, change) -> None:
        self._recolor_buttons()
        self._show_level(self._level)
        self.select(*self.selected)

    def _on_tab(self, change) -> None:
        if change["new"] == 1 and not self._predictions_drawn:
            self.show_predictions()

    def _on_predictions_control(self, change) -> None:
        if not self._syncing and self._predictions_drawn:
            self._render_predictions()

    def _on_best(self, _button=None) -> None:
        self.select(*self.cells.best_cell(self._level, self._heat_class_index()))

    # ------------------------------------------------------------------------------ drawing
    # Each view is one matplotlib figure built once per level (and per "colour by" class for
    # the heat map); a selection only moves rectangles, swaps image data and redraws, which is
    # several times faster than building figures and axes from scratch.

    def _render_cell(self, mask: np.ndarray) -> None:
        level, i, j = self.selected
        s = self.grids[level]
        k = i * s + j
        scores = self.cell_scores(level, i, j)
        owner = self.cell_owner(level, i, j)
        self.info.value = self._info_html(level, i, j, k, scores, owner, mask)
        self.cell_image.value = self._draw_cell_view(level, i, j, owner)
        self.heat_image.value = self._draw_heat_view(level, i, j)
        self.mask_image.value = self._draw_mask_view(level, i, j, k, mask)
        self.score_image.value = self._draw_score_view(i, j, scores, owner)

    def _info_html(self, level, i, j, k, scores, owner, mask) -> str:
        s = self.grids[level]
        h, w = self.padded_size
        top = int(np.argmax(scores))
        above = scores[top] > self.config.score_threshold
        lines = [
            f"<b>cell (i={i}, j={j})</b> of level {level}: mask channel "
            f"<b>k = i·S + j = {i}·{s} + {j} = {k}</b>",
            f"top class: <b>{self.class_names[top]}</b> {scores[top]:.3f} ("
            + ("above" if above else "below")
            + f" the {self.config.score_threshold:g} score threshold)",
            f"the cell covers x ∈ [{j * w / s:.0f}, {(j + 1) * w / s:.0f}), "
            f"y ∈ [{i * h / s:.0f}, {(i + 1) * h / s:.0f}) px",
            f"its mask: max {mask.max():.2f}, {(mask > 0.5).sum()} of {mask.size} pixels > 0.5",
        ]
        if self.targets is not None:
            if owner is None:
                lines.append(
                    "target: <b>negative</b>: no object's centre region falls in this cell "
                    "at this level (class: background, no mask loss)"
                )
            else:
                label = int(self.targets["labels"][owner])
                color = to_hex(viz.instance_color(owner))
                lines.append(
                    f"target: <b style='color:{color}'>positive for object #{owner} "
                    f"({self.class_names[label]})</b>: this cell must predict its class and, "
                    f"in channel {k}, its mask (white dashed contour)"
                )
        return "<br>".join(lines)

    def _figure(self, width: float, height: float) -> Figure:
        return Figure(figsize=(width, height), dpi=_DPI)

    def _draw_cell_view(self, level: int, i: int, j: int, owner: int | None) -> bytes:
        """The image, the level's grid (positive cells filled), the selected cell."""
        view = self._views.get(("cell", level))
        h, w = self.padded_size
        s = self.grids[level]
        if view is None:
            fig = self._figure(4.0, 4.2)
            ax = fig.add_axes((0.01, 0.01, 0.98, 0.89))
            viz.draw_grid(ax, self.display_image, s, positives=self.owners[level])
            boxes = [
                ax.add_patch(
                    Rectangle((0, 0), w / s, h / s, fill=False, edgecolor=c, linewidth=lw, zorder=5)
                )
                for c, lw in (("black", 4.5), ("#00e5ff", 2.2))
            ]
            title = ax.set_title("", fontsize=12)
            view = self._views[("cell", level)] = dict(
                fig=fig, ax=ax, boxes=boxes, title=title, contours={}
            )
        for box in view["boxes"]:
            box.set_xy((j * w / s, i * h / s))
        for contour in view["contours"].values():
            contour.set_visible(False)
        if owner is not None:
            if owner not in view["contours"]:
                viz.draw_contours(
                    view["ax"],
                    self.targets["masks"][owner : owner + 1],
                    ["white"],
                    size=(h, w),
                    linewidth=2,
                    linestyle="--",
                )
                view["contours"][owner] = view["ax"].collections[-1]
            view["contours"][owner].set_visible(True)
        view["title"].set_text(f"level {level}: {s}×{s} grid, cell ({i}, {j})")
        return _png(view["fig"])

    def _draw_heat_view(self, level: int, i: int, j: int) -> bytes:
        """The level's category heat map; positive cells outlined in their object's colour."""
        cls = self.heat_class.value
        view = self._views.get(("heat", level, cls))
        if view is None:
            fig = self._figure(4.0, 4.2)
            ax = fig.add_axes((0.03, 0.01, 0.78, 0.89))
            cax = fig.add_axes((0.84, 0.1, 0.04, 0.72))
            im = ax.imshow(
                self._heat(level), cmap=viz.PROB_CMAP, vmin=0, vmax=1, interpolation="nearest"
            )
            owner = self.owners[level]
            if owner is not None:
                for pi, pj in zip(*np.nonzero(owner >= 0), strict=True):
                    color = viz.instance_color(int(owner[pi, pj]))
                    ax.add_patch(
                        Rectangle(
                            (pj - 0.5, pi - 0.5), 1, 1, fill=False, linewidth=1.5, edgecolor=color
                        )
                    )
            box = ax.add_patch(
                Rectangle((-0.5, -0.5), 1, 1, fill=False, edgecolor="#00e5ff", linewidth=2.5)
            )
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(im, cax=cax)
            which = "max over classes" if cls < 0 else self.class_names[cls]
            ax.set_title(f"category scores ({which})", fontsize=12)
            view = self._views[("heat", level, cls)] = dict(fig=fig, box=box)
        view["box"].set_xy((j - 0.5, i - 0.5))
        return _png(view["fig"])

    def _draw_mask_view(self, level: int, i: int, j: int, k: int, mask: np.ndarray) -> bytes:
        """The cell's mask probabilities, alone and over the image (decoupled: X_j, Y_i too)."""
        view = self._views.get(("mask", level))
        h, w = self.padded_size
        s = self.grids[level]
        if view is None:
            # panels of p x p inches side by side, a colour bar on the right, titles on top
            n = 4 if self.decoupled else 2
            p = 1.75 if self.decoupled else 3.0  # inches per panel
            gap, left, right, top, bottom = 0.08, 0.08, 0.95, 0.8, 0.08
            fig_w, fig_h = left + n * p + (n - 1) * gap + right, p + top + bottom
            fig = self._figure(fig_w, fig_h)
            axes = [
                fig.add_axes(((left + a * (p + gap)) / fig_w, bottom / fig_h, p / fig_w, p / fig_h))
                for a in range(n)
            ]
            cax = fig.add_axes(
                (
                    (fig_w - right + 0.15) / fig_w,
                    (bottom + 0.1 * p) / fig_h,
                    0.15 / fig_w,
                    0.8 * p / fig_h,
                )
            )
            images = []
            for ax in axes[:-1]:
                images.append(
                    ax.imshow(
                        np.zeros_like(mask),
                        cmap=viz.PROB_CMAP,
                        vmin=0,
                        vmax=1,
                        interpolation="nearest",
                    )
                )
            over = axes[-1]
            over.imshow(self.display_image, extent=(0, w, h, 0))
            images.append(
                over.imshow(
                    np.zeros_like(mask),
                    cmap=viz.PROB_CMAP,
                    vmin=0,
                    vmax=1,
                    alpha=0.55,
                    extent=(0, w, h, 0),
                    interpolation="bilinear",
                )
            )
            box = over.add_patch(
                Rectangle((0, 0), w / s, h / s, fill=False, edgecolor="white", linewidth=2)
            )
            over.set_xlim(0, w)
            over.set_ylim(h, 0)
            titles = [ax.set_title("", fontsize=10) for ax in axes]
            titles[-1].set_text("over the image (cyan: p = 0.5)")
            for ax in axes:
                ax.set_xticks([])
                ax.set_yticks([])
            fig.colorbar(images[0], cax=cax, label="mask probability")
            suptitle = fig.suptitle("", fontsize=11, y=1 - 0.12 / fig_h, va="top")
            view = self._views[("mask", level)] = dict(
                fig=fig,
                axes=axes,
                images=images,
                box=box,
                titles=titles,
                suptitle=suptitle,
                contour=None,
            )
        images, titles = view["images"], view["titles"]
        if self.decoupled:
            px, py = (t.numpy() for t in decoupled_factors(self.outputs, level, i, j))
            for image, data in zip(images, (px, py, mask, mask), strict=True):
                image.set_data(data)
            titles[0].set_text(f"sigmoid(X_j), j = {j}")
            titles[1].set_text(f"sigmoid(Y_i), i = {i}")
            titles[2].set_text("product: the cell's mask")
            view["suptitle"].set_text(
                f"Decoupled SOLO, level {level}: mask of cell ({i}, {j}) = "
                "sigmoid(Y_i) · sigmoid(X_j)"
            )
        elif self.dynamic:
            for image in images:
                image.set_data(mask)
            mh, mw = mask.shape
            titles[0].set_text(f"sigmoid(kernel_{k} * F), {mh}×{mw}")
            view["suptitle"].set_text(
                f"SOLOv2, level {level}, cell ({i}, {j}): kernel k = {i}·{s} + {j} = {k} "
                "as a 1x1 conv on the mask features F"
            )
        else:
            for image in images:
                image.set_data(mask)
            mh, mw = mask.shape
            titles[0].set_text(f"sigmoid(mask[{k}]), {mh}×{mw}")
            view["suptitle"].set_text(
                f"level {level}, cell ({i}, {j}): mask channel k = {i}·{s} + {j} = {k}"
            )
        view["box"].set_xy((j * w / s, i * h / s))
        if view["contour"] is not None:
            view["contour"].remove()
            view["contour"] = None
        if mask.max() > 0.5 and mask.min() < 0.5:
            mh, mw = mask.shape
            view["contour"] = view["axes"][-1].contour(
                (np.arange(mw) + 0.5) * w / mw,
                (np.arange(mh) + 0.5) * h / mh,
                mask,
                levels=[0.5],
                colors=["#00e5ff"],
                linewidths=2,
            )
        return _png(view["fig"])

    def _draw_score_view(self, i: int, j: int, scores: np.ndarray, owner: int | None) -> bytes:
        """Horizontal bars: the cell's class probabilities (top 15 when there are more)."""
        c = len(scores)
        shown = np.argsort(-scores)[:15] if c > 15 else np.arange(c)
        target = None if owner is None else int(self.targets["labels"][owner])
        key = ("scores", tuple(shown.tolist()), target)
        view = self._views.get(key)
        if view is None:
            fig = self._figure(4.3, 1.05 + 0.3 * len(shown))
            bottom = 0.6 / fig.get_figheight()
            top = 1 - 0.35 / fig.get_figheight()
            ax = fig.add_axes((0.34, bottom, 0.62, top - bottom))
            y = np.arange(len(shown))
            bars = ax.barh(
                y, np.zeros(len(shown)), color=[viz.class_color(int(cl)) for cl in shown]
            )
            names = [
                self.class_names[int(cl)] + (" (target)" if int(cl) == target else "")
                for cl in shown
            ]
            ax.set_yticks(y, names, fontsize=10)
            ax.invert_yaxis()
            ax.set_xlim(0, 1)
            thr = self.config.score_threshold
            ax.axvline(thr, color="gray", linestyle="--", linewidth=1)
            ax.set_xlabel(f"probability (dashed: score threshold {thr:g})", fontsize=8)
            ax.tick_params(axis="x", labelsize=8)
            labels = [ax.text(0, yy, "", va="center", fontsize=9) for yy in y]
            title = ax.set_title("", fontsize=11)
            view = self._views[key] = dict(fig=fig, bars=bars, labels=labels, title=title)
        for bar, label, cl in zip(view["bars"], view["labels"], shown, strict=True):
            bar.set_width(float(scores[cl]))
            label.set_x(min(max(float(scores[cl]), self.config.score_threshold) + 0.015, 0.86))
            label.set_text(f"{scores[cl]:.3f}")
        view["title"].set_text(f"class scores of cell ({i}, {j})")
        return _png(view["fig"])

    def _render_predictions(self) -> None:
        cand = self.candidates
        pred = self.predictions
        n = int(cand["scores"].numel())
        h, w = self.padded_size
        order = torch.argsort(cand["scores"], descending=True)
        top = order[: self.top_n.value] if n else order
        fig = Figure(figsize=(6.2, 6.6), layout="constrained")
        ax = fig.subplots()
        ax.imshow(self.display_image, extent=(0, w, h, 0))
        if n:
            top_masks = cand["masks"][top]
            viz.draw_contours(
                ax,
                top_masks,
                [viz.class_color(int(c)) for c in cand["labels"][top]],
                size=(h, w),
                linewidth=1.3,
            )
            markers = "os^Dv"
            for level, s in enumerate(self.grids):
                sel = cand["levels"] == level
                if not sel.any():
                    continue
                cells = cand["cells"][sel]
                ys = ((cells // s).float() + 0.5) * h / s
                xs = ((cells % s).float() + 0.5) * w / s
                ax.scatter(
                    xs,
                    ys,
                    s=28,
                    marker=markers[level % 5],
                    facecolor="white",
                    edgecolor="black",
                    linewidth=0.8,
                    label=f"level {level}",
                    zorder=3,
                )
            ax.legend(
                loc="lower right",
                fontsize=8,
                title="firing cells",
                title_fontsize=8,
                framealpha=0.8,
            )
        ax.set_xlim(0, w)
        ax.set_ylim(h, 0)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"before NMS: {n} candidates\n(contours of the top {len(top)})", fontsize=12)
        self.before_image.value = _png(fig)

        keep = pred["scores"] >= self.show_threshold.value
        fig = Figure(figsize=(6.2, 6.6), layout="constrained")
        ax = fig.subplots()
        viz.draw_instances(
            ax,
            self.display_image,
            pred["masks"][keep],
            pred["labels"][keep],
            pred["scores"][keep],
            self.class_names,
        )
        ax.set_title(
            f"after Matrix NMS: {int(pred['scores'].numel())} kept,\n"
            f"{int(keep.sum())} with score ≥ {self.show_threshold.value:.2f}",
            fontsize=12,
        )
        if self.targets is not None:
            gt = self.targets["masks"]
            handles = [Line2D([], [], color="white", linestyle="--", label="ground truth")]
            viz.draw_contours(
                ax, gt, ["white"] * gt.shape[0], size=(h, w), linewidth=1, linestyle="--"
            )
            ax.legend(handles=handles, loc="lower right", fontsize=8, framealpha=0.6)
        self.after_image.value = _png(fig)
        per_level = [int((cand["levels"] == lv).sum()) for lv in range(len(self.grids))]
        self.predictions_info.value = (
            f"<b>Before NMS</b>: every cell whose class score survives points NMS and the "
            f"{self.config.score_threshold} threshold and whose mask is larger than its stride "
            f"is a candidate: {n} candidates (per level {per_level}); neighbouring cells of "
            "one object predict nearly the same mask. <b>After Matrix NMS</b>: duplicates "
            "decay, the scores of those left are shown."
        )


__all__ = ["GridExplorer"]

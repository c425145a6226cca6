"""What each grid cell of a SOLO model predicts on one image: the questions behind the explorer.

SOLO (Wang et al., ECCV 2020) divides the image into an S x S grid at every FPN level, and
cell ``(i, j)`` makes two predictions (paper Sec. 3.1-3.2):

* a **class score** per category: the category branch's ``[C, S, S]`` map at ``(i, j)``;
* a **mask**: channel ``k = i * S + j`` of the mask branch's S² channels, after the sigmoid;
  for Decoupled SOLO (Sec. 3.5) the product ``sigmoid(Y_i) * sigmoid(X_j)`` of a row map and a
  column map; for SOLOv2 ``sigmoid(kernel_k * F)``, the cell's predicted E weights applied as
  a 1x1 convolution to the image's shared mask features F.

In training, the cells inside an object's centre region are *positive* for that object
(:func:`minisolo.solo_targets`, the "owner" of the cell below). At inference every cell whose
score passes the threshold is a *candidate*, and Matrix NMS removes the duplicates.

:class:`GridCells` runs a model once on one image and answers these questions from its cached
outputs, with plain tensors and arrays and no widgets: use it in a script, a test or a
notebook. :class:`minisolo.widgets.GridExplorer` is the ipywidgets view over it::

    from minisolo.grid_cells import GridCells
    cells = GridCells(model, val_dataset[0])   # an (image, target) pair, or an image alone
    cells.cell_mask(1, 5, 7)       # [h, w] mask probabilities of cell (5, 7) of level 1
    cells.cell_scores(1, 5, 7)     # [C] class probabilities
    cells.cell_owner(1, 5, 7)      # the ground-truth object the cell is positive for, or None
    cells.candidates               # every firing cell, before NMS
    cells.predictions              # the instances after Matrix NMS

**Adding a model kind.** The only question whose answer depends on the model kind is "the mask
of cell (i, j)": one function ``(model, outputs, level, i, j) -> [h, w]`` per
``model.model_kind`` in :data:`CELL_MASKS`. SOLOv2 (dynamic kernels) is one: its function
applies cell (i, j)'s predicted kernel to the shared mask features.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .data.transforms import pad_to_multiple
from .inference import forward_for_inference
from .predict import prepare_image
from .solov2 import cell_kernels, dynamic_conv
from .targets import solo_targets
from .viz import owner_map

# ------------------------------------------------------------------------------------------
# the mask of one cell, per model kind
# ------------------------------------------------------------------------------------------

#: ``(model, outputs, level, i, j) -> [h, w]`` mask probabilities of cell ``(i, j)`` (image 0).
MaskOfCell = Callable[[nn.Module, dict, int, int, int], torch.Tensor]


def solo_cell_mask(model: nn.Module, outputs: dict, level: int, i: int, j: int) -> torch.Tensor:
    """Vanilla SOLO: the mask of cell ``(i, j)`` is channel ``k = i * S + j`` of the level's S²
    mask channels, after the sigmoid (paper Sec. 3.2, Fig. 2)."""
    s = int(model.config.grids[level])
    return torch.sigmoid(outputs["mask"][level][0, i * s + j])


def decoupled_factors(
    outputs: dict, level: int, i: int, j: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoupled SOLO's two factors of cell ``(i, j)``'s mask: ``sigmoid(X_j)`` (column branch,
    which sees only the x coordinate) and ``sigmoid(Y_i)`` (row branch, only y)."""
    x_j = torch.sigmoid(outputs["mask_x"][level][0, j])
    y_i = torch.sigmoid(outputs["mask_y"][level][0, i])
    return x_j, y_i


def decoupled_cell_mask(
    model: nn.Module, outputs: dict, level: int, i: int, j: int
) -> torch.Tensor:
    """Decoupled SOLO: the mask of cell ``(i, j)`` is ``sigmoid(Y_i) * sigmoid(X_j)``: 2 S
    maps give all S² masks (paper Sec. 3.5, Fig. 4)."""
    x_j, y_i = decoupled_factors(outputs, level, i, j)
    return y_i * x_j


def solov2_kernel(outputs: dict, level: int, i: int, j: int) -> torch.Tensor:
    """SOLOv2: the ``[E]`` weights of cell ``(i, j)``'s dynamic 1x1 kernel (kernel branch)."""
    rows, cols = torch.tensor([i]), torch.tensor([j])
    return cell_kernels(outputs["kernel"][level], 0, rows, cols)[0]


def solov2_cell_mask(model: nn.Module, outputs: dict, level: int, i: int, j: int) -> torch.Tensor:
    """SOLOv2: the mask of cell ``k = i * S + j`` is ``sigmoid(kernel_k * F)``, the cell's E
    kernel weights applied as a 1x1 convolution to the mask features ``F`` ``[E, H/4, W/4]``
    that every cell of every level shares (SOLOv2 paper, Sec. 3.2)."""
    kernel = solov2_kernel(outputs, level, i, j)
    return torch.sigmoid(dynamic_conv(outputs["mask_features"][0], kernel[None]))[0]


#: The mask of cell ``(i, j)`` for each ``model.model_kind``: add a model kind here.
CELL_MASKS: dict[str, MaskOfCell] = {
    "solo": solo_cell_mask,
    "decoupled_solo": decoupled_cell_mask,
    "solov2": solov2_cell_mask,
}


# ------------------------------------------------------------------------------------------
# one image, run once
# ------------------------------------------------------------------------------------------


def run_once(model: nn.Module, image: torch.Tensor) -> dict:
    """The raw outputs of ``model`` on one padded ``[3, H, W]`` image (batch of one): a forward
    pass in eval mode without gradients (the model's mode is restored after), every tensor
    moved to the CPU in float32. Outputs are per-level lists of tensors, or one tensor (SOLOv2's
    ``mask_features``)."""
    device = next(model.parameters()).device
    with torch.no_grad():
        outputs, _, _ = forward_for_inference(model, image[None].to(device))

    def to_cpu(value):
        if torch.is_tensor(value):
            return value.detach().float().cpu()
        return [v.detach().float().cpu() for v in value]

    return {key: to_cpu(value) for key, value in outputs.items()}


class GridCells:
    """The grid cells of a SOLO / Decoupled SOLO / SOLOv2 model on one image, queried cell by
    cell.

    The model runs once, at construction; every query only slices the cached outputs.

    Args:
        model: a :class:`minisolo.SOLO`, :class:`minisolo.DecoupledSOLO`,
            :class:`minisolo.SOLOv2`, or any model whose ``model_kind`` has an entry in
            :data:`CELL_MASKS`.
        image: a normalised float ``[3, H, W]`` tensor (padded here to multiples of 32 if
            needed), or an ``(image, target)`` pair from :class:`minisolo.data.CocoInstances`;
            or an image path, a PIL image or a uint8 ``[H, W, 3]`` / ``[H, W]`` array, resized
            and normalised with the model's config (:func:`minisolo.predict.prepare_image`).
        targets: optional dict with ``masks`` (bool ``[N, H, W]``) and ``labels`` (``[N]``);
            taken from the pair when ``image`` is one. They tell which cells are positive.
        class_names: names of the classes (default ``model.config.class_names``).

    Attributes:
        kind: ``model.model_kind``, the key of its mask function in :data:`CELL_MASKS`.
        grids: S of every level.
        image: the padded image on the CPU; ``image_size`` is its size before padding,
            ``padded_size`` after.
        outputs: the model's raw outputs of the padded image (CPU, float32, batch of one).
        category_probs: per level, the ``[C, S, S]`` class probabilities (sigmoid of the
            category branch).
        model_seconds: how long the forward pass took.
        targets: the padded ``masks`` and the ``labels`` (``None`` without targets).
        level_targets: the :func:`minisolo.solo_targets` of the image, per level (or ``None``).
        owners: per level, an ``[S, S]`` array with the index of the object each positive cell
            is assigned to and -1 elsewhere (``None`` without targets).
    """

    def __init__(
        self,
        model: nn.Module,
        image: object,
        targets: dict | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        if isinstance(image, tuple | list) and len(image) == 2 and isinstance(image[1], dict):
            image, pair_target = image
            targets = pair_target if targets is None else targets
        # a path, PIL image, uint8 array or normalised tensor -> the model's input; errors
        # name what was given (see minisolo.predict.prepare_image)
        image, _ = prepare_image(image, model.config)
        self.kind = getattr(model, "model_kind", None)
        if self.kind not in CELL_MASKS:
            raise ValueError(
                f"no grid-cell masks for model kind {self.kind!r}: CELL_MASKS knows "
                f"{sorted(CELL_MASKS)} (add one function there for a new kind)"
            )
        self.model = model
        self.config = model.config
        self.grids = tuple(int(s) for s in self.config.grids)
        self.image_size = tuple(int(s) for s in image.shape[-2:])  # before padding
        self.image = pad_to_multiple(image.detach().float().cpu(), 32)
        self.padded_size = tuple(int(s) for s in self.image.shape[-2:])
        num_classes = int(self.config.num_classes)
        names = class_names or getattr(self.config, "class_names", ()) or ()
        self.class_names = list(names) if names else [f"class {c}" for c in range(num_classes)]

        start = time.perf_counter()
        self.outputs = run_once(model, self.image)
        self.category_probs = [torch.sigmoid(c[0]).numpy() for c in self.outputs["category"]]
        self.model_seconds = time.perf_counter() - start

        # ground truth: the same assignment as in training (which cell owns which object)
        self.targets: dict | None = None
        self.level_targets: list | None = None
        self.owners: list[np.ndarray | None] = [None] * len(self.grids)
        if targets is not None:
            masks = pad_to_multiple(torch.as_tensor(targets["masks"]).bool().cpu(), 32, False)
            labels = torch.as_tensor(targets["labels"]).long().cpu()
            self.targets = {"masks": masks, "labels": labels}
            self.level_targets = solo_targets(
                masks,
                labels,
                num_classes=num_classes,
                grids=self.grids,
                scale_ranges=self.config.scale_ranges,
                strides=self.config.strides,
                sigma=self.config.sigma,
                min_mask_area=getattr(self.config, "min_mask_area", 10),
                # SOLOv2 has every level's masks at stride 4 (SOLO: the level's stride / 2)
                mask_stride=getattr(model, "mask_stride", None),
            )
            self.owners = [
                owner_map(lt, s) for lt, s in zip(self.level_targets, self.grids, strict=True)
            ]
        self._candidates: dict | None = None
        self._predictions: dict | None = None

    # --------------------------------------------------------------------------- the grid
    def grid_size(self, level: int) -> int:
        """S of ``level``."""
        level = int(level)
        if not 0 <= level < len(self.grids):
            raise ValueError(f"level must be in [0, {len(self.grids)}), got {level}")
        return self.grids[level]

    def channel_index(self, level: int, i: int, j: int) -> int:
        """The mask channel of cell ``(i, j)``: ``k = i * S + j`` (for Decoupled SOLO and
        SOLOv2 the same index names the cell; its mask is ``sigmoid(Y_i) * sigmoid(X_j)``, or
        ``sigmoid(kernel_k * F)``)."""
        s = self.grid_size(level)
        if not (0 <= i < s and 0 <= j < s):
            raise ValueError(f"cell ({i}, {j}) is outside the {s} x {s} grid of level {level}")
        return int(i) * s + int(j)

    # --------------------------------------------------------------------------- one cell
    def cell_mask(self, level: int, i: int, j: int) -> np.ndarray:
        """Mask probabilities ``[h, w]`` of cell ``(i, j)`` (at the level's mask resolution),
        from the model kind's function in :data:`CELL_MASKS`."""
        self.channel_index(level, i, j)  # validates
        mask = CELL_MASKS[self.kind](self.model, self.outputs, int(level), int(i), int(j))
        return mask.numpy()

    def cell_scores(self, level: int, i: int, j: int) -> np.ndarray:
        """Category probabilities ``[C]`` of cell ``(i, j)``."""
        self.channel_index(level, i, j)
        return self.category_probs[int(level)][:, int(i), int(j)]

    def cell_owner(self, level: int, i: int, j: int) -> int | None:
        """Index of the ground-truth object the cell is assigned to, ``None`` if negative (or
        no targets were given)."""
        self.channel_index(level, i, j)
        owner = self.owners[int(level)]
        if owner is None or owner[i, j] < 0:
            return None
        return int(owner[i, j])

    def mask_shape(self, level: int) -> tuple[int, int]:
        """``(h, w)`` of the masks of ``level``'s cells."""
        return tuple(int(n) for n in self.cell_mask(level, 0, 0).shape)

    # --------------------------------------------------------------------------- all cells
    def heat_map(self, level: int, class_index: int | None = None) -> np.ndarray:
        """The ``[S, S]`` category scores of ``level``: of class ``class_index``, or the
        maximum over the classes (``None``)."""
        self.grid_size(level)  # validates
        probs = self.category_probs[int(level)]
        return probs.max(axis=0) if class_index is None else probs[class_index]

    def best_cell(
        self, level: int | None = None, class_index: int | None = None
    ) -> tuple[int, int, int]:
        """``(level, i, j)`` of the cell with the highest :meth:`heat_map` score, of ``level``
        or of all levels (``None``)."""
        levels = range(len(self.grids)) if level is None else [int(level)]
        best = max(levels, key=lambda lv: self.heat_map(lv, class_index).max())
        heat = self.heat_map(best, class_index)
        i, j = np.unravel_index(int(np.argmax(heat)), heat.shape)
        return best, int(i), int(j)

    @property
    def candidates(self) -> dict:
        """``model.candidates`` of the image: every cell whose score passes points NMS and the
        score threshold and whose mask is large enough, before NMS (computed on first use).
        ``levels`` and ``cells`` (``k = i * S + j``) say which cell each candidate comes from."""
        if self._candidates is None:
            with torch.no_grad():
                self._candidates = self.model.candidates(self.outputs, 0)
        return self._candidates

    @property
    def predictions(self) -> dict:
        """``model.post_process`` of the image: the instances left after Matrix NMS, with masks
        on the padded canvas (computed on first use)."""
        if self._predictions is None:
            with torch.no_grad():
                self._predictions = self.model.post_process(
                    self.outputs, 0, self.padded_size, self.padded_size
                )
        return self._predictions


__all__ = [
    "CELL_MASKS",
    "GridCells",
    "MaskOfCell",
    "decoupled_cell_mask",
    "decoupled_factors",
    "run_once",
    "solo_cell_mask",
    "solov2_cell_mask",
    "solov2_kernel",
]

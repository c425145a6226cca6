# %% [markdown]
# # 02 · Grid assignment: which cells predict which object
#
# SOLO turns instance segmentation into classification over *instance categories*: an object
# is identified by **where its centre is** (a cell of an $S \times S$ grid) and **how big it is**
# (an FPN level). Training needs the reverse map: for every object, which cells of which level
# must predict it? This notebook derives that assignment step by step and runs it on real images.
#
# **What you will learn**
#
# - how an object's size picks its FPN level(s), with overlapping ranges;
# - the centre of mass, the $\varepsilon = 0.2$ centre region and the 3 × 3 clamp, by hand for one object;
# - the positive cells of every object on every level, drawn over synthetic shapes and COCO photos;
# - a measurement of the paper's "about 3 positive cells per object" on data;
# - how all this maps onto `minisolo.solo_targets` (categories and positive indices $k = iS + j$).
#
# **Prerequisites:** notebook 00 (what SOLO predicts); FPN levels and strides in broad strokes. About 30 minutes.

# %%
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

# Make `import minisolo` work from a fresh checkout too (without `pip install -e .`).
for _parent in [Path.cwd(), *Path.cwd().parents]:
    if (_parent / "minisolo" / "__init__.py").is_file():
        sys.path.insert(0, str(_parent))
        break

import minisolo
from minisolo.utils import is_fast_mode, pick_device, seed_everything

FAST = is_fast_mode()  # MINISOLO_FAST=1 picks tiny sizes (the tests run every notebook so)
device = pick_device("auto")  # CUDA when a GPU is present, else the CPU
seed_everything(0)
plt.rcParams.update({"figure.dpi": 90, "font.size": 11, "axes.titlesize": 12})
print(
    f"minisolo {minisolo.__version__} | torch {torch.__version__} | device: {device} | FAST={FAST}"
)

# %% [markdown]
# ## 1. Data and the configuration
#
# We generate a small synthetic **shapes** dataset (256 × 256 images, COCO format) and use the
# `tiny` preset, whose scale ranges are the paper's scaled to 256-px images. Later we use COCO
# photos with the `paper` preset.

# %%
# %config InlineBackend.figure_formats = ["jpeg"]  # photos: JPEG keeps the notebook small
import math
import tempfile

from minisolo.data import CocoInstances, make_shapes_dataset
from minisolo.targets import center_of_mass, masks_to_boxes

NUM_SHAPES = 16 if FAST else 80
shapes_root = make_shapes_dataset(
    Path(tempfile.mkdtemp()) / "shapes", num_train=NUM_SHAPES, num_val=2, seed=0, progress=False
)
shapes = CocoInstances(shapes_root, "train")
tiny = minisolo.preset(
    "tiny", num_classes=shapes.num_classes, class_names=tuple(shapes.class_names)
)
print(f"shapes: {len(shapes)} images, classes {shapes.class_names}")
print(f"{'level':>5} {'grid S':>6} {'stride':>6} {'sqrt(w*h) range':>16}")
for level, (grid, stride, (lower, upper)) in enumerate(
    zip(tiny.grids, tiny.strides, tiny.scale_ranges)
):
    print(f"{level:>5} {grid:>6} {stride:>6} {f'{lower} .. {upper}':>16}")

# %% [markdown]
# Each level has a range of object sizes, measured as $\sqrt{w h}$ of the object's **box**, and
# the ranges **overlap** (1–32 and 16–64, ...). An object of size 40 belongs to levels 1 *and*
# 2: it is trained on both, which smooths the hand-over between levels. Finer levels (large
# $S$, small stride) take the small objects.

# %% [markdown]
# ## 2. One object, by hand
#
# We take an image and one of its objects, preferably one whose size falls in two levels.

# %%
image, target = shapes[0]
masks, labels = target["masks"], target["labels"]
H, W = masks.shape[-2:]
boxes = masks_to_boxes(masks)  # tight x1, y1, x2, y2 (x2, y2 exclusive)
sizes = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))


def levels_of(size, scale_ranges):
    """FPN levels whose inclusive range contains the object size sqrt(w*h)."""
    return [level for level, (lower, upper) in enumerate(scale_ranges) if lower <= size <= upper]


n = max(range(len(masks)), key=lambda m: (len(levels_of(sizes[m], tiny.scale_ranges)), -m))
x1, y1, x2, y2 = boxes[n].tolist()
print(
    f"object {n}: class {shapes.class_names[labels[n]]}, box x {x1:.0f}..{x2:.0f}, y {y1:.0f}..{y2:.0f}"
)
print(
    f"  size sqrt(w*h) = sqrt({x2 - x1:.0f} * {y2 - y1:.0f}) = {sizes[n]:.1f} -> levels {levels_of(sizes[n], tiny.scale_ranges)}"
)

# %% [markdown]
# **Step 1, centre of mass.** The mean position of the mask's pixels, at the input resolution
# (for a convex shape it is near the box centre; for a crescent it can be far from it).

# %%
ys, xs = masks[n].nonzero(as_tuple=True)
cy, cx = ys.float().mean().item(), xs.float().mean().item()
print(
    f"centre of mass: (cx, cy) = ({cx:.2f}, {cy:.2f}); box centre: ({(x1 + x2) / 2:.1f}, {(y1 + y2) / 2:.1f})"
)

# %% [markdown]
# **Steps 2–4, on each of the object's levels.**
#
# 2. the centre region: half extents $0.5\,w\,\varepsilon$ and $0.5\,h\,\varepsilon$ with $\varepsilon = 0.2$, around the centre of mass;
# 3. the cell of the centre $i_0 = \lfloor c_y / H \cdot S \rfloor$, $j_0 = \lfloor c_x / W \cdot S \rfloor$ and the cells the region touches:
#    $\text{top} = \max(0, \lfloor (c_y - \text{half}_h) / H \cdot S \rfloor)$, $\text{down} = \min(S - 1, \lfloor (c_y + \text{half}_h) / H \cdot S \rfloor)$, likewise left and right;
# 4. clamp to the 3 × 3 neighbourhood of $(i_0, j_0)$, so an object never has more than 9 positive cells per level.
#
# Every cell in rows top..down × columns left..right is **positive**: its category target is
# the object's class and its mask channel $k = iS + j$ must predict the object's mask.

# %%
SIGMA = 0.2  # the paper's epsilon
half_w, half_h = 0.5 * (x2 - x1) * SIGMA, 0.5 * (y2 - y1) * SIGMA


def region_by_hand(cx, cy, half_w, half_h, grid, height, width):
    i0, j0 = math.floor(cy / height * grid), math.floor(cx / width * grid)
    top = max(0, math.floor((cy - half_h) / height * grid))
    down = min(grid - 1, math.floor((cy + half_h) / height * grid))
    left = max(0, math.floor((cx - half_w) / width * grid))
    right = min(grid - 1, math.floor((cx + half_w) / width * grid))
    # clamp to the 3 x 3 neighbourhood of the centre cell
    top, down = max(top, i0 - 1), min(down, i0 + 1)
    left, right = max(left, j0 - 1), min(right, j0 + 1)
    return (i0, j0), (top, down, left, right)


print(f"centre region: {2 * half_w:.1f} x {2 * half_h:.1f} px around the centre of mass")
hand_regions = {}
for level in levels_of(sizes[n], tiny.scale_ranges):
    grid = tiny.grids[level]
    (i0, j0), (top, down, left, right) = region_by_hand(cx, cy, half_w, half_h, grid, H, W)
    cells = [(i, j) for i in range(top, down + 1) for j in range(left, right + 1)]
    hand_regions[level] = (top, down, left, right)
    print(
        f"level {level}: S = {grid}, cell size {H / grid:.1f} px, centre cell ({i0}, {j0}), "
        f"rows {top}..{down}, columns {left}..{right}"
    )
    print(
        f"         positive cells {cells} -> channels k = i*S + j = {[i * grid + j for i, j in cells]}"
    )


# %%
def plural(n, word):
    """The word in the plural only when n != 1: "1 cell", "2 cells"."""
    return f"{n} {word}" + ("" if n == 1 else "s")


def draw_grid(ax, grid, height, width, colour="white", lw=0.6):
    for t in np.linspace(0, height, grid + 1):
        ax.axhline(t, color=colour, lw=lw, alpha=0.7)
    for t in np.linspace(0, width, grid + 1):
        ax.axvline(t, color=colour, lw=lw, alpha=0.7)


def fill_cell(ax, i, j, grid, height, width, colour, alpha=0.45):
    ax.add_patch(
        plt.Rectangle(
            (j * width / grid, i * height / grid),
            width / grid,
            height / grid,
            color=colour,
            alpha=alpha,
            lw=0,
        )
    )


levels = list(hand_regions)
fig, axes = plt.subplots(1, len(levels), figsize=(7.5 * len(levels), 7.5), squeeze=False)
for ax, level in zip(axes[0], levels):
    grid = tiny.grids[level]
    top, down, left, right = hand_regions[level]
    ax.imshow(image.permute(1, 2, 0), extent=(0, W, H, 0))
    ax.imshow(
        np.ma.masked_where(~masks[n].numpy(), masks[n].numpy()),
        cmap="autumn",
        alpha=0.35,
        extent=(0, W, H, 0),
    )
    draw_grid(ax, grid, H, W)
    for i in range(top, down + 1):
        for j in range(left, right + 1):
            fill_cell(ax, i, j, grid, H, W, "tab:green")
    ax.add_patch(
        plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="yellow", lw=2, label="box")
    )
    ax.add_patch(
        plt.Rectangle(
            (cx - half_w, cy - half_h),
            2 * half_w,
            2 * half_h,
            fill=False,
            ec="red",
            lw=2,
            ls="--",
            label="centre region (eps = 0.2)",
        )
    )
    ax.plot(cx, cy, "r*", ms=16, mec="white", label="centre of mass")
    ax.fill([], [], color="tab:green", alpha=0.45, label="positive cells")
    margin = 1.5 * max(x2 - x1, y2 - y1)
    ax.set_xlim(max(0, cx - margin), min(W, cx + margin))
    ax.set_ylim(min(H, cy + margin), max(0, cy - margin))
    ax.set_title(
        f"level {level}: S = {grid}, {plural((down - top + 1) * (right - left + 1), 'positive cell')}"
    )
    ax.set_xlabel("x (pixels)")
    ax.set_ylabel("y (pixels)")
    ax.legend(loc="upper left", fontsize=9)
plt.tight_layout()
plt.show()

# %% [markdown]
# The centre region is small (20 % of the box on each axis), so a small object's region covers
# one cell, or two when it straddles a cell border; a large object's region spans several cells,
# but never more than the 3 × 3 block around its centre cell.

# %% [markdown]
# ## 3. Every object, every level
#
# `minisolo.solo_targets` does the above for all objects of an image at once and returns one
# `LevelTargets` per level: `category` ($S \times S$, background $= C$), `positive_index` ($k$),
# `masks` (the target mask of each positive cell) and `instance` (which object). When two
# objects claim the same cell, the later one wins. We draw each level's positive cells in their
# object's colour, on the shapes image whose objects reach the most levels.

# %%
from minisolo.viz import place_labels  # labels that move aside instead of overlapping

COLOURS = plt.cm.tab10.colors


def targets_for(masks, labels, config):
    return minisolo.solo_targets(
        masks,
        labels,
        num_classes=config.num_classes,
        grids=config.grids,
        scale_ranges=config.scale_ranges,
        strides=config.strides,
        sigma=config.sigma,
        min_mask_area=config.min_mask_area,
    )


def show_assignment(image, masks, labels, config, title, class_names):
    """One panel with every object, then one panel per level with its positive cells."""
    height, width = masks.shape[-2:]
    level_targets = targets_for(masks, labels, config)
    sizes = torch.sqrt((lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))(masks_to_boxes(masks)))
    cx, cy = center_of_mass(masks)
    fig, axes = plt.subplots(2, 3, figsize=(18, 12 * height / width + 1))
    axes = axes.flat
    picture = image.permute(1, 2, 0).clamp(0, 1).numpy()
    axes[0].imshow(picture, extent=(0, width, height, 0))
    for m in range(len(masks)):
        overlay = np.zeros((height, width, 4))
        overlay[masks[m].numpy()] = (*COLOURS[m % 10], 0.45)
        axes[0].imshow(overlay, extent=(0, width, height, 0))
    axes[0].set_title(f"{title}: {plural(len(masks), 'object')} (id:class, size)")
    for level, lt in enumerate(level_targets):
        ax = axes[level + 1]
        grid = config.grids[level]
        ax.imshow(picture, extent=(0, width, height, 0), alpha=0.45)
        draw_grid(ax, grid, height, width, colour="black", lw=0.3)
        members = sorted(set(lt.instance.tolist()))
        for obj in members:  # outline the objects this level is trained on
            ax.contour(
                masks[obj].float().numpy(), levels=[0.5], colors=[COLOURS[obj % 10]], linewidths=2
            )
        for k, obj in zip(lt.positive_index.tolist(), lt.instance.tolist()):
            fill_cell(ax, k // grid, k % grid, grid, height, width, COLOURS[obj % 10], alpha=0.7)
        ax.plot(cx[members], cy[members], "w*", ms=9, mec="black")
        lower, upper = config.scale_ranges[level]
        ax.set_title(
            f"level {level}: S = {grid}, sizes {lower}..{upper}: "
            f"{plural(len(members), 'object')}, {plural(lt.num_positives, 'cell')}"
        )
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    plt.tight_layout()  # first the layout, then the labels: they are placed in screen space
    place_labels(
        axes[0],
        cx.tolist(),
        cy.tolist(),
        [f"{m}:{class_names[labels[m]]}\n{sizes[m]:.0f}px" for m in range(len(masks))],
        [COLOURS[m % 10] for m in range(len(masks))],
    )
    plt.show()
    return level_targets


def levels_in_use(index):
    """How many FPN levels have at least one object of shapes image `index`."""
    _, target = shapes[index]
    level_targets = targets_for(target["masks"], target["labels"], tiny)
    return sum(lt.num_positives > 0 for lt in level_targets)


# the shapes image whose objects reach the most levels, so that few panels stay empty
busy = max(range(len(shapes)), key=levels_in_use)
busy_image, busy_target = shapes[busy]
_ = show_assignment(
    busy_image,
    busy_target["masks"],
    busy_target["labels"],
    tiny,
    f"shapes image {busy}",
    shapes.class_names,
)


# %% [markdown]
# ### COCO photos
#
# The same on real COCO 2017 photos with their annotations, wherever
# `minisolo.data.find_coco_folder()` finds them (`$MINISOLO_COCO`, a `data/coco-*` subset, or
# `../shared/coco-mini`; notebook 00 explains).
# We resize them as the paper trains (short side 800, long side ≤ 1333), pad to a multiple of
# 32, and use the `paper` preset: grids 40, 36, 24, 16, 12 and sizes 1–96, 48–192, 96–384,
# 192–768, 384–2048.


# %%
from minisolo.data import (
    Compose,
    Resize,
    ToTensor,
    coco_subset_hint,
    find_coco_folder,
    pad_to_multiple,
)

found = find_coco_folder()
if found is None:
    print(coco_subset_hint())
    print("Skipping the COCO part: the rest of the notebook runs without it.")
    coco = None
else:
    coco_split = found.splits[0]
    coco = CocoInstances(
        found.root, coco_split, transforms=Compose([ToTensor(), Resize(800, 1333)])
    )
    paper = minisolo.preset(
        "paper", num_classes=coco.num_classes, class_names=tuple(coco.class_names)
    )
    print(f"COCO photos from {found.root} ({coco_split}): {len(coco)} images")


def padded(image, target):
    """Pad the image and its masks to multiples of 32, as a batch would be."""
    return pad_to_multiple(image), pad_to_multiple(target["masks"], value=False), target["labels"]


if coco is not None:
    # landscape photos with at least 5 objects read best (looked for among the first 200)
    good = [
        i
        for i in range(min(len(coco), 200))
        if len(coco.load_target(i)["labels"]) >= 5
        and coco.coco.imgs[coco.ids[i]]["width"] > coco.coco.imgs[coco.ids[i]]["height"]
    ] or [0]  # a subset of quieter photos: its first one
    for index in good[: 1 if FAST else 2]:
        coco_image, coco_masks, coco_labels = padded(*coco[index])
        _ = show_assignment(
            coco_image, coco_masks, coco_labels, paper, f"COCO {coco.ids[index]}", coco.class_names
        )


# %% [markdown]
# ## 4. "About 3 positives per object"?
#
# The paper says that the centre sampling gives about three positive samples per ground-truth
# object on average. We count, for every object, its positive cells summed over all levels.


# %%
def count_positives(masks, labels, config):
    """Positive cells of every (object, level) pair the object is assigned to, and levels per object."""
    per_pair, levels = [], torch.zeros(len(masks), dtype=torch.long)
    for lt in targets_for(masks, labels, config):
        counts = torch.bincount(lt.instance.cpu(), minlength=len(masks))
        per_pair.append(counts[counts > 0])
        levels += (counts > 0).long()
    return torch.cat(per_pair), levels


start = time.perf_counter()
stats = {}
shape_counts = [
    count_positives(t["masks"], t["labels"], tiny)
    for _, t in (shapes[i] for i in range(len(shapes)))
]
stats["shapes (tiny preset)"] = [torch.cat(parts) for parts in zip(*shape_counts)]
if coco is not None:
    coco_indices = range(min(len(coco), 8 if FAST else 100))
    coco_counts = [
        count_positives(m, l, paper) for _, m, l in (padded(*coco[i]) for i in coco_indices)
    ]
    stats[f"COCO {coco_split} (paper preset)"] = [torch.cat(parts) for parts in zip(*coco_counts)]
print(f"counted in {time.perf_counter() - start:.1f} s")

fig, axes = plt.subplots(1, 2, figsize=(15, 4.8))
width = 0.8 / len(stats)
for d, ((name, (per_pair, levels)), colour) in enumerate(
    zip(stats.items(), ["tab:blue", "tab:orange"])
):
    offset = (d - (len(stats) - 1) / 2) * width
    values = np.bincount(per_pair.numpy(), minlength=10)[1:10] / len(per_pair)
    axes[0].bar(
        np.arange(1, 10) + offset,
        values,
        width=width,
        color=colour,
        label=f"{name}: mean {per_pair.float().mean():.2f}",
    )
    axes[0].axvline(per_pair.float().mean(), color=colour, ls="--")
    level_share = np.bincount(levels.numpy(), minlength=4)[:4] / len(levels)
    axes[1].bar(
        np.arange(4) + offset,
        level_share,
        width=width,
        color=colour,
        label=f"{name}: {len(levels)} objects",
    )
    print(
        f"{name}: {per_pair.float().mean():.2f} positive cells per (object, level), "
        f"{levels.float().mean():.2f} levels per object, so {per_pair.sum() / len(levels):.2f} cells per object "
        f"in total; {(levels == 0).sum()} objects without any"
    )
    print(
        f"    (object, level) pairs with 1 cell: {(per_pair == 1).float().mean():.0%}, "
        f"with 2 cells: {(per_pair == 2).float().mean():.0%}"
    )
axes[0].set_xticks(range(1, 10))
axes[0].set_xlabel("positive cells of one object on one level (at most 3 x 3 = 9)")
axes[0].set_ylabel("fraction of (object, level) pairs")
axes[0].set_title("How many cells must predict an object on a level?")
axes[0].legend()
axes[1].set_xticks(range(4))
axes[1].set_xlabel("number of FPN levels the object is assigned to")
axes[1].set_ylabel("fraction of objects")
axes[1].set_title("Overlapping size ranges: many objects train two levels")
axes[1].set_ylim(0, 1.2)  # room above the tallest bar for the legend
axes[1].legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# On COCO with the paper's settings, the count per object and level lands between 3 and 4, in
# line with the paper's "about 3"; the tiny preset's coarser grids on 256-px images give fewer. Small objects
# get one or two cells (two when the centre region straddles a cell border), large ones up to 9
# (the 3 × 3 clamp). Because the size ranges overlap, most objects are
# trained on two levels, so an object has about twice that many positive cells in total. Objects
# with *no* positive cell are those under 10 pixels (the official minimum mask area), outside
# every range, or whose cells were all taken by a later object.
#
# ## 5. Check: our derivation against `solo_targets`
#
# A plain-Python version of the whole assignment, object by object, level by level, compared
# with the vectorised package function on the shapes image and a COCO photo.

# %%
from torch.testing import assert_close


def assign_by_hand(masks, labels, config):
    """Per level: (category [S, S], positive indices k, owning object), in plain Python loops."""
    height, width = masks.shape[-2:]
    boxes = masks_to_boxes(masks)
    results = []
    for grid, (lower, upper) in zip(config.grids, config.scale_ranges):
        category = torch.full((grid, grid), config.num_classes)
        owner = torch.full((grid, grid), -1)
        for m in range(len(masks)):  # in order: a later object overwrites an earlier one
            x1, y1, x2, y2 = boxes[m].tolist()
            size = math.sqrt((x2 - x1) * (y2 - y1))
            if not lower <= size <= upper or masks[m].sum() < config.min_mask_area:
                continue
            ys, xs = masks[m].nonzero(as_tuple=True)
            cy, cx = ys.float().mean().item(), xs.float().mean().item()
            half_w, half_h = 0.5 * (x2 - x1) * config.sigma, 0.5 * (y2 - y1) * config.sigma
            _, (top, down, left, right) = region_by_hand(
                cx, cy, half_w, half_h, grid, height, width
            )
            category[top : down + 1, left : right + 1] = labels[m]
            owner[top : down + 1, left : right + 1] = m
        positive_index = (owner.flatten() >= 0).nonzero().squeeze(1)  # k = i*S + j, ascending
        results.append((category, positive_index, owner.flatten()[positive_index]))
    return results


cases = [(masks, labels, tiny)]
if coco is not None:
    cases.append(padded(*coco[good[0]])[1:] + (paper,))
for case_masks, case_labels, config in cases:
    for (category, positive_index, instance), lt in zip(
        assign_by_hand(case_masks, case_labels, config),
        targets_for(case_masks, case_labels, config),
    ):
        assert_close(category, lt.category)
        assert_close(positive_index, lt.positive_index)
        assert_close(instance, lt.instance)
        grid = category.shape[0]
        # the positive indices are exactly the non-background cells, read row by row
        assert_close(
            positive_index, (lt.category.flatten() != config.num_classes).nonzero().squeeze(1)
        )
print(f"solo_targets matches the step-by-step assignment on {len(cases)} images")

# %% [markdown]
# ## Exercises
#
# 1. **Levels of one square (code).** Paint a single 60 × 60 square into an empty 256 × 256 mask
#    (class 0). Predict its levels with `levels_of` for the `tiny` preset, then assert that
#    exactly those levels have positive cells in `solo_targets`. Repeat for a 64 × 64 square
#    (the ranges are inclusive).
# 2. **A larger centre region (code).** Count the positive cells of every object of the shapes
#    set with `sigma=0.5` instead of 0.2. Assert that no object gets more than 9 cells on a
#    level and that the total number of positive cells never decreases. Why can it not decrease?
# 3. **Who owns a contested cell? (code).** Make two 40 × 40 squares whose centres of mass fall
#    in the same cell of the `tiny` preset's level 1, with different classes. Assert that the
#    shared centre cell has the class of the *second* object and that `instance` says 1 there.
# 4. **Think.** Why the centre of *mass* and not the box centre? Sketch an object for which the
#    two fall in different cells (hint: a crescent or an "L"). And why should the ranges
#    overlap rather than tile the size axis?

# %% [markdown]
# # 02 · Grid assignment: solutions
#
# Solutions to the exercises of `02_grid_assignment.ipynb`; each coding answer ends with an `assert`.

# %%
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import torch

# Make `import minisolo` work from a fresh checkout too (without `pip install -e .`).
for _parent in [Path.cwd(), *Path.cwd().parents]:
    if (_parent / "minisolo" / "__init__.py").is_file():
        sys.path.insert(0, str(_parent))
        break

import tempfile

import minisolo
from minisolo.utils import is_fast_mode, pick_device, seed_everything

FAST = is_fast_mode()  # MINISOLO_FAST=1 picks tiny sizes (the tests run every notebook so)
device = pick_device("auto")  # CUDA when a GPU is present, else the CPU
seed_everything(0)
plt.rcParams.update({"figure.dpi": 90, "font.size": 11, "axes.titlesize": 12})
print(
    f"minisolo {minisolo.__version__} | torch {torch.__version__} | device: {device} | FAST={FAST}"
)

# %%
from minisolo.data import CocoInstances, make_shapes_dataset

tiny = minisolo.preset("tiny", num_classes=4)


def targets_for(masks, labels, config, sigma=None):
    return minisolo.solo_targets(
        masks,
        labels,
        num_classes=config.num_classes,
        grids=config.grids,
        scale_ranges=config.scale_ranges,
        strides=config.strides,
        sigma=config.sigma if sigma is None else sigma,
    )


def levels_of(size, scale_ranges):
    return [level for level, (lower, upper) in enumerate(scale_ranges) if lower <= size <= upper]


def square(top, left, side, size=256):
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[top : top + side, left : left + side] = True
    return mask


# %% [markdown]
# ## Exercise 1: the levels of one square

# %%
for side in (60, 64):
    masks = square(100, 90, side)[None]
    predicted = levels_of(side, tiny.scale_ranges)  # the box is side x side, so sqrt(w*h) = side
    with_positives = [
        level
        for level, lt in enumerate(targets_for(masks, torch.tensor([0]), tiny))
        if lt.num_positives
    ]
    assert with_positives == predicted, (side, predicted, with_positives)
    print(f"square of side {side}: levels {predicted}")

# %% [markdown]
# A 64 × 64 square sits exactly on the upper end of level 1 (16..64), inside level 2 (32..128)
# and on the lower end of level 3 (64..256): the ranges are inclusive at both ends, so it trains
# three levels.
#
# ## Exercise 2: `sigma = 0.5`

# %%
root = make_shapes_dataset(
    Path(tempfile.mkdtemp()) / "shapes",
    num_train=10 if FAST else 40,
    num_val=1,
    seed=0,
    progress=False,
)
shapes = CocoInstances(root, "train")
totals = {0.2: 0, 0.5: 0}
for index in range(len(shapes)):
    _, target = shapes[index]
    for sigma in totals:
        for lt in targets_for(target["masks"], target["labels"], tiny, sigma=sigma):
            per_object = torch.bincount(lt.instance, minlength=len(target["masks"]))
            assert per_object.max() <= 9 if len(per_object) else True
            totals[sigma] += lt.num_positives
assert totals[0.5] >= totals[0.2]
print(
    f"positive cells over {len(shapes)} images: sigma 0.2 -> {totals[0.2]}, sigma 0.5 -> {totals[0.5]}"
)

# %% [markdown]
# Each object's region at σ = 0.5 contains its region at σ = 0.2 (same centre, larger half
# extents, same 3 × 3 clamp). The positive cells of an image are the *union* of its objects'
# regions, so they can only grow; overwriting changes who owns a cell, not whether it is
# positive. (Per object the count *can* drop, when a later object's larger region takes its cells.)
#
# ## Exercise 3: a contested cell

# %%
level = 1
grid = tiny.grids[level]  # the tiny preset's level 1 (sizes 16..64)
print(f"level {level}: S = {grid}, cells of 256 / {grid} = {256 / grid:.1f} px")
# centres of mass 2 px apart horizontally and 3 px vertically
first, second = square(100, 100, 40), square(103, 98, 40)
masks = torch.stack([first, second])
labels = torch.tensor([2, 3])
cx, cy = minisolo.targets.center_of_mass(masks)
cells = [(int(y / 256 * grid), int(x / 256 * grid)) for y, x in zip(cy, cx)]
assert cells[0] == cells[1], cells
lt = targets_for(masks, labels, tiny)[level]
i, j = cells[1]
assert lt.category[i, j] == 3
k = i * grid + j
assert lt.instance[lt.positive_index == k].item() == 1
print(
    f"centres of mass ({cx[0]:.1f}, {cy[0]:.1f}) and ({cx[1]:.1f}, {cy[1]:.1f}): "
    f"{abs(cx[1] - cx[0]):.0f} px apart horizontally, {abs(cy[1] - cy[0]):.0f} px vertically"
)
print(
    f"both centres fall in cell {cells[0]}; the cell's class is {lt.category[i, j].item()} (the second object)"
)

# %% [markdown]
# The first object does not disappear everywhere: cells of its region not covered by the
# second object's region remain its own. But when two objects of the same size share a centre
# cell, only one can be represented: a limit of SOLO (rare at $S = 40$).
#
# ## Exercise 4: centre of mass, overlapping ranges
#
# *Centre of mass.* Take an "L": a 60 × 10 bar along the bottom and a 10 × 60 bar along the left.
# The box centre lies in the empty inside corner, away from the object; the centre of mass is
# pulled towards the corner where the bars meet. It too falls just outside the L (an L has no
# pixel at its centre of mass), but less than half as far from the bars as the box centre: the
# cell below prints both distances. SOLO samples its positive cells around the centre of mass,
# so they sit on (or near) the object's pixels, where the features actually describe the
# object.

# %%
bottom_bar = torch.zeros(256, 256, dtype=torch.bool)
bottom_bar[150:160, 100:160] = True
left_bar = torch.zeros(256, 256, dtype=torch.bool)
left_bar[100:160, 100:110] = True
L = bottom_bar | left_bar
cx, cy = minisolo.targets.center_of_mass(L[None])
x1, y1, x2, y2 = minisolo.targets.masks_to_boxes(L[None])[0].tolist()
box_centre = ((x1 + x2) / 2, (y1 + y2) / 2)
print(f"centre of mass ({cx.item():.1f}, {cy.item():.1f}) vs box centre {box_centre}")
assert not L[int(box_centre[1]), int(box_centre[0])]  # the box centre is not on the object
assert not L[round(cy.item()), round(cx.item())]  # nor is the centre of mass


def distance_to(mask, x, y):
    """Distance from (x, y) to the nearest pixel of the mask (pixel (i, j) is the unit square
    centred on x = j, y = i, as the centre of mass counts it)."""
    rows, cols = mask.nonzero(as_tuple=True)
    dx = ((cols - x).abs() - 0.5).clamp(min=0)
    dy = ((rows - y).abs() - 0.5).clamp(min=0)
    return torch.sqrt(dx**2 + dy**2).min().item()


for name, (x, y) in [("centre of mass", (cx.item(), cy.item())), ("box centre", box_centre)]:
    print(
        f"{name:>14}: {distance_to(left_bar, x, y):.1f} px from the left bar, "
        f"{distance_to(bottom_bar, x, y):.1f} px from the bottom bar"
    )

# %% [markdown]
# *Overlapping ranges.* With disjoint ranges, an object of size 95 and one of size 97 would
# go to different levels and share no training signal; a size estimate near a border would be
# a coin flip. Overlap lets objects near a border train both levels, so both learn them.

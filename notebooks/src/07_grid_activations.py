# %% [markdown]
# # 07 · Grid activations: what does each SOLO cell predict?
#
# SOLO turns instance segmentation into two *per-cell* predictions. For every FPN level the image
# is divided into an $S \times S$ grid; cell $(i, j)$ predicts a **class score** (category
# branch, an $S \times S \times C$ map) and a **mask** (mask branch: output channel
# $k = i \cdot S + j$ of $S^2$). In this notebook we open a trained tiny SOLO and look at these
# activations cell by cell, first with static figures, then with an interactive explorer.
#
# **What you will learn**
#
# - how one image is covered by five grids of different sizes, and which cells of which level must predict each object;
# - how to read the category branch as one $S \times S$ heat map per class;
# - how to find the mask a cell predicts: channel $k = i \cdot S + j$, after a sigmoid; and how all $S^2$ channels, laid out as the grid, show the whole mask branch at once (the paper's visualisation);
# - how Decoupled SOLO replaces the $S^2$ channels by $S$ column maps $X_j$ and $S$ row maps $Y_i$, with mask $= \sigma(Y_i)\,\sigma(X_j)$;
# - why many neighbouring cells predict the same object, and how NMS turns the candidates into the final instances;
# - how to use `minisolo.widgets.GridExplorer` to click through the cells of any image.
#
# **Prerequisites:** notebooks 02 (targets) and 03 (the SOLO head) help; nothing is trained
# here: the notebook takes the package's trained tiny SOLO and Decoupled SOLO
# (`minisolo.pretrained`). About 20 minutes.

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

from torch.testing import assert_close

import minisolo
from minisolo import solo_targets, viz
from minisolo.data import CocoInstances
from minisolo.engine import make_transforms
from minisolo.model_cache import demo_data, describe, load_history
from minisolo.utils import is_fast_mode, pick_device, seed_everything
from minisolo.widgets import GridExplorer

FAST = is_fast_mode()  # MINISOLO_FAST=1 picks tiny sizes (the tests run every notebook so)
device = pick_device("auto")  # CUDA when a GPU is present, else the CPU
seed_everything(0)
plt.rcParams.update({"figure.dpi": 90, "font.size": 11, "axes.titlesize": 12})
print(
    f"minisolo {minisolo.__version__} | torch {torch.__version__} | device: {device} | FAST={FAST}"
)

# %% [markdown]
# ## 1. A trained tiny SOLO and some images
#
# `minisolo.pretrained("solo")` returns the package's trained tiny SOLO, in eval mode: the
# `tiny` preset trained with the recipe of `minisolo demo` on the demo's synthetic *shapes* data
# (circles, squares, triangles and stars on textured backgrounds, 192 px images with 1 to 4
# objects each, in COCO format; `minisolo.model_cache.demo_data()` is its folder). It is
# trained once, the first time any notebook asks for it (a progress bar shows the time left),
# and kept in `data/models/`; every later call loads it in a second. `describe` prints which
# model it is: its recipe, when it was trained and its mask AP on the val images, the images we
# look at below (the model has never seen them).
#
# In fast mode (`MINISOLO_FAST=1`, used by the tests) the cache holds stand-ins trained for a
# few iterations on a few images: the pictures are then those of an almost untrained model, but
# every step still runs.

# %%
model = minisolo.pretrained("solo", device=str(device))  # trained once, then loaded
print("this notebook shows:", describe(model.cache_info))
config = model.config
class_names = list(config.class_names)
print(
    f"{type(model).__name__}: classes {class_names}, grids S = {config.grids}, strides {config.strides}"
)

# %%
history = load_history(model.cache_info["folder"])
viz.plot_loss_curve(
    history,
    keys=["loss", "loss_cate", "loss_mask"],
    title=f"Training loss of the cached tiny SOLO (L = L_cate + {config.mask_loss_weight:g} L_mask)",
)

# %% [markdown]
# We pick the val image whose objects have the most *different* classes (the fewest objects
# among those): each object then lights up a different class map in section 3.

# %%
val = CocoInstances(demo_data(), "val", transforms=make_transforms(config, train=False))


def classes_of(n):
    """The labels of val image n, read from the annotations (without loading the image)."""
    return [val.cat_to_label[a["category_id"]] for a in val.coco.imgToAnns[val.ids[n]]]


ranked = sorted(range(len(val)), key=lambda n: (-len(set(classes_of(n))), len(classes_of(n))))
INDEX = ranked[0]
image, target = val[INDEX]  # a normalised [3, H, W] tensor and its ground truth
print(
    f"{len(val)} val images; val[{INDEX}]: image {tuple(image.shape)}, "
    f"{len(target['labels'])} objects:",
    [class_names[c] for c in target["labels"]],
)
with torch.no_grad():
    outputs = model(image[None].to(device))
outputs = {key: [t.cpu() for t in value] for key, value in outputs.items()}
for level, (cat, mask) in enumerate(zip(outputs["category"], outputs["mask"])):
    print(f"level {level}: category {tuple(cat.shape)}   mask {tuple(mask.shape)}")

# %% [markdown]
# Read the shapes: level $l$ has a category tensor `[1, C, S, S]` (one score per class per cell)
# and a mask tensor `[1, S², h, w]`: one full-image mask per cell, at a quarter (levels 0, 1),
# an eighth (level 2) or a sixteenth (levels 3, 4) of the input size.

# %% [markdown]
# ## 2. Five grids over one image: which cell must predict what
#
# During training `solo_targets` decides, per level, which cells are **positive** for which
# object: an object goes to the levels whose box-size range contains $\sqrt{wh}$ of its box,
# and there the cells of a small region around its centre of mass (at most 3 × 3 cells) must
# predict its class and its mask. Below, each positive cell is filled with its object's colour
# and shows the object's number; the outlines mark the objects that belong to that level.

# %%
viz.plot_level_assignment(image, target["masks"], target["labels"], config, class_names)

# %%
level_targets = solo_targets(
    target["masks"],
    target["labels"],
    num_classes=config.num_classes,
    grids=config.grids,
    scale_ranges=config.scale_ranges,
    strides=config.strides,
    sigma=config.sigma,
)
for level, lt in enumerate(level_targets):
    S = config.grids[level]
    cells = [(int(k) // S, int(k) % S) for k in lt.positive_index]
    print(
        f"level {level} (S={S:2d}): {lt.num_positives:2d} positive cells",
        cells[:6],
        "..." if len(cells) > 6 else "",
    )
# the level with most positive cells is the one we look at closely
LEVEL = max(range(len(config.grids)), key=lambda l: level_targets[l].num_positives)
S = config.grids[LEVEL]
print(f"\nwe look at level {LEVEL}: S = {S}")

# %% [markdown]
# ## 3. The category branch: one heat map per class
#
# The category branch outputs logits `[C, S, S]`; after a sigmoid, entry $(c, i, j)$ is the
# probability that cell $(i, j)$ holds the centre of an object of class $c$. A trained model
# lights up the positive cells of each object in its class's map, and stays dark elsewhere.

# %%
category_probs = torch.sigmoid(outputs["category"][LEVEL][0])  # [C, S, S]
viz.plot_category_heatmap(
    category_probs,
    class_names,
    title=f"Level {LEVEL}: category probabilities, one S x S = {S} x {S} map per class",
)

# %% [markdown]
# What to look for: bright cells where an object of that class has its centre (compare with
# the positive cells of the same level above), often a blob of several cells rather than a
# single cell, because neighbouring cells see almost the same features. Each object lights up
# the map of *its* class brightest; the map of a similar class can light up more weakly at the
# same cells (in the committed run the circle map reaches 0.41 on the square, whose own map
# reaches 0.57): such a second, lower-scored class is what sometimes survives NMS as a copy
# of the object (section 8). An object that belongs to other levels (by its size) is
# predicted there, so expect it to be dimmer here. The titles give each map's highest score
# and its cell.

# %% [markdown]
# ## 4. The mask branch: channel $k = i \cdot S + j$
#
# Cell $(i, j)$ owns mask channel $k = i \cdot S + j$ (row-major order, like `flatten`). Its mask
# probability is the sigmoid of that channel. Let us derive it for the centre cell of the largest
# object of our level, the cell its centre of mass falls into: $i = \lfloor c_y / H \cdot S \rfloor$,
# $j = \lfloor c_x / W \cdot S \rfloor$.

# %%
H, W = image.shape[-2:]
lt = level_targets[LEVEL]
objects = lt.instance.unique()
areas = target["masks"][objects].sum(dim=(1, 2))
obj = int(objects[areas.argmax()])  # the largest object assigned to this level
ys, xs = torch.nonzero(target["masks"][obj], as_tuple=True)
cy, cx = ys.float().mean(), xs.float().mean()  # centre of mass
i, j = int(cy / H * S), int(cx / W * S)
k = i * S + j
print(
    f"object #{obj} ({class_names[target['labels'][obj]]}): centre of mass ({cx:.1f}, {cy:.1f}) px"
)
print(f"-> cell (i, j) = ({i}, {j}) on the {S} x {S} grid -> mask channel k = {i}*{S} + {j} = {k}")
print("is that cell positive?", k in lt.positive_index.tolist())

mask_probs = torch.sigmoid(outputs["mask"][LEVEL][0])  # [S*S, h, w]
cell_mask = mask_probs[k]
fig = viz.SoloFigure(figsize=(13, 4.4), layout="constrained", photo=True)
axes = fig.subplots(1, 3)
viz.draw_grid(
    axes[0], image, S, positives=lt, highlight=(i, j), title=f"cell ({i}, {j}) on level {LEVEL}"
)
axes[1].imshow(cell_mask, cmap=viz.PROB_CMAP, vmin=0, vmax=1)
axes[1].set_title(f"sigmoid(mask[{k}]), {tuple(cell_mask.shape)}")
axes[2].imshow(viz.as_image(image))
axes[2].imshow(cell_mask, cmap=viz.PROB_CMAP, vmin=0, vmax=1, alpha=0.6, extent=(0, W, H, 0))
axes[2].set_title("over the image")
for ax in axes[1:]:
    ax.set_xticks([])
    ax.set_yticks([])
fig

# %% [markdown]
# Now all $S^2$ channels at once. Put channel $k$ at row $k /\!/ S$, column $k \bmod S$ and the
# mask branch becomes a picture of the grid: each tile is the mask that cell would output
# (the SOLO paper visualises its mask branch this way). Tiles of positive cells (outlined)
# should show *their* object; compare tiles of distant rows and columns to see that each
# channel has learned to look *around its own cell*: that is the location-to-channel mapping
# SOLO is built on, and only possible because the mask branch sees the coordinates
# (CoordConv). Only positive cells get a mask loss, so channels of cells where objects of this
# level are rarely centred (along the border, say) are hardly trained, and what they show does
# not matter as long as their category score stays low.

# %%
viz.plot_mask_channels(
    mask_probs,
    S,
    highlight=[(int(p) // S, int(p) % S) for p in lt.positive_index],
    title=f"Level {LEVEL}: all {S}x{S} mask channels (outlined: positive cells)",
)

# %% [markdown]
# ## 5. Decoupled SOLO: $S$ column maps times $S$ row maps
#
# $S^2$ output channels get expensive for large $S$ (the paper's $S = 40$ level needs 1600
# masks of $200 \times 304$ pixels). Decoupled SOLO predicts instead $S$ maps $X_j$ (one per grid
# column) and $S$ maps $Y_i$ (one per grid row) and forms the mask of cell $(i, j)$ as
# $\sigma(Y_i) \cdot \sigma(X_j)$. Why can that work? $X_j$ only has to show *every object whose
# centre lies in column $j$*, $Y_i$ every object centred in row $i$: their product keeps the
# object centred in both. Let us build these ideal maps from the ground truth.

# %%
centres = [
    (int(m.nonzero()[:, 0].float().mean() / H * S), int(m.nonzero()[:, 1].float().mean() / W * S))
    for m in target["masks"]
]
ideal_x = torch.stack(
    [target["masks"][[n for n, c in enumerate(centres) if c[1] == col]].any(0) for col in range(S)]
)
ideal_y = torch.stack(
    [target["masks"][[n for n, c in enumerate(centres) if c[0] == row]].any(0) for row in range(S)]
)
print(f"object centres (i, j) on the {S} x {S} grid:", centres)
viz.plot_decoupled(ideal_x.float(), ideal_y.float(), i, j, from_logits=False, image=image)

# %% [markdown]
# The package's trained tiny Decoupled SOLO (`minisolo.pretrained("decoupled_solo")`) has the
# same backbone, grids and category branch, trained with the same recipe on the same data; only
# its mask branch outputs `mask_x` and `mask_y`, $S$ maps each per level.

# %%
decoupled = minisolo.pretrained("decoupled_solo", device=str(device))
print("this section shows:", describe(decoupled.cache_info))
with torch.no_grad():
    d_out = decoupled(image[None].to(device))
d_out = {key: [t.cpu() for t in value] for key, value in d_out.items()}
print(
    "mask_x",
    tuple(d_out["mask_x"][LEVEL].shape),
    "mask_y",
    tuple(d_out["mask_y"][LEVEL].shape),
    f"-> {2 * S} maps instead of {S * S}",
)
by_hand = torch.sigmoid(d_out["mask_y"][LEVEL][0, i]) * torch.sigmoid(d_out["mask_x"][LEVEL][0, j])
package = decoupled.head.cell_mask_probs(d_out, LEVEL, 0, torch.tensor([i]), torch.tensor([j]))[0]
assert_close(by_hand, package)
print("sigmoid(Y_i) * sigmoid(X_j) matches DecoupledSOLOHead.cell_mask_probs")

# %% [markdown]
# Its maps for our cell $(i, j)$, to compare with the ideal ones above: $X_j$ should show the
# objects centred in column $j$, $Y_i$ those centred in row $i$, and their product the object of
# the cell.

# %%
viz.plot_decoupled(d_out["mask_x"][LEVEL][0], d_out["mask_y"][LEVEL][0], i, j, image=image)

# %% [markdown]
# ## 6. Check: our derivation against the package
#
# `GridExplorer` (next section) shows, for a selected cell, exactly the mask our derivation
# gives. We check `channel_index` and the mask it displays against
# `torch.sigmoid(outputs["mask"][level][0, i * S + j])` for a few cells of every level, and
# against the head's own `cell_mask_probs`.

# %%
explorer = GridExplorer(model, (image, target), class_names=class_names)
generator = torch.Generator().manual_seed(0)
for level, S_l in enumerate(config.grids):
    for _ in range(3):
        i_l, j_l = torch.randint(S_l, (2,), generator=generator).tolist()
        k_l = i_l * S_l + j_l
        assert explorer.channel_index(level, i_l, j_l) == k_l
        shown = torch.from_numpy(explorer.select(level, i_l, j_l))
        assert_close(shown, torch.sigmoid(outputs["mask"][level][0, k_l]))
        assert_close(
            shown,
            model.head.cell_mask_probs(outputs, level, 0, torch.tensor([i_l]), torch.tensor([j_l]))[
                0
            ],
        )
        assert explorer.cell_owner(level, i_l, j_l) == (
            int(level_targets[level].instance[level_targets[level].positive_index == k_l][0])
            if k_l in level_targets[level].positive_index.tolist()
            else None
        )
assert_close(torch.from_numpy(explorer.select(LEVEL, i, j)), cell_mask)
print(f"all checks passed; one selection takes {explorer.last_update_seconds * 1000:.0f} ms")

# %% [markdown]
# ## 7. Explore: click through the grid
#
# `GridExplorer(model, (image, target))` runs the model once and caches its outputs. Pick an FPN
# level, then click a cell in the small grid (its colour is the cell's best category score; a
# digit marks a positive cell and names its object), or move the row/column sliders. You see
# the image with the cell, the level's category heat map, the cell's mask (channel
# $k = i \cdot S + j$) alone and over the image, its class scores and, with a target, whether the
# cell is positive. The second tab shows the candidates before NMS and the final instances.
#
# What to look for:
#
# - **positive cells** (digits) should have the brightest category scores and a mask of *their* object;
# - their **neighbours** often predict the same mask with a lower score: the duplicates NMS removes;
# - an object's mask should be best on **its level** (by size): compare the levels;
# - cells far from any object: low scores, and masks that nobody uses (they get no mask loss);
# - on the **coarse levels** (3 and 4) one cell covers a large part of the image: small objects there
#   would share cells, which is why they are assigned to the fine levels.

# %%
explorer.select(LEVEL, i, j)  # the explorer of the check above, on the centre cell of object #obj
explorer

# %% [markdown]
# Another image (the runner-up of our choice in section 1), starting on the cell with the
# highest score of any level. The same Python API drives the widget from code:
# `explorer.select(level, i, j)` returns the displayed mask, `explorer.selected` tells you the
# current cell.

# %%
explorer_1 = GridExplorer(model, val[ranked[1]], class_names=class_names)
print(f"val[{ranked[1]}] starts at (level, i, j) =", explorer_1.selected)
explorer_1

# %% [markdown]
# The same explorer works for Decoupled SOLO: the cell's mask is then $\sigma(Y_i)\,\sigma(X_j)$,
# and the mask view shows the two factors too. Here is the cached Decoupled SOLO on our image,
# on the same cell as the first explorer.

# %%
explorer_d = GridExplorer(
    decoupled, (image, target), class_names=class_names, level=LEVEL, cell=(i, j)
)
assert_close(torch.from_numpy(explorer_d.displayed_mask), by_hand)
print(f"{decoupled.cache_info['name']}, val[{INDEX}], (level, i, j) =", explorer_d.selected)
explorer_d

# %% [markdown]
# ## 8. From cells to instances: before and after NMS
#
# Every cell whose score passes the threshold (after the 2 × 2 "points NMS" on the heat map) and
# whose binary mask is large enough becomes a **candidate**, scored by its class probability times
# its mask's mean probability ("maskness"). One object typically yields several candidates from
# neighbouring cells and from two levels. Matrix NMS then decays the scores of candidates that
# overlap a higher-scored one of the same class.

# %%
candidates = model.candidates(outputs, 0)
final = model.post_process(outputs, 0, tuple(image.shape[-2:]), tuple(image.shape[-2:]))
print(
    f"{len(candidates['scores'])} candidates before NMS, from levels",
    sorted(set(candidates["levels"].tolist())),
    f"-> {int((final['scores'] >= 0.3).sum())} instances with score >= 0.3",
)
# instances scoring >= 0.3; at least the three best ones (fast mode's stand-in scores low)
threshold = min(0.3, float(final["scores"][:3].min())) if len(final["scores"]) else 0.3
keep = final["scores"] >= threshold
viz.compare_prediction(
    image,
    target["masks"],
    target["labels"],
    final["masks"][keep],
    final["labels"][keep],
    final["scores"][keep],
    class_names,
    title=f"Ground truth and the predictions after Matrix NMS (score >= {threshold:.2f})",
)

# %% [markdown]
# A prediction takes the colour of the ground-truth object of its class that it overlaps with
# IoU $\geq$ 0.5 (the title counts them); one in a colour of its own matches no object. Matrix NMS only lets masks of the *same*
# class suppress each other: a copy of an object with another class survives it, so look out
# for those. The explorer's second tab shows the same for each image: the contours of the top
# candidates, with a marker on every firing cell, next to the final instances.

# %% [markdown]
# ## Exercises
#
# 1. **From a pixel to a channel (code).** Write `cell_of_pixel(x, y, H, W, S)` returning
#    `(i, j, k)` for the cell that contains pixel $(x, y)$. For every object of `target` and
#    every level where it has positive cells, check with an `assert` that the cell of its centre
#    of mass is one of those positive cells (`level_targets[level].positive_index`).
# 2. **All decoupled masks at once (code).** For the cached `decoupled` model, build the
#    tensor of all $S^2$ masks of level `LEVEL` with broadcasting (no loop), ordered so that
#    entry $k = i \cdot S + j$ is the mask of cell $(i, j)$, and `assert_close` it against
#    `decoupled.head.cell_mask_probs` for all cells. How many bytes does it take compared with
#    `d_out["mask_x"][LEVEL]` and `d_out["mask_y"][LEVEL]`?
# 3. **The best cell for each object (code).** For each object of a level, compute the Dice
#    coefficient between its ground-truth mask (at mask resolution, `level_targets[LEVEL].masks`)
#    and the predicted mask of each of its positive cells. Which cell is best? Is it also the
#    cell with the highest category score? Check your Dice against `minisolo.dice_loss`.
# 4. **Duplicates (code, then explore).** Among the `candidates` of section 8 (before NMS),
#    find the pair of the same class whose binary masks overlap most (`minisolo.mask_iou`) and
#    print its IoU. From which levels and cells do the two come, and with which scores? Select
#    both cells in the explorer. How much does Matrix NMS (`minisolo.matrix_nms`, called as in
#    `model.post_process`) decay the lower score, and what would the output contain without NMS?
# 5. **Think.** The paper's level 0 (masks at stride 4) has
#    $S = 40$ on an $800 \times 1216$ input. How many mask values does that level output for one
#    image with vanilla SOLO, and with Decoupled SOLO?

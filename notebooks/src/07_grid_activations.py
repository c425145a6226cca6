"""Notebook 07: grid activations, or what each SOLO grid cell predicts (with the explorer)."""

from _nbgen import code, md, setup_cell

NAME = "07_grid_activations"

EXTRA_IMPORTS = """
import os
import shutil

from torch.testing import assert_close

from minisolo import DecoupledSOLO, preset, solo_targets, viz
from minisolo.checkpoint import load as load_state
from minisolo.data import CocoInstances, make_shapes_dataset
from minisolo.engine import load_checkpoint, make_transforms, train
from minisolo.widgets import GridExplorer
"""

INTRO = md(
    r"""
# 07 · Grid activations: what does each SOLO cell predict?

SOLO turns instance segmentation into two *per-cell* predictions. For every FPN level the image
is divided into an $S \times S$ grid; cell $(i, j)$ predicts a **class score** (category
branch, an $S \times S \times C$ map) and a **mask** (mask branch: output channel
$k = i \cdot S + j$ of $S^2$). In this notebook we open a trained tiny SOLO and look at these
activations cell by cell, first with static figures, then with an interactive explorer.

**What you will learn**

- how one image is covered by five grids of different sizes, and which cells of which level must predict each object;
- how to read the category branch as one $S \times S$ heat map per class;
- how to find the mask a cell predicts: channel $k = i \cdot S + j$, after a sigmoid; and how all $S^2$ channels, laid out as the grid, show the whole mask branch at once (the paper's visualisation);
- how Decoupled SOLO replaces the $S^2$ channels by $S$ column maps $X_j$ and $S$ row maps $Y_i$, with mask $= \sigma(Y_i)\,\sigma(X_j)$;
- why many neighbouring cells predict the same object, and how NMS turns the candidates into the final instances;
- how to use `minisolo.widgets.GridExplorer` to click through the cells of any image.

**Prerequisites:** notebooks 02 (targets) and 03 (the SOLO head) help; training is done for
you here. About 30 minutes. Set `MINISOLO_CHECKPOINT=path/to/last.pt` (for instance the
`minisolo demo` checkpoint) to look at a better-trained model.
"""
)

MODEL = [
    md(
        r"""
## 1. A trained tiny model and some images

We need a model that has learned something. If the environment variable `MINISOLO_CHECKPOINT`
names a checkpoint we load it; otherwise we generate the synthetic *shapes* data set (circles,
squares, triangles and stars on textured backgrounds, written in COCO format) and train the
`tiny` preset with `minisolo.engine.train` for a few minutes. The trained model is kept in
`runs/nb07/` (with its loss history) and reused the next time you run the notebook: delete
that folder to train again.

A few minutes of CPU training (300 iterations) teach the model *where* to look long before
they teach it clean masks and classes: expect blurry blobs and low scores below, which is
exactly what makes the structure of the outputs visible. With a longer-trained checkpoint
(`minisolo demo`, then `MINISOLO_CHECKPOINT=demo_out/run/last.pt`) the same cells show sharp
masks and confident classes. In fast mode (`MINISOLO_FAST=1`, used by the tests) the training
is only a few iterations: the pictures are then those of an almost untrained model, but every
step still runs.
"""
    ),
    code(
        r"""
# The repository root (for data/ and runs/); the current folder when run elsewhere.
ROOT = next((p for p in [Path.cwd(), *Path.cwd().parents] if (p / "minisolo" / "__init__.py").is_file()),
            Path.cwd())
SUFFIX = "_fast" if FAST else ""
DATA = ROOT / "data" / f"shapes_nb07{SUFFIX}"
RUN = ROOT / "runs" / f"nb07{SUFFIX}"
NUM_TRAIN, NUM_VAL = (48, 6) if FAST else (600, 12)
TRAIN_ITERS = 8 if FAST else 300  # 2-3 minutes on a 2-core CPU, seconds on a GPU

if not (DATA / "annotations" / "instances_val.json").is_file():
    make_shapes_dataset(DATA, num_train=NUM_TRAIN, num_val=NUM_VAL, image_size=256, seed=0, progress=False)

checkpoint = os.environ.get("MINISOLO_CHECKPOINT")
cached = RUN / "last.pt"
if checkpoint and Path(checkpoint).is_file():
    path = Path(checkpoint)
    print(f"using MINISOLO_CHECKPOINT={checkpoint}")
elif cached.is_file() and load_state(cached)["iteration"] == TRAIN_ITERS:
    path = cached
    print(f"using the model this notebook trained before: {cached.relative_to(ROOT)}")
else:
    shutil.rmtree(RUN, ignore_errors=True)
    start = time.perf_counter()
    train(preset("tiny"), DATA, RUN, max_iters=TRAIN_ITERS, batch_size=8, device=str(device),
          progress=False, evaluate_at_end=False, log_every=10)
    path = cached
    print(f"trained the tiny SOLO for {TRAIN_ITERS} iterations (batch 8) in {time.perf_counter() - start:.0f} s")
model = load_checkpoint(path, device)
history = load_state(path).get("history", [])
model = model.to(device).eval()
config = model.config
class_names = list(config.class_names)
print(f"{type(model).__name__}: classes {class_names}, grids S = {config.grids}, strides {config.strides}")
"""
    ),
    code(
        r"""
if history:
    display(viz.plot_loss_curve(history, title="Training loss of the tiny SOLO (L = L_cate + 3 L_mask)"))
"""
    ),
    code(
        r"""
val = CocoInstances(DATA, "val", transforms=make_transforms(config, train=False))
image, target = val[0]  # a normalised [3, H, W] tensor and its ground truth
print(f"{len(val)} validation images; image {tuple(image.shape)}, {len(target['labels'])} objects:",
      [class_names[c] for c in target["labels"]])
with torch.no_grad():
    outputs = model(image[None].to(device))
outputs = {key: [t.cpu() for t in value] for key, value in outputs.items()}
for level, (cat, mask) in enumerate(zip(outputs["category"], outputs["mask"])):
    print(f"level {level}: category {tuple(cat.shape)}   mask {tuple(mask.shape)}")
"""
    ),
    md(
        r"""
Read the shapes: level $l$ has a category tensor `[1, C, S, S]` (one score per class per cell)
and a mask tensor `[1, S², h, w]`: one full-image mask per cell, at a quarter (levels 0, 1),
an eighth (level 2) or a sixteenth (levels 3, 4) of the input size.
"""
    ),
]

GRIDS = [
    md(
        r"""
## 2. Five grids over one image: which cell must predict what

During training `solo_targets` decides, per level, which cells are **positive** for which
object: an object goes to the levels whose box-size range contains $\sqrt{wh}$ of its box,
and there the cells of a small region around its centre of mass (at most 3 × 3 cells) must
predict its class and its mask. Below, each positive cell is filled with its object's colour
and shows the object's number; the outlines mark the objects that belong to that level.
"""
    ),
    code(
        r"""
viz.plot_level_assignment(image, target["masks"], target["labels"], config, class_names)
"""
    ),
    code(
        r"""
level_targets = solo_targets(target["masks"], target["labels"], num_classes=config.num_classes,
                             grids=config.grids, scale_ranges=config.scale_ranges, strides=config.strides,
                             sigma=config.sigma)
for level, lt in enumerate(level_targets):
    S = config.grids[level]
    cells = [(int(k) // S, int(k) % S) for k in lt.positive_index]
    print(f"level {level} (S={S:2d}): {lt.num_positives:2d} positive cells", cells[:6], "..." if len(cells) > 6 else "")
# the level with most positive cells is the one we look at closely
LEVEL = max(range(len(config.grids)), key=lambda l: level_targets[l].num_positives)
S = config.grids[LEVEL]
print(f"\nwe look at level {LEVEL}: S = {S}")
"""
    ),
]

CATEGORY = [
    md(
        r"""
## 3. The category branch: one heat map per class

The category branch outputs logits `[C, S, S]`; after a sigmoid, entry $(c, i, j)$ is the
probability that cell $(i, j)$ holds the centre of an object of class $c$. A trained model
lights up the positive cells of each object in its class's map, and stays dark elsewhere.
"""
    ),
    code(
        r"""
category_probs = torch.sigmoid(outputs["category"][LEVEL][0])  # [C, S, S]
viz.plot_category_heatmap(category_probs, class_names,
                          title=f"Level {LEVEL}: category probabilities, one S x S = {S} x {S} map per class")
"""
    ),
    md(
        r"""
What to look for: bright cells where an object of that class has its centre (compare with
the positive cells of the same level above), usually a blob of several cells rather than a
single cell, because neighbouring cells see almost the same features. A briefly trained model
first learns *where* objects are: its maps are brighter around the objects' centres and dark
near the border (where no object is ever centred), but all classes look alike and no score
is high yet. Telling the classes apart comes later in training.
"""
    ),
]

MASKS = [
    md(
        r"""
## 4. The mask branch: channel $k = i \cdot S + j$

Cell $(i, j)$ owns mask channel $k = i \cdot S + j$ (row-major order, like `flatten`). Its mask
probability is the sigmoid of that channel. Let us derive it for the centre cell of the largest
object of our level, the cell its centre of mass falls into: $i = \lfloor c_y / H \cdot S \rfloor$,
$j = \lfloor c_x / W \cdot S \rfloor$.
"""
    ),
    code(
        r"""
H, W = image.shape[-2:]
lt = level_targets[LEVEL]
objects = lt.instance.unique()
areas = target["masks"][objects].sum(dim=(1, 2))
obj = int(objects[areas.argmax()])  # the largest object assigned to this level
ys, xs = torch.nonzero(target["masks"][obj], as_tuple=True)
cy, cx = ys.float().mean(), xs.float().mean()  # centre of mass
i, j = int(cy / H * S), int(cx / W * S)
k = i * S + j
print(f"object #{obj} ({class_names[target['labels'][obj]]}): centre of mass ({cx:.1f}, {cy:.1f}) px")
print(f"-> cell (i, j) = ({i}, {j}) on the {S} x {S} grid -> mask channel k = {i}*{S} + {j} = {k}")
print("is that cell positive?", k in lt.positive_index.tolist())

mask_probs = torch.sigmoid(outputs["mask"][LEVEL][0])  # [S*S, h, w]
cell_mask = mask_probs[k]
fig = viz.SoloFigure(figsize=(13, 4.4), layout="constrained", photo=True)
axes = fig.subplots(1, 3)
viz.draw_grid(axes[0], image, S, positives=lt, highlight=(i, j), title=f"cell ({i}, {j}) on level {LEVEL}")
axes[1].imshow(cell_mask, cmap=viz.PROB_CMAP, vmin=0, vmax=1)
axes[1].set_title(f"sigmoid(mask[{k}]), {tuple(cell_mask.shape)}")
axes[2].imshow(viz.as_image(image))
axes[2].imshow(cell_mask, cmap=viz.PROB_CMAP, vmin=0, vmax=1, alpha=0.6, extent=(0, W, H, 0))
axes[2].set_title("over the image")
for ax in axes[1:]:
    ax.set_xticks([]); ax.set_yticks([])
fig
"""
    ),
    md(
        r"""
Now all $S^2$ channels at once. Put channel $k$ at row $k /\!/ S$, column $k \bmod S$ and the
mask branch becomes a picture of the grid: each tile is the mask that cell would output
(the SOLO paper visualises its mask branch this way). Look at where the bright blob sits
inside each tile: it moves with the tile's position, to the left in the left columns, down in
the lower rows. Each channel has learned to look *around its own cell*: that is the
location-to-channel mapping SOLO is built on, and only possible because the mask branch sees
the coordinates (CoordConv). Tiles of positive cells (outlined) should show their object;
tiles along the border stay flat at about 0.5: objects are rarely centred that close to the
border, so those channels have hardly had a mask loss yet and keep their initial output.
"""
    ),
    code(
        r"""
viz.plot_mask_channels(mask_probs, S, highlight=[(int(p) // S, int(p) % S) for p in lt.positive_index],
                       title=f"Level {LEVEL}: all {S}x{S} mask channels (outlined: positive cells)")
"""
    ),
]

DECOUPLED = [
    md(
        r"""
## 5. Decoupled SOLO: $S$ column maps times $S$ row maps

$S^2$ output channels get expensive for large $S$ (the paper's $S = 40$ level needs 1600
masks of $200 \times 336$ pixels). Decoupled SOLO predicts instead $S$ maps $X_j$ (one per grid
column) and $S$ maps $Y_i$ (one per grid row) and forms the mask of cell $(i, j)$ as
$\sigma(Y_i) \cdot \sigma(X_j)$. Why can that work? $X_j$ only has to show *every object whose
centre lies in column $j$*, $Y_i$ every object centred in row $i$: their product keeps the
object centred in both. Let us build these ideal maps from the ground truth.
"""
    ),
    code(
        r"""
centres = [(int(m.nonzero()[:, 0].float().mean() / H * S), int(m.nonzero()[:, 1].float().mean() / W * S))
           for m in target["masks"]]
ideal_x = torch.stack([target["masks"][[n for n, c in enumerate(centres) if c[1] == col]].any(0) for col in range(S)])
ideal_y = torch.stack([target["masks"][[n for n, c in enumerate(centres) if c[0] == row]].any(0) for row in range(S)])
print(f"object centres (i, j) on the {S} x {S} grid:", centres)
viz.plot_decoupled(ideal_x.float(), ideal_y.float(), i, j, from_logits=False, image=image)
"""
    ),
    code(
        r"""
decoupled = DecoupledSOLO(config).eval()  # untrained: we only check the mechanics here
with torch.no_grad():
    d_out = decoupled(image[None])
print("mask_x", tuple(d_out["mask_x"][LEVEL].shape), "mask_y", tuple(d_out["mask_y"][LEVEL].shape),
      f"-> {2 * S} maps instead of {S * S}")
by_hand = torch.sigmoid(d_out["mask_y"][LEVEL][0, i]) * torch.sigmoid(d_out["mask_x"][LEVEL][0, j])
package = decoupled.head.cell_mask_probs(d_out, LEVEL, 0, torch.tensor([i]), torch.tensor([j]))[0]
assert_close(by_hand, package)
print("sigmoid(Y_i) * sigmoid(X_j) matches DecoupledSOLOHead.cell_mask_probs")
"""
    ),
]

CHECK = [
    md(
        r"""
## 6. Check: our derivation against the package

`GridExplorer` (next section) shows, for a selected cell, exactly the mask our derivation
gives. We check `channel_index` and the mask it displays against
`torch.sigmoid(outputs["mask"][level][0, i * S + j])` for a few cells of every level, and
against the head's own `cell_mask_probs`.
"""
    ),
    code(
        r"""
explorer = GridExplorer(model, (image, target), class_names=class_names)
generator = torch.Generator().manual_seed(0)
for level, S_l in enumerate(config.grids):
    for _ in range(3):
        i_l, j_l = torch.randint(S_l, (2,), generator=generator).tolist()
        k_l = i_l * S_l + j_l
        assert explorer.channel_index(level, i_l, j_l) == k_l
        shown = torch.from_numpy(explorer.select(level, i_l, j_l))
        assert_close(shown, torch.sigmoid(outputs["mask"][level][0, k_l]))
        assert_close(shown, model.head.cell_mask_probs(outputs, level, 0, torch.tensor([i_l]), torch.tensor([j_l]))[0])
        assert explorer.cell_owner(level, i_l, j_l) == (
            int(level_targets[level].instance[level_targets[level].positive_index == k_l][0])
            if k_l in level_targets[level].positive_index.tolist() else None)
assert_close(torch.from_numpy(explorer.select(LEVEL, i, j)), cell_mask)
print(f"all checks passed; one selection takes {explorer.last_update_seconds * 1000:.0f} ms")
"""
    ),
]

EXPLORE = [
    md(
        r"""
## 7. Explore: click through the grid

`GridExplorer(model, (image, target))` runs the model once and caches its outputs. Pick an FPN
level, then click a cell in the small grid (its colour is the cell's best category score; a
digit marks a positive cell and names its object), or move the row/column sliders. You see
the image with the cell, the level's category heat map, the cell's mask (channel
$k = i \cdot S + j$) alone and over the image, its class scores and, with a target, whether the
cell is positive. The second tab shows the candidates before NMS and the final instances.

What to look for:

- **positive cells** (digits) should have the brightest category scores and a mask of *their* object;
- their **neighbours** often predict the same mask with a lower score: the duplicates NMS removes;
- an object's mask is good on **its level** (by size) and poor on the others;
- cells far from any object: low scores, and masks that nobody uses (they get no mask loss);
- on the **coarse levels** (3 and 4) one cell covers a large part of the image: small objects there
  would share cells, which is why they are assigned to the fine levels.
"""
    ),
    code(
        r"""
explorer.select(LEVEL, i, j)  # the explorer of the check above, on the centre cell of object #obj
explorer
"""
    ),
    md(
        r"""
Two more images, starting on the cell with the highest score of any level. The same Python API
drives the widget from code: `explorer.select(level, i, j)` returns the displayed mask,
`explorer.selected` tells you the current cell.
"""
    ),
    code(
        r"""
explorer_1 = GridExplorer(model, val[1], class_names=class_names)
print("starts at (level, i, j) =", explorer_1.selected)
explorer_1
"""
    ),
    code(
        r"""
explorer_2 = GridExplorer(model, val[2], class_names=class_names)
explorer_2
"""
    ),
]

NMS = [
    md(
        r"""
## 8. From cells to instances: before and after NMS

Every cell whose score passes the threshold (after the 2 × 2 "points NMS" on the heat map) and
whose binary mask is large enough becomes a **candidate**, scored by its class probability times
its mask's mean probability ("maskness"). One object typically yields several candidates from
neighbouring cells and from two levels. Matrix NMS then decays the scores of candidates that
overlap a higher-scored one of the same class.
"""
    ),
    code(
        r"""
candidates = model.candidates(outputs, 0)
final = model.post_process(outputs, 0, tuple(image.shape[-2:]), tuple(image.shape[-2:]))
print(f"{len(candidates['scores'])} candidates before NMS, from levels",
      sorted(set(candidates["levels"].tolist())), f"-> {int((final['scores'] >= 0.3).sum())} instances with score >= 0.3")
# instances scoring >= 0.3; at least the three best ones (a briefly trained model scores low)
threshold = min(0.3, float(final["scores"][:3].min())) if len(final["scores"]) else 0.3
keep = final["scores"] >= threshold
viz.compare_prediction(image, target["masks"], target["labels"], final["masks"][keep], final["labels"][keep],
                       final["scores"][keep], class_names,
                       title=f"Ground truth and the predictions after Matrix NMS (score >= {threshold:.2f})")
"""
    ),
    md(
        r"""
After a few minutes of training these instances are still poor: the scores are low, and the
masks are the blurry position-driven blobs we saw in the mosaic, cut at 0.5. Note the copies
of one object with *different* classes: Matrix NMS only lets masks of the same class suppress
each other, so a model that cannot tell the classes apart yet keeps one copy per class. A
longer-trained checkpoint turns them into clean instances. The explorer's second tab shows the same for each
image: the contours of the top candidates, with a marker on every firing cell, next to the
final instances.
"""
    ),
]

EXERCISES = md(
    r"""
## Exercises

1. **From a pixel to a channel (code).** Write `cell_of_pixel(x, y, H, W, S)` returning
   `(i, j, k)` for the cell that contains pixel $(x, y)$. For every object of `target` and
   every level where it has positive cells, check with an `assert` that the cell of its centre
   of mass is one of those positive cells (`level_targets[level].positive_index`).
2. **All decoupled masks at once (code).** For the untrained `decoupled` model, build the
   tensor of all $S^2$ masks of level `LEVEL` with broadcasting (no loop), ordered so that
   entry $k = i \cdot S + j$ is the mask of cell $(i, j)$, and `assert_close` it against
   `decoupled.head.cell_mask_probs` for all cells. How many bytes does it take compared with
   `d_out["mask_x"][LEVEL]` and `d_out["mask_y"][LEVEL]`?
3. **The best cell for each object (code).** For each object of a level, compute the Dice
   coefficient between its ground-truth mask (at mask resolution, `level_targets[LEVEL].masks`)
   and the predicted mask of each of its positive cells. Which cell is best? Is it also the
   cell with the highest category score? Check your Dice against `minisolo.dice_loss`.
4. **Duplicates (explore).** In the explorer, find a cell with a high category score that is
   *not* positive. Which object does its mask show? What would happen to the output without
   NMS?
5. **Think.** The paper's level 0 (masks at stride 4) has
   $S = 40$ on an $800 \times 1216$ input. How many mask values does that level output for one
   image with vanilla SOLO, and with Decoupled SOLO?
"""
)

CELLS = [
    INTRO,
    setup_cell(EXTRA_IMPORTS),
    *MODEL,
    *GRIDS,
    *CATEGORY,
    *MASKS,
    *DECOUPLED,
    *CHECK,
    *EXPLORE,
    *NMS,
    EXERCISES,
]

# ---------------------------------------------------------------------------------------------
# Solutions
# ---------------------------------------------------------------------------------------------

SOLUTION_CELLS = [
    md(
        r"""
# 07 · Grid activations: solutions

Solutions to the exercises of `07_grid_activations.ipynb`. Every coding answer ends with an
`assert`, so this notebook doubles as a test (it runs in the test suite). The first cells
rebuild what the exercises use: the model (loaded from `runs/nb07/` when the main notebook
has trained it, else trained here), an image, its outputs and targets.
"""
    ),
    setup_cell(EXTRA_IMPORTS),
    MODEL[1],
    code(
        r"""
val = CocoInstances(DATA, "val", transforms=make_transforms(config, train=False))
image, target = val[0]
H, W = image.shape[-2:]
with torch.no_grad():
    outputs = model(image[None].to(device))
outputs = {key: [t.cpu() for t in value] for key, value in outputs.items()}
level_targets = solo_targets(target["masks"], target["labels"], num_classes=config.num_classes,
                             grids=config.grids, scale_ranges=config.scale_ranges, strides=config.strides,
                             sigma=config.sigma)
LEVEL = max(range(len(config.grids)), key=lambda l: level_targets[l].num_positives)
S = config.grids[LEVEL]
decoupled = DecoupledSOLO(config).eval()
with torch.no_grad():
    d_out = decoupled(image[None])
print(f"level {LEVEL}: S = {S}, {level_targets[LEVEL].num_positives} positive cells")
"""
    ),
    md(
        r"""
## Exercise 1: from a pixel to a channel

The grid splits the *padded input* into $S$ equal rows and columns: pixel $(x, y)$ lies in row
$\lfloor y / H \cdot S \rfloor$ and column $\lfloor x / W \cdot S \rfloor$. `solo_targets` uses the
same formula for the centre cell $(i_0, j_0)$ and always makes it positive (the centre region
is clamped around it), unless a later object overwrites it.
"""
    ),
    code(
        r"""
def cell_of_pixel(x, y, H, W, S):
    i = min(int(y / H * S), S - 1)
    j = min(int(x / W * S), S - 1)
    return i, j, i * S + j


checked = 0
for level, lt in enumerate(level_targets):
    S_l = config.grids[level]
    for obj in lt.instance.unique().tolist():
        ys, xs = torch.nonzero(target["masks"][obj], as_tuple=True)
        i0, j0, k0 = cell_of_pixel(xs.float().mean().item(), ys.float().mean().item(), H, W, S_l)
        owner_of_k0 = lt.instance[lt.positive_index == k0]
        # the centre cell is positive; it belongs to this object unless a later one took it over
        assert k0 in lt.positive_index.tolist(), (level, obj, (i0, j0))
        assert int(owner_of_k0) == obj or int(owner_of_k0) > obj
        checked += 1
assert cell_of_pixel(0, 0, 256, 256, 8) == (0, 0, 0) and cell_of_pixel(255, 255, 256, 256, 8) == (7, 7, 63)
print(f"the centre cell of {checked} (object, level) pairs is positive")
"""
    ),
    md(
        r"""
## Exercise 2: all decoupled masks at once

`Y[:, None] * X[None, :]` broadcasts `[S, 1, h, w] * [1, S, h, w]` to `[S, S, h, w]`: entry
`[i, j]` is $\sigma(Y_i)\sigma(X_j)$. Flattening the first two dimensions in row-major order puts
cell $(i, j)$ at $k = i \cdot S + j$.
"""
    ),
    code(
        r"""
X = torch.sigmoid(d_out["mask_x"][LEVEL][0])  # [S, h, w], one per column j
Y = torch.sigmoid(d_out["mask_y"][LEVEL][0])  # [S, h, w], one per row i
all_masks = (Y[:, None] * X[None, :]).flatten(0, 1)  # [S*S, h, w]
rows = torch.arange(S).repeat_interleave(S)  # i of k = 0, 1, ..., S*S-1
cols = torch.arange(S).repeat(S)  # j of k
assert_close(all_masks, decoupled.head.cell_mask_probs(d_out, LEVEL, 0, rows, cols))
full_bytes = all_masks.numel() * all_masks.element_size()
xy_bytes = (X.numel() + Y.numel()) * X.element_size()
print(f"S*S masks: {full_bytes / 1e6:.2f} MB; X and Y: {xy_bytes / 1e6:.3f} MB (x{full_bytes / xy_bytes:.0f} = S/2)")
assert full_bytes == xy_bytes * S // 2
"""
    ),
    md(
        r"""
## Exercise 3: the best cell for each object

Dice $= 2\sum pq / (\sum p^2 + \sum q^2)$, and `minisolo.dice_loss` returns
$1 - 2\sum pq / (\sum p^2 + 0.001 + \sum q^2 + 0.001)$ per mask. With a trained model the best
cell is usually the centre cell or its neighbour towards the object's bulk; the cell with the
highest class score is often, but not always, the same one: that is why SOLO rescales the
class score by the mask's mean probability ("maskness") before NMS.
"""
    ),
    code(
        r"""
lt = level_targets[LEVEL]
probs = model.head.cell_mask_probs(outputs, LEVEL, 0, lt.positive_index // S, lt.positive_index % S)
gt = lt.masks.float()
dice = 2 * (probs * gt).sum((1, 2)) / ((probs**2).sum((1, 2)) + (gt**2).sum((1, 2)))
assert_close(1 - dice, minisolo.dice_loss(probs, gt), atol=1e-3, rtol=1e-3)
scores = torch.sigmoid(outputs["category"][LEVEL][0]).flatten(1)  # [C, S*S]
for obj in lt.instance.unique().tolist():
    mine = (lt.instance == obj).nonzero().squeeze(1)
    cells = lt.positive_index[mine]
    best = cells[dice[mine].argmax()]
    label = int(target["labels"][obj])
    top = cells[scores[label, cells].argmax()]
    print(f"object #{obj} ({class_names[label]}): {len(cells)} positive cells; best Dice {dice[mine].max():.2f} "
          f"at cell {divmod(int(best), S)}; highest '{class_names[label]}' score at {divmod(int(top), S)}")
    assert best in cells and 0 <= dice[mine].max() <= 1
"""
    ),
    md(
        r"""
## Exercise 4: duplicates

A negative cell next to a positive one sees nearly the same features, so it predicts nearly
the same class score and the same mask. Without NMS every such cell would add one more copy of
the object (look at the explorer's "before NMS" tab: several markers per object). Points NMS
removes cells that are not a local maximum of the heat map, Matrix NMS decays the scores of
the remaining overlapping masks. Found programmatically:
"""
    ),
    code(
        r"""
heat = torch.sigmoid(outputs["category"][LEVEL][0]).amax(0)  # [S, S]
negative = torch.ones(S * S, dtype=torch.bool)
negative[lt.positive_index] = False
k_dup = int(torch.where(negative, heat.flatten(), torch.tensor(-1.0)).argmax())
i_dup, j_dup = divmod(k_dup, S)
mask_dup = torch.sigmoid(outputs["mask"][LEVEL][0, k_dup]) > 0.5
ious = [(mask_dup & m).sum() / (mask_dup | m).sum().clamp(min=1) for m in lt.masks]
print(f"highest-scoring negative cell: ({i_dup}, {j_dup}), score {heat[i_dup, j_dup]:.2f}; "
      f"IoU of its mask with the positive cells' targets: max {max(ious, default=torch.tensor(0.)):.2f}")
"""
    ),
    md(
        r"""
## Exercise 5: how many mask values?

Level 0 of the paper: input $800 \times 1216$, masks at stride 4: $200 \times 304$ pixels.
Vanilla SOLO outputs $S^2 = 1600$ such maps, Decoupled SOLO $2S = 80$.
"""
    ),
    code(
        r"""
h, w = 800 // 4, 1216 // 4
vanilla, decoupled_values = 40**2 * h * w, 2 * 40 * h * w
print(f"vanilla: {vanilla / 1e6:.1f} M values ({vanilla * 4 / 1e6:.0f} MB in float32); "
      f"decoupled: {decoupled_values / 1e6:.2f} M ({decoupled_values * 4 / 1e6:.0f} MB)")
assert vanilla // decoupled_values == 20
"""
    ),
]

# %% [markdown]
# # 00 · Overview: segmenting objects by locations
#
# Welcome to **minisolo**, a from-scratch implementation of SOLO ("SOLO: Segmenting Objects by
# Locations", Wang et al., ECCV 2020) written to be read. This first notebook sets the scene:
# what instance segmentation is, how it was done before SOLO, SOLO's one big idea, and the
# data we will use throughout the series.
#
# **What you will learn**
#
# - the difference between **semantic** and **instance** segmentation, on a picture;
# - the two older paradigms: **detect-then-segment** (Mask R-CNN) and **embed-then-group**;
# - SOLO's idea: an object's *instance category* is its **location** (grid cell of its centre) and its **size** (FPN level);
# - the map of the series (notebooks 00–08, with 09–10 planned) and the two datasets: synthetic shapes and real COCO photos.
#
# **Prerequisites:** Python, PyTorch tensors, what a CNN and an object detector do in broad
# strokes. About 20 minutes.

# %%
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

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
# ## 1. Semantic versus instance segmentation
#
# *Semantic* segmentation labels every pixel with a class: "circle", "square", background. Two
# touching circles merge into one blob of "circle". *Instance* segmentation gives every **object**
# its own mask (and a class and a score): circle #1, circle #2. Counting, tracking and grasping
# need instances.
#
# We make a small synthetic dataset of coloured shapes (COCO format, generated in a temporary
# folder in a second) and look at one image.

# %%
# %config InlineBackend.figure_formats = ["jpeg"]  # photos: JPEG keeps the notebook small
import tempfile

from minisolo.data import CocoInstances, make_shapes_dataset

NUM_SHAPES = 8 if FAST else 24
shapes_root = make_shapes_dataset(
    Path(tempfile.mkdtemp()) / "shapes", num_train=NUM_SHAPES, num_val=2, seed=0, progress=False
)
shapes = CocoInstances(shapes_root, "train")
print(f"shapes: {len(shapes)} images, classes {shapes.class_names}")


# an image with two objects of the same class shows the difference best
def same_class_pairs(index):
    labels = shapes.load_target(index)["labels"]
    return int(len(labels) - len(labels.unique()))


index = max(
    range(len(shapes)), key=lambda i: (same_class_pairs(i), len(shapes.load_target(i)["labels"]))
)
image, target = shapes[index]
masks, labels = target["masks"], target["labels"]
print(f"image {index}: {len(labels)} objects, classes {[shapes.class_names[l] for l in labels]}")

# %%
CLASS_COLOURS = np.array(plt.cm.Set1.colors[: shapes.num_classes])
INSTANCE_COLOURS = np.array(plt.cm.tab10.colors)


def semantic_picture(masks, labels):
    picture = np.zeros((*masks.shape[-2:], 3))
    for mask, label in zip(masks, labels):
        picture[mask.numpy()] = CLASS_COLOURS[label]
    return picture


def instance_picture(masks):
    picture = np.zeros((*masks.shape[-2:], 3))
    for n, mask in enumerate(masks):
        picture[mask.numpy()] = INSTANCE_COLOURS[n % 10]
    return picture


fig, axes = plt.subplots(1, 3, figsize=(16, 5.6))
axes[0].imshow(image.permute(1, 2, 0))
axes[0].set_title("image")
axes[1].imshow(semantic_picture(masks, labels))
axes[1].set_title("semantic: one colour per class")
axes[1].legend(
    handles=[
        plt.Rectangle((0, 0), 1, 1, color=CLASS_COLOURS[c]) for c in range(shapes.num_classes)
    ],
    labels=shapes.class_names,
    loc="lower right",
    fontsize=9,
)
axes[2].imshow(instance_picture(masks))
axes[2].set_title("instance: one colour per object")
for n, (y, x) in enumerate(zip(*minisolo.targets.center_of_mass(masks)[::-1])):
    axes[2].text(
        x,
        y,
        f"#{n}\n{shapes.class_names[labels[n]]}",
        color="white",
        ha="center",
        va="center",
        fontsize=9,
    )
for ax in axes:
    ax.set_xticks([])
    ax.set_yticks([])
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 2. Two older paradigms
#
# **Detect-then-segment** (Mask R-CNN, He et al. 2017). First detect a **box** per object, then
# predict a small mask (28 × 28) *inside each box* from features cropped with RoIAlign. Accurate,
# but the masks depend on the boxes: two stages, a box NMS, and a coarse mask resolution.

# %%
from minisolo.targets import masks_to_boxes

boxes = masks_to_boxes(masks)
fig = plt.figure(figsize=(16, 5.5))
ax = fig.add_subplot(1, 3, 1)
ax.imshow(image.permute(1, 2, 0))
for n, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
    ax.add_patch(
        plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec=INSTANCE_COLOURS[n % 10], lw=2.5)
    )
    ax.text(
        x1,
        y1 - 2,
        f"box #{n}",
        color=INSTANCE_COLOURS[n % 10],
        fontsize=9,
        weight="bold",
        bbox=dict(facecolor="white", alpha=0.75, lw=0, pad=1),  # readable on any background
    )
ax.set_title("stage 1: one box per object")
ax.set_xticks([])
ax.set_yticks([])
# stage 2: inside each box, a 28 x 28 mask (here: the true mask cropped and resized)
for n, (x1, y1, x2, y2) in enumerate(boxes.long().tolist()[:8]):
    crop = masks[n, y1:y2, x1:x2].float()[None, None]
    small = F.interpolate(crop, size=(28, 28), mode="bilinear", align_corners=False)[0, 0]
    sub = fig.add_subplot(2, 6, 3 + n + (2 if n >= 4 else 0))
    sub.imshow(small, cmap="gray", vmin=0, vmax=1)
    sub.set_title(f"#{n}: 28x28 in its box", fontsize=9, color=INSTANCE_COLOURS[n % 10])
    sub.set_xticks([])
    sub.set_yticks([])
fig.suptitle(
    "Detect-then-segment: boxes first, then a low-resolution mask inside each box", fontsize=13
)
plt.show()

# %% [markdown]
# **Embed-then-group** (e.g. associative embedding, discriminative loss). Predict for every
# pixel an **embedding vector** such that pixels of the same object get similar vectors, then
# **group** them by clustering. No boxes, but the grouping is a separate, fragile post-process:
# how many clusters? where does one end? Below, an idealised 2-D embedding: each object's pixels
# scatter around their own point.

# %%
generator = torch.Generator().manual_seed(0)
object_points = 3 * torch.randn(len(masks), 2, generator=generator)  # one point per object
owner = torch.full(masks.shape[-2:], -1)
for n, mask in enumerate(masks):
    owner[mask] = n
embedding = torch.zeros(*owner.shape, 2)
embedding[owner >= 0] = object_points[owner[owner >= 0]]
embedding += 0.6 * torch.randn(embedding.shape, generator=generator)  # a real network is noisy

fig, axes = plt.subplots(1, 2, figsize=(14, 5.5))
shown = axes[0].imshow(embedding[..., 0], cmap="coolwarm")
axes[0].set_title("embedding, first coordinate, per pixel")
axes[0].set_xticks([])
axes[0].set_yticks([])
fig.colorbar(shown, ax=axes[0], fraction=0.046)
sample = torch.randperm(owner.numel(), generator=generator)[:6000]
flat_owner, flat_embedding = owner.flatten()[sample], embedding.reshape(-1, 2)[sample]
background = flat_owner < 0
axes[1].scatter(*flat_embedding[background].T, s=2, color="lightgray", label="background")
for n in range(len(masks)):
    chosen = flat_owner == n
    axes[1].scatter(
        *flat_embedding[chosen].T, s=3, color=INSTANCE_COLOURS[n % 10], label=f"object #{n}"
    )
axes[1].set_xlabel("embedding dimension 1")
axes[1].set_ylabel("embedding dimension 2")
axes[1].set_title("pixels in embedding space: group them into clusters = instances")
axes[1].legend(markerscale=4, fontsize=8, loc="upper right")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 3. SOLO's idea: instance categories
#
# SOLO asks: what *distinguishes* two instances in an image? Their **location** and their
# **size**. So it divides the image into an $S \times S$ grid and turns each object into an
# **instance category**: "the object whose centre is in cell $(i, j)$", at the FPN level
# that matches its size. Then segmentation becomes two per-cell predictions, both plain
# fully-convolutional outputs:
#
# * a **category branch**: $S \times S \times C$ class scores, "is there an object of class $c$ centred in cell $(i, j)$?";
# * a **mask branch**: $S^2$ full-image masks, channel $k = i \cdot S + j$ is the mask of that object.
#
# No boxes, no grouping, no anchors. Small objects go to fine grids, large ones to coarse grids
# (FPN levels with overlapping size ranges). Below: the centre cell of every object on a
# 5 × 5 grid.

# %%
tiny = minisolo.preset("tiny", num_classes=shapes.num_classes)
S_DEMO = 5
H, W = masks.shape[-2:]
cx, cy = minisolo.targets.center_of_mass(masks)
sizes = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))

fig, ax = plt.subplots(figsize=(8, 8))
ax.imshow(image.permute(1, 2, 0), extent=(0, W, H, 0))
for t in np.linspace(0, H, S_DEMO + 1):
    ax.axhline(t, color="white", lw=1)
    ax.axvline(t, color="white", lw=1)
for n in range(len(masks)):
    i, j = int(cy[n] / H * S_DEMO), int(cx[n] / W * S_DEMO)
    colour = INSTANCE_COLOURS[n % 10]
    ax.add_patch(
        plt.Rectangle(
            (j * W / S_DEMO, i * H / S_DEMO), W / S_DEMO, H / S_DEMO, color=colour, alpha=0.35
        )
    )
    ax.plot(cx[n], cy[n], "*", color=colour, ms=16, mec="white")
    levels = [l for l, (lo, hi) in enumerate(tiny.scale_ranges) if lo <= sizes[n] <= hi]
    ax.text(
        cx[n],
        cy[n] + 10,
        f"#{n}: cell ({i},{j}), k={i * S_DEMO + j}\nsize {sizes[n]:.0f}px -> level {levels}",
        color="white",
        fontsize=8,
        ha="center",
        va="top",
        bbox=dict(facecolor=colour, alpha=0.75, lw=0, pad=1),
    )
ax.set_title(
    f"Instance category = centre cell (location) + FPN level (size), on a {S_DEMO} x {S_DEMO} grid"
)
ax.set_xticks([])
ax.set_yticks([])
plt.show()


# %% [markdown]
# ## 4. The map of the series
#
# | notebook | concept | you will build / see |
# |---|---|---|
# | **00 overview** | instance segmentation, paradigms, SOLO's idea | the data (this notebook) |
# | **01 coordconv** | why a conv net must be told *where* it is | coordinate channels; a 2 × 2-grid task a plain CNN cannot learn |
# | **02 grid assignment** | which cells must predict which object | centre of mass, ε-region, 3 × 3 clamp, FPN levels; `solo_targets` |
# | **03 mask channels** | one mask channel per cell, $k = iS + j$ | the $S^2$ outputs as a mosaic; Decoupled SOLO's $2S$ channels and memory |
# | **04 losses** | focal loss and Dice loss | $L = L_{cate} + 3 L_{mask}$ recomputed by hand |
# | **05 nms** | removing duplicates | points NMS, sequential mask NMS, Matrix NMS, timings |
# | **06 train and evaluate** | the whole model end to end | training a tiny SOLO on shapes, COCO-style mask AP |
# | **07 grid activation explorer** | what each cell predicts | interactive look at a trained model's grid |
# | **08 SOLO vs YOLACT** | another one-stage design | prototypes + coefficients vs location channels |
#
# *Planned, not written yet:* **09 COCO subset** (training and evaluating on a subset of real
# COCO photos, with a GPU) and **10 SOLOv2** (the follow-up model and its dynamic mask kernels).
#
# Every notebook derives its concept in small cells and then **checks the derivation against the
# package** (`minisolo`), so what you learn is what the model runs.

# %% [markdown]
# ## 5. The data
#
# **Synthetic shapes** (`minisolo.data.make_shapes_dataset`): circles, squares, triangles and
# stars of 12–180 px on textured 256 × 256 backgrounds, with occlusion. Fast to generate and
# to train on with a CPU, and written in COCO format so the same loader and evaluation work on
# real data.


# %%
from minisolo.viz import place_labels


def show_instances(ax, image, masks, alpha=0.5):
    """Image with each instance's mask in its own colour."""
    ax.imshow(image.permute(1, 2, 0).clamp(0, 1))
    overlay = np.zeros((*masks.shape[-2:], 4))
    for n, mask in enumerate(masks):
        overlay[mask.numpy()] = (*INSTANCE_COLOURS[n % 10], alpha)
    ax.imshow(overlay)
    ax.set_xticks([])
    ax.set_yticks([])


def name_instances(ax, masks, labels, class_names):
    """Each instance's class name at its centre of mass, in its colour; a label that would
    cover another moves aside (with a leader line). Call it once the layout is final."""
    if len(masks):
        xs, ys = minisolo.targets.center_of_mass(masks)
        colours = [INSTANCE_COLOURS[n % 10] for n in range(len(masks))]
        names = [class_names[label] for label in labels]
        place_labels(ax, xs.tolist(), ys.tolist(), names, colours, fontsize=8, text_color=None)


fig, axes = plt.subplots(2, 4, figsize=(16, 8.5))
shown = list(zip(axes.flat, (shapes[i] for i in range(min(len(shapes), axes.size)))))
for i, (ax, (image_i, target_i)) in enumerate(shown):
    show_instances(ax, image_i, target_i["masks"])
    ax.set_title(f"shapes #{i}: {len(target_i['labels'])} objects")
plt.tight_layout()  # first the layout, then the labels: they are placed in screen space
for ax, (_, target_i) in shown:
    name_instances(ax, target_i["masks"], target_i["labels"], shapes.class_names)
plt.show()


# %% [markdown]
# **Real COCO photos** with their original annotations, read with pycocotools.
# `minisolo.data.find_coco_folder()` looks for a COCO-layout folder: the one the
# `MINISOLO_COCO` environment variable names, else a subset made with
# `minisolo data coco-subset --out data/coco-...`, else the developers' `../shared/coco-mini`
# (158 photos). If there is none it prints the one command that makes a small subset, and the
# notebook goes on without photos.

# %%
from minisolo.data import coco_subset_hint, find_coco_folder

found = find_coco_folder()
if found is None:
    print(coco_subset_hint())
    print("Skipping the photos: the rest of the notebook runs without them.")
else:
    coco_split = found.splits[0]
    coco = CocoInstances(found.root, coco_split)
    print(f"COCO photos from {found.root} ({coco_split}): {len(coco)} images")

    # photos with a handful of objects (counted from the annotations, without decoding masks)
    def num_objects(i):
        return sum(not a["iscrowd"] for a in coco.coco.imgToAnns[coco.ids[i]])

    picks = [i for i in range(len(coco)) if 4 <= num_objects(i) <= 12][: 3 if FAST else 6]
    if not picks:  # a subset of quieter photos: its busiest ones
        picks = sorted(range(len(coco)), key=num_objects, reverse=True)[:3]
    fig, axes = plt.subplots(
        (len(picks) + 2) // 3, 3, figsize=(18, 5.2 * ((len(picks) + 2) // 3)), squeeze=False
    )
    for ax in axes.flat:
        ax.axis("off")
    photo_targets = []
    for ax, i in zip(axes.flat, picks):
        photo, photo_target = coco[i]
        show_instances(ax, photo, photo_target["masks"], alpha=0.45)
        ax.set_title(f"COCO {coco.ids[i]}: {len(photo_target['labels'])} objects")
        photo_targets.append(photo_target)
    plt.tight_layout()  # first the layout, then the labels
    for ax, photo_target in zip(axes.flat, photo_targets):
        name_instances(ax, photo_target["masks"], photo_target["labels"], coco.class_names)
    plt.show()

# %% [markdown]
# ## 6. Check: instance categories by hand against the package
#
# With the centre region shrunk to a point (`sigma=0`), `minisolo.solo_targets` marks exactly
# one cell per object and level: the centre cell. Let us compute those instance categories by
# hand: levels from the size, cell from the centre of mass, a later object overwriting an
# earlier one in the same cell, and compare.

# %%
from torch.testing import assert_close


def instance_categories_by_hand(masks, config):
    """Per level: {k: object} with k = i*S + j the centre cell; a later object wins a shared cell."""
    H, W = masks.shape[-2:]
    boxes = masks_to_boxes(masks)
    sizes = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    cx, cy = minisolo.targets.center_of_mass(masks)
    per_level = []
    for grid, (lower, upper) in zip(config.grids, config.scale_ranges):
        cells = {}
        for n in range(len(masks)):
            if lower <= sizes[n] <= upper and masks[n].sum() >= config.min_mask_area:
                cells[int(cy[n] / H * grid) * grid + int(cx[n] / W * grid)] = n
        per_level.append(dict(sorted(cells.items())))
    return per_level


for i in range(len(shapes)):
    _, t = shapes[i]
    by_hand = instance_categories_by_hand(t["masks"], tiny)
    package = minisolo.solo_targets(
        t["masks"],
        t["labels"],
        num_classes=tiny.num_classes,
        grids=tiny.grids,
        scale_ranges=tiny.scale_ranges,
        strides=tiny.strides,
        sigma=0.0,
    )
    for cells, lt in zip(by_hand, package):
        assert_close(torch.tensor(list(cells.keys()), dtype=torch.long), lt.positive_index)
        assert_close(torch.tensor(list(cells.values()), dtype=torch.long), lt.instance)
print(f"instance categories match solo_targets(sigma=0) on {len(shapes)} shapes images")

# %% [markdown]
# ## Exercises
#
# 1. **From instances to semantics (code).** Write `semantic_map(masks, labels, num_classes)`
#    returning a `Long[H, W]` map with the class of each pixel and `num_classes` for background
#    (a later object on top). Assert, on a shapes image, that it equals `num_classes` exactly where
#    no mask is set, and that two objects of the same class get the same value. Can you go back
#    from the semantic map to the instances?
# 2. **Collisions (code).** Two objects of the same level whose centres fall in the same cell
#    share one instance category: only one can be predicted. Count such collisions over the
#    shapes images with the `tiny` preset, and assert that your count equals
#    (objects assigned to a level) − (positive cells) of `solo_targets(..., sigma=0.0)`, summed
#    over levels and images.
# 3. **Objects per image (code).** Compare the number of objects per image and their sizes
#    $\sqrt{wh}$ in the shapes set and in the COCO photos (skip them if none were found).
#    Which one has the larger share of small objects (under 32 px)? Assert that your counts are consistent
#    with `len(target["labels"])`.
# 4. **Think.** Two people hugging: their boxes overlap heavily. Which paradigm suffers, and why
#    does SOLO care less? Which situation, in turn, is hard for SOLO?

# %% [markdown]
# # 00 · Overview: solutions
#
# Solutions to the exercises of `00_overview.ipynb`; each coding answer ends with an `assert`.

# %%
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
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
from minisolo.data import CocoInstances, find_coco_folder, make_shapes_dataset
from minisolo.targets import masks_to_boxes

shapes_root = make_shapes_dataset(
    Path(tempfile.mkdtemp()) / "shapes",
    num_train=8 if FAST else 24,
    num_val=2,
    seed=0,
    progress=False,
)
shapes = CocoInstances(shapes_root, "train")
tiny = minisolo.preset("tiny", num_classes=shapes.num_classes)


# %% [markdown]
# ## Exercise 1: from instances to semantics


# %%
def semantic_map(masks, labels, num_classes):
    semantic = torch.full(masks.shape[-2:], num_classes, dtype=torch.long)
    for mask, label in zip(masks, labels):  # later objects are painted on top
        semantic[mask] = label
    return semantic


# an image with two objects of the same class
index = next(
    i
    for i in range(len(shapes))
    if len(shapes.load_target(i)["labels"].unique()) < len(shapes.load_target(i)["labels"])
)
_, target = shapes[index]
masks, labels = target["masks"], target["labels"]
semantic = semantic_map(masks, labels, shapes.num_classes)
assert torch.equal(semantic == shapes.num_classes, ~masks.any(dim=0))
a, b = next(
    (a, b) for a in range(len(labels)) for b in range(a + 1, len(labels)) if labels[a] == labels[b]
)
assert (
    semantic[masks[a]].unique().tolist()
    == semantic[masks[b]].unique().tolist()
    == [labels[a].item()]
)
print(
    f"image {index}: objects #{a} and #{b} are both '{shapes.class_names[labels[a]]}' and share the value {labels[a].item()}"
)

# %% [markdown]
# Going back is impossible in general: where two same-class objects touch, nothing in the
# semantic map says where one ends and the other begins. That missing information is exactly
# what instance segmentation adds.
#
# ## Exercise 2: collisions of instance categories

# %%
collisions, assigned, positives = 0, 0, 0
for i in range(len(shapes)):
    _, t = shapes[i]
    m = t["masks"]
    H, W = m.shape[-2:]
    boxes = masks_to_boxes(m)
    sizes = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    cx, cy = minisolo.targets.center_of_mass(m)
    for grid, (lower, upper) in zip(tiny.grids, tiny.scale_ranges):
        cells = [
            int(cy[n] / H * grid) * grid + int(cx[n] / W * grid)
            for n in range(len(m))
            if lower <= sizes[n] <= upper and m[n].sum() >= tiny.min_mask_area
        ]
        assigned += len(cells)
        collisions += len(cells) - len(set(cells))
    levels = minisolo.solo_targets(
        m,
        t["labels"],
        num_classes=tiny.num_classes,
        grids=tiny.grids,
        scale_ranges=tiny.scale_ranges,
        strides=tiny.strides,
        sigma=0.0,
    )
    positives += sum(lt.num_positives for lt in levels)
assert collisions == assigned - positives
print(
    f"{assigned} (object, level) assignments, {positives} distinct centre cells: {collisions} collisions"
)


# %% [markdown]
# Collisions are rare: objects of the same level have similar sizes and usually cannot both be
# centred in one cell without overlapping heavily. With the real centre region (σ = 0.2, up to
# 3 × 3 cells) an object can still keep some cells when a neighbour overwrites others.
#
# ## Exercise 3: objects per image


# %%
def object_stats(dataset, indices):
    counts, sizes = [], []
    for i in indices:
        t = dataset.load_target(i)
        b = t["boxes"]
        counts.append(len(t["labels"]))
        sizes.append(torch.sqrt((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])))
    sizes = torch.cat(sizes)
    assert len(sizes) == sum(counts)
    return np.array(counts), sizes


stats = {"shapes": object_stats(shapes, range(len(shapes)))}
found = find_coco_folder()  # $MINISOLO_COCO, data/coco-*, ../shared/coco-mini
if found is not None:
    coco = CocoInstances(found.root, found.splits[0])
    stats[f"COCO {found.splits[0]}"] = object_stats(coco, range(min(len(coco), 200)))
else:
    print("no COCO photos found (see notebook 00 for the command that fetches some): shapes only")
for name, (counts, sizes) in stats.items():
    print(
        f"{name:14s}: {counts.mean():.1f} objects per image (max {counts.max()}), "
        f"{(sizes < 32).float().mean():.0%} smaller than 32 px, median size {sizes.median():.0f} px"
    )
# The answer to the question, read off the numbers above (COCO's "small": area under 32² px).
small_share = {name: (sizes < 32).float().mean().item() for name, (_, sizes) in stats.items()}
print(f"larger share of objects under 32 px: {max(small_share, key=small_share.get)}")

# %% [markdown]
# COCO photos hold more objects per image (crowds, tables full of things), but in pixels it is
# the shapes set that has the larger share of small objects (the last line above): its shapes
# are drawn between 12 and 180 px on 256 × 256 images, while COCO photos are about 640 px wide
# and their objects larger in pixels too (compare the median sizes). The shapes set is still the
# easier one on purpose (four simple shapes, fewer objects, no clutter), so a CPU can train on it.
#
# ## Exercise 4: hugging people
#
# Detect-then-segment suffers: the two boxes overlap so much that box NMS may delete one of
# them, and each box's 28 × 28 mask must decide which person the shared pixels belong to.
# SOLO never uses boxes at test time: the two people have different centres, so (if their
# centres fall in different cells) they are two different instance categories with their own
# mask channels. SOLO's weak spot is the reverse: two objects of similar size whose **centres
# fall in the same cell**, e.g. a person standing right behind another: one instance category,
# one mask (exercise 2 counts how often that happens).

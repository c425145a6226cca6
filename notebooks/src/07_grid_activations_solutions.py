# %% [markdown]
# # 07 · Grid activations: solutions
#
# Solutions to the exercises of `07_grid_activations.ipynb`. Every coding answer ends with an
# `assert`, so this notebook doubles as a test (it runs in the test suite). The first cells
# rebuild what the exercises use: the package's trained tiny SOLO and Decoupled SOLO
# (`minisolo.pretrained`, trained once and cached), the same val image as the main notebook,
# its outputs and targets.

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
from minisolo import solo_targets
from minisolo.data import CocoInstances
from minisolo.engine import make_transforms
from minisolo.model_cache import demo_data, describe
from minisolo.utils import is_fast_mode, pick_device, seed_everything

FAST = is_fast_mode()  # MINISOLO_FAST=1 picks tiny sizes (the tests run every notebook so)
device = pick_device("auto")  # CUDA when a GPU is present, else the CPU
seed_everything(0)
plt.rcParams.update({"figure.dpi": 90, "font.size": 11, "axes.titlesize": 12})
print(
    f"minisolo {minisolo.__version__} | torch {torch.__version__} | device: {device} | FAST={FAST}"
)

# %%
model = minisolo.pretrained("solo", device=str(device))  # trained once, then loaded
decoupled = minisolo.pretrained("decoupled_solo", device=str(device))
print("SOLO:", describe(model.cache_info))
print("Decoupled SOLO:", describe(decoupled.cache_info))
config = model.config
class_names = list(config.class_names)

# %%
# the image of the main notebook: the val image with the most different classes
val = CocoInstances(demo_data(), "val", transforms=make_transforms(config, train=False))


def classes_of(n):
    return [val.cat_to_label[a["category_id"]] for a in val.coco.imgToAnns[val.ids[n]]]


ranked = sorted(range(len(val)), key=lambda n: (-len(set(classes_of(n))), len(classes_of(n))))
INDEX = ranked[0]
image, target = val[INDEX]
H, W = image.shape[-2:]
with torch.no_grad():
    outputs = model(image[None].to(device))
    d_out = decoupled(image[None].to(device))
outputs = {key: [t.cpu() for t in value] for key, value in outputs.items()}
d_out = {key: [t.cpu() for t in value] for key, value in d_out.items()}
level_targets = solo_targets(
    target["masks"],
    target["labels"],
    num_classes=config.num_classes,
    grids=config.grids,
    scale_ranges=config.scale_ranges,
    strides=config.strides,
    sigma=config.sigma,
)
LEVEL = max(range(len(config.grids)), key=lambda l: level_targets[l].num_positives)
S = config.grids[LEVEL]
print(
    f"val[{INDEX}], image {tuple(image.shape)}, objects {[class_names[c] for c in target['labels']]}; "
    f"level {LEVEL}: S = {S}, {level_targets[LEVEL].num_positives} positive cells"
)


# %% [markdown]
# ## Exercise 1: from a pixel to a channel
#
# The grid splits the *padded input* into $S$ equal rows and columns: pixel $(x, y)$ lies in row
# $\lfloor y / H \cdot S \rfloor$ and column $\lfloor x / W \cdot S \rfloor$. `solo_targets` uses the
# same formula for the centre cell $(i_0, j_0)$ and always makes it positive (the centre region
# is clamped around it), unless a later object overwrites it.


# %%
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
assert cell_of_pixel(0, 0, 192, 192, 8) == (0, 0, 0)
assert cell_of_pixel(191, 191, 192, 192, 8) == (7, 7, 63)
print(f"the centre cell of {checked} (object, level) pairs is positive")

# %% [markdown]
# ## Exercise 2: all decoupled masks at once
#
# `Y[:, None] * X[None, :]` broadcasts `[S, 1, h, w] * [1, S, h, w]` to `[S, S, h, w]`: entry
# `[i, j]` is $\sigma(Y_i)\sigma(X_j)$. Flattening the first two dimensions in row-major order puts
# cell $(i, j)$ at $k = i \cdot S + j$.

# %%
X = torch.sigmoid(d_out["mask_x"][LEVEL][0])  # [S, h, w], one per column j
Y = torch.sigmoid(d_out["mask_y"][LEVEL][0])  # [S, h, w], one per row i
all_masks = (Y[:, None] * X[None, :]).flatten(0, 1)  # [S*S, h, w]
rows = torch.arange(S).repeat_interleave(S)  # i of k = 0, 1, ..., S*S-1
cols = torch.arange(S).repeat(S)  # j of k
assert_close(all_masks, decoupled.head.cell_mask_probs(d_out, LEVEL, 0, rows, cols))
full_bytes = all_masks.numel() * all_masks.element_size()
xy_bytes = (X.numel() + Y.numel()) * X.element_size()
print(
    f"S*S masks: {full_bytes / 1e6:.2f} MB; X and Y: {xy_bytes / 1e6:.3f} MB (x{full_bytes / xy_bytes:.0f} = S/2)"
)
assert full_bytes == xy_bytes * S // 2

# %% [markdown]
# ## Exercise 3: the best cell for each object
#
# Dice $= 2\sum pq / (\sum p^2 + \sum q^2)$, and `minisolo.dice_loss` returns
# $1 - 2\sum pq / (\sum p^2 + 0.001 + \sum q^2 + 0.001)$ per mask. The printout compares, per
# object, the cell with the best Dice and the cell with the highest score of the object's class.
# Where they differ, the most confident cell is not the one with the best mask: one reason why
# SOLO rescales the class score by the mask's mean probability ("maskness") before NMS.

# %%
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
    print(
        f"object #{obj} ({class_names[label]}): {len(cells)} positive cells; best Dice {dice[mine].max():.2f} "
        f"at cell {divmod(int(best), S)}; highest '{class_names[label]}' score at {divmod(int(top), S)}"
    )
    assert best in cells and 0 <= dice[mine].max() <= 1

# %% [markdown]
# ## Exercise 4: duplicates
#
# A cell next to a positive one sees nearly the same features, so it predicts nearly the same
# class score and the same mask; the same object can also fire on two levels. Points NMS (a
# cell must be the maximum of its 2 × 2 neighbourhood in the heat map) removes some of these
# copies before `candidates`; the rest are candidates. We sort them by score as
# `model.post_process` does, take the IoU of every same-class pair and the pair that overlaps
# most: the lower-scored one of the two is a duplicate of the other.

# %%
found = model.candidates(outputs, 0)
order = torch.argsort(found["scores"], descending=True)[: config.nms_pre]
found = {key: value[order] for key, value in found.items()}
iou = minisolo.mask_iou(found["masks"])  # [N, N], the masks are at stride 4
same_class = found["labels"][:, None] == found["labels"][None, :]
pairs = (iou * same_class).triu(diagonal=1)  # pair (a, b) with a < b: a scores higher
print(f"{len(order)} candidates, {int(same_class.triu(diagonal=1).sum())} same-class pairs")
if pairs.numel() and pairs.max() > 0:
    a, b = divmod(int(pairs.argmax()), len(order))
    for n in (a, b):
        level = int(found["levels"][n])
        cell = divmod(int(found["cells"][n]), config.grids[level])
        print(
            f"  candidate {n}: {class_names[found['labels'][n]]}, level {level}, cell {cell}, "
            f"score {found['scores'][n]:.3f}"
        )
    print(f"mask IoU of the pair: {iou[a, b]:.2f}")
    decayed = minisolo.matrix_nms(
        found["masks"],
        found["labels"],
        found["scores"],
        kernel=config.nms_kernel,
        sigma=config.nms_sigma,
        mask_areas=found["areas"],
    )
    print(
        f"Matrix NMS: score of candidate {b} {found['scores'][b]:.3f} -> {decayed[b]:.3f}, "
        f"of candidate {a} {found['scores'][a]:.3f} -> {decayed[a]:.3f}"
    )
    assert found["labels"][a] == found["labels"][b] and found["scores"][a] >= found["scores"][b]
    others = same_class & ~torch.eye(len(order), dtype=torch.bool)
    assert (iou[others] <= iou[a, b]).all()  # no same-class pair overlaps more
    # a overlaps no higher-scored mask more than it overlaps b (the pair's IoU is the largest),
    # so a's compensation cannot cancel the decay of b: b's score can only go down
    assert decayed[b] <= found["scores"][b] + 1e-6
    assert FAST or iou[a, b] > 0.5  # the trained model's best pair is a real duplicate
    kept = int((decayed >= config.update_threshold).sum())
    print(
        f"without NMS the output would hold all {len(order)} candidates; after it {kept} keep "
        f"a score >= {config.update_threshold}"
    )
else:
    assert FAST  # fast mode's barely trained stand-in may have no overlapping pair

# %% [markdown]
# ## Exercise 5: how many mask values?
#
# Level 0 of the paper: input $800 \times 1216$, masks at stride 4: $200 \times 304$ pixels.
# Vanilla SOLO outputs $S^2 = 1600$ such maps, Decoupled SOLO $2S = 80$.

# %%
h, w = 800 // 4, 1216 // 4
vanilla, decoupled_values = 40**2 * h * w, 2 * 40 * h * w
print(
    f"vanilla: {vanilla / 1e6:.1f} M values ({vanilla * 4 / 1e6:.0f} MB in float32); "
    f"decoupled: {decoupled_values / 1e6:.2f} M ({decoupled_values * 4 / 1e6:.0f} MB)"
)
assert vanilla // decoupled_values == 20

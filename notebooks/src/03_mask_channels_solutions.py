# %% [markdown]
# # 03 · Mask channels: solutions
#
# Solutions to the exercises of `03_mask_channels.ipynb`; each coding answer ends with an `assert`.

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
from minisolo.utils import is_fast_mode, pick_device, seed_everything

FAST = is_fast_mode()  # MINISOLO_FAST=1 picks tiny sizes (the tests run every notebook so)
device = pick_device("auto")  # CUDA when a GPU is present, else the CPU
seed_everything(0)
plt.rcParams.update({"figure.dpi": 90, "font.size": 11, "axes.titlesize": 12})
print(
    f"minisolo {minisolo.__version__} | torch {torch.__version__} | device: {device} | FAST={FAST}"
)


# %%
def toy_scene(objects, size=128, seed=0):
    """Paint discs (class 0) and squares (class 1) on a noisy background.
    objects: list of (kind, centre y, centre x, radius). Returns image [3, H, W], masks, labels."""
    g = torch.Generator().manual_seed(seed)
    image = (0.5 + 0.08 * torch.randn(1, size, size, generator=g)).repeat(3, 1, 1)  # grey noise
    rows = torch.arange(size).view(-1, 1).float()
    cols = torch.arange(size).view(1, -1).float()
    masks, labels = [], []
    for kind, cy, cx, r in objects:
        if kind == "disc":
            mask = (rows - cy) ** 2 + (cols - cx) ** 2 <= r**2
        else:
            mask = ((rows - cy).abs() <= r) & ((cols - cx).abs() <= r)
        image[:, mask] = torch.tensor([0.9, 0.2, 0.2] if kind == "disc" else [0.2, 0.3, 0.9]).view(
            3, 1
        )
        masks.append(mask)
        labels.append(0 if kind == "disc" else 1)
    return image, torch.stack(masks), torch.tensor(labels)


image, masks, labels = toy_scene(
    [("disc", 40, 44, 18), ("square", 88, 90, 14), ("disc", 28, 104, 6)]
)
config = minisolo.preset(
    "tiny",
    num_classes=2,
    backbone_width=16,
    fpn_channels=32,
    head_channels=32,
    stacked_convs=2,
    num_groups=8,
)
level_targets = minisolo.solo_targets(
    masks,
    labels,
    num_classes=config.num_classes,
    grids=config.grids,
    scale_ranges=config.scale_ranges,
    strides=config.strides,
)


# %% [markdown]
# ## Exercise 1: from channel back to cell


# %%
def cell_of_channel(k, S):
    return divmod(k, S)  # (k // S, k % S)


S = 12
for k in range(S * S):
    i, j = cell_of_channel(k, S)
    assert 0 <= i < S and 0 <= j < S and i * S + j == k

for level, lt in enumerate(level_targets):
    grid = config.grids[level]
    for k in lt.positive_index.tolist():
        i, j = cell_of_channel(k, grid)
        assert lt.category[i, j] != config.num_classes
print("round trip holds; every positive channel points at a non-background cell")

# %% [markdown]
# ## Exercise 2: gathering a batch of positive masks

# %%
second, masks2, labels2 = toy_scene([("square", 64, 48, 26), ("disc", 96, 100, 10)], seed=1)
batch_images = torch.stack([image, second]).to(device)
batch_masks = [masks.to(device), masks2.to(device)]
batch_labels = [labels.to(device), labels2.to(device)]
torch.manual_seed(0)
model = minisolo.SOLO(config).to(device).eval()
with torch.no_grad():
    outputs = model(batch_images)
batch_targets = minisolo.solo_targets_batch(
    batch_masks,
    batch_labels,
    num_classes=config.num_classes,
    grids=config.grids,
    scale_ranges=config.scale_ranges,
    strides=config.strides,
)
for level, lt in enumerate(batch_targets):
    grid = config.grids[level]
    logits = outputs["mask"][level]  # [B, S*S, h, w]
    gathered = logits.reshape(-1, *logits.shape[-2:])[lt.positive_index]  # one indexing operation
    one_by_one = (
        torch.stack(
            [logits[int(p) // (grid * grid), int(p) % (grid * grid)] for p in lt.positive_index]
        )
        if lt.num_positives
        else gathered
    )
    assert_close(gathered, one_by_one)
print("flat index b*S*S + k reads the same masks as [b, k]")

# %% [markdown]
# ## Exercise 3: ghost masks

# %%
H = W = 128
S_DEMO = 5
_, ghost_masks, _ = toy_scene(
    [("disc", 38, 38, 18), ("disc", 60, 60, 18)], seed=4
)  # A and D overlap
cx, cy = minisolo.targets.center_of_mass(ghost_masks)
rows_of, cols_of = (cy / H * S_DEMO).long(), (cx / W * S_DEMO).long()
assert (rows_of.tolist(), cols_of.tolist()) == ([1, 2], [1, 2])
Y_1 = ghost_masks[rows_of == 1].any(dim=0)  # objects centred in row 1: A
X_2 = ghost_masks[cols_of == 2].any(dim=0)  # objects centred in column 2: D
ghost = Y_1 & X_2
assert torch.equal(ghost, ghost_masks[0] & ghost_masks[1]) and ghost.any()
print(f"cell (1, 2) has no object, but Y_1 * X_2 is a {int(ghost.sum())}-pixel ghost = A ∩ D")

# %% [markdown]
# The **category branch** stops it: cell (1, 2) is background in the category targets, so at
# test time its score is low and its mask is never read. The vanilla head has the same
# safeguard for its untrained channels (notebook 03, section 3).
#
# ## Exercise 4: why only $x$ for the X branch
#
# $X_j$ must contain *every* object centred in column $j$, whatever its row: its answer must not
# depend on $y$. Without the $y$ coordinate the branch is translation-equivariant vertically
# (notebook 01, exercise 2), so "same answer in every row" is built in rather than learned. With
# $y$ it could learn row-dependent shortcuts that the product with $Y_i$ does not expect, and it
# would need more data to learn to ignore it.

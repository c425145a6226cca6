# %% [markdown]
# # 03 · Mask channels: one channel per grid cell
#
# SOLO's mask branch outputs, for each FPN level with an $S \times S$ grid, a tensor with
# $S^2$ channels. Channel $k = i \cdot S + j$ is the mask of "the object whose centre is in
# cell $(i, j)$". This notebook opens that tensor up.
#
# **What you will learn**
#
# - why the channel index is $k = i \cdot S + j$ (row-major order) and how to go back from $k$ to $(i, j)$;
# - what the S² outputs of a small SOLO look like, before and after a quick training run, one channel at a time and as a mosaic laid out like the grid;
# - **Decoupled SOLO**: the mask of cell $(i, j)$ as $\sigma(Y_i) \cdot \sigma(X_j)$ with only $2S$ channels;
# - the memory arithmetic at the paper's size: $S^2$ versus $2S$ channels, per level and in total;
# - why training needs only the positive cells' channels, and how the package computes just those.
#
# **Prerequisites:** notebooks 01 (CoordConv) and 02 (grid assignment). About 25 minutes.

# %%
import sys
import time
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
# ## 1. From cell $(i, j)$ to channel $k$
#
# Number the cells of an $S \times S$ grid row by row, the way `tensor.flatten()` reads a 2-D
# tensor: cell $(i, j)$ (row $i$, column $j$) gets $k = i \cdot S + j$. Going back is a
# division with remainder: $i = k \,//\, S$, $j = k \bmod S$.

# %%
S = 5
cell_numbers = torch.arange(S * S).view(S, S)  # what flatten() undoes
print(cell_numbers)
i, j = 1, 3
k = i * S + j
assert cell_numbers[i, j] == k and (k // S, k % S) == (i, j)
print(f"cell (i={i}, j={j}) -> channel k = {i}*{S} + {j} = {k} -> back to ({k // S}, {k % S})")


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


# one 128 x 128 image with three objects (positions chosen to fall in different cells)
image, masks, labels = toy_scene(
    [("disc", 40, 44, 18), ("square", 88, 90, 14), ("disc", 28, 104, 6)]
)
H = W = image.shape[-1]

fig, ax = plt.subplots(figsize=(6.5, 6.5))
ax.imshow(image.permute(1, 2, 0).clamp(0, 1), extent=(0, W, H, 0))
for line in np.linspace(0, H, S + 1):
    ax.axhline(line, color="white", lw=1)
    ax.axvline(line, color="white", lw=1)
for (row, col), number in np.ndenumerate(cell_numbers.numpy()):
    ax.text(
        (col + 0.5) * W / S,
        (row + 0.5) * H / S,
        f"k={number}",
        ha="center",
        va="center",
        color="white",
        fontsize=10,
    )
cx, cy = minisolo.targets.center_of_mass(masks)
for y, x in zip(cy, cx):
    ax.plot(x, y, "y*", ms=18, mec="black")
    row = int(y / H * S)
    left_side = x > 0.3 * W  # room on the left: the label goes there, clear of the right edge
    ax.text(
        x - 3 if left_side else x + 3,
        (row + 0.5) * H / S + 4,  # just below the k= labels of the star's row
        f"centre in cell ({int(y / H * S)}, {int(x / W * S)})\n-> channel {int(y / H * S) * S + int(x / W * S)}",
        color="yellow",
        fontsize=9,
        weight="bold",
        ha="right" if left_side else "left",
        va="top",
        zorder=4,
        bbox=dict(facecolor="black", alpha=0.7, lw=0, pad=2),
    )
ax.set_title(f"A {S} x {S} grid: the object centred in cell (i, j) goes to channel k = i*S + j")
plt.show()

# %% [markdown]
# ## 2. The outputs of a small SOLO
#
# We build a small SOLO (the `tiny` preset, slimmed so it trains in seconds on a CPU) and look
# at the shapes it returns for one 128 × 128 image. Per level: `mask` is $[B, S^2, h, w]$ with
# $h = H / (\text{stride}/2)$ (the mask branch upsamples its input ×2), and `category` is
# $[B, C, S, S]$.

# %%
config = minisolo.preset(
    "tiny",
    num_classes=2,
    backbone_width=16,
    fpn_channels=32,
    head_channels=32,
    stacked_convs=2,
    num_groups=8,
)
torch.manual_seed(0)
model = minisolo.SOLO(config).to(device)
images = image[None].to(device)
targets = [{"masks": masks.to(device), "labels": labels.to(device)}]
with torch.no_grad():
    untrained = model(images)

print(f"{'level':>5} {'S':>4} {'stride':>6} {'mask output':>22} {'category output':>18}")
for level, (grid, stride) in enumerate(zip(config.grids, config.strides)):
    mask_shape = tuple(untrained["mask"][level].shape)
    print(
        f"{level:>5} {grid:>4} {stride:>6} {str(mask_shape):>22} {str(tuple(untrained['category'][level].shape)):>18}"
    )
    assert mask_shape == (1, grid * grid, H // (stride // 2), W // (stride // 2))

# %%
level_targets = minisolo.solo_targets(
    masks,
    labels,
    num_classes=config.num_classes,
    grids=config.grids,
    scale_ranges=config.scale_ranges,
    strides=config.strides,
)
print("positive cells (level, object, cell (i, j), channel k):")
for level, lt in enumerate(level_targets):
    grid = config.grids[level]
    for k, obj in zip(lt.positive_index.tolist(), lt.instance.tolist()):
        print(
            f"  level {level} (S={grid:2d})  object {obj}  cell ({k // grid:2d}, {k % grid:2d})  channel {k}"
        )

# %% [markdown]
# ### A quick training run
#
# Random weights give random masks. To see the channels do their job, we over-fit this one
# image for a few hundred steps with `model.loss` (notebook 04): a toy, but every positive
# channel must learn to draw *its* object, and the other channels get no mask training.

# %%
STEPS = 100 if FAST else 300
if device.type == "cpu":
    # a model this small gains little from several CPU threads, and on a busy machine the
    # threads wait for each other: one thread is the fast choice here
    torch.set_num_threads(1)
optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
history = []
start = time.perf_counter()
model.train()
for _ in range(STEPS):
    losses = model.loss(model(images), targets)
    optimizer.zero_grad()
    losses["loss"].backward()
    optimizer.step()
    history.append({name: float(value.detach()) for name, value in losses.items()})
print(f"{STEPS} steps in {time.perf_counter() - start:.1f} s; final loss {history[-1]['loss']:.3f}")

model.eval()
with torch.no_grad():
    trained = model(images)

fig, ax = plt.subplots(figsize=(9, 3.5))
ax.plot([h["loss_cate"] for h in history], label="L_cate (focal)")
ax.plot([h["loss_mask"] for h in history], label="L_mask (Dice)")
ax.set_xlabel("step")
ax.set_ylabel("loss")
ax.set_yscale("log")
ax.set_title("Over-fitting one image")
ax.legend()
plt.show()

# %% [markdown]
# ## 3. Reading one channel
#
# Pick an object, a level where it is positive, and one of its cells $(i, j)$: its mask is
# channel $k = i S + j$ of that level. Next to it we show the channel of a cell where no
# object is centred: it received no mask training and shows whatever it likes; at test time
# the category branch says "nothing here" and that channel is never read.

# %%
# the level whose positive cells predict the most mask area (the biggest objects), and its first positive cell
level = max(
    range(len(level_targets)),
    key=lambda l: level_targets[l].masks.float().mean(dim=(1, 2)).sum().item(),
)
grid = config.grids[level]
k = level_targets[level].positive_index[0].item()
i, j = k // grid, k % grid
background = (level_targets[level].category == config.num_classes).nonzero()
far = background[(background[:, 0] - i).abs() + (background[:, 1] - j).abs() > grid // 2][0]
k_far = (far[0] * grid + far[1]).item()

panels = [
    (level_targets[level].masks[0].float(), f"target of cell ({i}, {j})"),
    (torch.sigmoid(untrained["mask"][level][0, k]).cpu(), f"untrained: channel k={k}"),
    (torch.sigmoid(trained["mask"][level][0, k]).cpu(), f"trained: channel k={k} = {i}*{grid}+{j}"),
    (
        torch.sigmoid(trained["mask"][level][0, k_far]).cpu(),
        f"trained: channel {k_far}, an empty cell",
    ),
]
fig, axes = plt.subplots(1, 4, figsize=(17, 4.5))
for ax, (tensor, title) in zip(axes, panels):
    shown = ax.imshow(tensor, cmap="viridis", vmin=0, vmax=1)
    ax.set_title(title, fontsize=11)
    ax.set_xlabel("mask column")
    ax.set_ylabel("mask row")
fig.colorbar(shown, ax=axes, fraction=0.015, label="mask probability")
fig.suptitle(
    f"Level {level} (S = {grid}, masks at {tuple(trained['mask'][level].shape[-2:])})", fontsize=13
)
plt.show()


# %% [markdown]
# ## 4. A mosaic of all $S^2$ channels
#
# Lay the $S^2$ channels out as the grid itself: tile $(i, j)$ of the mosaic shows channel
# $k = iS + j$ (each tile is a whole mask, shrunk). Positive cells are outlined in cyan. The
# positive tiles each draw *their* object, at the object's place in the image; the other
# channels never received a mask loss and stay mostly undecided (grey-green, with faint echoes
# of the objects).


# %%
from matplotlib import patheffects

# the outline of a positive cell: cyan with a black edge, visible on any object colour and on
# every shade of viridis
POSITIVE_OUTLINE = dict(
    fill=False, ec="cyan", path_effects=[patheffects.withStroke(linewidth=4, foreground="black")]
)


def channel_mosaic(mask_logits, grid, tile=24):
    """[S*S, h, w] logits -> an (S*tile) x (S*tile) image; tile (i, j) = channel i*S + j."""
    probs = torch.sigmoid(mask_logits.float())
    tiles = F.interpolate(probs[None], size=(tile, tile), mode="bilinear", align_corners=False)[0]
    return (
        tiles.view(grid, grid, tile, tile)
        .permute(0, 2, 1, 3)
        .reshape(grid * tile, grid * tile)
        .cpu()
    )


def show_mosaic(ax, mosaic, grid, positives, title, tile=24):
    ax.imshow(mosaic, cmap="viridis", vmin=0, vmax=1)
    for line in range(1, grid):
        ax.axhline(line * tile - 0.5, color="white", lw=0.3)
        ax.axvline(line * tile - 0.5, color="white", lw=0.3)
    for k in positives:
        ax.add_patch(
            plt.Rectangle(
                ((k % grid) * tile - 0.5, (k // grid) * tile - 0.5),
                tile,
                tile,
                lw=2,
                **POSITIVE_OUTLINE,
            )
        )
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])


positives = level_targets[level].positive_index.tolist()
TILE = 24
mosaic = channel_mosaic(trained["mask"][level][0], grid, TILE)
# zoom: the 6 x 6 block of tiles around the first object's positive cells
first = level_targets[level].instance[0]
cells = level_targets[level].positive_index[level_targets[level].instance == first]
i_mid, j_mid = int((cells // grid).float().mean()), int((cells % grid).float().mean())
i_lo, j_lo = min(max(0, i_mid - 2), grid - 6), min(max(0, j_mid - 2), grid - 6)

fig, axes = plt.subplots(1, 3, figsize=(20, 6.5), layout="constrained")
axes[0].imshow(image.permute(1, 2, 0).clamp(0, 1), extent=(0, W, H, 0))
for line in np.linspace(0, H, grid + 1):
    axes[0].axhline(line, color="white", lw=0.5)
    axes[0].axvline(line, color="white", lw=0.5)
for k in positives:
    axes[0].add_patch(
        plt.Rectangle(
            ((k % grid) * W / grid, (k // grid) * H / grid),
            W / grid,
            H / grid,
            lw=1.5,
            **POSITIVE_OUTLINE,
        )
    )
axes[0].set_title(f"image, {grid} x {grid} grid of level {level}; cyan = positive cells")
show_mosaic(
    axes[1],
    mosaic,
    grid,
    positives,
    f"all {grid * grid} channels, channel i*S + j in tile (i, j)",
    TILE,
)
axes[1].add_patch(
    plt.Rectangle(
        (j_lo * TILE - 0.5, i_lo * TILE - 0.5),
        6 * TILE,
        6 * TILE,
        fill=False,
        ec="white",
        lw=2,
        ls="--",
    )
)
show_mosaic(
    axes[2],
    mosaic,
    grid,
    positives,
    f"zoom: rows {i_lo}..{i_lo + 5}, columns {j_lo}..{j_lo + 5}",
    TILE,
)
axes[2].set_xlim(j_lo * TILE - 0.5, (j_lo + 6) * TILE - 0.5)
axes[2].set_ylim((i_lo + 6) * TILE - 0.5, i_lo * TILE - 0.5)
axes[2].set_xticks([(j_lo + t + 0.5) * TILE for t in range(6)], [f"j={j_lo + t}" for t in range(6)])
axes[2].set_yticks([(i_lo + t + 0.5) * TILE for t in range(6)], [f"i={i_lo + t}" for t in range(6)])
# one scale for the mosaic and its zoom (both show sigmoid probabilities, 0..1)
fig.colorbar(axes[1].images[0], ax=axes[1:], fraction=0.02, pad=0.01, label="mask probability")
plt.show()

# %% [markdown]
# ## 5. Decoupled SOLO: $2S$ channels instead of $S^2$
#
# At $S = 40$ the vanilla head outputs 1600 full-resolution masks on its finest level. Decoupled SOLO
# (paper Sec. 3.5) predicts two sets of $S$ maps instead:
#
# * $X_j$, $j = 1..S$: "the masks of the objects centred in **column** $j$";
# * $Y_i$, $i = 1..S$: "the masks of the objects centred in **row** $i$".
#
# The object centred in cell $(i, j)$ is in both, so its mask is the element-wise product
# $\sigma(Y_i) \cdot \sigma(X_j)$. Here is the idea with ideal maps for three objects: A in cell
# (1, 1), B in (1, 3) (same row as A) and C in (3, 1) (same column as A).

# %%
S_DEMO = 5
demo_image, demo_masks, _ = toy_scene(
    [("disc", 38, 38, 16), ("square", 38, 90, 14), ("disc", 90, 38, 14)], seed=3
)
names = ["A", "B", "C"]
cx, cy = minisolo.targets.center_of_mass(demo_masks)
rows_of = (cy / H * S_DEMO).long()
cols_of = (cx / W * S_DEMO).long()
print("cells:", {n: (int(r), int(c)) for n, r, c in zip(names, rows_of, cols_of)})

i, j = int(rows_of[0]), int(cols_of[0])  # the cell of A
X_j = demo_masks[cols_of == j].any(dim=0).float()  # every object centred in column j
Y_i = demo_masks[rows_of == i].any(dim=0).float()  # every object centred in row i

fig, axes = plt.subplots(1, 4, figsize=(18, 4.8))
panels = [
    (demo_image.permute(1, 2, 0).clamp(0, 1), "image: A, B (same row), C (same column)"),
    (X_j, f"X_{j}: objects centred in column {j} (A, C)"),
    (Y_i, f"Y_{i}: objects centred in row {i} (A, B)"),
    (X_j * Y_i, f"Y_{i} * X_{j}: the mask of cell ({i}, {j}) = A"),
]
for ax, (picture, title) in zip(axes, panels):
    ax.imshow(picture, cmap="gray" if picture.dim() == 2 else None, extent=(0, W, H, 0))
    for line in np.linspace(0, H, S_DEMO + 1):
        ax.axhline(line, color="tab:orange", lw=0.6)
        ax.axvline(line, color="tab:orange", lw=0.6)
    ax.set_title(title, fontsize=11)
    ax.set_xticks([])
    ax.set_yticks([])
plt.tight_layout()
plt.show()

# %% [markdown]
# In the real model, the X branch sees the features plus only the $x$ coordinate, and the Y
# branch only $y$ (notebook 01, exercise 2): each branch can tell apart exactly one direction.
# The package builds both heads; let us read the mask of a cell from each, by hand and with
# `model.head.cell_mask_probs`.

# %%
torch.manual_seed(0)
decoupled = minisolo.DecoupledSOLO(config).to(device).eval()
with torch.no_grad():
    decoupled_out = decoupled(images)
print(f"{'level':>5} {'S':>4} {'SOLO mask':>22} {'Decoupled mask_x':>20} {'Decoupled mask_y':>20}")
for level, grid in enumerate(config.grids):
    print(
        f"{level:>5} {grid:>4} {str(tuple(untrained['mask'][level].shape)):>22} "
        f"{str(tuple(decoupled_out['mask_x'][level].shape)):>20} {str(tuple(decoupled_out['mask_y'][level].shape)):>20}"
    )

# %% [markdown]
# ### Check: our reading of the channels against the package

# %%
from torch.testing import assert_close

for level, grid in enumerate(config.grids):
    rows = torch.arange(grid, device=device).repeat_interleave(
        grid
    )  # every cell (i, j) of the grid
    cols = torch.arange(grid, device=device).repeat(grid)
    # vanilla SOLO: the mask of cell (i, j) is channel k = i*S + j
    by_hand = torch.sigmoid(trained["mask"][level][0, rows * grid + cols])
    assert_close(by_hand, model.head.cell_mask_probs(trained, level, 0, rows, cols))
    # Decoupled SOLO: sigmoid(Y_i) * sigmoid(X_j)
    by_hand = torch.sigmoid(decoupled_out["mask_y"][level][0, rows]) * torch.sigmoid(
        decoupled_out["mask_x"][level][0, cols]
    )
    assert_close(by_hand, decoupled.head.cell_mask_probs(decoupled_out, level, 0, rows, cols))
    assert (
        decoupled_out["mask_x"][level].shape[1] == decoupled_out["mask_y"][level].shape[1] == grid
    )
print(
    "cell_mask_probs matches k = i*S + j (SOLO) and sigmoid(Y_i) * sigmoid(X_j) (Decoupled SOLO) on every cell"
)


# %% [markdown]
# ## 6. Memory arithmetic at the paper's size
#
# The paper trains at a short side of 800 px; a typical COCO image becomes 800 × 1216 after
# padding to a multiple of 32. Level $l$ predicts masks at stride $s_l / 2$ with $s = (8, 8,
# 16, 32, 32)$, so its mask output holds $C_l \times \frac{H}{s_l/2} \times \frac{W}{s_l/2}$
# floats, with $C_l = S_l^2$ (SOLO) or $2 S_l$ (Decoupled SOLO).


# %%
def mask_output_floats(grids, strides, height, width, decoupled=False):
    """Number of floats in each level's mask output for one image."""
    counts = []
    for grid, stride in zip(grids, strides):
        h, w = height // (stride // 2), width // (stride // 2)
        channels = 2 * grid if decoupled else grid * grid
        counts.append(channels * h * w)
    return counts


paper = minisolo.preset("paper", num_classes=80)
PAPER_H, PAPER_W = 800, 1216
solo_floats = mask_output_floats(paper.grids, paper.strides, PAPER_H, PAPER_W)
decoupled_floats = mask_output_floats(paper.grids, paper.strides, PAPER_H, PAPER_W, decoupled=True)
MB = 4 / 2**20  # float32 bytes -> MiB
print(
    f"{'level':>5} {'S':>4} {'mask size':>10} {'SOLO ch':>8} {'SOLO MiB':>9} {'Dec. ch':>8} {'Dec. MiB':>9}"
)
for level, (grid, stride) in enumerate(zip(paper.grids, paper.strides)):
    size = f"{PAPER_H // (stride // 2)}x{PAPER_W // (stride // 2)}"
    print(
        f"{level:>5} {grid:>4} {size:>10} {grid * grid:>8} {solo_floats[level] * MB:>9.1f} {2 * grid:>8} {decoupled_floats[level] * MB:>9.1f}"
    )
print(
    f"{'total':>5} {'':>4} {'':>10} {sum(g * g for g in paper.grids):>8} {sum(solo_floats) * MB:>9.1f} "
    f"{sum(2 * g for g in paper.grids):>8} {sum(decoupled_floats) * MB:>9.1f}"
)
print(
    f"Decoupled SOLO needs {sum(solo_floats) / sum(decoupled_floats):.0f}x less memory for its mask outputs"
)
# levels 0 and 1 have the largest grids *and* the largest masks (stride 4): S^2 * h * w
finest_share = sum(solo_floats[:2]) / sum(solo_floats)
print(f"SOLO: {finest_share:.0%} of the mask-output memory is in the two finest levels (0 and 1)")

# %%
x = np.arange(len(paper.grids))
fig, ax = plt.subplots(figsize=(11, 4.5))
bars_solo = ax.bar(x - 0.2, np.array(solo_floats) * MB, width=0.4, label="SOLO: S^2 channels")
bars_dec = ax.bar(
    x + 0.2, np.array(decoupled_floats) * MB, width=0.4, label="Decoupled SOLO: 2S channels"
)
ax.bar_label(bars_solo, fmt="%.1f", fontsize=9)
ax.bar_label(bars_dec, fmt="%.1f", fontsize=9)
ax.set_yscale("log")
ax.set_xticks(
    x,
    [
        f"level {l}\nS={g}, mask stride {s // 2}"
        for l, (g, s) in enumerate(zip(paper.grids, paper.strides))
    ],
)
ax.set_ylabel("MiB per image (float32, log scale)")
ax.set_title(
    f"Mask-branch output per image at {PAPER_H} x {PAPER_W}: "
    f"{sum(solo_floats) * MB:.0f} MiB vs {sum(decoupled_floats) * MB:.0f} MiB"
)
ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# About 0.7 GiB per image just for the last layer's output, before the activations of the
# towers and the gradients are counted (the paper trains with 2 images per GPU), and nearly all
# of it (94 %, the last line above) in the two finest levels, where $S^2$ and the mask size are
# both largest. Decoupled SOLO cuts it by ~18× with a slightly *better* AP: 33.9 vs
# 32.9 mask AP on COCO minival for ResNet-50 with the 1× schedule, in the model zoo of the
# authors' official code ([WXinlong/SOLO](https://github.com/WXinlong/SOLO)), not in a table of
# the paper.
#
# ### Check: the formula against real outputs
#
# We instantiate the paper-size heads (grids 40 … 12, but few channels so they are cheap) and
# feed them features of a smaller image; the output sizes must match the formula.

# %%
from minisolo.solo import DecoupledSOLOHead, SOLOHead

check_h, check_w = (256, 384) if FAST else (512, 768)
small = minisolo.preset(
    "paper", num_classes=80, fpn_channels=16, head_channels=16, stacked_convs=1, num_groups=4
)
features = [torch.randn(1, 16, check_h // s, check_w // s, device=device) for s in small.strides]
with torch.no_grad():
    solo_head_out = SOLOHead(small).to(device)(features)
    decoupled_head_out = DecoupledSOLOHead(small).to(device)(features)
measured_solo = [t.numel() for t in solo_head_out["mask"]]
measured_decoupled = [
    a.numel() + b.numel()
    for a, b in zip(decoupled_head_out["mask_x"], decoupled_head_out["mask_y"])
]
assert_close(
    torch.tensor(measured_solo),
    torch.tensor(mask_output_floats(small.grids, small.strides, check_h, check_w)),
)
assert_close(
    torch.tensor(measured_decoupled),
    torch.tensor(mask_output_floats(small.grids, small.strides, check_h, check_w, decoupled=True)),
)
print(
    f"at {check_h} x {check_w}: SOLO head {sum(measured_solo):,} floats, Decoupled head {sum(measured_decoupled):,}: formula confirmed"
)

# %% [markdown]
# ## 7. Training needs only the positive channels
#
# The loss (notebook 04) reads the masks of the **positive** cells only: a handful of the $S^2$
# channels. The last layer of the mask branch is a $1 \times 1$ conv, i.e. for channel $k$ and
# every pixel, $m_k = w_k \cdot f + b_k$ with the tower feature $f$. Before it comes a ×2
# bilinear upsampling $U$, which is linear with weights that sum to 1, so
#
# $$w_k \cdot U(f) + b_k = U(w_k \cdot f + b_k).$$
#
# So we can apply the $P$ positive rows $w_k$ to the tower output *before* the upsampling, and
# never compute the other $S^2 - P$ channels. `engine.train` does this: `model(images,
# full_masks=False)` returns the tower features, and `model.head.cell_mask_logits` computes the
# requested channels from them. We derive it by hand on level 0 first.

# %%
level = 0
grid = config.grids[level]
lt = level_targets[level]
rows, cols = lt.positive_index // grid, lt.positive_index % grid
model.eval()
with torch.no_grad():
    features = model.features(images)
    x = features[level]
    tower = model.head.mask_tower(torch.cat([x, minisolo.coord_features(x)], dim=1))  # [1, c, h, w]
    conv = model.head.mask_outputs[level]
    w = conv.weight[lt.positive_index, :, 0, 0]  # [P, c]: one row per positive channel
    low = torch.einsum("pc,chw->phw", w, tower[0]) + conv.bias[lt.positive_index][:, None, None]
    by_hand = F.interpolate(low[None], scale_factor=2, mode="bilinear", align_corners=False)[0]
    full = model(images)["mask"][level][0, lt.positive_index]  # all S^2 channels, then pick
print(
    f"level {level}: {len(lt.positive_index)} positive channels of {grid * grid}; "
    f"largest difference {float((by_hand - full).abs().max()):.1e}"
)

# %% [markdown]
# ### Check: the derivation against the package
#
# The package's training path must give the same logits for every positive cell; the loss
# computed both ways must agree too.

# %%
with torch.no_grad():
    lazy = model(images, full_masks=False)
    print(
        "training outputs:",
        sorted(lazy),
        "| mask_features per level:",
        [tuple(t.shape[1:]) for t in lazy["mask_features"]],
    )
    assert_close(
        model.head.cell_mask_logits(lazy, level, 0, rows, cols), by_hand, rtol=1e-4, atol=1e-5
    )
    assert_close(by_hand, full, rtol=1e-4, atol=1e-5)
    loss_full = model.loss(model(images), targets)["loss"]
    loss_lazy = model.loss(lazy, targets)["loss"]
assert_close(loss_lazy, loss_full, rtol=1e-4, atol=1e-5)
computed = sum(lt.num_positives for lt in level_targets)
print(
    f"same logits and same loss ({float(loss_lazy):.4f}); mask channels computed: {computed} "
    f"instead of {sum(g * g for g in config.grids)}"
)

# %% [markdown]
# ## Exercises
#
# 1. **From channel back to cell (code).** Write `cell_of_channel(k, S)` returning `(i, j)`.
#    Assert the round trip `k -> (i, j) -> i*S + j` for every `k` at `S = 12`, and that for every
#    positive index of `level_targets`, the category map at `(i, j)` is not background.
# 2. **Gather a batch of positive masks at once (code).** `solo_targets_batch` numbers the
#    positives of a batch as `b * S * S + k`. Reshape a level's mask output `[B, S*S, h, w]` to
#    `[B*S*S, h, w]` and gather all positive masks with one indexing operation. Assert that it
#    equals reading `outputs["mask"][level][b, k]` image by image.
# 3. **Ghost masks in Decoupled SOLO (code).** Place two objects that overlap, A centred in
#    cell (1, 1) and D in cell (2, 2) of a 5 × 5 grid (ideal maps, as in section 5). The product
#    for cell (1, 2), where no object is centred, is $Y_1 \cdot X_2$. Assert that it equals
#    A ∩ D and is not empty. Who stops this ghost from becoming a detection?
# 4. **Think.** Why does the X branch see only the $x$ coordinate? What could go wrong if it
#    also saw $y$?

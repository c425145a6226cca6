# %% [markdown]
# # 01 · CoordConv: giving a convolution a sense of place
#
# SOLO predicts the mask of the object whose centre lies in grid cell $(i, j)$ in output channel
# $k = i \cdot S + j$. The *same* object must therefore come out in a *different channel* when it
# sits somewhere else. Ordinary convolutions cannot do that. This notebook shows why, and how
# two extra input channels (CoordConv, Liu et al. 2018; SOLO paper Sec. 3.3) fix it.
#
# **What you will learn**
#
# - why a convolution is *translation-equivariant* (shift the input → the output shifts), shown on a picture;
# - why that property is exactly wrong for SOLO's mask branch;
# - how to build the two coordinate channels by hand, and how `minisolo.CoordConv2d` uses them;
# - a small experiment: a "SOLO with a 2 × 2 grid" that a plain conv net cannot learn and a CoordConv net learns in a few hundred steps.
#
# **Prerequisites:** PyTorch basics (`nn.Conv2d`, a training loop). About 20 minutes.

# %%
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt
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
# ## 1. A convolution does not know where it is
#
# A convolution applies the same small filter at every position. So if we move the input, the
# output moves with it and is otherwise unchanged:
# $\;\mathrm{conv}(\mathrm{shift}(x)) = \mathrm{shift}(\mathrm{conv}(x))$.
# Let us check this with a random two-layer conv net and an image holding one square.


# %%
def square_image(top, left, size=8, height=48, width=48):
    """A [1, 1, H, W] image that is 1 inside one square and 0 elsewhere."""
    image = torch.zeros(1, 1, height, width)
    image[..., top : top + size, left : left + size] = 1.0
    return image


torch.manual_seed(0)
# no bias: the empty background stays exactly 0, so the image border plays no role here
random_net = torch.nn.Sequential(
    torch.nn.Conv2d(1, 4, 5, padding=2, bias=False),
    torch.nn.ReLU(),
    torch.nn.Conv2d(4, 1, 5, padding=2, bias=False),
)

shift = (20, 24)  # rows, columns
image = square_image(8, 6)
image_moved = square_image(8 + shift[0], 6 + shift[1])
with torch.no_grad():
    out = random_net(image)
    out_moved = random_net(image_moved)

# conv(shift(x)) == shift(conv(x)): torch.roll moves the output by the same amount
difference = (out_moved - torch.roll(out, shifts=shift, dims=(-2, -1))).abs().max().item()
print(f"max |conv(shift(x)) - shift(conv(x))| = {difference:.2e}")

# %%
fig, axes = plt.subplots(1, 4, figsize=(16, 4))
# the two inputs share one colour scale, the two outputs another (the output can be negative)
out_range = (min(out.min(), out_moved.min()).item(), max(out.max(), out_moved.max()).item())
panels = [
    (image, "input x", (0.0, 1.0), "pixel value"),
    (out, "conv(x)", out_range, "response"),
    (image_moved, f"shifted input (down {shift[0]}, right {shift[1]})", (0.0, 1.0), "pixel value"),
    (out_moved, "conv(shifted x): the same response, moved", out_range, "response"),
]
for ax, (tensor, title, (low, high), unit) in zip(axes, panels):
    shown = ax.imshow(tensor[0, 0], cmap="magma", vmin=low, vmax=high)
    fig.colorbar(shown, ax=ax, fraction=0.046, label=unit)
    ax.set_title(title, fontsize=11)
    ax.set_xlabel("column")
    ax.set_ylabel("row")
fig.suptitle("Translation equivariance: the network's answer follows the object", fontsize=13)
plt.tight_layout()
plt.show()

# %% [markdown]
# **Why this is a problem for SOLO.** SOLO's mask branch has $S^2$ output channels and channel
# $k = i \cdot S + j$ must hold the mask of the object centred in cell $(i, j)$ and stay empty
# otherwise. Move the object to another cell and the mask must *jump to another channel*.
# An equivariant network can only move its answer *within* each channel, so it cannot choose
# the channel from the object's position. (Zero padding leaks a little position near the
# image border, but in the middle of the image a plain conv net is blind to where it is.)
#
# The fix (CoordConv): feed the network the position itself, as two extra input channels that
# hold each pixel's $x$ and $y$ coordinate.

# %% [markdown]
# ## 2. The coordinate channels, by hand
#
# For a feature map of height $H$ and width $W$, channel 0 holds the **x (column)** coordinate
# and channel 1 the **y (row)** coordinate, each running linearly from $-1$ (left / top) to $+1$
# (right / bottom), as the official SOLO head builds them with `torch.linspace(-1, 1, W)`.

# %%
H, W = 4, 6
x_coord = torch.linspace(-1, 1, W).view(1, W).expand(H, W)  # varies along columns
y_coord = torch.linspace(-1, 1, H).view(H, 1).expand(H, W)  # varies along rows
print("x channel (columns):\n", x_coord)
print("y channel (rows):\n", y_coord)


# %%
def coord_channels_by_hand(features):
    """[N, C, H, W] -> [N, 2, H, W]: channel 0 = x in [-1, 1], channel 1 = y in [-1, 1]."""
    n, _, h, w = features.shape
    xs = torch.linspace(-1, 1, w, device=features.device).view(1, 1, 1, w).expand(n, 1, h, w)
    ys = torch.linspace(-1, 1, h, device=features.device).view(1, 1, h, 1).expand(n, 1, h, w)
    return torch.cat([xs, ys], dim=1)


features = torch.randn(2, 8, 40, 64)  # e.g. a batch of two FPN feature maps
coords = coord_channels_by_hand(features)

fig, axes = plt.subplots(1, 2, figsize=(12, 4))
for ax, channel, name in zip(axes, range(2), ["channel 0: x (column)", "channel 1: y (row)"]):
    shown = ax.imshow(coords[0, channel], cmap="coolwarm", vmin=-1, vmax=1)
    ax.set_title(name)
    ax.set_xlabel("column")
    ax.set_ylabel("row")
    fig.colorbar(shown, ax=ax, fraction=0.03, label="coordinate value")
fig.suptitle("The two coordinate channels CoordConv concatenates to the features", fontsize=13)
plt.tight_layout()
plt.show()

# %% [markdown]
# A **CoordConv** is then an ordinary convolution over `cat([features, coords])`: it has 2 more
# input channels. SOLO adds the coordinates once, at the input of the mask tower (paper Sec. 3.3:
# "we directly concatenate normalised pixel coordinates to the input features"); the network
# can carry the position through the following layers.
#
# ### Check: our derivation against the package
#
# `minisolo.coord_features` and `minisolo.CoordConv2d` must give exactly what we built by hand.

# %%
from torch.testing import assert_close

# 1) the coordinate channels
assert_close(coord_channels_by_hand(features), minisolo.coord_features(features))

# 2) CoordConv2d == Conv2d over cat([features, coords]) with the same weights
coordconv = minisolo.CoordConv2d(8, 16, 3, padding=1)
plain = torch.nn.Conv2d(8 + 2, 16, 3, padding=1)
plain.load_state_dict(coordconv.state_dict())
with torch.no_grad():
    assert_close(coordconv(features), plain(torch.cat([features, coords], dim=1)))

# 3) ... and a CoordConv is no longer translation-equivariant
with torch.no_grad():
    moved = torch.roll(features, shifts=(10, 20), dims=(-2, -1))
    gap = (coordconv(moved) - torch.roll(coordconv(features), (10, 20), (-2, -1))).abs().max()
print(f"CoordConv: max |conv(shift(x)) - shift(conv(x))| = {gap:.3f}  (no longer 0)")
print("coord_features and CoordConv2d match the derivation")

# %% [markdown]
# ## 3. Experiment: a SOLO with a 2 × 2 grid
#
# Here is the smallest task with SOLO's difficulty. Each 32 × 32 image holds one disc, inside
# one cell $(i, j)$ of a 2 × 2 grid. The network outputs $S^2 = 4$ channels; channel
# $k = i \cdot 2 + j$ must contain the disc's mask and the other three channels must stay
# empty. The disc looks the same in every cell: only its *position* says which channel to use. We train two networks that differ *only* in their first layer: a plain
# `Conv2d` versus a `CoordConv2d`. Both have a receptive field of 9 pixels, so neither can see
# the whole image at once.

# %%
GRID, SIZE = 2, 32  # S = 2, images of 32 x 32 pixels


def disc_batch(batch_size, generator):
    """Images with one disc each, and S*S-channel targets: the mask sits in channel i*S + j."""
    radius = torch.randint(3, 6, (batch_size,), generator=generator).float()
    cell = SIZE // GRID  # 16 pixels per cell
    i = torch.randint(0, GRID, (batch_size,), generator=generator)  # the cell (i, j) of the disc
    j = torch.randint(0, GRID, (batch_size,), generator=generator)
    cy = i * cell + radius + torch.rand(batch_size, generator=generator) * (cell - 1 - 2 * radius)
    cx = j * cell + radius + torch.rand(batch_size, generator=generator) * (cell - 1 - 2 * radius)
    rows = torch.arange(SIZE).view(1, SIZE, 1).float()
    cols = torch.arange(SIZE).view(1, 1, SIZE).float()
    masks = (rows - cy.view(-1, 1, 1)) ** 2 + (cols - cx.view(-1, 1, 1)) ** 2 <= radius.view(
        -1, 1, 1
    ) ** 2
    assert torch.equal((cy / SIZE * GRID).long(), i)  # paper: i = floor(cy / H * S)
    channel = i * GRID + j  # k = i * S + j
    images = masks.float()[:, None] + 0.1 * torch.randn(
        batch_size, 1, SIZE, SIZE, generator=generator
    )
    targets = torch.zeros(batch_size, GRID * GRID, SIZE, SIZE)
    targets[torch.arange(batch_size), channel] = masks.float()
    return images, targets, channel


WIDTH = 16  # channels per layer


def make_net(first_layer):
    """Four 3x3 layers (receptive field 9 px) then a 1x1 conv to S*S channels."""
    return torch.nn.Sequential(
        first_layer,
        torch.nn.ReLU(),
        torch.nn.Conv2d(WIDTH, WIDTH, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(WIDTH, WIDTH, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(WIDTH, WIDTH, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(WIDTH, GRID * GRID, 1),
    )


images, targets, channel = disc_batch(4, torch.Generator().manual_seed(1))
fig, axes = plt.subplots(2, 5, figsize=(15, 6.8))
for row in range(2):
    axes[row, 0].imshow(images[row, 0], cmap="gray")
    axes[row, 0].set_title(f"input (disc in cell k={channel[row].item()})", fontsize=11)
    for k in range(GRID * GRID):
        axes[row, k + 1].imshow(targets[row, k], cmap="viridis", vmin=0, vmax=1)
        axes[row, k + 1].set_title(f"target k={k} (i={k // GRID}, j={k % GRID})", fontsize=11)
for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
fig.suptitle(
    "The task: the mask must go to the channel of the cell holding the centre", fontsize=13
)
plt.tight_layout()
plt.show()

# %%
STEPS = 200 if FAST else 600
BATCH = 16


def train(net, steps=STEPS, seed=0):
    """Adam on per-pixel BCE; returns the loss after every step."""
    net = net.to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)  # both nets see the same batches
    losses = []
    for _ in range(steps):
        images, targets, _ = disc_batch(BATCH, generator)
        logits = net(images.to(device))
        loss = F.binary_cross_entropy_with_logits(logits, targets.to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


if device.type == "cpu":
    # tensors this small gain nothing from several CPU threads, and on a busy machine the
    # threads wait for each other: one thread is the fast choice here
    torch.set_num_threads(1)
torch.manual_seed(0)
plain_net = make_net(torch.nn.Conv2d(1, WIDTH, 3, padding=1))
torch.manual_seed(0)
coord_net = make_net(minisolo.CoordConv2d(1, WIDTH, 3, padding=1))
start = time.perf_counter()
plain_losses = train(plain_net)
coord_losses = train(coord_net)
print(f"trained 2 x {STEPS} steps in {time.perf_counter() - start:.1f} s")


# %%
@torch.no_grad()
def channel_accuracy(net, n=512):
    """How often the channel with the most mask mass is the right cell."""
    images, _, channel = disc_batch(n, torch.Generator().manual_seed(123))
    probs = torch.sigmoid(net(images.to(device))).cpu()
    return (probs.sum(dim=(2, 3)).argmax(dim=1) == channel).float().mean().item()


accuracy = {"plain Conv2d": channel_accuracy(plain_net), "CoordConv2d": channel_accuracy(coord_net)}

fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(14, 4.5), gridspec_kw={"width_ratios": [2, 1]})
ax_loss.plot(plain_losses, label="plain Conv2d", color="tab:red", alpha=0.8)
ax_loss.plot(coord_losses, label="CoordConv2d", color="tab:blue", alpha=0.8)
ax_loss.set_yscale("log")
ax_loss.set_xlabel("training step")
ax_loss.set_ylabel("BCE loss (log scale)")
ax_loss.set_title("Training loss on the 2 x 2 grid task")
ax_loss.legend()
bars = ax_acc.bar(list(accuracy), list(accuracy.values()), color=["tab:red", "tab:blue"])
ax_acc.bar_label(bars, fmt="%.2f")
ax_acc.axhline(0.25, color="gray", ls="--", label="chance (1 of 4)")
ax_acc.set_ylim(0, 1.1)
ax_acc.set_ylabel("fraction of test images")
ax_acc.set_title("Right channel has the most mask")
ax_acc.legend(loc="lower right")
plt.tight_layout()
plt.show()
print({name: round(value, 3) for name, value in accuracy.items()})

# %%
images, targets, channel = disc_batch(3, torch.Generator().manual_seed(7))
with torch.no_grad():
    predictions = {
        "plain": torch.sigmoid(plain_net(images.to(device))).cpu(),
        "coord": torch.sigmoid(coord_net(images.to(device))).cpu(),
    }
fig, axes = plt.subplots(3, 9, figsize=(19, 6.5), layout="constrained")
for row in range(3):
    axes[row, 0].imshow(images[row, 0], cmap="gray")
    axes[row, 0].set_title(f"input, right k={channel[row].item()}", fontsize=10)
    for col, (name, probs) in enumerate(predictions.items()):
        for k in range(GRID * GRID):
            ax = axes[row, 1 + col * 4 + k]
            shown = ax.imshow(probs[row, k], cmap="viridis", vmin=0, vmax=1)
            ax.set_title(
                f"{name}: k={k}", fontsize=10, color="tab:red" if name == "plain" else "tab:blue"
            )
for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
fig.suptitle(
    "Predicted channels: the plain net smears the disc over channels, CoordConv picks one",
    fontsize=13,
)
fig.colorbar(shown, ax=axes[:, 1:], fraction=0.02, pad=0.01, label="mask probability")
plt.show()

# %% [markdown]
# **What happened.** The plain network cannot tell the cells apart: it sees the same disc
# everywhere, so the best it can do is hedge, spreading a faint disc over all four channels
# (its accuracy stays near chance). With two coordinate channels, the same network learns
# "top-left ⇒ channel 0" in a few hundred steps. This is why SOLO concatenates coordinates to the
# input of its mask branch (and why Decoupled SOLO's X branch gets the $x$ coordinate and its
# Y branch the $y$ coordinate: notebook 03).

# %% [markdown]
# ## Exercises
#
# 1. **Exact equivariance (code).** With zero padding, equivariance only holds away from the
#    border. Build a two-layer conv net *with* bias and `padding_mode="circular"`, and show with
#    `assert_close` that `net(torch.roll(x, s)) == torch.roll(net(x), s)` holds *everywhere* for
#    a random input `x` of shape `[1, 1, 32, 32]` and the shift `s = (5, 11)`.
# 2. **Half a CoordConv (code).** Decoupled SOLO's X branch sees the features plus only the $x$
#    coordinate. Build a circular-padding conv over `cat([x, coord_features(x)[:, :1]])` and
#    assert that it is still equivariant to *vertical* shifts but not to horizontal ones.
# 3. **Can depth replace coordinates? (experiment)** Give the plain network a receptive field
#    larger than the image (e.g. dilations 1, 2, 4, 8) so zero padding can tell it where the
#    border is. Train it with `train(...)` and compare `channel_accuracy` with the CoordConv net.
# 4. **Think.** SOLO's category branch has no coordinate channels. Why does it not need them?
#    (Hint: where does the category branch put its answer for cell $(i, j)$?)

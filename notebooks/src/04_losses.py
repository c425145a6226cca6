# %% [markdown]
# # 04 · Losses: focal loss for the grid, Dice loss for the masks
#
# SOLO trains two outputs per FPN level: a class score for each of the $S \times S$ grid cells,
# and a mask for each *positive* cell. Both face an imbalance problem, and each gets a loss
# designed for it (paper Sec. 3.3, Eq. 1–3):
#
# $$L = L_{cate} + \lambda\, L_{mask}, \qquad \lambda = 3.$$
#
# **What you will learn**
#
# - why the category branch is extremely imbalanced, and how the **focal loss** fixes it (plotted against cross entropy for several $\gamma$);
# - why the masks use the **Dice loss** rather than per-pixel BCE (values and gradients on a small object);
# - SOLO's exact normalisation: focal loss *summed* and divided by (number of positive cells + 1), Dice *averaged* over positive cells;
# - how to recompute `SOLO.loss` by hand on a tiny batch, and check it.
#
# **Prerequisites:** notebooks 02 (which cells are positive) and 03 (mask channel $k = iS + j$);
# binary cross entropy. About 25 minutes.

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
# ## 1. The category branch is (very) imbalanced
#
# Every cell of every level predicts $C$ independent sigmoid scores, one per class. With the
# paper's grids $S = 40, 36, 24, 16, 12$ and COCO's 80 classes that is a lot of binary
# predictions per image, and only the handful of cells near object centres are positive.

# %%
paper = minisolo.preset("paper", num_classes=80)
num_cells = sum(s * s for s in paper.grids)
num_terms = num_cells * paper.num_classes
# the paper's "about 3" per level; notebook 02 measures 3.7 per level and 6.2 per object over all levels
objects_per_image, positives_per_object = 7, 3  # 7: a typical COCO image
num_positive_terms = objects_per_image * positives_per_object  # one class per positive cell
print(
    f"grids {paper.grids}: {num_cells} cells x {paper.num_classes} classes = {num_terms:,} binary terms per image"
)
print(f"positive terms: about {num_positive_terms} ({100 * num_positive_terms / num_terms:.4f} %)")


# %% [markdown]
# Suppose the network is at the start of training: it gives every negative term the prior
# probability $p = 0.01$ (SOLO initialises the classifier bias so), and positives $p = 0.3$.
# How much of the *total* loss comes from the positives?


# %%
def bce(p, target):
    return -np.log(p) if target == 1 else -np.log(1 - p)


def focal(p, target, gamma=2.0, alpha=0.25):
    p_t = p if target == 1 else 1 - p
    alpha_t = alpha if target == 1 else 1 - alpha
    return -alpha_t * (1 - p_t) ** gamma * np.log(p_t)


num_negative_terms = num_terms - num_positive_terms
totals = {
    "cross entropy": (num_negative_terms * bce(0.01, 0), num_positive_terms * bce(0.3, 1)),
    "focal (gamma=2, alpha=0.25)": (
        num_negative_terms * focal(0.01, 0),
        num_positive_terms * focal(0.3, 1),
    ),
}
fig, ax = plt.subplots(figsize=(11, 3.4))
for row, (negative, positive) in enumerate(totals.values()):
    share = positive / (negative + positive)
    ax.barh(
        row, 1 - share, color="tab:gray", label="easy negatives (p = 0.01)" if row == 0 else None
    )
    ax.barh(
        row,
        share,
        left=1 - share,
        color="tab:red",
        label="positives (p = 0.3)" if row == 0 else None,
    )
    ax.text(1.02, row, f"positives:\n{100 * share:.1f} % of the loss", va="center")
ax.set_yticks(range(len(totals)), list(totals))
ax.invert_yaxis()
ax.set_xlim(0, 1.3)
ax.set_xlabel("share of the total category loss")
ax.set_title(f"{num_negative_terms:,} easy negative terms vs {num_positive_terms} positive terms")
ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2)
plt.tight_layout()
plt.show()

# %% [markdown]
# With cross entropy, the positives are drowned: 99 % of the loss (and of the gradient) says
# "these easy background cells are background", which the network already knows. The focal
# loss (Lin et al., 2017) multiplies each term by $(1 - p_t)^\gamma$, where $p_t$ is the
# probability of the correct answer. Well-classified terms ($p_t \to 1$) get almost no weight:
#
# $$\mathrm{FL}(p_t) = -\alpha_t\,(1 - p_t)^\gamma \log p_t,\qquad
# p_t = \begin{cases} p & y = 1\\ 1 - p & y = 0\end{cases},\quad
# \alpha_t = \begin{cases} \alpha & y = 1\\ 1-\alpha & y = 0\end{cases}$$
#
# SOLO uses $\gamma = 2$, $\alpha = 0.25$.

# %%
p_t = np.linspace(0.001, 1, 400)
fig, (ax, ax_log) = plt.subplots(1, 2, figsize=(15, 5))
for gamma in [0, 0.5, 1, 2, 5]:
    loss = (1 - p_t) ** gamma * -np.log(p_t)
    label = "cross entropy (gamma = 0)" if gamma == 0 else f"gamma = {gamma}"
    ax.plot(p_t, loss, lw=2.5 if gamma in (0, 2) else 1.5, label=label)
    ax_log.plot(p_t, loss, lw=2.5 if gamma in (0, 2) else 1.5, label=label)
ax.axvspan(0.6, 1.0, color="tab:green", alpha=0.08)
ax.text(0.8, 3.5, "well classified\n(p_t > 0.6)", ha="center", color="tab:green")
ax.set_ylim(0, 5)
ax.set_title("Focal loss without alpha, as in Lin et al. Fig. 1")
ax_log.set_yscale("log")
ax_log.set_ylim(1e-6, 10)
ax_log.set_title("Same, log scale: an easy term (p_t = 0.99) is ~10^4 times lighter")
for a in (ax, ax_log):
    a.set_xlabel("p_t, probability of the right answer")
    a.set_ylabel("loss")
    a.legend()
plt.tight_layout()
plt.show()


# %% [markdown]
# ### The focal loss by hand
#
# We work on logits and use `logsigmoid` for $\log p$ and $\log(1 - p)$, which stays accurate for
# large logits where `torch.log(torch.sigmoid(x))` would underflow.


# %%
def focal_loss_by_hand(logits, targets, gamma=2.0, alpha=0.25):
    """Per-element focal loss; targets are one-hot floats (0 or 1)."""
    p = torch.sigmoid(logits)
    is_positive = targets == 1
    p_t = torch.where(is_positive, p, 1 - p)
    log_p_t = torch.where(is_positive, F.logsigmoid(logits), F.logsigmoid(-logits))
    alpha_t = torch.where(is_positive, alpha, 1 - alpha)
    return -alpha_t * (1 - p_t) ** gamma * log_p_t


generator = torch.Generator().manual_seed(0)
example_logits = 4 * torch.randn(6, 5, generator=generator)
example_targets = (torch.rand(6, 5, generator=generator) > 0.8).float()
print(focal_loss_by_hand(example_logits, example_targets))


# %% [markdown]
# ## 2. Dice loss for the masks
#
# Each positive cell predicts a full mask, and most objects are small: a 20 × 20 object fills
# 2.4 % of a 128 × 128 mask. Per-pixel BCE averaged over the mask is dominated by background
# pixels, exactly the imbalance of section 1 again. SOLO uses the Dice loss (paper Eq. 3):
#
# $$L_{Dice} = 1 - D(p, q),\qquad D(p, q) = \frac{2 \sum_{x,y} p_{x,y}\, q_{x,y}}{\sum_{x,y} p_{x,y}^2 + \sum_{x,y} q_{x,y}^2}$$
#
# with $p$ the predicted probabilities and $q$ the binary target. $D$ is an overlap *ratio*: it
# does not care how many background pixels there are. (The official code adds 0.001 to each
# sum in the denominator, so an empty prediction of an empty target does not divide by zero.)


# %%
def dice_loss_by_hand(probs, targets):
    """Per-mask Dice loss for [P, h, w] probabilities and binary targets."""
    p = probs.flatten(start_dim=1)
    q = targets.flatten(start_dim=1).float()
    overlap = (p * q).sum(dim=1)
    return 1 - 2 * overlap / ((p * p).sum(dim=1) + 0.001 + (q * q).sum(dim=1) + 0.001)


SIZE = 128
pixel_rows = torch.arange(SIZE).view(-1, 1).float()
pixel_cols = torch.arange(SIZE).view(1, -1).float()


def disc(radius, cy=64.0, cx=64.0):
    return ((pixel_rows - cy) ** 2 + (pixel_cols - cx) ** 2 <= radius**2).float()


def soft_prediction(radius):
    """A prediction that says "object" (p = 0.95) inside a disc of this radius, 0.02 outside."""
    return 0.02 + 0.93 * disc(radius)


radii = np.arange(0, 41)
fig, (ax_bce, ax_dice) = plt.subplots(1, 2, figsize=(15, 4.8))
curves = {}
for true_radius, colour in [(5, "tab:red"), (30, "tab:blue")]:
    target = disc(true_radius)
    bce_values = [F.binary_cross_entropy(soft_prediction(r), target).item() for r in radii]
    dice_values = [dice_loss_by_hand(soft_prediction(r)[None], target[None]).item() for r in radii]
    curves[true_radius] = (bce_values, dice_values)
    label = f"object of radius {true_radius} ({100 * target.mean():.1f} % of the pixels)"
    ax_bce.plot(radii, bce_values, color=colour, label=label)
    ax_dice.plot(radii, dice_values, color=colour, label=label)
    for ax, values in [(ax_bce, bce_values), (ax_dice, dice_values)]:
        ax.scatter([0], [values[0]], color=colour, zorder=3)
        ax.axvline(true_radius, color=colour, ls=":", lw=1)
small_bce, small_dice = curves[5][0][0], curves[5][1][0]
ax_bce.annotate(
    f"small object, predicting nothing:\nBCE = {small_bce:.2f}, looks nearly solved",
    xy=(0, small_bce),
    xytext=(3, 0.8),  # above both curves
    arrowprops=dict(arrowstyle="->"),
    color="tab:red",
)
ax_dice.annotate(
    f"small object, predicting nothing:\nDice loss = {small_dice:.2f}, close to the worst",
    xy=(0, small_dice),
    xytext=(23, 0.45),
    arrowprops=dict(arrowstyle="->"),
    color="tab:red",
)
ax_bce.set_title("per-pixel BCE (mean over the mask)")
ax_dice.set_title("Dice loss")
for ax in (ax_bce, ax_dice):
    ax.set_xlabel("radius of the predicted disc (dotted: true radius)")
    ax.set_ylabel("loss")
# one legend for both panels, below them, where it hides no curve
fig.legend(*ax_bce.get_legend_handles_labels(), loc="lower center", ncol=2)
plt.tight_layout(rect=(0, 0.08, 1, 1))
plt.show()

# %% [markdown]
# BCE's scale depends on the object's size: for the small object, predicting *nothing* costs
# less than getting the large object slightly wrong. Dice scores both objects on the same 0–1
# scale. The gradients tell the same story. At an undecided prediction ($p = 0.5$ everywhere),
# where does each loss push?

# %%
target = disc(5)
gradients = {}
for name, loss_fn in [
    ("BCE (mean)", lambda p: F.binary_cross_entropy(p, target)),
    ("Dice", lambda p: dice_loss_by_hand(p[None], target[None]).sum()),
]:
    logits = torch.zeros(SIZE, SIZE, requires_grad=True)  # p = 0.5 everywhere
    loss_fn(torch.sigmoid(logits)).backward()
    gradients[name] = logits.grad.abs()

fig, axes = plt.subplots(1, 3, figsize=(16, 4.6), gridspec_kw={"width_ratios": [1, 1, 1.2]})
for ax, (name, grad) in zip(axes, gradients.items()):
    shown = ax.imshow(grad, cmap="inferno")
    ax.contour(target.numpy(), levels=[0.5], colors="cyan", linewidths=1)
    ax.set_title(f"{name}: |d loss / d logit|\n(cyan outline: the object)", fontsize=11)
    ax.set_xlabel("column")
    ax.set_ylabel("row")
    fig.colorbar(shown, ax=ax, fraction=0.046)
shares = {
    name: (grad * target).sum().item() / grad.sum().item() for name, grad in gradients.items()
}
bars = axes[2].bar(list(shares), list(shares.values()), color=["tab:gray", "tab:red"])
axes[2].bar_label(bars, fmt="%.3f")
axes[2].axhline(
    target.mean().item(),
    color="black",
    ls=":",
    label=f"object's share of pixels ({target.mean():.3f})",
)
axes[2].set_ylabel("share of the gradient on object pixels")
axes[2].set_title("How much of the push goes to the object?")
axes[2].set_ylim(0, 1.3 * max(shares.values()))  # room above the bars for the legend
axes[2].legend(loc="upper left")
plt.tight_layout()
plt.show()
print(
    f"{int(target.sum())} object pixels of {target.numel()} ({target.mean():.1%}); "
    f"their share of the gradient: "
    + ", ".join(f"{name} {share:.3f}" for name, share in shares.items())
)


# %% [markdown]
# Under BCE every pixel gets the same push, so the 81 object pixels (printed above) get 0.5 % of
# it, their share of the pixels. Under Dice they get about a third: the loss is normalised by the object's own
# size, not by the image's.
#
# ## 3. Putting it together: SOLO's loss on a tiny batch
#
# $$L = L_{cate} + 3\, L_{mask}$$
#
# * $L_{cate}$: the focal loss over **all** cells of **all** levels and **all** classes of the
#   batch, **summed** and divided by (number of positive cells + 1). Dividing by the number of
#   positives (not of terms) keeps the loss's scale independent of how many cells there are; the
#   $+1$ avoids dividing by zero on an image without objects.
# * $L_{mask}$: the Dice loss of each positive cell's mask (channel $k = iS + j$ of its level),
#   **averaged** over all positive cells of the batch.
#
# We build two small images with known objects and a small SOLO (random weights are fine for
# checking a loss), then recompute its loss by hand.


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


scenes = [
    toy_scene([("disc", 40, 44, 18), ("square", 88, 90, 14), ("disc", 28, 104, 6)], seed=0),
    toy_scene([("square", 64, 48, 26), ("disc", 96, 100, 10)], seed=1),
]
images = torch.stack([image for image, _, _ in scenes]).to(device)
targets = [{"masks": masks.to(device), "labels": labels.to(device)} for _, masks, labels in scenes]

# a small SOLO: the "tiny" preset slimmed further so this runs in a second on a CPU
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
outputs = model(images)
package_loss = model.loss(outputs, targets)
print({name: round(value.item(), 4) for name, value in package_loss.items()})

fig, axes = plt.subplots(1, 2, figsize=(10, 5))
for ax, (image, _, labels) in zip(axes, scenes):
    ax.imshow(image.permute(1, 2, 0).clamp(0, 1))
    ax.set_title(f"{len(labels)} objects, classes {labels.tolist()} (0 = disc, 1 = square)")
    ax.axis("off")
plt.show()

# %%
# Step 1: grid targets per image and level (notebook 02)
per_image = [
    minisolo.solo_targets(
        t["masks"],
        t["labels"],
        num_classes=config.num_classes,
        grids=config.grids,
        scale_ranges=config.scale_ranges,
        strides=config.strides,
        sigma=config.sigma,
    )
    for t in targets
]
num_positives = sum(level.num_positives for levels in per_image for level in levels)
print(f"positive cells in the batch: {num_positives}")

# Step 2: L_cate = sum of focal terms over every cell, level, class / (positives + 1)
all_logits, all_onehot = [], []
for level, logits in enumerate(outputs["category"]):  # logits: [B, C, S, S]
    for b in range(len(images)):
        cell_logits = logits[b].permute(1, 2, 0).reshape(-1, config.num_classes)  # [S*S, C]
        category = per_image[b][level].category.reshape(-1)  # [S*S], background = C
        onehot = torch.zeros_like(cell_logits)
        positive = category < config.num_classes
        onehot[positive, category[positive]] = 1.0  # background rows stay all zero
        all_logits.append(cell_logits)
        all_onehot.append(onehot)
focal_terms = focal_loss_by_hand(torch.cat(all_logits), torch.cat(all_onehot))
loss_cate = focal_terms.sum() / (num_positives + 1)

# Step 3: L_mask = mean Dice over the positive cells; cell k = i*S + j reads mask channel k
dice_per_cell = []
for level, mask_logits in enumerate(outputs["mask"]):  # mask_logits: [B, S*S, h, w]
    for b in range(len(images)):
        lt = per_image[b][level]
        probs = torch.sigmoid(mask_logits[b, lt.positive_index])  # [P, h, w]
        dice_per_cell.append(dice_loss_by_hand(probs, lt.masks))
loss_mask = torch.cat(dice_per_cell).mean()

loss = loss_cate + 3 * loss_mask
print(
    f"by hand: L_cate = {loss_cate.item():.4f}, L_mask = {loss_mask.item():.4f}, L = {loss.item():.4f}"
)

# %% [markdown]
# At initialisation every mask probability is near 0.5: a grey blur that overlaps each target
# only partly, so $L_{mask}$ is large. $L_{cate}$ is about 1, and nearly all of it comes from the
# positive cells: thanks to the prior-probability bias every score starts at 0.01, a positive
# cell costs $0.25 \cdot 0.99^2 \cdot (-\log 0.01) \approx 1.1$ and an easy negative almost nothing
# (the focal loss at work); dividing by (positives + 1) turns that into an average. The weight
# $\lambda = 3$ then gives the masks, SOLO's actual output, most of the gradient.
#
# ### Check: our derivation against the package

# %%
from torch.testing import assert_close

# the two elementary losses
assert_close(
    focal_loss_by_hand(example_logits, example_targets),
    minisolo.sigmoid_focal_loss(example_logits, example_targets, gamma=2.0, alpha=0.25),
)
random_probs = torch.rand(4, 16, 16, generator=torch.Generator().manual_seed(1))
random_masks = torch.rand(4, 16, 16, generator=torch.Generator().manual_seed(2)) > 0.7
assert_close(
    dice_loss_by_hand(random_probs, random_masks), minisolo.dice_loss(random_probs, random_masks)
)

# the whole SOLO loss, L = L_cate + 3 * L_mask, and its parts
assert_close(loss_cate, package_loss["loss_cate"])
assert_close(loss_mask, package_loss["loss_mask"])
assert_close(loss, package_loss["loss"])
assert num_positives == int(package_loss["num_positives"])
print("sigmoid_focal_loss, dice_loss and SOLO.loss match the derivation")

# %% [markdown]
# ## Exercises
#
# 1. **Focal loss contains cross entropy (code).** Show with `assert_close` that
#    `minisolo.sigmoid_focal_loss(x, t, gamma=0, alpha=0.5)` is exactly half of
#    `F.binary_cross_entropy_with_logits(x, t, reduction="none")`.
# 2. **Gradient of an easy negative (code).** Take a single negative term whose probability
#    is 0.01. With autograd, compute the gradient of the loss with respect to its logit for
#    cross entropy and for the focal loss ($\gamma = 2$, $\alpha = 0.25$). Assert that the focal
#    gradient is less than 1/1000 of the cross-entropy gradient. How does the ratio look for a
#    *hard* negative with probability 0.9?
# 3. **Dice cannot train an empty channel (code).** Assert that `dice_loss` of *any* prediction
#    against an all-zero target is 1 and that its gradient is zero. What does this say about
#    applying the mask loss to the $S^2 - P$ negative channels?
# 4. **An image without objects (code).** Compute `model.loss` for `images[:1]` with a target
#    that has no objects (`masks` of shape `[0, 128, 128]`, `labels` of shape `[0]`). Assert that
#    `loss_cate` equals the plain *sum* of the focal terms (divided by 0 + 1) and that `loss_mask` is 0.
# 5. **Think.** The Dice mean is over positive cells, not over objects. A large object assigned
#    to two FPN levels has about twice as many positive cells as a small one. Is that a bias, and
#    is it a good one?

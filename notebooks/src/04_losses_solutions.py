# %% [markdown]
# # 04 · Losses: solutions
#
# Solutions to the exercises of `04_losses.ipynb`; each coding answer ends with an `assert`.

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

# %% [markdown]
# ## Exercise 1: focal loss with γ = 0 and α = 0.5
#
# $(1 - p_t)^0 = 1$ and $\alpha_t = 0.5$ for both targets, so what is left is $-0.5 \log p_t$,
# half the cross entropy.

# %%
generator = torch.Generator().manual_seed(0)
x = 5 * torch.randn(100, 7, generator=generator)
t = (torch.rand(100, 7, generator=generator) > 0.7).float()
assert_close(
    minisolo.sigmoid_focal_loss(x, t, gamma=0.0, alpha=0.5),
    0.5 * F.binary_cross_entropy_with_logits(x, t, reduction="none"),
)
print("focal(gamma=0, alpha=0.5) == 0.5 * BCE")


# %% [markdown]
# ## Exercise 2: the gradient of an easy and of a hard negative


# %%
def gradients_at(probability):
    logit_value = float(np.log(probability / (1 - probability)))
    grads = {}
    for name in ("cross entropy", "focal"):
        logit = torch.tensor([logit_value], requires_grad=True)
        target = torch.zeros(1)
        if name == "cross entropy":
            loss = F.binary_cross_entropy_with_logits(logit, target)
        else:
            loss = minisolo.sigmoid_focal_loss(logit, target, gamma=2.0, alpha=0.25).sum()
        loss.backward()
        grads[name] = logit.grad.item()
    return grads


easy = gradients_at(0.01)
hard = gradients_at(0.9)
ratio_easy = easy["focal"] / easy["cross entropy"]
ratio_hard = hard["focal"] / hard["cross entropy"]
assert 0 < ratio_easy < 1e-3
print(
    f"easy negative (p=0.01): CE grad {easy['cross entropy']:.2e}, focal grad {easy['focal']:.2e}, ratio {ratio_easy:.1e}"
)
print(
    f"hard negative (p=0.90): CE grad {hard['cross entropy']:.2e}, focal grad {hard['focal']:.2e}, ratio {ratio_hard:.2f}"
)

# %% [markdown]
# An easy negative's gradient is cut by more than 1000×, while a hard negative keeps about 90 %
# of it: $\alpha_t (1-p_t)^2 = 0.75 \cdot 0.81$ shrinks its loss, but the derivative of the
# modulating factor adds gradient back. The focal loss spends the gradient on the mistakes.
#
# ## Exercise 3: Dice with an empty target

# %%
logits = torch.randn(3, 32, 32, requires_grad=True)
empty = torch.zeros(3, 32, 32)
loss = minisolo.dice_loss(torch.sigmoid(logits), empty)
assert_close(loss, torch.ones(3))
loss.sum().backward()
assert_close(logits.grad, torch.zeros_like(logits))
print("Dice against an empty target: loss 1, gradient 0, whatever the prediction")


# %% [markdown]
# With $q = 0$ the numerator $2\sum pq$ is 0 for every $p$: the loss is constant, so it cannot
# teach a channel to stay empty. That is why SOLO computes the mask loss only on the positive
# cells; the negative channels are never trained to be empty, and at test time the category
# branch decides which channels to read (notebook 03 shows the untrained channels).
#
# ## Exercise 4: an image without objects


# %%
def toy_scene(objects, size=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = (0.5 + 0.08 * torch.randn(1, size, size, generator=g)).repeat(3, 1, 1)  # grey noise
    rows = torch.arange(size).view(-1, 1).float()
    cols = torch.arange(size).view(1, -1).float()
    masks, labels = [], []
    for kind, cy, cx, r in objects:
        mask = (
            ((rows - cy) ** 2 + (cols - cx) ** 2 <= r**2)
            if kind == "disc"
            else (((rows - cy).abs() <= r) & ((cols - cx).abs() <= r))
        )
        image[:, mask] = torch.tensor([0.9, 0.2, 0.2] if kind == "disc" else [0.2, 0.3, 0.9]).view(
            3, 1
        )
        masks.append(mask)
        labels.append(0 if kind == "disc" else 1)
    return image, torch.stack(masks), torch.tensor(labels)


image, _, _ = toy_scene([("disc", 40, 44, 18)])
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
outputs = model(image[None].to(device))
no_objects = [
    {
        "masks": torch.zeros(0, 128, 128, dtype=torch.bool, device=device),
        "labels": torch.zeros(0, dtype=torch.long, device=device),
    }
]
result = model.loss(outputs, no_objects)

all_logits = torch.cat(
    [x.permute(0, 2, 3, 1).reshape(-1, config.num_classes) for x in outputs["category"]]
)
focal_sum = minisolo.sigmoid_focal_loss(all_logits, torch.zeros_like(all_logits)).sum()
assert int(result["num_positives"]) == 0
assert_close(result["loss_cate"], focal_sum / (0 + 1))
assert_close(result["loss_mask"], torch.tensor(0.0, device=device))
print({name: value.item() for name, value in result.items()})

# %% [markdown]
# ## Exercise 5: a bias towards large objects?
#
# Yes: each positive cell is one term of the Dice mean, and large objects have more positive
# cells (their centre region spans more cells, and they often sit in two levels because the
# scale ranges overlap). It is a mild bias: the centre region is clamped to 3 × 3 cells per
# level, so an object weighs at most 9 terms per level. Most sizes fall in one or two levels
# (at most 18 terms); a size exactly on the end of a range falls in three, like the 64-px
# square of notebook 02's exercise 1 (levels 1, 2 and 3 of the `tiny` preset): at most
# 3 × 9 = 27 terms. Small objects are also helped elsewhere: they go to the finest levels with
# the largest grids ($S = 40$ in the paper's preset), and the Dice loss itself is
# size-independent per mask, unlike BCE.

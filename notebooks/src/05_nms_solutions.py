# %% [markdown]
# # 05 · NMS: solutions
#
# Solutions to the exercises of `05_nms.ipynb`; each coding answer ends with an `assert`.
# We first rebuild the heat map and the candidates of the notebook.

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

# %%
S = 12
rows = torch.arange(S).view(S, 1).float()
cols = torch.arange(S).view(1, S).float()


def bump(i, j, peak, width=0.8):
    return peak * torch.exp(-((rows - i) ** 2 + (cols - j) ** 2) / (2 * width**2))


generator = torch.Generator().manual_seed(0)
heat = (bump(3, 4, 0.90) + bump(8, 8, 0.75) + 0.03 * torch.rand(S, S, generator=generator)).clamp(
    max=1.0
)[None, None]

MASK_H, MASK_W = 96, 128
pixel_rows = torch.arange(MASK_H).view(-1, 1).float()
pixel_cols = torch.arange(MASK_W).view(1, -1).float()


def ellipse(cy, cx, ry, rx):
    return ((pixel_rows - cy) / ry) ** 2 + ((pixel_cols - cx) / rx) ** 2 <= 1


OBJECTS = {
    "A": (38, 38, 22, 22, 0, 0.95),
    "B": (58, 70, 20, 16, 0, 0.80),
    "C": (48, 106, 30, 14, 1, 0.90),
}
JITTER = [(0, 0, 0), (2, -3, 2), (-3, 2, -2), (4, 3, 3), (-2, -4, -3)]
generator = torch.Generator().manual_seed(1)
cand = []
for cy, cx, ry, rx, label, best in OBJECTS.values():
    for k, (dy, dx, dr) in enumerate(JITTER):
        score = best * (1 - 0.12 * k) - 0.03 * torch.rand(1, generator=generator).item()
        cand.append((ellipse(cy + dy, cx + dx, ry + dr, rx + dr), label, score))
cand.sort(key=lambda c: -c[2])
masks = torch.stack([c[0] for c in cand])
labels = torch.tensor([c[1] for c in cand])
scores = torch.tensor([c[2] for c in cand])


def random_candidates(n, size, num_objects=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    h, w = size
    r = torch.arange(h).view(1, h, 1).float()
    c = torch.arange(w).view(1, 1, w).float()
    base = torch.randint(0, num_objects, (n,), generator=g)
    cy = (torch.rand(num_objects, generator=g) * h)[base] + torch.randn(n, generator=g) * h / 60
    cx = (torch.rand(num_objects, generator=g) * w)[base] + torch.randn(n, generator=g) * w / 60
    ry = (h / 30 + torch.rand(num_objects, generator=g) * h / 8)[base]
    rx = (w / 30 + torch.rand(num_objects, generator=g) * w / 8)[base]
    m = ((r - cy.view(-1, 1, 1)) / ry.view(-1, 1, 1)) ** 2 + (
        (c - cx.view(-1, 1, 1)) / rx.view(-1, 1, 1)
    ) ** 2 <= 1
    return (
        m,
        torch.randint(0, 5, (num_objects,), generator=g)[base],
        torch.rand(n, generator=g).sort(descending=True).values,
    )


print(f"{len(scores)} candidates rebuilt")


# %% [markdown]
# ## Exercise 1: Fast NMS for masks
#
# Fast NMS lets a candidate that was itself removed still remove others. Sequential NMS only
# lets *kept* candidates suppress. So every candidate Fast NMS keeps (no higher-scored
# same-class overlap above 0.5 at all) is certainly kept by sequential NMS: a subset.


# %%
def fast_mask_nms(masks, labels, scores, iou_threshold=0.5):
    order = torch.argsort(scores, descending=True)
    m, l = masks[order], labels[order]
    iou = minisolo.mask_iou(m).triu(diagonal=1) * (l[:, None] == l[None, :])
    return order[iou.max(dim=0).values <= iou_threshold]


for case_masks, case_labels, case_scores in [
    (masks, labels, scores),
    random_candidates(500, (48, 64)),
]:
    fast = set(fast_mask_nms(case_masks, case_labels, case_scores).tolist())
    sequential = set(minisolo.mask_nms(case_masks, case_labels, case_scores).tolist())
    assert fast <= sequential
    print(
        f"{len(case_scores)} candidates: Fast NMS keeps {len(fast)}, sequential keeps {len(sequential)}"
    )

# %% [markdown]
# ## Exercise 2: different classes never suppress each other

# %%
own_class = torch.arange(len(scores))
assert_close(minisolo.matrix_nms(masks, own_class, scores), scores)
assert minisolo.mask_nms(masks, own_class, scores).tolist() == list(range(len(scores)))
print("with one class per candidate nothing is suppressed")


# %% [markdown]
# ## Exercise 3: a symmetric 3 × 3 points NMS
#
# A cell that is the maximum of its full 3 × 3 neighbourhood is in particular the maximum of its
# up/left 2 × 2 window, so the 3 × 3 survivors are a subset of the 2 × 2 survivors.


# %%
def points_nms_3x3(heat):
    return heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)


keep_3x3 = points_nms_3x3(heat) > 0.1
keep_2x2 = minisolo.points_nms(heat) > 0.1
assert bool((keep_3x3 <= keep_2x2).all())
print(
    f"survivors above 0.1: 2x2 window {keep_2x2.sum().item()}, 3x3 window {keep_3x3.sum().item()}"
)

# %% [markdown]
# ## Exercise 4: choosing sigma
#
# For the top mask $\text{comp} = 0$, so the duplicate's multiplier is $e^{-\sigma \cdot 0.81}$
# (gaussian) or $1 - 0.9$ (linear).

# %%
# two candidates whose IoU is exactly 0.9: 100 pixels and 90 of them
pair = torch.zeros(2, 10, 10, dtype=torch.bool)
pair[0] = True
pair[1, :9] = True
pair_labels = torch.tensor([0, 0])
pair_scores = torch.tensor([0.9, 0.8])
assert_close(minisolo.mask_iou(pair)[0, 1], torch.tensor(0.9))

results = {}
for sigma in (0.5, 2.0, 8.0):
    expected = 0.8 * np.exp(-sigma * 0.9**2)
    got = minisolo.matrix_nms(pair, pair_labels, pair_scores, kernel="gaussian", sigma=sigma)[1]
    assert_close(got, torch.tensor(expected, dtype=torch.float32))
    results[f"gaussian sigma={sigma}"] = expected
expected = 0.8 * (1 - 0.9)
assert_close(
    minisolo.matrix_nms(pair, pair_labels, pair_scores, kernel="linear")[1], torch.tensor(expected)
)
results["linear"] = expected
for name, value in results.items():
    print(
        f"{name:22s} new score {value:.3f} ({value / 0.8:.0%} of 0.8)  "
        f"{'below' if value < 0.3 else 'ABOVE'} a true object at 0.3"
    )

# %% [markdown]
# σ = 0.5 is too gentle: the duplicate keeps 67 % of its score (0.534, the first line printed
# above) and outranks the true object at 0.3. σ = 2 (official) and σ = 8 and the linear kernel
# all push it below 0.3. Too large a σ would also crush real objects that overlap a little (IoU 0.3 → $e^{-8 \cdot 0.09} \approx 0.49$),
# which is why the official default is 2.

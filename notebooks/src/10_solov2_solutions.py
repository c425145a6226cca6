# %% [markdown]
# # 10 · SOLOv2: solutions
#
# Solutions to the exercises of `10_solov2.ipynb`; each coding answer ends with an `assert`.
# The first cells load the notebook's two cached models (`minisolo.pretrained`) and its
# validation image.

# %%
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

# Make `import minisolo` work from a fresh checkout too (without `pip install -e .`).
for _parent in [Path.cwd(), *Path.cwd().parents]:
    if (_parent / "minisolo" / "__init__.py").is_file():
        sys.path.insert(0, str(_parent))
        break

from torch.testing import assert_close

import minisolo
from minisolo import model_cache, preset, viz
from minisolo.data import CocoInstances
from minisolo.engine import make_transforms
from minisolo.solov2 import cell_kernels, dynamic_conv
from minisolo.utils import is_fast_mode, pick_device, seed_everything

FAST = is_fast_mode()  # MINISOLO_FAST=1 picks tiny sizes (the tests run every notebook so)
device = pick_device("auto")  # CUDA when a GPU is present, else the CPU
seed_everything(0)
plt.rcParams.update({"figure.dpi": 90, "font.size": 11, "axes.titlesize": 12})
print(
    f"minisolo {minisolo.__version__} | torch {torch.__version__} | device: {device} | FAST={FAST}"
)

# %%
DATA = model_cache.demo_data(progress=False)
solov2 = minisolo.pretrained("solov2", device=str(device))
solo = minisolo.pretrained("solo", device=str(device))
print(model_cache.describe(solov2.cache_info))
val = CocoInstances(DATA, "val", transforms=make_transforms(solov2.config, train=False))
val_raw = CocoInstances(DATA, "val")
IDX = max(range(min(len(val_raw), 40)), key=lambda k: len(val_raw.load_target(k)["labels"]))
image, target = val[IDX]
with torch.no_grad():
    outputs = solov2(image[None].to(device))
scores = [torch.sigmoid(c[0]).amax(dim=0) for c in outputs["category"]]
level = max(range(5), key=lambda lv: scores[lv].max().item())
grid = solov2.config.grids[level]
flat = int(scores[level].argmax())
i, j = flat // grid, flat % grid
features = outputs["mask_features"][0]

# %% [markdown]
# ## Exercise 1: memory by level

# %%
H, W = 800, 1344
paper_solo, paper_v2 = preset("paper"), preset("paper", model="solov2")
print(f"{'level':>5s} {'S':>3s} {'SOLO masks MiB':>15s} {'SOLOv2 kernels MiB':>19s}")
solo_levels = []
for lv, (g, stride) in enumerate(zip(paper_solo.grids, paper_solo.strides)):
    solo_bytes = 4 * g * g * (H // (stride // 2)) * (W // (stride // 2))
    kernel_bytes = 4 * g * g * paper_v2.kernel_channels
    solo_levels.append(solo_bytes)
    print(f"{lv:5d} {g:3d} {solo_bytes / 2**20:15.1f} {kernel_bytes / 2**20:19.2f}")
    assert kernel_bytes < solo_bytes
features_bytes = 4 * paper_v2.kernel_channels * (H // 4) * (W // 4)
print(f"SOLOv2's shared mask features: {features_bytes / 2**20:.1f} MiB")
print(f"level 0 holds {solo_levels[0] / sum(solo_levels):.0%} of SOLO's mask bytes")

# %% [markdown]
# Level 0 dominates: it has the most cells (40² = 1600) *and* the largest masks (stride 4).
# Level 1 has 36² cells at the same stride, so the two finest levels hold nearly everything;
# the coarse levels have few cells and small masks.

# %% [markdown]
# ## Exercise 2: a one-hot kernel

# %%
E = features.shape[0]
e = 5
one_hot = torch.zeros(1, E, device=device)
one_hot[0, e] = 1.0
assert torch.equal(dynamic_conv(features, one_hot)[0], features[e])
two_hot = one_hot.clone()
two_hot[0, e + 1] = 1.0
assert_close(dynamic_conv(features, two_hot)[0], features[e] + features[e + 1])
print("a one-hot kernel selects a channel; a two-hot kernel adds two channels")

# %% [markdown]
# A kernel with several ones adds those channels: every mask is a weighted sum of the $E$
# feature maps, and the kernel's numbers are the weights.

# %% [markdown]
# ## Exercise 3: kernels along a row

# %%
row = cell_kernels(
    outputs["kernel"][level],
    0,
    torch.full((grid,), i, device=device),
    torch.arange(grid, device=device),
)
best = outputs["kernel"][level][0, :, i, j]
similarity = F.cosine_similarity(row, best[None], dim=1).cpu()
assert int(similarity.argmax()) == j
fig = viz.SoloFigure(figsize=(8, 3.4), layout="constrained")
ax = fig.subplots()
ax.plot(range(grid), similarity.numpy(), "o-")
ax.axvline(j, color="tab:red", lw=0.8)
ax.set(
    xlabel="column",
    ylabel="cosine similarity",
    title=f"row {i} of level {level} vs cell ({i}, {j})",
)
fig

# %% [markdown]
# The similarity is 1 at the cell itself, stays high on the neighbouring cells that see the
# same object (they were trained on the same mask), and drops once the cells leave the object.

# %% [markdown]
# ## Exercise 4: SOLO's weights as kernels

# %%
with torch.no_grad():
    solo_image, _ = CocoInstances(
        DATA, "val", transforms=make_transforms(solo.config, train=False)
    )[IDX]
    features_solo = solo.features(solo_image[None].to(device))
    level_s = 1
    x = features_solo[level_s]
    from minisolo.layers import coord_features

    tower = solo.head.mask_tower(torch.cat([x, coord_features(x)], dim=1))
    tower = F.interpolate(tower, scale_factor=2, mode="bilinear", align_corners=False)[0]
    full = solo(solo_image[None].to(device))["mask"][level_s][0]
    conv = solo.head.mask_outputs[level_s]
    k = 3 * solo.config.grids[level_s] + 4
    by_row = dynamic_conv(tower, conv.weight[k, :, 0, 0][None])[0] + conv.bias[k]
assert_close(by_row, full[k], atol=1e-4, rtol=1e-4)
print(f"SOLO channel {k} = row {k} of its 1x1 conv applied to the tower output")

# %% [markdown]
# SOLO's cell k always applies the same row $W_k$ to its level's features; SOLOv2's cell k
# applies $\theta_k$, predicted from the image at that cell, to one shared feature map. SOLO
# must make the *features* image-specific enough for fixed weights to work; SOLOv2 can also
# move the image-specific part into the weights.

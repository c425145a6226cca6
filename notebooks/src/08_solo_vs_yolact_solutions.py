# %% [markdown]
# # 08 · SOLO vs YOLACT: solutions
#
# Solutions to the exercises of `08_solo_vs_yolact.ipynb`; each coding answer ends with an
# `assert`. The first cells load the notebook's three cached models (`minisolo.pretrained`)
# and the demo's validation images.

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
from minisolo import box_nms, fast_nms, model_cache, preset
from minisolo.data import CocoInstances
from minisolo.engine import make_transforms
from minisolo.utils import is_fast_mode, pick_device, seed_everything
from minisolo.yolact import assemble_masks, crop

FAST = is_fast_mode()  # MINISOLO_FAST=1 picks tiny sizes (the tests run every notebook so)
device = pick_device("auto")  # CUDA when a GPU is present, else the CPU
seed_everything(0)
plt.rcParams.update({"figure.dpi": 90, "font.size": 11, "axes.titlesize": 12})
print(
    f"minisolo {minisolo.__version__} | torch {torch.__version__} | device: {device} | FAST={FAST}"
)

# %%
DATA = model_cache.demo_data(progress=False)  # the demo's shapes data
models = {
    "SOLO": minisolo.pretrained("solo", device=str(device)),
    "Decoupled SOLO": minisolo.pretrained("decoupled_solo", device=str(device)),
    "YOLACT": minisolo.pretrained("yolact", device=str(device)),
}
for name, model in models.items():
    print(f"{name:15s} {model_cache.describe(model.cache_info)}")
CLASS_NAMES = list(models["SOLO"].config.class_names)
IMAGE_SIZE = models["SOLO"].config.image_short_side
val_sets = {
    name: CocoInstances(DATA, "val", transforms=make_transforms(m.config, train=False))
    for name, m in models.items()
}
val_raw = CocoInstances(DATA, "val")  # original images and masks, no transforms

# %%
IDX = max(range(len(val_raw)), key=lambda k: len(val_raw.load_target(k)["labels"]))
print("image IDX =", IDX)

# %% [markdown]
# ## Exercise 1: Decoupled SOLO's outputs

# %%
image, target = val_sets["SOLO"][IDX]
with torch.no_grad():
    solo_out = models["SOLO"](image[None].to(device))
    decoupled_out = models["Decoupled SOLO"](image[None].to(device))

print(f"{'level':>6}{'S':>5}{'SOLO MB':>10}{'Decoupled MB':>14}")
for level, S in enumerate(models["SOLO"].config.grids):
    solo_bytes = solo_out["mask"][level].numel() * solo_out["mask"][level].element_size()
    x, y = decoupled_out["mask_x"][level], decoupled_out["mask_y"][level]
    decoupled_bytes = (x.numel() + y.numel()) * x.element_size()
    print(f"{level:6}{S:5}{solo_bytes / 2**20:10.3f}{decoupled_bytes / 2**20:14.3f}")
    assert decoupled_bytes < solo_bytes

# the paper's grids at 800 x 1216 (a padded COCO image), from the shapes alone
paper = preset("paper")
solo_values = sum(
    S * S * (800 // (s // 2)) * (1216 // (s // 2)) for S, s in zip(paper.grids, paper.strides)
)
decoupled_values = sum(
    2 * S * (800 // (s // 2)) * (1216 // (s // 2)) for S, s in zip(paper.grids, paper.strides)
)
print(
    f"paper grids at 800 x 1216: SOLO {solo_values * 4 / 2**20:.0f} MB, Decoupled "
    f"{decoupled_values * 4 / 2**20:.0f} MB of float32 mask outputs "
    f"({solo_values / decoupled_values:.0f}x fewer)"
)
assert decoupled_values * 10 < solo_values

# %% [markdown]
# The decoupled head outputs $2S$ maps per level instead of $S^2$: $S/2$ times fewer values,
# 20 times fewer at the paper's finest grid ($S = 40$: 1600 maps vs 80). In the table of
# section 6 its head is not faster on a CPU: it has two towers instead of one, and 3×3
# output convs instead of 1×1, so it does more arithmetic for fewer outputs. The saving is
# memory, which matters with the paper's grids and on GPUs. Post-processing builds
# $\sigma(Y_i)\,\sigma(X_j)$ only for the cells that pass the score threshold.
#
# ## Exercise 2: Fast NMS vs the IoU threshold


# %%
def random_boxes(n, generator, clusters=12, size=256):
    centre = torch.rand(clusters, 2, generator=generator) * size
    extent = 12 + torch.rand(clusters, 2, generator=generator) * 60
    pick = torch.randint(clusters, (n,), generator=generator)
    c = centre[pick] + torch.randn(n, 2, generator=generator) * extent[pick] * 0.15
    wh = extent[pick] * (1 + 0.15 * torch.randn(n, 2, generator=generator)).clamp(min=0.3)
    return torch.cat([c - wh / 2, c + wh / 2], dim=1), torch.rand(n, generator=generator)


generator = torch.Generator().manual_seed(0)
trials = 20 if FAST else 100
for threshold in [0.3, 0.4, 0.5, 0.6, 0.7]:
    lost = kept = 0
    for _ in range(trials):
        boxes, scores = random_boxes(200, generator)
        fast = set(fast_nms(boxes, scores, threshold, top_k=200).tolist())
        classic = set(box_nms(boxes, scores, threshold).tolist())
        assert fast <= classic
        lost += len(classic - fast)
        kept += len(classic)
    print(
        f"IoU threshold {threshold}: Fast NMS removes {lost / kept:6.1%} of the classic survivors"
    )

# %% [markdown]
# Fast NMS removes box $j$ in excess when a higher-scored box $i$ that classic NMS *removed*
# overlaps $j$ by more than the threshold, while no *kept* box does. At a high threshold few
# pairs overlap that much at all, so such chains are rare and the gap shrinks; at a very low
# threshold almost every box near a kept box is removed by both methods anyway. The gap is
# largest in between, around the usual 0.5. (The exact numbers depend on how tightly the
# random boxes cluster.)
#
# ## Exercise 3: YOLACT without the crop

# %%
yolact = models["YOLACT"]
image, target = val_sets["YOLACT"][IDX]
with torch.no_grad():
    out = yolact(image[None].to(device))
found = yolact.detect(out, 0)
protos = out["prototypes"][0].float()
uncropped = assemble_masks(protos, found["coefficients"])
cropped = crop(uncropped, found["boxes"])
assert bool(((cropped > 0.5) <= (uncropped > 0.5)).all())  # the crop only removes pixels

gt = (
    F.interpolate(
        target["masks"][None].float(), size=protos.shape[-2:], mode="bilinear", align_corners=False
    )[0]
    > 0.5
)
gt = gt.to(protos.device)
top = min(len(found["scores"]), 10)
for name, masks in [("uncropped", uncropped[:top] > 0.5), ("cropped", cropped[:top] > 0.5)]:
    best = minisolo.mask_iou(masks, gt).max(dim=1).values if top and len(gt) else torch.zeros(0)
    print(
        f"{name:10s} mean area {masks.flatten(1).sum(1).float().mean() if top else 0:7.1f} px, "
        f"mean best IoU with a GT {best.mean() if top else 0:.3f}  (top {top} detections, prototype resolution)"
    )

# %% [markdown]
# The crop can only remove pixels. Without it, a detection's mask is wherever its linear
# combination of prototypes is positive: in a trained YOLACT that is often every object of the
# same appearance, or a patch of background; the crop keeps what lies in the detection's box.
# (A barely trained model may predict almost empty masks either way: then both rows are near
# zero, which is what "not trained yet" looks like.)
#
# ## Exercise 4: how well can k prototypes express a mask?

# %%
k, h, w = protos.shape
basis = protos.reshape(k, -1).T.cpu()  # [h*w, k]
gt_small = gt.cpu()
gt_boxes = target["boxes"] / IMAGE_SIZE
rows = []
for g in range(len(gt_small)):
    wanted = torch.where(gt_small[g].flatten(), 4.0, -4.0)[:, None]  # target logits
    # best coefficients: least squares, with a tiny ridge term (some prototypes may be all zero)
    gram = basis.T @ basis
    c = torch.linalg.solve(gram + 1e-3 * gram.diagonal().mean() * torch.eye(k), basis.T @ wanted)[
        :, 0
    ]
    probs = assemble_masks(protos.cpu(), c[None])
    boxed = crop(probs, gt_boxes[g : g + 1])
    iou_free = float(minisolo.mask_iou(probs > 0.5, gt_small[g : g + 1])[0, 0])
    iou_crop = float(minisolo.mask_iou(boxed > 0.5, gt_small[g : g + 1])[0, 0])
    rows.append((g, int(gt_small[g].sum()), iou_free, iou_crop))
    assert iou_crop >= iou_free - 1e-6  # cropping to the true box never hurts
print(f"{'object':>7}{'pixels':>8}{'IoU, no crop':>14}{'IoU, GT box crop':>18}")
for g, pixels, a, b in rows:
    print(f"{g:7d}{pixels:8d}{a:14.3f}{b:18.3f}")

# %% [markdown]
# Cropping to the true box never lowers the IoU: the crop removes false-positive pixels
# outside the box and no true ones (the object lies inside its box). How high the IoU gets
# with the best possible coefficients measures the prototypes themselves: a trained YOLACT's
# prototypes (smooth regions, edges, position gradients) reproduce most masks roughly, and the
# crop turns a rough "this kind of region" map into an instance mask; the prototypes of a
# barely trained model reproduce almost nothing, whatever the coefficients. That is the
# division of labour in YOLACT: prototypes describe shapes and regions, the box says which
# instance.
#
# ## Exercise 5: predict first
#
# Two touching squares of the same class: if their centres fall in different grid cells, SOLO
# keeps them apart naturally (separate channels) while YOLACT needs two boxes that survive box
# NMS and coefficients that cancel the neighbour inside each box; if their centres share a
# cell, SOLO loses one. A ring of small stars: both struggle (stride-4 masks), SOLO because the
# finest grid cell is larger than a star, YOLACT because its smallest anchors barely match
# them. The ground-truth counts of section 7 say how often each case occurs in this data.
#
# ## Exercise 6: timing Fast NMS against classic NMS


# %%
def best_ms(fn, repeats):
    """The fastest of `repeats` runs in ms: on a shared machine the least disturbed one."""
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(1000 * (time.perf_counter() - start))
    return min(times)


SIZES = [100, 200, 500] if FAST else [100, 200, 500, 1000, 2000]
nms_times = {"classic (box_nms)": [], "Fast NMS": []}
for n in SIZES:
    boxes, scores = (t.to(device) for t in random_boxes(n, generator, clusters=max(12, n // 15)))
    repeats = 3 if FAST else (7 if n >= 1000 else 25)
    assert set(fast_nms(boxes, scores, 0.5, top_k=n).tolist()) <= set(
        box_nms(boxes, scores, 0.5).tolist()
    )
    nms_times["classic (box_nms)"].append(
        best_ms(lambda b=boxes, s=scores: box_nms(b, s, 0.5), repeats)
    )
    nms_times["Fast NMS"].append(
        best_ms(lambda b=boxes, s=scores, n=n: fast_nms(b, s, 0.5, top_k=n), repeats)
    )

fig, ax = plt.subplots(figsize=(9, 4.2))
for (name, values), marker in zip(nms_times.items(), ["o", "s"]):
    ax.plot(SIZES, values, marker=marker, lw=2, label=name)
ax.set(
    xscale="log",
    yscale="log",
    xlabel="number of boxes",
    ylabel="milliseconds (best of several runs)",
    title=f"NMS time on {device.type.upper()} (shared CPU: timings are noisy)",
)
ax.grid(alpha=0.3, which="both")
ax.legend()
plt.show()
for n, a, b in zip(SIZES, *nms_times.values()):
    print(f"{n:5d} boxes: classic {a:8.2f} ms   Fast NMS {b:7.2f} ms   ({a / b:5.1f}x)")

# %% [markdown]
# Both compute the same $n \times n$ IoU matrix, and on a CPU that matrix is a large part of
# the time of both: `minisolo.box_nms` runs its sequential loop over a precomputed boolean
# matrix, which costs little, so on a CPU the two stay close (the ratios above; on a shared
# machine they change from run to run). Fast NMS pays off on a GPU, where each step of the
# sequential loop is a kernel launch or a device-to-host copy, while Fast NMS is one matrix
# operation whatever the number of boxes.

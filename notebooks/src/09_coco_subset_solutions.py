# %% [markdown]
# # 09 · SOLO on real photos: solutions
#
# Solutions to the exercises of `09_coco_subset.ipynb`; each coding answer ends with an
# `assert`. The first cells find the same photos and rebuild the same two subsets (same seed),
# and load the notebook's model from `runs/nb09/last.pt` (run the notebook first; if it is
# missing, the same short training runs here).

# %%
import sys
from pathlib import Path

import numpy as np
import torch

# Make `import minisolo` work from a fresh checkout too (without `pip install -e .`).
for _parent in [Path.cwd(), *Path.cwd().parents]:
    if (_parent / "minisolo" / "__init__.py").is_file():
        sys.path.insert(0, str(_parent))
        break

import json
import shutil

import minisolo
from minisolo import model_cache, preset
from minisolo.data import CocoInstances, build_coco_subset, find_coco_folder, find_split
from minisolo.engine import evaluate, load_checkpoint, train
from minisolo.utils import is_fast_mode, pick_device, seed_everything

FAST = is_fast_mode()  # MINISOLO_FAST=1 picks tiny sizes (the tests run every notebook so)
device = pick_device("auto")  # CUDA when a GPU is present, else the CPU
seed_everything(0)
print(
    f"minisolo {minisolo.__version__} | torch {torch.__version__} | device: {device} | FAST={FAST}"
)

# %%
found = find_coco_folder()
PHOTOS = found is not None
if PHOTOS:
    SOURCE = found.root
    TRAIN_SPLIT = "train2017" if "train2017" in found.splits else found.splits[0]
    VAL_SPLIT = "val2017" if "val2017" in found.splits else found.splits[0]
else:
    print("No COCO photos found: the solutions run on the shapes data instead.")
    SOURCE = model_cache.demo_data(progress=False)
    TRAIN_SPLIT, VAL_SPLIT = "train", "val"
WORK = model_cache.data_root() / ("nb09-solutions-fast" if FAST else "nb09-solutions")
NUM_HANDFUL, NUM_HELD_OUT = (2, 2) if FAST else (8, 24)
if PHOTOS:
    if WORK.exists():
        shutil.rmtree(WORK)
    handful_dir = build_coco_subset(
        WORK / "handful", split=TRAIN_SPLIT, num_images=NUM_HANDFUL, seed=0, coco_root=SOURCE,
        progress=False,
    )  # fmt: skip
    held_out_dir = build_coco_subset(
        WORK / "held_out", split=VAL_SPLIT, num_images=NUM_HELD_OUT, seed=0, coco_root=SOURCE,
        exclude_ids=handful_dir / f"subset_{TRAIN_SPLIT}.json", progress=False,
    )  # fmt: skip
else:
    handful_dir = held_out_dir = SOURCE
handful = CocoInstances(handful_dir, TRAIN_SPLIT)
if not PHOTOS:
    handful.ids = handful.ids[:NUM_HANDFUL]

ROOT = next(
    (p for p in [Path.cwd(), *Path.cwd().parents] if (p / "minisolo" / "__init__.py").is_file()),
    Path.cwd(),
)
RUN = ROOT / "runs" / ("nb09_fast" if FAST else "nb09")
config = preset("tiny", image_short_side=256, image_max_size=384)
if (RUN / "last.pt").is_file() and PHOTOS:
    model = load_checkpoint(RUN / "last.pt", str(device))
    print(f"the notebook's model: {RUN / 'last.pt'}")
else:
    result = train(
        config, handful_dir, RUN.with_name(RUN.name + "_solutions"),
        max_iters=4 if FAST else 300, checkpoint_every=4 if FAST else 300, batch_size=min(8, len(handful)), train_split=TRAIN_SPLIT,
        val_split=None, device=str(device), progress=False,
    )  # fmt: skip
    model = result.model.eval()
    print("trained the notebook's short run again")

# %% [markdown]
# ## Exercise 1: the tiny preset's ranges
#
# The tiny preset's ranges are the paper's scaled to 256-px inputs. We resize every photo to
# short side 256, long side at most 384, as the notebook trained.

# %%
tiny = preset("tiny")
ann_file, _ = find_split(SOURCE, VAL_SPLIT)
source = json.loads(Path(ann_file).read_text())
images_by_id = {im["id"]: im for im in source["images"]}
objects = [a for a in source["annotations"] if not a.get("iscrowd", 0)]


def scale_factor(width, height, short, long):
    return min(short / min(width, height), long / max(width, height))


def levels_of(scale, ranges):
    return [level for level, (lo, hi) in enumerate(ranges) if lo <= scale <= hi]


scales = np.array(
    [
        scale_factor(
            images_by_id[a["image_id"]]["width"], images_by_id[a["image_id"]]["height"], 256, 384
        )
        * np.sqrt(a["bbox"][2] * a["bbox"][3])
        for a in objects
    ]
)
per_level = [
    int(sum(level in levels_of(s, tiny.scale_ranges) for s in scales)) for level in range(5)
]
print("tiny ranges:", tiny.scale_ranges)
print("objects per level:", per_level, "of", len(scales), "objects")
assert sum(per_level) >= len(scales)  # every object is on at least one level (ranges start at 1)
print(f"the busiest level: {int(np.argmax(per_level))}")

# %% [markdown]
# Level 0 (the finest grid) gets the most, as with the paper's ranges, and the counts are
# almost the paper's: the tiny ranges are the paper's divided by 3 and short side 256 is the
# paper's 800 divided by 3.1, so an object lands on the level it would land on in the paper.
# Only the long-side cap differs a little (384 here, 1333 / 3.1 = 427 there).

# %% [markdown]
# ## Exercise 2: a held-out set from one split

# %%
if PHOTOS:
    first = build_coco_subset(
        WORK / "same_a", split=VAL_SPLIT, num_images=NUM_HANDFUL, seed=1, coco_root=SOURCE,
        progress=False,
    )  # fmt: skip
    first_record = first / f"subset_{VAL_SPLIT}.json"
    second = build_coco_subset(
        WORK / "same_b", split=VAL_SPLIT, num_images=NUM_HELD_OUT, seed=1, coco_root=SOURCE,
        exclude_ids=first_record, progress=False,
    )  # fmt: skip
    ids_a = set(json.loads(first_record.read_text())["image_ids"])
    record_b = json.loads((second / f"subset_{VAL_SPLIT}.json").read_text())
    ids_b = set(record_b["image_ids"])
    assert ids_a and ids_b and not ids_a & ids_b
    print(f"{len(ids_a)} and {len(ids_b)} photos of {VAL_SPLIT}, none shared")
    print({k: record_b[k] for k in ("seed", "num_images_requested", "excluded_ids", "source")})
else:
    print("(needs photos)")

# %% [markdown]
# To rebuild a subset exactly you need the split, the seed, the number requested, the
# categories, the excluded ids and the same source annotation file (the pick is a seeded
# random choice over the *sorted candidate ids*, so another annotation file gives another
# pick). The record holds all of them, and also the picked ids themselves, which is the
# safest way to share it.

# %% [markdown]
# ## Exercise 3: per-class AP on the held-out photos

# %%
held_out_metrics = evaluate(model, held_out_dir, VAL_SPLIT, device=str(device), verbose=False)
found_classes = {
    name: ap for name, ap in held_out_metrics["per_class"]["segm"].items() if ap and ap > 0
}
handful_classes = {
    handful.class_names[label]
    for index in range(len(handful))
    for label in handful.load_target(index)["labels"].tolist()
}
print("classes with AP > 0 on the held-out photos:", found_classes or "none")
assert set(found_classes) <= handful_classes

# %% [markdown]
# A class the model never saw a positive example of keeps its category logits near the prior
# (sigmoid ≈ 0.01, the focal-loss bias), below the 0.1 score threshold, so it is never
# predicted, and a class that is never predicted has AP 0. Only classes of the handful can
# score.

# %% [markdown]
# ## Exercise 4: crowds

# %%
names = {c["id"]: c["name"] for c in source["categories"]}
crowds = [a for a in source["annotations"] if a.get("iscrowd", 0)]
for a in crowds:
    image = images_by_id[a["image_id"]]
    share = a["area"] / (image["width"] * image["height"])
    print(f"photo {a['image_id']}: a crowd of {names[a['category_id']]}, {share:.0%} of the photo")
assert all(
    0 < a["area"] <= images_by_id[a["image_id"]]["width"] * images_by_id[a["image_id"]]["height"]
    for a in crowds
)

# %% [markdown]
# A crowd region covers many objects that nobody outlined one by one. A detector that finds
# one person inside it is right, but there is no single ground truth to match it to: counting
# it as a false positive would punish correct detections. COCOeval therefore matches
# detections that fall on a crowd region to it and ignores them (neither true nor false
# positive).

# %% [markdown]
# ## Exercise 5: more photos, same minutes
#
# With 32 photos and the same 300 iterations each photo is seen 4 times less often, so the
# AP on the *training* photos goes **down**: memorising 32 photos takes longer than 8. On the
# held-out photos it may rise a little (more examples of each class), but from scratch it stays
# close to zero: a few hundred steps on 32 photos do not teach a ResNet what a cup looks like.
# The real remedy is ImageNet weights and many more photos and iterations (section 5).

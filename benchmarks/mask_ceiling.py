"""How good can SOLO's masks be at a given setting? The AP of perfect predictions.

Each level predicts its masks at stride ``s / 2`` (4, 4, 8, 16, 16 with the official strides)
and inference upsamples them bilinearly. An *oracle* knows every object, its class and its
exact mask, but has to express the mask the way SOLO does: as the level's training target
(``resize_masks``: bilinear downsampling, ``>= 0.5``), upsampled back with the same bilinear
steps as ``SOLO._to_original`` and thresholded at 0.5. Its mask AP (pycocotools' COCOeval,
``segm``) is a ceiling that a trained model can only approach.

Which level does the oracle use? An object whose size lies in two overlapping scale ranges is
a positive of both levels; we report the oracle that always uses the finest level and the one
that always uses the coarsest. Each object gets one detection with its true class and, as
score, its own IoU (the best possible ranking).

Images are taken at their stored size, i.e. as the model's input (true for the demo's data,
whose images are generated at the model's input size).

    python benchmarks/mask_ceiling.py DATA_DIR [--split val] [--scale-ranges tiny|paper|demo]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import torch
import torch.nn.functional as F
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from minisolo import preset  # noqa: E402
from minisolo.data.coco import decode_rles, find_split  # noqa: E402
from minisolo.demo import DEMO_OVERRIDES  # noqa: E402
from minisolo.targets import masks_to_boxes, resize_masks  # noqa: E402


def oracle_mask(mask: torch.Tensor, mask_stride: int) -> torch.Tensor:
    """``mask`` (bool ``[H, W]``, H and W multiples of ``mask_stride``) as SOLO can express it
    at ``mask_stride``: the level's target, then upsampled x``mask_stride`` and ``> 0.5``."""
    height, width = mask.shape
    target = resize_masks(mask[None], (height // mask_stride, width // mask_stride))
    up = F.interpolate(target[None].float(), size=(height, width), mode="bilinear")
    return up[0, 0] > 0.5


def assigned_levels(mask: torch.Tensor, scale_ranges) -> list[int]:
    """Levels whose ``(lower, upper)`` range holds ``sqrt(w * h)`` of the mask's box."""
    x1, y1, x2, y2 = masks_to_boxes(mask[None])[0].tolist()
    size = ((x2 - x1) * (y2 - y1)) ** 0.5
    return [k for k, (lower, upper) in enumerate(scale_ranges) if lower <= size <= upper]


def oracle_ap(
    data_dir: str | Path, split: str, scale_ranges, strides, which: str = "finest"
) -> dict[str, float]:
    """COCOeval ``segm`` numbers of the oracle (``which``: ``"finest"`` or ``"coarsest"``)."""
    annotation_file, _ = find_split(data_dir, split)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(annotation_file))
    results, skipped = [], 0
    for ann in coco.loadAnns(coco.getAnnIds(iscrowd=False)):
        info = coco.imgs[ann["image_id"]]
        gt = torch.from_numpy(decode_rles([coco.annToRLE(ann)])[:, :, 0])
        # pad to a multiple of 32 as the model's input is
        pad_h, pad_w = -info["height"] % 32, -info["width"] % 32
        padded = F.pad(gt, (0, pad_w, 0, pad_h))
        levels = assigned_levels(padded, scale_ranges)
        if not levels:
            skipped += 1
            continue
        level = levels[0] if which == "finest" else levels[-1]
        predicted = oracle_mask(padded, strides[level] // 2)[: info["height"], : info["width"]]
        union = (predicted | gt).sum().item()
        iou = (predicted & gt).sum().item() / max(union, 1)
        rle = mask_utils.encode(np.asfortranarray(predicted.numpy().astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        results.append(
            {
                "image_id": ann["image_id"],
                "category_id": ann["category_id"],
                "segmentation": rle,
                "score": iou,
            }
        )
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(coco, coco.loadRes(results), "segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    names = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    out = {n: round(max(float(v), 0.0), 4) for n, v in zip(names, evaluator.stats[:6], strict=True)}
    out["objects_outside_all_ranges"] = skipped
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--split", default="val")
    parser.add_argument(
        "--scale-ranges",
        default="tiny",
        choices=("tiny", "paper", "demo"),
        help="the tiny preset's ranges, the paper's (in input pixels) or minisolo demo's",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.scale_ranges == "demo":
        config = preset("tiny", **DEMO_OVERRIDES)
    else:
        config = preset(args.scale_ranges)
    report = {"data": str(args.data), "scale_ranges": args.scale_ranges}
    for which in ("finest", "coarsest"):
        report[which] = oracle_ap(args.data, args.split, config.scale_ranges, config.strides, which)
        print(f"oracle ({which} level): {report[which]}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

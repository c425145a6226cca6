"""``minisolo demo``: the whole loop in one command.

Synthetic shapes data (generated once) -> train the tiny SOLO preset -> COCO evaluation ->
pictures of predictions next to ground truth, and the loss curve.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from matplotlib.figure import Figure

from .config import preset
from .data.coco import CocoInstances, collate_batch
from .data.shapes import make_shapes_dataset
from .data.transforms import denormalize
from .engine import make_transforms, train
from .utils import is_fast_mode, pick_device

# About 9 minutes of training on a quiet 2-core CPU; docs/results.md has the measured AP.
DEMO_NUM_TRAIN = 1200
DEMO_NUM_VAL = 100
DEMO_EPOCHS = 6


def ensure_shapes(data_dir: Path, num_train: int, num_val: int, seed: int = 0) -> Path:
    """Generate the shapes dataset unless it is already there."""
    marker = data_dir / "annotations" / "instances_val.json"
    if not marker.is_file():
        make_shapes_dataset(data_dir, num_train=num_train, num_val=num_val, seed=seed)
    return data_dir


def prediction_grid(model, data_dir: Path, path: Path, num_images: int = 6) -> Path:
    """Ground truth (top row) and predictions (bottom row) for the first val images."""
    from .viz import draw_instances

    dataset = CocoInstances(data_dir, "val", transforms=make_transforms(model.config, False))
    items = [dataset[k] for k in range(min(num_images, len(dataset)))]
    images, targets = collate_batch(items)
    device = next(model.parameters()).device
    predictions = model.predict(images.to(device), [t["size"] for t in targets])
    names = list(model.config.class_names)
    figure = Figure(figsize=(3.2 * len(items), 6.8), layout="constrained")
    axes = figure.subplots(2, len(items), squeeze=False)
    for k, (image, target, prediction) in enumerate(zip(images, targets, predictions, strict=True)):
        h, w = target["size"]
        picture = denormalize(image)[:, :h, :w]
        keep = prediction["scores"] >= 0.3
        draw_instances(
            axes[0, k],
            picture,
            target["masks"][:, :h, :w],
            target["labels"],
            None,
            names,
            title="ground truth",
        )
        draw_instances(
            axes[1, k],
            picture,
            prediction["masks"][keep].cpu(),
            prediction["labels"][keep].cpu(),
            prediction["scores"][keep].cpu(),
            names,
            title="prediction (score >= 0.3)",
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    return path


def run_demo(
    out_dir: str | Path = "demo_out",
    *,
    device: str = "auto",
    epochs: int | None = None,
    num_train: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Run the demo and return a summary (metrics, seconds, written files)."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    fast = is_fast_mode()
    num_train = num_train or (24 if fast else DEMO_NUM_TRAIN)
    num_val = 8 if fast else DEMO_NUM_VAL
    epochs = epochs or (1 if fast else DEMO_EPOCHS)
    data_dir = ensure_shapes(out_dir / "shapes", num_train, num_val, seed)
    result = train(
        preset("tiny"),
        data_dir,
        out_dir / "run",
        epochs=epochs,
        device=device,
        seed=seed,
        progress=progress,
    )
    files = {
        "checkpoint": result.checkpoint,
        "metrics": out_dir / "run" / "metrics.json",
        "loss_curve": out_dir / "loss.png",
        "predictions": prediction_grid(result.model, data_dir, out_dir / "predictions.png"),
    }
    shutil.copyfile(out_dir / "run" / "loss.png", files["loss_curve"])
    summary = {
        "metrics": result.metrics,
        "seconds": round(time.perf_counter() - started, 1),
        "train_seconds": round(result.seconds, 1),
        "device": str(pick_device(device)),
        "epochs": epochs,
        "num_train": num_train,
        "files": {k: str(v) for k, v in files.items()},
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    files["summary"] = out_dir / "summary.json"
    summary["files"] = {k: str(v) for k, v in files.items()}
    return summary

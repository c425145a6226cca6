"""The ``minisolo`` command (also ``python -m minisolo``).

minisolo data shapes --out DIR            synthetic COCO-format data
minisolo data coco-subset --out DIR ...   a COCO subset (local COCO root or download)
minisolo train --data DIR [...]           train SOLO, Decoupled SOLO or YOLACT
minisolo eval --checkpoint CKPT --data DIR --out DIR
minisolo predict --checkpoint CKPT IMAGE... --out DIR
minisolo demo [--out DIR]                 shapes data -> train tiny -> evaluate -> pictures
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .checkpoint import CheckpointError
from .data.coco import DataError
from .data.shapes import MAX_SIZE, MIN_SIZE
from .engine import TrainingDiverged


def _add_data_commands(subparsers) -> None:
    data = subparsers.add_parser("data", help="make or fetch datasets")
    kinds = data.add_subparsers(dest="data_command", required=True)

    shapes = kinds.add_parser("shapes", help="write the synthetic shapes dataset (COCO layout)")
    shapes.add_argument("--out", required=True, type=Path)
    shapes.add_argument("--num-train", type=int, default=600)
    shapes.add_argument("--num-val", type=int, default=100)
    shapes.add_argument("--image-size", type=int, default=256)
    shapes.add_argument("--seed", type=int, default=0)
    shapes.add_argument(
        "--min-size", type=float, default=MIN_SIZE, help="smallest object (px of a 256 px image)"
    )
    shapes.add_argument(
        "--max-size", type=float, default=MAX_SIZE, help="largest object (px of a 256 px image)"
    )
    shapes.add_argument("--max-objects", type=int, default=6, help="objects per image: 1 to this")

    subset = kinds.add_parser("coco-subset", help="build a COCO subset (local root or download)")
    subset.add_argument("--out", required=True, type=Path)
    subset.add_argument("--split", default="val2017")
    subset.add_argument("--num-images", type=int, default=100)
    subset.add_argument("--categories", nargs="*", default=None, help="names or ids")
    subset.add_argument("--seed", type=int, default=0)
    subset.add_argument("--coco-root", type=Path, default=None, help="a local COCO folder")
    subset.add_argument("--base-url", default="http://images.cocodataset.org")
    subset.add_argument("--workers", type=int, default=8)


def _add_train_command(subparsers) -> None:
    train = subparsers.add_parser("train", help="train a model on a COCO-format folder")
    train.add_argument("--data", required=True, type=Path)
    train.add_argument("--config", default="tiny", help="preset: tiny or paper")
    train.add_argument("--model", default="solo", choices=["solo", "decoupled_solo", "yolact"])
    length = train.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int)
    length.add_argument("--max-iters", type=int)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--lr", type=float, help="base learning rate (default: the preset's)")
    train.add_argument(
        "--lr-schedule", choices=("step", "cosine"), help="default: the preset's (step)"
    )
    train.add_argument("--device", default="auto", help="auto, cpu or cuda")
    train.add_argument("--out", type=Path, default=Path("runs/train"))
    train.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    train.add_argument("--backbone-weights", type=Path, help="torchvision ResNet .pth file")
    train.add_argument("--workers", type=int, default=0, help="data loading processes")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--no-amp", action="store_true", help="disable mixed precision on CUDA")
    train.add_argument("--image-size", type=int, help="input size (default: the preset's)")
    train.add_argument("--log-every", type=int, default=10, help="iterations per log line")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minisolo", description=__doc__.split("\n")[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_data_commands(subparsers)
    _add_train_command(subparsers)

    evaluate = subparsers.add_parser("eval", help="COCO mask and box AP of a checkpoint")
    evaluate.add_argument("--checkpoint", required=True, type=Path)
    evaluate.add_argument("--data", required=True, type=Path)
    evaluate.add_argument("--split", default="val")
    evaluate.add_argument("--out", type=Path, default=Path("runs/eval"))
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--batch-size", type=int, default=8)

    predict = subparsers.add_parser("predict", help="draw a checkpoint's predictions on images")
    predict.add_argument("--checkpoint", required=True, type=Path)
    predict.add_argument("images", nargs="+", type=Path)
    predict.add_argument("--out", type=Path, default=Path("runs/predict"))
    predict.add_argument("--device", default="auto")
    predict.add_argument("--score-threshold", type=float, default=0.3)

    demo = subparsers.add_parser("demo", help="shapes data -> train tiny SOLO -> evaluate -> PNGs")
    demo.add_argument("--out", type=Path, default=Path("demo_out"))
    demo.add_argument("--device", default="auto")
    demo.add_argument("--iterations", type=int, default=None, help="training iterations")
    demo.add_argument("--epochs", type=int, default=None, help="train for epochs instead")
    demo.add_argument("--num-train", type=int, default=None)
    demo.add_argument("--seed", type=int, default=0)
    return parser


def _print_metrics(metrics: dict) -> None:
    for kind in ("segm", "bbox"):
        numbers = "  ".join(f"{k} {v:.3f}" for k, v in metrics[kind].items())
        print(f"{kind:>5}: {numbers}")
    per_class = metrics.get("per_class", {}).get("segm", {})
    if per_class:
        print("mask AP per class:")
        for name, ap in per_class.items():
            print(f"  {name:<20} {'-' if ap is None else f'{ap:.3f}'}")


def run_data(args) -> int:
    if args.data_command == "shapes":
        from .data.shapes import make_shapes_dataset

        path = make_shapes_dataset(
            args.out,
            num_train=args.num_train,
            num_val=args.num_val,
            image_size=args.image_size,
            seed=args.seed,
            min_size=args.min_size,
            max_size=args.max_size,
            max_objects=args.max_objects,
        )
        print(f"shapes dataset written to {path}")
        return 0
    from .data.subset import build_coco_subset

    path = build_coco_subset(
        args.out,
        split=args.split,
        num_images=args.num_images,
        categories=args.categories,
        seed=args.seed,
        coco_root=args.coco_root,
        base_url=args.base_url,
        workers=args.workers,
    )
    print(f"COCO subset written to {path}")
    return 0


def run_train(args) -> int:
    from .config import preset
    from .engine import train

    overrides = {"lr": args.lr} if args.lr else {}
    if args.lr_schedule:
        overrides["lr_schedule"] = args.lr_schedule
    if args.image_size and args.model == "yolact":
        overrides["image_size"] = args.image_size
    elif args.image_size:
        overrides.update(image_short_side=args.image_size, image_max_size=args.image_size)
    config = preset(args.config, model=args.model, **overrides)
    result = train(
        config,
        args.data,
        args.out,
        epochs=args.epochs,
        max_iters=args.max_iters,
        batch_size=args.batch_size,
        device=args.device,
        resume=args.resume,
        backbone_weights=args.backbone_weights,
        num_workers=args.workers,
        seed=args.seed,
        amp=not args.no_amp,
        log_every=args.log_every,
    )
    if result.interrupted:
        return 130
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports
        return 0
    print(f"checkpoint: {result.checkpoint}")
    print(f"log: {args.out / 'log.jsonl'}  loss curve: {args.out / 'loss.png'}")
    if result.metrics:
        _print_metrics(result.metrics)
        print(f"metrics: {args.out / 'metrics.json'}")
    return 0


def run_eval(args) -> int:
    from .engine import evaluate, load_checkpoint

    model = load_checkpoint(args.checkpoint, args.device)
    metrics = evaluate(
        model,
        args.data,
        args.split,
        device=args.device,
        batch_size=args.batch_size,
        out_dir=args.out,
    )
    _print_metrics(metrics)
    print(f"metrics: {args.out / 'metrics.json'}  results: {args.out / 'results.json'}")
    return 0


def run_predict(args) -> int:
    from .engine import load_checkpoint
    from .predict import predict_files

    model = load_checkpoint(args.checkpoint, args.device)
    for path in predict_files(model, args.images, args.out, args.score_threshold):
        print(path)
    return 0


def run_demo(args) -> int:
    from .demo import run_demo as demo

    started = time.perf_counter()
    summary = demo(
        args.out,
        device=args.device,
        iterations=args.iterations,
        epochs=args.epochs,
        num_train=args.num_train,
        seed=args.seed,
    )
    minutes = (time.perf_counter() - started) / 60
    print(json.dumps(summary["metrics"]["segm"], indent=None))
    print(f"demo finished in {minutes:.1f} min; everything is in {args.out}/:")
    for name, path in summary["files"].items():
        print(f"  {name:<12} {path}")
    return 0


COMMANDS = {
    "data": run_data,
    "train": run_train,
    "eval": run_eval,
    "predict": run_predict,
    "demo": run_demo,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (DataError, CheckpointError, FileNotFoundError) as error:
        print(f"minisolo {args.command}: error: {error}", file=sys.stderr)
        return 2
    except TrainingDiverged as error:
        print(f"minisolo {args.command}: {error}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

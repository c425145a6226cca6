"""The ``minisolo`` command (also ``python -m minisolo``).

minisolo data shapes --out DIR            synthetic COCO-format data
minisolo data coco-subset --out DIR ...   a COCO subset (local COCO root or download)
minisolo train --data DIR [...]           train SOLO, Decoupled SOLO, SOLOv2 or YOLACT
minisolo eval --checkpoint CKPT --data DIR --out DIR
minisolo predict --checkpoint CKPT IMAGE... --out DIR
minisolo demo [--out DIR]                 shapes data -> train tiny -> evaluate -> pictures
minisolo models build [NAME ...]          train the notebooks' models once (data/models/)
minisolo models list                      the cached models, with their AP and date
minisolo weights resnet50 [...]           torchvision's ImageNet weights, once (data/weights/)
minisolo --version                        the package version

``minisolo COMMAND --help`` lists a command's options, each with its default. ``train`` reads
its configuration from a preset or a JSON file (``--config tiny|paper|FILE.json``) and changes
any field with ``--set key=value ...`` (``--set lr=0.005 lr_schedule=cosine``), each value
checked against the field's type; the run folder's ``config.json`` records the result. A bad
configuration is a one-line error with exit code 2, before anything is written.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from .checkpoint import CheckpointError
from .config import AMP_CHOICES, CONFIG_CLASSES, ConfigError
from .data.coco import DataError
from .data.shapes import MAX_SIZE, MIN_SIZE
from .engine import TrainingDiverged
from .model_cache import UnknownModel

DEVICE_HELP = "auto (the GPU when PyTorch sees one), cpu or cuda"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Descriptions as written, and each option's default after its help: ``(default: 8)``,
    unless the help says it in words (``default: the config's lr``) or the option is required."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.required or "default" in text:
            return text
        return super()._get_help_string(action)


def _command(subparsers, name: str, text: str) -> argparse.ArgumentParser:
    """A subcommand whose ``--help`` starts with ``text`` and shows the defaults."""
    return subparsers.add_parser(name, help=text, description=text, formatter_class=HelpFormatter)


def _add_data_commands(subparsers) -> None:
    data = _command(subparsers, "data", "make or fetch datasets")
    kinds = data.add_subparsers(
        dest="data_command", required=True, metavar="KIND", help="shapes or coco-subset"
    )

    shapes = _command(kinds, "shapes", "write the synthetic shapes dataset (COCO layout)")
    shapes.add_argument(
        "--out", required=True, type=Path, metavar="DIR", help="folder to write it to"
    )
    shapes.add_argument("--num-train", type=int, default=600, help="training images")
    shapes.add_argument("--num-val", type=int, default=100, help="validation images")
    shapes.add_argument("--image-size", type=int, default=256, help="image side in pixels")
    shapes.add_argument("--seed", type=int, default=0, help="random seed")
    shapes.add_argument(
        "--min-size", type=float, default=MIN_SIZE, help="smallest object (px of a 256 px image)"
    )
    shapes.add_argument(
        "--max-size", type=float, default=MAX_SIZE, help="largest object (px of a 256 px image)"
    )
    shapes.add_argument("--max-objects", type=int, default=6, help="objects per image: 1 to this")

    subset = _command(kinds, "coco-subset", "build a COCO subset (local root or download)")
    subset.add_argument(
        "--out", required=True, type=Path, metavar="DIR", help="folder to write it to"
    )
    subset.add_argument("--split", default="val2017", help="the COCO split to pick from")
    subset.add_argument("--num-images", type=int, default=100, help="images to pick")
    subset.add_argument(
        "--categories", nargs="*", default=None, help="names or ids (default: all 80)"
    )
    subset.add_argument("--seed", type=int, default=0, help="random seed of the pick")
    subset.add_argument(
        "--coco-root",
        type=Path,
        default=None,
        help="a local COCO folder to copy from (default: none, download the images)",
    )
    subset.add_argument(
        "--base-url", default="http://images.cocodataset.org", help="where COCO is downloaded"
    )
    subset.add_argument("--workers", type=int, default=8, help="parallel downloads")
    subset.add_argument(
        "--exclude-ids",
        type=Path,
        metavar="FILE",
        help="image ids never to pick (a test set held apart): one per line, a JSON list, or "
        "another subset's subset_<split>.json (default: none)",
    )


def _add_train_command(subparsers) -> None:
    train = _command(subparsers, "train", "train a model on a COCO-format folder")
    data = train.add_argument_group("data")
    data.add_argument(
        "--data",
        required=True,
        type=Path,
        metavar="DIR",
        help="COCO-format folder: DIR/annotations/instances_<split>*.json, images in DIR/<split>*/",
    )
    data.add_argument(
        "--image-size",
        type=int,
        metavar="PX",
        help="input size, an override as --set (SOLO: image_short_side and image_max_size; "
        "YOLACT: image_size) (default: the config's)",
    )
    data.add_argument("--workers", type=int, default=0, metavar="N", help="data loading processes")

    model = train.add_argument_group("model")
    model.add_argument(
        "--config",
        default="tiny",
        metavar="NAME|FILE",
        help="a preset (tiny, paper) or a JSON file holding a whole config (as a run "
        'folder\'s config.json) or {"preset": "tiny", "model": "solo", "overrides": '
        '{"lr": 0.005}}',
    )
    model.add_argument(
        "--model",
        choices=list(CONFIG_CLASSES),
        help="the model to train (default: solo, or the model of a --config file)",
    )
    model.add_argument(
        "--set",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="change config fields, after --config: --set lr=0.005 lr_schedule=cosine "
        '"lr_steps=[8,11]"; values are JSON or Python literals, checked against the '
        "field's type; repeatable (default: none)",
    )
    model.add_argument(
        "--backbone-weights",
        metavar="FILE|imagenet",
        help="torchvision ResNet .pth file, or 'imagenet': torchvision's file for the config's "
        "depth (cached in data/weights/, downloaded once; see `minisolo weights`) (default: "
        "none, random weights)",
    )

    schedule = train.add_argument_group("schedule")
    length = schedule.add_mutually_exclusive_group()
    length.add_argument(
        "--epochs", type=int, metavar="N", help="training length (default: the config's)"
    )
    length.add_argument(
        "--max-iters",
        type=int,
        metavar="N",
        help="training length in iterations instead (default: none)",
    )
    schedule.add_argument(
        "--batch-size",
        type=int,
        metavar="N",
        help="images per step and process (default: the config's)",
    )
    schedule.add_argument(
        "--lr", type=float, help="base learning rate, an override as --set (default: the config's)"
    )
    schedule.add_argument(
        "--lr-schedule",
        choices=("step", "cosine"),
        help="step (lr x 0.1 at lr_steps) or cosine, an override as --set (default: the config's)",
    )

    output = train.add_argument_group("output")
    output.add_argument(
        "--out",
        type=Path,
        default=Path("runs/train"),
        metavar="DIR",
        help="run folder: last.pt, log.jsonl, loss.png, config.json, metrics.json",
    )
    output.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    output.add_argument(
        "--log-every", type=int, default=10, metavar="N", help="iterations per log line"
    )
    output.add_argument(
        "--checkpoint-every",
        type=_positive,
        metavar="N",
        help="write OUT/last.pt every N iterations (default: one epoch, at most 1000); a crash "
        "or kill -9 loses at most N",
    )
    output.add_argument(
        "--keep",
        type=_positive,
        default=0,
        metavar="K",
        help="also keep the K newest checkpoints as OUT/iter_000500.pt ... (default: none)",
    )
    output.add_argument(
        "--eval-every",
        type=_positive,
        metavar="N",
        help="evaluate on the val split every N iterations (OUT/eval.jsonl) and keep the best "
        "mask AP as OUT/best.pt (default: none, only at the end)",
    )

    other = train.add_argument_group("hardware and other")
    other.add_argument("--device", default="auto", help=DEVICE_HELP)
    other.add_argument(
        "--amp",
        choices=AMP_CHOICES,
        default="auto",
        help="mixed precision of the forward pass: auto = bf16 on GPUs and on CPUs with native "
        "bf16 (AVX512-BF16, AMX), fp16 on older GPUs, float32 elsewhere (default: auto)",
    )
    other.add_argument("--no-amp", action="store_true", help="the same as --amp off")

    other.add_argument("--seed", type=int, default=0, help="random seed (torchrun adds the rank)")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="minisolo", description=__doc__.replace("``", ""), formatter_class=HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="what to do (COMMAND --help)"
    )
    _add_data_commands(subparsers)
    _add_train_command(subparsers)

    evaluate = _command(subparsers, "eval", "COCO mask and box AP of a checkpoint")
    evaluate.add_argument(
        "--checkpoint", required=True, type=Path, help="a checkpoint of train (last.pt, best.pt)"
    )
    evaluate.add_argument(
        "--data", required=True, type=Path, metavar="DIR", help="COCO-format folder"
    )
    evaluate.add_argument("--split", default="val", help="the split of DIR to evaluate")
    evaluate.add_argument(
        "--out",
        type=Path,
        default=Path("runs/eval"),
        metavar="DIR",
        help="folder for metrics.json and results.json",
    )
    evaluate.add_argument("--device", default="auto", help=DEVICE_HELP)
    evaluate.add_argument("--batch-size", type=int, default=8, help="images per forward pass")

    predict = _command(subparsers, "predict", "draw a checkpoint's predictions on images")
    predict.add_argument(
        "--checkpoint", required=True, type=Path, help="a checkpoint of train (last.pt, best.pt)"
    )
    predict.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files")
    predict.add_argument(
        "--out",
        type=Path,
        default=Path("runs/predict"),
        metavar="DIR",
        help="folder for the IMAGE_pred.png pictures",
    )
    predict.add_argument("--device", default="auto", help=DEVICE_HELP)
    predict.add_argument(
        "--score-threshold", type=float, default=0.3, help="draw predictions scoring above this"
    )

    demo = _command(subparsers, "demo", "shapes data -> train tiny SOLO -> evaluate -> PNGs")
    demo.add_argument(
        "--out", type=Path, default=Path("demo_out"), metavar="DIR", help="folder for it all"
    )
    demo.add_argument("--device", default="auto", help=DEVICE_HELP)
    demo.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="training iterations (default: the cached demo model; any of these options "
        "trains a fresh one)",
    )
    demo.add_argument(
        "--epochs", type=int, default=None, help="train for epochs instead (default: none)"
    )
    demo.add_argument(
        "--num-train", type=int, default=None, help="shapes training images (default: the demo's)"
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed")
    demo.add_argument(
        "--amp",
        choices=AMP_CHOICES,
        default=None,
        help="mixed precision of a fresh training (as in train; default: auto)",
    )

    models = _command(subparsers, "models", "the train-once cache of trained tiny models")
    actions = models.add_subparsers(
        dest="models_command", required=True, metavar="ACTION", help="build or list"
    )
    build = _command(actions, "build", "train the named models unless they are cached")
    build.add_argument(
        "names", nargs="*", help="default: the notebooks' models (solo, decoupled_solo, yolact)"
    )
    build.add_argument("--device", default="auto", help=DEVICE_HELP)
    build.add_argument("--rebuild", action="store_true", help="train again even when cached")
    _command(actions, "list", "show the cached models")

    weights = _command(subparsers, "weights", "download torchvision's ImageNet ResNets")
    weights.add_argument(
        "names", nargs="*", help="resnet18, resnet34 and/or resnet50 (default: list the cache)"
    )
    weights.add_argument("--base-url", help="default: https://download.pytorch.org/models")
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
        exclude_ids=args.exclude_ids,
    )
    print(f"COCO subset written to {path}")
    return 0


def train_config(args):
    """The config ``train`` trains: ``--config`` (a preset or a JSON file), then ``--set``,
    then ``--lr``, ``--lr-schedule`` and ``--image-size``. Anything wrong is a ConfigError."""
    from .config import load_config, parse_overrides, with_overrides
    from .weights import IMAGENET, IMAGENET_FILES

    base = load_config(args.config, model=args.model)
    overrides = parse_overrides(type(base), args.set)
    if args.lr is not None:
        overrides["lr"] = args.lr
    if args.lr_schedule:
        overrides["lr_schedule"] = args.lr_schedule
    if args.image_size and base.model == "yolact":
        overrides["image_size"] = args.image_size
    elif args.image_size:
        overrides.update(image_short_side=args.image_size, image_max_size=args.image_size)
    config = with_overrides(base, overrides)
    if args.backbone_weights == IMAGENET:  # say so now, not after loading the data
        if config.backbone_width != 64:
            raise ConfigError(
                f"--backbone-weights imagenet needs a full-width ResNet (backbone_width=64); "
                f"this config has backbone_width={config.backbone_width} (the tiny presets): "
                "use --config paper or --set backbone_width=64"
            )
        if f"resnet{config.backbone_depth}" not in IMAGENET_FILES:
            raise ConfigError(
                f"--backbone-weights imagenet: no ImageNet file for ResNet-"
                f"{config.backbone_depth}; there are {', '.join(IMAGENET_FILES)}"
            )
    return config


def run_train(args) -> int:
    from .engine import train

    config = train_config(args)
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
        amp="off" if args.no_amp else args.amp,
        log_every=args.log_every,
        checkpoint_every=args.checkpoint_every,
        keep=args.keep,
        eval_every=args.eval_every,
    )
    if result.interrupted:  # the engine said where the checkpoint is and how to resume
        return 128 + (result.stop_signal or signal.SIGINT)  # 130 for SIGINT, 143 for SIGTERM
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports
        return 0
    print(f"checkpoint: {result.checkpoint}  (trained in {result.precision})")
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
        amp=args.amp,
    )
    minutes = (time.perf_counter() - started) / 60
    if "cached_model" in summary:
        print(f"model: {summary['cached_model']}")
    print(json.dumps(summary["metrics"]["segm"], indent=None))
    print(f"demo finished in {minutes:.1f} min; everything is in {args.out}/:")
    for name, path in summary["files"].items():
        print(f"  {name:<12} {path}")
    return 0


def run_models(args) -> int:
    from . import model_cache

    if args.models_command == "list":
        entries = model_cache.list_cached()
        print(f"cache: {model_cache.cache_dir()}")
        if not entries:
            print("no trained models yet: `minisolo models build` trains them")
        for entry in entries:
            state = "" if entry["current"] else "  (old recipe: not used)"
            print(f"  {model_cache.describe(entry)}{state}")
        return 0
    names = args.names or list(model_cache.NOTEBOOK_MODELS)
    unknown = [n for n in names if n not in model_cache.RECIPES]
    if unknown:
        raise model_cache.UnknownModel(
            f"no recipe for {unknown}; choose from {sorted(model_cache.RECIPES)}"
        )
    for name in names:
        started = time.perf_counter()
        folder = model_cache.build(name, device=args.device, rebuild=args.rebuild)
        info = model_cache.load_info(folder)
        took = time.perf_counter() - started
        print(f"{model_cache.describe(info)} ({took / 60:.1f} min for this call)")
    return 0


def run_weights(args) -> int:
    from . import weights

    if not args.names:
        print(f"cache: {weights.weights_dir()}")
        for name, file_name in weights.IMAGENET_FILES.items():
            path = weights.cached_weights(name)
            state = f"cached: {path}" if path else f"not cached ({weights.SIZES_MB[name]} MB)"
            print(f"  {name:<9} {file_name:<22} {state}")
        return 0
    unknown = [n for n in args.names if n not in weights.IMAGENET_FILES]
    if unknown:
        print(
            f"minisolo weights: error: unknown {unknown}; choose from "
            f"{', '.join(weights.IMAGENET_FILES)}",
            file=sys.stderr,
        )
        return 2
    for name in args.names:
        print(weights.imagenet_weights(name, base_url=args.base_url))
    return 0


COMMANDS = {
    "data": run_data,
    "train": run_train,
    "eval": run_eval,
    "predict": run_predict,
    "demo": run_demo,
    "models": run_models,
    "weights": run_weights,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (DataError, CheckpointError, ConfigError, FileNotFoundError, UnknownModel) as error:
        print(f"minisolo {args.command}: error: {error}", file=sys.stderr)
        return 2
    except TrainingDiverged as error:
        print(f"minisolo {args.command}: {error}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

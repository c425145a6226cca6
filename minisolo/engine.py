"""Training, evaluation and prediction loops, shared by the command, notebooks and tests.

* :func:`train` runs the paper's recipe (SGD, linear warmup, step schedule, gradient clipping
  at 35) on any COCO-format folder, on CPU or CUDA (AMP: bf16 where supported, else fp16 with
  a gradient scaler), one process or several under ``torchrun`` (DistributedDataParallel).
  It writes ``last.pt`` every epoch and on Ctrl-C (atomically), ``log.jsonl``, ``loss.png``
  and, when a val split exists, ``metrics.json``. ``resume=True`` continues exactly where the
  last checkpoint stopped, down to the random number generators.
* :func:`evaluate` runs pycocotools' COCOeval for ``segm`` and ``bbox``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from .config import config_from_dict
from .data.coco import CocoInstances, collate_batch, find_split
from .data.transforms import build_transforms
from .solo import SOLO, build_model
from .utils import pick_device, seed_everything

LOSS_KEYS_SKIPPED = ("num_positives",)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    model: nn.Module
    config: Any
    run_dir: Path
    history: list[dict] = field(default_factory=list)
    checkpoint: Path | None = None
    metrics: dict | None = None
    interrupted: bool = False
    seconds: float = 0.0


# --------------------------------------------------------------------------------- helpers
def make_transforms(config, train: bool):
    """Resize (keep aspect, short side, long-side cap; YOLACT: squash to a square), flip when
    training, normalise."""
    short_side = config.image_short_side
    multiscale = short_side if isinstance(short_side, tuple) else None
    base = short_side[-1] if isinstance(short_side, tuple) else short_side
    squash = config.image_size if config.model == "yolact" else None
    return build_transforms(train, base, config.image_max_size, multiscale, squash=squash)


def learning_rate(
    config, iteration: int, step_iterations: Sequence[int], total_iterations: int | None = None
) -> float:
    """Linear warmup from ``lr * warmup_ratio`` over ``warmup_iters``, then the schedule.

    ``config.lr_schedule == "step"`` (the paper's): x0.1 at each of ``step_iterations``.
    ``"cosine"``: ``lr * (1 + cos(pi * iteration / total_iterations)) / 2``, from ``lr`` down
    to 0 at the last iteration, which suits short runs. The warmup is mmdetection's ``linear``
    warmup that the official SOLO schedule uses.
    """
    schedule = config.lr_schedule
    if schedule == "cosine":
        if not total_iterations:
            raise ValueError("the cosine schedule needs total_iterations")
        progress = min(iteration / total_iterations, 1.0)
        lr = config.lr * 0.5 * (1 + math.cos(math.pi * progress))
    elif schedule == "step":
        lr = config.lr * 0.1 ** sum(iteration >= s for s in step_iterations)
    else:
        raise ValueError(f"lr_schedule must be 'step' or 'cosine', got {schedule!r}")
    if iteration < config.warmup_iters:
        k = (1 - iteration / config.warmup_iters) * (1 - config.warmup_ratio)
        lr *= 1 - k
    return lr


def make_optimizer(config, parameters) -> torch.optim.Optimizer:
    """SGD with momentum (the paper's), or AdamW (``config.optimizer == "adamw"``)."""
    kind = getattr(config, "optimizer", "sgd")
    if kind == "adamw":
        return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    if kind != "sgd":
        raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {kind!r}")
    return torch.optim.SGD(
        parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


def autocast_dtype(device: torch.device, amp: bool | str = "auto") -> torch.dtype | None:
    """bf16 on GPUs that support it, fp16 on older GPUs, nothing on the CPU."""
    if device.type != "cuda" or amp is False or amp == "off":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def targets_to(targets: list[dict], device: torch.device) -> list[dict]:
    return [
        {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()}
        for t in targets
    ]


def _distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank); starts the process group under ``torchrun``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def _epoch_order(num_items: int, seed: int, epoch: int) -> list[int]:
    """The shuffled order of one epoch, from its own generator (not the global one), so that a
    resumed run sees the same batches as an uninterrupted one."""
    generator = torch.Generator().manual_seed(seed * 1000 + epoch)
    return torch.randperm(num_items, generator=generator).tolist()


def _checkpoint_state(model, optimizer, scaler, config, dataset, epoch, batch, iteration, history):
    core = model.module if hasattr(model, "module") else model
    return {
        "model": core.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "config": config.to_dict(),
        "model_kind": config.model,
        "class_names": list(config.class_names),
        "category_ids": list(dataset.category_ids),
        "epoch": epoch,
        "batch_in_epoch": batch,
        "iteration": iteration,
        "rng": ckpt.rng_state(),
        "history": history,
    }


def _write_loss_plot(history: list[dict], path: Path) -> None:
    from .viz import plot_loss_curve

    plot_loss_curve(history, path, smooth=5 if len(history) >= 20 else 1)


# --------------------------------------------------------------------------------- train
def train(
    config,
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    epochs: int | None = None,
    max_iters: int | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    resume: bool = False,
    backbone_weights: str | Path | None = None,
    num_workers: int = 0,
    seed: int = 0,
    amp: bool | str = "auto",
    log_every: int = 10,
    evaluate_at_end: bool = True,
    progress: bool = True,
    callbacks: Sequence[Callable[[dict], None]] = (),
    train_split: str = "train",
    val_split: str = "val",
) -> TrainResult:
    """Train ``config``'s model on the COCO-format folder ``data_dir``; outputs in ``out_dir``.

    ``epochs`` (default ``config.epochs``) or ``max_iters`` set the length; the step schedule
    is stretched to it. Each callback gets a dict (iteration, epoch, lr, losses) every
    ``log_every`` iterations; raising ``KeyboardInterrupt`` there stops training like Ctrl-C
    (a checkpoint is written, and ``resume=True`` continues from it).
    """
    started = time.perf_counter()
    rank, world, local_rank = _distributed()
    run_dir = Path(out_dir)
    checkpoint_path = run_dir / "last.pt"
    device_ = pick_device(device)
    if device_.type == "cuda" and world > 1:
        device_ = torch.device("cuda", local_rank)
        torch.cuda.set_device(device_)

    state = None
    if resume:
        state = ckpt.load(checkpoint_path)
        config = config_from_dict(state["config"])
    seed_everything(seed + rank)

    dataset = CocoInstances(data_dir, train_split, transforms=make_transforms(config, train=True))
    if not state:
        config = dataclasses.replace(
            config, num_classes=len(dataset.class_names), class_names=tuple(dataset.class_names)
        )
    batch_size = batch_size or config.batch_size
    model = build_model(config).to(device_)
    if backbone_weights and not state:
        from .backbone import load_torchvision_weights

        load_torchvision_weights(model.backbone, backbone_weights)
    # NHWC tensors: cuDNN and oneDNN convolutions skip layout reorders (CPU: about 1.15x per
    # step, benchmarks/run.py --only package_changes)
    model = model.to(memory_format=torch.channels_last)

    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(config, parameters)
    dtype = autocast_dtype(device_, amp)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)

    start_epoch, start_batch, iteration, history = 0, 0, 0, []
    if state:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, start_batch = state["epoch"], state["batch_in_epoch"]
        iteration, history = state["iteration"], list(state["history"])
        ckpt.set_rng_state(state["rng"])

    # SOLO's loss needs only the positive cells' mask channels: skip the other S^2 - P
    forward_kwargs = {"full_masks": False} if isinstance(model, SOLO) else {}
    train_model: nn.Module = model
    if world > 1:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device_.index] if device_.type == "cuda" else None
        )

    per_replica = math.ceil(len(dataset) / world)
    iters_per_epoch = max(1, math.ceil(per_replica / batch_size))
    if max_iters is not None:
        total_iters = max_iters
        num_epochs = math.ceil(max_iters / iters_per_epoch)
        step_iters = [round(s / config.epochs * max_iters) for s in config.lr_steps]
    else:
        num_epochs = epochs or config.epochs
        total_iters = num_epochs * iters_per_epoch
        step_iters = [round(s / config.epochs * total_iters) for s in config.lr_steps]

    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    log_file = (run_dir / "log.jsonl").open("a") if rank == 0 else None
    bar = tqdm(
        total=total_iters,
        initial=iteration,
        disable=not progress or rank != 0,
        desc=f"train {config.model}",
        unit="it",
        dynamic_ncols=True,
    )

    def save(epoch: int, batch: int) -> None:
        if rank == 0:
            save_atomic_state = _checkpoint_state(
                model, optimizer, scaler, config, dataset, epoch, batch, iteration, history
            )
            ckpt.save_atomic(save_atomic_state, checkpoint_path)

    interrupted = False
    epoch, batch_in_epoch = start_epoch, start_batch
    window: list[dict[str, torch.Tensor]] = []
    window_start = time.perf_counter()
    train_model.train()
    try:
        while epoch < num_epochs and iteration < total_iters:
            loader = _loader(
                dataset, batch_size, seed, epoch, batch_in_epoch, world, rank, num_workers, device_
            )
            for images, targets in loader:
                if iteration >= total_iters:
                    break
                lr = learning_rate(config, iteration, step_iters, total_iters)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                images = images.to(device_, non_blocking=True)
                images = images.contiguous(memory_format=torch.channels_last)
                targets = targets_to(targets, device_)
                with torch.autocast(
                    device_.type, dtype=dtype or torch.float32, enabled=dtype is not None
                ):
                    outputs = train_model(images, **forward_kwargs)
                losses = model.loss(outputs, targets)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(losses["loss"]).backward()
                scaler.unscale_(optimizer)
                if config.grad_clip:
                    torch.nn.utils.clip_grad_norm_(parameters, config.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                iteration += 1
                batch_in_epoch += 1
                window.append({k: v.detach() for k, v in losses.items()})
                bar.update(1)
                if iteration % log_every == 0 or iteration == total_iters:
                    record = _log_record(
                        window,
                        iteration,
                        epoch,
                        lr,
                        batch_size * world,
                        time.perf_counter() - window_start,
                    )
                    window, window_start = [], time.perf_counter()
                    history.append(record)
                    if log_file:
                        log_file.write(json.dumps(record) + "\n")
                        log_file.flush()
                    bar.set_postfix(
                        {k: f"{v:.3f}" for k, v in record.items() if k.startswith("loss")}
                    )
                    for callback in callbacks:
                        callback(record)
            else:
                epoch, batch_in_epoch = epoch + 1, 0
                if window:  # check the tail of the epoch before saving it
                    _log_record(window, iteration, epoch, lr, batch_size * world, 1.0)
                save(epoch, 0)
                continue
            break  # total_iters reached inside the epoch
        if batch_in_epoch:
            save(epoch, batch_in_epoch)
    except KeyboardInterrupt:
        interrupted = True
        if window:
            _log_record(window, iteration, epoch, 0.0, 1, 1.0)  # never save a diverged state
        save(epoch, batch_in_epoch)
        if rank == 0 and progress:
            tqdm.write(f"interrupted: checkpoint saved to {checkpoint_path}; resume with --resume")
    finally:
        bar.close()
        if log_file:
            log_file.close()

    result = TrainResult(model, config, run_dir, history, checkpoint_path, None, interrupted)
    if rank == 0 and history:
        _write_loss_plot(history, run_dir / "loss.png")
    if rank == 0 and evaluate_at_end and not interrupted and _has_split(data_dir, val_split):
        result.metrics = evaluate(
            model,
            data_dir,
            val_split,
            device=str(device_),
            out_dir=run_dir,
            progress=progress,
            verbose=False,
        )
    if world > 1:
        dist.barrier()
    result.seconds = time.perf_counter() - started
    return result


def _has_split(data_dir: str | Path, split: str) -> bool:
    try:
        find_split(data_dir, split)
    except Exception:
        return False
    return True


def _loader(dataset, batch_size, seed, epoch, start_batch, world, rank, num_workers, device):
    if world > 1:
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, seed=seed)
        sampler.set_epoch(epoch)
        order = list(sampler)
    else:
        order = _epoch_order(len(dataset), seed, epoch)
    order = order[start_batch * batch_size :]
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=order,
        collate_fn=collate_batch,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        # the loader's own generator, so creating it never draws from the global RNG
        generator=torch.Generator().manual_seed(seed * 1000 + epoch),
    )


def _log_record(window, iteration, epoch, lr, images_per_step, seconds) -> dict:
    """Average the losses of the last iterations (one host sync) and check they are finite."""
    keys = [k for k in window[0] if k not in LOSS_KEYS_SKIPPED]
    means = torch.stack([torch.stack([w[k].float() for w in window]).mean() for k in keys])
    values = dict(zip(keys, means.tolist(), strict=True))
    if not all(math.isfinite(v) for v in values.values()):
        raise TrainingDiverged(
            f"loss became {values['loss']} at iteration {iteration} (epoch {epoch + 1}); "
            "training stopped and the last good checkpoint was kept. Try a lower learning rate "
            "(--lr) or check the data."
        )
    record = {"iteration": iteration, "epoch": epoch + 1, "lr": lr, **values}
    record["images_per_s"] = len(window) * images_per_step / max(seconds, 1e-9)
    return record


# --------------------------------------------------------------------------------- load
def load_checkpoint(path: str | Path, device: str = "cpu") -> nn.Module:
    """Rebuild the model a checkpoint describes (SOLO, Decoupled SOLO or YOLACT) and load it.

    The model gets ``category_ids`` (contiguous label -> dataset category id) as an attribute.
    """
    state = ckpt.load(path)
    config = config_from_dict(state["config"])
    model = build_model(config)
    model.load_state_dict(state["model"])
    model.category_ids = list(state.get("category_ids", range(1, config.num_classes + 1)))
    return model.to(pick_device(device)).eval()


# --------------------------------------------------------------------------------- evaluate
COCO_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def predictions_to_coco(
    predictions: Sequence[dict], image_ids: Sequence[int], category_ids: Sequence[int]
) -> list[dict]:
    """COCO results records (RLE masks, boxes from the masks, original category ids)."""
    records = []
    for prediction, image_id in zip(predictions, image_ids, strict=True):
        masks = prediction["masks"].cpu().numpy().astype(np.uint8)
        if masks.shape[0] == 0:
            continue
        rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0)))
        boxes = mask_utils.toBbox(rles)
        for rle, box, label, score in zip(
            rles, boxes, prediction["labels"].tolist(), prediction["scores"].tolist(), strict=True
        ):
            rle["counts"] = rle["counts"].decode("ascii")
            records.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(category_ids[label]),
                    "segmentation": rle,
                    "bbox": [float(x) for x in box],
                    "score": float(score),
                }
            )
    return records


def coco_metrics(coco_gt, records: list[dict], image_ids: Sequence[int], verbose: bool = True):
    """COCOeval ``segm`` and ``bbox`` numbers, plus per-class mask and box AP."""
    names = {c["id"]: c["name"] for c in coco_gt.loadCats(coco_gt.getCatIds())}
    metrics: dict[str, Any] = {"per_class": {}}
    for iou_type in ("segm", "bbox"):
        key = "segmentation" if iou_type == "segm" else "bbox"
        drop = "bbox" if iou_type == "segm" else "segmentation"
        if not records:
            metrics[iou_type] = dict.fromkeys(COCO_STAT_NAMES, 0.0)
            metrics["per_class"][iou_type] = {}
            continue
        results = [{k: v for k, v in r.items() if k != drop} for r in records if key in r]
        quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
        with quiet:
            coco_dt = coco_gt.loadRes(results)
            evaluator = COCOeval(coco_gt, coco_dt, iou_type)
            evaluator.params.imgIds = list(image_ids)
            if verbose:
                print(f"--- {iou_type} ---")
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        stats = [max(float(s), 0.0) for s in evaluator.stats[:6]]
        metrics[iou_type] = dict(zip(COCO_STAT_NAMES, stats, strict=True))
        precision = evaluator.eval["precision"]  # [IoU, recall, class, area, max dets]
        per_class = {}
        for k, category_id in enumerate(evaluator.params.catIds):
            p = precision[:, :, k, 0, -1]
            per_class[names[category_id]] = float(p[p > -1].mean()) if (p > -1).any() else None
        metrics["per_class"][iou_type] = per_class
    return metrics


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data_dir: str | Path,
    split: str = "val",
    *,
    device: str = "auto",
    batch_size: int = 8,
    out_dir: str | Path | None = None,
    progress: bool = True,
    verbose: bool = True,
    max_images: int | None = None,
) -> dict:
    """COCO mask and box AP of ``model`` on ``data_dir``'s ``split`` (pycocotools COCOeval).

    Writes ``results.json`` (RLE masks) and ``metrics.json`` to ``out_dir`` when given.
    """
    device_ = pick_device(device)
    was_training = model.training
    model = model.to(device_).eval()
    try:
        return _evaluate(
            model, data_dir, split, device_, batch_size, out_dir, progress, verbose, max_images
        )
    finally:
        model.train(was_training)


def _evaluate(model, data_dir, split, device_, batch_size, out_dir, progress, verbose, max_images):
    dataset = CocoInstances(data_dir, split, transforms=make_transforms(model.config, train=False))
    indices = list(range(len(dataset)))[:max_images]
    loader = DataLoader(
        torch.utils.data.Subset(dataset, indices),
        batch_size=batch_size,
        collate_fn=collate_batch,
    )
    records, image_ids = [], []
    for images, targets in tqdm(loader, desc="evaluate", disable=not progress, unit="batch"):
        predictions = model.predict(
            images.to(device_),
            [t["size"] for t in targets],
            [t["orig_size"] for t in targets],
        )
        ids = [t["image_id"] for t in targets]
        image_ids += ids
        records += predictions_to_coco(predictions, ids, dataset.category_ids)
    metrics = coco_metrics(dataset.coco, records, image_ids, verbose=verbose)
    metrics["num_images"] = len(image_ids)
    metrics["num_detections"] = len(records)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(records))
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics

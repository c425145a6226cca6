"""Shared pieces of the benchmarks: the run context, result rows, timers, machine facts and
synthetic training batches."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class Context:
    """What every benchmark function receives."""

    quick: bool = False
    device: str = "cpu"  # "cpu" or "cuda": where the paper-size rows run
    threads: int = 2
    seed: int = 0
    default_wait: bool = False  # --default-wait: OMP_WAIT_POLICY left unset (a child process)
    notes: dict[str, Any] = field(default_factory=dict)  # extra results for the report

    def repeats(self, full: int, quick: int = 1) -> int:
        return quick if self.quick else full


def row(
    name: str,
    value: float | None,
    unit: str,
    device: str,
    config: dict[str, Any] | None = None,
    detail: Any = None,
) -> dict[str, Any]:
    """One result: ``{"name", "value", "unit", "device", "config", "detail"}``."""
    if isinstance(value, float):
        value = round(value, 4)
    return {
        "name": name,
        "value": value,
        "unit": unit,
        "device": device,
        "config": config or {},
        "detail": detail if detail is not None else {},
    }


def synchronize(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_calls(
    fn: Callable[[], Any], repeats: int, warmup: int = 1, device: str = "cpu"
) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def ms_summary(times: list[float]) -> dict[str, float]:
    """Median and minimum of a list of seconds, in milliseconds."""
    return {
        "median_ms": round(1e3 * statistics.median(times), 2),
        "min_ms": round(1e3 * min(times), 2),
        "repeats": len(times),
    }


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(threads: int, device: str) -> dict[str, Any]:
    """The facts a reader needs to compare numbers across machines."""
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def shapes_batch(
    batch: int, size: int = 256, min_objects: int = 3, max_objects: int = 5, seed: int = 0
) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """A training batch of the synthetic shapes data: normalised images ``[B, 3, size, size]``
    and per-image targets (``masks`` bool ``[N, size, size]``, ``labels``, ``boxes``) with
    ``min_objects``..``max_objects`` objects each (4 classes)."""
    from minisolo.data import IMAGENET_MEAN, IMAGENET_STD, render_shapes_image
    from minisolo.targets import masks_to_boxes

    rng = np.random.default_rng(seed)
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    images, targets = [], []
    while len(images) < batch:
        image, instances = render_shapes_image(rng, size, max_objects=max_objects)
        if len(instances) < min_objects:
            continue
        x = torch.from_numpy(image).permute(2, 0, 1).float() / 255
        images.append((x - mean) / std)
        masks = torch.from_numpy(np.stack([inst.visible_mask for inst in instances]))
        targets.append(
            {
                "masks": masks,
                "labels": torch.tensor([inst.label for inst in instances]),
                "boxes": masks_to_boxes(masks),
            }
        )
    return torch.stack(images), targets


def random_batch(
    batch: int,
    height: int,
    width: int,
    objects: int,
    num_classes: int,
    seed: int = 0,
    device: str = "cpu",
) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Random images and random ellipse/rectangle targets (for paper-size runs, where painting
    the shapes data would be slow)."""
    from minisolo.targets import masks_to_boxes

    from .synthetic import random_instance_masks

    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, height, width, generator=g)
    targets = []
    for _ in range(batch):
        masks, labels = random_instance_masks(
            objects, height, width, min_size=16, max_size=600, num_classes=num_classes, generator=g
        )
        keep = masks.flatten(1).sum(1) >= 16
        masks, labels = masks[keep], labels[keep]
        targets.append(
            {
                "masks": masks.to(device),
                "labels": labels.to(device),
                "boxes": masks_to_boxes(masks).to(device),
            }
        )
    return images.to(device), targets


YOLACT_MISSING = "yolact not available"


def build(kind: str, preset_name: str, **overrides):
    """``(model, config)`` for ``kind``, or ``None`` when that model is not (yet) available."""
    from minisolo import preset
    from minisolo.models import build_model

    try:
        config = preset(preset_name, model=kind, **overrides)
        return build_model(config), config
    except (ImportError, ValueError, AttributeError) as error:
        if kind == "yolact":
            return None
        raise error


def train_step_fn(
    model,
    config,
    images,
    targets,
    autocast_dtype=None,
    full_masks: bool = False,
    channels_last: bool = True,
) -> Callable[[], dict]:
    """One SGD step (forward, loss, backward, gradient clipping as configured, update) as
    ``minisolo.engine.train`` runs it: NHWC tensors and, for SOLO, only the positive cells'
    mask channels (``full_masks=False``). The returned function times the phases and returns
    them in seconds."""
    from minisolo.solo import SOLO

    forward_kwargs = {"full_masks": full_masks} if isinstance(model, SOLO) else {}
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    device = images.device
    model.train()

    def step() -> dict:
        marks = [time.perf_counter()]
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            outputs = model(images, **forward_kwargs)
            synchronize(device)
            marks.append(time.perf_counter())
            losses = model.loss(outputs, targets)
        synchronize(device)
        marks.append(time.perf_counter())
        losses["loss"].backward()
        synchronize(device)
        marks.append(time.perf_counter())
        if getattr(config, "grad_clip", None):
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        marks.append(time.perf_counter())
        names = ("forward", "loss", "backward", "optimizer")
        phases = {n: marks[i + 1] - marks[i] for i, n in enumerate(names)}
        phases["total"] = marks[-1] - marks[0]
        phases["loss_value"] = losses["loss"].detach().item()
        return phases

    return step

"""Training, evaluation and prediction loops, shared by the command, notebooks and tests.

* :func:`train` runs the paper's recipe (SGD, linear warmup, step schedule, gradient clipping
  at 35) on any COCO-format folder, on CPU or CUDA (AMP: bf16 where supported, else fp16 with
  a gradient scaler), one process or several under ``torchrun`` (DistributedDataParallel).
  It writes ``last.pt`` atomically every ``checkpoint_every`` iterations (default: one epoch,
  at most 1000), at the end and when stopped by Ctrl-C or SIGTERM (after the current step);
  ``log.jsonl``, ``loss.png`` and, when a val split exists, ``metrics.json``; with
  ``eval_every``, ``eval.jsonl`` and ``best.pt``. ``resume=True`` continues exactly where the
  last checkpoint stopped, down to the random number generators.
* :func:`evaluate` runs pycocotools' COCOeval for ``segm`` and ``bbox``.

``train`` reads top to bottom: set-up (processes and devices, checks, data, model, optimizer,
where to start), then per iteration one training step, logging, evaluation (optional) and
checkpointing, then the final evaluation. Each step is a small function below it, and two
small dataclasses carry the run: ``_Run`` (what set-up decided) and ``_Loop`` (where training
is; a checkpoint saves it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import signal
import sys
import threading
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
from .config import AMP_CHOICES, config_from_dict
from .data.coco import CocoInstances, DataError, collate_batch, find_split
from .data.transforms import build_transforms
from .models import build_model
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
    stop_signal: int | None = None  # SIGINT or SIGTERM when one stopped training
    evaluations: list[dict] = field(default_factory=list)  # with eval_every: val AP by iteration
    best_checkpoint: Path | None = None  # with eval_every: best.pt, the best val mask AP
    precision: str = "float32"  # the forward pass's autocast type: float32, bfloat16, float16


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
    kind = config.optimizer
    if kind == "adamw":
        return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    if kind != "sgd":
        raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {kind!r}")
    return torch.optim.SGD(
        parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 in hardware (x86 AVX512-BF16 or AMX), so that bf16
    autocast makes convolutions faster; elsewhere oneDNN emulates bf16 and it is slower."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def autocast_dtype(device: torch.device, amp: bool | str = "auto") -> torch.dtype | None:
    """The autocast dtype for training on ``device`` (None: plain float32).

    ``"auto"`` (or True): bf16 on GPUs that support it, fp16 on older GPUs, bf16 on CPUs with
    native bf16 (:func:`cpu_has_native_bf16`), float32 on other CPUs. ``"bf16"`` / ``"fp16"``
    ask for that type, ``"off"`` (or False) for none. The losses always run in float32
    (outside autocast), so bf16 needs no loss scaling; fp16 on CUDA gets a GradScaler.
    """
    if amp is True:
        amp = "auto"
    if amp is False or amp is None:
        amp = "off"
    if amp not in AMP_CHOICES:
        raise ValueError(f"amp must be one of {AMP_CHOICES} (or True/False), got {amp!r}")
    if amp == "off" or device.type not in ("cuda", "cpu"):
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        if device.type != "cuda":
            raise ValueError("amp='fp16' needs a CUDA device; use 'bf16' on the CPU")
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else None


def targets_to(targets: list[dict], device: torch.device) -> list[dict]:
    return [
        {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()}
        for t in targets
    ]


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
    checkpoint_every: int | None = None,
    keep: int = 0,
    eval_every: int | None = None,
) -> TrainResult:
    """Train ``config``'s model on the COCO-format folder ``data_dir``; outputs in ``out_dir``.

    ``epochs`` (default ``config.epochs``) or ``max_iters`` set the length; the step schedule
    is stretched to it. ``last.pt`` is written every ``checkpoint_every`` iterations (default:
    one epoch, at most 1000), at the end, and when training is stopped; ``keep=K`` also keeps
    the K newest as ``iter_000500.pt``... ``eval_every=N`` evaluates on ``val_split`` every N
    iterations (``eval.jsonl``) and keeps the best model by mask AP as ``best.pt``.
    ``amp`` picks the forward pass's precision (:func:`autocast_dtype`).

    Ctrl-C (SIGINT) or SIGTERM stops training at the end of the current step (a second one
    abandons the step), writes the checkpoint and returns with ``interrupted=True``;
    ``resume=True`` continues from it. Each callback gets a dict (iteration, epoch, lr,
    losses) every ``log_every`` iterations; raising ``KeyboardInterrupt`` there stops the same
    way. Bad input (an output folder that cannot be written, nothing to resume, a checkpoint
    of another model or config, data without instances) is an error before anything is written.
    """
    started = time.perf_counter()
    run, loop = _set_up(
        config, data_dir, out_dir, epochs=epochs, max_iters=max_iters, batch_size=batch_size,
        device=device, resume=resume, backbone_weights=backbone_weights, num_workers=num_workers,
        seed=seed, amp=amp, log_every=log_every, evaluate_at_end=evaluate_at_end,
        progress=progress, callbacks=callbacks, train_split=train_split, val_split=val_split,
        checkpoint_every=checkpoint_every, keep=keep, eval_every=eval_every,
    )  # fmt: skip
    outputs = _open_outputs(run, loop)
    with _stop_on_signals(run) as stop:
        try:
            while loop.iteration < run.total_iters and not stop.agreed:
                for images, targets in _loader(run, loop):
                    _train_step(run, loop, images, targets, stop)
                    _log(run, loop, outputs)
                    # evaluate before checkpointing, so that the checkpoint records the result
                    improved = _evaluate_periodically(run, loop)
                    if improved or loop.iteration % run.checkpoint_every == 0:
                        _checkpoint(run, loop, best=improved)
                    if loop.iteration >= run.total_iters or _stop_agreed(run, stop):
                        break
                else:  # the epoch's last batch is done
                    loop.epoch, loop.batch_in_epoch = loop.epoch + 1, 0
            if loop.saved_at != loop.iteration:
                _checkpoint(run, loop)  # the end, or the step training stopped after
        except KeyboardInterrupt:  # from a callback, or a second Ctrl-C: abandon the step
            stop.interrupted = True
            if loop.saved_at != loop.iteration:
                _checkpoint(run, loop)
        finally:
            outputs.close()
    if stop.stopped:
        _say_how_to_resume(run, loop, stop)
    return _finish(run, loop, stop, started)


# ---- the state of a run -------------------------------------------------------------------
@dataclass
class _Run:
    """What set-up decided: fixed for the whole run."""

    config: Any
    data_dir: Path
    dir: Path  # the output folder
    rank: int  # this process under torchrun (0 when alone); only rank 0 writes files
    world: int  # number of processes
    device: torch.device
    dataset: CocoInstances
    model: nn.Module  # checkpoints, loss and evaluation use the model itself
    train_model: nn.Module  # the forward pass: the model, or its DDP wrapper under torchrun
    parameters: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    dtype: torch.dtype | None  # autocast type (None: float32)
    batch_size: int  # per process
    iters_per_epoch: int
    total_iters: int
    step_iters: list[int]  # where the step schedule divides the lr by 10
    seed: int
    num_workers: int
    log_every: int
    checkpoint_every: int
    keep: int  # numbered checkpoint copies kept (0: none)
    eval_every: int | None
    val_split: str | None  # None: the data has no val split
    evaluate_at_end: bool
    progress: bool
    callbacks: Sequence[Callable[[dict], None]]
    stop_group: Any = None  # the process group the ranks agree on stopping in (gloo)


@dataclass
class _Loop:
    """Where training is. Checkpoints save it, so that a resumed run continues from here."""

    epoch: int = 0
    batch_in_epoch: int = 0
    iteration: int = 0
    history: list[dict] = field(default_factory=list)  # the log records
    evaluations: list[dict] = field(default_factory=list)  # the periodic val metrics
    best_mask_ap: float | None = None
    saved_at: int | None = None  # the iteration of the newest checkpoint on disk
    lr: float = 0.0
    window: list[dict[str, torch.Tensor]] = field(default_factory=list)  # losses to log
    window_start: float = field(default_factory=time.perf_counter)

    @classmethod
    def from_checkpoint(cls, state: dict | None) -> _Loop:
        if not state:
            return cls()
        return cls(
            epoch=state["epoch"],
            batch_in_epoch=state["batch_in_epoch"],
            iteration=state["iteration"],
            history=list(state["history"]),
            evaluations=list(state.get("evaluations", [])),
            best_mask_ap=state.get("best_mask_ap"),
            saved_at=state["iteration"],
        )


# ---- set-up -------------------------------------------------------------------------------
def _set_up(config, data_dir, out_dir, *, epochs, max_iters, batch_size, device, resume,
            backbone_weights, num_workers, seed, amp, log_every, evaluate_at_end, progress,
            callbacks, train_split, val_split, checkpoint_every, keep, eval_every,
            ) -> tuple[_Run, _Loop]:  # fmt: skip
    """Processes and devices, the checks (before anything is written), data, model, optimizer
    and where to start: the beginning, or the checkpoint to resume."""
    if (checkpoint_every is not None and checkpoint_every < 1) or keep < 0:
        raise ValueError("checkpoint_every must be at least 1 and keep at least 0")
    if eval_every is not None and eval_every < 1:
        raise ValueError("eval_every must be at least 1")
    rank, world, device_ = _processes_and_device(device)
    run_dir = Path(out_dir)
    if rank == 0:
        ckpt.check_writable(run_dir)
    state = _resume_state(run_dir / "last.pt", config) if resume else None
    if state:
        config = config_from_dict(state["config"])
    seed_everything(seed + rank)

    dataset = _training_data(config, data_dir, train_split, state)
    config = dataclasses.replace(
        config, num_classes=len(dataset.class_names), class_names=tuple(dataset.class_names)
    )
    batch_size = batch_size or config.batch_size
    if state and state.get("batch_size", batch_size) != batch_size:
        raise ckpt.CheckpointError(
            f"{run_dir / 'last.pt'} was trained at batch size {state['batch_size']}, not "
            f"{batch_size}: resume with --batch-size {state['batch_size']}"
        )
    has_val = _has_split(data_dir, val_split)
    if eval_every and not has_val:
        raise DataError(f"eval_every needs a {val_split!r} split in {data_dir}; there is none")

    model, optimizer, scaler, dtype = _model_and_optimizer(
        config, device_, backbone_weights, amp, state
    )
    loop = _Loop.from_checkpoint(state)
    if state:
        ckpt.set_rng_state(state["rng"])
    train_model: nn.Module = model
    if world > 1:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device_.index] if device_.type == "cuda" else None
        )
    iters_per_epoch, total_iters, step_iters = _schedule(
        config, len(dataset), world, batch_size, epochs, max_iters
    )
    if rank == 0:
        (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    run = _Run(
        config=config, data_dir=Path(data_dir), dir=run_dir, rank=rank, world=world,
        device=device_, dataset=dataset, model=model, train_model=train_model,
        parameters=[p for p in model.parameters() if p.requires_grad], optimizer=optimizer,
        scaler=scaler, dtype=dtype, batch_size=batch_size, iters_per_epoch=iters_per_epoch,
        total_iters=total_iters, step_iters=step_iters, seed=seed, num_workers=num_workers,
        log_every=log_every, checkpoint_every=checkpoint_every or min(1000, iters_per_epoch),
        keep=keep, eval_every=eval_every, val_split=val_split if has_val else None,
        evaluate_at_end=evaluate_at_end, progress=progress, callbacks=callbacks,
        stop_group=_stop_group(world),
    )  # fmt: skip
    return run, loop


def _processes_and_device(device: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device); under ``torchrun`` each process takes its own GPU."""
    rank, world, local_rank = _distributed()
    device_ = pick_device(device)
    if device_.type == "cuda" and world > 1:
        device_ = torch.device("cuda", local_rank)
        torch.cuda.set_device(device_)
    return rank, world, device_


def _distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank); starts the process group under ``torchrun``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def _resume_state(path: Path, asked) -> dict:
    """The checkpoint to continue from; an error unless it is the model and config asked for
    (the number and names of the classes come from the data, checked there)."""
    if not path.is_file():
        raise ckpt.CheckpointError(
            f"nothing to resume: no checkpoint at {path}; start without --resume (resume=False),"
            " or point --out at the folder of the run to continue"
        )
    state = ckpt.load(path)
    kind = state.get("model_kind", state["config"].get("model", "solo"))
    if kind != asked.model:
        raise ckpt.CheckpointError(
            f"{path} is a {kind} checkpoint, not {asked.model}: resume with --model {kind}, or "
            "use another --out"
        )
    try:
        saved = config_from_dict(state["config"]).to_dict()
    except (TypeError, ValueError) as error:
        raise ckpt.CheckpointError(f"{path}: its config cannot be read ({error})") from error
    wanted = asked.to_dict()
    differ = [
        key
        for key in sorted(set(saved) | set(wanted))
        if key not in ("num_classes", "class_names") and saved.get(key) != wanted.get(key)
    ]
    if differ:
        shown = ", ".join(f"{k}={saved.get(k)!r} (asked {wanted.get(k)!r})" for k in differ[:3])
        more = f" and {len(differ) - 3} more" if len(differ) > 3 else ""
        raise ckpt.CheckpointError(
            f"{path} was trained with another config: {shown}{more}; resume with the options "
            "the run was started with, or use another --out"
        )
    return state


def _training_data(config, data_dir, split: str, state: dict | None) -> CocoInstances:
    """The training split; an error when it has nothing to learn from, or (resuming) other
    classes than the checkpoint."""
    dataset = CocoInstances(data_dir, split, transforms=make_transforms(config, train=True))
    images = set(dataset.ids)
    usable = sum(
        1
        for a in dataset.coco.dataset["annotations"]
        if not a["iscrowd"] and a["image_id"] in images
    )
    if not usable or not dataset.class_names:
        skipped = len(dataset.skipped_annotations)
        raise DataError(
            f"{dataset.ann_file}: no usable instances to train on ({len(images)} images, "
            f"{len(dataset.class_names)} categories, {skipped} annotations skipped as unusable);"
            " check the annotation file or point --data at another folder"
        )
    if state and list(state["class_names"]) != list(dataset.class_names):
        raise ckpt.CheckpointError(
            f"the checkpoint was trained on classes {_names(state['class_names'])}, but "
            f"{dataset.ann_file} has {_names(dataset.class_names)}: resume on the same data"
        )
    return dataset


def _names(names: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit]) + (
        f", ... ({len(names)} in all)" if len(names) > limit else ""
    )
    return f"[{shown}]"


def _model_and_optimizer(config, device: torch.device, backbone_weights, amp, state):
    """The model (NHWC), its optimizer and gradient scaler; a checkpoint's weights and state."""
    model = build_model(config).to(device)
    if backbone_weights and not state:
        from .backbone import load_torchvision_weights

        load_torchvision_weights(model.backbone, backbone_weights)
    # NHWC tensors: cuDNN and oneDNN convolutions skip layout reorders (CPU: about 1.15x per
    # step, benchmarks/run.py --only package_changes)
    model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(config, [p for p in model.parameters() if p.requires_grad])
    dtype = autocast_dtype(device, amp)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    if state:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
    return model, optimizer, scaler, dtype


def _schedule(config, num_images, world, batch_size, epochs, max_iters):
    """(iterations per epoch, total iterations, lr step iterations) for the asked length."""
    per_replica = math.ceil(num_images / world)
    iters_per_epoch = max(1, math.ceil(per_replica / batch_size))
    if max_iters is not None:
        total_iters = max_iters
    else:
        total_iters = (epochs or config.epochs) * iters_per_epoch
    step_iters = [round(s / config.epochs * total_iters) for s in config.lr_steps]
    return iters_per_epoch, total_iters, step_iters


def _stop_group(world: int):
    """Under torchrun the ranks agree after every step whether to stop; a small CPU (gloo)
    group does it, so that NCCL runs never wait on the GPU for it."""
    if world <= 1:
        return None
    return None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")


def _has_split(data_dir: str | Path, split: str) -> bool:
    try:
        find_split(data_dir, split)
    except Exception:
        return False
    return True


def _loader(run: _Run, loop: _Loop) -> DataLoader:
    """The rest of the current epoch's batches, in the same order as an uninterrupted run."""
    if run.world > 1:
        sampler = DistributedSampler(
            run.dataset, num_replicas=run.world, rank=run.rank, seed=run.seed
        )
        sampler.set_epoch(loop.epoch)
        order = list(sampler)
    else:
        order = _epoch_order(len(run.dataset), run.seed, loop.epoch)
    order = order[loop.batch_in_epoch * run.batch_size :]
    return DataLoader(
        run.dataset,
        batch_size=run.batch_size,
        sampler=order,
        collate_fn=collate_batch,
        num_workers=run.num_workers,
        pin_memory=run.device.type == "cuda",
        persistent_workers=False,
        # the loader's own generator, so creating it never draws from the global RNG
        generator=torch.Generator().manual_seed(run.seed * 1000 + loop.epoch),
    )


def _epoch_order(num_items: int, seed: int, epoch: int) -> list[int]:
    """The shuffled order of one epoch, from its own generator (not the global one), so that a
    resumed run sees the same batches as an uninterrupted one."""
    generator = torch.Generator().manual_seed(seed * 1000 + epoch)
    return torch.randperm(num_items, generator=generator).tolist()


# ---- one training step --------------------------------------------------------------------
def _train_step(run: _Run, loop: _Loop, images, targets, stop: _StopRequest) -> None:
    """The lr of this iteration, forward (under autocast), loss, backward, clipping, update."""
    loop.lr = learning_rate(run.config, loop.iteration, run.step_iters, run.total_iters)
    for group in run.optimizer.param_groups:
        group["lr"] = loop.lr
    images = images.to(run.device, non_blocking=True)
    images = images.contiguous(memory_format=torch.channels_last)
    targets = targets_to(targets, run.device)
    with torch.autocast(
        run.device.type, dtype=run.dtype or torch.float32, enabled=run.dtype is not None
    ):
        # SOLO's forward computes only the positive cells' mask channels for its loss
        outputs = run.train_model(images, **run.model.train_forward_kwargs)
    losses = run.model.loss(outputs, targets)
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(losses["loss"]).backward()
    run.scaler.unscale_(run.optimizer)
    if run.config.grad_clip:
        torch.nn.utils.clip_grad_norm_(run.parameters, run.config.grad_clip)
    with stop.whole():  # the update and its count are never cut in half by a signal
        run.scaler.step(run.optimizer)
        run.scaler.update()
        loop.iteration += 1
        loop.batch_in_epoch += 1
        loop.window.append({k: v.detach() for k, v in losses.items()})


# ---- logging ------------------------------------------------------------------------------
@dataclass
class _Outputs:
    """The open ``log.jsonl`` (rank 0; None on the others) and the progress bar."""

    log: Any
    bar: Any

    def close(self) -> None:
        self.bar.close()
        if self.log:
            self.log.close()


def _open_outputs(run: _Run, loop: _Loop) -> _Outputs:
    """``log.jsonl`` (and ``eval.jsonl``) hold the records of the model in ``last.pt``: a new
    run starts them empty, a resumed run from the checkpoint's records (lines written after
    the checkpoint, by iterations that are now redone, are dropped)."""
    log = None
    if run.rank == 0:
        log = _rewrite_jsonl(run.dir / "log.jsonl", loop.history).open("a")
        if run.eval_every or loop.evaluations or (run.dir / "eval.jsonl").exists():
            _rewrite_jsonl(run.dir / "eval.jsonl", loop.evaluations)
    bar = tqdm(
        total=run.total_iters,
        initial=loop.iteration,
        disable=not run.progress or run.rank != 0,
        desc=f"train {run.config.model}",
        unit="it",
        dynamic_ncols=True,
    )
    loop.window_start = time.perf_counter()
    return _Outputs(log, bar)


def _rewrite_jsonl(path: Path, records: list[dict]) -> Path:
    """Write ``records`` to ``path``, one JSON object a line, through a temporary file."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text("".join(json.dumps(r) + "\n" for r in records))
    return temporary.replace(path)


def _log(run: _Run, loop: _Loop, outputs: _Outputs) -> None:
    """Every ``log_every`` iterations (and the last): average the losses, check they are
    finite, append the record to ``log.jsonl`` and the history, call the callbacks."""
    outputs.bar.update(1)
    if loop.iteration % run.log_every and loop.iteration != run.total_iters:
        return
    seconds = time.perf_counter() - loop.window_start
    images_per_step = run.batch_size * run.world
    record = _log_record(loop.window, loop.iteration, loop.epoch, loop.lr, images_per_step, seconds)
    loop.window, loop.window_start = [], time.perf_counter()
    loop.history.append(record)
    if outputs.log:
        outputs.log.write(json.dumps(record) + "\n")
        outputs.log.flush()
    outputs.bar.set_postfix({k: f"{v:.3f}" for k, v in record.items() if k.startswith("loss")})
    for callback in run.callbacks:
        callback(record)


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


# ---- checkpointing ------------------------------------------------------------------------
def _checkpoint(run: _Run, loop: _Loop, *, best: bool = False) -> None:
    """Write ``last.pt`` atomically (rank 0); with ``keep``, also as ``iter_000500.pt`` (the
    oldest beyond ``keep`` removed); when ``best``, also as ``best.pt``. A diverged state is
    never written: the losses not logged yet are checked first."""
    if loop.window:
        _log_record(loop.window, loop.iteration, loop.epoch, loop.lr, 1, 1.0)
    if run.rank == 0:
        state = _checkpoint_state(run, loop)
        last = ckpt.save_atomic(state, run.dir / "last.pt")
        if run.keep:  # the copies are hard links where the file system allows: no 2nd write
            ckpt.copy_atomic(last, run.dir / f"iter_{loop.iteration:06d}.pt")
            ckpt.remove_oldest(run.dir, "iter_*.pt", keep=run.keep)
        if best:
            ckpt.copy_atomic(last, run.dir / "best.pt")
    loop.saved_at = loop.iteration


def _checkpoint_state(run: _Run, loop: _Loop) -> dict:
    """Everything a resumed run needs, as plain data (``weights_only`` loads it)."""
    epoch, batch = loop.epoch, loop.batch_in_epoch
    if batch >= run.iters_per_epoch:  # after an epoch's last batch: the next epoch's start
        epoch, batch = epoch + 1, 0
    return {
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict(),
        "config": run.config.to_dict(),
        "model_kind": run.config.model,
        "class_names": list(run.config.class_names),
        "category_ids": list(run.dataset.category_ids),
        "epoch": epoch,
        "batch_in_epoch": batch,
        "iteration": loop.iteration,
        "batch_size": run.batch_size,
        "rng": ckpt.rng_state(),
        "history": loop.history,
        "evaluations": loop.evaluations,
        "best_mask_ap": loop.best_mask_ap,
        # the val metrics of this very iteration, when it was evaluated (best.pt has them)
        "metrics": next(
            (e for e in loop.evaluations[-1:] if e["iteration"] == loop.iteration), None
        ),
    }


# ---- evaluation ---------------------------------------------------------------------------
def _evaluate_periodically(run: _Run, loop: _Loop) -> bool:
    """Every ``eval_every`` iterations (rank 0): mask and box AP on the val split, recorded in
    ``eval.jsonl``; True when the mask AP is the best so far. The last iteration is left to
    the final evaluation when there is one."""
    if not run.eval_every or loop.iteration % run.eval_every or run.rank != 0:
        return False
    if loop.iteration == run.total_iters and run.evaluate_at_end:
        return False
    # evaluating draws from the global random generators (its DataLoader): put them back, so
    # that a run with evaluations trains exactly as one without
    generators = ckpt.rng_state()
    try:
        metrics = evaluate(
            run.model, run.data_dir, run.val_split, device=str(run.device), progress=False,
            verbose=False,
        )  # fmt: skip
    finally:
        ckpt.set_rng_state(generators)
    return _record_evaluation(run, loop, metrics)


def _record_evaluation(run: _Run, loop: _Loop, metrics: dict) -> bool:
    """Append the val AP to ``eval.jsonl`` and the loop; True when the mask AP is the best."""
    record = {
        "iteration": loop.iteration,
        "epoch": loop.epoch + (loop.batch_in_epoch > 0),  # 1-based, of the last step
        "segm": metrics["segm"],
        "bbox": metrics["bbox"],
    }
    loop.evaluations.append(record)
    with (run.dir / "eval.jsonl").open("a") as file:
        file.write(json.dumps(record) + "\n")
    ap = metrics["segm"]["AP"]
    improved = loop.best_mask_ap is None or ap > loop.best_mask_ap
    if improved:
        loop.best_mask_ap = ap
    if run.progress:
        best = f"best {loop.best_mask_ap:.3f}" + (", saved as best.pt" if improved else "")
        tqdm.write(f"iteration {loop.iteration}: val mask AP {ap:.3f} ({best})")
    return improved


def _finish(run: _Run, loop: _Loop, stop: _StopRequest, started: float) -> TrainResult:
    """The loss curve and, unless training was stopped, the final evaluation (``metrics.json``);
    with ``eval_every`` it is also the last candidate for ``best.pt``."""
    metrics = None
    if run.rank == 0 and loop.history:
        _write_loss_plot(loop.history, run.dir / "loss.png")
    if run.rank == 0 and not stop.stopped and run.evaluate_at_end and run.val_split:
        metrics = evaluate(
            run.model, run.data_dir, run.val_split, device=str(run.device), out_dir=run.dir,
            progress=run.progress, verbose=False,
        )  # fmt: skip
        evaluated = loop.evaluations and loop.evaluations[-1]["iteration"] == loop.iteration
        if run.eval_every and not evaluated:
            _checkpoint(run, loop, best=_record_evaluation(run, loop, metrics))
    if run.world > 1:
        dist.barrier()
    best = run.dir / "best.pt" if loop.best_mask_ap is not None else None
    return TrainResult(
        run.model, run.config, run.dir, loop.history, run.dir / "last.pt", metrics,
        interrupted=stop.stopped, seconds=time.perf_counter() - started,
        stop_signal=stop.signal, evaluations=loop.evaluations, best_checkpoint=best,
        precision=str(run.dtype or torch.float32).removeprefix("torch."),
    )  # fmt: skip


def _write_loss_plot(history: list[dict], path: Path) -> None:
    from .viz import plot_loss_curve

    plot_loss_curve(history, path, smooth=5 if len(history) >= 20 else 1)


# ---- stopping on signals ------------------------------------------------------------------
class _StopRequest:
    """Ctrl-C (SIGINT) and SIGTERM while training: finish the step, checkpoint, stop.

    The first signal only sets ``signal``; the loop looks at it after every step. A second
    one abandons the step at once (``KeyboardInterrupt``), except during the parameter update,
    which it lets finish (:meth:`whole`), so that a checkpoint always holds whole steps. Under
    torchrun signals never abandon a step: the ranks must stop after the same one.
    """

    def __init__(self, may_abandon: bool, announce: bool) -> None:
        self.signal: int | None = None  # the first signal received
        self.agreed = False  # every rank knows that training stops
        self.interrupted = False  # stopped by KeyboardInterrupt (a callback, a second signal)
        self._may_abandon = may_abandon
        self._announce = announce
        self._updating = False
        self._abandon = False

    @property
    def stopped(self) -> bool:
        return self.interrupted or self.signal is not None

    def handle(self, signum: int, frame) -> None:
        if self.signal is None:
            self.signal = signum
            if self._announce:  # os.write: print() here could collide with the bar's output
                again = "; again: stop at once" if self._may_abandon else ""
                name = signal.Signals(signum).name
                _write_stderr(f"\n{name}: stopping after this step{again}\n")
        elif self._may_abandon:
            if not self._updating:
                raise KeyboardInterrupt
            self._abandon = True

    @contextlib.contextmanager
    def whole(self):
        self._updating = True
        try:
            yield
        finally:
            self._updating = False
        if self._abandon:
            raise KeyboardInterrupt


def _write_stderr(text: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        os.write(2, text.encode())


@contextlib.contextmanager
def _stop_on_signals(run: _Run):
    """Handle SIGINT and SIGTERM with a :class:`_StopRequest` while training, and put the
    previous handlers back afterwards. A signal that is ignored stays ignored (a background
    job ignores Ctrl-C); outside the main thread Python cannot install handlers at all."""
    stop = _StopRequest(may_abandon=run.world == 1, announce=run.rank == 0 and run.progress)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            handler = signal.getsignal(signum)
            if handler not in (signal.SIG_IGN, None):
                previous[signum] = signal.signal(signum, stop.handle)
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _stop_agreed(run: _Run, stop: _StopRequest) -> bool:
    """Whether to stop after this step: a signal here, or (torchrun) on any rank."""
    if run.world > 1:
        flag = torch.tensor([stop.signal or 0])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=run.stop_group)
        stop.signal = stop.signal or (int(flag.item()) or None)
    stop.agreed = stop.signal is not None
    return stop.agreed


def _say_how_to_resume(run: _Run, loop: _Loop, stop: _StopRequest) -> None:
    if run.rank != 0 or not run.progress:
        return
    why = signal.Signals(stop.signal).name if stop.signal else "interrupted"
    tqdm.write(
        f"{why}: stopped after iteration {loop.iteration} of {run.total_iters}; checkpoint "
        f"saved to {run.dir / 'last.pt'}; continue with the same command and --resume "
        "(in Python: train(..., resume=True))",
        file=sys.stderr,
    )


# --------------------------------------------------------------------------------- load
def load_checkpoint(path: str | Path, device: str = "cpu") -> nn.Module:
    """Rebuild the model a checkpoint describes (SOLO, Decoupled SOLO or YOLACT) and load it.

    The model gets ``category_ids`` (contiguous label -> dataset category id) and
    ``checkpoint_path`` (for error messages) as attributes.
    """
    state = ckpt.load(path)
    config = config_from_dict(state["config"])
    model = build_model(config)
    model.load_state_dict(state["model"])
    model.category_ids = list(state.get("category_ids", range(1, config.num_classes + 1)))
    model.checkpoint_path = Path(path)
    # NHWC weights, as in training: with NHWC inputs (minisolo.inference) the oneDNN / cuDNN
    # convolutions skip layout reorders (tiny SOLO inference: docs/results.md)
    model = model.to(pick_device(device), memory_format=torch.channels_last)
    return model.eval()


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
    _check_same_classes(model, dataset)
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


def _check_same_classes(model: nn.Module, dataset: CocoInstances) -> None:
    """A model is scored only on data with its classes, in its order: label k must mean the
    same category in both (else every AP would be silently wrong, or an index error)."""
    config = model.config
    names = list(config.class_names)
    if config.num_classes == dataset.num_classes and names in ([], dataset.class_names):
        return
    source = getattr(model, "checkpoint_path", None) or "the model"
    raise ckpt.CheckpointError(
        f"{source} was trained on {config.num_classes} classes {_names(names)}, but "
        f"{dataset.ann_file} has {dataset.num_classes} {_names(dataset.class_names)}: evaluate "
        "it on data with the same categories"
    )

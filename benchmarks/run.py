"""Speed and memory benchmarks of minisolo.

    python benchmarks/run.py                 # everything; writes docs/benchmarks.md + plot
    python benchmarks/run.py --quick         # fewer repeats (< 5 min on a 2-core CPU)
    python benchmarks/run.py --json out.json --only nms
    python benchmarks/run.py --device cuda   # adds the paper-size rows measured on the GPU

Every benchmark is one function ``bench_<group>(ctx) -> list[row]``; a row is
``{"name", "value", "unit", "device", "config", "detail"}``. ``--only GROUP`` runs one group
(``--list`` prints them). Timings are medians over repeats after warm-up calls; on a shared
machine also look at ``min_ms`` in the details and the load average in the report.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

# On a machine shared with other jobs, OpenMP threads that spin while waiting (the default,
# "ACTIVE") steal CPU time from the thread doing the work: a 2-thread training step measured
# 4-10x slower at load 7 on 2 cores. Waiting threads sleep instead; must be set before torch
# loads the OpenMP runtime. Set OMP_WAIT_POLICY=ACTIVE yourself to compare. With
# --default-wait it is left unset, as in a learner's Python (the trained_inference group
# measures the trained model's inference that way too, in a child process: spin-waiting is
# what makes small batch-1 ops fast on a quiet machine).
if "--default-wait" not in sys.argv:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    YOLACT_MISSING,
    Context,
    build,
    machine_info,
    ms_summary,
    random_batch,
    row,
    shapes_batch,
    synchronize,
    time_calls,
    train_step_fn,
)
from benchmarks.loop_targets import loop_solo_targets  # noqa: E402
from benchmarks.package_changes import bench_package_changes  # noqa: E402
from benchmarks.synthetic import clustered_candidates, random_instance_masks  # noqa: E402
from minisolo import mask_nms, matrix_nms, preset, solo_targets  # noqa: E402
from minisolo.nms import same_class_intersections  # noqa: E402

MODELS = ("solo", "decoupled_solo", "yolact")
#: the models of the CPU training and inference rows
SPEED_MODELS = (*MODELS, "solov2")
#: The commit holding the first (unoptimised) targets.py and nms.py, for the before/after rows.
BASELINE_COMMIT = "28fe451"


# ============================================================================ helpers
def level_targets_equal(a, b) -> bool:
    """True when two lists of ``LevelTargets`` are identical field by field."""
    return all(
        torch.equal(x.category.cpu(), y.category.cpu())
        and torch.equal(x.positive_index.cpu(), y.positive_index.cpu())
        and torch.equal(x.masks.cpu(), y.masks.cpu())
        and torch.equal(x.instance.cpu(), y.instance.cpu())
        for x, y in zip(a, b, strict=True)
    )


def paper_target_kwargs() -> dict:
    cfg = preset("paper")
    return dict(
        num_classes=cfg.num_classes,
        grids=cfg.grids,
        scale_ranges=cfg.scale_ranges,
        strides=cfg.strides,
        sigma=cfg.sigma,
        min_mask_area=cfg.min_mask_area,
    )


def median_phases(steps: list[dict]) -> dict[str, float]:
    """Median milliseconds of each phase over timed steps."""
    keys = ("forward", "loss", "backward", "optimizer", "total")
    return {f"{k}_ms": round(1e3 * statistics.median(s[k] for s in steps), 1) for k in keys}


def count_flops(fn: Callable[[], object]) -> float:
    """GFLOP of one call of ``fn`` (PyTorch's FlopCounterMode: convolutions and matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops() / 1e9


def timed_predict(model, images: torch.Tensor) -> dict[str, float]:
    """``model.predict(images)`` split into backbone + FPN, head and post-processing (seconds),
    measured with forward hooks on the model and on its ``fpn``."""
    device = images.device
    marks: dict[str, float] = {}

    def mark(name):
        def hook(*_):
            synchronize(device)
            marks[name] = time.perf_counter()

        return hook

    handles = [
        model.register_forward_pre_hook(mark("start")),
        model.fpn.register_forward_hook(mark("fpn")),
        model.register_forward_hook(mark("forward")),
    ]
    try:
        begin = time.perf_counter()
        results = model.predict(images)
        synchronize(device)
        end = time.perf_counter()
    finally:
        for handle in handles:
            handle.remove()
    return {
        "backbone_fpn": marks["fpn"] - marks["start"],
        "head": marks["forward"] - marks["fpn"],
        "post_process": end - marks["forward"],
        "total": end - begin,
        "instances": float(sum(len(r["scores"]) for r in results)),
    }


def predict_timings(model, images: torch.Tensor, warmup: int, calls: int) -> dict:
    """Median milliseconds of each part of :func:`timed_predict` over ``calls`` calls after
    ``warmup`` calls, the best total, and how many instances the last call returned."""
    for _ in range(warmup):
        timed_predict(model, images)
    runs = [timed_predict(model, images) for _ in range(calls)]
    detail = {
        k: round(1e3 * statistics.median(r[k] for r in runs), 2)
        for k in ("backbone_fpn", "head", "post_process", "total")
    }
    detail["min_total_ms"] = round(1e3 * min(r["total"] for r in runs), 2)
    detail["instances_returned"] = int(runs[-1]["instances"])
    return detail


def calibrate_thresholds(model, images: torch.Tensor, candidates: int) -> dict[str, float]:
    """Thresholds that give an untrained model a realistic post-processing load: a
    ``score_threshold`` that lets about ``candidates`` (location, class) pairs through and, for
    SOLO models, a ``mask_threshold`` at the median mask probability (untrained heads output
    about 0.5 for SOLO, 0.25 for Decoupled SOLO, whose masks are products of two sigmoids;
    above a fixed 0.5 the latter would have no mask pixels and nothing to post-process)."""
    from minisolo.nms import points_nms

    model.eval()
    with torch.no_grad():
        outputs = model(images[:1])
    model.train()
    if "category" not in outputs:  # YOLACT: best foreground softmax score per prior
        scores = torch.softmax(outputs["class_logits"][0].float(), -1)[:, 1:].max(dim=1).values
        kth = scores.topk(min(candidates, scores.numel())).values[-1]
        return {"score_threshold": float(kth) * (1 - 1e-4)}
    scores = torch.cat(
        [points_nms(torch.sigmoid(c[:1].float())).flatten() for c in outputs["category"]]
    )
    kth = scores.topk(min(candidates, scores.numel())).values[-1]
    grid = model.config.grids[0]
    cells = torch.arange(grid)
    masks_of = model.head if hasattr(model.head, "cell_mask_probs") else model  # SOLOv2: model
    with torch.no_grad():
        probs = masks_of.cell_mask_probs(outputs, 0, 0, cells, cells)
    return {
        "score_threshold": float(kth) * (1 - 1e-4),
        "mask_threshold": float(probs.float().median()),
        "update_threshold": 0.0,  # keep what Matrix NMS decays: up to max_per_image masks
    }


# ============================================================================ benchmarks
def bench_targets(ctx: Context) -> list[dict]:
    """Vectorised ``solo_targets`` vs the per-object, per-cell loop (paper settings, 50
    objects, 800 x 1216)."""
    g = torch.Generator().manual_seed(ctx.seed)
    masks, labels = random_instance_masks(50, 800, 1216, generator=g)
    kwargs = paper_target_kwargs()
    identical = level_targets_equal(
        solo_targets(masks, labels, **kwargs), loop_solo_targets(masks, labels, **kwargs)
    )
    repeats = ctx.repeats(5, 1)
    loop = time_calls(lambda: loop_solo_targets(masks, labels, **kwargs), repeats, warmup=0)
    vec = time_calls(lambda: solo_targets(masks, labels, **kwargs), ctx.repeats(7, 3), warmup=1)
    levels = solo_targets(masks, labels, **kwargs)
    detail = {
        "loop": ms_summary(loop),
        "vectorised": ms_summary(vec),
        "identical_results": identical,
        "positives_per_level": [lt.num_positives for lt in levels],
        "objects_per_level": [int(lt.instance.unique().numel()) for lt in levels],
    }
    if ctx.device == "cuda":
        gpu_masks, gpu_labels = masks.cuda(), labels.cuda()
        gpu = time_calls(
            lambda: solo_targets(gpu_masks, gpu_labels, **kwargs), 5, warmup=2, device="cuda"
        )
        detail["vectorised_cuda"] = ms_summary(gpu)
    config = {"objects": 50, "image": [800, 1216], "grids": list(kwargs["grids"])}
    speedup = statistics.median(loop) / statistics.median(vec)
    return [row("targets_speedup_vs_loop", speedup, "x", "cpu", config, detail)]


def classic_lazy_mask_nms(masks, labels, scores, iou_threshold: float = 0.5) -> list[int]:
    """Textbook sequential mask NMS: take the best remaining mask, compute its IoU with the
    remaining masks of its class only now, drop those above the threshold, repeat."""
    order = torch.argsort(scores, descending=True)
    flat = masks[order].flatten(1).view(torch.uint8).float()
    areas = flat.sum(1)
    ordered_labels = labels[order]
    alive = torch.ones(len(order), dtype=torch.bool)
    kept = []
    for i in range(len(order)):
        if not alive[i]:
            continue
        kept.append(int(order[i]))
        rest = (alive & (ordered_labels == ordered_labels[i])).nonzero().squeeze(1)
        rest = rest[rest > i]
        if rest.numel():
            inter = flat[rest] @ flat[i]
            iou = inter / (areas[rest] + areas[i] - inter)
            alive[rest[iou > iou_threshold]] = False
    return kept


def bench_nms(ctx: Context) -> list[dict]:
    """Matrix NMS vs sequential mask NMS on 500 clustered candidates at 200 x 304."""
    g = torch.Generator().manual_seed(ctx.seed)
    masks, labels, scores = clustered_candidates(500, 200, 304, num_classes=8, generator=g)
    repeats, warmup = ctx.repeats(7, 3), 1
    t_matrix = time_calls(lambda: matrix_nms(masks, labels, scores), repeats, warmup)
    t_mask = time_calls(lambda: mask_nms(masks, labels, scores), repeats, warmup)
    t_iou = time_calls(lambda: same_class_intersections(masks, labels), repeats, warmup)
    t_lazy = time_calls(lambda: classic_lazy_mask_nms(masks, labels, scores), repeats, warmup)
    decayed = matrix_nms(masks, labels, scores)
    detail = {
        "matrix_nms": ms_summary(t_matrix),
        "mask_nms": ms_summary(t_mask),
        "same_class_intersections": ms_summary(t_iou),
        "classic_lazy_mask_nms": ms_summary(t_lazy),
        "kept_mask_nms": int(mask_nms(masks, labels, scores).numel()),
        "kept_matrix_nms_score_ge_0.05": int((decayed >= 0.05).sum()),
    }
    config = {"candidates": 500, "mask_size": [200, 304], "classes": 8, "clusters": 40}
    speedup = statistics.median(t_mask) / statistics.median(t_matrix)
    return [row("matrix_nms_speedup_vs_mask_nms", speedup, "x", "cpu", config, detail)]


def head_output_bytes(kind: str, height: int = 800, width: int = 1344) -> list[int]:
    """Bytes of the mask-branch outputs per level for one image, from a forward pass of the
    paper head on the meta device (shapes only, no arithmetic)."""
    from minisolo.solo import DecoupledSOLOHead, SOLOHead

    cfg = preset("paper", model=kind)
    with torch.device("meta"):
        head = (SOLOHead if kind == "solo" else DecoupledSOLOHead)(cfg)
        features = [torch.empty(1, cfg.fpn_channels, height // s, width // s) for s in cfg.strides]
        outputs = head(features)
    keys = ["mask"] if kind == "solo" else ["mask_x", "mask_y"]
    return [
        sum(outputs[k][level].numel() * outputs[k][level].element_size() for k in keys)
        for level in range(len(cfg.grids))
    ]


def bench_decoupled_memory(ctx: Context) -> list[dict]:
    """Decoupled SOLO's mask output over vanilla SOLO's at 800 x 1344 (S = 40 level, all)."""
    vanilla, decoupled = head_output_bytes("solo"), head_output_bytes("decoupled_solo")
    grids = preset("paper").grids
    detail = {
        "solo_bytes_per_level": vanilla,
        "decoupled_bytes_per_level": decoupled,
        "solo_total_MiB": round(sum(vanilla) / 2**20, 1),
        "decoupled_total_MiB": round(sum(decoupled) / 2**20, 1),
        "method": "output shapes of the paper heads (forward on the meta device), fp32, batch 1",
    }
    config = {"image": [800, 1344], "grids": list(grids), "batch": 1, "dtype": "float32"}
    device = "cpu"
    if ctx.device == "cuda":
        detail["cuda_forward_peak_MiB"] = cuda_head_peaks()
        device = "cuda"
    return [
        row(
            "decoupled_mask_memory_ratio",
            sum(decoupled) / sum(vanilla),
            "ratio",
            device,
            config,
            detail,
        ),
        row(
            "decoupled_mask_memory_ratio/S40",
            decoupled[0] / vanilla[0],
            "ratio",
            device,
            {**config, "level": 0, "grid": grids[0]},
            {"solo_bytes": vanilla[0], "decoupled_bytes": decoupled[0]},
        ),
    ]


def cuda_head_peaks() -> dict[str, float]:
    """Measured peak CUDA memory (MiB) of a no-grad forward of each paper head at 800 x 1344."""
    from minisolo.solo import DecoupledSOLOHead, SOLOHead

    peaks = {}
    for kind, cls in (("solo", SOLOHead), ("decoupled_solo", DecoupledSOLOHead)):
        cfg = preset("paper", model=kind)
        head = cls(cfg).cuda()
        features = [torch.randn(1, 256, 800 // s, 1344 // s, device="cuda") for s in cfg.strides]
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        with torch.no_grad():
            head(features)
        torch.cuda.synchronize()
        peaks[kind] = round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)
        del head, features
        torch.cuda.empty_cache()
    return peaks


def bench_train(ctx: Context) -> list[dict]:
    """Training images/s of the tiny presets on the CPU: batch 8 at 256 x 256."""
    images, targets = shapes_batch(8, 256, seed=ctx.seed)
    rows = []
    for kind in SPEED_MODELS:
        config_info = {"preset": "tiny", "batch": 8, "image": [256, 256], "num_classes": 4}
        built = build(kind, "tiny", num_classes=4)
        if built is None:
            rows.append(
                row(f"train_images_per_s/{kind}", None, "img/s", "cpu", config_info, YOLACT_MISSING)
            )
            continue
        model, config = built
        step = train_step_fn(model, config, images, targets)
        for _ in range(ctx.repeats(2, 1)):
            step()
        steps = [step() for _ in range(ctx.repeats(8, 2))]
        detail = median_phases(steps)
        detail["min_total_ms"] = round(1e3 * min(s["total"] for s in steps), 1)
        if not ctx.quick:
            detail["gflop_per_step"] = round(count_flops(step), 1)
            detail["achieved_gflop_per_s"] = round(
                detail["gflop_per_step"] / (detail["total_ms"] / 1e3), 1
            )
        images_per_s = 8 / (detail["total_ms"] / 1e3)
        rows.append(
            row(f"train_images_per_s/{kind}", images_per_s, "img/s", "cpu", config_info, detail)
        )
    return rows


def bench_inference(ctx: Context) -> list[dict]:
    """Inference ms per image of the tiny presets on the CPU: batch 1 at 256 x 256, split into
    backbone + FPN, head and post-processing."""
    images, _ = shapes_batch(1, 256, seed=ctx.seed + 1)
    rows = []
    for kind in SPEED_MODELS:
        config_info = {"preset": "tiny", "batch": 1, "image": [256, 256], "num_classes": 4}
        built = build(kind, "tiny", num_classes=4)
        if built is None:
            rows.append(
                row(
                    f"inference_ms_per_image/{kind}", None, "ms", "cpu", config_info, YOLACT_MISSING
                )
            )
            continue
        model, config = built
        thresholds = calibrate_thresholds(model, images, candidates=200)
        for key, value in thresholds.items():
            setattr(model.config, key, value)
        detail = predict_timings(model, images, warmup=ctx.repeats(2, 1), calls=ctx.repeats(15, 5))
        detail["state"] = (
            "untrained (random init); thresholds lowered so that about 200 (location, class) "
            "candidates enter NMS: " + ", ".join(f"{k} {v:.4g}" for k, v in thresholds.items())
        )
        if not ctx.quick:
            model.eval()
            with torch.no_grad():
                detail["forward_gflop"] = round(count_flops(lambda m=model: m(images)), 2)
        rows.append(
            row(f"inference_ms_per_image/{kind}", detail["total"], "ms", "cpu", config_info, detail)
        )
    return rows


def matmul_gflop_per_s(dtype: torch.dtype, size: int, repeats: int) -> float:
    """Best GFLOP/s of a ``size`` x ``size`` matrix product in ``dtype`` (2 size^3 FLOPs)."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    times = time_calls(lambda: a @ b, repeats, warmup=2)
    return 2 * size**3 / min(times) / 1e9


def bench_cpu_speed(ctx: Context) -> list[dict]:
    """CPU speed: the cores' peak (a large matmul, fp32 and bf16) and a tiny-SOLO training step
    in fp32 and under bf16 autocast (alternated, so both see the same machine) against it."""
    from minisolo.engine import cpu_has_native_bf16

    rows = []
    peaks = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        peaks[name] = max(
            matmul_gflop_per_s(dtype, size, ctx.repeats(10, 3)) for size in (1024, 2048)
        )
        detail = {"sizes": [1024, 2048], "native_bf16": cpu_has_native_bf16()}
        rows.append(row(f"peak_gflop_per_s/{name}", peaks[name], "GFLOP/s", "cpu", {}, detail))

    # the demo's step: batch 8 at 192 px; fp32 and bf16 steps alternate, medians of each
    images, targets = shapes_batch(8, 192, seed=ctx.seed)
    steps = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        torch.manual_seed(ctx.seed)
        model, config = build("solo", "tiny", num_classes=4)
        steps[name] = train_step_fn(model, config, images, targets, autocast_dtype=dtype)
        steps[name]()  # warm-up
    gflop = count_flops(steps["fp32"]) if not ctx.quick else None  # forward + backward
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(ctx.repeats(10, 3)):
        for name in ("fp32", "bf16"):
            times[name].append(steps[name]()["total"])
    config_info = {"preset": "tiny", "batch": 8, "image": [192, 192], "num_classes": 4}
    for name in ("fp32", "bf16"):
        median = statistics.median(times[name])
        detail = {
            "median_ms": round(1e3 * median, 1),
            "min_ms": round(1e3 * min(times[name]), 1),
            "speedup_vs_fp32": round(statistics.median(times["fp32"]) / median, 2),
        }
        if gflop:
            detail["gflop_per_step"] = round(gflop, 1)
            detail["achieved_gflop_per_s"] = round(gflop / median, 1)
            detail["percent_of_peak"] = round(100 * gflop / median / peaks[name], 1)
        value = 1e3 * median
        rows.append(row(f"train_step_ms/solo_{name}", value, "ms", "cpu", config_info, detail))
    return rows


def bench_trained_inference(ctx: Context) -> list[dict]:
    """Inference of the trained demo model (the cached ``pretrained("solo")``), batch 1 at 256
    px, under this process' OpenMP wait policy and, in a child process, with it unset."""
    rows = [trained_inference_row(ctx)]
    if not ctx.default_wait:  # the child (--default-wait) measures only its own policy
        rows.append(trained_inference_default_wait_row(ctx))
    return rows


def trained_inference_default_wait_row(ctx: Context) -> dict:
    """:func:`trained_inference_row` in a child process with ``OMP_WAIT_POLICY`` unset
    (OpenMP's default: waiting threads spin a while before they sleep), as ``minisolo
    predict`` or a notebook runs it; the other rows run with ``PASSIVE``."""
    import tempfile

    name = "inference_ms_per_image/solo_trained_default_wait"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--only", "trained_inference"]
        command += ["--default-wait", "--threads", str(ctx.threads), "--json", str(out)]
        command += ["--quick"] if ctx.quick else []
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0 or not out.is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            return row(name, None, "ms", "cpu", {}, f"child process failed: {tail[0]}")
        (child,) = json.loads(out.read_text())
    return row(name, child["value"], "ms", "cpu", child["config"], child["detail"])


def trained_inference_row(ctx: Context) -> dict:
    """``predict`` of the cached demo model (``minisolo.pretrained("solo")``) on one val image
    of the demo's data resized to 256 x 256, batch 1; skipped when the cache has no model."""
    from minisolo import model_cache
    from minisolo.engine import load_checkpoint

    name = "inference_ms_per_image/solo_trained"
    config_info = {
        "preset": "tiny (the demo's recipe)",
        "batch": 1,
        "image": [256, 256],
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY") or "unset (OpenMP's default)",
    }
    folder = model_cache.entry_dir("solo", fast=False)
    if not (folder / "model.pt").is_file():
        missing = "no cached model: minisolo models build solo"
        return row(name, None, "ms", "cpu", config_info, missing)
    from minisolo.data import CocoInstances, Normalize

    model = load_checkpoint(folder / "model.pt")
    data = model_cache.demo_data(fast=False, progress=False)
    image, _ = CocoInstances(data, "val")[0]  # [3, 192, 192] in [0, 1]
    image = torch.nn.functional.interpolate(image[None], size=(256, 256), mode="bilinear")[0]
    images = Normalize()(image, None)[0][None]  # ImageNet statistics, as the model was trained
    detail = predict_timings(model, images, warmup=ctx.repeats(3, 1), calls=ctx.repeats(30, 5))
    detail["model"] = model_cache.describe(model_cache.load_info(folder))
    return row(name, detail["total"], "ms", "cpu", config_info, detail)


def bench_paper_cuda(ctx: Context) -> list[dict]:
    """Paper presets on the GPU: training (batch 8, bf16 autocast) and inference (batch 1)."""
    if ctx.device != "cuda":
        return []
    return model_speed_rows(ctx, "cuda", "paper", batch=8)


def max_memory_mib(device: str) -> float | None:
    if device != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def reset_peak_memory(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def model_speed_rows(ctx: Context, device: str, preset_name: str, batch: int) -> list[dict]:
    """Training images/s (bf16 autocast on CUDA) and inference ms per image, with peak memory,
    for every model at ``preset_name`` (paper: SOLO at 800 x 1344, YOLACT at 550 x 550)."""
    rows = []
    suffix = f"{preset_name}/" if preset_name != "tiny" else ""
    autocast = torch.bfloat16 if device == "cuda" else None
    for kind in MODELS:
        built = build(kind, preset_name)
        config = built[1] if built else None
        if config is None:
            size = (550, 550)
        elif kind == "yolact":
            size = (config.image_size, config.image_size)
        else:
            size = (800, 1344) if preset_name == "paper" else (256, 256)
        info = {"preset": preset_name, "image": list(size), "num_classes": 80}
        if built is None:
            for name, unit in (("train_images_per_s", "img/s"), ("inference_ms_per_image", "ms")):
                rows.append(row(f"{name}/{suffix}{kind}", None, unit, device, info, YOLACT_MISSING))
            continue
        model, config = built
        model.to(device)
        images, targets = random_batch(batch, *size, 7, config.num_classes, ctx.seed, device)
        step = train_step_fn(model, config, images, targets, autocast_dtype=autocast)
        for _ in range(2):
            step()
        reset_peak_memory(device)
        steps = [step() for _ in range(ctx.repeats(10, 3))]
        detail = median_phases(steps)
        detail["peak_memory_MiB"] = max_memory_mib(device)
        rows.append(
            row(
                f"train_images_per_s/{suffix}{kind}",
                batch / (detail["total_ms"] / 1e3),
                "img/s",
                device,
                {**info, "batch": batch, "autocast": str(autocast).replace("torch.", "")},
                detail,
            )
        )
        one = images[:1]
        thresholds = calibrate_thresholds(model, one, candidates=200)
        for key, value in thresholds.items():
            setattr(model.config, key, value)
        for _ in range(3):
            timed_predict(model, one)
        reset_peak_memory(device)
        runs = [timed_predict(model, one) for _ in range(ctx.repeats(20, 5))]
        detail = {
            k: round(1e3 * statistics.median(r[k] for r in runs), 2)
            for k in ("backbone_fpn", "head", "post_process", "total")
        }
        detail["peak_memory_MiB"] = max_memory_mib(device)
        detail["state"] = "untrained, float32; " + ", ".join(
            f"{k} {v:.4g}" for k, v in thresholds.items()
        )
        rows.append(
            row(
                f"inference_ms_per_image/{suffix}{kind}",
                detail["total"],
                "ms",
                device,
                {**info, "batch": 1, "dtype": "float32"},
                detail,
            )
        )
        del model, images, targets, step
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


def bench_paper_memory(ctx: Context) -> list[dict]:
    """Peak memory of one training step of the paper presets at batch 2 (fp32, SGD momentum):
    measured on CUDA, else computed on fake tensors (see benchmarks/memory.py)."""
    from benchmarks.memory import fake_training_step_memory, solo_fake_loss, surrogate_fake_loss
    from minisolo.models import build_model
    from minisolo.targets import solo_targets_batch

    rows = []
    for kind in (*MODELS, "solov2"):
        size = (550, 550) if kind == "yolact" else (800, 1344)
        name = f"paper_train_step_peak_memory/{kind}"
        config_info = {"preset": "paper", "batch": 2, "image": list(size), "dtype": "float32"}
        try:
            config = preset("paper", model=kind)
        except (ImportError, ValueError):
            rows.append(row(name, None, "GiB", ctx.device, config_info, YOLACT_MISSING))
            continue
        if kind == "yolact":
            loss_fn, loss_note = surrogate_fake_loss, "surrogate loss (sum of output means)"
        else:
            _, targets = random_batch(2, *size, 7, config.num_classes, ctx.seed)
            level_targets = solo_targets_batch(
                [t["masks"] for t in targets],
                [t["labels"] for t in targets],
                num_classes=config.num_classes,
                grids=config.grids,
                scale_ranges=config.scale_ranges,
                strides=config.strides,
                # SOLOv2's mask targets are at stride 4 on every level
                mask_stride=4 if kind == "solov2" else None,
            )
            loss_fn = solo_fake_loss(level_targets, config.num_classes, config.grids)
            loss_note = f"{kind} loss on targets of 7 random objects per image"
        result = fake_training_step_memory(
            lambda config=config: build_model(config), (2, 3, *size), loss_fn
        )
        detail = {
            "method": (
                "computed: live tensor bytes under FakeTensorMode (shapes only) for a 2nd "
                "training step; excludes allocator rounding and cuDNN/cuBLAS workspaces"
            ),
            "loss": loss_note,
            "parameters_MiB": round(result["parameters"] / 2**20, 1),
            "optimizer_state_MiB": round(result["optimizer_state"] / 2**20, 1),
            "forward_peak_GiB": round(result["forward_peak"] / 2**30, 2),
        }
        value, device = result["peak"] / 2**30, "cpu (computed)"
        if ctx.device == "cuda":
            detail["computed_GiB"] = round(value, 3)
            detail["method"] = "measured: torch.cuda.max_memory_allocated over a 2nd step"
            value, device = measured_step_peak(config, size, ctx.seed) / 2**30, "cuda"
        rows.append(row(name, value, "GiB", device, config_info, detail))
    return rows


def measured_step_peak(config, size: tuple[int, int], seed: int) -> int:
    """``torch.cuda.max_memory_allocated`` over the second fp32 training step at batch 2."""
    from minisolo.models import build_model

    model = build_model(config).cuda()
    images, targets = random_batch(2, *size, 7, config.num_classes, seed, "cuda")
    step = train_step_fn(model, config, images, targets)
    step()
    reset_peak_memory("cuda")
    step()
    peak = torch.cuda.max_memory_allocated()
    del model, images, targets, step
    torch.cuda.empty_cache()
    return peak


def load_module_at(commit: str, path: str, name: str) -> types.ModuleType | None:
    """Import ``path`` as it was at ``commit`` (None when git or the commit is unavailable)."""
    try:
        source = subprocess.run(
            ["git", "show", f"{commit}:{path}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    spec = importlib.util.spec_from_loader(name, loader=None)
    module = importlib.util.module_from_spec(spec)
    exec(compile(source, f"{commit}:{path}", "exec"), module.__dict__)
    return module


def bench_before_after(ctx: Context) -> list[dict]:
    """The package's targets.py / nms.py now vs at the first commit: same inputs as above."""
    old_targets = load_module_at(BASELINE_COMMIT, "minisolo/targets.py", "targets_v0")
    old_nms = load_module_at(BASELINE_COMMIT, "minisolo/nms.py", "nms_v0")
    config = {"baseline_commit": BASELINE_COMMIT}
    names = ("solo_targets", "matrix_nms", "mask_nms")
    if old_targets is None or old_nms is None:
        return [
            row(f"speedup_vs_v0/{n}", None, "x", "cpu", config, "baseline commit not available")
            for n in names
        ]
    g = torch.Generator().manual_seed(ctx.seed)
    masks, labels = random_instance_masks(50, 800, 1216, generator=g)
    kwargs = paper_target_kwargs()
    candidates = clustered_candidates(500, 200, 304, num_classes=8, generator=g)
    same = level_targets_equal(
        old_targets.solo_targets(masks, labels, **kwargs), solo_targets(masks, labels, **kwargs)
    ) and torch.equal(old_nms.matrix_nms(*candidates), matrix_nms(*candidates))
    pairs = {
        "solo_targets": (
            lambda: old_targets.solo_targets(masks, labels, **kwargs),
            lambda: solo_targets(masks, labels, **kwargs),
        ),
        "matrix_nms": (lambda: old_nms.matrix_nms(*candidates), lambda: matrix_nms(*candidates)),
        "mask_nms": (lambda: old_nms.mask_nms(*candidates), lambda: mask_nms(*candidates)),
    }
    rows = []
    for name, (before, after) in pairs.items():
        t_before = time_calls(before, ctx.repeats(5, 1), warmup=1)
        t_after = time_calls(after, ctx.repeats(5, 3), warmup=1)
        detail = {
            "before": ms_summary(t_before),
            "after": ms_summary(t_after),
            "identical_results": same,
        }
        speedup = statistics.median(t_before) / statistics.median(t_after)
        rows.append(row(f"speedup_vs_v0/{name}", speedup, "x", "cpu", config, detail))
    return rows


def bench_profile(ctx: Context) -> list[dict]:
    """torch.profiler of one training step of the tiny SOLO (batch 8, 256 px, CPU); the table
    goes into the report (``ctx.notes['profile']``), one summary row into the results."""
    from torch.profiler import ProfilerActivity, profile

    images, targets = shapes_batch(8, 256, seed=ctx.seed)
    model, config = build("solo", "tiny", num_classes=4)
    step = train_step_fn(model, config, images, targets)
    step()
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        phases = step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:15]
    table = [
        {
            "op": e.key,
            "self_cpu_ms": round(e.self_cpu_time_total / 1e3, 1),
            "percent": round(100 * e.self_cpu_time_total / total, 1),
            "calls": e.count,
        }
        for e in top
    ]
    categories: dict[str, float] = {}
    for e in events:
        cat = op_category(e.key)
        categories[cat] = categories.get(cat, 0.0) + e.self_cpu_time_total
    categories = {
        k: round(100 * v / total, 1)
        for k, v in sorted(categories.items(), key=lambda kv: kv[1], reverse=True)
    }
    ctx.notes["profile"] = {
        "top_ops": table,
        "categories_percent": categories,
        "self_cpu_total_ms": round(total / 1e3, 1),
        "step_phases_ms": {k: round(1e3 * v, 1) for k, v in phases.items() if k != "loss_value"},
    }
    ctx.notes["profile"]["forward_gflop_by_module"] = forward_flops_by_module(model, images)
    top_name = table[0]["op"] if table else None
    return [
        row(
            "train_step_profile/solo",
            round(total / 1e3, 1),
            "ms self CPU",
            "cpu",
            {"preset": "tiny", "batch": 8, "image": [256, 256]},
            {"top_op": top_name, "categories_percent": categories},
        )
    ]


def forward_flops_by_module(model, images: torch.Tensor) -> dict[str, float]:
    """GFLOP of one forward pass (no grad) per top-level part: backbone, FPN, head towers and
    outputs."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, depth=3)
    with counter, torch.no_grad():
        model(images)
    prefix = type(model).__name__
    result = {"total": round(counter.get_total_flops() / 1e9, 2)}
    for name, ops in counter.get_flop_counts().items():
        if name.count(".") in (1, 2) and name.startswith(prefix + "."):
            part = name[len(prefix) + 1 :]
            if part.count(".") == 0 or part.startswith("head."):
                result[part] = round(sum(ops.values()) / 1e9, 2)
    if "head.mask_tower" in result and "head.category_branch" in result:
        # the per-level 1x1 output convs (a ModuleList, never called itself) are the rest
        rest = result["head"] - result["head.mask_tower"] - result["head.category_branch"]
        result["head.mask_outputs"] = round(rest, 2)
    return result


def op_category(name: str) -> str:
    """Group profiler op names into a few families for the report."""
    n = name.lower()
    if "conv" in n:
        return "convolution (fwd+bwd)"
    if "group_norm" in n or "batch_norm" in n or "native_batch_norm" in n:
        return "normalisation (GN/BN, fwd+bwd)"
    if "upsample" in n or "interpolate" in n or "grid_sampler" in n:
        return "bilinear resize (fwd+bwd)"
    if n.startswith("aten::mm") or "addmm" in n or "matmul" in n or "bmm" in n:
        return "matmul"
    if any(k in n for k in ("index", "gather", "scatter", "nonzero", "masked", "where")):
        return "indexing"
    if any(k in n for k in ("sum", "mean", "amax", "max", "min", "any", "all")):
        return "reductions"
    if any(k in n for k in ("copy", "to_copy", "clone", "cat", "stack", "empty", "zero", "fill")):
        return "copies / allocation"
    if any(
        k in n
        for k in ("add", "mul", "div", "sub", "sigmoid", "relu", "threshold", "exp", "pow", "log")
    ):
        return "elementwise"
    return "other"


BENCHMARKS: dict[str, Callable[[Context], list[dict]]] = {
    "targets": bench_targets,
    "nms": bench_nms,
    "decoupled_memory": bench_decoupled_memory,
    "train": bench_train,
    "inference": bench_inference,
    "cpu_speed": bench_cpu_speed,
    "trained_inference": bench_trained_inference,
    "paper_cuda": bench_paper_cuda,
    "paper_memory": bench_paper_memory,
    "before_after": bench_before_after,
    "package_changes": bench_package_changes,
    "profile": bench_profile,
}


# ============================================================================ output
def short_detail(detail) -> str:
    """A one-line summary of a row's detail for the console table."""
    if not isinstance(detail, dict):
        return str(detail)
    parts = []
    for key, value in detail.items():
        if isinstance(value, dict) and "median_ms" in value:
            parts.append(f"{key} {value['median_ms']:g} ms")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            parts.append(f"{key} {value:g}")
    return ", ".join(parts[:6])


def format_table(rows: list[dict]) -> str:
    lines = [f"{'name':42s} {'value':>10s} {'unit':11s} {'device':15s} detail"]
    for r in rows:
        value = "null" if r["value"] is None else f"{r['value']:.4g}"
        lines.append(
            f"{r['name']:42s} {value:>10s} {r['unit']:11s} {r['device']:15s} "
            f"{short_detail(r['detail'])}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (< 5 min on 2 cores)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--json", type=Path, help="write the rows to this JSON file")
    parser.add_argument("--only", action="append", choices=sorted(BENCHMARKS), help="run one group")
    parser.add_argument("--list", action="store_true", help="list the benchmark groups and exit")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--default-wait",
        action="store_true",
        help="leave OMP_WAIT_POLICY unset (OpenMP's default) instead of PASSIVE",
    )
    parser.add_argument(
        "--docs", type=Path, default=ROOT / "docs" / "benchmarks.md", help="report path"
    )
    args = parser.parse_args(argv)
    if args.list:
        for name, fn in BENCHMARKS.items():
            print(f"{name:18s} {fn.__doc__.strip().splitlines()[0]}")
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda was asked for, but PyTorch sees no CUDA GPU")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    ctx = Context(
        quick=args.quick,
        device=args.device,
        threads=args.threads,
        seed=args.seed,
        default_wait=args.default_wait,
    )
    machine = machine_info(args.threads, args.device)
    machine["OMP_WAIT_POLICY"] = os.environ.get("OMP_WAIT_POLICY")
    groups = args.only or list(BENCHMARKS)
    rows: list[dict] = []
    started = time.perf_counter()
    for name in groups:
        if name == "profile" and args.quick and not args.only:
            continue  # the profile is for the report; --quick writes no report
        t0 = time.perf_counter()
        new_rows = BENCHMARKS[name](ctx)
        rows.extend(new_rows)
        print(f"[{name}: {time.perf_counter() - t0:.1f} s]", file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - started
    machine["load_average_1min_end"] = machine_info(args.threads, args.device)["load_average_1min"]
    machine["elapsed_s"] = round(elapsed, 1)
    machine["mode"] = "quick" if args.quick else "full"

    print(format_table(rows))
    print(f"\n{len(rows)} rows in {elapsed:.1f} s ({machine['mode']})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    if not args.quick and not args.only:
        from benchmarks.report import write_report

        write_report(rows, machine, ctx.notes, args.docs)
        print(f"wrote {args.docs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Measured "what if" experiments: changes to files the benchmarks do not own (solo.py, the
training loop), timed here so that a proposal comes with numbers. Nothing in the package is
modified; each experiment rebuilds the relevant computation next to the package's own.
"""

from __future__ import annotations

import statistics

import torch
import torch.nn.functional as F

from benchmarks.common import (
    Context,
    build,
    ms_summary,
    row,
    shapes_batch,
    time_calls,
    train_step_fn,
)


def mask_logits_positives_only(ctx: Context, model, images, targets) -> dict:
    """SOLO's mask branch in training: all S^2 channels (1x1 conv after the x2 upsampling,
    then pick the positives) vs only the positives' channels (their 1x1 weights applied to the
    tower output before the upsampling; conv and bilinear upsampling are both linear and
    commute, bilinear weights summing to 1). Forward + backward of a Dice-like loss."""
    from minisolo.layers import coord_features

    head = model.head
    level_targets = model.targets(targets)
    with torch.no_grad():
        features = model.features(images)
        towers = [head.mask_tower(torch.cat([x, coord_features(x)], 1)) for x in features]
    towers = [t.detach().requires_grad_(True) for t in towers]

    def select(level):
        lt, grid = level_targets[level], model.config.grids[level]
        image = lt.positive_index // (grid * grid)
        cell = lt.positive_index % (grid * grid)
        return image, cell, lt.masks.float()

    selections = [select(level) for level in range(len(towers))]

    def full():
        loss = 0.0
        for level, (image, cell, target) in enumerate(selections):
            up = F.interpolate(towers[level], scale_factor=2, mode="bilinear", align_corners=False)
            logits = head.mask_outputs[level](up)[image, cell]
            loss = loss + (torch.sigmoid(logits) - target).square().mean()
        loss.backward()
        return loss

    def positives_only():
        loss = 0.0
        for level, (image, cell, target) in enumerate(selections):
            conv = head.mask_outputs[level]
            weight = conv.weight[cell, :, 0, 0]  # [P, C]
            low = torch.einsum("pc,pchw->phw", weight, towers[level][image])
            low = low + conv.bias[cell][:, None, None]
            logits = F.interpolate(low[None], scale_factor=2, mode="bilinear", align_corners=False)[
                0
            ]
            loss = loss + (torch.sigmoid(logits) - target).square().mean()
        loss.backward()
        return loss

    difference = abs(full().detach().item() - positives_only().detach().item())
    repeats = ctx.repeats(5, 2)
    t_full = time_calls(full, repeats, warmup=1)
    t_pos = time_calls(positives_only, repeats, warmup=1)
    return {
        "all_channels": ms_summary(t_full),
        "positives_only": ms_summary(t_pos),
        "positives_per_level": [lt.num_positives for lt in level_targets],
        "loss_abs_difference": difference,
        "speedup": statistics.median(t_full) / statistics.median(t_pos),
    }


def channels_last_step(ctx: Context, images, targets) -> dict:
    """The tiny SOLO training step with NCHW tensors vs channels_last (NHWC) model and input,
    steps interleaved so that both see the same machine load."""
    steps = {}
    for name, memory_format in (("nchw", None), ("channels_last", torch.channels_last)):
        torch.manual_seed(ctx.seed)
        model, config = build("solo", "tiny", num_classes=4)
        inputs = images
        if memory_format is not None:
            model = model.to(memory_format=memory_format)
            inputs = images.contiguous(memory_format=memory_format)
        steps[name] = train_step_fn(model, config, inputs, targets)
        steps[name]()
    times = {name: [] for name in steps}
    for _ in range(ctx.repeats(5, 2)):
        for name, step in steps.items():
            times[name].append(step())
    result = {}
    for name, runs in times.items():
        result[name] = {
            phase: round(1e3 * statistics.median(r[phase] for r in runs), 1)
            for phase in ("forward", "backward", "total")
        }
    result["speedup"] = result["nchw"]["total"] / result["channels_last"]["total"]
    return result


def single_resize_post_process(ctx: Context) -> dict:
    """``SOLO._to_original`` resizes 100 stride-4 masks to the padded input size, crops and
    resizes again to the original size, even when nothing is padded and the original size is
    the input size; one resize gives the identical masks then."""
    model, _ = build("solo", "tiny", num_classes=4)
    g = torch.Generator().manual_seed(ctx.seed)
    probs = torch.rand(100, 64, 64, generator=g)
    outputs = {"mask": [torch.empty(1, 1, 64, 64)]}

    def current():
        return model._to_original(probs, outputs, (256, 256), (256, 256))

    def single():
        full = F.interpolate(probs[None], size=(256, 256), mode="bilinear", align_corners=False)
        return full[0] > model.config.mask_threshold

    identical = torch.equal(current(), single())
    repeats = ctx.repeats(10, 3)
    t_current = time_calls(current, repeats, warmup=1)
    t_single = time_calls(single, repeats, warmup=1)
    return {
        "current": ms_summary(t_current),
        "single_resize": ms_summary(t_single),
        "identical": identical,
        "speedup": statistics.median(t_current) / statistics.median(t_single),
    }


def bench_what_if(ctx: Context) -> list[dict]:
    """Measured proposals for solo.py / the training loop (nothing in the package changes)."""
    images, targets = shapes_batch(8, 256, seed=ctx.seed)
    model, _ = build("solo", "tiny", num_classes=4)
    config = {"preset": "tiny", "batch": 8, "image": [256, 256]}
    rows = []
    detail = mask_logits_positives_only(ctx, model, images, targets)
    rows.append(
        row("what_if/mask_logits_positives_only", detail.pop("speedup"), "x", "cpu", config, detail)
    )
    detail = channels_last_step(ctx, images, targets)
    rows.append(
        row("what_if/channels_last_train_step", detail.pop("speedup"), "x", "cpu", config, detail)
    )
    detail = single_resize_post_process(ctx)
    rows.append(
        row(
            "what_if/post_process_single_resize",
            detail.pop("speedup"),
            "x",
            "cpu",
            {"masks": 100, "from": [64, 64], "to": [256, 256]},
            detail,
        )
    )
    return rows

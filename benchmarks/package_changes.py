"""Before/after rows for changes made to ``solo.py`` and the training loop.

Each row times the package's current path against the earlier one on the same inputs, steps
interleaved so that both see the same machine load:

* ``mask_channels``: SOLO's training forward with all S^2 mask channels (``full_masks=True``,
  the first version) against only the positive cells' channels (``full_masks=False``, what
  ``engine.train`` runs now); the loss must be the same.
* ``channels_last``: the training step with NCHW tensors against NHWC (channels_last), which
  ``engine.train`` now uses on every device.
* ``post_process_resize``: ``SOLO._to_original`` resized the kept masks to the padded size and
  then again to the original size even when both are equal; it now skips the second resize.
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


def interleaved_steps(ctx: Context, variants: dict[str, dict], images, targets) -> dict:
    """Median phases (ms) of the tiny SOLO training step for each ``train_step_fn`` variant."""
    steps = {}
    for name, kwargs in variants.items():
        torch.manual_seed(ctx.seed)
        model, config = build("solo", "tiny", num_classes=4)
        steps[name] = train_step_fn(model, config, images, targets, **kwargs)
        steps[name]()  # warm-up
    times: dict[str, list[dict]] = {name: [] for name in steps}
    for _ in range(ctx.repeats(5, 2)):
        for name, step in steps.items():
            times[name].append(step())
    result: dict = {}
    for name, runs in times.items():
        result[name] = {
            phase: round(1e3 * statistics.median(r[phase] for r in runs), 1)
            for phase in ("forward", "backward", "total")
        }
        result[name]["first_loss"] = round(runs[0]["loss_value"], 6)
    return result


def mask_channels_step(ctx: Context, images, targets) -> dict:
    result = interleaved_steps(
        ctx, {"all_channels": {"full_masks": True}, "positives_only": {}}, images, targets
    )
    result["same_first_loss"] = bool(
        abs(result["all_channels"]["first_loss"] - result["positives_only"]["first_loss"]) < 1e-4
    )
    result["speedup"] = result["all_channels"]["total"] / result["positives_only"]["total"]
    return result


def channels_last_step(ctx: Context, images, targets) -> dict:
    result = interleaved_steps(
        ctx, {"nchw": {"channels_last": False}, "channels_last": {}}, images, targets
    )
    result["speedup"] = result["nchw"]["total"] / result["channels_last"]["total"]
    return result


def post_process_resize(ctx: Context) -> dict:
    """100 stride-4 masks of a 256 x 256 unpadded image back to 256 x 256: two resizes (before)
    against ``SOLO._to_original`` now (one); the masks must be identical."""
    model, _ = build("solo", "tiny", num_classes=4)
    g = torch.Generator().manual_seed(ctx.seed)
    probs = torch.rand(100, 64, 64, generator=g)
    outputs = {"mask": [torch.empty(1, 1, 64, 64)]}

    def before():
        full = F.interpolate(probs[None], size=(256, 256), mode="bilinear", align_corners=False)
        full = F.interpolate(full, size=(256, 256), mode="bilinear", align_corners=False)
        return full[0] > model.config.mask_threshold

    def after():
        return model._to_original(probs, outputs, (256, 256), (256, 256))

    identical = torch.equal(before(), after())
    repeats = ctx.repeats(10, 3)
    t_before = time_calls(before, repeats, warmup=1)
    t_after = time_calls(after, repeats, warmup=1)
    return {
        "before": ms_summary(t_before),
        "after": ms_summary(t_after),
        "identical": identical,
        "speedup": statistics.median(t_before) / statistics.median(t_after),
    }


def bench_package_changes(ctx: Context) -> list[dict]:
    """The rows above, for the tiny preset at batch 8 and 256 x 256."""
    images, targets = shapes_batch(8, 256, seed=ctx.seed)
    config = {"preset": "tiny", "batch": 8, "image": [256, 256]}
    rows = []
    detail = mask_channels_step(ctx, images, targets)
    rows.append(
        row(
            "speedup_vs_v0/solo_train_step_mask_channels",
            detail.pop("speedup"),
            "x",
            "cpu",
            config,
            detail,
        )
    )
    detail = channels_last_step(ctx, images, targets)
    rows.append(
        row(
            "speedup_vs_v0/solo_train_step_channels_last",
            detail.pop("speedup"),
            "x",
            "cpu",
            config,
            detail,
        )
    )
    detail = post_process_resize(ctx)
    rows.append(
        row(
            "speedup_vs_v0/post_process_resize",
            detail.pop("speedup"),
            "x",
            "cpu",
            {"masks": 100, "from": [64, 64], "to": [256, 256]},
            detail,
        )
    )
    return rows

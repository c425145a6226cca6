"""Turn benchmark rows into ``docs/benchmarks.md`` and ``docs/img/benchmarks.png``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: The speed goals of the project (CPU, tiny preset).
TRAIN_STEP_GOAL_S = 0.5  # one training step, batch 8 at 256 px
INFERENCE_GOAL_MS = 40.0  # per image, batch 1 at 256 px


def _by_name(rows: list[dict]) -> dict[str, dict]:
    return {r["name"]: r for r in rows}


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def _detail_text(detail: Any) -> str:
    """Compact, human-readable detail for the table (dicts of timings shown as ms)."""
    if not isinstance(detail, dict):
        return str(detail)
    parts = []
    for key, value in detail.items():
        if isinstance(value, dict) and "median_ms" in value:
            parts.append(f"{key}: {value['median_ms']:g} ms (min {value['min_ms']:g})")
        elif isinstance(value, dict):
            parts.append(f"{key}: " + ", ".join(f"{k} {v}" for k, v in value.items()))
        elif isinstance(value, list):
            parts.append(f"{key}: {value}")
        else:
            parts.append(f"{key}: {value}")
    return "; ".join(parts).replace("|", "/")


def results_table(rows: list[dict]) -> str:
    lines = ["| name | value | unit | device | details |", "|---|---:|---|---|---|"]
    for r in rows:
        lines.append(
            f"| `{r['name']}` | {_fmt(r['value'])} | {r['unit']} | {r['device']} | "
            f"{_detail_text(r['detail'])} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """Four panels: speed-ups, training throughput, inference split, memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = _by_name(rows)
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))

    ax = axes[0, 0]
    names = [
        "targets_speedup_vs_loop",
        "matrix_nms_speedup_vs_mask_nms",
        "speedup_vs_v0/solo_targets",
        "speedup_vs_v0/matrix_nms",
        "speedup_vs_v0/mask_nms",
        "speedup_vs_v0/solo_train_step_mask_channels",
        "speedup_vs_v0/solo_train_step_channels_last",
        "speedup_vs_v0/post_process_resize",
    ]
    names = [n for n in names if by.get(n, {}).get("value") is not None]
    ax.barh(names, [by[n]["value"] for n in names], color="tab:blue")
    ax.axvline(1, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("speed-up (x, log scale)")
    ax.set_title("Speed-ups (CPU)")

    ax = axes[0, 1]
    models = ["solo", "decoupled_solo", "yolact", "solov2"]
    values = [by.get(f"train_images_per_s/{m}", {}).get("value") or 0 for m in models]
    ax.bar(models, values, color="tab:green")
    ax.axhline(8 / TRAIN_STEP_GOAL_S, color="red", ls="--", label="goal: batch 8 in 0.5 s")
    ax.set_ylabel("images / s")
    ax.set_title("Training, tiny preset, batch 8 at 256 px (CPU)")
    ax.legend()

    ax = axes[1, 0]
    # the untrained presets (200 candidates), then the trained demo SOLO in both wait policies
    rows = models + ["solo_trained", "solo_trained_default_wait"]
    labels = ["solo", "decoupled\nsolo", "yolact", "solov2", "trained\nPASSIVE"]
    labels.append("trained\ndefault wait")
    bottoms = [0.0] * len(rows)
    for part, colour in (
        ("backbone_fpn", "tab:blue"),
        ("head", "tab:orange"),
        ("post_process", "tab:purple"),
    ):
        heights = []
        for m in rows:
            detail = by.get(f"inference_ms_per_image/{m}", {}).get("detail")
            heights.append(detail.get(part, 0.0) if isinstance(detail, dict) else 0.0)
        ax.bar(labels, heights, bottom=bottoms, label=part, color=colour)
        bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    ax.tick_params(axis="x", labelsize=8)
    ax.axhline(INFERENCE_GOAL_MS, color="red", ls="--", label="goal: 40 ms")
    ax.set_ylabel("ms per image")
    ax.set_title("Inference, batch 1 at 256 px (CPU)\nuntrained presets; the trained demo SOLO")
    ax.legend()

    ax = axes[1, 1]
    mem = [(m, by.get(f"paper_train_step_peak_memory/{m}", {}).get("value")) for m in models]
    mem = [(m, v) for m, v in mem if v is not None]
    ax.bar([m for m, _ in mem], [v for _, v in mem], color="tab:red")
    ax.set_ylabel("GiB")
    ratio = by.get("decoupled_mask_memory_ratio", {}).get("value")
    ratio40 = by.get("decoupled_mask_memory_ratio/S40", {}).get("value")
    ax.set_title(
        "Peak memory, paper training step, batch 2\n(SOLO family 800x1344, YOLACT 550x550)"
    )
    ax.text(
        0.98,
        0.95,
        "Decoupled / vanilla SOLO mask output:\n"
        f"{_fmt(ratio)} (all levels), {_fmt(ratio40)} (S=40)",
        transform=ax.transAxes,
        ha="right",
        va="top",
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def profile_section(notes: dict, rows: list[dict]) -> str:
    """The profile table, where the time goes, and how it compares to the goals."""
    prof = notes.get("profile")
    by = _by_name(rows)
    lines = ["## Where the time goes: one training step of the tiny SOLO", ""]
    if not prof:
        return "\n".join(lines + ["(profile not run)", ""])
    phases = prof["step_phases_ms"]
    lines += [
        "`torch.profiler` over one training step (batch 8, 256 x 256, CPU, after two warm-up "
        f"steps). Step phases (ms): {', '.join(f'{k} {v}' for k, v in phases.items())}. "
        f"Total self CPU time {prof['self_cpu_total_ms']} ms (summed over threads).",
        "",
        "| op | self CPU ms | % | calls |",
        "|---|---:|---:|---:|",
    ]
    for op in prof["top_ops"]:
        lines.append(f"| `{op['op']}` | {op['self_cpu_ms']} | {op['percent']} | {op['calls']} |")
    lines += ["", "By family of ops (% of self CPU time):", ""]
    lines += [f"- {k}: {v}%" for k, v in prof["categories_percent"].items()]
    lines.append("")

    solo_train = by.get("train_images_per_s/solo", {})
    detail = solo_train.get("detail") if isinstance(solo_train.get("detail"), dict) else {}
    step_ms = detail.get("total_ms")
    gflop = detail.get("gflop_per_step")
    rate = detail.get("achieved_gflop_per_s")
    forward = prof.get("forward_gflop_by_module", {})
    if forward:
        lines += [
            "Forward FLOPs of the tiny SOLO for the batch of 8 (GFLOP, PyTorch's "
            "FlopCounterMode; a training step is about 3x the forward): "
            + ", ".join(f"{k} {v}" for k, v in forward.items())
            + ".",
            "",
        ]
    lines += ["### Against the goals", ""]
    if step_ms is not None:
        verdict = "met" if step_ms / 1e3 < TRAIN_STEP_GOAL_S else "missed"
        line = (
            f"- **Training step, batch 8 at 256 px: {step_ms / 1e3:.2f} s (median) vs the "
            f"goal {TRAIN_STEP_GOAL_S} s: {verdict}.**"
        )
        if gflop:
            line += (
                f" The step is {gflop} GFLOP (convolutions and matmuls), run at {rate} GFLOP/s; "
                f"0.5 s needs {gflop / TRAIN_STEP_GOAL_S:.0f} GFLOP/s sustained through forward "
                f"and backward, {gflop / TRAIN_STEP_GOAL_S / rate:.1f}x what this run got."
            )
        lines.append(line)
    for kind in ("solo", "decoupled_solo", "yolact"):
        r = by.get(f"inference_ms_per_image/{kind}")
        if r and r["value"] is not None:
            d = r["detail"]
            verdict = "met" if r["value"] < INFERENCE_GOAL_MS else "missed"
            lines.append(
                f"- Inference {kind}: {r['value']:.1f} ms per image vs the goal "
                f"{INFERENCE_GOAL_MS:g} ms: {verdict} (backbone+FPN {d.get('backbone_fpn')} ms, "
                f"head {d.get('head')} ms, post-processing {d.get('post_process')} ms"
                + (f"; forward {d['forward_gflop']} GFLOP" if "forward_gflop" in d else "")
                + ")."
            )
    lines += ["", "### What stands in the way, measured", ""]
    lines += _obstacles(by, prof)
    lines.append("")
    return "\n".join(lines)


def _median(detail: dict, key: str) -> str:
    value = detail.get(key) if isinstance(detail, dict) else None
    return f"{value['median_ms']:g} ms" if isinstance(value, dict) else "n/a"


def _obstacles(by: dict, prof: dict) -> list[str]:
    """Bullet points built from the profile and the before/after rows."""
    out = []
    cats = prof.get("categories_percent", {})
    conv = cats.get("convolution (fwd+bwd)")
    if conv is not None:
        out.append(
            f"- Convolutions are {conv}% of the step's CPU time (their backward about twice "
            "the forward); everything else (copies, norms, resizes, the loss and the targets) "
            "is small. The step is compute-bound: the only ways under 0.5 s are fewer FLOPs "
            "or more FLOP/s."
        )
    pos = by.get("speedup_vs_v0/solo_train_step_mask_channels")
    if pos and pos["value"] is not None:
        d = pos["detail"]
        out.append(
            "- Done: SOLO's training forward no longer computes all S^2 mask channels; the loss "
            "computes only the positive cells' (their 1x1 weights applied before the x2 "
            "upsampling, which commutes with them): step "
            f"{d['all_channels']['total']} ms before vs {d['positives_only']['total']} ms now "
            f"({pos['value']:.2f}x, same loss: {d.get('same_first_loss')})."
        )
    cl = by.get("speedup_vs_v0/solo_train_step_channels_last")
    if cl and cl["value"] is not None:
        d = cl["detail"]
        out.append(
            "- Done: the model and input are channels_last (NHWC) on every device, so oneDNN "
            f"skips layout reorders: step {d['nchw']['total']} ms NCHW vs "
            f"{d['channels_last']['total']} ms NHWC ({cl['value']:.2f}x; forward "
            f"{d['nchw']['forward']} vs {d['channels_last']['forward']} ms, backward "
            f"{d['nchw']['backward']} vs {d['channels_last']['backward']} ms)."
        )
    single = by.get("speedup_vs_v0/post_process_resize")
    if single and single["value"] is not None:
        d = single["detail"]
        out.append(
            "- Done: `SOLO._to_original` resized the (up to 100) kept masks to the padded input "
            "size and then again to the original size, also when both are the same; now it "
            f"skips the second resize: {_median(d, 'before')} vs {_median(d, 'after')} "
            f"({single['value']:.1f}x, identical masks: {d.get('identical')})."
        )
    train = by.get("train_images_per_s/solo", {}).get("detail") or {}
    infer = by.get("inference_ms_per_image/solo", {}).get("detail") or {}
    rate = train.get("achieved_gflop_per_s") if isinstance(train, dict) else None
    gflop = infer.get("forward_gflop") if isinstance(infer, dict) else None
    if rate and gflop:
        out.append(
            f"- Inference at 256 px is mostly the forward pass: {gflop} GFLOP for the tiny SOLO; "
            f"at the {rate} GFLOP/s the training step got, that alone is "
            f"{1e3 * gflop / rate:.0f} ms of the {INFERENCE_GOAL_MS:g} ms budget (batch-1 "
            "convolutions at these small sizes run no faster). Meeting it needs faster kernels "
            "or a lighter network, besides cheaper post-processing. (bf16 autocast is no help "
            "here: on this Zen 4 CPU, which has AVX512-BF16, it made the tiny training step "
            "about 3x slower when tried.)"
        )
    return out


def write_report(rows: list[dict], machine: dict, notes: dict, path: Path) -> None:
    """Write the Markdown report and its plot next to it (``img/benchmarks.png``)."""
    path = Path(path)
    image = path.parent / "img" / "benchmarks.png"
    plot(rows, image)
    machine_lines = "\n".join(f"| {k} | {v} |" for k, v in machine.items())
    load = machine.get("load_average_1min")
    cores = machine.get("cpu_cores") or 1
    if isinstance(load, (int, float)) and load > cores:
        load_note = (
            "The machine below was **shared with other jobs** while this ran (see the load "
            "average): single numbers are noisy and absolute times inflated, the `min` values in "
            "the details show the best case, and ratios (speed-ups) measured back to back are "
            "more stable than absolute times."
        )
    else:
        load_note = (
            "The machine below was otherwise quiet while this ran (load average at most its core "
            "count); the `min` values in the details show the best case, and ratios (speed-ups) "
            "measured back to back are more stable than absolute times."
        )
    text = f"""# Benchmarks

Produced by `python benchmarks/run.py` (this file and `docs/img/benchmarks.png` are written by
it; do not edit by hand). `python benchmarks/run.py --quick --json out.json` gives the same rows
with fewer repeats and no report; `--only GROUP` runs one group (`--list` shows them);
`--device cuda` adds the paper-size rows measured on a GPU.

Timings are wall-clock medians after warm-up calls, with `torch.set_num_threads` as below.
{load_note}

## Machine

| | |
|---|---|
{machine_lines}

## Results

{results_table(rows)}

![benchmarks](img/benchmarks.png)

{notes.get("methods", METHODS)}

{CHANGES}

{profile_section(notes, rows)}
## Raw rows

<details><summary>JSON</summary>

```json
{json.dumps(rows, indent=1)}
```

</details>
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


METHODS = """## What each row measures

- `targets_speedup_vs_loop`: `minisolo.solo_targets` (vectorised) against
  `benchmarks/loop_targets.py`, a per-object, per-cell Python loop written like the official
  `solo_target_single` (NumPy centre of mass, one resize per object and level, nested loops
  over the cells). 50 random ellipses and rectangles (sizes log-uniform 8-700 px, so every
  level gets objects) on an 800 x 1216 image, paper grids, strides and scale ranges. Both
  give identical targets (checked in the row and in `tests/test_benchmarks.py`).
- `matrix_nms_speedup_vs_mask_nms`: `matrix_nms` against the sequential `mask_nms` on 500
  candidate masks at 200 x 304 (stride 4 of 800 x 1216): 40 objects, each candidate a jittered
  near-duplicate of one, 8 classes. Both need the same-class IoU matrix (timed alone as
  `same_class_intersections`), which costs far more than either the sequential walk over 500
  candidates or Matrix NMS's few 500 x 500 matrix operations, so on a CPU the two are about
  equally fast. `classic_lazy_mask_nms` is the textbook form that computes IoUs only against
  each kept mask. Matrix NMS's advantage is on a GPU, where one parallel step replaces a
  sequential loop of kernel launches.
- `decoupled_mask_memory_ratio`: bytes of Decoupled SOLO's mask outputs (`2 S` channels) over
  vanilla SOLO's (`S^2` channels) at 800 x 1344, from the output shapes of a forward pass of
  the paper heads on the meta device; `/S40` is the first level alone (40 x 2 / 40^2 = 0.05).
  With `--device cuda` also the measured peak memory of each head's forward.
- `train_images_per_s/*`: tiny presets (4 classes), batch 8 of synthetic shapes images
  (3-5 objects) at 256 x 256, forward + loss (targets included) + backward + gradient clipping
  (when configured) + SGD step; details give the median of each phase.
- `inference_ms_per_image/*`: tiny presets, batch 1 at 256 x 256, `model.predict` split with
  forward hooks into backbone + FPN, head (including SOLO's `head_inputs` resize), and
  post-processing. The models are untrained, so the score threshold is lowered until about
  200 candidates enter NMS (a busy image for a trained model); the details say so.
- `peak_gflop_per_s/fp32`, `/bf16` (group `cpu_speed`): the best of repeated 1024 x 1024 and
  2048 x 2048 matrix products in that type on the benchmark's threads: the machine's practical
  peak, against which the training step's achieved GFLOP/s is read (`native_bf16` says whether
  the CPU computes bf16 in hardware).
- `train_step_ms/solo_fp32`, `/solo_bf16`: one tiny-SOLO training step at the demo's size
  (batch 8 at 192 x 192), in float32 and under bf16 autocast (the engine's `--amp` choices),
  the two alternated step by step so both see the same machine; details give the speed-up
  and the achieved GFLOP/s (forward + backward FLOPs from PyTorch's FlopCounterMode) as a
  percentage of the peak of the same type.
- `inference_ms_per_image/solo_trained`: `predict` of the trained demo model (the cached
  `minisolo.pretrained("solo")`, not built by the benchmark: the row is empty without it) on
  a val image of the demo's data resized to 256 x 256, batch 1, split like the rows above.
  `/solo_trained_default_wait` is the same measurement in a child process with
  `OMP_WAIT_POLICY` unset, as `minisolo predict` and the notebooks run (every other row runs
  with `PASSIVE`, see the measurement note): at batch 1 the ops are small, and threads that
  sleep between them make inference 1.5-2x slower on a quiet machine.
- `paper_train_step_peak_memory/*`: one SGD training step of the paper presets at batch 2
  (SOLO, Decoupled SOLO and SOLOv2: 800 x 1344, YOLACT: 550 x 550), fp32; SOLOv2's loss
  computes the masks of the positive cells only, as `SOLOv2.loss` does. Measured with
  `torch.cuda.max_memory_allocated` on a GPU; without one computed on fake tensors (shapes
  only): every tensor an op returns is counted until it is garbage collected
  (`benchmarks/memory.py`), which includes what autograd saves for backward, gradients and
  momentum buffers, but not the CUDA allocator's rounding or library workspaces. SOLO's step
  here is the all-channels forward of the official head (`full_masks=True`); `engine.train`
  computes only the positive cells' channels, a selection with data-dependent shapes that fake
  tensors cannot run, so its smaller peak is not shown.
- `speedup_vs_v0/*`: `solo_targets`, `matrix_nms` and `mask_nms` now against the same
  functions at the first commit (loaded with `git show`), on the inputs above; results are
  identical. `solo_train_step_mask_channels`, `solo_train_step_channels_last` and
  `post_process_resize` (`benchmarks/package_changes.py`) time the tiny SOLO training step
  (batch 8, 256 px) and the mask resize of inference before and after the change, steps
  interleaved.
- `train_step_profile/solo`: total self CPU time of the profiled step below.
"""


CHANGES = """## What was made faster (`speedup_vs_v0/*` rows)

`minisolo/targets.py` (results identical; checked against the loop baseline in
`tests/test_benchmarks.py`, including cells on exact grid boundaries):

- One pass over the full-resolution masks: `pixel_counts` gives per-row and per-column pixel
  counts, from which the area, the tight box and the centre of mass follow. The counts are
  summed 8 pixels at a time (bool bytes viewed as int64 words, at most 127 words per partial
  sum so no byte overflows), instead of `masks.float()` copies and int64-widening sums.
- The centre of mass is exact: integer moments, one float64 division (what SciPy's
  `center_of_mass` in the official code gives). Before, float32 sums of up to 10^9 could move a
  centre lying exactly on a cell boundary into the neighbouring cell.
- Mask targets: bilinear downsampling by an even integer factor `f` followed by `>= 0.5` is
  "at least 2 of the 4 pixels at `f*i + f/2 - 1 .. f*i + f/2` set": integer adds on strided
  views instead of a float copy and bilinear interpolation of every mask. Done once per mask
  size (levels with the same stride share it); other sizes fall back to interpolation of only
  the objects that own a positive cell.

`minisolo/nms.py` (results identical): Matrix NMS and mask NMS only compare masks of the same
class, and masks whose boxes do not overlap have no common pixel. `same_class_intersections`
splits the candidates into connected groups (same class, overlapping boxes) and runs one
small intersection matmul per group, cropped to the group's box, instead of one
`[N, P] @ [P, N]` product over all pairs; it reads masks as uint8 (a bool to float conversion
is about 10x slower on a CPU). On a GPU it keeps the single product.

`minisolo/solo.py` and `minisolo/engine.py` (same loss, same masks): in training, SOLO's head
stops before the S^2-channel 1x1 conv (`full_masks=False`) and the loss applies only the
positive cells' rows of its weight, before the x2 upsampling (both are linear, the bilinear
weights sum to 1, so the order does not matter); the model and images are channels_last on
the CPU too; and inference resizes the kept masks once when the image was not resized.

Measurement note: on a shared CPU, OpenMP's default spin-waiting makes 2-thread runs erratic
(when this was written, at load average ~7 on 2 cores: `solo_targets` 80-900 ms per call with
spinning threads vs 47-150 ms with `OMP_WAIT_POLICY=PASSIVE`; a tiny training step 8.7-11.7 s
vs 1.0-2.7 s). `benchmarks/run.py` therefore sets `OMP_WAIT_POLICY=PASSIVE` unless it is
already set.
"""

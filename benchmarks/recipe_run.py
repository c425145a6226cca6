#!/usr/bin/env python
"""Train one tiny-preset recipe and print its COCO numbers as one JSON line.

    python benchmarks/recipe_run.py --model yolact --iterations 2000 \\
        --set image_size=192 lr=0.002 lr_schedule=cosine
    python benchmarks/recipe_run.py --model solo --iterations 800 --data data/shapes-256

Without ``--data`` it trains on the demo's shapes data (``minisolo.model_cache.demo_data()``).
``--set key=value`` overrides a field of the tiny preset (values are parsed as JSON when
they can be: numbers, ``null``, lists; strings otherwise). The recipe comparisons of
docs/results.md were run with this script, two at a time with ``OMP_NUM_THREADS=1``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from minisolo import model_cache, preset
from minisolo.engine import train


def parse_value(text: str):
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    if isinstance(value, list):
        return tuple(tuple(v) if isinstance(v, list) else v for v in value)
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="solo", choices=["solo", "decoupled_solo", "yolact"])
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--data", type=Path, default=None, help="default: the demo's shapes data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/recipes"))
    parser.add_argument("--name", default=None, help="run name (default: from the options)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)

    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = parse_value(value)
    data = args.data or model_cache.demo_data()
    name = args.name or "_".join([args.model, str(args.iterations), *args.set]).replace("/", "-")
    started = time.perf_counter()
    result = train(
        preset("tiny", model=args.model, **overrides),
        data,
        args.out / name,
        max_iters=args.iterations,
        seed=args.seed,
        progress=False,
        log_every=50,
    )
    report = {
        "name": name,
        "model": args.model,
        "data": str(data),
        "iterations": args.iterations,
        "seed": args.seed,
        "overrides": args.set,
        "seconds": round(time.perf_counter() - started),
        "mask": result.metrics["segm"],
        "box_AP": result.metrics["bbox"]["AP"],
        "final_losses": {k: v for k, v in result.history[-1].items() if k.startswith("loss")},
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

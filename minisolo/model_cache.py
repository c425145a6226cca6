"""The train-once cache of trained tiny models: ``minisolo.pretrained("solo")``.

A notebook that needs a trained model asks for it by name. The first call trains it with the
model's recipe (the demo's shapes data, the tiny preset, a fixed number of iterations; a
progress bar shows the time left) and saves it under ``data/models/``; every later call loads
it in a second. ``minisolo models build`` builds them ahead of a workshop, ``minisolo models
list`` shows what is cached.

Each cached model lives in its own folder ``<name>-<key>/`` (``model.pt``, ``info.json`` with
the recipe, COCO metrics, date and training time, ``log.jsonl`` and ``loss.png``). The key is
a hash of everything that decides the model: the fully resolved config, the data options, the
iterations, the seed and the package version, so a changed recipe (or a new version) trains a
new model instead of loading a stale one. Fast mode (``MINISOLO_FAST=1``, the tests) has its
own tiny recipe and therefore its own key. A folder appears only when it is complete: training
writes to a temporary folder that is renamed at the end, so an interrupted build never leaves
a half-written model behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from torch import nn

from . import checkpoint as ckpt
from .config import preset
from .demo import (
    DEMO_IMAGE_SIZE,
    DEMO_ITERATIONS,
    DEMO_NUM_TRAIN,
    DEMO_NUM_VAL,
    DEMO_OVERRIDES,
    DEMO_SHAPES,
    ensure_shapes,
)
from .utils import is_fast_mode

# The demo's shapes data (minisolo.demo): 192 px images, objects 36-150 px, 1-4 per image.
DEMO_DATA = {
    "num_train": DEMO_NUM_TRAIN,
    "num_val": DEMO_NUM_VAL,
    "image_size": DEMO_IMAGE_SIZE,
    "seed": 0,
    "shapes": DEMO_SHAPES,
}
FAST_DATA = {**DEMO_DATA, "num_train": 16, "num_val": 4}

# name -> what to train. "minutes": the training time measured on a quiet 2-core CPU
# (docs/results.md), printed before training; None where it was not measured.
RECIPES: dict[str, dict[str, Any]] = {
    "solo": {
        "model": "solo",
        "overrides": DEMO_OVERRIDES,
        "iterations": DEMO_ITERATIONS,
        "minutes": 9,
    },
    "decoupled_solo": {
        "model": "decoupled_solo",
        "overrides": DEMO_OVERRIDES,
        "iterations": DEMO_ITERATIONS,
        "minutes": None,
    },
    # SOLOv2 with the demo's data recipe; its own warm-up ratio (0.01, the official one)
    "solov2": {
        "model": "solov2",
        "overrides": DEMO_OVERRIDES,
        "iterations": DEMO_ITERATIONS,
        "minutes": None,
    },
    "yolact": {
        "model": "yolact",
        "overrides": {"image_size": 192},
        "iterations": DEMO_ITERATIONS,
        "minutes": None,
    },
}
FAST_ITERATIONS = 6
# what `minisolo models build` trains when no name is given: the models notebooks 06-08 show
NOTEBOOK_MODELS = ("solo", "decoupled_solo", "yolact")


class UnknownModel(ValueError):
    """A name the cache has no recipe for."""


def data_root() -> Path:
    """Where generated data and cached models live: ``$MINISOLO_DATA``, else the ``data/``
    folder of the source checkout (``pip install -e .``), else ``~/.cache/minisolo``."""
    if os.environ.get("MINISOLO_DATA"):
        return Path(os.environ["MINISOLO_DATA"])
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file() and (checkout / "minisolo").is_dir():
        return checkout / "data"
    return Path.home() / ".cache" / "minisolo"


def cache_dir() -> Path:
    return data_root() / "models"


def recipe(name: str, fast: bool | None = None) -> dict[str, Any]:
    """The full recipe of model ``name``: model kind, resolved config, data, iterations, seed."""
    if name not in RECIPES:
        raise UnknownModel(f"no trained-model recipe named {name!r}; choose from {sorted(RECIPES)}")
    fast = is_fast_mode() if fast is None else fast
    base = RECIPES[name]
    config = preset("tiny", model=base["model"], **base["overrides"])
    return {
        "name": name,
        "model": base["model"],
        "config": config.to_dict(),
        "data": FAST_DATA if fast else DEMO_DATA,
        "iterations": FAST_ITERATIONS if fast else base["iterations"],
        "seed": 0,
        "fast": fast,
        "minutes": None if fast else base["minutes"],
    }


def recipe_key(spec: dict[str, Any]) -> str:
    """A short hash of what decides the model (the measured minutes do not)."""
    from . import __version__

    decisive = {k: v for k, v in spec.items() if k != "minutes"}
    text = json.dumps({"recipe": decisive, "version": __version__}, sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def entry_dir(name: str, fast: bool | None = None) -> Path:
    return _folder_of(recipe(name, fast))


def _folder_of(spec: dict[str, Any]) -> Path:
    """The cache folder of a full recipe: ``<name>[-fast]-<key>``."""
    return cache_dir() / f"{spec['name']}{'-fast' if spec['fast'] else ''}-{recipe_key(spec)}"


def demo_data(fast: bool | None = None, progress: bool = True) -> Path:
    """The shapes data the cached models are trained on (generated once, in ``data/``)."""
    fast = is_fast_mode() if fast is None else fast
    data = FAST_DATA if fast else DEMO_DATA
    folder = data_root() / ("shapes-demo-fast" if fast else "shapes-demo")
    return ensure_shapes(
        folder,
        data["num_train"],
        data["num_val"],
        data["seed"],
        data["image_size"],
        progress=progress,
        **data["shapes"],
    )


def build(
    name: str,
    *,
    device: str = "auto",
    progress: bool = True,
    rebuild: bool = False,
    fast: bool | None = None,
) -> Path:
    """Train model ``name`` with its recipe unless it is cached; return its cache folder."""
    from .config import config_from_dict
    from .engine import train

    spec = recipe(name, fast)
    final = _folder_of(spec)
    if final.is_dir() and not rebuild:
        return final
    data = demo_data(spec["fast"], progress=progress)
    if progress:
        minutes = f"about {spec['minutes']} min on 2 CPU cores, " if spec["minutes"] else ""
        print(f"training {name} once ({minutes}{spec['iterations']} iterations); cached in {final}")
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        result = train(
            config_from_dict(spec["config"]),
            data,
            work / "run",
            max_iters=spec["iterations"],
            device=device,
            seed=spec["seed"],
            progress=progress,
            log_every=max(1, min(50, spec["iterations"] // 4)),
        )
        if result.interrupted:
            raise KeyboardInterrupt
        core = result.model
        ckpt.save_atomic(
            {
                "model": core.state_dict(),
                "config": result.config.to_dict(),
                "model_kind": result.config.model,
                "class_names": list(result.config.class_names),
                "category_ids": list(range(1, result.config.num_classes + 1)),
            },
            work / "model.pt",
        )
        for part in ("log.jsonl", "loss.png"):
            if (work / "run" / part).is_file():
                shutil.copyfile(work / "run" / part, work / part)
        info = {
            **{k: v for k, v in spec.items() if k != "config"},
            "key": recipe_key(spec),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "train_seconds": round(result.seconds, 1),  # training and the evaluation at its end
            "device": str(next(core.parameters()).device),
            # autocast type of the forward pass (``amp="auto"``: bf16 where the CPU has it);
            # not part of the key: the recipe is the same, the last digits of AP may differ
            "precision": result.precision,
            "metrics": result.metrics,
        }
        (work / "info.json").write_text(json.dumps(info, indent=2))
        shutil.rmtree(work / "run")  # the full checkpoint with optimizer state is not needed
        if final.is_dir():  # rebuild, or another process finished first
            shutil.rmtree(final)
        work.chmod(0o755)  # mkdtemp made it private
        os.replace(work, final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return final


def pretrained(
    name: str = "solo", *, device: str = "auto", progress: bool = True, fast: bool | None = None
) -> nn.Module:
    """A trained tiny model from the cache (trained and cached on first use), in eval mode.

    ``model.cache_info`` says which model it is: name, recipe, date, iterations and its COCO
    mask AP on the val split of the demo's shapes data (``demo_data()``).
    """
    from .engine import load_checkpoint

    folder = build(name, device=device, progress=progress, fast=fast)
    model = load_checkpoint(folder / "model.pt", device)
    model.cache_info = load_info(folder)
    return model


def load_info(folder: Path) -> dict[str, Any]:
    info = json.loads((Path(folder) / "info.json").read_text())
    info["folder"] = str(folder)
    return info


def load_history(folder: Path | str) -> list[dict[str, Any]]:
    """The training log of a cached model (one record per logged iteration)."""
    path = Path(folder) / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def describe(info: dict[str, Any]) -> str:
    """One line that says which model this is, for notebooks and the command."""
    metrics = info.get("metrics") or {}
    ap = metrics.get("segm", {}).get("AP")
    score = (
        f"mask AP {ap:.3f} on the {info['data']['num_val']} val images" if ap is not None else ""
    )
    fast = " (fast-mode recipe: barely trained)" if info.get("fast") else ""
    return (
        f"cached {info['name']} [{info['key']}]{fast}: {info['iterations']} iterations on the "
        f"demo's shapes data, trained and evaluated {info['date']} in "
        f"{info['train_seconds'] / 60:.1f} min; "
        f"{score}"
    )


def list_cached() -> list[dict[str, Any]]:
    """Every complete cached model, newest first, with whether its recipe is current."""
    if not cache_dir().is_dir():
        return []
    entries = []
    for folder in cache_dir().iterdir():
        if folder.name.startswith(".") or not (folder / "info.json").is_file():
            continue
        info = load_info(folder)
        current = info["name"] in RECIPES and folder == entry_dir(info["name"], info.get("fast"))
        entries.append({**info, "current": current})
    return sorted(entries, key=lambda e: e["date"], reverse=True)


__all__ = [
    "RECIPES",
    "NOTEBOOK_MODELS",
    "pretrained",
    "build",
    "recipe",
    "recipe_key",
    "demo_data",
    "data_root",
    "cache_dir",
    "list_cached",
    "describe",
    "load_history",
    "UnknownModel",
]

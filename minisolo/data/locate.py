"""Find real COCO photos on this machine: ``find_coco_folder()``.

Notebooks that show real photos call it instead of hard-coding a path. It looks, in order, at

1. the folder named by the ``MINISOLO_COCO`` environment variable (any COCO-layout folder:
   a full COCO 2017 download, or a subset made elsewhere);
2. the ``coco-*`` folders in the data folder (``data/`` of the checkout, or
   ``$MINISOLO_DATA``), which is where ``minisolo data coco-subset --out data/coco-...``
   puts a subset; the first by name wins;
3. the developers' ``../shared/coco-mini`` (158 photos beside the checkout).

A folder counts when it has ``annotations/instances_<split>.json`` and the ``<split>/``
image folder next to it (a subset still being built has no JSON yet, so it is skipped).
When nothing is found, :func:`coco_subset_hint` says how to make a small subset.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import NamedTuple

from .subset import ANNOTATIONS_SIZE

#: The environment variable that points at a COCO-layout folder.
COCO_ENV = "MINISOLO_COCO"
#: Average size of a COCO 2017 photo (coco-mini's 78 val2017 photos: 12.6 MB, 162 KB each).
IMAGE_KB = 160

_CHECKOUT = Path(__file__).resolve().parents[2]


class CocoFolder(NamedTuple):
    """A COCO-layout folder and its splits (validation splits first)."""

    root: Path
    splits: tuple[str, ...]


def coco_splits(root: str | Path) -> tuple[str, ...]:
    """The splits of ``root``: names with ``annotations/instances_<split>.json`` and a
    ``<split>/`` folder of images; ``val*`` splits first, then the others by name."""
    ann_dir = Path(root) / "annotations"
    if not ann_dir.is_dir():
        return ()
    names = [p.name[len("instances_") : -len(".json")] for p in ann_dir.glob("instances_*.json")]
    found = [n for n in names if (Path(root) / n).is_dir()]
    return tuple(sorted(found, key=lambda n: (not n.startswith("val"), n)))


def _default_data_dir() -> Path:
    from ..model_cache import data_root  # imported here: model_cache imports the whole engine

    return data_root()


def _default_shared_dirs() -> list[Path]:
    """``shared/coco-mini`` beside the checkout, or beside the working folder or a parent."""
    starts = [_CHECKOUT.parent, Path.cwd(), *Path.cwd().parents]
    unique = list(dict.fromkeys(p / "shared" / "coco-mini" for p in starts))
    return unique


def find_coco_folder(
    data_dir: str | Path | None = None, shared_dirs: list[str | Path] | None = None
) -> CocoFolder | None:
    """The first COCO-layout folder found (see the module docstring for the order), or None.

    Args:
        data_dir: where ``coco-*`` subsets live (default: ``data_root()``, i.e. ``data/``).
        shared_dirs: the developers' folders to try last (default: ``shared/coco-mini`` beside
            the checkout, the working folder and its parents).

    Returns ``CocoFolder(root, splits)``: use ``splits[0]`` (a validation split when there is
    one). A ``MINISOLO_COCO`` that is set but holds no COCO split gives a warning.
    """
    env = os.environ.get(COCO_ENV)
    if env:
        splits = coco_splits(env)
        if splits:
            return CocoFolder(Path(env), splits)
        warnings.warn(
            f"{COCO_ENV}={env} is not a COCO folder (no annotations/instances_<split>.json with "
            "its <split>/ image folder): looking elsewhere",
            stacklevel=2,
        )
    data_dir = Path(data_dir) if data_dir is not None else _default_data_dir()
    subsets = sorted(data_dir.glob("coco-*")) if data_dir.is_dir() else []
    shared = [Path(p) for p in shared_dirs] if shared_dirs is not None else _default_shared_dirs()
    for candidate in [*subsets, *shared]:
        splits = coco_splits(candidate)
        if splits:
            return CocoFolder(candidate, splits)
    return None


def coco_subset_hint(num_images: int = 100, split: str = "val2017") -> str:
    """What to run to get real photos when :func:`find_coco_folder` finds none."""
    out = (_default_data_dir() / f"coco-{split}").resolve()
    try:
        out = out.relative_to(Path.cwd().resolve())
    except ValueError:
        pass  # not below the working folder: show the full path
    images_mb = num_images * IMAGE_KB / 1000
    return (
        f"No COCO photos found (looked at ${COCO_ENV}, data/coco-*, ../shared/coco-mini).\n"
        f"To make a subset of {num_images} {split} photos, run once (it downloads the "
        f"{ANNOTATIONS_SIZE / 1e6:.0f} MB annotations zip, then about {images_mb:.0f} MB of "
        f"images, ~{IMAGE_KB} KB each):\n"
        f"    minisolo data coco-subset --out {out} --split {split} --num-images {num_images}\n"
        f"or point {COCO_ENV} at a COCO folder you already have."
    )

"""Checkpoints that survive interruptions: atomic writes and safe (``weights_only``) loading.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(..., weights_only=True)``: loading never runs code from the file. Every write goes
through a temporary file and a rename, so a crash, Ctrl-C or ``kill -9`` at any moment leaves
either the old file or the new one, never half of one.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated or not a minisolo checkpoint."""


def save_atomic(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` through a temporary file in the same folder and a rename.

    The rename is atomic, so a crash or Ctrl-C during the write leaves the previous file intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def copy_atomic(source: str | Path, destination: str | Path) -> Path:
    """Make ``destination`` a copy of ``source``, atomically: a hard link where the file system
    allows one (no second write of the data), else a copy; either way under a temporary name
    first, then renamed over ``destination``."""
    source, destination = Path(source), Path(destination)
    temporary = destination.with_name(f".{destination.name}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)
    try:
        try:
            os.link(source, temporary)
        except OSError:  # no hard links here (some network or FAT file systems)
            shutil.copyfile(source, temporary)
        os.replace(temporary, destination)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return destination


def remove_oldest(folder: str | Path, pattern: str, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest files matching ``pattern`` in ``folder``, newest by
    the number in the name (``iter_000500.pt``); returns the deleted paths."""

    def number(path: Path) -> int:
        digits = re.findall(r"\d+", path.stem)
        return int(digits[-1]) if digits else -1

    found = sorted(Path(folder).glob(pattern), key=number)
    removed = found[: max(len(found) - keep, 0)]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def check_writable(folder: str | Path) -> Path:
    """Create ``folder`` if needed and check that files can be written there: an error now, in
    one line, rather than at the first checkpoint an hour into training."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(
            f"cannot write to the output folder {folder}: it is a file; choose another --out"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".write_test.", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        reason = error.strerror or str(error)
        raise CheckpointError(
            f"cannot write to the output folder {folder} ({reason}): choose another --out, or "
            "make it writable"
        ) from error
    return folder


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely; a clear :class:`CheckpointError` names a bad file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise CheckpointError(f"{path}: not a readable checkpoint ({error})") from error
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"{path}: not a minisolo checkpoint (no 'model' and 'config')")
    return state


def rng_state() -> dict[str, Any]:
    """Every random generator training touches, in a ``weights_only``-loadable form."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": _python_state_to_list(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["position"], n["has_gauss"], n["cached"])
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_state_to_list(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]

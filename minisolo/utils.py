"""Small helpers shared by the command, the notebooks and the benchmarks."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def is_fast_mode() -> bool:
    """True when ``MINISOLO_FAST=1``: notebooks and demos pick tiny sizes (used by the tests)."""
    return os.environ.get("MINISOLO_FAST", "0") not in ("", "0", "false", "False")


def pick_device(name: str = "auto") -> torch.device:
    """``"auto"`` gives CUDA when a GPU is present, else the CPU; ``"cuda"`` without a GPU is an
    error that says so."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but PyTorch sees no CUDA GPU")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (CPU and CUDA) random number generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)

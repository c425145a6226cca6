"""Counting tensor memory on any device, the CPU included: :class:`LiveTensorMemory`.

PyTorch reports peak memory only on CUDA (``torch.cuda.max_memory_allocated``). This
``TorchDispatchMode`` sees every tensor an operation returns, adds its storage's bytes when the
storage first appears and subtracts them when the last tensor using that storage is garbage
collected. Its ``peak`` is the most tensor memory that was alive at once while the mode was
active: what ``torch.cuda.max_memory_allocated`` reports for the same code, minus the CUDA
caching allocator's rounding and library workspaces (cuDNN, cuBLAS). Tensors that existed
before (the weights) are not counted.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveTensorMemory(TorchDispatchMode):
    """Tracks the bytes of live tensor storages created while the mode is active."""

    def __init__(self) -> None:
        super().__init__()
        self._storages: dict[int, list[int]] = {}  # storage key -> [live tensors, bytes]
        self.current = 0
        self.peak = 0

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata  # the address of the storage: shared by views
        entry = self._storages.get(key)
        if entry is None:
            entry = self._storages[key] = [0, storage.nbytes()]
            self.current += entry[1]
            self.peak = max(self.peak, self.current)
        entry[0] += 1
        weakref.finalize(tensor, self._release, key)

    def _release(self, key: int) -> None:
        entry = self._storages[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.current -= entry[1]
            del self._storages[key]

    def reset_peak(self) -> None:
        self.peak = self.current

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for item in tree_flatten(out)[0]:
            if isinstance(item, torch.Tensor):
                self._track(item)
        return out


def peak_tensor_memory(fn: Callable[[], Any]) -> tuple[Any, int]:
    """Run ``fn()`` and return its result and the peak bytes of the tensors it created."""
    with LiveTensorMemory() as tracker:
        result = fn()
    return result, tracker.peak


__all__ = ["LiveTensorMemory", "peak_tensor_memory"]

"""The inference front end every model shares: one forward pass in eval mode, default sizes.

``SOLO.predict``, ``DecoupledSOLO.predict`` and ``YOLACT.predict`` all start here, then run
their own post-processing (Matrix NMS for SOLO, Fast NMS for YOLACT).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def forward_for_inference(
    model: nn.Module,
    images: torch.Tensor,
    image_sizes: Sequence[tuple[int, int]] | None = None,
    original_sizes: Sequence[tuple[int, int]] | None = None,
    **forward_kwargs,
) -> tuple[dict, list[tuple[int, int]], list[tuple[int, int]]]:
    """Run ``model(images, **forward_kwargs)`` once in eval mode (restoring its mode after) and
    fill in the default sizes: ``image_sizes`` = the padded input size, ``original_sizes`` =
    ``image_sizes``. The images go in as NHWC (``channels_last``), the layout the convolutions
    of a loaded checkpoint expect; the numbers are the same in either layout."""
    was_training = model.training
    model.eval()
    try:
        outputs = model(images.contiguous(memory_format=torch.channels_last), **forward_kwargs)
    finally:
        model.train(was_training)
    batch, _, height, width = images.shape
    image_sizes = list(image_sizes or [(height, width)] * batch)
    original_sizes = list(original_sizes or image_sizes)
    return outputs, image_sizes, original_sizes

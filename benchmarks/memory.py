"""Counting tensor memory without a GPU, with :class:`minisolo.memory.LiveTensorMemory`.

Run under ``FakeTensorMode`` no arithmetic is done at all, only shapes are propagated, so a
training step of the paper-size model (R50, 800 x 1344, batch 2) is "run" on a laptop CPU in
seconds, including everything autograd saves for the backward pass, the gradients and the
optimizer's momentum buffers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._pytree import tree_flatten

from minisolo.memory import LiveTensorMemory


def fake_training_step_memory(
    build: Callable[[], torch.nn.Module],
    images_shape: tuple[int, int, int, int],
    loss_fn: Callable[[torch.nn.Module, dict, FakeTensorMode], torch.Tensor],
    lr: float = 0.01,
) -> dict[str, int]:
    """Peak tensor bytes of a training step, computed on fake (shape-only) tensors.

    ``build()`` makes the model (its parameters are created fake), ``loss_fn(model, outputs,
    fake_mode)`` turns the forward outputs into a scalar loss. Two steps are run (SGD with
    momentum, as in the paper) so the second one has the optimizer state too; the numbers are
    those of the second step. Returns bytes of ``parameters``, ``optimizer_state``,
    ``forward_peak`` (end of the forward pass incl. loss) and ``peak``.
    """
    fake = FakeTensorMode()
    tracker = LiveTensorMemory()
    with fake, tracker:
        model = build()
        params = [p for p in model.parameters() if p.requires_grad]
        parameters = tracker.current
        optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)
        images = torch.empty(images_shape)
        result: dict[str, int] = {}
        for step in range(2):
            if step == 1:
                result["optimizer_state"] = tracker.current - parameters - images.nbytes
                tracker.reset_peak()
            outputs = model(images)
            loss = loss_fn(model, outputs, fake)
            result["forward_peak"] = tracker.peak
            del outputs
            loss.backward()
            del loss
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        result["peak"] = tracker.peak
        result["parameters"] = parameters
    return result


def solo_fake_loss(level_targets: list, num_classes: int, grids, mask_loss_weight: float = 3.0):
    """A ``loss_fn`` for :func:`fake_training_step_memory` that does what ``SOLO.loss`` (and
    ``SOLOv2.loss``) does (the positives' mask probabilities, Dice; focal loss over every
    cell), on targets computed beforehand with real tensors.

    ``SOLO.loss`` itself cannot run on fake tensors: it computes targets from mask pixels and
    checks label values, which need data.
    """
    from minisolo.losses import dice_loss, sigmoid_focal_loss

    one_hot = torch.cat(
        [
            F.one_hot(lt.category.reshape(-1), num_classes + 1)[:, :num_classes].float()
            for lt in level_targets
        ]
    )
    num_positives = sum(lt.num_positives for lt in level_targets)
    # SOLOv2 groups its cells by image with data-dependent sizes, so the grouping is done here,
    # on the real indices (ascending, in the order of lt.masks): [(image, cells), ...] per level
    by_image = [
        [
            (image, lt.positive_index[lt.positive_index // (grid * grid) == image] % (grid * grid))
            for image in (lt.positive_index // (grid * grid)).unique().tolist()
        ]
        for lt, grid in zip(level_targets, grids, strict=True)
    ]

    def loss_fn(model, outputs, fake: FakeTensorMode) -> torch.Tensor:
        probs, targets = [], []
        for level, (lt, grid) in enumerate(zip(level_targets, grids, strict=True)):
            if lt.num_positives == 0:
                continue
            if hasattr(model.head, "cell_mask_probs"):  # SOLO, Decoupled SOLO: all at once
                index = fake.from_tensor(lt.positive_index)
                image, cell = index // (grid * grid), index % (grid * grid)
                probs.append(
                    model.head.cell_mask_probs(outputs, level, image, cell // grid, cell % grid)
                )
            else:  # SOLOv2: one image at a time (grouped above)
                per_image = []
                for image, cells in by_image[level]:
                    cell = fake.from_tensor(cells)
                    rows, cols = cell // grid, cell % grid
                    per_image.append(model.cell_mask_probs(outputs, level, image, rows, cols))
                probs.append(torch.cat(per_image))
            targets.append(fake.from_tensor(lt.masks))
        dice = torch.cat([dice_loss(p.float(), t) for p, t in zip(probs, targets, strict=True)])
        logits = torch.cat(
            [x.permute(0, 2, 3, 1).reshape(-1, num_classes) for x in outputs["category"]]
        )
        focal = sigmoid_focal_loss(logits.float(), fake.from_tensor(one_hot)).sum()
        return focal / (num_positives + 1) + mask_loss_weight * dice.mean()

    return loss_fn


def surrogate_fake_loss(model, outputs: dict, fake: FakeTensorMode) -> torch.Tensor:
    """A ``loss_fn`` that touches every floating-point output (sum of means): its gradients
    have the outputs' full shapes, as the real losses' do. Used for YOLACT, whose matching and
    OHEM depend on data and cannot run on fake tensors."""
    values = [v for v in tree_flatten(outputs)[0] if isinstance(v, torch.Tensor)]
    return sum(v.float().mean() for v in values if v.requires_grad)

"""Tests for minisolo.data.transforms: resize, flip, normalise, padding, boxes from masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from minisolo.data import (
    Compose,
    Normalize,
    RandomHorizontalFlip,
    Resize,
    ToTensor,
    build_transforms,
    denormalize,
    masks_to_boxes,
    pad_to_multiple,
    pad_to_size,
    pil_to_tensor,
    resize_masks,
)


def _target(masks: torch.Tensor) -> dict:
    h, w = masks.shape[-2:]
    return {
        "image_id": 1,
        "masks": masks,
        "labels": torch.arange(masks.shape[0]),
        "boxes": masks_to_boxes(masks),
        "orig_size": (h, w),
        "size": (h, w),
    }


def _rect_masks(h: int, w: int, rects: list[tuple[int, int, int, int]]) -> torch.Tensor:
    """Bool masks [N, h, w] with rectangle n covering rows y1:y2 and columns x1:x2."""
    m = torch.zeros((len(rects), h, w), dtype=torch.bool)
    for n, (x1, y1, x2, y2) in enumerate(rects):
        m[n, y1:y2, x1:x2] = True
    return m


# ---- masks_to_boxes -----------------------------------------------------------------------


def test_masks_to_boxes_exclusive_corner_and_empty():
    m = _rect_masks(10, 12, [(3, 2, 7, 5), (0, 0, 0, 0), (11, 9, 12, 10)])
    boxes = masks_to_boxes(m)
    assert boxes.dtype == torch.float32
    assert boxes.tolist() == [[3, 2, 7, 5], [0, 0, 0, 0], [11, 9, 12, 10]]
    assert masks_to_boxes(torch.zeros((0, 5, 5), dtype=torch.bool)).shape == (0, 4)


def test_masks_to_boxes_irregular_shape():
    m = torch.zeros((1, 20, 20), dtype=torch.bool)
    m[0, 4, 10] = m[0, 15, 2] = m[0, 9, 17] = True
    assert masks_to_boxes(m).tolist() == [[2, 4, 18, 16]]


# ---- ToTensor / Normalize -----------------------------------------------------------------


def test_to_tensor_values_and_grayscale():
    arr = np.zeros((4, 5, 3), dtype=np.uint8)
    arr[1, 2] = (255, 128, 0)
    t, _ = ToTensor()(Image.fromarray(arr), {})
    assert t.shape == (3, 4, 5) and t.dtype == torch.float32
    torch.testing.assert_close(t[:, 1, 2], torch.tensor([1.0, 128 / 255, 0.0]))
    gray = pil_to_tensor(Image.fromarray(np.full((3, 3), 51, dtype=np.uint8)))
    assert gray.shape == (3, 3, 3)
    torch.testing.assert_close(gray, torch.full((3, 3, 3), 0.2))


def test_normalize_denormalize_round_trip():
    torch.manual_seed(0)
    img = torch.rand(3, 8, 9)
    out, tgt = Normalize()(img, {"x": 1})
    assert tgt == {"x": 1}
    # ImageNet statistics: channel 0 of a mid-grey pixel is (0.5 - 0.485) / 0.229
    torch.testing.assert_close(
        Normalize()(torch.full((3, 1, 1), 0.5), {})[0][0, 0, 0], torch.tensor(0.015 / 0.229)
    )
    assert not torch.allclose(out, img)
    torch.testing.assert_close(denormalize(out), img)
    # custom statistics round-trip too
    out2, _ = Normalize(mean=(0.1, 0.2, 0.3), std=(2.0, 3.0, 4.0))(img, {})
    torch.testing.assert_close(denormalize(out2, (0.1, 0.2, 0.3), (2.0, 3.0, 4.0)), img)


# ---- Resize -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hw, short, max_size, expected",
    [
        ((480, 640), 800, 1333, (800, 1067)),  # short side to 800
        ((640, 480), 800, 1333, (1067, 800)),  # portrait
        ((100, 1000), 800, 1333, (133, 1333)),  # long side capped at 1333
        ((256, 256), 512, 1333, (512, 512)),
        ((427, 640), 400, 600, (400, 600)),  # cap and short side agree
    ],
)
def test_resize_output_size(hw, short, max_size, expected):
    assert Resize.output_size(*hw, short, max_size) == expected


def test_resize_image_masks_boxes_and_size():
    masks = _rect_masks(48, 64, [(8, 4, 40, 20), (0, 30, 64, 48)])
    img = torch.rand(3, 48, 64)
    out, tgt = Resize(96, 1000)(img, _target(masks))
    assert out.shape == (3, 96, 128)
    assert tgt["masks"].shape == (2, 96, 128) and tgt["masks"].dtype == torch.bool
    assert tgt["size"] == (96, 128)
    assert tgt["orig_size"] == (48, 64)  # unchanged
    # exact x2 upscale: bilinear + threshold 0.5 maps [x1, x2) onto [2*x1, 2*x2)
    assert tgt["boxes"].tolist() == [[16, 8, 80, 40], [0, 60, 128, 96]]
    torch.testing.assert_close(tgt["boxes"], masks_to_boxes(tgt["masks"]))
    assert torch.equal(tgt["labels"], torch.arange(2))


def test_resize_downscale_keeps_masks_aligned():
    masks = _rect_masks(200, 300, [(20, 40, 120, 160), (150, 10, 290, 190)])
    img = masks.any(0).float().expand(3, -1, -1).clone()  # the image is the union of masks
    out, tgt = Resize(100, 1000)(img, _target(masks))
    assert out.shape == (3, 100, 150)
    torch.testing.assert_close(tgt["boxes"], torch.tensor([[10, 20, 60, 80], [75, 5, 145, 95.0]]))
    # the mask agrees with the (bright) image where the image is clearly in or out
    union = tgt["masks"].any(0)
    assert torch.all(union[out[0] > 0.9]) and not torch.any(union[out[0] < 0.1])


def test_resize_accepts_pil_and_handles_no_instances():
    img = Image.fromarray(np.zeros((30, 40, 3), dtype=np.uint8))
    out, tgt = Resize(60, 1000)(img, _target(torch.zeros((0, 30, 40), dtype=torch.bool)))
    assert out.shape == (3, 60, 80)
    assert tgt["masks"].shape == (0, 60, 80) and tgt["boxes"].shape == (0, 4)


def test_resize_masks_matches_image_filter():
    m = _rect_masks(7, 9, [(2, 1, 6, 5)])
    up = resize_masks(m, (14, 18))
    assert up.dtype == torch.bool and up.shape == (1, 14, 18)
    assert masks_to_boxes(up).tolist() == [[4, 2, 12, 10]]
    # a mask thinner than a pixel at the new scale disappears instead of becoming garbage
    thin = _rect_masks(64, 64, [(10, 10, 11, 11)])
    assert not resize_masks(thin, (8, 8)).any()


def test_multiscale_resize_uses_torch_rng():
    sides = (32, 48, 64)
    resize = Resize(sides, 1000)
    img = torch.zeros(3, 20, 20)
    masks = _rect_masks(20, 20, [(5, 5, 15, 15)])

    def run(seed: int) -> list[int]:
        torch.manual_seed(seed)
        return [resize(img, _target(masks))[0].shape[-1] for _ in range(30)]

    first = run(0)
    assert first == run(0)  # reproducible with the torch seed
    assert set(first) == set(sides)  # every scale gets used
    assert run(0) != run(1)


# ---- flip ---------------------------------------------------------------------------------


def test_flip_moves_image_masks_boxes_consistently():
    masks = _rect_masks(10, 16, [(1, 2, 5, 8), (10, 0, 16, 3)])
    img = torch.rand(3, 10, 16)
    out, tgt = RandomHorizontalFlip(p=1.0)(img, _target(masks))
    assert torch.equal(out, img.flip(-1))
    assert torch.equal(tgt["masks"], masks.flip(-1))
    # [x1, x2) -> [W - x2, W - x1)
    assert tgt["boxes"].tolist() == [[11, 2, 15, 8], [0, 0, 6, 3]]
    torch.testing.assert_close(tgt["boxes"], masks_to_boxes(tgt["masks"]))
    # flipping twice is the identity
    back, tgt2 = RandomHorizontalFlip(p=1.0)(out, tgt)
    assert torch.equal(back, img) and torch.equal(tgt2["masks"], masks)
    torch.testing.assert_close(tgt2["boxes"], masks_to_boxes(masks))


def test_flip_probability():
    img = torch.rand(3, 4, 6)
    tgt = _target(_rect_masks(4, 6, [(0, 0, 2, 2)]))
    out, same = RandomHorizontalFlip(p=0.0)(img, tgt)
    assert out is img and same is tgt
    torch.manual_seed(0)
    flips = sum(not torch.equal(RandomHorizontalFlip(0.5)(img, tgt)[0], img) for _ in range(200))
    assert 60 < flips < 140


# ---- composition --------------------------------------------------------------------------


def test_build_transforms_train_and_eval():
    ev = build_transforms(False, short_side=64, max_size=100)
    tr = build_transforms(True, short_side=64, max_size=100, multiscale=(48, 64))
    assert isinstance(ev, Compose) and isinstance(tr, Compose)
    assert not any(isinstance(t, RandomHorizontalFlip) for t in ev.transforms)
    assert any(isinstance(t, RandomHorizontalFlip) for t in tr.transforms)
    assert "Resize" in repr(tr)

    arr = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    masks = _rect_masks(40, 50, [(10, 5, 30, 25)])
    img, tgt = ev(Image.fromarray(arr), _target(masks))
    assert img.shape == (3, 64, 80) and tgt["size"] == (64, 80)
    # normalised: denormalize gives back the resized [0, 1] image
    plain, _ = Compose([ToTensor(), Resize(64, 100)])(Image.fromarray(arr), _target(masks))
    torch.testing.assert_close(denormalize(img), plain.clamp(0, 1))
    torch.manual_seed(0)
    sizes = {tr(Image.fromarray(arr), _target(masks))[0].shape[-2] for _ in range(20)}
    assert sizes == {48, 64}


# ---- padding ------------------------------------------------------------------------------


def test_pad_to_multiple_and_size():
    x = torch.rand(3, 33, 64)
    p = pad_to_multiple(x, 32)
    assert p.shape == (3, 64, 64)
    assert torch.equal(p[:, :33, :64], x)
    assert torch.all(p[:, 33:] == 0)
    assert pad_to_multiple(x[:, :32]).shape == (3, 32, 64)  # already a multiple: unchanged
    assert pad_to_multiple(torch.rand(1, 10, 10), 8).shape == (1, 16, 16)
    m = torch.ones(2, 5, 7, dtype=torch.bool)
    pm = pad_to_size(m, (8, 9))
    assert pm.dtype == torch.bool and pm.shape == (2, 8, 9)
    assert pm.sum() == m.sum() and pm[:, :5, :7].all()
    with pytest.raises(ValueError):
        pad_to_size(m, (4, 9))

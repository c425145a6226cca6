"""Tests for minisolo.predict.prepare_image / predict_image: every form of image a user holds
(path, PIL image, uint8 array, grayscale array, dataset tensor) gives the model the same input,
and anything else is refused with a message naming what was given."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.testing import assert_close

import minisolo
from minisolo.data.coco import DataError
from minisolo.engine import make_transforms
from minisolo.grid_cells import GridCells
from minisolo.predict import predict_image, prepare_image

H, W = 60, 80  # not the model's size: prepare_image must resize (short side 96)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = minisolo.preset("tiny", num_classes=3, image_short_side=96, image_max_size=96)
    model = minisolo.SOLO(config).eval()
    # untrained, the focal-loss prior (p = 0.01) keeps every cell under the score threshold;
    # a zero bias (p = 0.5) lets cells fire, so there are scores to compare
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "classifier"):
                module.classifier.bias.zero_()
    return model


@pytest.fixture(scope="module")
def picture(tmp_path_factory) -> tuple[Path, Image.Image]:
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("images") / "picture.png"
    Image.fromarray(array).save(path)
    return path, Image.open(path).convert("RGB")


def _dataset_tensor(config, image: Image.Image) -> torch.Tensor:
    # what CocoInstances returns: transforms(image, target) on the RGB PIL image
    tensor, _ = make_transforms(config, train=False)(image, {})
    return tensor


def test_all_forms_give_the_same_input_and_scores(model, picture):
    path, pil = picture
    config = model.config
    expected = _dataset_tensor(config, pil)
    assert expected.shape[0] == 3 and tuple(expected.shape[-2:]) != (H, W)  # it was resized
    forms = {
        "str": str(path),
        "path": path,
        "pil": pil,
        "uint8": np.asarray(pil),
        "tensor": expected.clone(),
    }
    prepared = {name: prepare_image(image, config) for name, image in forms.items()}
    for name, (tensor, size) in prepared.items():
        assert tensor.dtype == torch.float32, name
        assert_close(tensor, expected, msg=f"prepare_image({name})")
        # the dataset tensor has no other size than its own; every other form knows (H, W)
        assert size == (tuple(expected.shape[-2:]) if name == "tensor" else (H, W)), name

    results = {name: predict_image(model, image) for name, image in forms.items()}
    reference = results["path"]
    assert reference["scores"].numel() > 0  # an untrained model still proposes something
    assert reference["masks"].shape[-2:] == (H, W)  # masks at the original image size
    for name, result in results.items():
        assert_close(result["scores"], reference["scores"], msg=f"predict_image({name})")
        assert torch.equal(result["labels"], reference["labels"]), name
    # the threshold keeps only the instances that pass it
    cut = float(reference["scores"].median())
    kept = predict_image(model, path, score_threshold=cut)
    assert bool((kept["scores"] >= cut).all())
    assert kept["scores"].numel() == int((reference["scores"] >= cut).sum())
    assert kept["masks"].shape[0] == kept["labels"].shape[0] == kept["scores"].shape[0]


def test_grayscale_array_gives_three_channels(model, picture):
    _, pil = picture
    gray = np.asarray(pil.convert("L"))
    assert gray.shape == (H, W)
    tensor, size = prepare_image(gray, model.config)
    assert tensor.shape[0] == 3 and size == (H, W)
    expected = _dataset_tensor(model.config, pil.convert("L").convert("RGB"))
    assert_close(tensor, expected)
    assert predict_image(model, gray)["masks"].shape[-2:] == (H, W)


def test_grid_cells_accepts_a_path(model, picture):
    path, pil = picture
    from_path = GridCells(model, path)
    from_tensor = GridCells(model, _dataset_tensor(model.config, pil))
    assert from_path.image_size == from_tensor.image_size
    assert_close(from_path.image, from_tensor.image)
    assert_close(from_path.cell_scores(0, 1, 1), from_tensor.cell_scores(0, 1, 1))


@pytest.mark.parametrize(
    ("image", "error", "named"),
    [
        (np.zeros((H, W, 3), dtype=np.float64), ValueError, "float64"),
        (np.zeros((H, W, 4), dtype=np.uint8), ValueError, r"\(60, 80, 4\)"),
        ([[0, 1], [2, 3]], TypeError, "list"),
        (torch.zeros(1, 3, H, W), ValueError, r"\(1, 3, 60, 80\)"),
        (torch.full((3, H, W), 200.0), ValueError, "normalised"),
        (torch.rand(3, H, W) * 255, ValueError, "normalised"),
    ],
    ids=[
        "float64-array",
        "rgba-array",
        "list",
        "batched-tensor",
        "unnormalised-tensor",
        "0-255-tensor",
    ],
)
def test_bad_images_name_what_was_given(model, image, error, named):
    with pytest.raises(error, match=named) as info:
        prepare_image(image, model.config)
    message = str(info.value)
    assert "got" in message
    if named != "normalised":
        assert "Accepted" in message and "uint8" in message


def test_missing_file_names_the_path(model, tmp_path):
    missing = tmp_path / "no_such_image.png"
    with pytest.raises(DataError, match="no_such_image.png"):
        prepare_image(missing, model.config)
    with pytest.raises(DataError, match="no_such_image.png"):
        GridCells(model, str(missing))

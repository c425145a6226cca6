import dataclasses
import math

import pytest
import torch

from minisolo import SOLO, DecoupledSOLO, dice_loss, mask_iou, preset
from minisolo.solo import prior_bias


@pytest.fixture(scope="module")
def config():
    return preset("tiny", num_classes=3)


def test_paper_preset_is_the_official_r50_setting():
    cfg = preset("paper")
    assert cfg.backbone_depth == 50 and cfg.fpn_channels == cfg.head_channels == 256
    assert cfg.grids == (40, 36, 24, 16, 12)
    assert cfg.strides == (8, 8, 16, 32, 32)
    assert cfg.scale_ranges == ((1, 96), (48, 192), (96, 384), (192, 768), (384, 2048))
    assert cfg.stacked_convs == 7 and cfg.sigma == 0.2 and cfg.mask_loss_weight == 3.0
    assert (cfg.lr, cfg.momentum, cfg.weight_decay, cfg.grad_clip) == (0.01, 0.9, 1e-4, 35.0)
    assert (cfg.score_threshold, cfg.mask_threshold, cfg.nms_pre) == (0.1, 0.5, 500)
    assert (cfg.update_threshold, cfg.max_per_image, cfg.nms_sigma) == (0.05, 100, 2.0)


def test_preset_overrides_and_errors():
    assert preset("tiny", num_classes=3).num_classes == 3
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge")
    with pytest.raises(ValueError, match="unknown"):
        preset("tiny", not_a_field=1)


def test_solo_output_shapes_and_channel_layout(config):
    model = SOLO(config)
    outputs = model(torch.zeros(2, 3, 256, 192))
    strides = (8, 8, 16, 32, 32)
    for level, (grid, stride) in enumerate(zip(config.grids, strides, strict=True)):
        assert outputs["category"][level].shape == (2, 3, grid, grid)
        # S^2 mask channels at stride / 2
        assert outputs["mask"][level].shape == (
            2,
            grid * grid,
            256 * 2 // stride,
            192 * 2 // stride,
        )
    rows, cols = torch.tensor([1, 3]), torch.tensor([2, 0])
    probs = model.head.cell_mask_probs(outputs, 0, 1, rows, cols)
    grid = config.grids[0]
    torch.testing.assert_close(probs[0], torch.sigmoid(outputs["mask"][0][1, 1 * grid + 2]))
    torch.testing.assert_close(probs[1], torch.sigmoid(outputs["mask"][0][1, 3 * grid + 0]))


def test_category_bias_starts_at_prior_probability(config):
    model = SOLO(config)
    assert model.head.category_branch.classifier.bias[0].item() == pytest.approx(prior_bias(0.01))
    assert torch.sigmoid(torch.tensor(prior_bias(0.01))).item() == pytest.approx(0.01)


def test_decoupled_mask_is_product_of_x_and_y(config):
    model = DecoupledSOLO(config)
    assert model.config.model == "decoupled_solo"
    outputs = model(torch.randn(1, 3, 128, 128))
    for level, grid in enumerate(config.grids):
        assert outputs["mask_x"][level].shape[1] == grid
        assert outputs["mask_y"][level].shape[1] == grid
    i, j = torch.tensor([4]), torch.tensor([7])
    probs = model.head.cell_mask_probs(outputs, 1, 0, i, j)[0]
    expected = torch.sigmoid(outputs["mask_y"][1][0, 4]) * torch.sigmoid(outputs["mask_x"][1][0, 7])
    torch.testing.assert_close(probs, expected)


def test_inputs_must_be_padded_to_32(config):
    with pytest.raises(ValueError, match="multiples of 32"):
        SOLO(config)(torch.zeros(1, 3, 250, 256))


def _one_object_target(size=128):
    masks = torch.zeros(1, size, size, dtype=torch.bool)
    masks[0, 30:70, 40:90] = True
    return {"masks": masks, "labels": torch.tensor([2])}


@pytest.mark.parametrize("model_class", [SOLO, DecoupledSOLO])
def test_loss_is_focal_plus_three_dice(config, model_class):
    torch.manual_seed(0)
    model = model_class(config)
    outputs = model(torch.randn(2, 3, 128, 128))
    targets = [
        _one_object_target(),
        {"masks": torch.zeros(0, 128, 128).bool(), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    losses = model.loss(outputs, targets)
    level_targets = model.targets(targets)
    dice = []
    for level, lt in enumerate(level_targets):
        grid = config.grids[level]
        for index, mask in zip(lt.positive_index.tolist(), lt.masks, strict=True):
            b, k = divmod(index, grid * grid)
            probs = model.head.cell_mask_probs(
                outputs, level, b, torch.tensor([k // grid]), torch.tensor([k % grid])
            )
            dice.append(dice_loss(probs, mask[None]))
    assert losses["num_positives"].item() == len(dice) > 0
    torch.testing.assert_close(losses["loss_mask"], torch.cat(dice).mean())
    torch.testing.assert_close(losses["loss"], losses["loss_cate"] + 3 * losses["loss_mask"])
    losses["loss"].backward()


def test_positive_channels_only_give_the_same_loss_and_gradients(config):
    """full_masks=False computes only the positives' channels (1x1 conv before the x2
    upsampling); loss and every gradient must equal the all-channels path."""
    torch.manual_seed(0)
    model = SOLO(config)
    images = torch.randn(3, 3, 128, 128)
    targets = [
        _one_object_target(),
        {"masks": torch.zeros(0, 128, 128).bool(), "labels": torch.zeros(0, dtype=torch.long)},
        _one_object_target(),
    ]
    results = []
    for full_masks in (True, False):
        model.zero_grad()
        outputs = model(images, full_masks=full_masks)
        assert ("mask" in outputs) == full_masks and ("mask_features" in outputs) != full_masks
        losses = model.loss(outputs, targets)
        losses["loss"].backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((losses, grads))
    (full, full_grads), (lazy, lazy_grads) = results
    assert full["num_positives"].item() > 0
    torch.testing.assert_close(lazy["loss"], full["loss"])
    assert full_grads.keys() == lazy_grads.keys()
    for name in full_grads:
        torch.testing.assert_close(lazy_grads[name], full_grads[name], rtol=1e-4, atol=1e-6)
    # under autocast (the engine's AMP: forward inside, loss outside) the bf16 features work
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp_outputs = model(images, full_masks=False)
    assert amp_outputs["mask_features"][0].dtype == torch.bfloat16
    amp_loss = model.loss(amp_outputs, targets)["loss"]
    torch.testing.assert_close(amp_loss, full["loss"], rtol=0.05, atol=0.05)
    # unsorted cells of several images, read back one by one from the full output
    full_outputs = model(images)
    lazy_outputs = model(images, full_masks=False)
    image, rows, cols = (
        torch.tensor([2, 0, 2, 1]),
        torch.tensor([3, 0, 1, 5]),
        torch.tensor([4, 2, 0, 5]),
    )
    torch.testing.assert_close(
        model.head.cell_mask_logits(lazy_outputs, 1, image, rows, cols),
        full_outputs["mask"][1][image, rows * config.grids[1] + cols],
        rtol=1e-4,
        atol=1e-5,
    )


def test_predict_follows_the_inference_recipe(config):
    """One strong cell whose mask is a known square: predict returns that square."""
    model = SOLO(config).eval()
    images = torch.zeros(1, 3, 128, 128)
    outputs = model(images)
    outputs = {k: [t.detach().clone() for t in v] for k, v in outputs.items()}
    for level in range(5):
        outputs["category"][level].fill_(-10.0)
        outputs["mask"][level].fill_(-10.0)
    grid = config.grids[1]
    i, j = 5, 6
    outputs["category"][1][0, 2, i, j] = 3.0  # class 2, score sigmoid(3) = 0.95
    outputs["category"][1][0, 0, 1, 1] = 3.0  # a second cell whose mask is empty: dropped
    outputs["mask"][1][0, i * grid + j, 8:24, 4:20] = 10.0  # at stride 4 -> pixels 32..96, 16..80
    result = model.post_process(outputs, 0, (128, 128), (64, 64))
    assert result["labels"].tolist() == [2]
    assert result["masks"].shape == (1, 64, 64)
    expected = torch.zeros(64, 64, dtype=torch.bool)
    expected[16:48, 8:40] = True
    assert mask_iou(result["masks"], expected[None]).item() > 0.9
    # maskness rescoring: the mean probability inside the mask is sigmoid(10) (almost 1)
    assert result["scores"].item() == pytest.approx(torch.sigmoid(torch.tensor(3.0)).item(), 1e-3)


def test_predict_computes_only_the_candidates_channels_and_matches_the_official_path(config):
    """predict runs the head with full_masks=False (only candidate cells' channels, 1x1 conv
    before the upsampling); the official path computes all S^2 channels. Same instances."""
    torch.manual_seed(0)
    model = SOLO(config).eval()
    assert model.predict_forward_kwargs == {"full_masks": False}
    for layer in model.head.mask_outputs:  # masks with some structure, not all ~0.5
        torch.nn.init.normal_(layer.weight, std=0.5)
    model.config = dataclasses.replace(config, score_threshold=0.0, update_threshold=0.0)
    images = torch.randn(2, 3, 128, 96)
    lazy = model.predict(images)
    model.predict_forward_kwargs = {"full_masks": True}  # the official, all-channels path
    full = model.predict(images)
    for a, b in zip(lazy, full, strict=True):
        assert len(a["scores"]) > 10
        assert torch.equal(a["labels"], b["labels"])
        torch.testing.assert_close(a["scores"], b["scores"], rtol=1e-4, atol=1e-5)
        agree = (a["masks"] == b["masks"]).float().mean().item()
        assert agree > 0.999  # only pixels within rounding of 0.5 may differ


def test_predict_crops_padding_and_returns_original_size(config):
    model = SOLO(config)
    results = model.predict(
        torch.randn(2, 3, 128, 160), [(100, 150), (128, 160)], [(50, 75), (32, 40)]
    )
    assert results[0]["masks"].shape[-2:] == (50, 75)
    assert results[1]["masks"].shape[-2:] == (32, 40)
    assert model.training  # predict restores the mode


def _three_objects(size=128):
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    masks = torch.zeros(3, size, size, dtype=torch.bool)
    masks[0] = (yy - 35) ** 2 + (xx - 40) ** 2 < 20**2
    masks[1, 70:115, 60:120] = True
    masks[2] = (yy > 15) & (yy < 60) & (xx > 80) & (xx < 120) & (xx - 80 > yy - 15)
    image = torch.full((3, size, size), -1.0)
    colours = torch.tensor([[1.5, -0.5, -0.5], [-0.5, 1.5, -0.5], [-0.5, -0.5, 1.5]])
    for k in range(3):
        image[:, masks[k]] = colours[k][:, None]
    return image[None], masks


@pytest.mark.slow
@pytest.mark.parametrize("model_class", [SOLO, DecoupledSOLO])
def test_overfit_one_image_with_three_objects(model_class):
    torch.manual_seed(0)
    image, masks = _three_objects()
    config = preset(
        "tiny", num_classes=3, scale_ranges=((1, 32), (16, 64), (32, 128), (64, 256), (128, 512))
    )
    model = model_class(config)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    target = [{"masks": masks, "labels": torch.tensor([0, 1, 2])}]
    for _ in range(250):
        losses = model.loss(model(image), target)
        optimiser.zero_grad()
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 35.0)
        optimiser.step()
    model.eval()
    result = model.predict(image)[0]
    for k in range(3):
        same_class = result["labels"] == k
        assert same_class.any(), f"no prediction of class {k}"
        best = mask_iou(result["masks"][same_class], masks[k : k + 1]).max().item()
        assert best >= 0.9, f"object {k}: best mask IoU {best:.3f}"
    assert not math.isnan(losses["loss"].item())

"""Tests for minisolo.solov2: the dynamic convolution by hand, the branches' layout and shapes,
the positives-only loss against the dense S² computation, the inference recipe, overfitting
one image, and a checkpoint round trip through the training engine."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from minisolo import (
    SOLO,
    SOLOConfig,
    SOLOv2,
    SOLOv2Config,
    build_model,
    config_from_dict,
    dice_loss,
    mask_iou,
    preset,
)
from minisolo.grid_head import prior_bias
from minisolo.losses import solo_category_loss
from minisolo.nms import points_nms
from minisolo.solov2 import cell_kernels, dynamic_conv

NUM_CLASSES = 3


@pytest.fixture(scope="module")
def config():
    return preset("tiny", model="solov2", num_classes=NUM_CLASSES)


def _box_target(boxes, labels, size=128):
    masks = torch.zeros(len(boxes), size, size, dtype=torch.bool)
    for k, (y1, y2, x1, x2) in enumerate(boxes):
        masks[k, y1:y2, x1:x2] = True
    return {"masks": masks, "labels": torch.tensor(labels, dtype=torch.long)}


def _empty_target(size=128):
    return {"masks": torch.zeros(0, size, size).bool(), "labels": torch.zeros(0, dtype=torch.long)}


# ----------------------------------------------------------------------------- the idea
def test_a_one_hot_kernel_picks_one_mask_feature_channel():
    features = torch.randn(5, 6, 7)  # E = 5
    for e in range(5):
        kernel = torch.zeros(1, 5)
        kernel[0, e] = 1.0
        assert_close(dynamic_conv(features, kernel)[0], features[e])


def test_a_two_hot_kernel_sums_two_channels_and_weights_scale_them():
    features = torch.randn(4, 3, 5)
    kernels = torch.tensor([[0.0, 1.0, 0.0, 1.0], [2.0, 0.0, -0.5, 0.0]])
    logits = dynamic_conv(features, kernels)
    assert logits.shape == (2, 3, 5)
    assert_close(logits[0], features[1] + features[3])
    assert_close(logits[1], 2 * features[0] - 0.5 * features[2])
    # a pixel by hand: the dot product of the kernel with the E features at that pixel
    y, x = 2, 4
    assert logits[1, y, x].item() == pytest.approx(
        sum(kernels[1, e].item() * features[e, y, x].item() for e in range(4)), abs=1e-6
    )


def test_dynamic_conv_is_the_official_conv2d_and_allows_no_cells():
    features, kernels = torch.randn(8, 10, 12), torch.randn(6, 8)
    official = F.conv2d(features[None], kernels.view(6, 8, 1, 1))[0]
    assert_close(dynamic_conv(features, kernels), official)
    assert dynamic_conv(features, kernels[:0]).shape == (0, 10, 12)
    with pytest.raises(ValueError, match="same E"):
        dynamic_conv(features, torch.randn(2, 7))
    with pytest.raises(ValueError, match=r"\[E, h, w\]"):
        dynamic_conv(features[None], kernels)


# ----------------------------------------------------------------------------- the config
def test_paper_preset_is_the_official_r50_1x():
    cfg = preset("paper", model="solov2")
    assert isinstance(cfg, SOLOv2Config) and cfg.model == "solov2"
    official = dict(
        backbone_depth=50, fpn_channels=256, head_channels=512, stacked_convs=4, num_groups=32,
        kernel_channels=256, mask_feature_channels=128, grids=(40, 36, 24, 16, 12),
        strides=(8, 8, 16, 32, 32),
        scale_ranges=((1, 96), (48, 192), (96, 384), (192, 768), (384, 2048)),
        sigma=0.2, mask_loss_weight=3.0, focal_gamma=2.0, focal_alpha=0.25, lr=0.01,
        momentum=0.9, weight_decay=1e-4, grad_clip=35.0, warmup_iters=500, warmup_ratio=0.01,
        epochs=12, lr_steps=(9, 11), batch_size=16, score_threshold=0.1, mask_threshold=0.5,
        nms_pre=500, nms="matrix", nms_kernel="gaussian", nms_sigma=2.0, update_threshold=0.05,
        max_per_image=100,
    )  # fmt: skip
    assert {k: getattr(cfg, k) for k in official} == official


def test_tiny_preset_shares_the_tiny_solo_backbone_grid_and_optimiser():
    v2, solo = preset("tiny", model="solov2"), preset("tiny")
    shared = [
        "backbone_depth", "backbone_width", "frozen_stages", "norm_eval", "fpn_channels",
        "num_groups", "grids", "strides", "scale_ranges", "sigma", "image_short_side",
        "image_max_size", "batch_size", "optimizer", "lr", "momentum", "weight_decay",
        "grad_clip", "warmup_iters", "epochs", "lr_steps", "lr_schedule", "score_threshold",
        "nms_pre", "update_threshold", "max_per_image",
    ]  # fmt: skip
    differ = [k for k in shared if getattr(v2, k) != getattr(solo, k)]
    assert not differ, differ
    assert v2.kernel_channels == v2.fpn_channels == 64  # E = the FPN width, as the paper's
    assert v2.warmup_ratio == preset("paper", model="solov2").warmup_ratio == 0.01


def test_config_round_trips_through_to_dict_json_and_build_model(config):
    assert config_from_dict(config.to_dict()) == config
    via_json = config_from_dict(json.loads(json.dumps(config.to_dict())))
    assert via_json == config and isinstance(via_json.scale_ranges[0], tuple)
    assert type(build_model(config)) is SOLOv2
    with pytest.raises(TypeError, match="SOLOv2Config"):
        SOLOv2(preset("tiny", num_classes=2))  # a SOLOConfig
    with pytest.raises(ValueError, match="solov2"):
        SOLOv2Config(model="solo")
    with pytest.raises(ValueError, match="unknown"):
        preset("tiny", model="solov2", stacked_convz=3)
    # the SOLO and YOLACT configs know nothing of SOLOv2's fields
    assert "kernel_channels" not in SOLOConfig().to_dict()


# ----------------------------------------------------------------------------- the network
def test_forward_shapes_and_mask_feature_strides_for_a_non_square_input(config):
    torch.manual_seed(0)
    model = SOLOv2(config)
    level_outputs = []
    hooks = [
        branch.register_forward_hook(lambda m, i, o: level_outputs.append(o.shape))
        for branch in model.mask_feature_branch.levels
    ]
    outputs = model(torch.randn(2, 3, 160, 224))
    for h in hooks:
        h.remove()
    assert set(outputs) == {"category", "kernel", "mask_features"}  # no S² masks in forward
    e = config.kernel_channels
    for level, s in enumerate(config.grids):
        assert outputs["category"][level].shape == (2, NUM_CLASSES, s, s)
        assert outputs["kernel"][level].shape == (2, e, s, s)
    assert outputs["mask_features"].shape == (2, e, 160 // 4, 224 // 4)
    # P2..P5 (strides 4..32) each reach stride 4 before they are summed
    assert level_outputs == [(2, config.mask_feature_channels, 40, 56)] * 4
    # the mask of a cell is the sigmoid of its kernel applied to its image's mask features
    rows, cols = torch.tensor([3, 0]), torch.tensor([5, 13])
    probs = model.cell_mask_probs(outputs, 1, torch.tensor([1, 0]), rows, cols)
    for p, (b, i, j) in enumerate([(1, 3, 5), (0, 0, 13)]):
        kernel = outputs["kernel"][1][b, :, i, j]
        expected = torch.sigmoid(torch.einsum("e,ehw->hw", kernel, outputs["mask_features"][b]))
        assert_close(probs[p], expected)
    kernels = cell_kernels(outputs["kernel"][1], torch.tensor([1, 0]), rows, cols)
    assert_close(kernels, torch.stack([outputs["kernel"][1][1, :, 3, 5], kernel]))


def test_branches_follow_the_official_layout(config):
    torch.manual_seed(0)
    model = SOLOv2(config)
    fpn, e, mf = config.fpn_channels, config.kernel_channels, config.mask_feature_channels
    kernel_branch = model.head.kernel_branch
    # kernel branch: features + 2 coordinates, a tower, a 3x3 conv to E, normal(0.01) init
    assert kernel_branch.tower[0][0].in_channels == fpn + 2
    assert len(kernel_branch.tower) == config.stacked_convs
    assert kernel_branch.kernel_conv.kernel_size == (3, 3)
    assert kernel_branch.kernel_conv.out_channels == e
    assert kernel_branch.kernel_conv.weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert kernel_branch.kernel_conv.bias.abs().max().item() == 0
    # category branch: no coordinates, a 3x3 conv to C with the 0.01 prior bias
    category_branch = model.head.category_branch
    assert category_branch.tower[0][0].in_channels == fpn
    assert category_branch.classifier.out_channels == NUM_CLASSES
    assert category_branch.classifier.bias[0].item() == pytest.approx(prior_bias(0.01))
    # mask feature branch: 1, 1, 2, 3 convs on P2..P5; coordinates only at P5's input
    levels = model.mask_feature_branch.levels
    convs = [[m for m in level.modules() if isinstance(m, torch.nn.Conv2d)] for level in levels]
    assert [len(c) for c in convs] == [1, 1, 2, 3]
    assert [c[0].in_channels for c in convs] == [fpn, fpn, fpn, fpn + 2]
    assert all(conv.out_channels == mf for c in convs for conv in c)
    fuse = model.mask_feature_branch.fuse[0]
    assert (fuse.kernel_size, fuse.in_channels, fuse.out_channels) == ((1, 1), mf, e)
    assert isinstance(model.mask_feature_branch.fuse[1], torch.nn.GroupNorm)


def test_kernel_branch_resizes_the_features_with_their_coordinates(config):
    """As the official head: coordinates at the feature resolution, then one resize to S x S;
    the category branch sees the same resized features without them."""
    torch.manual_seed(0)
    model = SOLOv2(config).eval()
    x = torch.randn(1, config.fpn_channels, 12, 20)
    branch = model.head.kernel_branch
    xs, ys = torch.linspace(-1, 1, 20), torch.linspace(-1, 1, 12)
    coords = torch.stack([xs.expand(12, 20), ys[:, None].expand(12, 20)])[None]
    resized = F.interpolate(torch.cat([x, coords], 1), size=(7, 7), mode="bilinear")
    with torch.no_grad():
        assert_close(branch(x, 7), branch.kernel_conv(branch.tower(resized)))
        category = model.head.category_branch
        expected = category.classifier(category.tower(resized[:, :-2]))
        assert_close(category(x, 7), expected)


def test_inputs_must_be_padded_to_32(config):
    model = SOLOv2(config)
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.zeros(1, 3, 100, 128))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.zeros(3, 128, 128))


# ----------------------------------------------------------------------------- the loss
def _dense_loss(model, outputs, targets):
    """The loss computed the expensive way: the masks of all S² cells of every level and
    image, then the positive ones picked out."""
    cfg = model.config
    level_targets = model.targets(targets)
    features = outputs["mask_features"].float()
    dice = []
    for level, lt in enumerate(level_targets):
        kernels = outputs["kernel"][level].float().flatten(2)  # [B, E, S²]
        dense = torch.sigmoid(torch.einsum("bek,behw->bkhw", kernels, features))  # all S²
        probs = dense.flatten(0, 1)[lt.positive_index]  # index b * S² + k
        dice.append(dice_loss(probs, lt.masks))
    num_positives = sum(lt.num_positives for lt in level_targets)
    loss_cate = solo_category_loss(
        outputs["category"], [lt.category for lt in level_targets], cfg.num_classes, num_positives
    )
    return loss_cate + 3 * torch.cat(dice).mean(), num_positives


def test_positive_cells_only_loss_and_gradients_equal_the_dense_computation(config):
    torch.manual_seed(0)
    model = SOLOv2(config)
    images = torch.randn(3, 3, 128, 128)
    targets = [
        _box_target([(30, 70, 40, 90)], [2]),
        _empty_target(),
        _box_target([(10, 40, 10, 50), (60, 120, 50, 125)], [0, 1]),
    ]
    results = []
    for dense in (False, True):
        model.zero_grad()
        outputs = model(images)
        if dense:
            loss, num_positives = _dense_loss(model, outputs, targets)
        else:
            losses = model.loss(outputs, targets)
            loss, num_positives = losses["loss"], int(losses["num_positives"])
            assert_close(loss, losses["loss_cate"] + 3 * losses["loss_mask"])
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((loss, num_positives, grads))
    (lazy, lazy_n, lazy_grads), (full, full_n, full_grads) = results
    assert lazy_n == full_n > 6  # three objects, about three cells each (some on two levels)
    assert_close(lazy, full)
    assert lazy_grads.keys() == full_grads.keys()
    assert any(n.startswith("mask_feature_branch") for n in lazy_grads)
    assert any(n.startswith("head.kernel_branch") for n in lazy_grads)
    for name in full_grads:
        assert_close(lazy_grads[name], full_grads[name], rtol=1e-4, atol=1e-6)
    # under autocast (the engine's AMP: forward inside, loss outside) the bf16 outputs work
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp_outputs = model(images)
    assert amp_outputs["mask_features"].dtype == torch.bfloat16
    assert_close(model.loss(amp_outputs, targets)["loss"], full, rtol=0.05, atol=0.05)


def test_the_mask_targets_are_at_stride_4_on_every_level(config):
    model = SOLOv2(config)
    targets = [_box_target([(10, 40, 10, 50), (20, 120, 20, 125)], [0, 1])]
    level_targets = model.targets(targets)
    assert sum(lt.num_positives for lt in level_targets) > 0
    assert all(tuple(lt.masks.shape[-2:]) == (32, 32) for lt in level_targets)


def test_without_positive_cells_the_mask_loss_is_zero_and_training_goes_on(config):
    torch.manual_seed(0)
    model = SOLOv2(config)
    losses = model.loss(model(torch.randn(2, 3, 64, 64)), [_empty_target(64)] * 2)
    assert losses["num_positives"].item() == 0 and losses["loss_mask"].item() == 0
    losses["loss"].backward()
    assert model.head.category_branch.classifier.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- inference
def _controlled_outputs(model, size=128):
    """Real outputs with every class score at -10 and every kernel at 0 (mask p = 0.5
    everywhere, never > 0.5): the test then switches on the cells it wants."""
    with torch.no_grad():
        outputs = model(torch.zeros(1, 3, size, size))
    outputs = {
        "category": [torch.full_like(t, -10.0) for t in outputs["category"]],
        "kernel": [torch.zeros_like(t) for t in outputs["kernel"]],
        "mask_features": torch.zeros_like(outputs["mask_features"]),
    }
    return outputs


def test_predict_follows_the_inference_recipe(config):
    """Three firing cells: one whose kernel picks a square mask, one whose kernel picks a
    30-pixel mask on level 3 (stride 32: dropped, 30 <= 32) and one with a zero kernel
    (p = 0.5 nowhere above the threshold: an empty mask, dropped)."""
    model = SOLOv2(config).eval()
    outputs = _controlled_outputs(model)
    features = outputs["mask_features"][0]  # [E, 32, 32]
    features[0] = -1.0
    features[0, 8:24, 4:20] = 1.0  # at stride 4: pixels 32..96 x 16..80
    features[1] = -1.0
    features[1, 2:7, 20:26] = 1.0  # 5 x 6 = 30 stride-4 pixels
    outputs["category"][1][0, 2, 5, 6] = 3.0  # class 2, score sigmoid(3)
    outputs["kernel"][1][0, 0, 5, 6] = 10.0  # one-hot: mask logits +-10 from channel 0
    outputs["category"][3][0, 1, 2, 2] = 3.0
    outputs["kernel"][3][0, 1, 2, 2] = 10.0  # the small mask, on a stride-32 level
    outputs["category"][0][0, 0, 1, 1] = 3.0  # zero kernel
    found = model.candidates(outputs, 0)
    assert found["levels"].tolist() == [1] and found["cells"].tolist() == [5 * 14 + 6]
    result = model.post_process(outputs, 0, (128, 128), (64, 64))
    assert set(result) == {"masks", "labels", "scores"}
    assert result["labels"].tolist() == [2]
    assert result["masks"].shape == (1, 64, 64) and result["masks"].dtype == torch.bool
    expected = torch.zeros(64, 64, dtype=torch.bool)
    expected[16:48, 8:40] = True
    assert mask_iou(result["masks"], expected[None]).item() > 0.9
    # maskness: the mean probability inside the mask is sigmoid(10)
    maskness = torch.sigmoid(torch.tensor(10.0)).item()
    assert result["scores"].item() == pytest.approx(maskness / (1 + math.exp(-3)), rel=1e-4)
    # the same 30-pixel mask on level 0 (stride 8) is kept: 30 > 8
    outputs["category"][0][0, 1, 3, 3] = 3.0
    outputs["kernel"][0][0, 1, 3, 3] = 10.0
    assert sorted(model.candidates(outputs, 0)["levels"].tolist()) == [0, 1]


def test_the_dynamic_convolution_runs_only_for_cells_above_the_threshold(config, monkeypatch):
    torch.manual_seed(0)
    model = SOLOv2(config).eval()
    with torch.no_grad():
        model.head.category_branch.classifier.bias.fill_(-1.0)  # some cells pass 0.1
        outputs = model(torch.randn(1, 3, 128, 128))
    asked = []
    original = model.cell_mask_logits

    def counting(outputs, level, image, rows, cols):
        asked.append((level, rows.numel()))
        return original(outputs, level, image, rows, cols)

    monkeypatch.setattr(model, "cell_mask_logits", counting)
    model.candidates(outputs, 0)
    expected = []
    for level, logits in enumerate(outputs["category"]):
        n = int((points_nms(torch.sigmoid(logits)) > 0.1).sum())
        if n:
            expected.append((level, n))
    assert asked == expected and 0 < sum(n for _, n in asked) < sum(
        NUM_CLASSES * s * s for s in config.grids
    )


def test_predict_crops_padding_returns_original_sizes_and_restores_the_mode(config):
    torch.manual_seed(0)
    model = SOLOv2(config)
    results = model.predict(
        torch.randn(2, 3, 128, 160), [(100, 150), (128, 160)], [(50, 75), (32, 40)]
    )
    assert results[0]["masks"].shape[-2:] == (50, 75)
    assert results[1]["masks"].shape[-2:] == (32, 40)
    solo = SOLO(preset("tiny", num_classes=NUM_CLASSES)).predict(torch.randn(1, 3, 64, 64))
    assert set(results[0]) == set(solo[0])  # the same per-image dicts as SOLO's
    assert model.training


def test_grid_explorer_shows_solov2_cells(config):
    pytest.importorskip("ipywidgets", reason="the explorer needs ipywidgets")
    import matplotlib

    matplotlib.use("Agg")
    from minisolo.widgets import GridExplorer

    torch.manual_seed(0)
    model = SOLOv2(config).eval()
    target = _box_target([(10, 60, 20, 70)], [1])
    explorer = GridExplorer(model, (torch.randn(3, 128, 128), target))
    mask = explorer.select(1, 4, 5)
    assert_close(torch.from_numpy(mask), torch.from_numpy(explorer.cells.cell_mask(1, 4, 5)))
    assert mask.shape == (32, 32)
    assert "dynamic kernels" in explorer.grid_title.value
    assert "SOLOv2" in explorer._views[("mask", 1)]["suptitle"].get_text()
    assert "kernel_" in explorer._views[("mask", 1)]["titles"][0].get_text()


# ----------------------------------------------------------------------------- training
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
def test_overfit_one_image_with_three_objects(config):
    """150 SGD steps (lr 0.01 after a 50-step linear warm-up, as the official recipe warms up
    from lr x 0.01) on one 128-px image: every object's best mask has IoU >= 0.9."""
    torch.manual_seed(0)
    image, masks = _three_objects()
    model = SOLOv2(config)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    target = [{"masks": masks, "labels": torch.tensor([0, 1, 2])}]
    for step in range(150):
        for group in optimiser.param_groups:
            group["lr"] = 0.01 * min(1.0, (step + 1) / 50)
        losses = model.loss(model(image), target)
        optimiser.zero_grad()
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 35.0)
        optimiser.step()
    assert not math.isnan(losses["loss"].item())
    result = model.predict(image)[0]
    for k in range(3):
        same_class = result["labels"] == k
        assert same_class.any(), f"no prediction of class {k}"
        best = mask_iou(result["masks"][same_class], masks[k : k + 1]).max().item()
        assert best >= 0.9, f"object {k}: best mask IoU {best:.3f}"


@pytest.mark.slow
def test_checkpoint_round_trip_through_the_engine(tmp_path):
    from minisolo.data.shapes import make_shapes_dataset
    from minisolo.engine import evaluate, load_checkpoint, make_transforms, train

    data = make_shapes_dataset(
        tmp_path / "shapes", num_train=4, num_val=2, image_size=96, seed=3, progress=False
    )
    config = preset(
        "tiny",
        model="solov2",
        image_short_side=96,
        image_max_size=96,
        batch_size=2,
        warmup_iters=2,
    )
    result = train(config, data, tmp_path / "run", max_iters=2, progress=False, log_every=1)
    assert result.checkpoint.is_file() and len(result.history) == 2
    assert all(math.isfinite(record["loss"]) for record in result.history)
    assert set(result.metrics["segm"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}

    model = load_checkpoint(result.checkpoint)
    assert type(model) is SOLOv2 and model.config == result.config
    for key, value in result.model.state_dict().items():
        assert_close(model.state_dict()[key], value.cpu())
    metrics = evaluate(model, data, "val", device="cpu", progress=False, verbose=False)
    assert metrics["num_images"] == 2 and 0.0 <= metrics["segm"]["AP"] <= 1.0

    from minisolo.data.coco import CocoInstances

    dataset = CocoInstances(data, "val", transforms=make_transforms(model.config, train=False))
    image, target = dataset[0]
    trained = result.model.to("cpu").eval()
    loaded, again = model.predict(image[None]), trained.predict(image[None])
    assert set(loaded[0]) == {"masks", "labels", "scores"}
    assert loaded[0]["masks"].shape[-2:] == image.shape[-2:]
    assert_close(loaded[0]["scores"], again[0]["scores"])
    assert torch.equal(loaded[0]["masks"], again[0]["masks"])


def test_mask_grad_to_backbone_scales_only_the_mask_paths_gradient_into_shared_features():
    """The mask loss's gradient into the backbone and FPN is proportional to the factor (0: none),
    the category loss's is untouched, and the branches' own gradients do not change."""
    images = torch.randn(2, 3, 128, 128)
    targets = [_box_target([(30, 70, 40, 90)], [2]), _box_target([(10, 40, 10, 50)], [0])]
    grads = {}
    for factor in (1.0, 0.25, 0.0):
        torch.manual_seed(0)
        model = SOLOv2(preset("tiny", model="solov2", num_classes=3, mask_grad_to_backbone=factor))
        for term in ("loss_cate", "loss_mask"):
            model.zero_grad()
            model.loss(model(images), targets)[term].backward()
            grads[factor, term] = {
                n: torch.zeros_like(p) if p.grad is None else p.grad.clone()
                for n, p in model.named_parameters()
            }
    shared = [n for n in grads[1.0, "loss_mask"] if n.startswith(("backbone.", "fpn."))]
    own = [n for n in grads[1.0, "loss_mask"] if n.startswith(("head.kernel", "mask_feature"))]
    assert shared and own
    assert sum(grads[1.0, "loss_mask"][n].abs().sum() for n in shared) > 0
    for n in shared:
        assert_close(grads[0.25, "loss_mask"][n], 0.25 * grads[1.0, "loss_mask"][n])
        assert not grads[0.0, "loss_mask"][n].any()
        assert_close(grads[0.0, "loss_cate"][n], grads[1.0, "loss_cate"][n])
    for n in own:
        assert_close(grads[0.0, "loss_mask"][n], grads[1.0, "loss_mask"][n])
    with pytest.raises(ValueError, match="mask_grad_to_backbone"):
        preset("tiny", model="solov2", mask_grad_to_backbone=1.5)

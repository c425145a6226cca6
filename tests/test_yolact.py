"""YOLACT: anchors, matching, box coding, losses, crop, Fast NMS and a tiny overfit run."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from minisolo import YOLACT, YOLACTConfig, build_model, config_from_dict, preset
from minisolo.nms import box_iou, box_nms, fast_nms, mask_iou
from minisolo.yolact import (
    assemble_masks,
    box_loss,
    crop,
    decode,
    encode,
    mask_bce,
    mask_loss,
    match,
    ohem_class_loss,
    ohem_negatives,
    point_form,
    prior_boxes,
    semantic_loss,
    yolact_feature_sizes,
)


def small_config(**overrides) -> YOLACTConfig:
    """A very narrow YOLACT for fast tests."""
    values = dict(
        num_classes=3,
        backbone_width=8,
        fpn_channels=16,
        proto_channels=16,
        head_channels=16,
        num_prototypes=4,
    )
    values.update(overrides)
    return preset("tiny", model="yolact", **values)


def cxcywh(x1, y1, x2, y2) -> list[float]:
    return [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]


# ----------------------------------------------------------------------------- config
def test_config_presets_and_round_trip():
    paper = preset("paper", model="yolact")
    assert (paper.lr, paper.batch_size, paper.weight_decay, paper.momentum) == (1e-3, 8, 5e-4, 0.9)
    assert (paper.image_size, paper.image_short_side, paper.image_max_size) == (550, 550, 550)
    assert (paper.box_loss_weight, paper.mask_loss_weight, paper.semantic_loss_weight) == (
        1.5,
        6.125,
        1.0,
    )
    tiny = preset("tiny", model="yolact", num_classes=3)
    assert tiny.image_short_side == tiny.image_size == 256
    # the official pixel anchor scales: the strides of P3..P7 (8..128) do not shrink with the
    # image, so the anchor side / stride of P3 stays the official 24 / 8 = 3
    assert tiny.anchor_scales == preset("paper", model="yolact").anchor_scales
    assert tiny.anchor_scales[0] / 8 == 3
    assert (tiny.optimizer, tiny.lr_schedule, tiny.grad_clip) == ("adamw", "cosine", None)
    assert config_from_dict(tiny.to_dict()) == tiny
    assert isinstance(build_model(small_config()), YOLACT)
    with pytest.raises(TypeError):
        YOLACT(preset("tiny"))  # a SOLOConfig


# ----------------------------------------------------------------------------- anchors
def test_prior_count_and_levels_at_550():
    sizes = yolact_feature_sizes(550)
    assert sizes == [(69, 69), (35, 35), (18, 18), (9, 9), (5, 5)]
    priors = prior_boxes(550)
    assert priors.shape == (19248, 4) == (3 * sum(h * w for h, w in sizes), 4)
    start = 0
    for (h, w), scale in zip(sizes, (24, 48, 96, 192, 384), strict=True):
        level = priors[start : start + 3 * h * w].reshape(h, w, 3, 4)
        start += 3 * h * w
        # centres ((i + 0.5) / w, (j + 0.5) / h), row-major then anchor
        torch.testing.assert_close(level[0, 1, 0, :2], torch.tensor([1.5 / w, 0.5 / h]))
        torch.testing.assert_close(level[1, 0, 2, :2], torch.tensor([0.5 / w, 1.5 / h]))
        # square=True (released models): squares of side scale * sqrt(ar) = scale * {1, .707, 1.414}
        sides = torch.tensor([1.0, math.sqrt(0.5), math.sqrt(2.0)]) * scale / 550
        torch.testing.assert_close(level[3, 2, :, 2], sides)
        torch.testing.assert_close(level[3, 2, :, 3], sides)


def test_prior_aspect_ratios_when_not_square():
    priors = prior_boxes(550, square=False).reshape(-1, 3, 4)
    first_level = priors[: 69 * 69]
    w, h = first_level[0, :, 2], first_level[0, :, 3]
    torch.testing.assert_close(w / h, torch.tensor([1.0, 0.5, 2.0]))  # ar = w / h
    torch.testing.assert_close(w * h, torch.full((3,), (24 / 550) ** 2))  # area = scale^2


# ----------------------------------------------------------------------------- matching
def test_match_thresholds_forced_prior_and_crowd():
    gt_a = [0.0, 0.0, 0.2, 0.2]
    gt_b = [0.05, 0.0, 0.25, 0.2]
    gt_small = [0.6, 0.6, 0.64, 0.64]
    gts = torch.tensor([gt_a, gt_b, gt_small])
    labels = torch.tensor([2, 0, 1])
    priors = torch.tensor(
        [
            cxcywh(0.02, 0.0, 0.22, 0.2),  # 0: IoU .82 with a, .74 with b -> a
            cxcywh(0.15, 0.0, 0.35, 0.2),  # 1: IoU .33 with b (b's 2nd best) -> forced to b
            cxcywh(0.0, 0.3, 0.2, 0.5),  # 2: far from everything -> background
            cxcywh(0.52, 0.52, 0.72, 0.72),  # 3: IoU .04 with small, its best -> forced
            cxcywh(0.47, 0.47, 0.77, 0.77),  # 4: IoU .018 with small -> background
            cxcywh(0.0, 0.08, 0.2, 0.28),  # 5: IoU .43 with a -> neutral
            cxcywh(0.85, 0.85, 0.95, 0.95),  # 6: inside the crowd box -> neutral
            cxcywh(0.7, 0.85, 0.9, 0.95),  # 7: half inside the crowd box -> background
        ]
    )
    iou = box_iou(gts, point_form(priors))
    assert iou[0, 0] > iou[1, 0] > 0.5 and iou[1, 1] < 0.4 and 0.4 < iou[0, 5] < 0.5
    assert iou[2].argmax() == 3 and iou[2, 3] < 0.4
    conf, loc, index = match(gts, labels, priors)
    assert conf.tolist() == [3, 1, 0, 2, 0, -1, 0, 0]
    assert index[0] == 0 and index[1] == 1 and index[3] == 2
    torch.testing.assert_close(loc[1], encode(gts[1:2], priors[1:2])[0])
    crowd = torch.tensor([[0.8, 0.8, 1.0, 1.0]])
    conf, _, _ = match(gts, labels, priors, crowd_boxes=crowd, crowd_iou_threshold=0.7)
    assert conf.tolist() == [3, 1, 0, 2, 0, -1, -1, 0]
    # no GT: everything is background
    conf, loc, _ = match(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), priors)
    assert (conf == 0).all() and (loc == 0).all()


def test_encode_decode_round_trip():
    torch.manual_seed(0)
    priors = torch.cat([torch.rand(50, 2), torch.rand(50, 2) * 0.5 + 0.05], dim=1)
    xy = torch.rand(50, 2) * 0.6
    boxes = torch.cat([xy, xy + torch.rand(50, 2) * 0.3 + 0.02], dim=1)
    deltas = encode(boxes, priors)
    torch.testing.assert_close(decode(deltas, priors), boxes)
    assert encode(point_form(priors), priors).abs().max() < 1e-5  # a prior encodes to 0
    # SSD variances: a shift of one prior width is 1 / 0.1 = 10; doubling the size log(2) / 0.2
    prior = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    shifted = point_form(torch.tensor([[0.7, 0.5, 0.4, 0.2]]))
    torch.testing.assert_close(
        encode(shifted, prior), torch.tensor([[10.0, 0.0, 5 * math.log(2), 0]])
    )


# ----------------------------------------------------------------------------- losses
def test_ohem_selects_three_negatives_per_positive_by_background_loss():
    torch.manual_seed(0)
    logits = torch.randn(3, 40, 4)
    conf = torch.zeros(3, 40, dtype=torch.long)
    conf[0, [3, 7]] = torch.tensor([1, 3])
    conf[0, [1, 2, 9]] = -1  # neutral, never selected
    conf[1, 5] = 2  # one positive
    # image 2: no positive -> no negative
    negatives = ohem_negatives(logits, conf, negpos_ratio=3)
    assert negatives.sum(1).tolist() == [6, 3, 0]
    background_loss = -F.log_softmax(logits, -1)[..., 0]
    for b, count in ((0, 6), (1, 3)):
        candidates = (conf[b] == 0).nonzero()[:, 0]
        hardest = candidates[background_loss[b, candidates].argsort(descending=True)[:count]]
        assert set(hardest.tolist()) == set(negatives[b].nonzero()[:, 0].tolist())
    selected = (conf > 0) | negatives
    expected = -F.log_softmax(logits, -1)[selected].gather(1, conf[selected][:, None]).sum() / 3
    torch.testing.assert_close(ohem_class_loss(logits, conf), expected)
    # more negatives asked for than exist: all background priors, clamped
    few = torch.full((1, 6), -1)
    few[0, 0], few[0, 1], few[0, 2] = 1, 0, 0
    assert ohem_negatives(torch.randn(1, 6, 2), few).sum() == 2


def test_box_loss_is_smooth_l1_on_positives_over_num_positives():
    deltas = torch.tensor([[[0.5, -2.0, 0.0, 1.0], [9.0, 9.0, 9.0, 9.0], [0.2, 0.0, 0.0, 3.0]]])
    targets = torch.zeros(1, 3, 4)
    positive = torch.tensor([[True, False, True]])
    expected = (0.125 + 1.5 + 0 + 0.5 + 0.02 + 0 + 0 + 2.5) / 2  # 0.5x^2 if |x|<1 else |x|-0.5
    torch.testing.assert_close(box_loss(deltas, targets, positive), torch.tensor(expected))


def test_crop_zeroes_outside_the_box():
    masks = torch.ones(2, 10, 10)
    boxes = torch.tensor([[0.2, 0.3, 0.6, 0.8], [0.0, 0.0, 0.15, 1.0]])
    exact = crop(masks, boxes, padding=0)
    expected = torch.zeros(2, 10, 10)
    expected[0, 3:8, 2:6] = 1
    expected[1, :, 0:2] = 1  # column 1 starts at 0.1 < 0.15
    torch.testing.assert_close(exact, expected)
    padded = crop(masks, boxes)  # official padding of one pixel, clamped to the mask
    assert padded[0].nonzero()[:, 0].unique().tolist() == list(range(2, 9))
    assert padded[0].nonzero()[:, 1].unique().tolist() == list(range(1, 7))
    assert padded[1].sum() == 10 * 3


def test_assemble_masks_is_sigmoid_of_linear_combination():
    torch.manual_seed(0)
    protos, coefs = torch.rand(4, 6, 5), torch.randn(3, 4)
    expected = torch.stack([torch.sigmoid((protos * c[:, None, None]).sum(0)) for c in coefs])
    torch.testing.assert_close(assemble_masks(protos, coefs), expected)
    batched = assemble_masks(protos[None].repeat(2, 1, 1, 1), coefs[None].repeat(2, 1, 1))
    torch.testing.assert_close(batched[1], expected)


def test_mask_bce_crops_and_divides_by_box_area():
    torch.manual_seed(0)
    logits = torch.randn(1, 8, 8)
    gt = torch.zeros(1, 8, 8)
    gt[0, 3:5, 2:6] = 1
    box = torch.tensor([[0.25, 0.25, 0.75, 0.75]])  # 4 x 4 proto pixels; crop rows/cols 1..6
    p = torch.sigmoid(logits[0, 1:7, 1:7])
    t = gt[0, 1:7, 1:7]
    expected = -(t * p.log() + (1 - t) * (1 - p).log()).sum() / 16
    torch.testing.assert_close(mask_bce(logits, gt, box), expected[None])


def test_mask_loss_normalisation_and_subsampling():
    torch.manual_seed(0)
    protos = torch.rand(2, 3, 8, 8)
    coefs = torch.randn(2, 5, 3)
    positive = torch.tensor([[True, False, True, False, False], [False, True, False, False, False]])
    index = torch.tensor([[0, 0, 1, 0, 0], [0, 0, 0, 0, 0]])
    masks = [torch.zeros(2, 16, 16, dtype=torch.bool), torch.zeros(1, 16, 16, dtype=torch.bool)]
    masks[0][0, 2:8, 2:8] = masks[0][1, 8:14, 4:12] = masks[1][0, 4:12, 4:12] = True
    boxes = [
        torch.tensor([[2, 2, 8, 8], [4, 8, 12, 14.0]]) / 16,
        torch.tensor([[4, 4, 12, 12.0]]) / 16,
    ]
    per_image = []
    for b, priors in ((0, [0, 2]), (1, [1])):
        for p in priors:
            logits = torch.einsum("khw,k->hw", protos[b], coefs[b, p])[None]
            gt = (
                F.interpolate(
                    masks[b][None].float(), size=(8, 8), mode="bilinear", align_corners=False
                )[0]
                > 0.5
            )
            g = index[b, p]
            per_image.append(mask_bce(logits, gt[g : g + 1].float(), boxes[b][g : g + 1]))
    expected = torch.cat(per_image).sum() / 3  # divided by the batch's number of positives
    torch.testing.assert_close(mask_loss(protos, coefs, positive, index, masks, boxes), expected)
    # at most masks_to_train per image, scaled by n / m: identical positives give the same loss
    same = coefs[:1, :1].repeat(1, 5, 1)
    all_pos = torch.ones(1, 5, dtype=torch.bool)
    zeros = torch.zeros(1, 5, dtype=torch.long)
    full = mask_loss(protos[:1], same, all_pos, zeros, masks[:1], boxes[:1])
    capped = mask_loss(protos[:1], same, all_pos, zeros, masks[:1], boxes[:1], masks_to_train=2)
    torch.testing.assert_close(capped, full)


def test_semantic_loss_takes_the_max_per_class():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4)
    masks = [torch.zeros(2, 8, 8, dtype=torch.bool), torch.zeros(0, 8, 8, dtype=torch.bool)]
    masks[0][0, :4, :4] = masks[0][1, 2:6, 2:6] = True
    labels = [torch.tensor([1, 1]), torch.zeros(0, dtype=torch.long)]
    target = torch.zeros(2, 3, 4, 4)
    target[0, 1, :2, :2] = target[0, 1, 1:3, 1:3] = 1
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="sum")
    torch.testing.assert_close(semantic_loss(logits, masks, labels), bce / 16 / 2)


# ----------------------------------------------------------------------------- Fast NMS
def test_fast_nms_matches_its_definition():
    torch.manual_seed(0)
    xy = torch.rand(40, 2) * 50
    boxes = torch.cat([xy, xy + 10 + torch.rand(40, 2) * 20], dim=1)
    scores = torch.rand(40)
    labels = torch.randint(0, 3, (40,))
    for use_labels in (False, True):
        order = scores.argsort(descending=True)
        iou = box_iou(boxes[order])
        if use_labels:
            iou = iou * (labels[order][:, None] == labels[order][None, :])
        # keep i iff max over higher-scored j < i of IoU(j, i) <= t (removed boxes still count)
        expected = [order[i].item() for i in range(40) if i == 0 or iou[:i, i].max() <= 0.5]
        kept = fast_nms(boxes, scores, 0.5, top_k=200, labels=labels if use_labels else None)
        assert kept.tolist() == expected


def test_fast_nms_differs_from_classic_nms_on_a_chain():
    # A overlaps B (IoU .6), B overlaps C (IoU .6), A and C barely (IoU .33)
    boxes = torch.tensor([[0, 0, 10, 10], [2.5, 0, 12.5, 10], [5, 0, 15, 10.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert box_nms(boxes, scores, 0.5).tolist() == [0, 2]  # B is gone, so C survives
    assert fast_nms(boxes, scores, 0.5).tolist() == [0]  # B still suppresses C


# ----------------------------------------------------------------------------- model
def test_forward_shapes_priors_follow_the_input_and_loss_parts():
    torch.manual_seed(0)
    model = YOLACT(small_config())
    images = torch.randn(2, 3, 128, 96)
    out = model(images)
    sizes = yolact_feature_sizes((128, 96))
    num_priors = 3 * sum(h * w for h, w in sizes)
    assert out["class_logits"].shape == (2, num_priors, 4)
    assert out["box_deltas"].shape == (2, num_priors, 4)
    assert out["coefficients"].shape == (2, num_priors, 4) and out["coefficients"].abs().max() <= 1
    assert out["prototypes"].shape == (2, 4, 32, 24) and out["prototypes"].min() >= 0
    assert out["semantic_logits"].shape == (2, 3, 16, 12)
    torch.testing.assert_close(out["priors"], prior_boxes((128, 96), (24, 48, 96, 192, 384)))
    assert model(images[:1])["priors"] is out["priors"]  # cached by size
    masks = torch.zeros(2, 128, 96, dtype=torch.bool)
    masks[0, 10:50, 20:60] = masks[1, 60:120, 10:90] = True
    targets = [
        {
            "masks": masks[:1],
            "labels": torch.tensor([2]),
            "boxes": torch.tensor([[20, 10, 60, 50.0]]),
            "crowd_boxes": torch.tensor([[0, 100, 40, 128.0]]),
        },
        {
            "masks": masks[1:],
            "labels": torch.tensor([0]),
            "boxes": torch.tensor([[10, 60, 90, 120.0]]),
        },
    ]
    losses = model.loss(out, targets)
    parts = ("loss_class", "loss_box", "loss_mask", "loss_semantic")
    torch.testing.assert_close(losses["loss"], sum(losses[k] for k in parts))
    assert all(losses[k] > 0 for k in parts) and losses["num_positives"] >= 2
    losses["loss"].backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    assert "semantic_logits" not in model(images[:1])


def test_loss_without_objects_and_predict_with_padding():
    torch.manual_seed(0)
    model = YOLACT(small_config())
    images = torch.randn(1, 3, 64, 64)
    empty = {"masks": torch.zeros(0, 64, 64, dtype=torch.bool), "labels": torch.zeros(0).long()}
    losses = model.loss(model(images), [empty])  # no boxes given, no objects: all background
    assert torch.isfinite(losses["loss"]) and losses["num_positives"] == 0
    # a 48 x 40 image padded to 64 x 64, reported at 96 x 80
    (result,) = model.predict(images, image_sizes=[(48, 40)], original_sizes=[(96, 80)])
    k = result["scores"].shape[0]
    assert k > 0 and result["masks"].shape == (k, 96, 80) and result["boxes"].shape == (k, 4)
    assert (result["boxes"] >= 0).all() and (result["boxes"][:, 2] <= 80).all()
    assert (result["boxes"][:, 3] <= 96).all()


def test_feature_sizes_match_the_network_at_550():
    model = YOLACT(small_config(backbone_width=4, fpn_channels=8, proto_channels=8))
    with torch.no_grad():
        features = model.features(torch.zeros(1, 3, 550, 550))
    assert [tuple(f.shape[-2:]) for f in features] == yolact_feature_sizes(550)


def test_loss_under_autocast_is_float32():
    model = YOLACT(small_config())
    masks = torch.zeros(1, 64, 64, dtype=torch.bool)
    masks[0, 8:40, 8:40] = True
    target = [
        {"masks": masks, "labels": torch.tensor([1]), "boxes": torch.tensor([[8, 8, 40, 40.0]])}
    ]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(1, 3, 64, 64))
        losses = model.loss(out, target)
    assert losses["loss"].dtype == torch.float32 and torch.isfinite(losses["loss"])


def synthetic_scene(size: int = 128):
    """A circle, a rectangle and a triangle in three colours on a grey background."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    circle = (yy - 40) ** 2 + (xx - 44) ** 2 <= 22**2
    rect = (yy >= 70) & (yy < 112) & (xx >= 64) & (xx < 116)
    triangle = (yy >= 14) & (yy < 60) & (xx >= 78) & (xx - 78 <= yy - 14)
    masks = torch.stack([circle, rect, triangle])
    image = torch.full((3, size, size), -0.5)
    for mask, colour in zip(masks, torch.eye(3) * 2 - 1, strict=True):
        image[:, mask] = colour[:, None]
    boxes = []
    for mask in masks:
        ys, xs = mask.nonzero(as_tuple=True)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return image[None], masks, torch.tensor([0, 1, 2]), torch.tensor(boxes, dtype=torch.float32)


def best_iou_per_gt(prediction: dict, masks: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if prediction["masks"].shape[0] == 0:
        return torch.zeros(masks.shape[0])
    same_class = labels[:, None] == prediction["labels"][None, :]
    return (mask_iou(masks, prediction["masks"]) * same_class).max(dim=1).values


@pytest.mark.slow
def test_tiny_yolact_overfits_one_image_and_predicts_at_original_size():
    torch.manual_seed(0)
    config = preset(
        "tiny",
        model="yolact",
        num_classes=3,
        image_size=128,
        backbone_width=16,
        fpn_channels=32,
        proto_channels=32,
        head_channels=32,
        num_prototypes=8,
        norm_eval=True,  # one image: train and eval BatchNorm must agree
    )
    model = YOLACT(config)
    image, masks, labels, boxes = synthetic_scene()
    targets = [{"masks": masks, "labels": labels, "boxes": boxes}]
    optimizer = torch.optim.Adam(model.parameters(), lr=4e-3)
    ious = torch.zeros(3)
    for step in range(1, 121):
        losses = model.loss(model(image), targets)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        if step >= 20 and step % 5 == 0:
            ious = best_iou_per_gt(model.predict(image)[0], masks, labels)
            if (ious >= 0.8).all():
                break
    assert (ious >= 0.8).all(), f"best mask IoU per GT after {step} steps: {ious.tolist()}"
    # results at the original size: a 256 x 192 photo squashed to 128 x 128
    result = model.predict(image, original_sizes=[(256, 192)])[0]
    assert result["masks"].shape[1:] == (256, 192) and result["masks"].dtype == torch.bool
    assert result["labels"].dtype == torch.long and result["labels"].max() < 3
    assert (result["scores"][:-1] >= result["scores"][1:]).all()
    big = F.interpolate(masks[None].float(), size=(256, 192))[0] > 0.5
    assert (best_iou_per_gt(result, big, labels) >= 0.75).all()
    scale = torch.tensor([192 / 128, 256 / 128, 192 / 128, 256 / 128])
    for label, box in zip(labels, boxes, strict=True):
        best = result["boxes"][result["labels"] == label][:1]  # highest-scored of this class
        assert box_iou(best, (box * scale)[None])[0, 0] > 0.7

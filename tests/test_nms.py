import math

import pytest
import torch

from minisolo import box_iou, box_nms, fast_nms, mask_iou, mask_nms, matrix_nms, points_nms


def test_points_nms_by_hand():
    heat = torch.tensor([[0.1, 0.5, 0.2], [0.3, 0.4, 0.9], [0.6, 0.2, 0.1]])[None, None]
    # the window of cell (i, j) is cells (i-1..i, j-1..j)
    expected = torch.tensor([[0.1, 0.5, 0.0], [0.3, 0.0, 0.9], [0.6, 0.0, 0.0]])
    torch.testing.assert_close(points_nms(heat)[0, 0], expected)


def test_points_nms_matches_official_formula():
    heat = torch.rand(2, 3, 7, 7)
    pooled = torch.nn.functional.max_pool2d(heat, 2, stride=1, padding=1)
    keep = pooled[..., :-1, :-1] == heat
    torch.testing.assert_close(points_nms(heat), heat * keep)


def _row_masks():
    """Three masks on a 1 x 10 strip: A = cols 0-5, B = cols 1-6, C = cols 4-9."""
    masks = torch.zeros(3, 1, 10, dtype=torch.bool)
    masks[0, 0, 0:6] = True
    masks[1, 0, 1:7] = True
    masks[2, 0, 4:10] = True
    return masks


def test_mask_iou_by_hand():
    iou = mask_iou(_row_masks())
    torch.testing.assert_close(iou[0, 1], torch.tensor(5 / 7))
    torch.testing.assert_close(iou[0, 2], torch.tensor(2 / 10))
    torch.testing.assert_close(iou[1, 2], torch.tensor(3 / 9))


def test_mask_nms_sequential_by_hand():
    masks = _row_masks()
    scores = torch.tensor([0.9, 0.8, 0.7])
    same = torch.zeros(3, dtype=torch.long)
    assert mask_nms(masks, same, scores, 0.5).tolist() == [0, 2]
    # a different class is never suppressed
    assert mask_nms(masks, torch.tensor([0, 1, 0]), scores, 0.5).tolist() == [0, 1, 2]
    # the order follows the scores, not the input position
    # B first (A is suppressed by it), then C whose IoU with B is only 1/3
    assert mask_nms(masks, same, torch.tensor([0.1, 0.8, 0.7]), 0.5).tolist() == [1, 2]


def test_matrix_nms_gaussian_by_hand():
    scores = torch.tensor([0.9, 0.8, 0.7])
    new = matrix_nms(_row_masks(), torch.zeros(3, dtype=torch.long), scores, "gaussian", 2.0)
    iou_ab, iou_ac, iou_bc = 5 / 7, 0.2, 1 / 3
    decay_b = math.exp(-2 * iou_ab**2)
    decay_c = min(math.exp(-2 * iou_ac**2), math.exp(-2 * iou_bc**2) / math.exp(-2 * iou_ab**2))
    torch.testing.assert_close(new, torch.tensor([0.9, 0.8 * decay_b, 0.7 * decay_c]))


def test_matrix_nms_linear_by_hand():
    scores = torch.tensor([0.9, 0.8, 0.7])
    new = matrix_nms(_row_masks(), torch.zeros(3, dtype=torch.long), scores, "linear")
    # decay_B = (1 - 5/7) / 1; decay_C = min((1 - 0.2) / 1, (1 - 1/3) / (1 - 5/7)) = 0.8
    torch.testing.assert_close(new, torch.tensor([0.9, 0.8 * 2 / 7, 0.7 * 0.8]))


def test_matrix_nms_only_decays_within_a_class():
    scores = torch.tensor([0.9, 0.8, 0.7])
    new = matrix_nms(_row_masks(), torch.tensor([0, 1, 2]), scores)
    torch.testing.assert_close(new, scores)
    assert matrix_nms(torch.zeros(0, 2, 2), torch.zeros(0), torch.zeros(0)).numel() == 0
    with pytest.raises(ValueError, match="kernel"):
        matrix_nms(_row_masks(), torch.zeros(3), scores, kernel="box")


def _chain_boxes():
    # IoU(A, B) = IoU(B, C) = 7/13 > 0.5 but IoU(A, C) = 4/16 < 0.5
    return torch.tensor([[0.0, 0, 10, 10], [3, 0, 13, 10], [6, 0, 16, 10]])


def test_box_iou_by_hand():
    iou = box_iou(_chain_boxes())
    torch.testing.assert_close(iou[0, 1], torch.tensor(7 / 13))
    torch.testing.assert_close(iou[0, 2], torch.tensor(4 / 16))


def test_classic_and_fast_nms_differ_on_a_chain():
    boxes = _chain_boxes()
    scores = torch.tensor([0.9, 0.8, 0.7])
    # classic NMS: B is removed by A, so C (which only overlaps B) survives
    assert box_nms(boxes, scores, 0.5).tolist() == [0, 2]
    # Fast NMS: C's largest IoU with any higher-scored box (B, already removed) is 7/13 > 0.5
    assert fast_nms(boxes, scores, 0.5).tolist() == [0]
    # per class: C in another class than B is kept
    assert fast_nms(boxes, scores, 0.5, labels=torch.tensor([0, 0, 1])).tolist() == [0, 2]


def test_fast_nms_top_k_and_empty():
    boxes = torch.tensor([[0.0, 0, 1, 1], [5, 5, 6, 6], [10, 10, 11, 11]])
    assert fast_nms(boxes, torch.tensor([0.1, 0.9, 0.5]), top_k=2).tolist() == [1, 2]
    assert fast_nms(torch.zeros(0, 4), torch.zeros(0)).numel() == 0

import pytest
import torch

from minisolo import solo_targets, solo_targets_batch
from minisolo.targets import center_of_mass, masks_to_boxes, resize_masks


def _rect(h, w, y1, y2, x1, x2):
    """Mask with rows y1..y2-1 and columns x1..x2-1 set."""
    m = torch.zeros(h, w, dtype=torch.bool)
    m[y1:y2, x1:x2] = True
    return m


ONE_LEVEL = dict(grids=(4,), scale_ranges=((1, 32),), strides=(8,))


def test_hand_computed_small_case():
    # rows 2..13, columns 4..25 -> box 22 x 12, centre of mass (14.5, 7.5), on a 32 x 32 input
    masks = _rect(32, 32, 2, 14, 4, 26)[None]
    (level,) = solo_targets(masks, torch.tensor([2]), num_classes=3, **ONE_LEVEL)
    # half extents 2.2 and 1.2; i0 = floor(7.5/32*4) = 0, j0 = floor(14.5/32*4) = 1
    # rows 0..floor(8.7/8)=1, columns floor(12.3/8)=1..floor(16.7/8)=2
    expected = torch.full((4, 4), 3)
    expected[0:2, 1:3] = 2
    assert torch.equal(level.category, expected)
    assert level.positive_index.tolist() == [1, 2, 5, 6]  # k = i * S + j
    assert level.instance.tolist() == [0, 0, 0, 0]
    # masks are predicted at stride 8 / 2 = 4: an 8 x 8 target, the same for every cell
    assert level.masks.shape == (4, 8, 8) and level.masks.dtype == torch.bool
    assert torch.equal(level.masks[0], resize_masks(masks, (8, 8))[0])
    assert all(torch.equal(level.masks[0], m) for m in level.masks)


def test_large_object_is_clamped_to_3x3():
    # a 56 x 56 square on a 64 x 64 image, S = 40: the sigma region is 11.2 px = 7 cells wide
    masks = _rect(64, 64, 4, 60, 4, 60)[None]
    (level,) = solo_targets(
        masks,
        torch.tensor([0]),
        num_classes=1,
        grids=(40,),
        scale_ranges=((1, 96),),
        strides=(8,),
    )
    # centre of mass 31.5 -> i0 = j0 = floor(31.5 / 64 * 40) = 19
    rows, cols = (level.category == 0).nonzero(as_tuple=True)
    assert sorted(set(rows.tolist())) == [18, 19, 20]
    assert sorted(set(cols.tolist())) == [18, 19, 20]
    assert level.positive_index.tolist() == [i * 40 + j for i in (18, 19, 20) for j in (18, 19, 20)]


def test_centre_of_mass_not_box_centre_decides_the_cell():
    # an L shape: box is the full 0..31 square but the mass sits in the top-left
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[0:32, 0:4] = True
    mask[0:4, 0:32] = True
    cx, cy = center_of_mass(mask[None])
    # by hand: area 240; sum of x = 32 * (0+1+2+3) + 4 * (4+...+31) = 192 + 1960
    assert cx.item() == pytest.approx(2152 / 240)
    assert cy.item() == pytest.approx(2152 / 240)  # far from the box centre 15.5
    (level,) = solo_targets(
        mask[None],
        torch.tensor([0]),
        num_classes=1,
        grids=(8,),
        scale_ranges=((1, 64),),
        strides=(8,),
    )
    assert level.category[2, 2] == 0  # floor(8.97 / 32 * 8) = 2
    assert level.category[4, 4] == 1  # the box centre cell is background


def test_overlapping_scale_ranges_put_one_object_on_two_levels():
    # box 60 x 60 -> sqrt(wh) = 60 lies in both (1, 96) and (48, 192)
    masks = _rect(128, 128, 30, 90, 30, 90)[None]
    levels = solo_targets(
        masks,
        torch.tensor([1]),
        num_classes=2,
        grids=(12, 8, 4),
        scale_ranges=((1, 96), (48, 192), (96, 384)),
        strides=(8, 8, 16),
    )
    assert levels[0].num_positives > 0
    assert levels[1].num_positives > 0
    assert levels[2].num_positives == 0
    assert (levels[2].category == 2).all()
    assert levels[0].masks.shape[-2:] == (32, 32)
    assert levels[2].masks.shape[-2:] == (16, 16)


def test_scale_range_bounds_are_inclusive():
    masks = _rect(128, 128, 0, 48, 0, 48)[None]  # sqrt(wh) = 48 exactly
    levels = solo_targets(
        masks,
        torch.tensor([0]),
        num_classes=1,
        grids=(8, 8),
        scale_ranges=((1, 47), (48, 96)),
        strides=(8, 8),
    )
    assert levels[0].num_positives == 0 and levels[1].num_positives > 0


def test_later_object_overwrites_earlier_one():
    first = _rect(64, 64, 20, 44, 20, 44)
    second = _rect(64, 64, 24, 40, 24, 40)  # same centre of mass, smaller
    (level,) = solo_targets(
        torch.stack([first, second]),
        torch.tensor([0, 1]),
        num_classes=2,
        grids=(8,),
        scale_ranges=((1, 64),),
        strides=(8,),
    )
    centre = (31.5 / 64 * 8) // 1
    k = int(centre * 8 + centre)
    assert level.category.flatten()[k] == 1
    position = level.positive_index.tolist().index(k)
    assert level.instance[position] == 1
    assert torch.equal(level.masks[position], resize_masks(second[None], (16, 16))[0])


def test_empty_mask_and_empty_image_assign_nothing():
    masks = torch.zeros(1, 32, 32, dtype=torch.bool)
    for m, l in ((masks, torch.tensor([0])), (masks[:0], torch.zeros(0, dtype=torch.long))):
        (level,) = solo_targets(m, l, num_classes=3, **ONE_LEVEL)
        assert (level.category == 3).all()
        assert level.num_positives == 0
        assert level.masks.shape == (0, 8, 8)


def test_given_boxes_decide_the_level():
    masks = _rect(64, 64, 10, 20, 10, 20)[None]  # tight box 10 x 10
    big_box = torch.tensor([[0.0, 0.0, 60.0, 60.0]])
    small, large = solo_targets(
        masks,
        torch.tensor([0]),
        num_classes=1,
        grids=(8, 8),
        scale_ranges=((1, 32), (33, 128)),
        strides=(8, 8),
        boxes=big_box,
    )
    assert small.num_positives == 0 and large.num_positives > 0


def test_masks_to_boxes_exclusive_corners():
    boxes = masks_to_boxes(torch.stack([_rect(10, 10, 2, 5, 3, 9), torch.zeros(10, 10).bool()]))
    assert boxes.tolist() == [[3.0, 2.0, 9.0, 5.0], [0.0, 0.0, 0.0, 0.0]]


def test_batch_offsets_positive_index_by_image():
    masks = _rect(32, 32, 2, 14, 4, 26)[None]
    (batched,) = solo_targets_batch(
        [masks, masks[:0], masks],
        [torch.tensor([2]), torch.zeros(0, dtype=torch.long), torch.tensor([1])],
        num_classes=3,
        **ONE_LEVEL,
    )
    assert batched.category.shape == (3, 4, 4)
    assert batched.positive_index.tolist() == [1, 2, 5, 6, 33, 34, 37, 38]
    assert batched.masks.shape == (8, 8, 8)


@pytest.mark.parametrize(
    "masks, labels, message",
    [
        (torch.zeros(32, 32, dtype=torch.bool), torch.tensor([0]), r"\[N, H, W\]"),
        (torch.zeros(1, 32, 32), torch.tensor([0]), "dtype"),
        (torch.zeros(1, 32, 32, dtype=torch.bool), torch.tensor([3]), r"\[0, 3\)"),
        (torch.zeros(1, 32, 32, dtype=torch.bool), torch.tensor([-1]), r"\[0, 3\)"),
        (torch.zeros(2, 32, 32, dtype=torch.bool), torch.tensor([0]), "2 masks but 1 labels"),
        (torch.zeros(1, 32, 32, dtype=torch.bool), torch.tensor([0.0]), "integer"),
    ],
)
def test_bad_input_is_rejected_with_a_clear_message(masks, labels, message):
    with pytest.raises(ValueError, match=message):
        solo_targets(masks, labels, num_classes=3, **ONE_LEVEL)


def test_mismatched_level_settings_are_rejected():
    with pytest.raises(ValueError, match="one entry per level"):
        solo_targets(
            torch.zeros(0, 32, 32, dtype=torch.bool),
            torch.zeros(0, dtype=torch.long),
            num_classes=1,
            grids=(4, 2),
            scale_ranges=((1, 32),),
            strides=(8,),
        )

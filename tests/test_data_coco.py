"""Tests for minisolo.data.coco: CocoInstances, find_split, collate_batch and bad input."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from minisolo.data import (
    CocoInstances,
    DataError,
    Resize,
    build_transforms,
    collate_batch,
    decode_rles,
    find_split,
    make_shapes_dataset,
    masks_to_boxes,
)

COCO_MINI = Path(__file__).resolve().parents[2] / "shared" / "coco-mini"


def _need_coco_mini() -> Path:
    if not (COCO_MINI / "annotations" / "instances_val2017.json").is_file():
        pytest.skip(f"../shared/coco-mini not found at {COCO_MINI}; real-photo tests skipped")
    return COCO_MINI


# --------------------------------------------------------------------------------------------
# Helpers: hand-made COCO folders
# --------------------------------------------------------------------------------------------


def _square_poly(x: float, y: float, s: float) -> list[float]:
    return [x, y, x + s, y, x + s, y + s, x, y + s]


def _write_image(path: Path, h: int = 32, w: int = 40, mode: str = "RGB", fmt: str = "PNG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).convert(mode).save(path, format=fmt)


def _make_coco(
    root: Path,
    images: list[dict],
    annotations: list[dict],
    categories: list[dict] | None = None,
    split: str = "train",
    write_images: bool = True,
) -> Path:
    """Write root/annotations/instances_<split>.json (+ images) and return root."""
    categories = categories or [{"id": 1, "name": "thing"}, {"id": 2, "name": "other"}]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    data = {"images": images, "annotations": annotations, "categories": categories}
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    if write_images:
        for im in images:
            _write_image(root / split / im["file_name"], im["height"], im["width"])
    return root


def _img(i: int, h: int = 32, w: int = 40, name: str | None = None) -> dict:
    return {"id": i, "file_name": name or f"{i:04d}.png", "height": h, "width": w}


def _ann(i: int, image_id: int, cat: int = 1, segm=None, **kw) -> dict:
    segm = segm if segm is not None else [_square_poly(4, 4, 10)]
    a = {"id": i, "image_id": image_id, "category_id": cat, "segmentation": segm, "iscrowd": 0}
    a.update(kw)
    return a


def _check_target(image: torch.Tensor, target: dict, num_classes: int) -> None:
    """Invariants every target must satisfy."""
    assert image.dtype == torch.float32 and image.ndim == 3 and image.shape[0] == 3
    h, w = image.shape[-2:]
    n = target["labels"].shape[0]
    assert target["size"] == (h, w)
    assert target["masks"].dtype == torch.bool and target["masks"].shape == (n, h, w)
    assert target["labels"].dtype == torch.int64
    assert target["boxes"].dtype == torch.float32 and target["boxes"].shape == (n, 4)
    if n:
        assert target["labels"].min() >= 0 and target["labels"].max() < num_classes
        assert target["masks"].flatten(1).any(1).all()  # no empty masks
        assert torch.equal(target["boxes"], masks_to_boxes(target["masks"]))  # tight boxes


# --------------------------------------------------------------------------------------------
# Shapes dataset
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_shapes_root(tmp_path_factory):
    return make_shapes_dataset(
        tmp_path_factory.mktemp("shapes"), num_train=6, num_val=3, seed=1, progress=False
    )


def test_shapes_targets_match_annotations(data_shapes_root):
    ds = CocoInstances(data_shapes_root, "train")
    assert len(ds) == 6 and ds.num_classes == 4
    assert ds.class_names == ["circle", "square", "triangle", "star"]
    assert ds.category_ids == [1, 2, 3, 4]
    for idx in range(len(ds)):
        image, target = ds[idx]
        _check_target(image, target, 4)
        assert target["orig_size"] == target["size"] == (256, 256)
        assert 0.0 <= image.min() and image.max() <= 1.0
        anns = ds.coco.imgToAnns[target["image_id"]]
        assert len(anns) == len(target["labels"]) >= 1
        for k, a in enumerate(anns):
            decoded = decode_rles([ds.coco.annToRLE(a)])[..., 0]
            assert torch.equal(target["masks"][k], torch.from_numpy(decoded))
            assert int(target["labels"][k]) == a["category_id"] - 1
            assert target["masks"][k].sum() == a["area"]


def test_shapes_with_transforms_and_dataloader(data_shapes_root):
    ds = CocoInstances(data_shapes_root, "val", transforms=build_transforms(True, 160, 300))
    torch.manual_seed(0)
    loader = DataLoader(ds, batch_size=2, shuffle=False, collate_fn=collate_batch)
    seen = 0
    for images, targets in loader:
        assert images.shape[0] == len(targets) and images.shape[-2:] == (160, 160)
        for i, t in enumerate(targets):
            assert t["size"] == (160, 160) and t["orig_size"] == (256, 256)
            _check_target(images[i], t, 4)
            seen += 1
    assert seen == 3


def test_find_split(data_shapes_root, tmp_path):
    ann, img_dir = find_split(data_shapes_root, "train")
    assert ann.name == "instances_train.json" and img_dir == data_shapes_root / "train"
    with pytest.raises(DataError, match=r"instances_train\.json.*instances_val\.json"):
        find_split(data_shapes_root, "test")  # error lists what exists
    with pytest.raises(DataError, match="no annotations folder"):
        find_split(tmp_path, "train")
    # ambiguous: two files start with the split name
    root = tmp_path / "amb"
    (root / "annotations").mkdir(parents=True)
    for name in ("instances_val2014.json", "instances_val2017.json"):
        (root / "annotations" / name).write_text("{}")
    with pytest.raises(DataError, match="several"):
        find_split(root, "val")
    # the folder named by the file's suffix is found
    (root / "val2017").mkdir()
    assert find_split(root, "val2017") == (
        root / "annotations" / "instances_val2017.json",
        root / "val2017",
    )


# --------------------------------------------------------------------------------------------
# coco-mini (real COCO images and annotations)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_coco_mini():
    return CocoInstances(_need_coco_mini(), "val")


def test_coco_mini_category_mapping_round_trips(data_coco_mini):
    ds = data_coco_mini
    assert ds.ann_file.name == "instances_val2017.json" and ds.image_dir.name == "val2017"
    assert ds.num_classes == 80
    assert ds.category_ids == sorted(ds.category_ids) and max(ds.category_ids) == 90
    assert ds.category_ids != list(range(1, 81))  # COCO ids really are non-contiguous
    for label, cid in enumerate(ds.category_ids):
        assert ds.label_to_category_id(label) == cid
        assert ds.cat_to_label[cid] == label
        assert ds.class_names[label] == ds.coco.loadCats(cid)[0]["name"]
    assert ds.class_names[0] == "person"


def test_image_path_names_the_file_of_each_position(data_shapes_root):
    ds = CocoInstances(data_shapes_root, "val")
    for index in range(len(ds)):
        path = ds.image_path(index)
        assert path.is_file() and path.parent == ds.image_dir
        assert path.name == ds.coco.imgs[ds.ids[index]]["file_name"]
    assert len({ds.image_path(i) for i in range(len(ds))}) == len(ds)


def test_coco_mini_crowd_excluded_but_kept_for_eval(data_coco_mini):
    ds = data_coco_mini
    crowd = [a for a in ds.coco.anns.values() if a["iscrowd"]]
    assert crowd, "coco-mini should contain crowd annotations"
    crowd_images = {a["image_id"] for a in crowd}
    checked = 0
    for idx, image_id in enumerate(ds.ids):
        if image_id not in crowd_images:
            continue
        target = ds.load_target(idx)
        anns = ds.coco.imgToAnns[image_id]
        non_crowd = [a for a in anns if not a["iscrowd"]]
        assert len(non_crowd) < len(anns)
        assert target["masks"].shape[0] == len(non_crowd)
        expected = [ds.cat_to_label[a["category_id"]] for a in non_crowd]
        assert target["labels"].tolist() == expected
        checked += 1
    assert checked == len(crowd_images)


def test_coco_mini_masks_match_boxes(data_coco_mini):
    ds = data_coco_mini
    diffs = []
    for idx in range(0, len(ds), 4):
        target = ds.load_target(idx)
        anns = [a for a in ds.coco.imgToAnns[target["image_id"]] if not a["iscrowd"]]
        assert torch.equal(target["boxes"], masks_to_boxes(target["masks"]))
        for k, a in enumerate(anns):
            x, y, w, h = a["bbox"]
            coco_box = torch.tensor([x, y, x + w, y + h])
            diffs.append(float((coco_box - target["boxes"][k]).abs().max()))
            assert abs(int(target["masks"][k].sum()) - a["area"]) <= 0.1 * a["area"] + 20
    diffs = np.array(diffs)
    assert len(diffs) > 50
    # rasterised polygons agree with COCO's float boxes to about a pixel
    assert np.median(diffs) < 1.0 and np.mean(diffs <= 2.0) > 0.95


def test_coco_mini_getitem_resized(data_coco_mini):
    ds = CocoInstances(COCO_MINI, "val2017", transforms=build_transforms(False, 200, 333))
    image, target = ds[0]
    _check_target(image, target, 80)
    assert min(target["size"]) == 200 or max(target["size"]) == 333
    assert target["orig_size"] == (
        ds.coco.imgs[target["image_id"]]["height"],
        ds.coco.imgs[target["image_id"]]["width"],
    )
    images, targets = collate_batch([ds[0], ds[1], ds[2]])
    assert images.shape[-2] % 32 == 0 and images.shape[-1] % 32 == 0


# --------------------------------------------------------------------------------------------
# Image modes, folders, empty images, segmentation formats, categories
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "1", "I;16", "CMYK"])
def test_image_modes_become_rgb(tmp_path, mode):
    root = _make_coco(tmp_path, [_img(1, 24, 30, "a.png")], [_ann(1, 1)], write_images=False)
    path = root / "train" / "a.png"
    path.parent.mkdir(parents=True)
    gray = np.full((24, 30), 200, dtype=np.uint8)
    if mode == "I;16":
        Image.fromarray(gray.astype(np.uint16) * 257).save(path)
    elif mode == "CMYK":  # PNG cannot store CMYK: a JPEG with a .png name still opens
        Image.fromarray(gray).convert("CMYK").save(path, format="JPEG")
    elif mode == "P":
        im = Image.fromarray(gray).convert("P")
        im.info["transparency"] = 0
        im.save(path, transparency=0)
    elif mode == "1":
        Image.fromarray(gray).convert("1", dither=Image.Dither.NONE).save(path)
    else:
        Image.fromarray(gray).convert(mode).save(path)
    with Image.open(path) as f:
        assert f.mode == mode or (mode == "I;16" and f.mode.startswith("I"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no PIL warnings about palettes either
        image, target = CocoInstances(root, "train")[0]
    _check_target(image, target, 2)
    assert image.shape == (3, 24, 30)
    expected = 1.0 if mode == "1" else 200 / 255
    torch.testing.assert_close(image, torch.full_like(image, expected), atol=0.02, rtol=0)


def test_file_names_with_subfolders(tmp_path):
    images = [_img(1, name="a/b/one.png"), _img(2, name="c/two.png")]
    root = _make_coco(tmp_path, images, [_ann(1, 1), _ann(2, 2, cat=2)])
    ds = CocoInstances(root, "train")
    assert [ds[i][1]["labels"].tolist() for i in range(2)] == [[0], [1]]


def test_image_without_annotations_is_kept(tmp_path):
    root = _make_coco(tmp_path, [_img(1), _img(2)], [_ann(1, 1)])
    ds = CocoInstances(root, "train", transforms=build_transforms(False, 64, 100))
    assert len(ds) == 2
    image, target = ds[1]
    assert target["image_id"] == 2
    assert target["masks"].shape == (0, 64, 80)
    assert target["labels"].shape == (0,) and target["labels"].dtype == torch.int64
    assert target["boxes"].shape == (0, 4)
    images, targets = collate_batch([ds[0], ds[1]])
    assert images.shape == (2, 3, 64, 96)
    assert targets[1]["masks"].shape == (0, 64, 96)


def test_polygon_and_rle_formats_decode_identically(tmp_path):
    h, w = 32, 40
    truth = np.zeros((h, w), dtype=np.uint8)
    truth[5:20, 8:30] = 1
    truth[22:30, 2:6] = 1
    compressed = mask_utils.encode(np.asfortranarray(truth))
    compressed["counts"] = compressed["counts"].decode("ascii")
    # uncompressed RLE: run lengths in column-major order, starting with a run of zeros
    flat = truth.flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    if flat[0] == 1:
        runs = [0, *runs]
    uncompressed = {"counts": runs, "size": [h, w]}
    polygons = [[8, 5, 30, 5, 30, 20, 8, 20], [2, 22, 6, 22, 6, 30, 2, 30]]
    anns = [
        _ann(1, 1, segm=compressed),
        _ann(2, 1, segm=uncompressed),
        _ann(3, 1, segm=polygons),
    ]
    ds = CocoInstances(_make_coco(tmp_path, [_img(1, h, w)], anns), "train")
    _, target = ds[0]
    expected = torch.from_numpy(truth.astype(bool))
    assert torch.equal(target["masks"][0], expected)
    assert torch.equal(target["masks"][1], expected)
    # pycocotools rasterises polygons by their pixel-corner coordinates: close, not identical
    assert (target["masks"][2] ^ expected).sum() <= 0.1 * expected.sum()
    assert target["boxes"][0].tolist() == [2, 5, 30, 30]


def test_non_contiguous_categories(tmp_path):
    cats = [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}, {"id": 12, "name": "twelve"}]
    anns = [_ann(1, 1, cat=12), _ann(2, 1, cat=3, segm=[_square_poly(20, 10, 6)])]
    ds = CocoInstances(_make_coco(tmp_path, [_img(1)], anns, cats), "train")
    assert ds.category_ids == [3, 7, 12]
    assert ds.class_names == ["three", "seven", "twelve"]
    assert ds.cat_to_label == {3: 0, 7: 1, 12: 2}
    assert ds[0][1]["labels"].tolist() == [2, 0]
    assert [ds.label_to_category_id(x) for x in (0, 1, 2)] == [3, 7, 12]


def test_instance_that_vanishes_after_resize_is_dropped(tmp_path):
    big = [_square_poly(2, 2, 100)]
    m = np.zeros((128, 128), dtype=np.uint8)
    m[120, 120] = 1  # a single pixel: gone after shrinking 8x
    speck = mask_utils.encode(np.asfortranarray(m))
    speck["counts"] = speck["counts"].decode("ascii")
    anns = [_ann(1, 1, segm=big), _ann(2, 1, cat=2, segm=speck)]
    root = _make_coco(tmp_path, [_img(1, 128, 128)], anns)
    ds = CocoInstances(root, "train", transforms=Resize(16, 16))
    image, target = ds[0]
    assert ds.load_target(0)["labels"].tolist() == [0, 1]
    assert target["labels"].tolist() == [0]
    _check_target(image, target, 2)


# --------------------------------------------------------------------------------------------
# collate_batch
# --------------------------------------------------------------------------------------------


def test_collate_pads_to_multiple_of_32():
    def item(h, w, n):
        masks = torch.ones((n, h, w), dtype=torch.bool)
        t = {
            "image_id": h,
            "masks": masks,
            "labels": torch.zeros(n, dtype=torch.long),
            "boxes": masks_to_boxes(masks),
            "orig_size": (h, w),
            "size": (h, w),
        }
        return torch.ones(3, h, w), t

    items = [item(50, 70, 2), item(65, 40, 1), item(33, 33, 0)]
    images, targets = collate_batch(items)
    assert images.shape == (3, 3, 96, 96)  # max (65, 70) rounded up to 32
    for (img, t_in), padded, t in zip(items, images, targets, strict=True):
        h, w = img.shape[-2:]
        assert torch.equal(padded[:, :h, :w], img)
        assert padded.sum() == img.sum()  # zeros everywhere else
        assert t["masks"].shape == (t_in["masks"].shape[0], 96, 96)
        assert t["masks"].sum() == t_in["masks"].sum()
        assert t["size"] == (h, w)  # the unpadded size
        assert t_in["masks"].shape[-2:] == (h, w)  # input not modified
    images, _ = collate_batch(items, size_divisor=1)
    assert images.shape == (3, 3, 65, 70)
    with pytest.raises(ValueError):
        collate_batch([])


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


def test_missing_image_file(tmp_path):
    root = _make_coco(tmp_path, [_img(1), _img(2)], [_ann(1, 1), _ann(2, 2)])
    (root / "train" / "0002.png").unlink()
    ds = CocoInstances(root, "train")  # files are not opened at construction ...
    ds[0]
    with pytest.raises(DataError, match=r"not found: .*0002\.png \(image id 2\)"):
        ds[1]  # ... but a missing one is reported clearly when loaded
    with pytest.warns(UserWarning, match=r"dropped 1 bad image\(s\) \(ids 2\)"):
        ds = CocoInstances(root, "train", skip_bad=True)
    assert len(ds) == 1 and ds.ids == [1] and list(ds.skipped_images) == [2]


@pytest.mark.parametrize("damage", ["garbage", "truncated_png", "truncated_jpeg", "empty"])
def test_corrupt_or_truncated_image(tmp_path, damage):
    images = [_img(1), _img(2, name="bad.jpg" if damage == "truncated_jpeg" else "bad.png")]
    root = _make_coco(tmp_path, images, [_ann(1, 1), _ann(2, 2)])
    bad = root / "train" / images[1]["file_name"]
    if damage == "truncated_jpeg":
        _write_image(bad, 32, 40, fmt="JPEG")
    data = bad.read_bytes()
    if damage == "garbage":
        bad.write_bytes(b"this is not an image" * 10)
    elif damage == "empty":
        bad.write_bytes(b"")
    else:
        bad.write_bytes(data[: len(data) // 2])
    ds = CocoInstances(root, "train")
    with pytest.raises(DataError, match=r"bad\.(png|jpg) \(image id 2\)"):
        ds[1]
    with pytest.warns(UserWarning, match="dropped 1 bad image"):
        ds = CocoInstances(root, "train", skip_bad=True)
    assert ds.ids == [1]
    assert "image id 2" in ds.skipped_images[2]


def test_image_size_differs_from_json(tmp_path):
    root = _make_coco(tmp_path, [_img(1), _img(2)], [_ann(1, 1)])
    _write_image(root / "train" / "0002.png", 40, 32)  # transposed
    ds = CocoInstances(root, "train")
    with pytest.raises(DataError, match=r"0002\.png \(image id 2\) is 40x32.*says 32x40"):
        ds[1]
    with pytest.warns(UserWarning, match="dropped 1 bad image"):
        assert len(CocoInstances(root, "train", skip_bad=True)) == 1


@pytest.mark.parametrize(
    "content, message",
    [
        ("[1, 2, 3]", "not a COCO file .*list"),
        ('{"images": [], "categories": []}', r"missing key\(s\) \['annotations'\]"),
        ('{"images": {}, "annotations": [], "categories": []}', "'images' must be a list"),
        ('{"images": [{"id": 1}], "annotations": [], "categories": []}', "lacks field"),
        ("{not json", "not valid JSON"),
        ("", "not valid JSON"),
    ],
)
def test_json_that_is_not_coco(tmp_path, content, message):
    (tmp_path / "annotations").mkdir()
    path = tmp_path / "annotations" / "instances_train.json"
    path.write_text(content)
    with pytest.raises(DataError, match=message) as err:
        CocoInstances(tmp_path, "train")
    assert str(path) in str(err.value)
    assert isinstance(err.value, ValueError)


def test_dangling_image_and_category_ids(tmp_path):
    root = _make_coco(tmp_path / "a", [_img(1)], [_ann(1, 1), _ann(5, 99)])
    with pytest.raises(DataError, match="annotation 5 refers to image id 99") as err:
        CocoInstances(root, "train")
    assert "instances_train.json" in str(err.value)
    root = _make_coco(tmp_path / "b", [_img(1)], [_ann(1, 1), _ann(6, 1, cat=42)])
    with pytest.raises(DataError, match="annotation 6 refers to category id 42"):
        CocoInstances(root, "train")
    root = _make_coco(tmp_path / "c", [_img(1), _img(1)], [])
    with pytest.raises(DataError, match="duplicate id 1 in 'images'"):
        CocoInstances(root, "train")


def test_bad_annotations_skipped_with_one_warning(tmp_path):
    h, w = 32, 40
    empty_rle = mask_utils.encode(np.zeros((h, w), dtype=np.uint8, order="F"))
    empty_rle["counts"] = empty_rle["counts"].decode("ascii")
    anns = [
        _ann(1, 1),  # fine
        _ann(2, 1, segm=[[1, 1, 5, 5]]),  # 2 points
        _ann(3, 1, segm=[[1, 1]]),  # 1 point
        _ann(4, 1, segm=[[3, 3, 9, 9, 15, 15]]),  # collinear: zero area
        _ann(5, 1, segm=empty_rle),  # zero-area RLE
        _ann(6, 1, bbox=[100.0, 100.0, 5.0, 5.0]),  # bbox outside the 40x32 image
        _ann(7, 1, segm=[[20, 20, 30, 20, 30, 30], [0, 0, 1, 1]]),  # one bad part, one good
        _ann(8, 1, segm=[[20, 20, 30, 20, 30, 30]], bbox=[-10.0, 5.0, 12.0, 4.0]),  # partly out
        _ann(9, 1, segm={"counts": "abc", "size": [10, 10]}),  # RLE of the wrong size
        _ann(10, 1, segm=[[0, 0, 1, 1]], iscrowd=1),  # crowd: not checked, kept for eval
    ]
    root = _make_coco(tmp_path, [_img(1, h, w)], anns)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = CocoInstances(root, "train")
    assert len(caught) == 1  # one summary, not one warning per annotation
    msg = str(caught[0].message)
    assert "skipped 6 of 10 annotations" in msg
    assert "polygon with fewer than 3 points: 2 (ids 2, 3)" in msg
    assert "zero-area mask: 2 (ids 4, 5)" in msg
    assert "bbox entirely outside the image: 1 (ids 6)" in msg
    assert "RLE size" in msg and "(ids 9)" in msg
    assert "(ids 7)" in msg  # the cleaned annotation is mentioned too
    assert sorted(ds.skipped_annotations) == [2, 3, 4, 5, 6, 9]
    # training targets: annotations 1, 7 and 8; crowd 10 stays in coco for evaluation
    assert sorted(a["id"] for a in ds.coco.anns.values()) == [1, 7, 8, 10]
    assert ds.coco.anns[7]["segmentation"] == [[20, 20, 30, 20, 30, 30]]
    image, target = ds[0]
    _check_target(image, target, 2)
    assert target["masks"].shape[0] == 3
    tri = decode_rles(mask_utils.frPyObjects([[20, 20, 30, 20, 30, 30]], h, w))[..., 0]
    assert torch.equal(target["masks"][1], torch.from_numpy(tri))


def test_no_warning_for_clean_data(tmp_path, data_shapes_root):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = CocoInstances(data_shapes_root, "val", skip_bad=True)
    assert ds.skipped_annotations == {} and ds.skipped_images == {}

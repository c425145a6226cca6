"""Tests for minisolo.data.find_coco_folder: where the notebooks find real COCO photos.

The order is $MINISOLO_COCO, then data/coco-* subsets, then ../shared/coco-mini; every folder
here is a temporary one, and the environment is monkeypatched.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from minisolo.data import COCO_ENV, CocoFolder, coco_splits, coco_subset_hint, find_coco_folder


def _coco(root: Path, *splits: str) -> Path:
    """A minimal COCO-layout folder: an annotation file and an image folder per split."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split in splits:
        (root / "annotations" / f"instances_{split}.json").write_text(
            json.dumps({"images": [], "annotations": [], "categories": []})
        )
        (root / split).mkdir(exist_ok=True)
    return root


@pytest.fixture()
def places(tmp_path, monkeypatch):
    monkeypatch.delenv(COCO_ENV, raising=False)
    data, shared = tmp_path / "data", tmp_path / "shared" / "coco-mini"
    data.mkdir()

    def find():
        return find_coco_folder(data_dir=data, shared_dirs=[shared])

    return data, shared, find


def test_splits_need_annotations_and_images(tmp_path):
    root = _coco(tmp_path / "c", "train2017", "val2017")
    assert coco_splits(root) == ("val2017", "train2017")  # validation first
    (root / "annotations" / "instances_test2017.json").write_text("{}")  # no test2017/ images
    assert coco_splits(root) == ("val2017", "train2017")
    assert coco_splits(tmp_path / "nothing") == ()


def test_lookup_order(places, tmp_path, monkeypatch):
    data, shared, find = places
    assert find() is None

    _coco(shared, "train2017", "val2017")  # 3. the developers' shared folder
    assert find() == CocoFolder(shared, ("val2017", "train2017"))

    (data / "coco-zebras" / "train2017").mkdir(parents=True)  # a subset still being built
    assert find().root == shared
    _coco(data / "coco-zebras", "train2017")  # 2. a finished subset in data/
    _coco(data / "coco-cats", "val2017")  # the first by name wins
    assert find() == CocoFolder(data / "coco-cats", ("val2017",))
    _coco(data / "not-coco", "val2017")  # only coco-* folders count
    assert find().root == data / "coco-cats"

    env = _coco(tmp_path / "my-coco", "val2017")  # 1. the environment variable
    monkeypatch.setenv(COCO_ENV, str(env))
    assert find() == CocoFolder(env, ("val2017",))


def test_bad_environment_variable_warns_and_falls_back(places, tmp_path, monkeypatch):
    data, _, find = places
    _coco(data / "coco-val2017", "val2017")
    monkeypatch.setenv(COCO_ENV, str(tmp_path / "typo"))
    with pytest.warns(UserWarning, match=f"{COCO_ENV}=.*typo is not a COCO folder"):
        found = find()
    assert found.root == data / "coco-val2017"


def test_default_data_folder_is_data_root(tmp_path, monkeypatch):
    monkeypatch.delenv(COCO_ENV, raising=False)
    monkeypatch.setenv("MINISOLO_DATA", str(tmp_path / "data"))
    _coco(tmp_path / "data" / "coco-val2017", "val2017")
    found = find_coco_folder(shared_dirs=[])
    assert found is not None and found.root == tmp_path / "data" / "coco-val2017"
    root, splits = found  # unpacks like a pair
    assert splits[0] == "val2017"


def test_hint_names_the_command_and_the_download_size(tmp_path, monkeypatch):
    monkeypatch.setenv("MINISOLO_DATA", str(tmp_path / "data"))
    hint = coco_subset_hint(num_images=200)
    assert "253 MB annotations zip" in hint and "about 32 MB of images" in hint
    command = f"minisolo data coco-subset --out {tmp_path / 'data' / 'coco-val2017'}"
    assert f"{command} --split val2017 --num-images 200" in hint
    monkeypatch.chdir(tmp_path)  # below the working folder: a relative path
    assert "--out data/coco-val2017 " in coco_subset_hint()

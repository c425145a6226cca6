"""The train-once cache (``minisolo.pretrained``): trained once, loaded afterwards; a changed
recipe or version gets a new key; an interrupted build leaves nothing half-written; the
command builds and lists. Everything runs the fast-mode recipes (a few iterations on 16
images) in a temporary ``MINISOLO_DATA``."""

from __future__ import annotations

import pytest
import torch

import minisolo
from minisolo import cli, engine, model_cache

pytestmark = pytest.mark.slow


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MINISOLO_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("MINISOLO_FAST", "1")
    return tmp_path / "data" / "models"


def test_the_key_follows_the_recipe_the_mode_and_the_version(monkeypatch):
    solo_fast = model_cache.recipe_key(model_cache.recipe("solo", fast=True))
    solo_full = model_cache.recipe_key(model_cache.recipe("solo", fast=False))
    yolact = model_cache.recipe_key(model_cache.recipe("yolact", fast=False))
    assert len({solo_fast, solo_full, yolact}) == 3
    assert model_cache.recipe_key(model_cache.recipe("solo", fast=False)) == solo_full

    changed = {**model_cache.RECIPES["solo"], "iterations": 10}
    monkeypatch.setitem(model_cache.RECIPES, "solo", changed)
    assert model_cache.recipe_key(model_cache.recipe("solo", fast=False)) != solo_full
    monkeypatch.setitem(model_cache.RECIPES, "solo", {**changed, "iterations": 2000})
    monkeypatch.setattr(minisolo, "__version__", "99.0")
    assert model_cache.recipe_key(model_cache.recipe("solo", fast=False)) != solo_full


def test_the_full_recipe_holds_the_resolved_config():
    spec = model_cache.recipe("solo", fast=False)
    assert spec["config"]["lr_schedule"] == "cosine"
    assert spec["config"]["image_short_side"] == 192
    assert spec["data"]["num_train"] == 1200 and spec["iterations"] == 2000


def test_pretrained_trains_once_then_loads(cache, monkeypatch):
    calls = []
    real_train = engine.train
    monkeypatch.setattr(engine, "train", lambda *a, **k: calls.append(1) or real_train(*a, **k))

    model = minisolo.pretrained("solo", device="cpu", progress=False)
    assert len(calls) == 1
    assert not model.training
    info = model.cache_info
    assert info["name"] == "solo" and info["fast"] and info["iterations"] > 0
    assert 0.0 <= info["metrics"]["segm"]["AP"] <= 1.0
    assert "cached solo" in model_cache.describe(info)

    again = minisolo.pretrained("solo", device="cpu", progress=False)
    assert len(calls) == 1  # loaded, not trained
    for key, value in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[key], value)
    [entry] = model_cache.list_cached()
    assert entry["current"] and entry["name"] == "solo"
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temporary left

    monkeypatch.setitem(model_cache.RECIPES, "solo", {**model_cache.RECIPES["solo"], "seed": 1})
    monkeypatch.setattr(model_cache, "recipe_key", lambda spec: "another")
    [entry] = model_cache.list_cached()
    assert not entry["current"]  # an old recipe's model is listed as such


def test_an_interrupted_build_leaves_no_model_behind(cache, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        model_cache.build("yolact", device="cpu", progress=False)
    assert not model_cache.entry_dir("yolact").exists()
    assert list(cache.iterdir()) == []


def test_unknown_names_are_a_clear_error(cache, capsys):
    with pytest.raises(model_cache.UnknownModel, match="choose from"):
        minisolo.pretrained("solov3")
    assert cli.main(["models", "build", "solov3"]) == 2
    assert "solov3" in capsys.readouterr().err


def test_models_command_builds_and_lists(cache, capsys):
    assert cli.main(["models", "list"]) == 0
    assert "no trained models yet" in capsys.readouterr().out
    assert cli.main(["models", "build", "yolact", "--device", "cpu"]) == 0
    assert "cached yolact" in capsys.readouterr().out
    assert cli.main(["models", "list"]) == 0
    listed = capsys.readouterr().out
    assert "cached yolact" in listed and "mask AP" in listed
    assert (model_cache.entry_dir("yolact") / "model.pt").is_file()


def test_the_demo_uses_the_cached_model(cache, tmp_path, capsys):
    assert cli.main(["demo", "--out", str(tmp_path / "demo"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "model: cached solo" in out
    assert (tmp_path / "demo" / "predictions.png").is_file()
    assert (model_cache.entry_dir("solo") / "model.pt").is_file()

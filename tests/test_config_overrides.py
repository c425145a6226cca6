"""Configuration from what a user types: ``key=value`` strings (``minisolo train --set``) and
JSON files (``--config FILE.json``), each value checked against the field's type annotation.
Nothing here trains a model; tests/test_cli.py runs the command with them."""

from __future__ import annotations

import json

import pytest

from minisolo import cli
from minisolo.config import (
    ConfigError,
    SOLOConfig,
    SOLOv2Config,
    YOLACTConfig,
    check_overrides,
    load_config,
    parse_overrides,
    preset,
    with_overrides,
)


# ------------------------------------------------------------------------------ parse_overrides
@pytest.mark.parametrize(
    ("cls", "item", "expected"),
    [
        (SOLOConfig, "stacked_convs=4", 4),  # int
        (SOLOConfig, "lr=0.005", 0.005),  # float
        (SOLOConfig, "lr=1e-3", 0.001),
        (SOLOConfig, "lr=1", 1),  # an int is a float too
        (SOLOConfig, "norm_eval=false", False),  # bool
        (SOLOConfig, "norm_eval=True", True),
        (SOLOConfig, "norm_eval=no", False),
        (SOLOConfig, "lr_schedule=cosine", "cosine"),  # str
        (SOLOConfig, 'nms="mask"', "mask"),
        (SOLOConfig, "nms=123", "123"),  # a str field takes the text as written
        (YOLACTConfig, "grad_clip=None", None),  # float | None
        (YOLACTConfig, "grad_clip=null", None),
        (YOLACTConfig, "grad_clip=10", 10),
        (YOLACTConfig, "image_short_side=none", None),  # int | None
        (SOLOConfig, "lr_steps=[8,11]", (8, 11)),  # tuple[int, ...]
        (SOLOConfig, "lr_steps=(8, 11)", (8, 11)),
        (SOLOConfig, "lr_steps=8,11", (8, 11)),
        (SOLOConfig, "image_short_side=640", 640),  # int | tuple[int, ...]
        (SOLOConfig, "image_short_side=[640,800]", (640, 800)),
        (YOLACTConfig, "anchor_scales=[24,48.5,96,192,384]", (24, 48.5, 96, 192, 384)),
        (SOLOConfig, "class_names=circle,square", ("circle", "square")),  # tuple[str, ...]
        (
            SOLOConfig,  # tuple[tuple[float, float], ...]
            "scale_ranges=[[1,64],[32,128],[64,256],[128,512],[256,1024]]",
            ((1, 64), (32, 128), (64, 256), (128, 512), (256, 1024)),
        ),
        (SOLOv2Config, "kernel_channels=32", 32),
    ],
)
def test_parse_overrides_reads_each_type(cls, item, expected):
    key = item.partition("=")[0]
    value = parse_overrides(cls, [item])[key]
    assert value == expected and type(value) is type(expected)
    if isinstance(expected, tuple):
        assert all(type(a) is type(b) for a, b in zip(value, expected, strict=True))


def test_parse_overrides_later_items_win_and_values_build_a_config():
    values = parse_overrides(SOLOConfig, ["lr=0.1", "lr_schedule=cosine", "lr=0.005"])
    assert values == {"lr": 0.005, "lr_schedule": "cosine"}
    config = with_overrides(preset("tiny"), values)
    assert (config.lr, config.lr_schedule, config.grids) == (0.005, "cosine", preset("tiny").grids)


@pytest.mark.parametrize(
    ("cls", "item", "wanted"),
    [
        (SOLOConfig, "lr=fast", "SOLOConfig.lr is float (e.g. lr=0.01)"),
        (SOLOConfig, "stacked_convs=2.5", "stacked_convs is int"),
        (SOLOConfig, "norm_eval=2", "norm_eval is bool"),
        (SOLOConfig, "lr_steps=9", "lr_steps is tuple[int, ...]"),
        (SOLOConfig, "scale_ranges=[[1,2,3]]", "tuple[tuple[float, float], ...]"),
        (SOLOConfig, "grad_clip=none", "grad_clip is float"),  # SOLO clips: no None
        (YOLACTConfig, "grad_clip=off", "grad_clip is float | None"),
    ],
)
def test_a_value_of_the_wrong_type_is_a_config_error_naming_the_type(cls, item, wanted):
    with pytest.raises(ConfigError) as error:
        parse_overrides(cls, [item])
    message = str(error.value)
    assert "\n" not in message and wanted in message and item in message


def test_an_unknown_key_lists_the_valid_keys_closest_first():
    with pytest.raises(ConfigError) as error:
        parse_overrides(SOLOConfig, ["lr_schedul=cosine"])
    message = str(error.value)
    assert "\n" not in message and "'lr_schedul'" in message
    assert "did you mean lr_schedule?" in message
    keys = message.split("valid keys: ")[1].split(", ")
    assert keys[0] == "lr_schedule"
    assert sorted(keys) == sorted(f.name for f in SOLOConfig.__dataclass_fields__.values())
    # a key of another model's config
    with pytest.raises(ConfigError, match="unknown SOLOConfig key 'num_prototypes'"):
        parse_overrides(SOLOConfig, ["num_prototypes=8"])


@pytest.mark.parametrize("item", ["lr", "=3", ""])
def test_an_item_without_key_and_value_is_a_config_error(item):
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(SOLOConfig, [item])


def test_a_value_post_init_refuses_is_a_config_error():
    assert issubclass(ConfigError, ValueError)
    values = parse_overrides(SOLOConfig, ["grids=[1,2]"])  # the right type, the wrong length
    with pytest.raises(ConfigError, match="one entry per level"):
        with_overrides(preset("tiny"), values)


def test_check_overrides_checks_json_values():
    values = check_overrides(SOLOConfig, {"lr": 0.005, "lr_steps": [8, 11], "norm_eval": True})
    assert values == {"lr": 0.005, "lr_steps": (8, 11), "norm_eval": True}
    with pytest.raises(ConfigError, match='lr="fast"'):
        check_overrides(SOLOConfig, {"lr": "fast"})
    with pytest.raises(ConfigError, match="valid keys"):
        check_overrides(SOLOConfig, {"lrr": 0.1})


# ------------------------------------------------------------------------------ load_config
def test_load_config_names_a_preset_or_refuses_an_unknown_one():
    assert load_config("tiny") == preset("tiny")
    assert load_config("paper", model="yolact") == preset("paper", model="yolact")
    assert load_config("tiny", model="decoupled_solo").model == "decoupled_solo"
    with pytest.raises(ConfigError, match="unknown preset 'huge'; choose from paper, tiny"):
        load_config("huge")


def test_load_config_reads_a_whole_config_file_as_written_by_to_dict(tmp_path):
    wanted = with_overrides(preset("tiny", model="yolact"), {"lr": 0.005, "grad_clip": None})
    path = tmp_path / "config.json"
    path.write_text(json.dumps(wanted.to_dict(), indent=2))
    assert load_config(path) == wanted  # the file says which model
    assert load_config(str(path), model="yolact") == wanted
    with pytest.raises(ConfigError, match="is a yolact config, not solo"):
        load_config(path, model="solo")


def test_load_config_reads_a_preset_file_with_overrides(tmp_path):
    path = tmp_path / "mine.json"
    content = {"preset": "tiny", "model": "solo", "overrides": {"lr": 0.005, "lr_steps": [8, 11]}}
    path.write_text(json.dumps(content))
    config = load_config(path)
    assert config == with_overrides(preset("tiny"), {"lr": 0.005, "lr_steps": (8, 11)})
    path.write_text(json.dumps({"preset": "tiny"}))  # model and overrides are optional
    assert load_config(path, model="solov2") == preset("tiny", model="solov2")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"preset": "tiny", "overrides": {"lr": "fast"}}', "SOLOConfig.lr is float"),
        ('{"preset": "huge"}', "unknown preset 'huge'"),
        ('{"preset": "tiny", "extra": 1}', "unknown keys ['extra']"),
        ('{"model": "solo", "lrr": 0.1}', "unknown SOLOConfig key 'lrr'"),
        ('{"model": "maskrcnn"}', "unknown model 'maskrcnn'"),
        ("[1, 2]", "must hold a JSON object"),
        ("{not json", "is not valid JSON"),
    ],
)
def test_a_bad_config_file_is_a_config_error(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert message in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.json")


# ------------------------------------------------------------------------------ the command
def _train_config(*args: str):
    return cli.train_config(cli.build_parser().parse_args(["train", "--data", "d", *args]))


def test_train_options_are_overrides_applied_after_set():
    config = _train_config("--set", "lr=0.1", "stacked_convs=2", "--set", "nms=mask")
    assert (config.lr, config.stacked_convs, config.nms) == (0.1, 2, "mask")
    config = _train_config("--set", "lr=0.1", "--lr", "0.02", "--lr-schedule", "cosine")
    assert (config.lr, config.lr_schedule) == (0.02, "cosine")
    config = _train_config("--image-size", "128", "--set", "image_max_size=200")
    assert (config.image_short_side, config.image_max_size) == (128, 128)
    config = _train_config("--model", "yolact", "--image-size", "128")
    assert (config.image_size, config.image_short_side) == (128, 128)
    assert _train_config("--lr", "0").lr == 0  # a zero is a value, not "not given"

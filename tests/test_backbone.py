import pytest
import torch

from minisolo import FPN, ResNet, load_torchvision_weights

# A few of torchvision's resnet50 keys, written out (torchvision itself is not a dependency).
TORCHVISION_R50_KEYS = [
    "conv1.weight",
    "bn1.running_mean",
    "layer1.0.conv1.weight",
    "layer1.0.downsample.0.weight",
    "layer1.0.downsample.1.running_var",
    "layer2.3.bn3.weight",
    "layer3.5.conv2.weight",
    "layer4.2.bn3.running_var",
]


def test_resnet50_keys_match_torchvision_names():
    keys = set(ResNet(50).state_dict())
    for key in TORCHVISION_R50_KEYS:
        assert key in keys
    assert not any(k.startswith("fc.") for k in keys)
    # torchvision resnet50 has 320 entries including fc.weight and fc.bias
    assert len(keys) == 318


def test_resnet18_and_34_layouts():
    r18 = set(ResNet(18).state_dict())
    r34 = set(ResNet(34).state_dict())
    assert "layer4.1.bn2.running_var" in r18 and "layer4.2.conv1.weight" not in r18
    assert "layer3.5.conv2.weight" in r34 and "layer1.0.downsample.0.weight" not in r34
    assert "layer2.0.downsample.0.weight" in r18


def test_feature_strides_and_channels():
    net = ResNet(18, width=16)
    feats = net(torch.zeros(1, 3, 64, 96))
    assert [f.shape[-2:] for f in feats] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    assert net.out_channels == [16, 32, 64, 128]
    assert ResNet(50).out_channels == [256, 512, 1024, 2048]


def _fake_torchvision_file(tmp_path, depth):
    state = {
        k: torch.randn_like(v.float()).to(v.dtype) for k, v in ResNet(depth).state_dict().items()
    }
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    state["fc.weight"] = torch.randn(1000, 512)
    state["fc.bias"] = torch.randn(1000)
    path = tmp_path / f"resnet{depth}.pth"
    torch.save(state, path)
    return path, state


def test_load_torchvision_style_weights(tmp_path):
    path, state = _fake_torchvision_file(tmp_path, 18)
    net = ResNet(18, frozen_stages=1)
    ignored = load_torchvision_weights(net, path)
    assert sorted(ignored) == ["fc.bias", "fc.weight"]
    torch.testing.assert_close(
        net.state_dict()["layer4.1.conv2.weight"], state["layer4.1.conv2.weight"]
    )
    assert not net.conv1.weight.requires_grad and not net.layer1[0].conv1.weight.requires_grad
    assert net.layer2[0].conv1.weight.requires_grad


def test_load_rejects_wrong_depth_and_garbage(tmp_path):
    path, _ = _fake_torchvision_file(tmp_path, 18)
    with pytest.raises(ValueError, match="resnet18.pth"):
        load_torchvision_weights(ResNet(34), path)
    garbage = tmp_path / "broken.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="broken.pth"):
        load_torchvision_weights(ResNet(18), garbage)
    with pytest.raises(FileNotFoundError):
        load_torchvision_weights(ResNet(18), tmp_path / "missing.pth")


def test_norm_eval_keeps_batchnorm_frozen():
    net = ResNet(18, width=8, norm_eval=True).train()
    assert all(not m.training for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = net.bn1.running_mean.clone()
    net(torch.randn(2, 3, 32, 32))
    torch.testing.assert_close(net.bn1.running_mean, before)


def test_fpn_levels_p2_to_p6():
    net = ResNet(18, width=16)
    fpn = FPN(net.out_channels, 32, num_outs=5)
    outs = fpn(net(torch.zeros(1, 3, 128, 128)))
    assert [tuple(o.shape) for o in outs] == [
        (1, 32, 32, 32),
        (1, 32, 16, 16),
        (1, 32, 8, 8),
        (1, 32, 4, 4),
        (1, 32, 2, 2),
    ]

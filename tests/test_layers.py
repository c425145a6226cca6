import torch

from minisolo import CoordConv2d, coord_features
from minisolo.layers import ConvGNReLU, conv_gn_relu_tower, scale_gradient


def test_coord_features_values_by_hand():
    x = torch.zeros(2, 5, 3, 4)
    coords = coord_features(x)
    assert coords.shape == (2, 2, 3, 4)
    # channel 0 is x: constant down each column, -1 .. 1 across W = 4 columns
    expected_x = torch.tensor([-1.0, -1 / 3, 1 / 3, 1.0]).expand(3, 4)
    expected_y = torch.tensor([-1.0, 0.0, 1.0])[:, None].expand(3, 4)
    torch.testing.assert_close(coords[0, 0], expected_x)
    torch.testing.assert_close(coords[1, 1], expected_y)


def test_coord_features_follow_dtype_and_device():
    x = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    assert coord_features(x).dtype == torch.float64


def test_coordconv_sees_coordinates():
    conv = CoordConv2d(3, 1, kernel_size=1, bias=False)
    assert conv.weight.shape == (1, 5, 1, 1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 3] = 1.0  # pick the x channel
    out = conv(torch.zeros(1, 3, 2, 5))
    torch.testing.assert_close(out[0, 0, 1], torch.linspace(-1, 1, 5))


def test_plain_conv_is_translation_equivariant_but_coordconv_is_not():
    torch.manual_seed(0)
    image = torch.zeros(1, 1, 16, 16)
    image[0, 0, 4, 4] = 1.0
    shifted = torch.roll(image, shifts=(6, 6), dims=(2, 3))
    plain = torch.nn.Conv2d(1, 1, 3, padding=1)
    coord = CoordConv2d(1, 1, 3, padding=1)
    out_plain = torch.roll(plain(image), shifts=(6, 6), dims=(2, 3))
    torch.testing.assert_close(out_plain[..., 7:, 7:], plain(shifted)[..., 7:, 7:])
    out_coord = torch.roll(coord(image), shifts=(6, 6), dims=(2, 3))
    assert not torch.allclose(out_coord[..., 7:, 7:], coord(shifted)[..., 7:, 7:])


def test_conv_gn_relu_tower_shapes():
    tower = conv_gn_relu_tower(10, 32, num_convs=3, num_groups=8)
    assert len(tower) == 3 and isinstance(tower[0], ConvGNReLU)
    out = tower(torch.randn(2, 10, 7, 9))
    assert out.shape == (2, 32, 7, 9)
    assert (out >= 0).all()


def test_live_tensor_memory_counts_the_peak_by_hand():
    """Two 4 MB tensors alive at once, one freed before the third, then the 4-byte sum while
    the second and third are alive: the peak is 8 MB + 4 bytes."""
    from minisolo.memory import peak_tensor_memory

    def work():
        first = torch.ones(1000, 1000)
        second = first * 2
        del first
        third = second + 1
        return third.sum()

    total, peak = peak_tensor_memory(work)
    assert float(total) == 3e6
    assert peak == 2 * 1000 * 1000 * 4 + 4


def test_scale_gradient_keeps_values_and_scales_the_gradient_by_hand():
    x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    for factor, expected in ((1.0, [2.0, 2.0, 2.0]), (0.25, [0.5, 0.5, 0.5]), (0.0, None)):
        x.grad = None
        y = scale_gradient(x, factor)
        assert torch.equal(y, x)  # the forward pass is the identity
        if expected is None:  # factor 0 is a detach: nothing flows back
            assert not y.requires_grad
            continue
        (2 * y).sum().backward()  # d/dx of sum(2 y) is 2, times the factor
        assert torch.equal(x.grad, torch.tensor(expected))

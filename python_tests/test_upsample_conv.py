"""upsample_conv2d against nearest ×2 upsampling then conv2d (the pair it replaces), and the generators that use
it against the same networks written with the pair."""
import pytest
import torch
import torch.nn.functional as F

from cbgan_ext.models.bagan import BAGANGenerator
from cbgan_ext.models.biggan import GBlock
from cbgan_ext.nn import SNConv2d, UpsampleConv2d, upsample_conv2d

U32 = 2.0 ** -24  # float32 unit roundoff


def _pair(x, w, b=None):
    return F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), w, b, padding=w.shape[-1] // 2)


def _bound(x, w, b=None):
    """Worst-case error of a float32 evaluation of either summation, |err| ≤ n·u·Σ|x||w| (+|b|), with n the terms
    an output sums (C·k² products) plus the folding of up to ⌈k/2⌉² taps into one: a bound both orders obey."""
    k = w.shape[-1]
    n = w.shape[1] * k * k + ((k + 1) // 2) ** 2 + 1
    scale = _pair(x.abs().double(), w.abs().double(), None if b is None else b.abs().double())
    return n * U32 * scale


SHAPES = [(2, 3, 5, 6), (1, 1, 1, 1), (0, 2, 4, 4), (3, 4, 8, 3)]


@pytest.mark.parametrize("k", [1, 3, 5, 7])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_the_pair_in_float64(k, shape):
    g = torch.Generator().manual_seed(k * 100 + shape[2])
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    w = torch.randn(5, shape[1], k, k, generator=g, dtype=torch.float64)
    b = torch.randn(5, generator=g, dtype=torch.float64)
    for bias in (b, None):
        got, ref = upsample_conv2d(x, w, bias), _pair(x, w, bias)
        assert got.shape == ref.shape == (shape[0], 5, 2 * shape[2], 2 * shape[3])
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-12 * (1 + ref.abs().max().item() if ref.numel() else 1))


@pytest.mark.parametrize("k", [3, 5])
def test_float32_within_the_rounding_bound(k):
    g = torch.Generator().manual_seed(k)
    x = torch.randn(4, 16, 8, 8, generator=g)
    w = torch.randn(8, 16, k, k, generator=g) / (4 * k)
    b = torch.randn(8, generator=g)
    err = (upsample_conv2d(x, w, b).double() - _pair(x.double(), w.double(), b.double())).abs()
    assert (err <= _bound(x, w, b)).all()


@pytest.mark.parametrize("k", [1, 3, 5])
def test_gradcheck_and_gradgradcheck(k):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, k, k, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(upsample_conv2d, (x, w, b))
    assert torch.autograd.gradgradcheck(upsample_conv2d, (x, w, b))
    # the gradients are the pair's
    gy = torch.randn(2, 3, 6, 8, generator=g, dtype=torch.float64)
    ours = torch.autograd.grad(upsample_conv2d(x, w, b), (x, w, b), gy)
    theirs = torch.autograd.grad(_pair(x, w, b), (x, w, b), gy)
    for a, r in zip(ours, theirs):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k", [1, 3, 5, 7])
def test_non_finite_input_spreads_as_in_the_pair(k):
    """NaN reaches the pixels it reaches through the pair. An inf may come out ±inf where the pair, adding
    w₁·inf + w₂·inf of mixed signs, gives NaN: the non-finite pixels are the same."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 2, 6, 5, generator=g, dtype=torch.float64)
    w = torch.randn(2, 2, k, k, generator=g, dtype=torch.float64)
    x[0, 1, 2, 3] = float("nan")
    got, ref = upsample_conv2d(x, w), _pair(x, w)
    assert torch.equal(got.isnan(), ref.isnan()) and got.isnan().any() and not got.isnan().all()
    x[0, 0, 5, 0] = float("inf")
    got, ref = upsample_conv2d(x, w), _pair(x, w)
    assert torch.equal(got.isfinite(), ref.isfinite()) and got.isinf().any()


@pytest.mark.parametrize("args, match", [
    ((torch.zeros(2, 3, 4), torch.zeros(1, 3, 3, 3)), r"x must be \[B, C, H, W\], got \(2, 3, 4\)"),
    ((torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 2, 2)), r"k odd, got \(1, 3, 2, 2\)"),
    ((torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 3, 5)), r"k odd, got \(1, 3, 3, 5\)"),
    ((torch.zeros(1, 2, 4, 4), torch.zeros(1, 3, 3, 3)), "x has 2 channels, weight expects 3"),
    ((torch.zeros(1, 3, 4, 4), torch.zeros(2, 3, 3, 3), torch.zeros(3)), r"bias must be \[2\], got \(3,\)"),
])
def test_bad_input_is_refused_in_one_line(args, match):
    with pytest.raises(ValueError, match=match) as e:
        upsample_conv2d(*args)
    assert "\n" not in str(e.value) and str(e.value).startswith("upsample_conv2d:")


def test_module_is_conv2d_with_the_upsampling_first():
    m = UpsampleConv2d(3, 4, 5).double()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(m(x), _pair(x, m.weight, m.bias), rtol=1e-12, atol=1e-12)
    assert set(dict(m.named_parameters())) == {"weight", "bias"}
    with pytest.raises(ValueError, match="UpsampleConv2d: an odd kernel"):
        UpsampleConv2d(3, 4, 4)
    with pytest.raises(ValueError, match="UpsampleConv2d: an odd kernel"):
        UpsampleConv2d(3, 4, 3, stride=2)


def test_bagan_generator_is_the_released_layout():
    """BAGAN's decoder with the fused module gives the released layer order's output (upsample, 5×5 conv, ReLU),
    and its parameter names are those of that layout."""
    torch.manual_seed(0)
    G = BAGANGenerator(width=0.125, num_classes=10).double().eval()
    assert [n for n, _ in G.named_parameters() if n.startswith("blocks")] == ["blocks.1.weight", "blocks.4.weight"]
    z, y = torch.randn(3, G.z_dim, dtype=torch.float64), torch.tensor([0, 4, 9])
    h = G.dense(z * G.embed(y)).view(3, G.c0, G.r, G.r)
    for conv in (G.blocks[1], G.blocks[4]):
        h = F.relu(_pair(h, conv.weight))
    ref = torch.tanh(G.out(F.pad(h, (0, 1, 0, 1))))
    torch.testing.assert_close(G(z, y), ref, rtol=1e-12, atol=1e-12)


def test_biggan_gblock_is_upsample_then_convolutions():
    torch.manual_seed(0)
    blk = GBlock(4, 6, 10).double().eval()  # eval: the spectral norms' u, v stay put
    x, y = torch.randn(3, 4, 4, 4, dtype=torch.float64), F.one_hot(torch.tensor([1, 2, 3]), 10).double()
    up = F.interpolate(F.relu(blk.bn1(x, y)), scale_factor=2, mode="nearest")
    h = blk.conv2(F.relu(blk.bn2(blk.conv1(up), y)))
    ref = h + blk.shortcut(F.interpolate(x, scale_factor=2, mode="nearest"))
    torch.testing.assert_close(blk(x, y), ref, rtol=1e-12, atol=1e-12)


def test_biggan_gblock_trains_its_spectral_norms_as_before():
    """In training mode each SN conv's power iteration runs once a forward, as when the block called the convs."""
    torch.manual_seed(0)
    blk = GBlock(4, 6, 10).double().train()
    assert isinstance(blk.conv1, SNConv2d)
    u0 = blk.conv1.weight_u.clone(), blk.shortcut.weight_u.clone()
    blk(torch.randn(2, 4, 4, 4, dtype=torch.float64), F.one_hot(torch.tensor([0, 1]), 10).double())
    assert not torch.equal(u0[0], blk.conv1.weight_u) and not torch.equal(u0[1], blk.shortcut.weight_u)

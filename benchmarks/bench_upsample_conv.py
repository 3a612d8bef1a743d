"""upsample_conv2d forward+backward against the pair it replaces (nearest ×2 upsampling, then conv2d), at the
generators' shapes: BAGAN's G at width 0.25 (5×5 convs, batch 141: 128 + the released 13 fakes) and BigGAN-32's G
at ch 8 (3×3 conv of each up-block, batch 64). Group = one shape; ratio = pair / fused."""
import pytest
import torch
import torch.nn.functional as F

from cbgan_ext.nn import upsample_conv2d

# (name, B, C_in, C_out, H (input), k)
SHAPES = [("bagan-G-1", 141, 32, 64, 8, 5), ("bagan-G-2", 141, 64, 32, 16, 5),
          ("biggan-G-block2", 64, 32, 32, 8, 3), ("biggan-G-block3", 64, 32, 32, 16, 3)]


def _pair(x, w, b):
    return F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), w, b, padding=w.shape[-1] // 2)


@pytest.mark.parametrize("impl", ["fused", "pair"])
@pytest.mark.parametrize("name,B,cin,cout,H,k", SHAPES)
def test_upsample_conv_fwd_bwd(benchmark, impl, name, B, cin, cout, H, k):
    benchmark.group = f"upsample_conv2d fwd+bwd cpu {name} B={B} {cin}->{cout} {H}->{2 * H} k={k}"
    benchmark.extra_info.update(op="upsample_conv2d", impl=impl, device="cpu",
                                shape=f"B={B},C={cin}->{cout},H={H},k={k}")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, cin, H, H, generator=g, requires_grad=True)
    w = (torch.randn(cout, cin, k, k, generator=g) / (cin * k)).requires_grad_()
    b = torch.zeros(cout, requires_grad=True)
    f = upsample_conv2d if impl == "fused" else _pair

    def step():
        out = f(x, w, b)
        out.sum().backward()
        return out

    for _ in range(3):
        step()
    benchmark(step)

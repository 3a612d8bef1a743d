"""diff_augment forward+backward: fused op vs the eager reference vs torch.compile(reference).

Every variant draws its own random parameters each step (as training does), policy color,translation,cutout.
Group = one shape; the summary script divides each reference time by the fused time of its group.
"""
import pytest
import torch

from conftest import DEVICES, IMPLS, implementation, timed

SHAPES = [(256, 3, 32, 32), (64, 3, 128, 128)]
POLICY = "color,translation,cutout"




@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_diff_augment_fwd_bwd(benchmark, device, impl, shape):
    B, C, H, W = shape
    benchmark.group = f"diff_augment fwd+bwd {device} B={B} {C}x{H}x{W}"
    benchmark.extra_info.update(op="diff_augment", impl=impl, device=device, shape=f"B={B},{C}x{H}x{W}")
    x = torch.randn(shape, device=device, requires_grad=True)
    g = torch.randn(shape, device=device)
    f = implementation("diff_augment", impl)

    def step():
        y = f(x, POLICY)
        y.backward(g)
        return y

    run = timed(step, device)
    for _ in range(3):
        run()  # warm-up, and compilation for the compiled variant
    benchmark(run)

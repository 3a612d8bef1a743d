"""class_balancing_loss forward+backward: fused op vs the eager reference vs torch.compile(reference).

Group = one shape; the summary script divides each reference time by the fused time of its group.
"""
import pytest
import torch

from conftest import DEVICES, IMPLS, implementation, timed

SHAPES = [(256, 10), (256, 100), (256, 1010)]




@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("B,K", SHAPES)
def test_class_balancing_fwd_bwd(benchmark, device, impl, B, K):
    benchmark.group = f"class_balancing_loss fwd+bwd {device} B={B} K={K}"
    benchmark.extra_info.update(op="class_balancing_loss", impl=impl, device=device, shape=f"B={B},K={K}")
    logits = torch.randn(B, K, device=device, requires_grad=True)
    w = torch.rand(K, device=device) + 0.1
    f = implementation("class_balancing_loss", impl)

    def step():
        loss = f(logits, w)
        loss.backward()
        return loss

    run = timed(step, device)
    for _ in range(3):
        run()  # warm-up, and compilation for the compiled variant
    benchmark(run)

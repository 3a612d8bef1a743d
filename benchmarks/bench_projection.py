"""soft_label_projection forward+backward: fused op vs the eager reference vs torch.compile(reference).

B = 256, (L, K) in {(512, 10), (1024, 100), (1024, 1010)}. Soft labels with gradients for h, E and y
(the op's full backward), and hard labels (the cGAN projection; eager is the embedding gather). Group = one
shape and label kind; the summary script divides each reference time by the fused time of its group.
"""
import pytest
import torch

from conftest import DEVICES, IMPLS, implementation, timed

B = 256
SHAPES = [(512, 10), (1024, 100), (1024, 1010)]




@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("labels", ["soft", "hard"])
@pytest.mark.parametrize("L,K", SHAPES)
def test_soft_label_projection_fwd_bwd(benchmark, device, impl, labels, L, K):
    benchmark.group = f"soft_label_projection fwd+bwd {device} {labels} B={B} L={L} K={K}"
    benchmark.extra_info.update(op="soft_label_projection", impl=impl, device=device,
                                shape=f"B={B},L={L},K={K},{labels}")
    h = torch.randn(B, L, device=device, requires_grad=True)
    E = torch.randn(K, L, device=device, requires_grad=True)
    if labels == "soft":
        y = torch.softmax(torch.randn(B, K, device=device), 1).requires_grad_()
    else:
        y = torch.randint(0, K, (B,), device=device)
    f = implementation("soft_label_projection", impl)

    def step():
        out = f(h, E, y)
        out.sum().backward()
        return out

    run = timed(step, device)
    for _ in range(3):
        run()  # warm-up, and compilation for the compiled variant
    benchmark(run)

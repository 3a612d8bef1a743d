"""Autocast kernels of the ops (issue 15): mixed dtypes work under torch.autocast without the modules."""
import pytest
import torch

from cbgan_ext import ops, reference
from conftest import DEVICES


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("labels", ["soft_bf16", "soft_fp32", "hard"])
def test_projection_mixed_dtypes_under_autocast(device, labels):
    dt = torch.bfloat16 if device == "cpu" else torch.float16
    h = torch.randn(8, 24, device=device).to(dt).requires_grad_()  # what an autocast layer hands on
    E = torch.randn(5, 24, device=device, requires_grad=True)       # a float32 parameter
    y = {"soft_bf16": torch.softmax(torch.randn(8, 5, device=device), 1).to(dt),
         "soft_fp32": torch.softmax(torch.randn(8, 5, device=device), 1),
         "hard": torch.randint(0, 5, (8,), device=device)}[labels]
    with pytest.raises(RuntimeError, match="soft_label_projection: class_embedding must have h's dtype"):
        ops.soft_label_projection(h, E, y)  # outside autocast the op wants one dtype
    with torch.autocast(device, dtype=dt):
        out = ops.soft_label_projection(h, E, y)
    assert out.dtype == torch.float32  # the widest input type
    yf = y.float() if y.is_floating_point() else y
    expect = reference.soft_label_projection(h.detach().float(), E.detach(), yf)
    assert torch.allclose(out, expect, rtol=1e-5, atol=1e-5)
    g = torch.randn(8, device=device)
    out.backward(g)
    h2, E2 = h.detach().float().requires_grad_(), E.detach().clone().requires_grad_()
    reference.soft_label_projection(h2, E2, yf).backward(g)
    assert h.grad.dtype == dt and E.grad.dtype == torch.float32
    assert torch.allclose(E.grad, E2.grad, rtol=1e-5, atol=1e-5)
    assert torch.allclose(h.grad.float(), h2.grad, rtol=1e-2, atol=1e-2)


def test_projection_one_low_precision_dtype_stays_low_precision():
    h, E = torch.randn(4, 16).bfloat16(), torch.randn(3, 16).bfloat16()
    y = torch.softmax(torch.randn(4, 3), 1).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ops.soft_label_projection(h, E, y)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, ops.soft_label_projection(h, E, y))


def test_projection_autocast_under_compile():
    h, E = torch.randn(4, 16).bfloat16(), torch.randn(3, 16)
    y = torch.softmax(torch.randn(4, 3), 1)

    def f(h, E, y):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return ops.soft_label_projection(h, E, y)

    got = torch.compile(f, fullgraph=True, backend="aot_eager")(h, E, y)
    assert got.dtype == torch.float32 and torch.allclose(got, f(h, E, y))


@pytest.mark.parametrize("device", DEVICES)
def test_class_balancing_under_autocast_runs_in_float32(device):
    x = torch.randn(32, 10, dtype=torch.float64, device=device)
    w = torch.rand(10, device=device) + 0.1
    xb = x.bfloat16().requires_grad_()
    with torch.autocast(device, dtype=torch.bfloat16):
        loss, counts = ops.class_balancing_loss_with_counts(xb, w)
        _, _, probs, _ = torch.ops.cbgan_ext.class_balancing_loss_forward(xb, w)
    assert loss.dtype == torch.float32 and probs.dtype == torch.float32
    g, = torch.autograd.grad(loss, xb)
    xr = xb.detach().float().requires_grad_()
    ref = reference.class_balancing_loss(xr, w)
    gr, = torch.autograd.grad(ref, xr)
    assert torch.allclose(loss, ref, rtol=1e-6, atol=1e-7)
    assert g.dtype == torch.bfloat16 and torch.allclose(g.float(), gr, rtol=1e-2, atol=1e-4)
    assert torch.equal(counts, reference.argmax_counts(xb.float()))

"""Double backward: a real one for the projection and the class-balancing loss, a loud error elsewhere (issue 15)."""
import warnings

import pytest
import torch

from cbgan_ext import ops, reference
from cbgan_ext.nn import SNLinear
from conftest import DEVICES


def _einsum(h, E, y):
    if not y.is_floating_point():
        y = torch.nn.functional.one_hot(y, E.shape[0]).to(h.dtype)
    return torch.einsum("bl,kl,bk->b", h, E, y)


def _inputs(B=5, K=4, L=6, transposed=False, device="cpu"):
    f64 = dict(dtype=torch.float64, device=device)
    h = torch.randn(B, L, **f64).requires_grad_()
    E = torch.randn(L, K, **f64).t() if transposed else torch.randn(K, L, **f64)
    E.requires_grad_()
    y = torch.softmax(torch.randn(B, K, **f64), 1).requires_grad_()
    return h, E, y


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("device", DEVICES)
def test_projection_gradgradcheck_soft_and_hard(transposed, device):
    h, E, y = _inputs(transposed=transposed, device=device)
    assert torch.autograd.gradgradcheck(ops.soft_label_projection, (h, E, y))
    lab = torch.tensor([0, 3, 1, 3, 2], device=device)
    assert torch.autograd.gradgradcheck(lambda h, E: ops.soft_label_projection(h, E, lab), (h, E))
    # third order through the ATen double backward
    assert torch.autograd.gradgradcheck(
        lambda h, E, y: torch.autograd.grad(ops.soft_label_projection(h, E, y).pow(2).sum(), (h, E, y),
                                            create_graph=True), (h, E, y))


@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("wrt", ["h", "y", "all"])
def test_projection_gradient_penalty_matches_einsum(hard, wrt):
    # R1 / gradient penalty through a projection discriminator: ‖∂D/∂input‖² differentiated again
    h, E, y = _inputs(B=7, K=5, L=9)
    if hard:
        y = torch.tensor([0, 4, 1, 1, 3, 2, 0])
    scale = torch.randn(7, dtype=torch.float64)

    def penalty(f):
        out = (f(h, E, y) * scale).pow(2)  # non-linear in the output, so every second derivative is exercised
        inputs = {"h": (h,), "y": (y,) if not hard else (h,), "all": (h, E) + (() if hard else (y,))}[wrt]
        grads = torch.autograd.grad(out.sum(), inputs, create_graph=True)
        p = sum((g * g).sum() for g in grads)
        return torch.autograd.grad(p, (h, E) + (() if hard else (y,)), allow_unused=True)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "autograd kernel was not registered" fallback
        got = penalty(ops.soft_label_projection)
    expect = penalty(_einsum)
    for a, b in zip(got, expect):
        assert (a is None) == (b is None)
        if b is not None:
            assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    # the class embedding's gradient is the one that came back None before
    assert got[1] is not None and got[1].abs().sum() > 0


@pytest.mark.parametrize("device", DEVICES)
def test_projection_penalty_float32_through_fused_kernels(device):
    h = torch.randn(16, 32, device=device, requires_grad=True)
    E = torch.randn(10, 32, device=device, requires_grad=True)
    y = torch.softmax(torch.randn(16, 10, device=device), 1)
    gh, = torch.autograd.grad(ops.soft_label_projection(h, E, y).sum(), h, create_graph=True)
    gE, = torch.autograd.grad(gh.pow(2).sum(), E)
    h2, E2 = h.detach().double().requires_grad_(), E.detach().double().requires_grad_()
    gh2, = torch.autograd.grad(reference.soft_label_projection(h2, E2, y.double()).sum(), h2, create_graph=True)
    gE2, = torch.autograd.grad(gh2.pow(2).sum(), E2)
    assert torch.allclose(gE.double(), gE2, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_class_balancing_gradgradcheck_and_penalty(device):
    x = (2 * torch.randn(9, 4, dtype=torch.float64, device=device)).requires_grad_()
    w = torch.rand(4, dtype=torch.float64, device=device) + 0.1
    assert torch.autograd.gradgradcheck(lambda x: ops.class_balancing_loss(x, w), (x,))
    g, = torch.autograd.grad(ops.class_balancing_loss(x, w), x, create_graph=True)
    gr, = torch.autograd.grad(reference.class_balancing_loss(x, w), x, create_graph=True)
    assert torch.allclose(g, gr, rtol=1e-10, atol=1e-14)
    a, = torch.autograd.grad(g.pow(2).sum(), x)
    b, = torch.autograd.grad(gr.pow(2).sum(), x)
    assert torch.allclose(a, b, rtol=1e-8, atol=1e-12) and a.abs().sum() > 0


def test_class_balancing_create_graph_keeps_zero_mean_finite():
    x = torch.full((4, 3), -1e4, dtype=torch.float64)
    x[:, 0] = 1e4
    x.requires_grad_()
    g, = torch.autograd.grad(ops.class_balancing_loss(x, torch.ones(3, dtype=torch.float64)), x, create_graph=True)
    gg, = torch.autograd.grad(g.sum(), x)
    assert torch.isfinite(g).all() and torch.isfinite(gg).all()


def test_diff_augment_double_backward_still_works():
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    p = ops.sample_diff_augment_params(x, "color,translation,cutout")
    assert torch.autograd.gradgradcheck(lambda x: ops.diff_augment(x, "color,translation,cutout", params=p), (x,))


def _second_backward(make_grad):
    with pytest.raises(RuntimeError, match=r"double backward is not supported") as info:
        g = make_grad()
        (g * torch.randn_like(g)).sum().backward()
    return str(info.value)


def test_unsupported_double_backward_raises_naming_the_op():
    cb = torch.ops.cbgan_ext
    w = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    u, v = torch.randn(6, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    R = torch.randn(6, 5, dtype=torch.float64)

    def sn_weight():
        return torch.autograd.grad((ops.spectral_norm_weight(w, u, v)[0] * R).sum(), w, create_graph=True)[0]

    def sn_multi():
        out = ops.spectral_norm_weight_multi([w, w * 2], [u, u], [v, v], [0, 0])[0]
        return torch.autograd.grad((out[0] * R).sum() + out[1].sum(), w, create_graph=True)[0]

    def sn_module():
        layer = SNLinear(5, 6).double()
        out = layer(torch.randn(3, 5, dtype=torch.float64)).pow(2).sum()
        return torch.autograd.grad(out, layer.weight_orig, create_graph=True)[0]

    def cb_backward_op():
        probs = torch.softmax(torch.randn(4, 3, dtype=torch.float64), 1).requires_grad_()
        return cb._class_balancing_loss_backward(torch.ones((), dtype=torch.float64), probs,
                                                 torch.ones(3, dtype=torch.float64), probs.detach().mean(0))

    assert _second_backward(sn_weight).startswith("_spectral_norm_weight_backward:")
    assert _second_backward(sn_multi).startswith("_spectral_norm_weight_multi_backward:")
    assert _second_backward(sn_module).startswith("_spectral_norm_weight_backward:")
    assert _second_backward(cb_backward_op).startswith("_class_balancing_loss_backward:")


def test_first_order_gradients_unchanged_by_create_graph():
    # create_graph without a second backward must not raise, and gives the same first-order gradient
    w = torch.randn(6, 5, requires_grad=True)
    u, v = torch.randn(6), torch.randn(5)
    R = torch.randn(6, 5)
    a, = torch.autograd.grad((ops.spectral_norm_weight(w, u, v)[0] * R).sum(), w, create_graph=True)
    b, = torch.autograd.grad((ops.spectral_norm_weight(w, u, v)[0] * R).sum(), w)
    assert torch.equal(a.detach(), b) and a.requires_grad

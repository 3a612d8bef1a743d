"""Bad values propagate, bad devices raise, backward ops check their inputs (issue 15)."""
import pytest
import torch

from cbgan_ext import ops, reference
from conftest import DEVICES

NAN, INF = float("nan"), float("inf")


# ---- class balancing: NaN in, NaN out -------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bad", [NAN, INF, -INF])
@pytest.mark.parametrize("B,K", [(4, 3), (70, 10), (40, 1010)])
@pytest.mark.parametrize("device", DEVICES)
def test_class_balancing_non_finite_logit_matches_reference(dtype, bad, B, K, device):
    x = torch.randn(B, K, dtype=torch.float64, device=device)
    if bad == -INF:
        x[B // 2] = -INF  # a whole row of -inf: softmax 0/0
    else:
        x[B // 2, K // 3] = bad
    x = x.to(dtype)
    w = torch.rand(K, device=device) + 0.1
    xf, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    loss = ops.class_balancing_loss(xf, w)
    ref = reference.class_balancing_loss(xr, w)
    assert torch.isnan(ref)
    assert torch.isnan(loss), f"{bad} logit gave {loss.item()}, the reference NaN"
    g, = torch.autograd.grad(loss, xf)
    g_ref, = torch.autograd.grad(ref, xr)
    # every gradient is NaN in the reference: the valid rows do not silently get zeros
    assert torch.equal(torch.isnan(g), torch.isnan(g_ref)) and torch.isnan(g).all()


def test_class_balancing_exact_zero_mean_still_finite():
    # p̂ = 0 by underflow keeps its documented 0·log 0 = 0 (finite loss and gradient); only NaN propagates
    x = torch.full((6, 4), -1e4)
    x[:, 1] = 1e4
    x.requires_grad_()
    loss = ops.class_balancing_loss(x, torch.ones(4))
    g, = torch.autograd.grad(loss, x)
    assert loss.item() == 0.0 and torch.isfinite(g).all()


# ---- mixing a meta tensor with CPU tensors raises, naming the op and the devices ---------------------------

def _meta_calls():
    m = "meta"
    h, E, y = torch.randn(4, 6), torch.randn(3, 6), torch.softmax(torch.randn(4, 3), 1)
    x = torch.randn(2, 3, 8, 8)
    p = ops.sample_diff_augment_params(x, "color,translation,cutout")
    w, u, v = torch.randn(5, 7), torch.randn(5), torch.randn(7)
    probs = torch.softmax(torch.randn(4, 3), 1)
    cb = torch.ops.cbgan_ext
    return [
        ("class_balancing_loss", lambda: ops.class_balancing_loss(torch.randn(4, 3), torch.ones(3, device=m))),
        ("class_balancing_loss", lambda: ops.class_balancing_loss(torch.randn(4, 3, device=m), torch.ones(3))),
        ("_class_balancing_loss_backward",
         lambda: cb._class_balancing_loss_backward(torch.ones(()), probs, torch.ones(3), probs.mean(0).to(m))),
        ("soft_label_projection", lambda: ops.soft_label_projection(h, E.to(m), y)),
        ("soft_label_projection", lambda: ops.soft_label_projection(h, E, torch.tensor([0, 1, 2, 0], device=m))),
        ("_soft_label_projection_backward",
         lambda: cb._soft_label_projection_backward(torch.ones(4, device=m), h, E, y, y @ E, [True, True, True])),
        ("diff_augment", lambda: ops.diff_augment(x, "color,translation,cutout", params=p.to(m))),
        ("diff_augment", lambda: cb.diff_augment(x, [1], torch.empty(0, 2, 3), torch.zeros(1, 2, 2, dtype=torch.long,
                                                                                          device=m),
                                                 torch.empty(0, 2, 2, dtype=torch.long), [4, 4])),
        ("_diff_augment_backward", lambda: cb._diff_augment_backward(x.to(m), [0], p.color[:1], p.translation[:0],
                                                                     p.cutout[:0], [4, 4])),
        ("spectral_norm_power_iteration", lambda: ops.spectral_norm_power_iteration(w, u.to(m), v)),
        ("spectral_norm_weight", lambda: ops.spectral_norm_weight(w.to(m), u, v)),
        ("spectral_norm_weight_multi", lambda: ops.spectral_norm_weight_multi([w, w.to(m)], [u, u], [v, v], [0, 0])),
        ("_spectral_norm_weight_backward",
         lambda: cb._spectral_norm_weight_backward(w, w, u, v, torch.tensor(2.0, device=m), 0)),
        ("_spectral_norm_weight_multi_backward",
         lambda: cb._spectral_norm_weight_multi_backward([w], [w], [u], [v], torch.ones(1, device=m), [0])),
    ]


@pytest.mark.parametrize("case", range(len(_meta_calls())))
def test_meta_mixed_with_cpu_raises(case):
    op, call = _meta_calls()[case]
    with pytest.raises(RuntimeError, match=rf"^{op}: .* must be on the same device, got (cpu and meta|meta and cpu)"):
        call()


def test_all_meta_still_gives_shapes():
    h, E, y = (torch.empty(4, 6, device="meta"), torch.empty(3, 6, device="meta"), torch.empty(4, 3, device="meta"))
    out = ops.soft_label_projection(h, E, y)
    assert out.device.type == "meta" and out.shape == (4,)
    loss = ops.class_balancing_loss(torch.empty(4, 3, device="meta"), torch.empty(3, device="meta"))
    assert loss.device.type == "meta" and loss.shape == ()


# ---- DiffAugment without colour only moves and zeroes pixels, as the reference -----------------------------

def _fused_and_reference(x, grad, p, policy, device, channels_last):
    """Forward outputs and input gradients (for upstream ``grad``) of the fused op and the reference."""
    x, grad, p = x.to(device), grad.to(device), p.to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    xf, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = ops.diff_augment(xf, policy, params=p)
    ref = reference.diff_augment(xr, policy, params=p)
    gf, = torch.autograd.grad(out, xf, grad)
    gr, = torch.autograd.grad(ref, xr, grad)
    return out.detach(), ref.detach(), gf, gr


@pytest.mark.parametrize("policy", ["translation", "cutout", "translation,cutout", "cutout,translation",
                                    "translation,translation,cutout,cutout"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("device", DEVICES)
def test_diff_augment_spatial_only_non_finite_matches_reference(policy, channels_last, dtype, device):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 3, 16, 12, generator=g, dtype=dtype)
    # non-finite values spread over the image so that some are moved, some cut out, some moved out of frame
    idx = torch.randint(0, x.numel(), (40,), generator=g)
    flat = x.view(-1)
    flat[idx[:15]] = NAN
    flat[idx[15:30]] = INF
    flat[idx[30:]] = -INF
    grad = torch.randn(x.shape, generator=g, dtype=dtype)
    grad.view(-1)[idx[:20]] = NAN
    grad.view(-1)[idx[20:]] = INF
    p = ops.sample_diff_augment_params(x, policy, generator=g)
    out, ref, gf, gr = _fused_and_reference(x, grad, p, policy, device, channels_last)
    torch.testing.assert_close(out, ref, rtol=0, atol=0, equal_nan=True)
    # backward: a non-finite upstream gradient moves and is masked the same way
    torch.testing.assert_close(gf, gr, rtol=0, atol=0, equal_nan=True)


def test_diff_augment_translation_keeps_channels_apart():
    x = torch.randn(1, 3, 8, 8)
    x[0, 1, 4, 4] = NAN
    x[0, 0, 2, 2] = INF
    p = ops.sample_diff_augment_params(x, "translation")
    p.translation.zero_()
    out = ops.diff_augment(x, "translation", params=p)
    assert torch.isnan(out[0, 1, 4, 4]) and torch.isfinite(out[0, [0, 2], 4, 4]).all()
    assert out[0, 0, 2, 2] == INF and torch.isfinite(out[0, 1:, 2, 2]).all()
    assert torch.isnan(out).sum() == 1 and torch.isinf(out).sum() == 1


# ---- DiffAugment with colour: non-finite values give what the reference gives, for every order -----------

def _non_finite_batch(dtype, seed):
    """Sample 0 clean; the others hold NaN, +Inf, -Inf in the middle, at a corner (moved out of the frame by
    some translations) and under a cutout, so every path (spread by a colour stage, cut, moved out) is taken."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(7, 3, 12, 10, generator=g, dtype=dtype)
    x[1, 1, 6, 5] = NAN
    x[2, 0, 6, 5] = INF
    x[3, 2, 0, 0] = -INF
    x[4, :, 0, 0] = NAN
    x[5, 0, 3, 3], x[5, 1, 8, 7] = INF, -INF
    x[6, 2, 11, 9] = INF
    return x, g


@pytest.mark.parametrize("policy", ["color", "color,cutout", "color,translation,cutout", "cutout,color",
                                    "translation,color", "translation,cutout,color", "color,translation,color",
                                    "cutout,color,cutout,color", "cutout,translation,color,cutout"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("device", DEVICES)
def test_diff_augment_colour_non_finite_matches_reference(policy, channels_last, dtype, device):
    x, g = _non_finite_batch(dtype, 5)
    grad = torch.randn(x.shape, generator=g, dtype=dtype)
    grad[1, 0, 2, 2] = NAN
    grad[2, 1, 5, 5] = INF
    grad[3, 2, 0, 0] = -INF
    p = ops.sample_diff_augment_params(x, policy, generator=g)
    # samples 4 and 6 with a cutout over their corner, so a cut non-finite value is tested whatever the draw
    if p.cutout.numel():
        p.cutout[:, 4] = 0
        p.cutout[:, 6] = torch.tensor([11, 9])
    out, ref, gf, gr = _fused_and_reference(x, grad, p, policy, device, channels_last)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    assert torch.equal(torch.isnan(out), torch.isnan(ref)), "NaN where the reference has NaN, nowhere else"
    torch.testing.assert_close(out, ref, equal_nan=True, **tol)  # infinities equal, finite values close
    assert torch.isfinite(out[0]).all() and not torch.isfinite(out[1:]).all()
    assert torch.equal(torch.isnan(gf), torch.isnan(gr))
    torch.testing.assert_close(gf, gr, equal_nan=True, **tol)


# ---- backward ops check their inputs like the forwards, under their registered names ---------------------

def test_class_balancing_backward_checks_sizes():
    cb = torch.ops.cbgan_ext
    probs = torch.softmax(torch.randn(5, 4), 1)
    mp, w, g = probs.mean(0), torch.ones(4), torch.ones(())
    bad = [
        ((g, probs, w, torch.ones(3)), "mean_probs must be the forward's \\[K\\] = \\[4\\]"),
        ((g, probs, w, torch.ones(400)), "mean_probs must be"),
        ((g, probs, w, mp.double()), "mean_probs must be"),
        ((g, probs, torch.ones(3), mp), "class_weights must be \\[K\\] = \\[4\\]"),
        ((torch.ones(2), probs, w, mp), "grad_loss must have one element"),
        ((g, probs[0], w, mp), "probs must be"),
        ((g, probs.long(), w, mp), "probs must be float16"),
    ]
    for args, msg in bad:
        with pytest.raises(RuntimeError, match=f"^_class_balancing_loss_backward: {msg}"):
            cb._class_balancing_loss_backward(*args)
    assert torch.isfinite(cb._class_balancing_loss_backward(g, probs, w, mp)).all()


def test_projection_backward_checks_inputs():
    bwd = torch.ops.cbgan_ext._soft_label_projection_backward
    h, E, y = torch.randn(4, 6), torch.randn(3, 6), torch.softmax(torch.randn(4, 3), 1)
    bad = [
        ((torch.ones(5), h, E, y, y @ E), "grad_out must be \\[B\\] = \\[4\\]"),
        ((torch.ones(4), h, E, y, torch.ones(4, 5)), "proj must be the forward's y E"),
        ((torch.ones(4), h, E[:, :5], y, y @ E), "class_embedding must be \\[K, L\\]"),
        ((torch.ones(4), h, E, y[:, :2], y @ E), "soft labels y must be \\[B, K\\]"),
    ]
    for args, msg in bad:
        with pytest.raises(RuntimeError, match=f"^_soft_label_projection_backward: {msg}"):
            bwd(*args, [True, True, True])


def test_spectral_norm_backward_ops_check_inputs():
    cb = torch.ops.cbgan_ext
    w, u, v = torch.randn(5, 7), torch.randn(5), torch.randn(7)
    s = torch.tensor(2.0)
    bad = [
        (lambda: cb._spectral_norm_weight_backward(w, w, u, v, torch.ones(2), 0), "sigma must have one element"),
        (lambda: cb._spectral_norm_weight_backward(w, w, u, v, torch.tensor(2), 0), "sigma must be float"),
        (lambda: cb._spectral_norm_weight_backward(w[:4], w, u, v, s, 0), "grad must have the weight's shape"),
        (lambda: cb._spectral_norm_weight_backward(w, w, u[:4], v, s, 0), "u must be 1-D of size 5"),
    ]
    for call, msg in bad:
        with pytest.raises(RuntimeError, match=f"^_spectral_norm_weight_backward: {msg}"):
            call()
    bad_multi = [
        (lambda: cb._spectral_norm_weight_multi_backward([w, w], [w], [u], [v], torch.ones(1), [0]),
         "expected 1 grads"),
        (lambda: cb._spectral_norm_weight_multi_backward([w], [w], [u], [v], torch.ones(3), [0]),
         "sigmas must be \\[1\\]"),
        (lambda: cb._spectral_norm_weight_multi_backward([w.t()], [w], [u], [v], torch.ones(1), [0]),
         "grad must have the weight's shape"),
    ]
    for call, msg in bad_multi:
        with pytest.raises(RuntimeError, match=f"^_spectral_norm_weight_multi_backward: {msg}"):
            call()


def test_diff_augment_backward_checks_under_its_name():
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(RuntimeError, match="^_diff_augment_backward: color params must be"):
        torch.ops.cbgan_ext._diff_augment_backward(x, [0], torch.zeros(1, 3, 3), torch.empty(0, 2, 2, dtype=torch.long),
                                                   torch.empty(0, 2, 2, dtype=torch.long), [4, 4])

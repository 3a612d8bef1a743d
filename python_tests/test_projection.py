import pytest
import torch

import cbgan_ext
from cbgan_ext import ops, reference
from cbgan_ext.nn import ProjectionHead
from conftest import DEVICES, at_one_and_many_threads

# Relative to Σ_l Σ_k |y_bk| |E_kl| |h_bl| (the scale of the sum), so a tolerance holds at every L.
TOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
FUSED_MAX_K = 32  # csrc/common/projection.h kProjFusedMaxK: shapes below cover both sides of it

SHAPES = [(1, 1, 1), (7, 37, 3), (64, 512, 10), (33, 100, 32), (20, 64, 33), (16, 130, 100), (5, 24, 1010)]


def _soft(B, K, dtype, device):
    return torch.softmax(2 * torch.randn(B, K, dtype=torch.float64), 1).to(device, dtype)


def _einsum(h, E, y):
    """The bilinear form written independently of reference.py, in float64."""
    if not y.is_floating_point():
        y = torch.nn.functional.one_hot(y, E.shape[0])
    return torch.einsum("bl,kl,bk->b", h.double(), E.double(), y.double())


def _scale(h, E, y):
    return _einsum(h.abs(), E.abs(), y.abs() if y.is_floating_point() else y) + 1e-30


def _close(got, expect, scale, dtype):
    err = (got.double().cpu() - expect.cpu()).abs()
    assert (err <= TOL[dtype] * scale.cpu()).all(), f"max rel err {(err / scale.cpu()).max().item():.3g}"


def _grads_ref(h, E, y, g):
    """float64 autograd of the einsum: (dh, dE, dy or None)."""
    hr = h.detach().double().requires_grad_()
    Er = E.detach().double().requires_grad_()
    soft = y.is_floating_point()
    yr = y.detach().double().requires_grad_() if soft else y
    out = _einsum(hr, Er, yr)
    gs = torch.autograd.grad(out, [hr, Er] + ([yr] if soft else []), g.double())
    return gs[0], gs[1], (gs[2] if soft else None)


def _grad_scales(h, E, y, g):
    """Scales for the three gradients: the same products on absolute values."""
    ha, Ea, ga = h.detach().double().abs(), E.detach().double().abs(), g.double().abs()
    ya = y.double().abs() if y.is_floating_point() else torch.nn.functional.one_hot(y, E.shape[0]).double()
    return (ga[:, None] * (ya @ Ea) + 1e-30, (ya * ga[:, None]).t() @ ha + 1e-30,
            ga[:, None] * (ha @ Ea.t()) + 1e-30)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B,L,K", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_soft_forward_matches_einsum(device, B, L, K, dtype):
    h = torch.randn(B, L, device=device).to(dtype)
    E = torch.randn(K, L, device=device).to(dtype)
    y = _soft(B, K, dtype, device)
    out = ops.soft_label_projection(h, E, y)
    assert out.shape == (B,) and out.dtype == dtype and out.device == h.device
    _close(out, _einsum(h, E, y), _scale(h, E, y), dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B,L,K", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_hard_forward_matches_gather_and_one_hot(device, B, L, K, dtype):
    h = torch.randn(B, L, device=device).to(dtype)
    E = torch.randn(K, L, device=device).to(dtype)
    y = torch.randint(0, K, (B,), device=device)
    out = ops.soft_label_projection(h, E, y)
    assert out.shape == (B,) and out.dtype == dtype
    gather = (E.double()[y] * h.double()).sum(1)
    _close(out, gather, _scale(h, E, y), dtype)
    one_hot = torch.nn.functional.one_hot(y, K).to(dtype)
    _close(ops.soft_label_projection(h, E, one_hot), gather, _scale(h, E, y), dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B,L,K", [(7, 37, 3), (64, 512, 10), (20, 64, 33), (16, 130, 100)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("hard", [False, True])
def test_backward_matches_einsum(device, B, L, K, dtype, hard):
    h = torch.randn(B, L, device=device).to(dtype).requires_grad_()
    E = torch.randn(K, L, device=device).to(dtype).requires_grad_()
    y = torch.randint(0, K, (B,), device=device) if hard else _soft(B, K, dtype, device).requires_grad_()
    g = torch.randn(B, device=device).to(dtype)
    inputs = [h, E] if hard else [h, E, y]
    got = torch.autograd.grad(ops.soft_label_projection(h, E, y), inputs, g)
    expect = _grads_ref(h, E, y, g)
    for a, b, s in zip(got, expect, _grad_scales(h, E, y, g)):
        assert a.dtype == dtype and a.shape == b.shape
        # half gradients are rounded inputs times a rounded g: allow a few roundings
        _close(a, b, s, dtype) if dtype in (torch.float32, torch.float64) else _close(a, b, 3 * s, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("K", [10, 64])
def test_only_requested_gradients(device, K):
    B, L = 12, 48
    h0, E0 = torch.randn(B, L, device=device), torch.randn(K, L, device=device)
    y0 = _soft(B, K, torch.float32, device)
    g = torch.randn(B, device=device)
    full = _grads_ref(h0, E0, y0, g)
    for which in range(3):
        ts = [t.clone().requires_grad_(i == which) for i, t in enumerate((h0, E0, y0))]
        (ops.soft_label_projection(*ts) * g).sum().backward()
        for i, t in enumerate(ts):
            if i == which:
                assert torch.allclose(t.grad.double(), full[i], rtol=1e-4, atol=1e-5)
            else:
                assert t.grad is None


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("K", [8, 64])
def test_half_accumulates_in_float(device, dtype, K):
    # Positive terms summed over L = 4096: a half accumulator stalls once the sum passes 2^11 (ulp 2) and
    # would be off by tens of percent; float accumulation leaves only the final rounding.
    B, L = 4, 4096
    h = (1 + torch.rand(B, L, device=device)).to(dtype).requires_grad_()
    E = (1 + torch.rand(K, L, device=device)).to(dtype).requires_grad_()
    y = torch.softmax(torch.randn(B, K, device=device), 1).to(dtype).requires_grad_()
    out = ops.soft_label_projection(h, E, y)
    rel = ((out.double() - _einsum(h, E, y)) / _einsum(h, E, y)).abs().max().item()
    assert rel < (2e-3 if dtype == torch.float16 else 1.6e-2)
    g = torch.ones(B, device=device, dtype=dtype)
    dh, dE, dy = torch.autograd.grad(out, (h, E, y), g)
    rh, rE, ry = _grads_ref(h, E, y, g)
    for a, b in ((dh, rh), (dE, rE), (dy, ry)):
        assert ((a.double() - b) / b).abs().max().item() < (4e-3 if dtype == torch.float16 else 3e-2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("K", [10, 33, 300])
def test_non_contiguous_inputs(device, K):
    B, L = 24, 80
    W = torch.randn(L, K, device=device)          # a Linear(K, L) weight: E = Wᵀ is a transposed view
    hbig = torch.randn(B, 2 * L, device=device)
    ybig = _soft(K, B, torch.float32, device).t()  # [B, K], transposed
    labels = torch.randint(0, K, (2 * B,), device=device)[::2]
    cases = [
        (hbig[:, ::2], W.t(), ybig),
        (hbig[:, ::2], W.t(), labels),
        (hbig.t().contiguous().t()[:, :L], W.t()[:, :], ybig.contiguous()),
        (hbig[:, 1::2], W.t().contiguous()[:, :], labels),
    ]
    for h, E, y in cases:
        assert not (h.is_contiguous() and E.is_contiguous() and y.is_contiguous())
        h1 = h.detach().requires_grad_()
        E1 = E.detach().requires_grad_()
        y1 = y.detach().requires_grad_() if y.is_floating_point() else y
        out = ops.soft_label_projection(h1, E1, y1)
        _close(out, _einsum(h, E, y), _scale(h, E, y), torch.float32)
        g = torch.randn(B, device=device)
        inputs = [h1, E1] + ([y1] if y.is_floating_point() else [])
        got = torch.autograd.grad(out, inputs, g)
        for a, b, s in zip(got, _grads_ref(h, E, y, g), _grad_scales(h, E, y, g)):
            _close(a, b, s, torch.float32)
    # through the transposed weight, the gradient reaches the Linear weight
    Wp = W.clone().requires_grad_()
    labels_c = labels.contiguous()
    ops.soft_label_projection(hbig[:, ::2], Wp.t(), labels_c).sum().backward()
    expect = torch.zeros(K, L, device=device, dtype=torch.float64).index_add_(0, labels_c, hbig[:, ::2].double())
    assert torch.allclose(Wp.grad.double(), expect.t(), rtol=1e-5, atol=1e-5)


def test_gradcheck_float64():
    for B, L, K in [(4, 6, 3), (5, 9, FUSED_MAX_K + 3)]:
        h = torch.randn(B, L, dtype=torch.float64, requires_grad=True)
        E = torch.randn(K, L, dtype=torch.float64, requires_grad=True)
        y = torch.softmax(torch.randn(B, K, dtype=torch.float64), 1).requires_grad_()
        assert torch.autograd.gradcheck(ops.soft_label_projection, (h, E, y))
        Et = torch.randn(L, K, dtype=torch.float64).t().requires_grad_()  # transposed view
        labels = torch.randint(0, K, (B,))
        assert torch.autograd.gradcheck(lambda a, b: ops.soft_label_projection(a, b, labels), (h, Et))


@pytest.mark.filterwarnings("ignore:Input #")
def test_gradcheck_float32_fused_path():
    # float32 small K runs the SIMD kernels (float64 takes the BLAS path): check them by finite differences
    h = torch.randn(6, 40, requires_grad=True)
    E = torch.randn(5, 40, requires_grad=True)
    y = torch.softmax(torch.randn(6, 5), 1).requires_grad_()
    assert torch.autograd.gradcheck(ops.soft_label_projection, (h, E, y), eps=1e-2, atol=2e-2, rtol=1e-2)


@pytest.mark.needs_cuda
def test_gradcheck_float64_cuda():
    h = torch.randn(4, 7, dtype=torch.float64, device="cuda", requires_grad=True)
    E = torch.randn(5, 7, dtype=torch.float64, device="cuda", requires_grad=True)
    y = torch.softmax(torch.randn(4, 5, dtype=torch.float64, device="cuda"), 1).requires_grad_()
    assert torch.autograd.gradcheck(ops.soft_label_projection, (h, E, y))
    labels = torch.randint(0, 5, (4,), device="cuda")
    assert torch.autograd.gradcheck(lambda a, b: ops.soft_label_projection(a, b, labels), (h, E))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    fwd = torch.ops.cbgan_ext.soft_label_projection_forward.default
    bwd = torch.ops.cbgan_ext._soft_label_projection_backward.default
    for B, L, K in [(8, 16, 10), (3, 20, 40)]:
        h = torch.randn(B, L, device=device, requires_grad=True)
        E = torch.randn(K, L, device=device, requires_grad=True)
        y = _soft(B, K, torch.float32, device).requires_grad_()
        labels = torch.randint(0, K, (B,), device=device)
        torch.library.opcheck(fwd, (h, E, y))
        torch.library.opcheck(fwd, (h, E, labels))
        g = torch.randn(B, device=device)
        P = (y @ E).detach()
        for mask in ([True, True, True], [True, False, False], [False, True, True]):
            torch.library.opcheck(bwd, (g, h.detach(), E.detach(), y.detach(), P, mask))
        torch.library.opcheck(bwd, (g, h.detach(), E.detach(), labels, torch.empty(0, device=device),
                                    [True, True, False]))


@pytest.mark.parametrize("hard", [False, True])
def test_torch_compile_fullgraph(hard):
    h = torch.randn(16, 24, requires_grad=True)
    E = torch.randn(10, 24, requires_grad=True)
    y = torch.randint(0, 10, (16,)) if hard else torch.softmax(torch.randn(16, 10), 1).requires_grad_()

    def f(a, b, c):
        return (ops.soft_label_projection(a * 2.0, b, c) ** 2).sum()

    cf = torch.compile(f, fullgraph=True, backend="aot_eager")
    inputs = [h, E] if hard else [h, E, y]
    l1 = cf(h, E, y)
    g1 = torch.autograd.grad(l1, inputs)
    l2 = f(h, E, y)
    g2 = torch.autograd.grad(l2, inputs)
    assert torch.allclose(l1, l2)
    assert all(torch.allclose(a, b) for a, b in zip(g1, g2))


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch(device):
    for K in (4, 40):
        h = torch.randn(0, 8, device=device, requires_grad=True)
        E = torch.randn(K, 8, device=device, requires_grad=True)
        for y in (torch.empty(0, K, device=device), torch.empty(0, dtype=torch.long, device=device)):
            out = ops.soft_label_projection(h, E, y)
            assert out.shape == (0,)
            dh, dE = torch.autograd.grad(out.sum() + (E * 0.5).sum(), (h, E))
            assert dh.shape == (0, 8) and torch.equal(dE, torch.full_like(E, 0.5))


@pytest.mark.parametrize("device", DEVICES)
def test_nan_propagates(device):
    h = torch.randn(6, 40, device=device)
    h[2, 5] = float("nan")
    E = torch.randn(7, 40, device=device)
    for y in (_soft(6, 7, torch.float32, device), torch.randint(0, 7, (6,), device=device)):
        out = ops.soft_label_projection(h, E, y)
        assert torch.isnan(out[2]) and torch.isfinite(out[torch.arange(6, device=device) != 2]).all()


@pytest.mark.parametrize("device", DEVICES)
def test_bad_inputs_name_the_op(device):
    B, L, K = 4, 6, 5
    h = torch.randn(B, L, device=device)
    E = torch.randn(K, L, device=device)
    y = _soft(B, K, torch.float32, device)
    lab = torch.randint(0, K, (B,), device=device)
    bad = [
        ((torch.randn(B, L, 1, device=device), E, y), "h must be 2-D"),
        ((torch.randint(0, 3, (B, L), device=device), E, y), "float16, bfloat16, float32 or float64"),
        ((h, torch.randn(K, L + 1, device=device), y), "class_embedding must be \\[K, L\\]"),
        ((h, torch.randn(K * L, device=device), y), "class_embedding must be 2-D"),
        ((h, torch.randn(0, L, device=device), torch.empty(B, 0, device=device)), "at least one class"),
        ((h, E.double(), y), "class_embedding must have h's dtype"),
        ((h, E, torch.rand(B, K + 1, device=device)), "soft labels y must be \\[B, K\\]"),
        ((h, E, torch.rand(B + 1, K, device=device)), "soft labels y must be \\[B, K\\]"),
        ((h, E, torch.rand(B, K, 1, device=device)), "soft labels y must be \\[B, K\\]"),
        ((h, E, y.double()), "soft labels y must have h's dtype"),
        ((h, E, lab.int()), "hard labels \\[B\\] int64"),
        ((h, E, torch.zeros(B, K, dtype=torch.bool, device=device)), "hard labels \\[B\\] int64"),
        ((h, E, lab[:-1]), "hard labels y must be \\[B\\]"),
        ((h, E, lab.view(B, 1)), "hard labels y must be \\[B\\]"),
    ]
    for args, msg in bad:
        with pytest.raises(RuntimeError, match=f"soft_label_projection: .*{msg}"):
            ops.soft_label_projection(*args)
    with pytest.raises(TypeError, match="soft_label_projection"):
        ops.soft_label_projection(h, E, [0, 1, 2, 3])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("K", [5, 300])
def test_label_out_of_range_raises_and_leaves_device_usable(device, K):
    h = torch.randn(4, 6, device=device, requires_grad=True)
    E = torch.randn(K, 6, device=device, requires_grad=True)
    for bad in (K, -1, K + 1000):
        lab = torch.tensor([0, 1, bad, 2], device=device)
        with pytest.raises(RuntimeError, match="soft_label_projection: hard label index out of range"):
            ops.soft_label_projection(h, E, lab)
    # the backward op checks too (CPU) or cannot read out of bounds (CUDA: row guarded, NaN)
    # and after the errors the device still works: no sticky device-side assert
    lab = torch.tensor([0, K - 1, 2, 1], device=device)
    out = ops.soft_label_projection(h, E, lab)
    out.sum().backward()
    if device == "cuda":
        torch.cuda.synchronize()
    assert torch.allclose(out.double(), (E.double()[lab] * h.double()).sum(1), atol=1e-5)


def test_backward_op_checks_labels_cpu():
    h, E = torch.randn(3, 4), torch.randn(5, 4)
    with pytest.raises(RuntimeError, match="_soft_label_projection_backward: hard label index out of range"):
        torch.ops.cbgan_ext._soft_label_projection_backward(torch.ones(3), h, E, torch.tensor([0, 5, 1]),
                                                            torch.empty(0), [True, True, False])


@pytest.mark.needs_cuda
def test_mixed_devices_raise():
    h, E = torch.randn(4, 6, device="cuda"), torch.randn(5, 6, device="cuda")
    with pytest.raises(RuntimeError, match="soft_label_projection: .*same device"):
        ops.soft_label_projection(h, E, torch.randint(0, 5, (4,)))
    with pytest.raises(RuntimeError, match="soft_label_projection: .*same device"):
        ops.soft_label_projection(h, E.cpu(), torch.rand(4, 5, device="cuda"))


@pytest.mark.needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("K", [10, 1010])
def test_cpu_cuda_parity(dtype, K):
    B, L = 64, 96
    h = torch.randn(B, L).to(dtype)
    E = torch.randn(K, L).to(dtype)
    for y in (_soft(B, K, dtype, "cpu"), torch.randint(0, K, (B,))):
        scale = _scale(h, E, y)
        outs = []
        grads = []
        for dev in ("cpu", "cuda"):
            hh, EE = h.to(dev).requires_grad_(), E.to(dev).requires_grad_()
            out = ops.soft_label_projection(hh, EE, y.to(dev))
            outs.append(out.cpu())
            grads.append([t.cpu() for t in torch.autograd.grad(out.sum(), (hh, EE))])
        _close(outs[1], outs[0].double(), 2 * scale, dtype)
        for a, b in zip(grads[0], grads[1]):
            tol = TOL[dtype] * 20
            assert torch.allclose(a.double(), b.double(), rtol=tol, atol=tol * a.abs().max().item())


def test_deterministic_across_thread_counts():
    h, E = torch.randn(300, 200), torch.randn(12, 200)
    y = torch.softmax(torch.randn(300, 12), 1)
    lab = torch.randint(0, 12, (300,))

    def run():
        hh, EE, yy = h.clone().requires_grad_(), E.clone().requires_grad_(), y.clone().requires_grad_()
        res = []
        for labels in (yy, lab):
            out = ops.soft_label_projection(hh, EE, labels)
            res += [out] + list(torch.autograd.grad(out.sum(), (hh, EE)))
        return res

    a, b = at_one_and_many_threads(run)
    assert all(torch.equal(x, z) for x, z in zip(a, b))


# ---- ProjectionHead ------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sn", [True, False])
def test_projection_head_matches_paper_formula(device, sn):
    torch.manual_seed(1)
    L, K, B = 32, 10, 16
    head = ProjectionHead(L, K, spectral_norm=sn).to(device)
    h = torch.randn(B, L, device=device)
    y_soft = _soft(B, K, torch.float32, device)
    y_hard = torch.randint(0, K, (B,), device=device)
    head(h, y_soft)  # one power iteration in training mode
    head.eval()  # freeze the power iteration so the same V is read below
    out_soft = head(h, y_soft)
    out_hard = head(h, y_hard)
    V = head.embed.weight.detach()  # [L, K], spectrally normalised when sn
    psi = (h @ head.psi.weight.detach().t()).squeeze(1) + head.psi.bias.detach()
    # D(x, y) = ψ(φ(x)) + φ(x)ᵀ V y   (Softlabel-GAN, Fig. 3)
    assert torch.allclose(out_soft, psi + ((h @ V) * y_soft).sum(1), rtol=1e-4, atol=1e-5)
    assert torch.allclose(out_hard, psi + (h * V.t()[y_hard]).sum(1), rtol=1e-4, atol=1e-5)
    assert torch.allclose(head(h, torch.nn.functional.one_hot(y_hard, K).float()), out_hard, rtol=1e-4, atol=1e-5)
    assert torch.allclose(head.class_embedding, V.t())
    if sn:
        assert head.embed.weight_orig.shape == (L, K)


def test_projection_head_spectral_norm_converges_and_trains():
    torch.manual_seed(2)
    head = ProjectionHead(24, 7)
    h = torch.randn(8, 24)
    y = torch.randint(0, 7, (8,))
    for _ in range(30):  # power iterations run in training mode, one per forward
        out = head(h, y)
    assert abs(torch.linalg.matrix_norm(head.embed.weight.detach(), ord=2).item() - 1.0) < 1e-3
    assert abs(torch.linalg.matrix_norm(head.psi.weight.detach(), ord=2).item() - 1.0) < 1e-3
    out.sum().backward()
    grads = [p.grad for p in head.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert head.embed.weight_orig.grad.abs().sum() > 0


def test_projection_head_autocast_and_bad_input():
    head = ProjectionHead(16, 5, spectral_norm=False)
    h = torch.randn(4, 16)
    y = torch.softmax(torch.randn(4, 5), 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(h.bfloat16(), y)
    expect = head(h.bfloat16().float(), y)
    assert out.shape == (4,) and torch.allclose(out.float(), expect, rtol=3e-2, atol=3e-2)
    with pytest.raises(ValueError, match="ProjectionHead"):
        head(torch.randn(4, 15), y)
    with pytest.raises(ValueError, match="ProjectionHead"):
        ProjectionHead(0, 5)
    with pytest.raises(RuntimeError, match="soft_label_projection: hard label index out of range"):
        head(h, torch.tensor([0, 1, 5, 2]))
    assert "num_classes=5" in repr(head)


def test_reference_forms_agree():
    h, E = torch.randn(9, 12, dtype=torch.float64), torch.randn(6, 12, dtype=torch.float64)
    y = torch.softmax(torch.randn(9, 6, dtype=torch.float64), 1)
    lab = torch.randint(0, 6, (9,))
    assert torch.allclose(reference.soft_label_projection(h, E, y), _einsum(h, E, y))
    assert torch.allclose(reference.soft_label_projection(h, E, lab), _einsum(h, E, lab))
    assert "ProjectionHead" in cbgan_ext.__all__


@pytest.mark.needs_cuda
def test_cuda_kernels_guard_bad_labels_without_poisoning_context():
    # The backward op does not re-check labels on CUDA (the forward did, and a check would cost a sync):
    # its kernels treat an out-of-range label as "no row" instead of reading out of bounds.
    h, E = torch.randn(3, 4, device="cuda"), torch.randn(5, 4, device="cuda")
    labels = torch.tensor([0, 7, 1], device="cuda")
    dh, dE, _ = torch.ops.cbgan_ext._soft_label_projection_backward(
        torch.ones(3, device="cuda"), h, E, labels, torch.empty(0, device="cuda"), [True, True, False])
    torch.cuda.synchronize()
    assert torch.isnan(dh[1]).all() and torch.isfinite(dh[[0, 2]]).all()
    expect = torch.zeros_like(E).index_add_(0, torch.tensor([0, 1], device="cuda"), h[[0, 2]])
    assert torch.allclose(dE, expect)
    assert torch.isfinite(ops.soft_label_projection(h, E, torch.tensor([4, 0, 3], device="cuda"))).all()


@pytest.mark.parametrize("L,K", [(512, 10), (1024, 100)])  # the fused loop and the BLAS path
def test_a_training_loop_reuses_one_buffer_and_stays_exact(L, K):
    """Step after step the CPU op hands out the same proj buffer (no fresh [B, L] buffer a step) and the
    backward writes dh into it, with the reference's gradients every step."""
    g = torch.Generator().manual_seed(L + K)
    E = torch.randn(K, L, generator=g, requires_grad=True)
    ptrs = []
    for step in range(4):
        h0 = torch.randn(256, L, generator=g, requires_grad=True)
        y = torch.softmax(torch.randn(256, K, generator=g), 1).requires_grad_()
        h = h0 * 1.0  # not a leaf: dh goes on to MulBackward and is freed, as in a network
        out, proj = torch.ops.cbgan_ext.soft_label_projection_forward(h, E, y)
        ptrs.append(proj.data_ptr())  # a view of the buffer, let go before the backward
        del proj
        E.grad = None
        if step < 3:
            out.sum().backward()
            got = (h0.grad, E.grad, y.grad)
        else:  # dh itself: written where proj was
            got = torch.autograd.grad(out.sum(), (h, E, y))
            assert got[0].data_ptr() == ptrs[-1]
        r = [t.detach().double().requires_grad_() for t in (h0, E, y)]
        refs = torch.autograd.grad(_einsum(*r).sum(), r)
        for a, ref in zip(got, refs):
            assert (a.double() - ref).abs().max() <= 1e-5 * ref.abs().max()
    assert len(set(ptrs)) == 1, ptrs


def test_what_a_caller_holds_is_never_overwritten():
    L, K = 512, 10
    h = torch.randn(256, L, requires_grad=True)
    E = torch.randn(K, L, requires_grad=True)
    y = _soft(256, K, torch.float32, "cpu")
    out, proj = torch.ops.cbgan_ext.soft_label_projection_forward(h, E, y)  # the caller keeps proj
    keep = proj.clone()
    out.sum().backward()
    assert torch.equal(proj, keep)
    _, proj2 = torch.ops.cbgan_ext.soft_label_projection_forward(h.detach(), E.detach(), y)
    assert proj2.data_ptr() != proj.data_ptr() and torch.equal(proj2, keep)
    del proj2
    kept = []  # a gradient kept by a hook survives the next steps
    hh = h * 1.0
    hh.register_hook(kept.append)
    ops.soft_label_projection(hh, E, y).sum().backward()
    snapshot = kept[0].clone()
    for _ in range(2):
        ops.soft_label_projection(h * 1.0, E, y).sum().backward()
        assert torch.equal(kept[0], snapshot)
    out = ops.soft_label_projection(h * 1.0, E, y).sum()  # a retained graph keeps its proj for the second backward
    g1 = torch.autograd.grad(out, (h, E), retain_graph=True)
    g2 = torch.autograd.grad(out, (h, E))
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm as torch_sn

import cbgan_ext
from cbgan_ext import ops, reference
from cbgan_ext.nn import (SNConv2d, SNConvTranspose2d, SNEmbedding, SNLinear, convert_spectral_norm,
                          spectral_norm_update_)
from conftest import DEVICES, at_one_and_many_threads

TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}

# (weight shape, dim): conv 3x3 and 4x4, transposed conv (dim 1), linear, 1xN, Nx1, a 1-D weight
WEIGHTS = [((64, 3, 3, 3), 0), ((32, 16, 4, 4), 0), ((16, 24, 4, 4), 1), ((10, 37), 0), ((1, 50), 0), ((50, 1), 0),
           ((200, 300), 0), ((7,), 0), ((3, 5, 2, 2), 2)]


def _rel(a, b):
    b = b.double().cpu()
    return ((a.double().cpu() - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def _uv(weight, dim, dtype=None):
    h = weight.shape[dim]
    dtype = dtype or weight.dtype
    u = F.normalize(torch.randn(h, dtype=torch.float64), dim=0).to(weight.device, dtype)
    v = F.normalize(torch.randn(weight.numel() // h, dtype=torch.float64), dim=0).to(weight.device, dtype)
    return u, v


# ---- ops against reference.py --------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(64, 27), (128, 1024), (1, 50), (50, 1), (300, 200)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [0, 1, 3])
def test_power_iteration_matches_reference(device, shape, dtype, n):
    w = torch.randn(shape, dtype=dtype, device=device)
    u, v = _uv(w, 0)
    u0, v0 = u.clone(), v.clone()
    u1, v1, s1 = ops.spectral_norm_power_iteration(w, u, v, n, 1e-12)
    u2, v2, s2 = reference.spectral_norm_power_iteration(w, u, v, n, 1e-12)
    assert torch.equal(u, u0) and torch.equal(v, v0)  # inputs untouched
    assert s1.dim() == 0 and s1.dtype == dtype and u1.dtype == dtype
    tol = TOL[dtype]
    assert _rel(s1, s2) < tol and _rel(u1, u2) < tol * 10 and _rel(v1, v2) < tol * 10


@pytest.mark.parametrize("device", DEVICES)
def test_power_iteration_transposed_and_strided_input(device):
    base = torch.randn(40, 90, device=device)
    for w in (base.t(), base[:, ::3], base[::2]):
        u, v = _uv(w, 0)
        r1 = ops.spectral_norm_power_iteration(w, u, v, 2)
        r2 = reference.spectral_norm_power_iteration(w.contiguous(), u, v, 2)
        for a, b in zip(r1, r2):
            assert _rel(a, b) < 1e-5


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape,dim", WEIGHTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [0, 1, 2])
def test_weight_op_matches_reference(device, shape, dim, dtype, n):
    w = torch.randn(shape, dtype=dtype, device=device)
    u, v = _uv(w, dim)
    out = ops.spectral_norm_weight(w, u, v, dim, n, 1e-12)
    ref = reference.spectral_norm_weight(w, u, v, dim, n, 1e-12)
    assert out[0].shape == w.shape and out[0].is_contiguous()
    for a, b in zip(out, ref):
        assert a.dtype == dtype and a.shape == b.shape
        assert _rel(a, b) < TOL[dtype] * 10


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_weight_op_half_types(device, dtype):
    w = torch.randn(32, 16, 3, 3, device=device).to(dtype)
    u, v = _uv(w, 0)
    out = ops.spectral_norm_weight(w, u, v, 0, 1, 1e-12)
    ref = reference.spectral_norm_weight(w.double(), u.double(), v.double(), 0, 1, 1e-12)
    for a, b in zip(out, ref):
        assert a.dtype == dtype
        assert _rel(a, b) < TOL[dtype]


@pytest.mark.parametrize("device", DEVICES)
def test_weight_op_channels_last_and_non_contiguous(device):
    w = torch.randn(32, 16, 3, 3, device=device).contiguous(memory_format=torch.channels_last)
    nc = torch.randn(32, 16, 3, 6, device=device)[..., ::2]
    for weight in (w, nc):
        assert not weight.is_contiguous()
        u, v = _uv(weight, 0)
        out = ops.spectral_norm_weight(weight, u, v, 0, 1)
        ref = reference.spectral_norm_weight(weight.contiguous(), u, v, 0, 1)
        for a, b in zip(out, ref):
            assert _rel(a, b) < 1e-5
        g = torch.randn_like(weight)
        x1 = weight.clone().requires_grad_()
        x2 = weight.contiguous().requires_grad_()
        g1, = torch.autograd.grad(ops.spectral_norm_weight(x1, u, v, 0, 1)[0], x1, g)
        g2, = torch.autograd.grad(reference.spectral_norm_weight(x2, u, v, 0, 1)[0], x2, g)
        assert _rel(g1, g2) < 1e-5


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape,dim", WEIGHTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_weight_backward_matches_reference(device, shape, dim, dtype):
    """Gradient through σ with u, v held constant, as torch's spectral norm."""
    w = torch.randn(shape, dtype=dtype, device=device)
    u, v = _uv(w, dim)
    g = torch.randn_like(w)
    for n in (0, 1):
        x1 = w.clone().requires_grad_()
        x2 = w.clone().requires_grad_()
        g1, = torch.autograd.grad(ops.spectral_norm_weight(x1, u, v, dim, n)[0], x1, g)
        g2, = torch.autograd.grad(reference.spectral_norm_weight(x2, u, v, dim, n)[0], x2, g)
        assert g1.dtype == dtype
        assert _rel(g1, g2) < TOL[dtype] * 10


@pytest.mark.parametrize("device", DEVICES)
def test_power_iteration_sigma_gradient(device):
    w = torch.randn(20, 30, dtype=torch.float64, device=device)
    u, v = _uv(w, 0)
    x1, x2 = w.clone().requires_grad_(), w.clone().requires_grad_()
    g1, = torch.autograd.grad(ops.spectral_norm_power_iteration(x1, u, v, 2)[2], x1)
    g2, = torch.autograd.grad(reference.spectral_norm_power_iteration(x2, u, v, 2)[2], x2)
    assert _rel(g1, g2) < 1e-12


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_multi_matches_single_and_reference(device, dtype):
    ws, us, vs, dims = [], [], [], []
    for shape, dim in WEIGHTS:
        w = torch.randn(shape, dtype=dtype, device=device)
        u, v = _uv(w, dim)
        ws.append(w.requires_grad_())
        us.append(u)
        vs.append(v)
        dims.append(dim)
    out = ops.spectral_norm_weight_multi(ws, us, vs, dims, 1, 1e-12)
    ref = reference.spectral_norm_weight_multi(ws, us, vs, dims, 1, 1e-12)
    for i in range(len(ws)):
        single = ops.spectral_norm_weight(ws[i], us[i], vs[i], dims[i], 1, 1e-12)
        for k in range(3):
            assert torch.equal(out[k][i], single[k])  # same arithmetic, one launch or many
            assert _rel(out[k][i], ref[k][i]) < TOL[dtype] * 10
        assert torch.equal(out[3][i], single[3])
    # backward with some layers unused: their gradient is zero
    gs = [torch.randn_like(w) for w in ws]
    used = [0, 2, 3, 6]
    g1 = torch.autograd.grad([out[0][i] for i in used], ws, [gs[i] for i in used], allow_unused=True)
    g2 = torch.autograd.grad([ref[0][i] for i in used], ws, [gs[i] for i in used], allow_unused=True)
    for i in range(len(ws)):
        if i in used:
            assert _rel(g1[i], g2[i]) < TOL[dtype] * 10
        else:
            assert g1[i] is None or not g1[i].any()


@pytest.mark.parametrize("device", DEVICES)
def test_eps_handling_on_tiny_weights(device):
    """‖Wᵀu‖ below eps: normalize divides by eps, as F.normalize does."""
    w = torch.randn(8, 6, dtype=torch.float64, device=device) * 1e-9
    u, v = _uv(w, 0)
    for eps in (1e-12, 1e-6):
        r1 = ops.spectral_norm_weight(w, u, v, 0, 1, eps)
        r2 = reference.spectral_norm_weight(w, u, v, 0, 1, eps)
        for a, b in zip(r1, r2):
            assert _rel(a, b) < 1e-10


def test_deterministic_across_thread_counts():
    ws = [torch.randn(s) for s in [(256, 128, 3, 3), (128, 64, 4, 4), (512, 300)]]
    uvs = [_uv(w, 0) for w in ws]
    a, b = at_one_and_many_threads(
        lambda: ops.spectral_norm_weight_multi(ws, [x[0] for x in uvs], [x[1] for x in uvs], [0, 0, 0], 2))
    for x, y in zip(a[0] + a[1] + a[2] + [a[3]], b[0] + b[1] + b[2] + [b[3]]):
        assert torch.equal(x, y)


# ---- gradcheck, opcheck, compile ------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_float64(device):
    """With n_power_iterations = 0 the op is the function W / (uᵀ W v) of W alone, so finite differences apply
    (for n >= 1 torch's semantics hold u, v constant in the backward, tested against reference above)."""
    for shape, dim in [((4, 3, 2, 2), 0), ((3, 4, 2, 2), 1), ((5, 7), 0)]:
        w = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)
        u, v = _uv(w, dim)
        assert torch.autograd.gradcheck(lambda t: ops.spectral_norm_weight(t, u, v, dim, 0)[0], (w,))
        w2 = w.detach().clone().requires_grad_()
        assert torch.autograd.gradcheck(
            lambda a, b: tuple(ops.spectral_norm_weight_multi([a, b], [u, u], [v, v], [dim, dim], 0)[0]), (w, w2))
    m = torch.randn(6, 5, dtype=torch.float64, device=device, requires_grad=True)
    u, v = _uv(m, 0)
    assert torch.autograd.gradcheck(lambda t: ops.spectral_norm_power_iteration(t, u, v, 0)[2], (m,))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    w = torch.randn(8, 4, 3, 3, device=device, requires_grad=True)
    u, v = _uv(w, 0)
    wt = torch.randn(4, 8, 3, 3, device=device, requires_grad=True)
    ut, vt = _uv(wt, 1)
    m = torch.randn(10, 20, device=device, requires_grad=True)
    um, vm = _uv(m, 0)
    cb = torch.ops.cbgan_ext
    torch.library.opcheck(cb.spectral_norm_power_iteration.default, (m, um, vm, 2, 1e-12))
    torch.library.opcheck(cb.spectral_norm_weight.default, (w, u, v, 0, 1, 1e-12))
    torch.library.opcheck(cb.spectral_norm_weight.default, (wt, ut, vt, 1, 0, 1e-6))
    torch.library.opcheck(cb.spectral_norm_weight_multi.default, ([w, wt], [u, ut], [v, vt], [0, 1], 1, 1e-12))
    g = torch.randn_like(w)
    sigma = torch.tensor(1.7, device=device)
    torch.library.opcheck(cb._spectral_norm_weight_backward.default, (g, w.detach(), u, v, sigma, 0))
    sigmas = torch.tensor([1.7, 2.1], device=device)
    torch.library.opcheck(cb._spectral_norm_weight_multi_backward.default,
                          ([g, None], [w.detach(), wt.detach()], [u, ut], [v, vt], sigmas, [0, 1]))


def test_torch_compile_fullgraph_op():
    w = torch.randn(16, 8, 3, 3, requires_grad=True)
    u, v = _uv(w, 0)

    def f(t):
        w_sn, u2, v2, s = ops.spectral_norm_weight(t * 2.0, u, v, 0, 1, 1e-12)
        return (w_sn * 3.0).sum() + s, u2, v2

    cf = torch.compile(f, fullgraph=True, backend="aot_eager")
    r1, r2 = cf(w), f(w)
    g1, = torch.autograd.grad(r1[0], w)
    g2, = torch.autograd.grad(r2[0], w)
    assert torch.allclose(r1[0], r2[0]) and torch.allclose(g1, g2)
    assert torch.equal(r1[1], r2[1]) and torch.equal(r1[2], r2[2])


def _small_d(device="cpu", dtype=torch.float32, fused=True):
    torch.manual_seed(1)
    wrap = (lambda m: m) if fused else torch_sn
    conv = SNConv2d if fused else nn.Conv2d
    lin = SNLinear if fused else nn.Linear
    return nn.Sequential(wrap(conv(3, 8, 3, 1, 1)), nn.LeakyReLU(0.1), wrap(conv(8, 16, 4, 2, 1)), nn.LeakyReLU(0.1),
                         nn.Flatten(), wrap(lin(16 * 4 * 4, 1))).to(device, dtype)


def test_torch_compile_fullgraph_module_training_steps():
    eager = _small_d()
    compiled_model = copy.deepcopy(eager)
    cm = torch.compile(compiled_model, fullgraph=True, backend="aot_eager")
    x = torch.randn(4, 3, 8, 8)
    for step in range(3):
        if step == 2:  # the update_ path inside a compiled forward
            spectral_norm_update_(eager)
            spectral_norm_update_(compiled_model)
        y1, y2 = cm(x), eager(x)
        y1.sum().backward()
        y2.sum().backward()
        assert torch.allclose(y1, y2, rtol=1e-6, atol=1e-7)
        for a, b in zip(compiled_model.state_dict().values(), eager.state_dict().values()):
            assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)
        for a, b in zip(compiled_model.parameters(), eager.parameters()):
            assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-7)


# ---- layers against torch.nn.utils.spectral_norm ---------------------------------------------------------------

LAYERS = {
    "conv3x3": (lambda **k: nn.Conv2d(4, 8, 3, 1, 1, **k), SNConv2d, (4, 8, 3, 1, 1), lambda: torch.randn(3, 4, 7, 7)),
    "conv4x4": (lambda **k: nn.Conv2d(4, 6, 4, 2, 1, **k), SNConv2d, (4, 6, 4, 2, 1), lambda: torch.randn(3, 4, 8, 8)),
    "tconv4x4": (lambda **k: nn.ConvTranspose2d(6, 4, 4, 2, 1, **k), SNConvTranspose2d, (6, 4, 4, 2, 1),
                 lambda: torch.randn(3, 6, 4, 4)),
    "linear": (lambda **k: nn.Linear(12, 7, **k), SNLinear, (12, 7), lambda: torch.randn(5, 12)),
    "1xN": (lambda **k: nn.Linear(40, 1, **k), SNLinear, (40, 1), lambda: torch.randn(5, 40)),
    "Nx1": (lambda **k: nn.Linear(1, 40, **k), SNLinear, (1, 40), lambda: torch.randn(5, 1)),
    "embedding": (lambda **k: nn.Embedding(10, 16, **k), SNEmbedding, (10, 16), lambda: torch.randint(0, 10, (6,))),
}


def _pair(name, dtype, device="cpu", eps=1e-12, n=1):
    make_torch, cls, args, make_x = LAYERS[name]
    torch.manual_seed(3)
    a = torch_sn(make_torch(), eps=eps, n_power_iterations=n).to(device, dtype)
    torch.manual_seed(3)
    b = cls(*args, eps=eps, n_power_iterations=n).to(device, dtype)
    x = make_x().to(device)
    if x.is_floating_point():
        x = x.to(dtype)
    return a, b, x


def _sigma(m):
    w = reference._sn_matrix(m.weight_orig, m.sn_dim if hasattr(m, "sn_dim") else (
        1 if isinstance(m, nn.ConvTranspose2d) else 0))
    return torch.dot(m.weight_u, torch.mv(w, m.weight_v))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("use_update", [False, True])
def test_layer_matches_torch_over_training_steps(device, name, dtype, use_update):
    a, b = _pair(name, dtype, device, eps=1e-6)[:2]
    x = _pair(name, dtype, device)[2]
    for k, t in a.state_dict().items():
        assert torch.equal(t, b.state_dict()[k]), k  # same seed, same initial state
    assert [n for n, _ in a.named_parameters()] == [n for n, _ in b.named_parameters()]
    opt_a = torch.optim.Adam(a.parameters(), lr=1e-2)
    opt_b = torch.optim.Adam(b.parameters(), lr=1e-2)
    tol = TOL[dtype] * 20
    for step in range(4):
        if use_update:
            spectral_norm_update_(b)
        ya, yb = a(x), b(x)
        if step % 2:  # two forwards in a step (D(real), D(fake)): two power iterations, as torch
            ya, yb = ya + a(x), yb + b(x)
        ya.square().mean().backward()
        yb.square().mean().backward()
        assert _rel(yb, ya) < tol
        assert _rel(b.weight_u, a.weight_u) < tol and _rel(b.weight_v, a.weight_v) < tol
        assert _rel(b.weight, a.weight) < tol  # W_sn of the last forward
        assert _rel(b.normalized_weight(), a.weight) < tol
        assert _rel(_sigma(b), _sigma(a)) < tol
        assert _rel(b.weight_orig.grad, a.weight_orig.grad) < tol * 10
        if getattr(a, "bias", None) is not None:
            assert _rel(b.bias.grad, a.bias.grad) < tol * 10
        opt_a.step()
        opt_b.step()
        opt_a.zero_grad()
        opt_b.zero_grad()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["conv3x3", "tconv4x4", "embedding"])
def test_eval_leaves_u_v_untouched(device, name):
    a, b, x = _pair(name, torch.float64, device)
    a(x), b(x)  # one training step first
    a.eval(), b.eval()
    u, v = b.weight_u.clone(), b.weight_v.clone()
    for _ in range(3):
        ya, yb = a(x), b(x)
        assert torch.equal(b.weight_u, u) and torch.equal(b.weight_v, v)
        assert _rel(yb, ya) < 1e-10
    spectral_norm_update_(b)  # eval layers: σ = uᵀ W v, no iteration
    yb = b(x)
    assert torch.equal(b.weight_u, u) and torch.equal(b.weight_v, v)
    assert _rel(yb, ya) < 1e-10


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(LAYERS))
def test_loading_torch_state_dict_gives_identical_outputs(device, name):
    a, _, x = _pair(name, torch.float32, device)
    for _ in range(2):
        a(x)  # move u, v away from their initial values
    sd = a.state_dict()
    make_torch, cls, args, _ = LAYERS[name]
    torch.manual_seed(123)
    b = cls(*args).to(device)
    b.load_state_dict(sd)
    for k, t in sd.items():
        assert torch.equal(b.state_dict()[k], t)
    assert b.state_dict()._metadata[""]["spectral_norm"] == sd._metadata[""]["spectral_norm"]
    a.eval(), b.eval()
    assert torch.allclose(a(x), b(x), rtol=1e-5, atol=1e-6)
    a.train(), b.train()
    assert torch.allclose(a(x), b(x), rtol=1e-5, atol=1e-6)
    # and back: ours into torch's
    c = torch_sn(make_torch()).to(device)
    c.load_state_dict(b.state_dict())
    c.eval(), b.eval()
    assert torch.allclose(c(x), b(x), rtol=1e-5, atol=1e-6)


def test_loading_old_format_state_dict_as_torch_does():
    """A pre-version-1 checkpoint (with `weight`, without `weight_v`) goes through torch's own load hook."""
    a, b, x = _pair("conv3x3", torch.float64)
    a(x)
    sd = a.state_dict()
    old = {k: t for k, t in sd.items() if k != "weight_v"}
    old["weight"] = a.weight.detach()
    old = type(sd)(old)
    old._metadata = {"": {"version": 1}}
    a2 = _pair("conv3x3", torch.float64)[0]
    a2.load_state_dict(old)
    b.load_state_dict(copy.deepcopy(old))
    assert torch.allclose(b.weight_v, a2.weight_v)
    a2.eval(), b.eval()
    assert torch.allclose(a2(x), b(x))


def test_convert_spectral_norm_keeps_values_and_parameters():
    model = _small_d(fused=False)
    model.add_module("tconv", torch_sn(nn.ConvTranspose2d(1, 2, 3)))
    model.add_module("emb", torch_sn(nn.Embedding(5, 4), eps=1e-6, n_power_iterations=2))
    model.add_module("plain", nn.Linear(2, 2))
    x = torch.randn(4, 3, 8, 8)
    model[:6](x)  # move u, v away from their initial values
    ref = _small_d(fused=False)
    ref.load_state_dict({k: t for k, t in model.state_dict().items() if k[0] in "012345"})
    params = list(model.parameters())
    conv = convert_spectral_norm(model)
    assert conv is model
    assert isinstance(model[0], SNConv2d) and isinstance(model[5], SNLinear)
    assert isinstance(model.tconv, SNConvTranspose2d) and model.tconv.sn_dim == 1
    assert isinstance(model.emb, SNEmbedding) and model.emb.eps == 1e-6 and model.emb.n_power_iterations == 2
    assert type(model.plain) is nn.Linear
    assert all(p is q for p, q in zip(params, model.parameters()))
    assert not any(model[0]._forward_pre_hooks)
    seq = model[:6]
    for _ in range(3):
        y1, y2 = seq(x), ref(x)
        assert torch.allclose(y1, y2, rtol=1e-5, atol=1e-6)
    sd = model.state_dict()
    assert "0.weight_orig" in sd and "0.weight_u" in sd and "0.weight_v" in sd
    single = convert_spectral_norm(torch_sn(nn.Linear(3, 4)))
    assert isinstance(single, SNLinear)


def test_convert_spectral_norm_takes_over_torch_parametrizations():
    """torch.nn.utils.parametrizations.spectral_norm (torch's current API) converts too: same Parameter objects,
    u and v, settings; eval outputs equal; a training step equal once the power iteration has converged."""
    P = nn.utils.parametrizations.spectral_norm
    torch.manual_seed(0)
    model = nn.Sequential(P(nn.Conv2d(3, 4, 3, padding=1)), nn.LeakyReLU(0.1), P(nn.ConvTranspose2d(4, 2, 3)),
                          nn.Flatten(), P(nn.Linear(2 * 10 * 10, 5), eps=1e-6, n_power_iterations=2))
    emb = P(nn.Embedding(6, 4))
    x = torch.randn(3, 3, 8, 8)
    for _ in range(30):  # converge u, v
        model(x), emb(torch.arange(6))
    ref, ref_emb = copy.deepcopy(model), copy.deepcopy(emb)
    layer0, params = model[0], {id(p) for p in model.parameters()}
    conv = convert_spectral_norm(model)
    assert isinstance(conv[0], SNConv2d) and isinstance(conv[2], SNConvTranspose2d) and isinstance(conv[4], SNLinear)
    assert conv[2].sn_dim == 1 and conv[4].eps == 1e-6 and conv[4].n_power_iterations == 2
    assert {id(p) for p in conv.parameters()} == params
    assert conv[0].weight_orig is layer0.parametrizations.weight.original
    assert nn.utils.parametrize.is_parametrized(layer0, "weight")  # the layer object given is left as it was
    assert set(conv.state_dict()) == {f"{i}.{k}" for i in (0, 2, 4) for k in ("bias", "weight_orig", "weight_u",
                                                                            "weight_v")}
    conv_emb = convert_spectral_norm(emb)
    assert isinstance(conv_emb, SNEmbedding)
    for a, b in ((conv, ref), (conv_emb, ref_emb)):
        a.eval(), b.eval()
    torch.testing.assert_close(conv(x), ref(x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(conv_emb(torch.arange(6)), ref_emb(torch.arange(6)), rtol=1e-5, atol=1e-6)
    conv.train(), ref.train()
    torch.testing.assert_close(conv(x), ref(x), rtol=1e-4, atol=1e-5)
    # a weight with another parametrization besides spectral norm is not touched
    other = P(nn.Linear(3, 3))
    nn.utils.parametrize.register_parametrization(other, "weight", nn.Identity())
    assert convert_spectral_norm(other) is other


def test_update_then_changed_weight_runs_its_own_step():
    """spectral_norm_update_ counts as the next forward's step only while W is unchanged."""
    a, b, x = _pair("conv3x3", torch.float64)
    spectral_norm_update_(b)  # a step on the current W ...
    with torch.no_grad():
        a(x)  # ... as a torch forward would take
        b.weight_orig.mul_(1.5)
        a.weight_orig.mul_(1.5)
    ya, yb = a(x), b(x)  # W changed: a step of its own, in both
    assert _rel(yb, ya) < 1e-10 and _rel(b.weight_u, a.weight_u) < 1e-10 and _rel(b.weight_v, a.weight_v) < 1e-10


def test_update_under_no_grad_keeps_gradients():
    a, b, x = _pair("conv4x4", torch.float64)
    with torch.no_grad():
        spectral_norm_update_(b)
    ya, yb = a(x), b(x)
    ya.sum().backward()
    yb.sum().backward()
    assert _rel(yb, ya) < 1e-10
    assert _rel(b.weight_orig.grad, a.weight_orig.grad) < 1e-9


def test_update_groups_by_dtype_and_settings():
    model = nn.Sequential(SNLinear(4, 5), SNLinear(5, 6, eps=1e-6), SNLinear(6, 7, n_power_iterations=2),
                          SNLinear(7, 3).double())
    ref = copy.deepcopy(model)
    spectral_norm_update_(model)
    for m, r in zip(model, ref):
        x = torch.randn(2, m.in_features, dtype=m.weight_orig.dtype)
        assert torch.allclose(m(x), r(x), rtol=1e-6, atol=1e-7)
        assert torch.allclose(m.weight_u, r.weight_u, rtol=1e-6, atol=1e-7)


def test_embedding_options():
    a = torch_sn(nn.Embedding(10, 6, padding_idx=2))
    b = SNEmbedding(10, 6, padding_idx=2, sparse=True)
    b.load_state_dict(a.state_dict())
    idx = torch.tensor([[0, 2, 5], [2, 9, 1]])
    ya, yb = a(idx), b(idx)
    ya.sum().backward()
    yb.sum().backward()
    assert torch.allclose(ya, yb, rtol=1e-6, atol=1e-7)
    assert not b.weight_orig.grad.is_sparse
    assert torch.allclose(a.weight_orig.grad, b.weight_orig.grad, rtol=1e-5, atol=1e-7)


def test_constructor_arguments():
    m = SNConv2d(3, 4, kernel_size=3, stride=2, padding=1, bias=False, padding_mode="reflect", eps=1e-6)
    assert m.bias is None and m.padding_mode == "reflect" and m.eps == 1e-6 and m.n_power_iterations == 1
    assert isinstance(m, nn.Conv2d)
    assert m(torch.randn(1, 3, 8, 8)).shape == (1, 4, 4, 4)
    t = SNConvTranspose2d(4, 3, 4, 2, 1)
    assert t(torch.randn(1, 4, 5, 5), output_size=(11, 11)).shape == (1, 3, 11, 11)
    with pytest.raises(ValueError, match="n_power_iterations"):
        SNLinear(3, 4, n_power_iterations=0)


# ---- bad inputs --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_bad_inputs_name_the_op(device):
    w = torch.randn(8, 4, 3, 3, device=device)
    u, v = _uv(w, 0)
    W = "spectral_norm_weight"
    bad = [
        ((w, u[:5], v, 0, 1, 1e-12), "u must be 1-D of size 8"),
        ((w, u, v[:5], 0, 1, 1e-12), "v must be 1-D of size 36"),
        ((w, u.double(), v, 0, 1, 1e-12), "u and v must have the weight's dtype"),
        ((w, u, v, 4, 1, 1e-12), "dim must be in"),
        ((w, u, v, 0, -1, 1e-12), "n_power_iterations must be >= 0"),
        ((w, u, v, 0, 1, -1.0), "eps must be finite and >= 0"),
        ((w, u, v, 0, 1, float("nan")), "eps must be finite and >= 0"),
        ((w.new_zeros(0, 4), u[:0], v[:4], 0, 1, 1e-12), "empty"),
        ((w.long(), u.long(), v.long(), 0, 1, 1e-12), "float16, bfloat16, float32 or float64"),
        ((w, u.view(2, 4), v, 0, 1, 1e-12), "u must be 1-D"),
    ]
    for args, msg in bad:
        with pytest.raises(RuntimeError, match=f"{W}: .*{msg}"):
            torch.ops.cbgan_ext.spectral_norm_weight(*args)
    with pytest.raises(RuntimeError, match="spectral_norm_power_iteration: weight_mat must be 2-D"):
        ops.spectral_norm_power_iteration(w, u, v)
    with pytest.raises(ValueError, match="spectral_norm_weight: n_power_iterations"):
        ops.spectral_norm_weight(w, u, v, 0, -2)
    with pytest.raises(TypeError, match="spectral_norm_weight: weight must be a tensor"):
        ops.spectral_norm_weight([[1.0]], u, v)
    with pytest.raises(TypeError, match="spectral_norm_weight: dim must be an int"):
        ops.spectral_norm_weight(w, u, v, 0.5)
    M = "spectral_norm_weight_multi"
    with pytest.raises(RuntimeError, match=f"{M}: .*same length"):
        ops.spectral_norm_weight_multi([w, w], [u], [v, v], [0, 0])
    with pytest.raises(ValueError, match=f"{M}: .*at least one"):
        ops.spectral_norm_weight_multi([], [], [], [])
    with pytest.raises(RuntimeError, match=f"{M}: all weights must have one dtype"):
        ops.spectral_norm_weight_multi([w, w.double()], [u, u.double()], [v, v.double()], [0, 0])
    with pytest.raises(TypeError, match=f"{M}: weights must be a list of tensors"):
        ops.spectral_norm_weight_multi(w, [u], [v], [0])
    with pytest.raises(RuntimeError, match="_spectral_norm_weight_backward: grad must have the weight's shape"):
        torch.ops.cbgan_ext._spectral_norm_weight_backward(w[:2], w, u, v, torch.tensor(1.0, device=device), 0)


@pytest.mark.needs_cuda
def test_mixed_devices_raise():
    w = torch.randn(8, 4, device="cuda")
    u, v = _uv(w, 0)
    with pytest.raises(RuntimeError, match="spectral_norm_weight: .*same device"):
        ops.spectral_norm_weight(w, u.cpu(), v)
    with pytest.raises(RuntimeError, match="spectral_norm_weight_multi: .*same device"):
        ops.spectral_norm_weight_multi([w, w.cpu()], [u, u.cpu()], [v, v.cpu()], [0, 0])


# ---- CUDA ---------------------------------------------------------------------------------------------------------


@pytest.mark.needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_cpu_cuda_parity(dtype):
    ws, us, vs, dims = [], [], [], []
    for shape, dim in WEIGHTS + [((512, 256, 3, 3), 0), ((256, 512, 4, 4), 1)]:
        w = torch.randn(shape).to(dtype)
        u, v = _uv(w, dim)
        ws.append(w), us.append(u), vs.append(v), dims.append(dim)
    for n in (0, 1, 2):
        c = ops.spectral_norm_weight_multi(ws, us, vs, dims, n)
        g = ops.spectral_norm_weight_multi([w.cuda() for w in ws], [u.cuda() for u in us], [v.cuda() for v in vs],
                                           dims, n)
        tol = TOL[dtype] * 10
        for k in range(3):
            for a, b in zip(c[k], g[k]):
                assert _rel(b, a) < tol
        assert _rel(g[3], c[3]) < tol
    # g holds n = 2: the single-layer launch must give the multi-layer result
    single = ops.spectral_norm_weight(ws[-1].cuda(), us[-1].cuda(), vs[-1].cuda(), dims[-1], 2)
    assert _rel(single[0], g[0][-1]) < TOL[dtype] * 10 and _rel(single[3], g[3][-1]) < TOL[dtype] * 10


@pytest.mark.needs_cuda
def test_cuda_gradcheck_and_many_layers():
    w = torch.randn(4, 3, 2, 2, dtype=torch.float64, device="cuda", requires_grad=True)
    u, v = _uv(w, 0)
    assert torch.autograd.gradcheck(lambda t: ops.spectral_norm_weight(t, u, v, 0, 0)[0], (w,))
    # more layers than one launch carries: the CUDA op splits them
    ws = [torch.randn(5 + i, 3 + i % 4, device="cuda", requires_grad=True) for i in range(100)]
    uvs = [_uv(x, 0) for x in ws]
    out = ops.spectral_norm_weight_multi(ws, [a for a, _ in uvs], [b for _, b in uvs], [0] * 100, 1)
    ref = reference.spectral_norm_weight_multi(ws, [a for a, _ in uvs], [b for _, b in uvs], [0] * 100, 1)
    for a, b in zip(out[0], ref[0]):
        assert _rel(a, b) < 1e-5
    g1 = torch.autograd.grad(out[0], ws, [torch.ones_like(x) for x in ws])
    g2 = torch.autograd.grad(ref[0], ws, [torch.ones_like(x) for x in ws])
    for a, b in zip(g1, g2):
        assert _rel(a, b) < 1e-4


@pytest.mark.parametrize("shape,dim", [((8, 4, 3, 3), 0), ((4, 8, 4, 4), 1), ((5, 7), 0), ((1, 9), 0), ((9, 1), 0)])
def test_aten_fallback_matches_cpu_kernels(shape, dim):
    """The ATen implementation (the CUDA key without CUDA kernels, or with CBGAN_EXT_SN_CUDA=aten) is device-generic,
    so check it on CPU against the CPU kernels, forward and backward, single and multi-layer."""
    from cbgan_ext.ops import spectral_norm as sn
    w = torch.randn(shape, dtype=torch.float64)
    n = shape[dim]
    u = torch.nn.functional.normalize(torch.randn(n, dtype=torch.float64), dim=0)
    v = torch.nn.functional.normalize(torch.randn(w.numel() // n, dtype=torch.float64), dim=0)
    g = torch.randn(shape, dtype=torch.float64)

    def same(xs, ys):
        return all(x.shape == y.shape and x.dtype == y.dtype and torch.allclose(x, y) for x, y in zip(xs, ys))

    a = torch.ops.cbgan_ext.spectral_norm_weight(w, u, v, dim, 2, 1e-12)
    b = sn._weight_cuda(w, u, v, dim, 2, 1e-12)
    assert same(a, b)
    assert same([torch.ops.cbgan_ext._spectral_norm_weight_backward(g, w, a[1], a[2], a[3], dim)],
                [sn._weight_backward_cuda(g, w, b[1], b[2], b[3], dim)])
    m = sn._sn_mat(w, dim).contiguous()
    assert same(torch.ops.cbgan_ext.spectral_norm_power_iteration(m, u, v, 1, 1e-12), sn._pi_cuda(m, u, v, 1, 1e-12))
    ma = torch.ops.cbgan_ext.spectral_norm_weight_multi([w, 2 * w], [u, u], [v, v], [dim, dim], 1, 1e-12)
    mb = sn._multi_cuda([w, 2 * w], [u, u], [v, v], [dim, dim], 1, 1e-12)
    assert same(ma[0] + ma[1] + ma[2] + [ma[3]], mb[0] + mb[1] + mb[2] + [mb[3]])
    back = torch.ops.cbgan_ext._spectral_norm_weight_multi_backward
    assert same(back([g, None], [w, 2 * w], ma[1], ma[2], ma[3], [dim, dim]),
                sn._multi_backward_cuda([g, None], [w, 2 * w], mb[1], mb[2], mb[3], [dim, dim]))


@pytest.mark.parametrize("choice", ["fused", "aten"])
def test_sn_cuda_backend_choice(choice):
    """CBGAN_EXT_SN_CUDA picks who serves the CUDA key: the fused kernels (default, when built) or the ATen
    implementation; a bad value is refused at import."""
    import os
    import subprocess
    import sys
    code = ("import torch, cbgan_ext\n"
            "d = torch._C._dispatch_dump('cbgan_ext::spectral_norm_weight').splitlines()\n"
            "print([l.split(':')[1].strip().split()[-1] for l in d if l.startswith('CUDA:')][0])\n")
    env = dict(os.environ, CBGAN_EXT_SN_CUDA=choice)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    fused = cbgan_ext.build_info()["cuda"] and choice == "fused"
    assert ("spectral_norm.cu" in out) == fused and ("library.py" in out) == (not fused), out
    env["CBGAN_EXT_SN_CUDA"] = "fast"
    r = subprocess.run([sys.executable, "-c", "import cbgan_ext"], env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "CBGAN_EXT_SN_CUDA must be 'fused' or 'aten'" in r.stderr

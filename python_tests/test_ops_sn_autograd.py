"""Spectral norm's autograd is the C++ kernel of csrc/autograd.cpp (issue 15): one path for the ops, the modules,
torch.compile and libtorch users; no Python autograd is registered for the spectral-norm ops."""
import pytest
import torch
import torch.nn.functional as F

from cbgan_ext import ops, reference
from cbgan_ext.nn import SNLinear, spectral_norm_update_

SN_OPS = ["spectral_norm_power_iteration", "spectral_norm_weight", "spectral_norm_weight_multi",
          "_spectral_norm_weight_backward", "_spectral_norm_weight_multi_backward"]


def _uv(weight, dim):
    h = weight.shape[dim]
    u = F.normalize(torch.randn(h, dtype=weight.dtype), dim=0)
    v = F.normalize(torch.randn(weight.numel() // h, dtype=weight.dtype), dim=0)
    return u, v


@pytest.mark.parametrize("op", SN_OPS)
def test_autograd_kernel_is_the_cpp_one(op):
    rows = [r for r in torch._C._dispatch_dump(f"cbgan_ext::{op}").splitlines() if r.startswith("Autograd")]
    assert len(rows) == 1 and "csrc/autograd.cpp" in rows[0], rows
    # not overridden by a Python registration (torch.library.register_autograd would replace it)
    assert "library.py" not in rows[0] and "autograd.py" not in rows[0]


def test_outputs_u_v_sigma_are_constants():
    w = torch.randn(6, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    u, v = _uv(w, 0)
    w_sn, u2, v2, s = ops.spectral_norm_weight(w, u, v, 0, 1)
    assert w_sn.requires_grad and w_sn.grad_fn is not None
    assert not (u2.requires_grad or v2.requires_grad or s.requires_grad)
    out = ops.spectral_norm_weight_multi([w, w.detach() * 2], [u, u], [v, v], [0, 0], 1)
    assert out[0][0].requires_grad  # (one node for all layers: every W_sn output is differentiable)
    assert not any(t.requires_grad for t in out[1] + out[2] + [out[3]])
    u3, v3, s3 = ops.spectral_norm_power_iteration(w.flatten(1), u, v, 1)
    assert s3.requires_grad and not (u3.requires_grad or v3.requires_grad)
    with torch.no_grad():
        assert not ops.spectral_norm_weight(w, u, v, 0, 1)[0].requires_grad


@pytest.mark.parametrize("dim", [0, 1])
def test_weight_gradient_against_explicit_formula(dim):
    """dL/dW = G / σ − (⟨G, W⟩ / σ²) u vᵀ with the returned u, v (in the [size(dim), -1] view), float64."""
    w = torch.randn(5, 7, 3, 2, dtype=torch.float64, requires_grad=True)
    u, v = _uv(w, dim)
    G = torch.randn_like(w)
    w_sn, u2, v2, s = ops.spectral_norm_weight(w, u, v, dim, 2)
    g, = torch.autograd.grad(w_sn, w, G)
    gm = reference._sn_matrix(G, dim)
    expect = gm / s - (G * w).sum() / s ** 2 * torch.outer(u2, v2)
    assert torch.allclose(reference._sn_matrix(g, dim), expect, rtol=1e-12, atol=1e-12)


def test_multi_gradient_per_layer_and_unused_layers():
    ws = [torch.randn(8, 3, 3, 3, dtype=torch.float64, requires_grad=True),
          torch.randn(4, 6, dtype=torch.float64, requires_grad=True),
          torch.randn(3, 5, 2, 2, dtype=torch.float64, requires_grad=True)]
    dims = [0, 0, 1]
    uvs = [_uv(w, d) for w, d in zip(ws, dims)]
    out = ops.spectral_norm_weight_multi(ws, [a for a, _ in uvs], [b for _, b in uvs], dims, 1)
    G = torch.randn_like(ws[2])
    g = torch.autograd.grad(out[0][2], ws, G, allow_unused=True)
    single = ops.spectral_norm_weight(ws[2], *uvs[2], 1, 1)
    ref, = torch.autograd.grad(single[0], ws[2], G)
    assert torch.equal(g[2], ref)  # same kernels: bitwise the single-layer gradient
    # layers whose W_sn took no part get zeros (as the Python autograd before), never garbage
    for k in (0, 1):
        assert g[k] is None or (g[k].shape == ws[k].shape and not g[k].any())


def test_power_iteration_gradgradcheck():
    """σ = uᵀ W v with u, v constants: its gradient u vᵀ is written in ATen ops, so higher orders work."""
    m = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    u, v = _uv(m, 0)
    assert torch.autograd.gradcheck(lambda t: ops.spectral_norm_power_iteration(t, u, v, 0)[2], (m,))
    assert torch.autograd.gradgradcheck(lambda t: ops.spectral_norm_power_iteration(t, u, v, 0)[2], (m,))


def test_saved_tensors_are_checked_and_freed():
    w = torch.randn(6, 5, requires_grad=True)
    u, v = _uv(w, 0)
    w_sn = ops.spectral_norm_weight(w, u, v, 0, 1)[0]
    w_sn.sum().backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        w_sn.sum().backward()
    leaf = torch.randn(6, 5, requires_grad=True)
    x = leaf * 1.0
    w_sn = ops.spectral_norm_weight(x, u, v, 0, 1)[0]
    with torch.no_grad():
        x.mul_(2)  # the saved weight changed before the backward: autograd must refuse, not use the new values
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        w_sn.sum().backward()


def test_module_gradients_match_reference_through_update_and_layers():
    torch.manual_seed(0)
    a = torch.nn.Sequential(SNLinear(6, 8), torch.nn.Tanh(), SNLinear(8, 3)).double()
    b = torch.nn.Sequential(SNLinear(6, 8), torch.nn.Tanh(), SNLinear(8, 3)).double()
    b.load_state_dict(a.state_dict())
    x = torch.randn(4, 6, dtype=torch.float64)
    spectral_norm_update_(a)  # the multi op's autograd
    a(x).pow(2).sum().backward()
    y = x
    for m in b:  # the reference, layer by layer
        if isinstance(m, SNLinear):
            w_sn, u, v, _ = reference.spectral_norm_weight(m.weight_orig, m.weight_u, m.weight_v, 0, 1, m.eps)
            with torch.no_grad():
                m.weight_u.copy_(u), m.weight_v.copy_(v)
            y = F.linear(y, w_sn, m.bias)
        else:
            y = m(y)
    y.pow(2).sum().backward()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-10, atol=1e-12)


_ATEN_ROUTE = r"""
import warnings
import torch
import torch.nn.functional as F
from cbgan_ext import ops
from cbgan_ext.ops import spectral_norm as sn

torch.manual_seed(0)
w = torch.randn(6, 4, 3, 2, dtype=torch.float64, requires_grad=True)
w2 = torch.randn(5, 6, 2, 2, dtype=torch.float64, requires_grad=True)
u = F.normalize(torch.randn(6, dtype=torch.float64), dim=0)
v = F.normalize(torch.randn(24, dtype=torch.float64), dim=0)
u2 = F.normalize(torch.randn(6, dtype=torch.float64), dim=0)
v2 = F.normalize(torch.randn(20, dtype=torch.float64), dim=0)
G = torch.randn_like(w)

def grads():
    a = torch.autograd.grad(ops.spectral_norm_weight(w, u, v, 0, 1)[0], w, G)[0]
    out = ops.spectral_norm_weight_multi([w, w2], [u, u2], [v, v2], [0, 1], 1)[0]
    b = torch.autograd.grad(out[0], [w, w2], G, allow_unused=True)
    c = torch.autograd.grad(ops.spectral_norm_power_iteration(w.flatten(1), u, v, 2)[2], w)[0]
    return [a, b[0], b[1], c]

fused = grads()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # overriding the C++ CPU kernels, in this process only
    for name, fn in [("spectral_norm_power_iteration", sn._pi_cuda), ("spectral_norm_weight", sn._weight_cuda),
                     ("_spectral_norm_weight_backward", sn._weight_backward_cuda),
                     ("spectral_norm_weight_multi", sn._multi_cuda),
                     ("_spectral_norm_weight_multi_backward", sn._multi_backward_cuda)]:
        torch.library.register_kernel("cbgan_ext::" + name, "cpu", fn)
dump = torch._C._dispatch_dump("cbgan_ext::spectral_norm_weight")
assert "library.py" in [l for l in dump.splitlines() if l.startswith("CPU:")][0], dump
aten = grads()
for x, y in zip(fused, aten):
    assert (x is None and (y is None or not y.any())) or torch.allclose(x, y, rtol=1e-10, atol=1e-12), (x, y)
assert torch.autograd.gradcheck(lambda t: ops.spectral_norm_weight(t, u, v, 0, 0)[0], (w,))
try:
    g = torch.autograd.grad((ops.spectral_norm_weight(w, u, v)[0] * G).sum(), w, create_graph=True)[0]
    (g * G).sum().backward()
    raise SystemExit("double backward did not raise")
except RuntimeError as e:
    assert str(e).startswith("_spectral_norm_weight_backward: double backward is not supported"), e
print("ok")
"""


def test_aten_kernels_get_gradients_from_the_same_cpp_autograd():
    """The ATen kernels that serve CUDA without fused kernels sit below the same C++ autograd kernel. Without a GPU,
    register them for the CPU key in a subprocess: gradients (gradcheck too) and the double-backward error follow."""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", _ATEN_ROUTE], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr

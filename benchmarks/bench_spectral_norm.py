"""Spectral norm on the SNDCGAN discriminator of CBGAN (supplementary, Table 3): fused vs torch's two.

Two groups per device:
  * "spectral_norm update": the spectral-norm step of all 8 SN layers (power iteration, σ and W / σ, in
    training mode with grad enabled, as inside a forward). fused = cbgan_ext.nn.spectral_norm_update_ (one
    launch for the model); fused_per_layer = one fused op per layer (what a layer's forward does without
    the update_ call); torch_sn = torch.nn.utils.spectral_norm's pre-hooks; torch_param_sn =
    torch.nn.utils.parametrizations.spectral_norm (reading .weight runs its parametrization).
  * "SNDCGAN-D fwd+bwd B=64": the discriminator's forward and backward on 32x32 images. fused = update_ then
    forward/backward; fused_layers = our layers alone; torch_sn / torch_param_sn = the same network built with
    torch's spectral norms.
  * "SN autograd": the SN layers' own forward + backward (W_sn of every layer, buffers updated, then the
    gradients w.r.t. the weights for given dL/dW_sn), per layer (what a layer's forward calls) and for the
    whole model (spectral_norm_update_'s op). fused = the ops' C++ autograd kernel (csrc/autograd.cpp), the
    path the layers take; python_fn = the Python autograd.Function the layers used before issue 15 (the same
    kernels called below autograd, replicated here as the baseline). Rows of their own and one row timing both
    interleaved call by call in one process (order alternating; medians and the ratio in its extra_info).
The summary script divides each time by the fused time of its group.
"""
import statistics
import time

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations
from torch.nn.utils import spectral_norm as torch_sn

from cbgan_ext import ops
from cbgan_ext.nn import SNConv2d, SNLinear, spectral_norm_update_
from cbgan_ext.ops.spectral_norm import spectral_norm_weight_module, spectral_norm_weight_multi_module
from conftest import DEVICES, timed

# Table 3: (in, out, kernel, stride); padding 1, LeakyReLU(0.1) after each conv, global sum pooling, FC(512, 1).
SNDCGAN_D = [(3, 64, 3, 1), (64, 64, 4, 2), (64, 128, 3, 1), (128, 128, 4, 2), (128, 256, 3, 1), (256, 256, 4, 2),
             (256, 512, 3, 1)]
EPS = 1e-6  # StudioGAN's spectral-norm eps


class GlobalSumPool(nn.Module):
    def forward(self, x):
        return x.sum(dim=(2, 3))


def sndcgan_discriminator(kind, width=1.0):
    """kind: "fused" (cbgan_ext layers), "torch_sn" or "torch_param_sn"; width scales the channels (the main
    job trains width 0.25)."""
    torch.manual_seed(0)
    layers = []
    for cin, cout, k, s in SNDCGAN_D:
        cin, cout = (cin if cin == 3 else int(cin * width)), int(cout * width)
        if kind == "fused":
            conv = SNConv2d(cin, cout, k, s, 1, eps=EPS)
        elif kind == "torch_sn":
            conv = torch_sn(nn.Conv2d(cin, cout, k, s, 1), eps=EPS)
        else:
            conv = parametrizations.spectral_norm(nn.Conv2d(cin, cout, k, s, 1), eps=EPS)
        layers += [conv, nn.LeakyReLU(0.1)]
    last = int(512 * width)
    if kind == "fused":
        fc = SNLinear(last, 1, eps=EPS)
    elif kind == "torch_sn":
        fc = torch_sn(nn.Linear(last, 1), eps=EPS)
    else:
        fc = parametrizations.spectral_norm(nn.Linear(last, 1), eps=EPS)
    return nn.Sequential(*layers, GlobalSumPool(), fc)


def _sn_update_fn(impl, model):
    if impl == "fused":
        return lambda: spectral_norm_update_(model)
    if impl == "fused_per_layer":
        layers = [m for m in model.modules() if isinstance(m, (SNConv2d, SNLinear))]
        return lambda: [m._spectral_norm_forward_weight() for m in layers]
    if impl == "torch_sn":
        hooks = [(m, h) for m in model.modules() for h in m._forward_pre_hooks.values()]
        return lambda: [h(m, None) for m, h in hooks]
    layers = [m for m in model.modules() if hasattr(m, "parametrizations")]
    return lambda: [m.weight for m in layers]


UPDATE_IMPLS = ["fused", "fused_per_layer", "torch_sn", "torch_param_sn"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", UPDATE_IMPLS)
def test_spectral_norm_update(benchmark, device, impl):
    benchmark.group = f"spectral_norm update {device} SNDCGAN-D (8 layers)"
    benchmark.extra_info.update(op="spectral_norm_update", impl=impl, device=device, shape="SNDCGAN-D")
    model = sndcgan_discriminator("fused" if impl.startswith("fused") else impl).to(device).train()
    run = timed(_sn_update_fn(impl, model), device)
    for _ in range(3):
        run()
    benchmark(run)


STEP_IMPLS = ["fused", "fused_layers", "torch_sn", "torch_param_sn"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", STEP_IMPLS)
def test_sndcgan_d_fwd_bwd(benchmark, device, impl):
    B = 64
    benchmark.group = f"SNDCGAN-D fwd+bwd {device} B={B} 32x32"
    benchmark.extra_info.update(op="sndcgan_d_step", impl=impl, device=device, shape=f"B={B},32x32")
    model = sndcgan_discriminator("fused" if impl.startswith("fused") else impl).to(device).train()
    x = torch.randn(B, 3, 32, 32, device=device)

    def step():
        if impl == "fused":
            spectral_norm_update_(model)
        out = model(x).mean()
        out.backward()
        return out

    run = timed(step, device)
    run()
    # About a second a step on a 2-core CPU (the convolutions, ~42 GFLOP): a few rounds are enough.
    benchmark.pedantic(run, rounds=5 if device == "cpu" else 30, iterations=1, warmup_rounds=1)


# ---- the SN layers' autograd: C++ kernel vs the Python autograd.Function it replaced -------------------------


class _PyWeightFn(torch.autograd.Function):
    """The layers' Python path before issue 15 (cbgan_ext/ops/spectral_norm.py at 4acc0de), for comparison."""

    @staticmethod
    def forward(ctx, weight, u, v, dim, n, eps):
        with torch._C._AutoDispatchBelowAutograd():
            w_sn, u2, v2, sigma = torch.ops.cbgan_ext.spectral_norm_weight.default(weight, u, v, dim, n, eps)
        ctx.mark_non_differentiable(u2, v2, sigma)
        ctx.dim = dim
        ctx.save_for_backward(weight, u2, v2, sigma)
        return w_sn, u2, v2, sigma

    @staticmethod
    def backward(ctx, grad_wsn, _gu, _gv, _gs):
        weight, u, v, sigma = ctx.saved_tensors
        grad_w = None
        if ctx.needs_input_grad[0]:
            if grad_wsn.layout != torch.strided:
                grad_wsn = grad_wsn.to_dense()
            grad_w = torch.ops.cbgan_ext._spectral_norm_weight_backward(grad_wsn, weight, u, v, sigma, ctx.dim)
        return grad_w, None, None, None, None, None


class _PyMultiFn(torch.autograd.Function):
    """spectral_norm_update_'s Python path before issue 15, for comparison."""

    @staticmethod
    def forward(ctx, dims, n, eps, *tensors):
        L = len(dims)
        weights, us, vs = tensors[:L], tensors[L:2 * L], tensors[2 * L:]
        with torch._C._AutoDispatchBelowAutograd():
            w_sn, u2, v2, sigmas = torch.ops.cbgan_ext.spectral_norm_weight_multi.default(
                list(weights), list(us), list(vs), dims, n, eps)
        ctx.mark_non_differentiable(*u2, *v2, sigmas)
        ctx.set_materialize_grads(False)
        ctx.dims = dims
        ctx.save_for_backward(*weights, *u2, *v2, sigmas)
        return (*w_sn, *u2, *v2, sigmas)

    @staticmethod
    def backward(ctx, *grads):
        L = len(ctx.dims)
        saved = ctx.saved_tensors
        gw = torch.ops.cbgan_ext._spectral_norm_weight_multi_backward(
            [None if g is None else (g.to_dense() if g.layout != torch.strided else g) for g in grads[:L]],
            list(saved[:L]), list(saved[L:2 * L]), list(saved[2 * L:3 * L]), saved[3 * L], ctx.dims)
        return (None, None, None, *gw, *([None] * (2 * L)))


def _py_multi(weights, us, vs, dims, n, eps):
    L = len(weights)
    out = _PyMultiFn.apply(list(dims), n, eps, *weights, *us, *vs)
    return list(out[:L]), list(out[L:2 * L]), list(out[2 * L:3 * L]), out[3 * L]


def _sn_autograd_step(impl, scope, model):
    """One SN forward + backward of every layer of model (training mode, buffers updated as the layers do)."""
    layers = [m for m in model.modules() if isinstance(m, (SNConv2d, SNLinear))]
    weights = [m.weight_orig for m in layers]
    us, vs = [m.weight_u for m in layers], [m.weight_v for m in layers]
    dims = [m.sn_dim for m in layers]
    n, eps = layers[0].n_power_iterations, layers[0].eps
    torch.manual_seed(1)
    grads = [torch.randn_like(w) for w in weights]
    if scope == "per_layer":
        single = spectral_norm_weight_module if impl == "fused" else _PyWeightFn.apply

        def step():
            w_sn = []
            for w, u, v, d in zip(weights, us, vs, dims):
                out = single(w, u, v, d, n, eps)
                with torch.no_grad():
                    torch._foreach_copy_([u, v], [out[1], out[2]])
                w_sn.append(out[0])
            return torch.autograd.grad(w_sn, weights, grads)
    else:
        multi = spectral_norm_weight_multi_module if impl == "fused" else _py_multi

        def step():
            w_sn, u2, v2, _ = multi(weights, us, vs, dims, n, eps)
            with torch.no_grad():
                torch._foreach_copy_(us + vs, list(u2) + list(v2))
            return torch.autograd.grad(w_sn, weights, grads)
    return step


SN_AUTOGRAD_IMPLS = ["fused", "python_fn"]


@pytest.mark.parametrize("width", [1.0, 0.25])
@pytest.mark.parametrize("scope", ["per_layer", "model"])
@pytest.mark.parametrize("impl", SN_AUTOGRAD_IMPLS)
def test_sn_autograd(benchmark, scope, impl, width):
    benchmark.group = f"SN autograd fwd+bwd cpu SNDCGAN-D w{width} (8 layers) {scope}"
    benchmark.extra_info.update(op="sn_autograd", impl=impl, device="cpu", shape=f"SNDCGAN-D w{width} {scope}")
    step = _sn_autograd_step(impl, scope, sndcgan_discriminator("fused", width).train())
    for _ in range(3):
        step()
    benchmark(step)


@pytest.mark.parametrize("width", [1.0, 0.25])
@pytest.mark.parametrize("scope", ["per_layer", "model"])
def test_sn_autograd_interleaved(benchmark, scope, width):
    benchmark.group = f"SN autograd fwd+bwd cpu SNDCGAN-D w{width} (8 layers) {scope} interleaved"
    benchmark.extra_info.update(op="sn_autograd_interleaved", impl="interleaved", device="cpu",
                                shape=f"SNDCGAN-D w{width} {scope}")
    a = _sn_autograd_step("fused", scope, sndcgan_discriminator("fused", width).train())
    b = _sn_autograd_step("python_fn", scope, sndcgan_discriminator("fused", width).train())
    ta, tb = [], []

    def pair():
        # alternate which runs first, so a position effect (caches, allocator) cancels
        order = ((a, ta), (b, tb)) if len(ta) % 2 == 0 else ((b, tb), (a, ta))
        for step, times in order:
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)

    for _ in range(3):
        pair()
    ta.clear(), tb.clear()
    benchmark(pair)
    ma, mb = statistics.median(ta), statistics.median(tb)
    benchmark.extra_info.update(fused_median_s=ma, python_fn_median_s=mb, python_fn_over_fused=mb / ma, pairs=len(ta))


def test_sn_autograd_impls_agree():
    """Both autograd paths of the comparison give the same W_sn, buffers and gradients (same kernels)."""
    for scope, width in (("per_layer", 1.0), ("model", 0.25)):
        ma, mb = sndcgan_discriminator("fused", width).train(), sndcgan_discriminator("fused", width).train()
        ga = _sn_autograd_step("fused", scope, ma)()
        gb = _sn_autograd_step("python_fn", scope, mb)()
        assert all(torch.equal(x, y) for x, y in zip(ga, gb))
        assert all(torch.equal(x, y) for x, y in zip(ma.state_dict().values(), mb.state_dict().values()))


def test_fused_power_iteration_matches_torch():
    """The benchmarked implementations compute the same thing (a guard against timing a wrong kernel)."""
    fused, ref = sndcgan_discriminator("fused"), sndcgan_discriminator("torch_sn")
    x = torch.randn(2, 3, 32, 32)
    spectral_norm_update_(fused)
    assert torch.allclose(fused(x), ref(x), rtol=1e-4, atol=1e-5)
    w = fused[0].weight_orig.detach().flatten(1)
    u, v, s = ops.spectral_norm_power_iteration(w, fused[0].weight_u, fused[0].weight_v, 0, EPS)
    assert torch.allclose(s, torch.dot(u, w @ v))

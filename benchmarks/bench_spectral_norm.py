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
The summary script divides each time by the fused time of its group.
"""
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations
from torch.nn.utils import spectral_norm as torch_sn

from cbgan_ext import ops
from cbgan_ext.nn import SNConv2d, SNLinear, spectral_norm_update_
from conftest import DEVICES, timed

# Table 3: (in, out, kernel, stride); padding 1, LeakyReLU(0.1) after each conv, global sum pooling, FC(512, 1).
SNDCGAN_D = [(3, 64, 3, 1), (64, 64, 4, 2), (64, 128, 3, 1), (128, 128, 4, 2), (128, 256, 3, 1), (256, 256, 4, 2),
             (256, 512, 3, 1)]
EPS = 1e-6  # StudioGAN's spectral-norm eps


class GlobalSumPool(nn.Module):
    def forward(self, x):
        return x.sum(dim=(2, 3))


def sndcgan_discriminator(kind):
    """kind: "fused" (cbgan_ext layers), "torch_sn" or "torch_param_sn"."""
    torch.manual_seed(0)
    layers = []
    for cin, cout, k, s in SNDCGAN_D:
        if kind == "fused":
            conv = SNConv2d(cin, cout, k, s, 1, eps=EPS)
        elif kind == "torch_sn":
            conv = torch_sn(nn.Conv2d(cin, cout, k, s, 1), eps=EPS)
        else:
            conv = parametrizations.spectral_norm(nn.Conv2d(cin, cout, k, s, 1), eps=EPS)
        layers += [conv, nn.LeakyReLU(0.1)]
    if kind == "fused":
        fc = SNLinear(512, 1, eps=EPS)
    elif kind == "torch_sn":
        fc = torch_sn(nn.Linear(512, 1), eps=EPS)
    else:
        fc = parametrizations.spectral_norm(nn.Linear(512, 1), eps=EPS)
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


def test_fused_power_iteration_matches_torch():
    """The benchmarked implementations compute the same thing (a guard against timing a wrong kernel)."""
    fused, ref = sndcgan_discriminator("fused"), sndcgan_discriminator("torch_sn")
    x = torch.randn(2, 3, 32, 32)
    spectral_norm_update_(fused)
    assert torch.allclose(fused(x), ref(x), rtol=1e-4, atol=1e-5)
    w = fused[0].weight_orig.detach().flatten(1)
    u, v, s = ops.spectral_norm_power_iteration(w, fused[0].weight_u, fused[0].weight_v, 0, EPS)
    assert torch.allclose(s, torch.dot(u, w @ v))

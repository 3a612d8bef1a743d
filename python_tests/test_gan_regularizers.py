"""gSR and LeCam: against independent references (torch.linalg's spectral norm, the formulas written out), and in
the training loop (options, refusals, exact resume)."""
import json
import math

import pytest
import torch

from cbgan_ext import cli
from cbgan_ext.models import build_gan
from cbgan_ext.nn import GroupSpectralRegularizer, LeCamRegularizer
from cbgan_ext.nn.gan_regularizers import (class_conditional_bn_layers, closest_factors,
                                           effective_number_class_weights)
from test_gan import _trainer


def _g(arch, width=0.125, K=10, seed=0):
    torch.manual_seed(seed)
    G, _ = build_gan(arch, channels=1, image_size=32, width=width, z_dim=16, num_classes=K, conditional_g=True,
                     d_head="projection")
    with torch.no_grad():  # trained-looking gains and biases, not the initial 1 and 0
        for m in class_conditional_bn_layers(G):
            for p in (m.gain.weight, m.bias.weight):
                p.add_(torch.randn_like(p))
    return G


@pytest.mark.parametrize("n,hw", [(1, (1, 1)), (7, (1, 7)), (12, (3, 4)), (16, (4, 4)), (96, (8, 12)),
                                  (256, (16, 16)), (1000, (25, 40))])
def test_closest_factors(n, hw):
    assert closest_factors(n) == hw


def test_closest_factors_refuses_zero():
    with pytest.raises(ValueError, match="closest_factors: n must be >= 1"):
        closest_factors(0)


@pytest.mark.parametrize("arch", ["biggan", "sndcgan"])
def test_gsr_sigmas_are_the_largest_singular_values(arch):
    G = _g(arch)
    layers = class_conditional_bn_layers(G)
    assert layers
    reg = GroupSpectralRegularizer(G, 1.0, power_iterations=30)
    sg, sb = reg.sigmas()
    for i, layer in enumerate(layers):
        for got, M in zip((sg[i], sb[i]), layer.class_gain_bias()):
            h, w = closest_factors(M.shape[1])
            want = torch.linalg.matrix_norm(M.detach().double().reshape(-1, h, w), ord=2)
            assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-6), (i, got, want)


def test_gsr_gain_is_the_deviation_from_unit_gain():
    G = _g("sndcgan")
    layer = class_conditional_bn_layers(G)[0]
    gain, bias = layer.class_gain_bias()
    assert torch.equal(gain, layer.gain.weight - 1) and torch.equal(bias, layer.bias.weight)
    G = _g("biggan")
    layer = class_conditional_bn_layers(G)[0]
    gain, _ = layer.class_gain_bias()
    assert torch.equal(gain, layer.gain.weight.t())  # its forward computes 1 + W y


def test_gsr_penalty_and_its_gradient_match_the_spectral_norm():
    """λ · Σ w_c σ_c² / (layers · K) and its gradient, against torch.linalg.matrix_norm(ord=2) in float64."""
    G = _g("biggan").double()
    counts = [500, 300, 200, 120, 80, 50, 30, 20, 12, 8]
    reg = GroupSpectralRegularizer(G, 0.5, class_counts=counts, beta=0.99, power_iterations=50)
    reg.sigmas()  # converge the vectors first
    loss = reg()
    layers = class_conditional_bn_layers(G)
    w = effective_number_class_weights(counts, 0.99)
    ref = 0
    for layer in layers:
        for M in layer.class_gain_bias():
            h, wd = closest_factors(M.shape[1])
            ref = ref + (torch.linalg.matrix_norm(M.reshape(-1, h, wd), ord=2).pow(2) * w).sum()
    ref = 0.5 * ref / (len(layers) * len(counts))
    assert torch.allclose(loss, ref, rtol=1e-7), (loss, ref)
    params = [p for layer in layers for p in (layer.gain.weight, layer.bias.weight)]
    got = torch.autograd.grad(loss, params)
    want = torch.autograd.grad(ref, params)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-8)


class _OwnLayer(torch.nn.Module):
    """A layer of a user's own that joins gSR through ``class_gain_bias``."""

    def __init__(self, gain):
        super().__init__()
        self.g = gain

    def class_gain_bias(self):
        return self.g, 2 * self.g


def test_gsr_gradcheck_with_held_vectors_on_a_layer_of_ones_own():
    """σ = uᵀ W v with u, v held: float64 gradcheck through the module, and the gradient is u vᵀ."""
    torch.manual_seed(0)
    layer = _OwnLayer(torch.randn(4, 12, dtype=torch.float64))
    reg = GroupSpectralRegularizer(torch.nn.Sequential(layer), 1.0, power_iterations=40)
    reg.sigmas()
    reg.power_iterations = 1
    state = {k: v.clone() for k, v in reg.state_dict().items()}

    def f(w):
        layer.g = w
        out = reg.sigmas()[0][0]
        reg.load_state_dict(state)  # every call starts from the same vectors
        return out
    w = layer.g.clone().requires_grad_()
    assert torch.autograd.gradcheck(f, (w,), eps=1e-6, atol=1e-7)
    f(w).sum().backward()
    reg.sigmas()
    u, v = reg.u0_gain, reg.v0_gain  # [K, 3], [K, 4]: 12 = 3 × 4
    assert torch.allclose(w.grad.reshape(4, 3, 4), (u[:, :, None] * v[:, None, :]).double(), atol=1e-6)


def test_effective_number_weights():
    counts = [1000, 100, 10]
    w = effective_number_class_weights(counts, 0.99)
    assert math.isclose(float(w.mean()), 1.0, rel_tol=1e-12)
    assert w[0] < w[1] < w[2]  # rarer classes weigh more
    en = [(1 - 0.99 ** n) / (1 - 0.99) for n in counts]
    ratio = en[0] / en[2]
    assert math.isclose(float(w[2] / w[0]), ratio, rel_tol=1e-9)
    assert torch.equal(effective_number_class_weights(counts, 0.0), torch.ones(3, dtype=torch.float64))


def test_gsr_refuses_what_it_cannot_use():
    G, _ = build_gan("sndcgan", channels=1, image_size=32, width=0.125, z_dim=16, num_classes=0)
    with pytest.raises(ValueError, match="gSR: the generator .* has no class-conditional BatchNorm"):
        GroupSpectralRegularizer(G, 1.0)
    G = _g("biggan")
    with pytest.raises(ValueError, match="gSR: lam must be"):
        GroupSpectralRegularizer(G, float("nan"))
    with pytest.raises(ValueError, match="gSR: beta must be in"):
        GroupSpectralRegularizer(G, 1.0, beta=1.0)
    with pytest.raises(ValueError, match="gSR: class_counts has 3 classes, the generator 10"):
        GroupSpectralRegularizer(G, 1.0, class_counts=[1, 2, 3])


def test_gsr_nan_in_gives_nan_out():
    G = _g("biggan")
    with torch.no_grad():
        class_conditional_bn_layers(G)[0].gain.weight[0, 0] = float("nan")
    assert torch.isnan(GroupSpectralRegularizer(G, 1.0)())


def test_lecam_follows_the_released_formula():
    torch.manual_seed(0)
    lc = LeCamRegularizer(0.3, decay=0.9, start=2)
    ema_r = ema_f = 0.0
    for step in range(6):
        dr, df = torch.randn(16) + 1, torch.randn(16) - 1
        d = 0.9 if step >= 2 else 0.0
        ema_r = d * ema_r + (1 - d) * float(dr.mean())
        ema_f = d * ema_f + (1 - d) * float(df.mean())
        got = lc(dr, df, step)
        want = 0.3 * (torch.relu(dr - ema_f).pow(2).mean() + torch.relu(ema_r - df).pow(2).mean())
        if step <= 2:
            assert float(got) == 0.0
        else:
            assert torch.allclose(got, want, rtol=1e-6), (step, got, want)
        assert torch.allclose(lc.anchors, torch.tensor([ema_r, ema_f], dtype=torch.float64), rtol=1e-6)


def test_lecam_nan_in_gives_nan_out_and_refuses_bad_settings():
    lc = LeCamRegularizer(1.0, start=0)
    lc(torch.zeros(4), torch.zeros(4), 0)
    assert torch.isnan(lc(torch.tensor([float("nan"), 0.0]), torch.zeros(2), 1))
    with pytest.raises(ValueError, match="LeCam: decay must be in"):
        LeCamRegularizer(1.0, decay=1.0)
    with pytest.raises(ValueError, match="LeCam: D outputs must be"):
        LeCamRegularizer(1.0)(torch.tensor(1.0), torch.tensor(1.0), 0)


# ---- in the loop --------------------------------------------------------------------------------------

def test_loop_logs_both_terms_and_resumes_exactly(tmp_path):
    kw = dict(method="cgan-pd", gsr=0.5, lecam=0.3, lecam_start=1, eval_every=0)
    full = _trainer(tmp_path / "full", 6, **kw)
    full.run()
    part = _trainer(tmp_path / "part", 3, **kw)
    part.run()
    resumed = _trainer(tmp_path / "part", 6, **kw)
    resumed.run()
    for a, b in zip(full.G.state_dict().values(), resumed.G.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(full.gsr.state_dict().values(), resumed.gsr.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(full.lecam.anchors, resumed.lecam.anchors)
    recs = [json.loads(line) for line in open(tmp_path / "full" / "metrics.jsonl")]
    train = [r for r in recs if r.get("event") == "train"]
    # unit gains and zero biases at the start: σ = 0 until G's first step moves them
    assert train[0]["gsr"] == 0 and all(r["gsr"] > 0 for r in train[1:])
    # the LeCam term joins after lecam_start (step 1; logged steps count from 1)
    assert [r["lecam"] > 0 for r in train] == [r["step"] > 2 for r in train]


def test_loop_without_them_is_unchanged(tmp_path):
    """gsr = lecam = 0 is the method as it was: the same weights as a run that never heard of them."""
    a = _trainer(tmp_path / "a", 3, method="cgan-pd", eval_every=0)
    a.run()
    b = _trainer(tmp_path / "b", 3, method="cgan-pd", eval_every=0, gsr=0.0, lecam=0.0)
    b.run()
    assert a.gsr is None and a.lecam is None
    for x, y in zip(a.G.state_dict().values(), b.G.state_dict().values()):
        assert torch.equal(x, y)


@pytest.mark.parametrize("method,given,match", [
    ("gan", dict(gsr=1.0), "gsr needs class-conditional BatchNorm in G; method 'gan'"),
    ("bagan", dict(lecam=1.0, ae_steps=0), "lecam needs one D score an image; method 'bagan'"),
    ("cgan-pd", dict(gsr_beta=0.9), "gsr_beta only apply with gsr > 0"),
    ("cgan-pd", dict(lecam_start=5), "lecam_start only apply with lecam > 0")])
def test_loop_refuses_them_where_they_cannot_apply(tmp_path, method, given, match):
    extra = dict(arch="bagan") if method == "bagan" else {}
    with pytest.raises(ValueError, match=match):
        _trainer(tmp_path / "r", 2, method=method, **extra, **given)
    assert not (tmp_path / "r").exists()


def test_cli_flags(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["train", "--dataset", "digits", "--image-size", "32", "--method", "cgan-pd", "--out", str(out),
            "--steps", "2", "--width", "0.125", "--batch-size", "8", "--gsr", "0.5", "--lecam", "0.1",
            "--lecam-start", "0", "--eval-every", "0", "--sample-every", "0", "--no-progress"]
    assert cli.main(argv) == 0
    cfg = json.load(open(out / "config.json"))
    assert cfg["gsr"] == 0.5 and cfg["lecam"] == 0.1 and cfg["lecam_start"] == 0
    # the run's own config.json gives the same settings back
    assert cli.main(["train", "--config", str(out / "config.json"), "--out", str(tmp_path / "again")]) == 0
    again = json.load(open(tmp_path / "again" / "config.json"))
    assert {k: again[k] for k in ("gsr", "gsr_beta", "lecam", "lecam_start")} == \
        {k: cfg[k] for k in ("gsr", "gsr_beta", "lecam", "lecam_start")}
    capsys.readouterr()
    bad = ["train", "--dataset", "digits", "--image-size", "32", "--method", "gan", "--out", str(tmp_path / "x"),
           "--steps", "2", "--gsr", "0.5"]
    assert cli.main(bad) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gsr needs class-conditional BatchNorm" in err[0], err
    assert not (tmp_path / "x").exists()

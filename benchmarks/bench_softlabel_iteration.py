"""One whole Softlabel-GAN training iteration (n_dis = 4 D steps + one G step, BigGAN-32, batch 64, 3×32×32, soft
labels for the reals, DiffAugment translation,cutout on [fake; real] and on the G step's fakes, EMA of G):
``GANTrainer.train_step`` with the package's fused ops against the same networks, weights and losses on plain
PyTorch ops (``torch.nn.utils.spectral_norm``, ``cbgan_ext.reference.diff_augment``, the projection as
``(embed(y) * h).sum(1)``), with D's inputs in the same memory format on both sides (NCHW, or channels_last
as ``--d-channels-last``).

The two are timed interleaved in one process (the order alternating each round); ``plain_over_fused`` in
extra_info is the ratio of medians. ``test_iteration_breakdown`` records where the fused iteration's time goes
(torch.profiler self CPU time by op family). Width 1 is the paper's network (about a minute an iteration on 2
CPU cores, so few rounds); width 0.125 is the main job's.
"""
import statistics
import tempfile
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cbgan_ext import reference
from cbgan_ext.nn import ProjectionHead, SNConv2d, SNLinear
from cbgan_ext.train import GANTrainer
from cbgan_ext.train.loop import EMA

from _data import RandomImages

B, K, N_DIS, POLICY = 64, 10, 4, "translation,cutout"
ROUNDS = {0.125: 12, 1.0: 2}
# D's memory format, the same on both sides: the reference DiffAugment returns channels_last (its translation
# permutes), which alone made D's average pooling several times faster than in NCHW.
CASES = [(0.125, "nchw"), (0.125, "channels_last"), (1.0, "nchw")]


def _soft_table(n):
    g = torch.Generator().manual_seed(5)
    return torch.softmax(torch.randn(n, K, generator=g) * 2, 1)


def _trainer(width, layout="nchw"):
    data = RandomImages(channels=3)
    return GANTrainer(data, tempfile.mkdtemp(), method="softlabel-gan", soft_labels=_soft_table(len(data)), width=width,
                      batch_size=B, n_dis=N_DIS, policy=POLICY, progress=False, seed=0,
                      d_channels_last=layout == "channels_last")


def _plain_layer(m):
    assert type(m) in (SNConv2d, SNLinear), type(m)  # the only SN layers BigGAN has
    if isinstance(m, SNConv2d):
        new = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, bias=m.bias is not None)
    else:
        new = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
    with torch.no_grad():
        new.weight.copy_(m.weight_orig)
        if m.bias is not None:
            new.bias.copy_(m.bias)
    new = torch.nn.utils.spectral_norm(new, n_power_iterations=m._sn.n_power_iterations, eps=m._sn.eps, dim=m._sn.dim)
    with torch.no_grad():
        new.weight_u.copy_(m.weight_u)
        new.weight_v.copy_(m.weight_v)
    return new


class PlainProjection(nn.Module):
    def __init__(self, head):
        super().__init__()
        self.num_classes = head.num_classes
        self.psi, self.embed = _plain_layer(head.psi), _plain_layer(head.embed)

    def forward(self, h, y):
        if not y.is_floating_point():
            y = F.one_hot(y, self.num_classes).to(h.dtype)
        return self.psi(h).squeeze(1) + (self.embed(y) * h).sum(1)


def to_plain(model):
    """The same network (weights, u, v) with torch's SN hooks and the plain projection head."""
    for name, child in list(model.named_children()):
        if isinstance(child, ProjectionHead):
            setattr(model, name, PlainProjection(child))
        elif isinstance(child, (SNConv2d, SNLinear)):
            setattr(model, name, _plain_layer(child))
        else:
            to_plain(child)
    return model


def _strip_spectral_norm(model):
    for m in model.modules():
        if any(type(h).__name__ == "SpectralNorm" for h in m._forward_pre_hooks.values()):
            torch.nn.utils.remove_spectral_norm(m)
    return model


def plain_step(width, layout="nchw", strip=False):
    """The iteration of ``GANTrainer.train_step`` for softlabel-gan, written out on plain ops. ``strip``: without
    spectral norm (the weights used as they are) and without DiffAugment, the floor no fusion of them can beat."""
    t = _trainer(width)  # for its freshly built models, data and streams
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format

    def augment(x):
        if strip:
            return x
        return reference.diff_augment(x, POLICY, generator=ag).contiguous(memory_format=fmt)
    G, D = to_plain(t.G), to_plain(t.D)
    if strip:
        G, D = _strip_spectral_norm(G), _strip_spectral_norm(D)
    s = t.settings
    opt_g = torch.optim.Adam(G.parameters(), lr=s["lr"], betas=(s["beta1"], s["beta2"]))
    opt_d = torch.optim.Adam(D.parameters(), lr=s["lr"], betas=(s["beta1"], s["beta2"]))
    ema = EMA(G, s["ema_decay"], s["ema_start"])
    soft = _soft_table(t.images.shape[0])
    dg, ng, ag = (torch.Generator().manual_seed(i) for i in (1, 2, 3))
    counter = iter(range(10 ** 9))

    def fakes(n):
        z = torch.randn(n, t.z_dim, generator=ng)
        y = torch.randint(0, K, (n,), generator=ng)
        return G(z, y), y

    def step():
        G.train(), D.train()
        for _ in range(N_DIS):
            idx = torch.randint(0, t.images.shape[0], (B,), generator=dg)
            real, real_y = t.images[idx], soft[idx]
            with torch.no_grad():
                fake, fake_y = fakes(B)
            fake, real = augment(torch.cat([fake, real])).split([B, B])
            loss_d = F.relu(1 - D(real, real_y)).mean() + F.relu(1 + D(fake, fake_y)).mean()
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
        fake, fake_y = fakes(B)
        loss_g = -D(augment(fake), fake_y).mean()
        metrics = {"loss_d": loss_d.item(), "loss_g": loss_g.detach().item()}
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        ema.update(G, next(counter))
        return metrics
    return step


def fused_step(width, layout="nchw"):
    t = _trainer(width, layout)
    counter = iter(range(10 ** 9))
    return lambda: t.train_step(next(counter))


def test_plain_network_equals_fused():
    """The plain twin computes the same D output and G image as the fused network (same weights and u, v)."""
    t = _trainer(0.125)
    Gp, Dp = to_plain(_trainer(0.125).G), to_plain(_trainer(0.125).D)
    x = torch.rand(8, 3, 32, 32) * 2 - 1
    y = torch.softmax(torch.randn(8, K), 1)
    z, yh = torch.randn(8, t.z_dim), torch.arange(8) % K
    for m in (t.G, t.D, Gp, Dp):
        m.eval()
    torch.testing.assert_close(Dp(x, y), t.D(x, y), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(Dp(x, yh), t.D(x, yh), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(Gp(z, yh), t.G(z, yh), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_plain_step_matches_fused_losses(layout):
    """The twin is the same iteration: the same streams, D steps, augmentation, losses (to float rounding)."""
    a, b = fused_step(0.125, layout), plain_step(0.125, layout)
    for _ in range(2):
        ma, mb = a(), b()
        assert ma["loss_d"] == pytest.approx(mb["loss_d"], rel=2e-3, abs=1e-3)
        assert ma["loss_g"] == pytest.approx(mb["loss_g"], rel=2e-3, abs=1e-3)


@pytest.mark.parametrize("width,layout", CASES)
def test_softlabel_iteration_interleaved(benchmark, width, layout):
    benchmark.group = f"softlabel-gan iteration cpu biggan32 w{width} {layout} B={B} n_dis={N_DIS}"
    benchmark.extra_info.update(op="softlabel_iteration_interleaved", impl="interleaved", device="cpu",
                                shape=f"w{width},{layout},B={B}", threads=torch.get_num_threads())
    a, b = fused_step(width, layout), plain_step(width, layout)
    ta, tb = [], []

    def pair():
        first = len(ta) % 2 == 0
        for step, times in ((a, ta), (b, tb)) if first else ((b, tb), (a, ta)):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)

    pair()
    ta.clear(), tb.clear()
    benchmark.pedantic(pair, rounds=ROUNDS[width], iterations=1)
    ma, mb = statistics.median(ta), statistics.median(tb)
    benchmark.extra_info.update(fused_median_s=ma, plain_median_s=mb, plain_over_fused=mb / ma)


FAMILIES = (("convolution", ("convolution", "conv2d")), ("batch norm", ("batch_norm",)),
            ("pooling / upsampling", ("pool", "upsample")), ("spectral norm", ("spectral_norm",)),
            ("DiffAugment", ("diff_augment",)), ("projection", ("soft_label_projection",)),
            ("optimizer", ("adam", "_foreach", "lerp")), ("elementwise / activations", ("relu", "threshold", "add",
                                                                                        "mul", "clamp", "tanh")),
            ("copies / allocation", ("copy_", "empty", "fill_", "zero_", "cat", "index")))


def breakdown(step, steps=2):
    from torch.profiler import profile
    with profile() as p:
        for _ in range(steps):
            step()
    shares = {name: 0.0 for name, _ in FAMILIES}
    shares["other"] = 0.0
    total = 0.0
    for e in p.key_averages():
        t = e.self_cpu_time_total
        total += t
        key = e.key.lower()
        fam = next((name for name, words in FAMILIES if any(w in key for w in words)), "other")
        shares[fam] += t
    return {k: v / total for k, v in shares.items()}


@pytest.mark.parametrize("width", [0.125])
def test_iteration_breakdown(benchmark, width):
    benchmark.group = f"softlabel-gan iteration breakdown w{width}"
    step = fused_step(width)
    step()
    plain = plain_step(width)
    plain()
    benchmark.extra_info.update(op="softlabel_iteration_breakdown", impl="fused", device="cpu", shape=f"w{width}",
                                fused=breakdown(step), plain=breakdown(plain))
    benchmark.pedantic(step, rounds=1, iterations=1)

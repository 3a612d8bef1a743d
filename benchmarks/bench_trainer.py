"""The CBGAN training step on the method registry vs the same step written out as a plain loop (the shape of
the trainer before the registry): the registry must cost nothing measurable.

Rows: "fused" = GANTrainer.train_step (method "cbgan"), "eager" = the plain loop, so the summary's ratio is
plain / registry (1.0 = the same). Both are timed interleaved step by step in one process as well
("interleaved" row, medians in its extra_info, the order alternating each round), because two separate rows
on a shared machine can drift
apart by more than the difference being measured. Shapes: SNDCGAN width 0.25 (the main job) on
Fashion-MNIST-sized images, batch 64, a ResNet-8 classifier in the loop.
"""
import statistics
import tempfile
import time

import pytest
import torch
import torch.nn.functional as F

from cbgan_ext.models import CifarResNet, build_gan
from cbgan_ext.nn import CBRegularizer
from cbgan_ext.train import GANTrainer
from cbgan_ext.train.loop import EMA

from _data import RandomImages


def _classifier():
    torch.manual_seed(0)
    return CifarResNet(10, 1, depth=8, width=0.5).eval().requires_grad_(False)


def registry_step():
    t = GANTrainer(RandomImages(), tempfile.mkdtemp(), method="cbgan", classifier=_classifier(), width=0.25,
                   batch_size=64,
                   cycle=50, weighting="official", lam=5.0, progress=False, seed=0)
    counter = iter(range(10 ** 9))
    return lambda: t.train_step(next(counter))


def plain_step():
    data, clf = RandomImages(), _classifier()
    torch.manual_seed(0)
    G, D = build_gan("sndcgan", channels=1, width=0.25)
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    ema = EMA(G, 0.9999, 20000)
    dg, ng = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    reg = CBRegularizer(10, 5.0, update_every=50, weighting="official")
    counter = iter(range(10 ** 9))

    def step():
        G.train(), D.train()
        real = data.images[torch.randint(0, len(data), (64,), generator=dg)]
        with torch.no_grad():
            fake = G(torch.randn(64, 128, generator=ng))
        loss_d = F.softplus(-(D(real) - D(fake))).mean()
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        fake = G(torch.randn(64, 128, generator=ng))
        with torch.no_grad():
            d_real = D(real)
        loss_g = F.softplus(-(D(fake) - d_real)).mean()
        metrics = {"loss_d": loss_d.item(), "loss_g": loss_g.detach().item()}
        r = reg(clf(fake))
        loss_g = loss_g + r
        metrics["reg"] = r.detach().item()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        reg.step()
        ema.update(G, next(counter))
        return metrics
    return step


@pytest.mark.parametrize("impl", ["fused", "eager"])
def test_cbgan_step(benchmark, impl):
    benchmark.group = "cbgan train step cpu sndcgan w0.25 B=64"
    benchmark.extra_info.update(op="cbgan_train_step", impl=impl, device="cpu", shape="B=64")
    step = registry_step() if impl == "fused" else plain_step()
    for _ in range(3):
        step()
    benchmark.pedantic(step, rounds=20, iterations=1)


def test_cbgan_step_interleaved(benchmark):
    benchmark.group = "cbgan train step interleaved"
    benchmark.extra_info.update(op="cbgan_train_step_interleaved", impl="interleaved", device="cpu")
    a, b = registry_step(), plain_step()
    ta, tb = [], []

    def timed_step(step, times):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)

    def pair():
        # alternate which runs first, so a position effect (caches, allocator) cancels
        first = len(ta) % 2 == 0
        for step, times in ((a, ta), (b, tb)) if first else ((b, tb), (a, ta)):
            timed_step(step, times)

    for _ in range(3):
        pair()
    ta.clear(), tb.clear()
    benchmark.pedantic(pair, rounds=30, iterations=1)
    ma, mb = statistics.median(ta), statistics.median(tb)
    benchmark.extra_info.update(registry_median_s=ma, plain_median_s=mb, plain_over_registry=mb / ma)

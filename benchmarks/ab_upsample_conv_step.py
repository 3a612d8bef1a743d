"""One GAN training step (the main job's settings) with the fused upsample-conv against the pair it replaces
(nearest ×2, then conv2d), the two trainers' steps alternating in one process, one thread:

    python benchmarks/ab_upsample_conv_step.py {bagan,acgan,softlabel-gan} [ROUNDS]

Softlabel-GAN gets random soft labels (the step's cost does not depend on them)."""
import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

import cbgan_ext.models.biggan as biggan
import cbgan_ext.nn.upsample_conv as upsample_conv
from cbgan_ext.data import get_dataset
from cbgan_ext.train.gan import GANTrainer

FUSED = upsample_conv.upsample_conv2d


def pair(x, w, b=None):
    return F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), w, b, padding=w.shape[-1] // 2)


def use(impl):
    f = FUSED if impl == "fused" else pair
    upsample_conv.upsample_conv2d = f  # UpsampleConv2d.forward (BAGAN, ACGAN)
    biggan.upsample_conv2d = f  # BigGAN's up-blocks


def trainer(method):
    soft = None
    if method in ("bagan", "acgan"):
        data = get_dataset("fashion-mnist", "train", image_size=32, profile="bagan", seed=0, minority_class=0,
                           drop_fraction=0.975)
        kw = dict(width=0.25, batch_size=128, lr=2e-4, real_sampling="balanced")
        if method == "bagan":
            kw.update(ae_steps=0, ae_lr=1e-3, ae_beta1=0.9)
    else:
        data = get_dataset("fashion-mnist", "train", image_size=32, profile="lognormal", seed=0)
        kw = dict(width=0.125, batch_size=64, n_dis=2, ema_start=1000, ema_decay=0.995, real_sampling="balanced")
        soft = torch.softmax(torch.randn(len(data), 10), 1)
    t = GANTrainer(data, tempfile.mkdtemp(), method=method, progress=False, soft_labels=soft, steps=1000,
                   sample_every=0, ckpt_every=10 ** 6, log_every=10 ** 6, **kw)
    if method == "bagan":
        t.method.prepare(t)  # the class Gaussians (of an untrained autoencoder: the cost is the same)
    return t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("method", choices=("bagan", "acgan", "softlabel-gan"))
    ap.add_argument("rounds", type=int, nargs="?", default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    trainers, times = {}, {"fused": [], "pair": []}
    for impl in times:
        use(impl)
        trainers[impl] = trainer(args.method)
        for s in range(2):  # warm-up
            trainers[impl].train_step(s)
    for r in range(args.rounds):
        for impl in (("fused", "pair") if r % 2 == 0 else ("pair", "fused")):
            use(impl)
            t0 = time.perf_counter()
            trainers[impl].train_step(r + 2)
            times[impl].append(time.perf_counter() - t0)
    mf, mp = statistics.median(times["fused"]), statistics.median(times["pair"])
    print(f"{args.method}: step median fused {mf:.3f} s, pair {mp:.3f} s, pair/fused {mp / mf:.2f}x "
          f"({args.rounds} rounds, interleaved, 1 thread)")


if __name__ == "__main__":
    main()

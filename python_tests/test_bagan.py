"""BAGAN, ACGAN and the single-class GAN: networks against the released code's definitions, the batch
composition, the class Gaussians, resume across the three stages, bad input, the augmented-classifier test's
extra sets, and the SSIM summaries."""
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cbgan_ext.data import ImageDataset, long_tailed_counts, minority_classes
from cbgan_ext.models import build_gan
from cbgan_ext.models.bagan import BAGANGenerator, BAGANTrunk, latent_resolution
from cbgan_ext.nn import UpsampleConv2d
from cbgan_ext.train.gan import GANTrainer
from cbgan_ext.train.loop import ConfigMismatchError
from cbgan_ext.train.methods import get_method
from cbgan_ext.train.methods.bagan import fit_class_gaussians

K = 4


def tiny_data(counts=(40, 40, 40, 6), size=16, seed=0, minority=3):
    """uint8 images of `size`, ``counts`` per class, a bagan-profile config naming the minority class."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), k) for k, n in enumerate(counts)])
    images = torch.randint(0, 256, (len(labels), 1, size, size), generator=g, dtype=torch.uint8)
    config = dict(name="synthetic", profile="bagan", minority_class=minority, drop_fraction=0.9)
    return ImageDataset(images, labels, len(counts), config=config)


SMALL = dict(width=0.125, batch_size=8, z_dim=8, log_every=1, sample_every=0, ckpt_every=2)


# ---- networks ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size,r", [(28, 7), (32, 8), (64, 8), (16, 8)])
def test_latent_resolution_is_the_released_min_latent_res(size, r):
    assert latent_resolution(size) == r


@pytest.mark.parametrize("size", [30, 0, 1, 36 * 3])
def test_latent_resolution_refuses_sizes_the_decoder_cannot_reach(size):
    with pytest.raises(ValueError, match="image_size"):
        latent_resolution(size)


def test_decoder_layers_match_the_released_code():
    G = BAGANGenerator(z_dim=100, channels=3, image_size=32)
    dense = [m for m in G.dense if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features, m.bias) for m in dense] == [(100, 1024, None), (1024, 128 * 64, None)]
    convs = [m for m in G.blocks if isinstance(m, nn.Conv2d)]
    assert [(m.in_channels, m.out_channels, m.kernel_size, m.bias) for m in convs] == \
        [(128, 256, (5, 5), None), (256, 128, (5, 5), None)]
    # each 5x5 conv upsamples its input first (nearest x2, fused: test_upsample_conv.py checks the pair)
    assert sum(isinstance(m, UpsampleConv2d) for m in G.blocks) == 2
    assert (G.out.out_channels, G.out.kernel_size, G.out.bias) == (3, (2, 2), None)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in G.modules())
    narrow = BAGANGenerator(z_dim=100, channels=1, image_size=32, width=0.25)
    assert [m.out_features for m in narrow.dense if isinstance(m, nn.Linear)] == [1024, 32 * 64]  # 1024 at any width
    x = G.decode(torch.randn(5, 100))
    assert x.shape == (5, 3, 32, 32) and x.abs().max() <= 1


def test_trunk_layers_match_the_released_code():
    t = BAGANTrunk(channels=1, image_size=28)
    convs = [m for m in t.body if isinstance(m, nn.Conv2d)]
    assert [(m.out_channels, m.stride[0], m.kernel_size) for m in convs] == \
        [(32, 2, (3, 3)), (64, 1, (3, 3)), (128, 2, (3, 3)), (256, 1, (3, 3))]
    assert all(m.negative_slope == 0.3 for m in t.body if isinstance(m, nn.LeakyReLU))
    assert [m.p for m in t.body if isinstance(m, nn.Dropout)] == [0.3] * 4
    assert t(torch.randn(2, 1, 28, 28)).shape == (2, 256 * 7 * 7) and t.feature_dim == 256 * 49
    t64 = BAGANTrunk(channels=3, image_size=64)  # one more [256 stride 2, 256] pair to reach 8x8
    assert len([m for m in t64.body if isinstance(m, nn.Conv2d)]) == 6
    assert t64(torch.randn(1, 3, 64, 64)).shape == (1, t64.feature_dim)


def test_heads_and_conditioning():
    G, D = build_gan("bagan", channels=1, image_size=32, width=0.25, z_dim=10, num_classes=K, d_head="classes+1",
                     g_gaussians=True, conditional_g=False)
    x = G(torch.randn(3, 10), torch.tensor([0, 1, 3]))
    assert D(x).shape == (3, K + 1)
    assert not any("weight_orig" in n for n, _ in D.named_parameters())  # no spectral norm by default
    with pytest.raises(ValueError, match="labels"):
        G(torch.randn(3, 10))
    G2, D2 = build_gan("bagan", channels=1, image_size=32, width=0.25, z_dim=10, num_classes=K,
                       d_head="aux-classifier", d_spectral_norm=True)
    src, cls = D2(G2(torch.randn(2, 10), torch.tensor([1, 2])))
    assert src.shape == (2,) and cls.shape == (2, K)
    assert any("weight_orig" in n for n, _ in D2.named_parameters())
    with pytest.raises(ValueError, match="bagan"):
        build_gan("sndcgan", num_classes=K, d_head="classes+1", g_gaussians=True)


def test_acgan_generator_class_inputs():
    """"multiply": z ⊙ e_y (an embedding, no one-hot); "concat": [z, onehot(y)] into the first dense layer."""
    torch.manual_seed(0)
    mul = BAGANGenerator(10, 1, 32, 0.25, num_classes=K)
    cat = BAGANGenerator(10, 1, 32, 0.25, num_classes=K, class_input="concat")
    assert mul.dense[0].in_features == 10 and mul.embed.weight.shape == (K, 10)
    assert cat.dense[0].in_features == 10 + K and not hasattr(cat, "embed")
    z, y = torch.randn(3, 10), torch.tensor([0, 1, 3])
    h = cat.dense(torch.cat([z, F.one_hot(y, K).float()], 1)).view(3, cat.c0, cat.r, cat.r)
    assert torch.allclose(cat(z, y), torch.tanh(cat.out(F.pad(cat.blocks(h), (0, 1, 0, 1)))), atol=1e-6)
    assert not torch.allclose(cat(z, y), cat(z, (y + 1) % K))  # the class reaches the image
    assert torch.allclose(mul(z, y), mul.decode(z * mul.embed(y)), atol=1e-6)
    with pytest.raises(ValueError, match="class_input"):
        BAGANGenerator(10, 1, 32, 0.25, num_classes=K, class_input="add")
    with pytest.raises(ValueError, match="g_class_input"):
        build_gan("sndcgan", num_classes=K, d_head="aux-classifier", g_class_input="concat")
    # the method builds the generator its setting names; a run keeps it in its config
    G, _ = get_method("acgan")(K, settings=dict(acgan_g="concat")).build("bagan", channels=1, image_size=32,
                                                                          width=0.25, z_dim=10)
    assert G.dense[0].in_features == 10 + K


def test_generator_samples_the_class_gaussians():
    G = BAGANGenerator(z_dim=3, channels=1, image_size=16, width=0.125, num_classes=2, gaussians=True)
    mean = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0]])
    cov = torch.tensor([[2.0, 0.6, 0.0], [0.6, 1.0, 0.3], [0.0, 0.3, 0.5]])
    chol = torch.stack([torch.linalg.cholesky(cov), torch.eye(3)])
    G.set_class_gaussians(mean, chol)
    seen = []
    G.decode = lambda latent: seen.append(latent) or latent  # the latent G decodes
    z = torch.randn(200000, 3, generator=torch.Generator().manual_seed(0))
    lat = G(z, torch.zeros(200000, dtype=torch.int64))
    assert torch.allclose(lat.mean(0), mean[0], atol=0.02)
    assert torch.allclose(torch.cov(lat.T), cov, atol=0.03)


# ---- class Gaussians -------------------------------------------------------------------------------------

class CodeEncoder(nn.Module):
    """Returns the first d pixels of each image as its code: codes of our choosing."""

    def __init__(self, d):
        super().__init__()
        self.d = d
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return x.flatten(1)[:, :self.d].double() + self.dummy


def test_gaussians_are_the_class_moments_of_the_codes():
    g = torch.Generator().manual_seed(1)
    d, counts = 4, [50, 30, 3, 1]
    labels = torch.cat([torch.full((n,), k) for k, n in enumerate(counts)])
    images = torch.randn(len(labels), 1, 2, 2, generator=g) + labels.view(-1, 1, 1, 1).double()
    fit = fit_class_gaussians(CodeEncoder(d), images.double(), labels, 4, shrinkage=0.25)
    codes = images.flatten(1).numpy()
    for k in (0, 1):  # full-rank classes: numpy's unbiased moments, untouched
        ck = codes[labels.numpy() == k]
        assert np.allclose(fit["means"][k].numpy(), ck.mean(0))
        assert np.allclose(fit["covariances"][k].numpy(), np.cov(ck, rowvar=False))
        assert fit["classes"][k]["shrinkage"] == 0.0
    rec = fit["classes"]
    assert rec[2]["shrinkage"] == 0.25 and rec[3]["shrinkage"] == 1.0  # 3 <= d images; a single image
    c2 = codes[labels.numpy() == 2]
    centred = np.concatenate([codes[labels.numpy() == k] - codes[labels.numpy() == k].mean(0) for k in range(4)])
    pooled = np.diag((centred ** 2).sum(0) / (len(centred) - 4))
    assert np.allclose(fit["covariances"][2].numpy(), 0.75 * np.cov(c2, rowvar=False) + 0.25 * pooled)
    assert np.allclose(fit["covariances"][3].numpy(), pooled)
    for k in range(4):
        L = fit["cholesky"][k]
        assert torch.isfinite(L).all() and rec[k]["min_eigenvalue"] > 0
        assert torch.allclose(L @ L.T, fit["covariances"][k] + rec[k]["jitter"] * torch.eye(d), atol=1e-10)


# ---- the methods in the loop ------------------------------------------------------------------------------

def test_bagan_batch_composition_and_losses(tmp_path):
    data = tiny_data()
    t = GANTrainer(data, str(tmp_path / "b"), method="bagan", steps=1, ae_steps=1, progress=False, **SMALL)
    assert (t.n_fake_d, t.n_fake_g) == (math.ceil(8 / K), 8 + math.ceil(8 / K))
    seen, calls = [], []
    orig = t.D.forward
    t.D.forward = lambda x, y=None: seen.append(x) or orig(x)
    d_loss = t.method.d_loss
    t.method.d_loss = lambda *a: calls.append(a) or d_loss(*a)
    t.run()
    D_, real, real_y, fake, fake_y = calls[0]
    assert real.shape[0] == 8 and fake.shape[0] == 2 and (real_y < K).all()
    assert torch.equal(seen[0], torch.cat([real, fake]))  # D step: the 8 reals, then the 2 fakes, in one batch
    assert seen[1].shape[0] == 10  # G step: 8 + 2 fakes
    M = t.method
    logits_r, logits_f = torch.randn(8, K + 1), torch.randn(2, K + 1)
    yr = torch.randint(0, K, (8,))
    D = lambda x: torch.cat([logits_r, logits_f])  # noqa: E731
    loss, _ = M.d_loss(D, torch.zeros(8), yr, torch.zeros(2), torch.zeros(2, dtype=torch.int64))
    expect = F.cross_entropy(torch.cat([logits_r, logits_f]), torch.cat([yr, torch.full((2,), K)]))
    assert torch.allclose(loss, expect)  # one mean over the concatenation, as Keras' train_on_batch
    for name in ("autoencoder.pt", "gaussians.pt", "gaussians.json", "checkpoint.pt", "autoencoder.jsonl"):
        assert (tmp_path / "b" / name).exists()
    summary = json.loads((tmp_path / "b" / "gaussians.json").read_text())
    assert [c["images"] for c in summary["classes"]] == [40, 40, 40, 6]
    assert summary["classes"][3]["shrinkage"] == 0.1  # 6 images <= 8 latent dimensions


def test_bagan_initialises_g_from_the_decoder_and_d_from_the_encoder(tmp_path):
    data = tiny_data()
    t = GANTrainer(data, str(tmp_path / "b"), method="bagan", steps=0, ae_steps=2, progress=False, **SMALL)
    t.run()
    ae = torch.load(tmp_path / "b" / "autoencoder.pt", weights_only=True)
    for k, v in ae["modules"]["E"].items():
        if k.startswith("trunk."):
            assert torch.equal(t.D.state_dict()[k], v)
    for k, v in ae["modules"]["G"].items():
        if not k.startswith("class_"):
            assert torch.equal(t.G.state_dict()[k], v)
    fit = torch.load(tmp_path / "b" / "gaussians.pt", weights_only=True)
    assert torch.allclose(t.G.class_mean, fit["means"].float())
    assert torch.equal(t.ema.model.class_chol, t.G.class_chol)


def test_rebalance_sampling_follows_the_released_formula():
    M = get_method("bagan")(4, [100, 100, 100, 10], {})
    share = np.array([100, 100, 100, 10]) / 310
    p = np.clip(2 / 4 - share, 0, None)
    assert np.allclose(M.class_probs("rebalance").numpy(), p / p.sum())
    assert np.allclose(M.class_probs("data").numpy(), share)
    y = M.sample_labels(20000, torch.Generator().manual_seed(0), "cpu", "rebalance")
    assert abs(float((y == 3).double().mean()) - p[3] / p.sum()) < 0.02


@pytest.mark.parametrize("method", ["bagan", "acgan"])
@pytest.mark.parametrize("g_mode,d_mode", [("uniform", "data"), ("data", None), ("rebalance", "uniform")])
def test_class_sampling_draws_g_and_d_fakes_as_set(tmp_path, method, g_mode, d_mode):
    """class_sampling sets the classes of G's fakes, d_class_sampling D's (unset: the same as G's)."""
    data = tiny_data()
    t = GANTrainer(data, str(tmp_path / "r"), method=method, steps=0, progress=False, class_sampling=g_mode,
                   d_class_sampling=d_mode, **({"ae_steps": 0} if method == "bagan" else {}), **SMALL)
    n = 40000
    for for_d, mode in ((False, g_mode), (True, d_mode or g_mode)):
        got = np.bincount(t._fake_labels(n, for_d=for_d).numpy(), minlength=K) / n
        want = t.method.class_probs(mode).numpy()
        assert np.abs(got - want).max() < 0.01, (for_d, mode, got, want)
    assert np.abs(t.method.class_probs("data").numpy() - 1 / K).max() > 0.05  # the modes differ on this set


def test_autoencoder_has_its_own_optimizer_settings(tmp_path):
    """ae_lr / ae_beta1 drive the autoencoder's Adam and are recorded as its settings; unset, it uses the GAN's."""
    data = tiny_data()
    seen = {}
    from cbgan_ext.train.methods import bagan as bagan_mod
    run = bagan_mod.AutoencoderStage.run

    def spy(self):
        seen[self.out] = dict(self.optimizers["AE"].param_groups[0])
        return run(self)
    bagan_mod.AutoencoderStage.run = spy
    try:
        for name, extra in (("own", dict(ae_lr=1e-3, ae_beta1=0.9)), ("gan", {})):
            t = GANTrainer(data, str(tmp_path / name), method="bagan", steps=0, ae_steps=1, lr=2e-4, beta1=0.5,
                           progress=False, **SMALL, **extra)
            t.run()
            assert t.optimizers["G"].param_groups[0]["lr"] == 2e-4
    finally:
        bagan_mod.AutoencoderStage.run = run
    own, gan = seen[str(tmp_path / "own")], seen[str(tmp_path / "gan")]
    assert (own["lr"], own["betas"]) == (1e-3, (0.9, 0.999)) and (gan["lr"], gan["betas"]) == (2e-4, (0.5, 0.999))
    cfg = json.load(open(tmp_path / "own" / "autoencoder.json"))
    assert (cfg["lr"], cfg["beta1"]) == (1e-3, 0.9)
    with pytest.raises(ConfigMismatchError, match="lr"):  # another autoencoder lr is another run
        GANTrainer(data, str(tmp_path / "own"), method="bagan", steps=1, ae_steps=1, lr=2e-4, beta1=0.5,
                   ae_lr=5e-4, ae_beta1=0.9, progress=False, **SMALL).run()


@pytest.mark.parametrize("sampling", ["data", "balanced"])
def test_real_sampling(tmp_path, sampling):
    """'balanced': D's real batches hold every class equally often (the minority's few images repeat); 'data':
    as in the data. Both come from the data stream, so a resume is exact either way."""
    counts = (40, 40, 40, 6)
    t = GANTrainer(tiny_data(counts), str(tmp_path), method="bagan", steps=0, real_sampling=sampling,
                   progress=False, **SMALL)
    labels = torch.cat([t._real_batch()[1] for _ in range(500)])  # 4000 draws
    share = torch.bincount(labels, minlength=K).double() / len(labels)
    expect = torch.full((K,), 1 / K, dtype=torch.float64) if sampling == "balanced" else \
        torch.tensor(counts, dtype=torch.float64) / sum(counts)
    assert torch.allclose(share, expect, atol=0.03), share
    images, y, idx = t._real_batch()
    assert torch.equal(images, t.images[idx]) and torch.equal(y, t.labels[idx])


def _train_in_pieces(tmp_path, name, crash_at):
    """bagan with 4 AE and 4 GAN steps, killed before the train_step calls numbered in ``crash_at`` (counted
    over every attempt, AE steps first) and resumed each time; returns the final checkpoint."""
    data = tiny_data()
    out = str(tmp_path / name)
    calls = {"n": 0}
    from cbgan_ext.train.methods import bagan as bagan_mod
    ae_step, gan_step = bagan_mod.AutoencoderStage.train_step, GANTrainer.train_step

    def counting(fn):
        def step(self, s):
            calls["n"] += 1
            if calls["n"] in crash_at:
                raise KeyboardInterrupt
            return fn(self, s)
        return step
    bagan_mod.AutoencoderStage.train_step = counting(ae_step)
    GANTrainer.train_step = counting(gan_step)
    crashes = 0
    try:
        while True:
            try:
                GANTrainer(data, out, method="bagan", steps=4, ae_steps=4, progress=False, **SMALL).run()
                break
            except KeyboardInterrupt:
                crashes += 1
    finally:
        bagan_mod.AutoencoderStage.train_step, GANTrainer.train_step = ae_step, gan_step
    assert crashes == len(crash_at)
    return torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True), calls["n"]


def test_resume_is_exact_across_the_three_stages(tmp_path):
    whole, n_whole = _train_in_pieces(tmp_path, "whole", set())
    assert n_whole == 8
    # call 4 is AE step 4 (the AE resumes from its checkpoint at 2 and re-runs step 3); call 9 is GAN step 3
    # (resumes from the GAN checkpoint at 2)
    pieces, n_pieces = _train_in_pieces(tmp_path, "pieces", {4, 9})
    assert n_pieces == 8 + 2 + 1
    for part in ("G", "D"):
        for k, v in whole["modules"][part].items():
            assert torch.equal(v, pieces["modules"][part][k]), (part, k)
    assert whole["step"] == pieces["step"] == 4
    assert torch.equal(whole["ema"]["class_chol"], pieces["ema"]["class_chol"])


def test_acgan_and_minority_gan_train(tmp_path):
    data = tiny_data()
    t = GANTrainer(data, str(tmp_path / "a"), method="acgan", steps=2, progress=False, **SMALL)
    t.run()
    rec = [json.loads(line) for line in open(tmp_path / "a" / "metrics.jsonl")]
    assert all(math.isfinite(r["aux_d"]) for r in rec if r.get("event") == "train")
    m = GANTrainer(data, str(tmp_path / "m"), method="minority-gan", steps=2, progress=False, **SMALL)
    assert m.labels.unique().tolist() == [3] and len(m.labels) == 6  # the minority class alone
    assert m.method.eval_label() == 3 and not m.method.conditional
    m.run()
    m2 = GANTrainer(data, str(tmp_path / "m2"), method="minority-gan", steps=1, target_class=1, progress=False,
                    **SMALL)
    assert m2.labels.unique().tolist() == [1]


def test_acgan_losses_are_odena_et_al():
    """Odena et al.'s losses; D's class term on the reals only by default (Keras' ACGAN example)."""
    paper, keras = get_method("acgan")(K, settings=dict(acgan_aux="real+fake")), get_method("acgan")(K)
    src, cls = torch.randn(10), torch.randn(10, K)
    yr, yf = torch.randint(0, K, (6,)), torch.randint(0, K, (4,))
    adv = F.binary_cross_entropy_with_logits(src, torch.cat([torch.ones(6), torch.zeros(4)]))
    loss, _ = paper.d_loss(lambda x: (src, cls), torch.zeros(6), yr, torch.zeros(4), yf)
    assert torch.allclose(loss, adv + F.cross_entropy(cls, torch.cat([yr, yf])))
    loss, _ = keras.d_loss(lambda x: (src, cls), torch.zeros(6), yr, torch.zeros(4), yf)
    assert torch.allclose(loss, adv + F.cross_entropy(cls[:6], yr))
    for M in (paper, keras):
        M_loss, _ = M.d_loss(lambda x: (src, cls), torch.zeros(6), yr, torch.zeros(4), (yf + 1) % K)
        assert torch.equal(M_loss, loss) == (M is keras)  # the fakes' labels matter only with real+fake
    M = keras
    gl, _ = M.g_loss(lambda x: (src[:4], cls[:4]), None, None, torch.zeros(4), yf)
    assert torch.allclose(gl, F.binary_cross_entropy_with_logits(src[:4], torch.ones(4)) + F.cross_entropy(cls[:4], yf))


# ---- bad input ---------------------------------------------------------------------------------------------

def test_bad_input_is_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match=r"minority_class must be in \[0, 10\)"):
        long_tailed_counts(100, 10, profile="bagan", minority_class=10)
    with pytest.raises(ValueError, match="twice"):
        minority_classes([2, 2], 10)
    assert minority_classes("5,2", 10) == (2, 5)
    assert long_tailed_counts(100, 4, profile="bagan", minority_class=[1, 3], drop_fraction=0.9) == [100, 10, 100, 10]
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="drop_fraction"):
            long_tailed_counts(100, 10, profile="bagan", drop_fraction=bad)
    data = tiny_data()
    with pytest.raises(ValueError, match="latent_shrinkage"):
        GANTrainer(data, str(tmp_path / "x"), method="bagan", latent_shrinkage=0.0, progress=False, **SMALL)
    assert not (tmp_path / "x" / "checkpoint.pt").exists()
    with pytest.raises(ValueError, match="arch must be 'bagan'"):
        GANTrainer(data, str(tmp_path / "y"), method="bagan", **{**SMALL, "z_dim": 128}, arch="sndcgan")
    two = tiny_data()
    two.config["minority_class"] = [2, 3]
    with pytest.raises(ValueError, match="target_class"):
        GANTrainer(two, str(tmp_path / "z"), method="minority-gan", progress=False, **SMALL)


def test_a_run_directory_of_another_method_is_refused(tmp_path):
    data = tiny_data()
    GANTrainer(data, str(tmp_path / "r"), method="acgan", steps=1, progress=False, **SMALL).run()
    with pytest.raises(ConfigMismatchError, match="method"):
        GANTrainer(data, str(tmp_path / "r"), method="bagan", steps=1, ae_steps=1, progress=False, **SMALL).run()
    assert not (tmp_path / "r" / "autoencoder.pt").exists()  # refused before any stage ran


def test_a_resume_with_other_stage_settings_is_refused_before_touching_the_stages(tmp_path):
    data = tiny_data()
    out = str(tmp_path / "b")
    GANTrainer(data, out, method="bagan", steps=1, ae_steps=2, progress=False, **SMALL).run()
    before = [os.path.getmtime(os.path.join(out, f)) for f in ("autoencoder.pt", "gaussians.pt")]
    for change in (dict(ae_steps=3), dict(latent_shrinkage=0.5)):
        with pytest.raises(ConfigMismatchError):
            GANTrainer(data, out, method="bagan", steps=2, progress=False, **{"ae_steps": 2, **SMALL, **change}).run()
    assert [os.path.getmtime(os.path.join(out, f)) for f in ("autoencoder.pt", "gaussians.pt")] == before
    os.unlink(os.path.join(out, "checkpoint.pt"))  # before the adversarial stage: fewer AE steps than done
    with pytest.raises(ConfigMismatchError, match="ae_steps"):
        GANTrainer(data, out, method="bagan", steps=1, ae_steps=1, progress=False, **SMALL).run()


def test_non_finite_codes_are_refused():
    enc = CodeEncoder(2)
    images = torch.randn(10, 1, 2, 2)
    images[3, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite codes for 1 images"):
        fit_class_gaussians(enc, images, torch.arange(10) % 2, 2)


def test_cli_refuses_a_bad_minority_class(capsys):
    from cbgan_ext.cli import main
    bagan = ["train", "--method", "bagan", "--profile", "bagan", "--out", "/nonexistent/x"]
    assert main([*bagan, "--minority-class", "a"]) == 2
    assert "--minority-class" in capsys.readouterr().err
    assert main([*bagan, "--drop-fraction", "1"]) == 2
    assert "--drop-fraction" in capsys.readouterr().err


# ---- augment-eval's extra sets, SSIM ------------------------------------------------------------------------

def test_extra_images_rebalance_the_minority_class():
    from cbgan_ext.train.augment_eval import extra_images
    data = tiny_data()
    x, y = extra_images("oversample", data, (3,))
    assert len(x) == 34 and (y == 3).all()
    real = data.images[data.labels == 3]
    assert torch.equal(x[:6], real) and torch.equal(x[6:12], real)
    xm, _ = extra_images("mirror", data, (3,))
    assert torch.equal(xm[:6], real.flip(-1))


def test_classifier_refuses_a_misshapen_extra_file(tmp_path):
    from cbgan_ext.train.classifier import _with_extra
    data = tiny_data()
    bad = tmp_path / "bad.pt"
    torch.save({"images": torch.zeros(3, 1, 8, 8, dtype=torch.uint8), "labels": torch.zeros(3, dtype=torch.int64)}, bad)
    with pytest.raises(ValueError, match="images must be uint8"):
        _with_extra(data, str(bad))
    good = tmp_path / "good.pt"
    torch.save({"images": torch.zeros(3, 1, 16, 16, dtype=torch.uint8), "labels": torch.full((3,), 3)}, good)
    merged, digest = _with_extra(data, str(good))
    assert merged.class_counts == [40, 40, 40, 9] and len(digest) == 64
    torch.save({"images": torch.zeros(3, 1, 16, 16, dtype=torch.uint8), "labels": torch.full((3,), 4)}, good)
    with pytest.raises(ValueError, match="labels"):
        _with_extra(data, str(good))


def test_ssim_summaries():
    pytest.importorskip("torchmetrics")
    from cbgan_ext.metrics.ssim import mean_nearest_ssim, mean_pair_ssim, nearest_ssim, ssim
    g = torch.Generator().manual_seed(0)
    a = torch.rand(6, 1, 16, 16, generator=g) * 2 - 1
    assert torch.allclose(ssim(a, a), torch.ones(6, dtype=torch.float64), atol=1e-5)
    assert mean_pair_ssim(a[:1].expand(5, -1, -1, -1), 50, g) == pytest.approx(1.0, abs=1e-5)
    assert mean_pair_ssim(a, 200, g) < 0.5  # distinct noise images: never paired with themselves
    assert mean_pair_ssim(a[:1], 10, g) is None
    pool = torch.cat([a, a[:2] * 0.9])
    near = nearest_ssim(a[:2], pool, exclude_self=True)  # each finds its scaled copy, not itself
    assert (near < 1 - 1e-4).all() and (near > 0.9).all()
    assert mean_nearest_ssim(a[:0], pool) is None
    with pytest.raises(ValueError, match="ssim"):
        ssim(a, a[:3])


def test_class_accuracy_is_per_class_agreement_with_the_class_asked_for():
    from cbgan_ext.train.evaluate import Evaluator

    class Always2(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(()))

        def features(self, x):
            return x.flatten(1)[:, :4] + self.w

        def forward(self, x):
            return F.one_hot(torch.full((x.shape[0],), 2), K).float() * 5 + self.w
    real = torch.rand(40, 1, 8, 8) * 2 - 1
    ev = Evaluator(Always2(), real, K, n=16, real_labels=torch.arange(40) % K)
    res = ev.metrics(real[:16], torch.arange(16) % K)
    assert res["class_accuracy"] == [0.0, 0.0, 1.0, 0.0] and res["label_accuracy"] == 0.25


def test_generated_extra_images_are_the_runs_class_asked_for(tmp_path):
    from cbgan_ext.train.augment_eval import augment_eval, extra_images
    from cbgan_ext.train.gan import load_run
    data = tiny_data()
    out = str(tmp_path / "b")
    GANTrainer(data, out, method="bagan", steps=1, ae_steps=1, progress=False, **SMALL).run()
    x, y = extra_images("generated", data, (3,), run_dir=out, checkpoint="last", seed=5)
    assert x.dtype == torch.uint8 and x.shape == (34, 1, 16, 16) and (y == 3).all()
    run = load_run(out, "last")
    g = torch.Generator().manual_seed(5 + 777)
    with torch.no_grad():
        expect = run.G(torch.randn(34, run.z_dim, generator=g), torch.full((34,), 3))
    assert torch.equal(x, ((expect.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8))
    # a cached draw of other settings is refused, not reused
    folder = tmp_path / "aug" / "bagan"
    folder.mkdir(parents=True)
    torch.save({"images": x, "labels": y, "kind": "generated", "run": os.path.abspath(out), "checkpoint": "last",
                "seed": 4, "run_step": 1}, folder / "extra.pt")
    with pytest.raises(ValueError, match="other settings"):
        augment_eval(str(tmp_path / "aug"), [out], dataset_config=None, rows=(), checkpoint="last", seed=5)

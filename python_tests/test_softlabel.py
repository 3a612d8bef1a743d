"""Softlabel-GAN and its baselines on the shared trainer: BigGAN's definitions (the projection output, the
linear conditional BatchNorm), the label vectors of reals (soft labels index by index, smoothing), n_dis D
steps, DiffAugment on D's inputs, resume exactness, bad input."""
import json

import pytest
import torch
import torch.nn.functional as F

from cbgan_ext import cli
from cbgan_ext.models import build_gan
from cbgan_ext.models.biggan import LinearConditionalBatchNorm2d
from cbgan_ext.train import GANTrainer
from cbgan_ext.train.methods import get_method

K = 5


class TinyData(torch.utils.data.Dataset):
    def __init__(self, n=48, channels=3):
        g = torch.Generator().manual_seed(1)
        self.images = torch.rand(n, channels, 32, 32, generator=g) * 2 - 1
        self.labels = torch.arange(n) % K
        self.class_counts = torch.bincount(self.labels, minlength=K).tolist()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])


def _soft(n=48, seed=2):
    return torch.softmax(torch.randn(n, K, generator=torch.Generator().manual_seed(seed)) * 2, dim=1)


def _trainer(tmp, method="softlabel-gan", steps=3, **kw):
    torch.manual_seed(0)
    settings = dict(steps=steps, width=0.0625, z_dim=16, batch_size=8, ema_start=1, log_every=1, sample_every=0,
                    ckpt_every=2, seed=4)
    settings.update(kw)
    soft = _soft() if get_method(method).needs_soft_labels else None
    return GANTrainer(TinyData(), str(tmp), method=method, soft_labels=soft, progress=False, **settings)


@pytest.mark.parametrize("size", [32, 64])
def test_biggan_projection_output_is_psi_plus_label_weighted_embedding(size):
    G, D = build_gan("biggan", channels=3, image_size=size, width=0.125, num_classes=K, d_head="projection")
    D.eval()
    x = torch.randn(6, 3, size, size, dtype=torch.float64)
    D.double()
    y_soft = torch.softmax(torch.randn(6, K, dtype=torch.float64), 1)
    y_hard = torch.randint(0, K, (6,))
    with torch.no_grad():
        h = D.features(x)
        E = D.head.class_embedding  # [K, L], spectrally normalised
        psi = h @ D.head.psi.normalized_weight().t() + D.head.psi.bias
        want_soft = psi.squeeze(1) + (y_soft[:, :, None] * E[None] * h[:, None, :]).sum(dim=(1, 2))
        want_hard = psi.squeeze(1) + (E[y_hard] * h).sum(1)
        torch.testing.assert_close(D(x, y_soft), want_soft)
        torch.testing.assert_close(D(x, y_hard), want_hard)
        torch.testing.assert_close(D(x, F.one_hot(y_hard, K).double()), want_hard)
    assert h.shape[1] == D.feature_dim


def test_biggan_generator_linear_conditional_batchnorm():
    bn = LinearConditionalBatchNorm2d(4, K).double().eval()
    with torch.no_grad():
        bn.bn.running_mean.uniform_(-1, 1), bn.bn.running_var.uniform_(0.5, 2)
        bn.gain.weight.normal_(), bn.bias.weight.normal_()
    x, y = torch.randn(3, 4, 5, 5, dtype=torch.float64), torch.softmax(torch.randn(3, K, dtype=torch.float64), 1)
    norm = (x - bn.bn.running_mean[:, None, None]) / torch.sqrt(bn.bn.running_var[:, None, None] + bn.bn.eps)
    want = norm * (1 + y @ bn.gain.weight.t())[:, :, None, None] + (y @ bn.bias.weight.t())[:, :, None, None]
    torch.testing.assert_close(bn(x, y), want)
    assert bn.gain.bias is None and bn.bias.bias is None  # bias-free maps, not spectrally normalised
    G, _ = build_gan("biggan", channels=1, image_size=32, width=0.125, num_classes=K, d_head="projection")
    G.eval()
    z, yh = torch.randn(4, 128), torch.tensor([0, 3, 4, 1])
    torch.testing.assert_close(G(z, yh), G(z, F.one_hot(yh, K).float()))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 5\)"):
        G(z, torch.tensor([0, 5, 1, 1]))


def test_label_vectors_of_reals():
    labels, index = torch.tensor([0, 2, 4]), torch.tensor([7, 0, 31])
    smooth = get_method("smooth-gan")(K).real_labels(labels, index)
    want = torch.full((3, K), 0.1 / K)
    want[torch.arange(3), labels] = 0.9 + 0.1 / K  # y(1 - α) + α/K, the paper's formula: sums to 1
    torch.testing.assert_close(smooth, want)
    assert torch.equal(get_method("diffaug-gan")(K).real_labels(labels, index), labels)  # one-hot via gather
    m = get_method("softlabel-gan")(K)
    m.soft_table = _soft()
    assert torch.equal(m.real_labels(labels, index), _soft()[index])  # the row of that very image


def test_soft_labels_follow_the_training_subset_index_by_index(tmp_path, one_thread):
    pytest.importorskip("sklearn")
    from cbgan_ext.data import get_dataset
    from cbgan_ext.models.classifier import load_classifier
    from cbgan_ext.train.classifier import soft_labels, train_classifier
    ckpt = str(tmp_path / "clf.pt")
    train_classifier(ckpt, dataset="digits", imbalance_ratio=10.0, image_size=32, depth=8, width=0.25, epochs=0.2,
                     progress=False, log=lambda s: None)
    data = get_dataset("digits", "train", image_size=32, imbalance_ratio=10.0, seed=0)
    table = soft_labels(ckpt, data, use_cache=False)
    model = load_classifier(ckpt).eval()
    idx = torch.tensor([len(data) - 1, 0, 17, 3])
    with torch.no_grad():
        want = torch.softmax(model(data.float_images()[idx]), 1)
    t = GANTrainer(data, str(tmp_path / "run"), method="softlabel-gan", soft_labels=table, progress=False,
                   steps=0, width=0.0625)
    torch.testing.assert_close(t.method.real_labels(data.labels[idx], idx), want, rtol=1e-5, atol=1e-6)
    assert not torch.equal(want.argmax(1), want.argmin(1))  # a real softmax, not a constant


def test_n_dis_d_steps_per_g_step_and_diffaugment_on_d_inputs(tmp_path):
    t = _trainer(tmp_path / "a", method="diffaug-gan", steps=2)
    t.run()
    d_steps = t.optimizers["D"].state[next(iter(t.D.parameters()))]["step"]
    g_steps = t.optimizers["G"].state[next(iter(t.G.parameters()))]["step"]
    assert int(d_steps) == 8 and int(g_steps) == 2  # n_dis = 4, the released scripts'
    plain = _trainer(tmp_path / "b", method="diffaug-gan", steps=2, policy="")
    plain.run()  # the same streams without augmentation: other weights, and no augmentation stream
    assert "aug_rng" in t.extra_state and "aug_rng" not in plain.extra_state
    assert not torch.equal(t.G.state_dict()["linear.weight_orig"], plain.G.state_dict()["linear.weight_orig"])


def test_softlabel_gan_resumes_exactly(tmp_path, one_thread):
    full = _trainer(tmp_path / "full", steps=4)
    full.run()
    _trainer(tmp_path / "part", steps=2).run()
    resumed = _trainer(tmp_path / "part", steps=4)
    resumed.run()
    for name in ("G", "D"):
        a, b = full.modules[name].state_dict(), resumed.modules[name].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    a, b = full.ema.model.state_dict(), resumed.ema.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_input_is_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match="needs soft labels"):
        GANTrainer(TinyData(), str(tmp_path / "a"), method="softlabel-gan", progress=False)
    with pytest.raises(ValueError, match=r"soft_labels must be \[48, 5\]"):
        GANTrainer(TinyData(), str(tmp_path / "b"), method="softlabel-gan", soft_labels=_soft(40), progress=False)
    with pytest.raises(ValueError, match=r"soft_labels must be \[48, 5\]"):
        GANTrainer(TinyData(), str(tmp_path / "c"), method="softlabel-gan", soft_labels=torch.rand(48, 6),
                   progress=False)
    with pytest.raises(ValueError, match="policy: expected a DiffAugment policy"):
        _trainer(tmp_path / "d", method="diffaug-gan", policy="translation,zoom")
    with pytest.raises(ValueError, match="biggan is the conditional G / projection D pair"):
        _trainer(tmp_path / "e", method="gan", arch="biggan")


def test_cli_trains_softlabel_gan_with_a_classifiers_soft_labels(tmp_path, capsys, one_thread, monkeypatch):
    pytest.importorskip("sklearn")
    from cbgan_ext.train.classifier import train_classifier
    ckpt = str(tmp_path / "clf.pt")
    train_classifier(ckpt, dataset="digits", imbalance_ratio=10.0, image_size=32, depth=8, width=0.25, epochs=0.2,
                     progress=False, log=lambda s: None)
    run = str(tmp_path / "run")
    argv = ["train", "--dataset", "digits", "--imbalance", "10", "--image-size", "32", "--method", "softlabel-gan",
            "--soft-labels", ckpt, "--width", "0.0625", "--steps", "2", "--batch-size", "8", "--no-progress",
            "--sample-every", "0", "--n-dis", "2"]
    assert cli.main(argv + ["--out", run]) == 0
    config = json.load(open(tmp_path / "run" / "config.json"))
    assert config["arch"] == "biggan" and config["n_dis"] == 2 and config["policy"] == "translation,cutout"
    assert config["beta1"] == 0.0 and config["soft_labels"] == ckpt and len(config["soft_labels_sha256"]) == 16
    assert cli.main(["sample", "--run", run, "--class", "3", "--n", "4", "--out", str(tmp_path / "c3.png")]) == 0
    capsys.readouterr()
    assert cli.main(["eval", "--run", run, "--annotator", ckpt, "--n", "70", "--checkpoint", "last"]) == 0
    res = json.loads(capsys.readouterr().out)  # one JSON document: nothing else on stdout
    assert len(res["intra_fd"]) == 10 and 0 <= res["class_consistency"] <= 1
    assert "prdc" in res or "prdc_skipped" in res
    assert ("intra_lpips" in res and len(res["intra_lpips"]) == 10) or res["lpips_skipped"].startswith("LPIPS skipped")
    plot = tmp_path / "intra_fd.png"
    from cbgan_ext.train import gan as gan_module
    real_load, loads = gan_module.load_run, []

    def counting_load(*a, **k):
        loads.append(a[0])
        return real_load(*a, **k)
    monkeypatch.setattr(gan_module, "load_run", counting_load)
    assert cli.main(["eval", "--run", run, "--annotator", ckpt, "--n", "40", "--checkpoint", "last",
                     "--lpips-images", "0", "--plot", str(plot)]) == 0
    res = json.loads(capsys.readouterr().out)
    assert plot.stat().st_size > 0 and "lpips" not in res and "lpips_skipped" not in res
    assert loads == [run]  # the checkpoint is read once for the plot and the metrics
    assert cli.main(["eval", "--run", run, "--annotator", ckpt, "--lpips-images", "1"]) == 2
    assert "--lpips-images" in capsys.readouterr().err
    assert cli.main(argv[:8] + ["diffaug-gan"] + argv[9:] + ["--out", str(tmp_path / "d")]) == 2
    assert "--soft-labels: not used by method 'diffaug-gan'" in capsys.readouterr().err
    assert cli.main(argv + ["--out", str(tmp_path / "bad"), "--policy", "zoom"]) == 2
    assert "--policy" in capsys.readouterr().err


def test_intra_fd_is_the_per_class_fd_against_that_class_of_the_test_split():
    from cbgan_ext.metrics import ClassifierFeatures, FeatureStats, frechet_distance
    from cbgan_ext.train import Evaluator
    from cbgan_ext.train.evaluate import batched, generate
    torch.manual_seed(0)
    ann = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 6), torch.nn.ReLU(),
                              torch.nn.Linear(6, K))
    ann.features = lambda x: ann[:3](x)  # the interface ClassifierFeatures reads
    real = torch.rand(60, 3, 32, 32) * 2 - 1
    real_y = torch.arange(60) % K
    G, _ = build_gan("biggan", channels=3, image_size=32, width=0.0625, num_classes=K, d_head="projection")
    ev = Evaluator(ann, real, K, n=40, fid="annotator", real_labels=real_y, prdc=True)
    res = ev(G, z_dim=128, conditional=True)
    fakes, labels = generate(G, 40, z_dim=128, num_classes=K, conditional=True,
                             generator=torch.Generator().manual_seed(ev.seed))
    feats = ClassifierFeatures(ann)
    ff, rf = batched(feats, fakes), batched(feats, real)
    for k in range(K):
        want = frechet_distance(FeatureStats(ff[labels.numpy() == k]), FeatureStats(rf[real_y.numpy() == k]))
        assert res["intra_fd"][k] == pytest.approx(want, rel=1e-6)
    assert res["intra_fd_mean"] == pytest.approx(sum(res["intra_fd"]) / K)
    assert res["class_consistency"] == res["label_accuracy"]
    prdc = pytest.importorskip("prdc")
    want = prdc.compute_prdc(rf, ff, nearest_k=5)
    assert res["prdc"] == pytest.approx({k: float(v) for k, v in want.items()})
    per_class = [prdc.compute_prdc(rf[real_y.numpy() == k], ff[labels.numpy() == k], nearest_k=5) for k in range(K)]
    for key in want:
        assert res["intra_prdc"][key] == pytest.approx(sum(float(p[key]) for p in per_class) / K)
    assert "intra_fd" not in Evaluator(ann, real, K, n=40, fid="annotator")(G, z_dim=128, conditional=True)


def test_train_step_gives_d_each_real_images_own_soft_label(tmp_path):
    t = _trainer(tmp_path, steps=1, policy="", n_dis=2)
    seen = []
    d_loss = t.method.d_loss

    def spy(D, real, real_y, fake, fake_y):
        seen.append((real.clone(), real_y.clone()))
        return d_loss(D, real, real_y, fake, fake_y)
    t.method.d_loss = spy
    t.run()
    data, table = TinyData(), _soft()
    assert len(seen) == 2
    for real, real_y in seen:
        flat = data.images.flatten(1)
        idx = [int(torch.nonzero((flat == x.flatten()).all(1)).flatten()[0]) for x in real]
        assert torch.equal(real_y, table[idx])  # the row of that very image, through the whole step


@pytest.mark.parametrize("policy", ["translation,cutout", ""])
def test_d_channels_last_feeds_d_channels_last_and_computes_the_same_losses(tmp_path, policy):
    seen = []
    a = _trainer(tmp_path / "a", steps=2, policy=policy)
    b = _trainer(tmp_path / "b", steps=2, policy=policy, d_channels_last=True)
    b.D.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    for step in range(2):
        ma, mb = a.train_step(step), b.train_step(step)
        # Adam's normalised steps turn float rounding into lr-sized weight differences, so compare losses
        assert mb["loss_d"] == pytest.approx(ma["loss_d"], rel=1e-3, abs=1e-4)
        assert mb["loss_g"] == pytest.approx(ma["loss_g"], rel=1e-3, abs=1e-4)
    assert len(seen) == 18 and all(seen)  # every D call: 2 steps x (4 D steps x (real, fake) + the G step)
    assert b.config["d_channels_last"] is True and a.config["d_channels_last"] is False
    a.run()
    with pytest.raises(ValueError, match="d_channels_last"):  # a resume with the other layout is refused
        _trainer(tmp_path / "a", steps=3, policy=policy, d_channels_last=True).run()


def test_frechet_distance_without_sqrtm_disp(monkeypatch):
    # Newer SciPy drops sqrtm's `disp`, which clean-fid passes: the fallback must give the same distance.
    import inspect

    import numpy as np
    from scipy import linalg

    from cbgan_ext.metrics import FeatureStats, frechet
    g = torch.Generator().manual_seed(1)
    a = FeatureStats((torch.randn(200, 12, generator=g) @ torch.randn(12, 12, generator=g)).numpy())
    b = FeatureStats((torch.randn(150, 12, generator=g) * 2 + 0.5).numpy())
    sqrtm = linalg.sqrtm
    calls = []

    def sqrtm_without_disp(m, **kw):
        if "disp" in kw:
            raise TypeError("sqrtm() got an unexpected keyword argument 'disp'")
        calls.append(1)
        if len(calls) == 1 and nan_first:  # a singular product: the eps-regularised second try must be taken
            return np.full_like(m, np.nan)
        return sqrtm(m, **kw)

    # diagonal covariances have a closed form: |mu1 - mu2|^2 + sum (sqrt(s1) - sqrt(s2))^2
    d1, d2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    diag = [FeatureStats.from_state_dict({"n": 2, "mu": m, "sigma": np.diag(v)})
            for m, v in ((np.array([0.0, 1.0, 2.0]), d1), (np.array([1.0, 1.0, 0.0]), d2))]
    closed = 1.0 + 4.0 + float(((np.sqrt(d1) - np.sqrt(d2)) ** 2).sum())
    takes_disp = "disp" in inspect.signature(sqrtm).parameters
    for x, y, nan_first in [(a, b, False), (b, a, False), (a, a, False), (a, b, True), (*diag, False)]:
        calls.clear()
        with monkeypatch.context() as m:
            m.setattr(linalg, "sqrtm", sqrtm_without_disp)
            got = frechet.frechet_distance(x, y)
        assert len(calls) == 1 + nan_first  # the fallback ran, and retried only after a non-finite root
        if x is diag[0]:
            assert got == pytest.approx(closed, rel=1e-9)
        elif takes_disp and not nan_first:  # clean-fid's own number, where this SciPy still takes disp
            assert got == pytest.approx(frechet.frechet_distance(x, y), rel=1e-6, abs=1e-6)
        assert got >= -1e-6 and (got < 1e-6) == (x is y)

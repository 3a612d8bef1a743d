import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICES

from cbgan_ext import cli
from cbgan_ext.data import get_dataset
from cbgan_ext.models import CifarResNet, load_classifier, resnet32
from cbgan_ext.nn import LongTailLoss, effective_number_weights, ldam_margins
from cbgan_ext.train import evaluate, soft_labels, train_classifier
from cbgan_ext.train.classifier import augment_batch, learning_rate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A few seconds on scikit-learn's digits: tiny ResNet, no augmentation.
TINY = dict(dataset="digits", depth=8, width=0.5, augment="none", batch_size=64, lr=0.05, eval_every=0,
            lr_schedule="cosine")




pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------ model

@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("width", [0.5, 1.0])
def test_resnet_shapes_and_features(in_channels, width):
    m = CifarResNet(num_classes=7, in_channels=in_channels, depth=20, width=width)
    x = torch.rand(5, in_channels, 32, 32) * 2 - 1
    f = m.features(x)
    assert f.shape == (5, int(64 * width)) == (5, m.feature_dim)
    out = m(x)
    assert out.shape == (5, 7)
    torch.testing.assert_close(out, m.linear(f))
    assert m(torch.rand(2, in_channels, 28, 28)).shape == (2, 7)  # global pooling: any size


def test_resnet32_is_the_cifar_resnet32():
    m = resnet32(num_classes=10, in_channels=3)
    n_params = sum(p.numel() for p in m.parameters())
    assert 0.45e6 < n_params < 0.47e6  # "ResNet-32, 0.46M parameters" (He et al. 2016, Table 6)
    convs = [mod for mod in m.modules() if isinstance(mod, torch.nn.Conv2d)]
    assert len(convs) == 31  # + 1 linear = 32 weighted layers
    with pytest.raises(ValueError, match="6n\\+2"):
        CifarResNet(depth=30)


def test_normed_linear_head_gives_scaled_cosines():
    m = CifarResNet(num_classes=4, in_channels=1, depth=8, normed_linear=True, logit_scale=30.0)
    out = m(torch.rand(6, 1, 16, 16) * 2 - 1)
    assert out.abs().max() <= 30.0 + 1e-4


# ------------------------------------------------------------------------------------------ losses

def test_effective_number_weights_and_margins():
    counts = [5000, 500, 50]
    w = effective_number_weights(counts, 0.9999)
    ref = torch.tensor([(1 - 0.9999) / (1 - 0.9999 ** n) for n in counts], dtype=torch.float64)
    torch.testing.assert_close(w, (ref / ref.sum() * 3).float())
    assert w[0] < w[1] < w[2]
    m = ldam_margins(counts, 0.5)
    assert m.max().item() == pytest.approx(0.5)
    torch.testing.assert_close(m / m[2], torch.tensor([n ** -0.25 / 50 ** -0.25 for n in counts]))
    with pytest.raises(ValueError, match="positive"):
        effective_number_weights([10, 0])


def test_losses_match_their_formulas():
    torch.manual_seed(1)
    counts = [100, 30, 10, 3]
    z = torch.randn(16, 4) * 3
    y = torch.randint(0, 4, (16,))
    ce = LongTailLoss("ce", counts)
    torch.testing.assert_close(ce(z, y), F.cross_entropy(z, y))

    drw = LongTailLoss("drw", counts, drw_epoch=2)
    drw.set_epoch(1.5)
    torch.testing.assert_close(drw(z, y), F.cross_entropy(z, y))
    drw.set_epoch(2)
    w = effective_number_weights(counts)
    torch.testing.assert_close(drw(z, y), F.cross_entropy(z, y, weight=w))

    ldam = LongTailLoss("ldam-drw", counts, drw_epoch=5, scale=30.0)
    ldam.set_epoch(0)
    cos = torch.tanh(z)  # cosines in [-1, 1], the model hands over s * cos
    m = ldam_margins(counts)
    ref = F.cross_entropy(30.0 * (cos - F.one_hot(y, 4) * m[y][:, None]), y)
    torch.testing.assert_close(ldam(30.0 * cos, y), ref)
    ldam.set_epoch(5)
    ref = F.cross_entropy(30.0 * (cos - F.one_hot(y, 4) * m[y][:, None]), y, weight=w)
    torch.testing.assert_close(ldam(30.0 * cos, y), ref)

    soft = LongTailLoss("softlabel-ce", counts)
    p = torch.softmax(z, 1)
    torch.testing.assert_close(soft(z, y), F.cross_entropy(z, y) - 0.3 * (-(p * p.log()).sum(1).mean()))

    with pytest.raises(ValueError, match="unknown loss"):
        LongTailLoss("focal", counts)
    with pytest.raises(ValueError, match="drw_epoch"):
        LongTailLoss("drw", counts)


def test_augment_and_schedule():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 1, 16, 16) * 2 - 1
    assert augment_batch(x, "none", g) is x
    a = augment_batch(x, "crop-flip", torch.Generator().manual_seed(3))
    b = augment_batch(x, "crop-flip", torch.Generator().manual_seed(3))
    assert a.shape == x.shape and torch.equal(a, b)
    assert ((a == -1) | torch.isin(a, x)).all()  # every pixel is padding or a pixel of the input
    assert not torch.equal(a, x)
    assert learning_rate(0.1, 0.0, 10, "step", 1.0) == pytest.approx(0.02)
    assert learning_rate(0.1, 5.0, 10, "step", 1.0) == pytest.approx(0.1)
    assert learning_rate(0.1, 8.5, 10, "step", 1.0) == pytest.approx(1e-3)
    assert learning_rate(0.1, 9.5, 10, "step", 1.0) == pytest.approx(1e-5)
    assert learning_rate(0.1, 10.0, 10, "cosine", 0.0) == pytest.approx(0.0, abs=1e-12)


# ------------------------------------------------------------------------------------------ training

def test_tiny_training_learns(tmp_path):
    out = str(tmp_path / "c.pt")
    r = train_classifier(out, progress=False, log=lambda s: None, epochs=8, loss="ce", **TINY)
    losses = [h["train_loss"] for h in r["history"]]
    assert losses[-1] < 0.5 * losses[0]
    assert r["balanced_accuracy"] > 0.6  # chance is 0.1
    assert len(r["per_class_accuracy"]) == 10
    ck = torch.load(out, weights_only=True)
    for key in ("dataset", "imbalance_ratio", "loss", "class_counts", "balanced_accuracy", "per_class_accuracy",
                "train_config", "model_config", "model", "optimizer"):
        assert key in ck
    assert ck["dataset"]["name"] == "digits" and ck["finished"] is True
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]
    model = load_classifier(out)
    test = get_dataset("digits", split="test")
    assert evaluate(model, test)["balanced_accuracy"] == pytest.approx(r["balanced_accuracy"])


@pytest.mark.parametrize("loss", ["drw", "ldam-drw", "softlabel-ce"])
def test_long_tailed_losses_train(tmp_path, loss):
    out = str(tmp_path / "c.pt")
    r = train_classifier(out, progress=False, log=lambda s: None, epochs=6, loss=loss, imbalance_ratio=10, **TINY)
    assert r["class_counts"][0] == 10 * r["class_counts"][-1] or r["class_counts"][0] // 10 == r["class_counts"][-1]
    assert r["balanced_accuracy"] > 0.3
    assert r["history"][-1]["train_loss"] < r["history"][0]["train_loss"]


@pytest.mark.parametrize("device", DEVICES)
def test_resume_mid_epoch_equals_uninterrupted(tmp_path, device, restore_determinism):
    # on CUDA two uninterrupted runs differ too unless cuDNN is held to deterministic algorithms
    kw = dict(progress=False, log=lambda s: None, epochs=2, loss="drw", imbalance_ratio=5, drw_epoch=1, device=device,
              deterministic=device == "cuda", **TINY)
    kw.update(augment="crop")
    full = str(tmp_path / "full.pt")
    train_classifier(full, **kw)
    part = str(tmp_path / "part.pt")
    r = train_classifier(part, max_minutes=1e-9, **kw)  # stops after the first batch
    assert r["finished"] is False and r["epoch"] == 0 and r["step"] == 1
    r = train_classifier(part, resume=True, **kw)
    assert r["finished"] is True
    a, b = torch.load(full, weights_only=True), torch.load(part, weights_only=True)
    for k in a["model"]:  # the same computation in the same order: bit-exact, as every GAN resume
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["balanced_accuracy"] == b["balanced_accuracy"]

    with pytest.raises(FileExistsError, match="--resume"):
        train_classifier(full, **kw)
    bad = dict(kw, lr=0.5)
    with pytest.raises(ValueError, match="settings differ.*lr"):
        train_classifier(full, resume=True, **bad)
    with pytest.raises(ValueError, match="unknown loss"):
        train_classifier(str(tmp_path / "x.pt"), **dict(kw, loss="focal"))


def test_soft_label_cache(tmp_path):
    out = str(tmp_path / "c.pt")
    train_classifier(out, progress=False, log=lambda s: None, epochs=2, loss="softlabel-ce", imbalance_ratio=4, **TINY)
    p = soft_labels(out)
    train = get_dataset("digits", imbalance_ratio=4)
    assert p.shape == (len(train), 10)
    torch.testing.assert_close(p.sum(1), torch.ones(len(train)))
    cached = [f for f in os.listdir(tmp_path) if ".softlabels-" in f]
    assert len(cached) == 1
    path = os.path.join(tmp_path, cached[0])
    stamp = os.stat(path).st_mtime_ns
    assert torch.equal(soft_labels(out), p) and os.stat(path).st_mtime_ns == stamp  # read back, not recomputed
    model = load_classifier(out)
    with torch.no_grad():
        torch.testing.assert_close(p[:20], torch.softmax(model(train.float_images()[:20]), 1))
    q = soft_labels(out, get_dataset("digits", split="test"))
    assert q.shape == (350, 10)
    assert len([f for f in os.listdir(tmp_path) if ".softlabels-" in f]) == 2  # another key


# ------------------------------------------------------------------------------------------ CLI

def test_cli_train_classifier(tmp_path, capsys):
    out = str(tmp_path / "cli.pt")
    argv = ["train-classifier", "--dataset", "digits", "--imbalance", "10", "--loss", "ldam-drw", "--out", out,
            "--epochs", "2", "--depth", "8", "--width", "0.5", "--augment", "none", "--no-progress", "--json"]
    assert cli.main(argv) == 0
    assert os.path.exists(out)
    assert '"balanced_accuracy"' in capsys.readouterr().out
    assert cli.main(argv[:-2] + ["--resume", "--epochs", "3"]) == 0
    assert torch.load(out, weights_only=True)["epoch"] == 3


def test_cli_table_is_extensible():
    calls = []

    @cli.subcommand("dummy-cmd", help="test", configure=lambda p: p.add_argument("--n", type=int))
    def _run(args):
        calls.append(args.n)
        return 0
    try:
        assert cli.main(["dummy-cmd", "--n", "4"]) == 0 and calls == [4]
    finally:
        del cli._SUBCOMMANDS["dummy-cmd"]


def test_python_dash_m_cli_help():
    r = subprocess.run([sys.executable, "-m", "cbgan_ext.cli", "train-classifier", "--help"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "--imbalance" in r.stdout and "ldam-drw" in r.stdout


def test_bf16_autocast_training_runs(tmp_path):
    out = str(tmp_path / "bf16.pt")
    r = train_classifier(out, progress=False, log=lambda s: None, epochs=3, loss="ldam-drw", amp="bf16",
                         imbalance_ratio=2, **TINY)
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in r["history"])
    assert r["history"][-1]["train_loss"] < r["history"][0]["train_loss"]
    assert r["balanced_accuracy"] > 0.3


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_training_and_soft_labels_on_device(tmp_path, device, amp):
    out = str(tmp_path / "dev.pt")
    r = train_classifier(out, progress=False, log=lambda s: None, epochs=2, loss="drw", amp=amp, device=device,
                         imbalance_ratio=3, drw_epoch=1, **TINY)
    assert r["finished"] and r["history"][-1]["train_loss"] < r["history"][0]["train_loss"]
    p = soft_labels(out, device=device, use_cache=False)
    assert p.device.type == "cpu" and p.shape[1] == 10
    torch.testing.assert_close(p.sum(1), torch.ones(len(p)))

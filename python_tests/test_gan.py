import json
import os

import pytest
import torch
from torch import nn

from cbgan_ext.metrics import class_histogram, kl_to_uniform
from cbgan_ext.models import build_gan
from cbgan_ext.train import checkpoint as ckpt
from cbgan_ext.train.gan import GANTrainer, paper_lambda, relativistic_d_loss, relativistic_g_loss


class TinyData(torch.utils.data.Dataset):
    """Random 1×32×32 images in [-1, 1] with labels and class_counts, like cbgan_ext.data's datasets."""

    def __init__(self, n=96, K=4, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.rand(n, 1, 32, 32, generator=g) * 2 - 1
        self.labels = torch.randint(0, K, (n,), generator=g)
        self.class_counts = torch.bincount(self.labels, minlength=K).tolist()
        self.imbalance_ratio = 10.0

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])


class TinyClassifier(nn.Module):
    def __init__(self, K=4):
        super().__init__()
        self.body = nn.Sequential(nn.AvgPool2d(4), nn.Flatten(), nn.Linear(64, 16), nn.ReLU())
        self.head = nn.Linear(16, K)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.body(x))


@pytest.mark.parametrize("arch,size", [("sndcgan", 32), ("snresgan", 32), ("snresgan", 64)])
@pytest.mark.parametrize("channels", [1, 3])
def test_gan_shapes(arch, size, channels):
    G, D = build_gan(arch, channels=channels, image_size=size, width=0.125, z_dim=16)
    x = G(torch.randn(5, 16))
    assert x.shape == (5, channels, size, size)
    assert x.abs().max() <= 1
    assert D(x).shape == (5,)
    assert D.features(x).shape == (5, D.feature_dim)


def test_gan_uses_fused_spectral_norm():
    from cbgan_ext.nn import SNConv2d, SNLinear
    _, D = build_gan("sndcgan", channels=3, width=0.25)
    kinds = {type(m) for m in D.modules()}
    assert SNConv2d in kinds and SNLinear in kinds
    assert not any(isinstance(m, nn.Conv2d) and not isinstance(m, SNConv2d) for m in D.modules())


def test_bad_architecture():
    with pytest.raises(ValueError, match="build_gan: unknown architecture"):
        build_gan("biggan")
    with pytest.raises(ValueError, match="sndcgan is defined at 32"):
        build_gan("sndcgan", image_size=64)


def test_relativistic_losses_match_equations():
    dr, df = torch.randn(7), torch.randn(7)
    assert torch.allclose(relativistic_d_loss(dr, df), -torch.log(torch.sigmoid(dr - df)).mean())
    assert torch.allclose(relativistic_g_loss(df, dr), -torch.log(torch.sigmoid(df - dr)).mean())


def test_kl_to_uniform():
    assert kl_to_uniform(torch.tensor([5, 5, 5, 5])) == pytest.approx(0.0, abs=1e-12)
    h = torch.tensor([30.0, 10.0, 0.0, 0.0])
    p = h / h.sum() + 1e-5
    q = torch.full((4,), 0.25) + 1e-5
    assert kl_to_uniform(h) == pytest.approx(float((p * torch.log(p / q)).sum()), rel=1e-6)
    assert kl_to_uniform([9, 1]) > kl_to_uniform([6, 4]) > 0
    assert torch.equal(class_histogram(torch.tensor([0, 2, 2]), 4), torch.tensor([1, 0, 2, 0]))
    with pytest.raises(ValueError, match="class_histogram"):
        class_histogram(torch.tensor([0, 4]), 4)


def test_paper_lambda():
    assert paper_lambda(100) == 10.0 and paper_lambda(10) == 7.5 and paper_lambda(1) == 5.0
    assert paper_lambda(80) == 10.0


def _trainer(tmp, steps, method="cbgan"):
    torch.manual_seed(0)  # the frozen classifiers are inputs, not trainer state: the same for every run
    return GANTrainer(TinyData(), str(tmp), method=method, steps=steps, arch="sndcgan", width=0.125, z_dim=16,
                      batch_size=8, classifier=TinyClassifier(), annotator=TinyClassifier(), cycle=2,
                      eval_samples=64, ema_start=2, log_every=1, sample_every=0, eval_every=3, ckpt_every=3,
                      progress=False, seed=3)


def test_cbgan_training_runs_logs_and_selects_best(tmp_path):
    t = _trainer(tmp_path, 6)
    best = t.run()
    records = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
    train = [r for r in records if r["event"] == "train"]
    evals = [r for r in records if r["event"] == "eval"]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    assert all("reg" in r and torch.isfinite(torch.tensor(r["loss_g"])) for r in train)
    assert [r["step"] for r in evals] == [3, 6]
    assert sum(evals[0]["histogram"]) == 64 and evals[0]["fd_name"] == "FD-annotator"
    assert best["value"] == min(r["fd"] for r in evals)
    assert os.path.exists(tmp_path / "best.pt") and os.path.exists(tmp_path / "checkpoint.pt")
    assert int(t.reg.num_steps) == 6
    # cycle=2: the effective counts moved away from their initial 50
    assert not torch.allclose(t.reg.effective_count, torch.full((4,), 50.0, dtype=torch.float64))


def test_resume_continues_exactly(tmp_path):
    full = _trainer(tmp_path / "full", 6)
    full.run()
    part = _trainer(tmp_path / "part", 3)
    part.run()  # "killed" after step 3, at its checkpoint
    resumed = _trainer(tmp_path / "part", 6)
    resumed.run()
    assert resumed.step == 6
    for a, b in zip(full.G.state_dict().values(), resumed.G.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(full.ema.model.state_dict().values(), resumed.ema.model.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(full.reg.effective_count, resumed.reg.effective_count)
    events = [json.loads(l)["event"] for l in open(tmp_path / "part" / "metrics.jsonl")]
    assert "resumed" in events


def test_cbgan_needs_classifier(tmp_path):
    with pytest.raises(ValueError, match="needs the pretrained classifier"):
        GANTrainer(TinyData(), str(tmp_path), method="cbgan", classifier=None)


def test_atomic_checkpoint_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "c.pt"
    ckpt.save_atomic({"a": torch.arange(3)}, str(path))

    class Boom:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        ckpt.save_atomic({"a": Boom()}, str(path))
    assert torch.equal(ckpt.load(str(path))["a"], torch.arange(3))
    assert [f for f in os.listdir(tmp_path) if f.startswith(".tmp")] == []


def test_cli_sample_from_a_run(tmp_path):
    from cbgan_ext.cli import main
    _trainer(tmp_path, 3).run()
    out = tmp_path / "s.pt"
    assert main(["sample", "--run", str(tmp_path), "--n", "5", "--out", str(out)]) == 0
    x = torch.load(out)
    assert x.shape == (5, 1, 32, 32) and x.abs().max() <= 1
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        main(["sample", "--run", str(tmp_path / "missing")])


def test_default_lambda_follows_the_dataset_imbalance(tmp_path):
    data = TinyData()
    del data.imbalance_ratio
    data.config = {"imbalance_ratio": 100.0}  # as cbgan_ext.data's datasets record it
    t = GANTrainer(data, str(tmp_path), method="cbgan", steps=1, width=0.125, z_dim=16, classifier=TinyClassifier(),
                   progress=False)
    assert t.reg.lam == 10.0

import json
import os
import stat

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cbgan_ext import cli
from cbgan_ext.data import get_dataset
from cbgan_ext.metrics import class_histogram, kl_to_uniform
from cbgan_ext.models import D_HEADS, ConditionalBatchNorm2d, build_gan
from cbgan_ext.nn import CBRegularizer, ProjectionHead, SNLinear
from cbgan_ext.train import ConfigMismatchError, Evaluator, GANTrainer, load_run, method_names
from cbgan_ext.train.methods import get_method
from cbgan_ext.train import checkpoint as ckpt
from cbgan_ext.train import losses
from cbgan_ext.train.evaluate import balanced_test_split
from cbgan_ext.train.gan import paper_lambda
from cbgan_ext.train.options import GROUPS, OPTIONS, unused_options
from conftest import DEVICES


pytestmark = pytest.mark.usefixtures("one_thread")


class TinyData(torch.utils.data.Dataset):
    """Random 1×32×32 images in [-1, 1] with labels and class_counts (no config: not rebuildable)."""

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
    def __init__(self, K=4, channels=1):
        super().__init__()
        self.body = nn.Sequential(nn.AvgPool2d(4), nn.Flatten(), nn.Linear(64 * channels, 16), nn.ReLU())
        self.head = nn.Linear(16, K)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.body(x))


EVAL_IMAGES = torch.rand(40, 1, 32, 32, generator=torch.Generator().manual_seed(5)) * 2 - 1


def _trainer(tmp, steps, method="cbgan", **kw):
    torch.manual_seed(0)  # the frozen classifiers are inputs, not trainer state: the same for every run
    settings = dict(steps=steps, arch="sndcgan", width=0.125, z_dim=16, batch_size=8, eval_samples=64,
                    ema_start=2, log_every=1, sample_every=0, eval_every=3, ckpt_every=3, seed=3)
    cb_reg = get_method(method).cb_regularizer if kw.get("cb_reg") is None else kw["cb_reg"]
    if cb_reg:
        settings["cycle"] = 2
    settings.update(kw)
    data = TinyData()
    soft = None
    if get_method(method).needs_soft_labels:  # a classifier's softmax per training image (softlabel-gan)
        soft = torch.softmax(torch.randn(len(data), len(data.class_counts)), dim=1)
    return GANTrainer(data, str(tmp), method=method, classifier=TinyClassifier() if cb_reg else None,
                      annotator=TinyClassifier(),
                      eval_images=EVAL_IMAGES, progress=False, soft_labels=soft, **settings)


# ------------------------------------------------------------------------------------------------ models

@pytest.mark.parametrize("arch,size", [("sndcgan", 32), ("snresgan", 32), ("snresgan", 64)])
@pytest.mark.parametrize("channels", [1, 3])
def test_gan_shapes(arch, size, channels):
    G, D = build_gan(arch, channels=channels, image_size=size, width=0.125, z_dim=16)
    x = G(torch.randn(5, 16))
    assert x.shape == (5, channels, size, size)
    assert x.abs().max() <= 1
    assert D(x).shape == (5,)
    assert D.features(x).shape == (5, D.feature_dim)


@pytest.mark.parametrize("arch", ["sndcgan", "snresgan"])
def test_discriminator_heads_and_conditional_generator(arch):
    K = 5
    y = torch.tensor([0, 4, 2])
    for head in D_HEADS:
        G, D = build_gan(arch, channels=1, width=0.125, z_dim=8, num_classes=K, d_head=head)
        conditional = head in ("projection", "aux-classifier")
        x = G(torch.randn(3, 8), y) if conditional else G(torch.randn(3, 8))
        out = D(x, y)
        if head == "scalar":
            assert out.shape == (3,)
        elif head == "projection":
            assert out.shape == (3,) and isinstance(D.head, ProjectionHead)
            h = D.features(x)
            D.eval()
            soft = F.one_hot(y, K).float()
            torch.testing.assert_close(D(x, soft), D(x, y))  # one-hot soft labels = hard labels
            assert torch.allclose(D(x, y), D.head.psi(h).squeeze(1) + (h * D.head.class_embedding[y]).sum(1),
                                  atol=1e-4, rtol=1e-4)
        elif head == "classes+1":
            assert out.shape == (3, K + 1)
        else:
            assert out[0].shape == (3,) and out[1].shape == (3, K)
    G, _ = build_gan(arch, channels=1, width=0.125, z_dim=8, num_classes=K, d_head="projection")
    z = torch.randn(3, 8)
    G.eval()
    cbn = [m for m in G.modules() if isinstance(m, ConditionalBatchNorm2d)]
    assert cbn and all(torch.equal(m.gain.weight, torch.ones_like(m.gain.weight)) for m in cbn)  # γ_y = 1 at init
    for m in cbn:
        nn.init.normal_(m.bias.weight)
    assert not torch.allclose(G(z, torch.tensor([0, 0, 0])), G(z, torch.tensor([1, 1, 1])))  # the class matters
    with pytest.raises(ValueError, match="needs class labels"):
        G(z)
    G0, _ = build_gan(arch, channels=1, width=0.125, z_dim=8)
    with pytest.raises(ValueError, match="unconditional generator"):
        G0(z, y)


def test_projection_head_is_the_packages_sn_linear():
    _, D = build_gan("sndcgan", channels=1, width=0.125, num_classes=3, d_head="projection")
    assert isinstance(D.head.psi, SNLinear) and isinstance(D.head.embed, SNLinear)
    assert not any("parametrizations" in n for n, _ in D.named_parameters())


def test_gan_uses_fused_spectral_norm():
    from cbgan_ext.nn import SNConv2d
    _, D = build_gan("sndcgan", channels=3, width=0.25)
    kinds = {type(m) for m in D.modules()}
    assert SNConv2d in kinds and SNLinear in kinds
    assert not any(isinstance(m, nn.Conv2d) and not isinstance(m, SNConv2d) for m in D.modules())


def test_bad_architecture():
    with pytest.raises(ValueError, match="build_gan: unknown architecture"):
        build_gan("stylegan")
    with pytest.raises(ValueError, match="biggan is the conditional G / projection D pair"):
        build_gan("biggan")
    with pytest.raises(ValueError, match="sndcgan is defined at 32"):
        build_gan("sndcgan", image_size=64)
    with pytest.raises(ValueError, match="d_head must be one of"):
        build_gan("sndcgan", d_head="softmax")
    with pytest.raises(ValueError, match="needs num_classes"):
        build_gan("sndcgan", d_head="projection")


# ------------------------------------------------------------------------------------------------ losses

def test_losses_match_their_equations():
    dr, df = torch.randn(7), torch.randn(7)
    assert torch.allclose(losses.relativistic_d_loss(dr, df), -torch.log(torch.sigmoid(dr - df)).mean())
    assert torch.allclose(losses.relativistic_g_loss(df, dr), -torch.log(torch.sigmoid(df - dr)).mean())
    hinge = torch.clamp(1 - dr, min=0).mean() + torch.clamp(1 + df, min=0).mean()
    assert torch.allclose(losses.hinge_d_loss(dr, df), hinge)
    assert torch.allclose(losses.hinge_g_loss(df), -df.mean())
    assert torch.allclose(losses.nonsaturating_d_loss(dr, df),
                          -(torch.log(torch.sigmoid(dr)) + torch.log(1 - torch.sigmoid(df))).mean())
    assert torch.allclose(losses.nonsaturating_g_loss(df), -torch.log(torch.sigmoid(df)).mean())
    lr, lf, y = torch.randn(6, 4), torch.randn(6, 4), torch.randint(0, 3, (6,))
    expect = -(torch.log_softmax(lr, 1)[range(6), y].mean() + torch.log_softmax(lf, 1)[:, 3].mean())
    assert torch.allclose(losses.classes_plus_one_d_loss(lr, y, lf), expect)


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


# ------------------------------------------------------------------------------------------------ the loop

def _old_loop_weights(steps, method):
    """The GAN step as written before the method registry (commit 493aee4), transcribed: the trainer must
    give the same weights bit for bit."""
    from cbgan_ext.train.checkpoint import seed_everything
    from cbgan_ext.train.loop import EMA
    torch.manual_seed(0)
    clf = TinyClassifier().eval().requires_grad_(False)
    TinyClassifier()  # the annotator the trainer is given
    data = TinyData()
    seed_everything(3, False)
    G, D = build_gan("sndcgan", channels=1, image_size=32, width=0.125, z_dim=16)
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    ema = EMA(G, 0.9999, 2)
    data_g, noise_g = torch.Generator().manual_seed(4), torch.Generator().manual_seed(5)
    reg = CBRegularizer(4, 7.5, update_every=2) if method == "cbgan" else None
    for step in range(steps):
        G.train(), D.train()
        real = data.images[torch.randint(0, 96, (8,), generator=data_g)]
        with torch.no_grad():
            fake = G(torch.randn(8, 16, generator=noise_g))
        loss_d = F.softplus(-(D(real) - D(fake))).mean()
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        fake = G(torch.randn(8, 16, generator=noise_g))
        with torch.no_grad():
            d_real = D(real)
        loss_g = F.softplus(-(D(fake) - d_real)).mean()
        if reg is not None:
            loss_g = loss_g + reg(clf(fake))
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        if reg is not None:
            reg.step()
        ema.update(G, step)
    return G.state_dict(), D.state_dict(), ema.model.state_dict()


@pytest.mark.parametrize("method", ["gan", "cbgan"])
def test_trainer_gives_the_weights_of_the_loop_before_the_registry(tmp_path, method):
    t = _trainer(tmp_path, 5, method=method, eval_every=0)
    t.run()
    G, D, E = _old_loop_weights(5, method)
    for mine, ref in ((t.G.state_dict(), G), (t.D.state_dict(), D), (t.ema.model.state_dict(), E)):
        assert mine.keys() == ref.keys()
        assert all(torch.equal(mine[k], ref[k]) for k in ref)


def test_cbgan_training_runs_logs_and_selects_best(tmp_path):
    t = _trainer(tmp_path, 6)
    best = t.run()
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    train = [r for r in records if r["event"] == "train"]
    evals = [r for r in records if r["event"] == "eval"]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    assert all("reg" in r and torch.isfinite(torch.tensor(r["loss_g"])) for r in train)
    assert [r["step"] for r in evals] == [3, 6]
    assert sum(evals[0]["histogram"]) == 64 and evals[0]["fd_name"] == "FD-annotator"
    assert best["value"] == min(r["fd"] for r in evals)
    assert os.path.exists(tmp_path / "best.pt") and os.path.exists(tmp_path / "checkpoint.pt")
    assert int(t.reg.num_steps) == 6
    assert not torch.allclose(t.reg.effective_count, torch.full((4,), 50.0, dtype=torch.float64))


def test_selection_compares_with_the_balanced_split_not_the_training_images(tmp_path):
    t = _trainer(tmp_path, 1)
    stats = t.evaluator.real_stats()
    with torch.no_grad():
        expect = t.annotator.features(EVAL_IMAGES).double().mean(0)
    assert stats.n == EVAL_IMAGES.shape[0] != t.images.shape[0]
    assert torch.allclose(torch.from_numpy(stats.mu), expect, atol=1e-6)


def test_evaluator_real_split_is_the_whole_balanced_test_split():
    for profile, kw in (("exp", dict(imbalance_ratio=10.0)), ("lognormal", dict(imbalance_ratio=10.0, n_max=400)),
                        ("step", dict(imbalance_ratio=5.0))):
        train = get_dataset("digits", "train", image_size=32, profile=profile, **kw)
        test = balanced_test_split(train.config)
        assert test.config["split"] == "test" and len(set(test.class_counts)) == 1 and len(test) == 350


@pytest.mark.parametrize("device", DEVICES)
def test_resume_continues_exactly(tmp_path, device, restore_determinism):
    # On CUDA, cuDNN/cuBLAS pick their algorithms per call unless told not to; our kernels have no float atomics.
    kw = dict(device=device, deterministic=device == "cuda")
    full = _trainer(tmp_path / "full", 6, **kw)
    full.run()
    part = _trainer(tmp_path / "part", 3, **kw)
    part.run()  # "killed" after step 3, at its checkpoint
    resumed = _trainer(tmp_path / "part", 6, **kw)
    resumed.run()
    assert resumed.step == 6
    for a, b in zip(full.G.state_dict().values(), resumed.G.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(full.ema.model.state_dict().values(), resumed.ema.model.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(full.reg.effective_count, resumed.reg.effective_count)
    events = [json.loads(line)["event"] for line in open(tmp_path / "part" / "metrics.jsonl")]
    assert "resumed" in events


def test_evaluations_and_samples_leave_the_training_unchanged(tmp_path):
    # the main job trains without them; its recordings may have been made with them
    seen = _trainer(tmp_path / "seen", 6, eval_every=2, sample_every=3, ckpt_every=2)
    seen.run()
    blind = _trainer(tmp_path / "blind", 6, eval_every=0, sample_every=0, ckpt_every=6)
    blind.run()
    assert os.path.exists(tmp_path / "seen" / "best.pt") and not os.path.exists(tmp_path / "blind" / "best.pt")
    for a, b in zip([*seen.G.state_dict().values(), *seen.ema.model.state_dict().values()],
                    [*blind.G.state_dict().values(), *blind.ema.model.state_dict().values()]):
        assert torch.equal(a, b)


def test_cb_start_keeps_the_plain_step_until_then(tmp_path):
    plain = _trainer(tmp_path / "gan", 5, method="gan", eval_every=0)
    plain.run()
    late = _trainer(tmp_path / "late", 3, cb_start=3, eval_every=0)
    late.run()  # no regularizer yet: the gan method's weights, and N̂ untouched
    short = _trainer(tmp_path / "gan3", 3, method="gan", eval_every=0)
    short.run()
    assert all(torch.equal(a, b) for a, b in zip(late.G.state_dict().values(), short.G.state_dict().values()))
    assert int(late.reg.num_steps) == 0
    resumed = _trainer(tmp_path / "late", 5, cb_start=3, eval_every=0)
    resumed.run()  # steps 4 and 5 add it
    assert int(resumed.reg.num_steps) == 2
    assert not torch.equal(resumed.G.state_dict()["linear.weight"], plain.G.state_dict()["linear.weight"])
    records = [json.loads(line) for line in open(tmp_path / "late" / "metrics.jsonl")]
    assert [r["step"] for r in records if r["event"] == "train" and "reg" in r] == [4, 5]
    # a run saved before cb_start existed resumes as cb_start = 0; another cb_start is refused
    state = ckpt.load(str(tmp_path / "late" / "checkpoint.pt"))
    del state["config"]["cb_start"]
    ckpt.save_atomic(state, str(tmp_path / "late" / "checkpoint.pt"))
    with pytest.raises(ConfigMismatchError, match="cb_start: 0 there, 3 now"):
        _trainer(tmp_path / "late", 6, cb_start=3, eval_every=0).run()


def test_resume_drops_log_records_past_the_checkpoint_and_stale_temp_files(tmp_path):
    t = _trainer(tmp_path, 5, ckpt_every=3, eval_every=0)
    t.run()  # checkpoints at 3 and 5
    # a run killed at step 4 after its checkpoint at 3: records of step 4 and 5 exist, the checkpoint says 3
    state = ckpt.load(str(tmp_path / "checkpoint.pt"))
    part = _trainer(tmp_path / "p", 3, ckpt_every=3, eval_every=0)
    part.run()
    with open(tmp_path / "p" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"event": "train", "step": 4, "loss_d": 1.0}) + "\n")
        f.write('{"event": "train", "st')  # torn by the kill
    (tmp_path / "p" / ".tmp-checkpoint.pt-abc.pt").write_bytes(b"x" * 100)
    # another file's write in progress in the same folder (the main job's classifiers share one) is left alone
    (tmp_path / "p" / ".tmp-annotator.pt-xyz.pt").write_bytes(b"x" * 100)
    _trainer(tmp_path / "p", 5, ckpt_every=3, eval_every=0).run()
    steps = [json.loads(line)["step"] for line in open(tmp_path / "p" / "metrics.jsonl")
             if json.loads(line)["event"] == "train"]
    assert steps == [1, 2, 3, 4, 5]
    assert [p.name for p in (tmp_path / "p").glob(".tmp-*")] == [".tmp-annotator.pt-xyz.pt"]
    assert state["step"] == 5


def test_resume_with_other_settings_is_refused(tmp_path):
    _trainer(tmp_path, 3, method="gan", eval_every=0).run()
    with pytest.raises(ConfigMismatchError, match="method: 'gan' there, 'cbgan' now"):
        _trainer(tmp_path, 6, method="cbgan", eval_every=0).run()
    with pytest.raises(ConfigMismatchError, match="width"):
        _trainer(tmp_path, 6, method="gan", width=0.25, eval_every=0).run()
    _trainer(tmp_path, 4, method="gan", eval_every=0, log_every=2).run()  # more steps, other logging: fine


def test_checkpoints_have_the_mode_of_the_other_run_files(tmp_path):
    _trainer(tmp_path, 3).run()
    mode = lambda p: stat.S_IMODE(os.stat(tmp_path / p).st_mode)  # noqa: E731
    assert mode("checkpoint.pt") == mode("best.pt") == mode("metrics.jsonl") == mode("config.json")


def test_corrupt_checkpoint_names_its_path(tmp_path):
    _trainer(tmp_path, 3, eval_every=0).run()
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ckpt.CheckpointError, match=str(path)):
        _trainer(tmp_path, 6, eval_every=0).run()


def test_time_limit_stops_with_a_checkpoint(tmp_path):
    t = _trainer(tmp_path, 10 ** 6, eval_every=0, max_minutes=1e-6)
    t.run()
    assert t.stopped_early and 1 <= t.step < 10 ** 6
    assert ckpt.load(str(tmp_path / "checkpoint.pt"))["step"] == t.step


def test_non_finite_metrics_are_logged_as_json_null(tmp_path):
    t = _trainer(tmp_path, 1)
    t._log({"event": "train", "step": 1, "loss_d": float("nan"), "x": [float("inf"), 1.0]})
    rec = json.loads(open(tmp_path / "metrics.jsonl").read().splitlines()[-1])
    assert rec["loss_d"] is None and rec["x"] == [None, 1.0]


def test_cbgan_needs_a_matching_classifier(tmp_path):
    with pytest.raises(ValueError, match="needs the pretrained classifier"):
        GANTrainer(TinyData(), str(tmp_path / "a"), method="cbgan", classifier=None)
    with pytest.raises(ValueError, match="gives 7 class logits, the dataset has 4"):
        GANTrainer(TinyData(), str(tmp_path / "b"), method="cbgan", classifier=TinyClassifier(7))
    with pytest.raises(ValueError, match="does not take the dataset's images"):
        GANTrainer(TinyData(), str(tmp_path / "c"), method="cbgan", classifier=TinyClassifier(4, channels=3))
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_settings_are_checked_before_any_work(tmp_path):
    for bad in (dict(batch_size=0), dict(steps=-5), dict(lam=float("nan")), dict(lam=-10.0), dict(beta=-0.5),
                dict(ckpt_every=0), dict(width=0.0), dict(alpha=1.5)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            _trainer(tmp_path / "x", bad.pop("steps", 3), **bad)
    assert not (tmp_path / "x").exists()
    with pytest.raises(TypeError, match="unknown settings"):
        _trainer(tmp_path / "x", 3, betas=(0.5, 0.9))


def test_default_lambda_follows_the_dataset_imbalance(tmp_path):
    data = TinyData()
    del data.imbalance_ratio
    data.config = {"imbalance_ratio": 100.0}  # as cbgan_ext.data's datasets record it
    t = GANTrainer(data, str(tmp_path), method="cbgan", steps=1, width=0.125, z_dim=16, classifier=TinyClassifier(),
                   progress=False)
    assert t.reg.lam == 10.0


def test_official_weighting_defaults_to_the_convex_combination():
    assert CBRegularizer(10, 1.0, alpha=0.5, weighting="official").beta == 0.5
    assert CBRegularizer(10, 1.0, alpha=0.25, weighting="official").beta == 0.75
    assert CBRegularizer(10, 1.0, alpha=0.25).beta == 1.0  # the paper's Eq. 5
    with pytest.raises(ValueError, match="beta must be"):
        CBRegularizer(10, 1.0, beta=-1.0)
    with pytest.raises(ValueError, match="lam must be"):
        CBRegularizer(10, float("nan"))


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


# ------------------------------------------------------------------------------------------------ methods

@pytest.mark.parametrize("device", DEVICES)
def test_every_method_trains_a_few_steps(tmp_path, device):
    for name in method_names():
        own = {}
        if get_method(name).defaults.get("arch") == "bagan":  # BAGAN's family: its networks, a short autoencoder
            own = dict(arch="bagan", ae_steps=2, target_class=0)
            own = {k: v for k, v in own.items() if k not in unused_options(get_method(name), own, False)}
        t = _trainer(tmp_path / name, 2, method=name, eval_every=2, device=device, **own)
        t.run()
        rec = [json.loads(line) for line in open(tmp_path / name / "metrics.jsonl")]
        assert any(r["event"] == "eval" and r["kl"] >= 0 for r in rec), name
        assert all(p.device.type == device and torch.isfinite(p).all() for p in t.G.parameters()), name
        assert all(p.device.type == device for p in t.D.parameters()), name


def test_cgan_projection_is_conditional_with_hinge_loss(tmp_path):
    t = _trainer(tmp_path, 2, method="cgan-pd", eval_every=2)
    t.run()
    assert t.method.conditional and t.D.d_head == "projection" and t.reg is None
    assert t.method.d_loss_fn is losses.hinge_d_loss
    rec = [json.loads(line) for line in open(tmp_path / "metrics.jsonl") if '"eval"' in line][-1]
    assert 0.0 <= rec["label_accuracy"] <= 1.0
    # the CB regularizer composes with any method
    t2 = _trainer(tmp_path / "reg", 2, method="cgan-pd", cb_reg=True, eval_every=0)
    t2.run()
    assert t2.reg is not None and int(t2.reg.num_steps) == 2


def test_sample_per_class_and_refusal_for_unconditional_runs(tmp_path, capsys):
    _trainer(tmp_path / "c", 2, method="cgan-pd", eval_every=0).run()
    out = tmp_path / "k.pt"
    assert cli.main(["sample", "--run", str(tmp_path / "c"), "--n", "6", "--class", "2", "--out", str(out)]) == 0
    d = torch.load(out)
    assert d["images"].shape == (6, 1, 32, 32) and d["labels"].tolist() == [2] * 6
    run = load_run(str(tmp_path / "c"))
    with torch.no_grad():
        z = torch.randn(6, run.z_dim, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(d["images"], run.G(z, torch.full((6,), 2)))
    assert cli.main(["sample", "--run", str(tmp_path / "c"), "--n", "8", "--out", str(tmp_path / "g.png")]) == 0
    _trainer(tmp_path / "u", 2, method="gan", eval_every=0).run()
    capsys.readouterr()
    assert cli.main(["sample", "--run", str(tmp_path / "u"), "--class", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unconditional" in err[0]
    assert cli.main(["sample", "--run", str(tmp_path / "c"), "--class", "9"]) == 2


def test_cli_sample_from_a_run(tmp_path, capsys):
    _trainer(tmp_path, 3).run()
    out = tmp_path / "s.pt"
    assert cli.main(["sample", "--run", str(tmp_path), "--n", "5", "--out", str(out)]) == 0
    x = torch.load(out)
    assert x.shape == (5, 1, 32, 32) and x.abs().max() <= 1
    capsys.readouterr()
    assert cli.main(["sample", "--run", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no checkpoint in" in err[0] and "Traceback" not in err[0]


def test_raw_or_ema_generator(tmp_path, capsys):
    t = _trainer(tmp_path, 4, method="gan", eval_every=0, ema_start=1, ema_decay=0.5)
    t.run()
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    ema, raw = load_run(str(tmp_path), "last"), load_run(str(tmp_path), "last", generator="raw")
    assert ema.generator == "ema" and raw.generator == "raw"
    g = state["modules"]["G"]
    k = next(k for k, v in state["ema"].items() if v.is_floating_point() and not torch.equal(v, g[k]))
    assert torch.equal(ema.G.state_dict()[k], state["ema"][k]) and torch.equal(raw.G.state_dict()[k],
                                                                                 state["modules"]["G"][k])
    with pytest.raises(ValueError, match="generator must be 'ema' or 'raw'"):
        load_run(str(tmp_path), "last", generator="both")
    out = tmp_path / "raw.pt"
    assert cli.main(["sample", "--run", str(tmp_path), "--checkpoint", "last", "--n", "4", "--generator", "raw",
                     "--out", str(out)]) == 0
    with torch.no_grad():
        z = torch.randn(4, raw.z_dim, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(torch.load(out), raw.G(z))
    with pytest.raises(SystemExit) as e:  # argparse's choices
        cli.main(["sample", "--run", str(tmp_path), "--generator", "none"])
    assert e.value.code == 2 and "--generator" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ the CLI

@pytest.mark.parametrize("argv,flag", [
    (["train", "--batch-size", "0"], "--batch-size"), (["train", "--steps", "-5"], "--steps"),
    (["train", "--lam", "nan"], "--lam"), (["train", "--lam", "-10"], "--lam"), (["train", "--beta", "-1"], "--beta"),
    (["train", "--ckpt-every", "0"], "--ckpt-every"), (["train", "--eval-samples", "1"], "--eval-samples"),
    (["sample", "--n", "0"], "--n"), (["eval", "--n", "0"], "--n"), (["demo", "--steps", "0"], "--steps"),
    (["train-classifier", "--batch-size", "0"], "--batch-size"), (["demo", "--seeds", "a,b"], "--seeds")])
def test_cli_rejects_bad_numbers_before_any_work(tmp_path, capsys, argv, flag):
    out = tmp_path / "run"
    tail = {"train": ["--out", str(out), "--method", "gan"], "sample": ["--run", str(out)], "eval": ["--run", str(out)],
            "demo": ["--out", str(out)], "train-classifier": ["--out", str(out / "c.pt")]}[argv[0]]
    capsys.readouterr()
    assert cli.main(argv + tail) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0] and "expected" in err[0]
    assert not out.exists()


def test_cli_one_line_errors_and_debug(tmp_path, capsys):
    _trainer(tmp_path, 3, method="gan", eval_every=0).run()
    argv = ["train", "--dataset", "digits", "--image-size", "32", "--out", str(tmp_path), "--method", "gan",
            "--steps", "1", "--no-progress"]
    capsys.readouterr()
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "settings differ" in err[0] and str(tmp_path) in err[0]
    with pytest.raises(ConfigMismatchError):
        cli.main(["--debug"] + argv)


def test_cli_defaults_and_choices_come_from_one_source():
    parser = cli.build_parser()
    sub = parser._subparsers._group_actions[0].choices
    train = {a.dest: a for a in sub["train"]._actions}
    for key, o in OPTIONS.items():  # unset flags: the method's defaults, then the table's (shown in the help)
        if key == "seed":  # the dataset's --seed, shared with train-classifier
            assert train[key].default == o.default
            continue
        assert train[key].default is None, key
        assert f"default {o.default!r}" in train[key].help or not o.flag, key
    assert tuple(train["method"].choices) == method_names()
    text = parser.format_help()
    for name in method_names():
        assert name in text
    assert "augment-eval" in text and "(CBGAN, Softlabel-GAN, BAGAN)" not in text
    from cbgan_ext.pipeline import PRESETS
    demo = {a.dest: a for a in sub["demo"]._actions}
    assert f"{PRESETS['default']['gan']['lam']} in the default preset" in demo["lam"].help


def test_readme_methods_table_is_the_registrys():
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    assert cli.methods_table() in readme


def test_evaluator_checks_and_balanced_conditional_generation():
    ann = TinyClassifier()
    with pytest.raises(ValueError, match="n must be"):
        Evaluator(ann, EVAL_IMAGES, 4, n=1)
    G, _ = build_gan("sndcgan", channels=1, width=0.125, z_dim=8, num_classes=4, d_head="projection")
    res = Evaluator(ann, EVAL_IMAGES, 4, n=10, fid="annotator")(G, z_dim=8, conditional=True)
    assert res["n"] == 10 and sum(res["histogram"]) == 10 and "label_accuracy" in res and "fid" not in res
    assert 1 / 4 <= res["confidence"] <= 1 and 1 / 4 <= res["real_confidence"] <= 1  # a top-class probability
    from cbgan_ext.train.evaluate import annotate
    with torch.no_grad():
        p = torch.softmax(ann(EVAL_IMAGES), 1)
    assert res["real_confidence"] == pytest.approx(float(p.max(1).values.double().mean()), rel=1e-5)
    assert torch.equal(annotate(ann, EVAL_IMAGES)[0], p.argmax(1))


def test_cli_eval_of_a_run_on_a_softlabel_profile_uses_the_balanced_test_split(tmp_path, capsys):
    from cbgan_ext.train import train_classifier
    ann = str(tmp_path / "ann.pt")
    train_classifier(ann, progress=False, log=lambda s: None, dataset="digits", image_size=32, depth=8, width=0.25,
                     epochs=1, augment="none", batch_size=64, eval_every=0)
    run = tmp_path / "run"
    argv = ["train", "--dataset", "digits", "--image-size", "32", "--profile", "lognormal", "--n-max", "400",
            "--imbalance", "10", "--method", "gan", "--out", str(run), "--steps", "2", "--width", "0.125",
            "--batch-size", "8", "--annotator", ann, "--eval-every", "2", "--eval-samples", "20", "--no-progress"]
    assert cli.main(argv) == 0
    capsys.readouterr()
    assert cli.main(["eval", "--run", str(run), "--n", "30", "--fid", "annotator"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert sum(res["histogram"]) == 30 and res["fd_name"] == "FD-annotator" and res["step"] == 2
    cfg = json.load(open(run / "config.json"))
    assert cfg["dataset"]["profile"] == "lognormal"
    # --plot is for conditional runs, and a bad path is refused before any work
    assert cli.main(["eval", "--run", str(run), "--plot", str(tmp_path / "p.png")]) == 2
    assert "is unconditional" in capsys.readouterr().err and not (tmp_path / "p.png").exists()
    assert cli.main(["eval", "--run", str(run), "--plot", str(tmp_path / "no" / "p.png")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("method,given,named", [
    ("gan", dict(lam=5.0), "lam"), ("gan", dict(ae_steps=5), "ae_steps"),
    ("cbgan", dict(target_class=1), "target_class"),
    ("diffaug-gan", dict(class_sampling="rebalance"), "class_sampling"), ("cgan-pd", dict(cycle=3), "cycle"),
    ("acgan", dict(target_class=1), "target_class")])
def test_settings_a_method_does_not_read_are_refused(tmp_path, capsys, method, given, named):
    with pytest.raises(ValueError, match=f"method {method!r}.* does not use {named}"):
        _trainer(tmp_path / "api", 2, method=method, **given)
    assert not (tmp_path / "api").exists()
    argv = ["train", "--dataset", "digits", "--image-size", "32", "--method", method, "--out", str(tmp_path / "cli"),
            "--steps", "2", f"--{named.replace('_', '-')}", str(next(iter(given.values())))]
    if get_method(method).cb_regularizer:
        argv += ["--classifier", str(tmp_path / "missing.pt")]  # the unused flag is named first
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--{named.replace('_', '-')}: not used by method {method!r}" in err[0], err
    assert not (tmp_path / "cli").exists()


def test_every_group_of_method_settings_is_read_by_some_method():
    from cbgan_ext.train.methods import get_method
    read = {g for n in method_names() for g in get_method(n).option_groups} | {"cb"}
    assert read == set(GROUPS) and all(k in OPTIONS for ks in GROUPS.values() for k in ks)


def test_resume_compares_only_the_settings_the_method_reads(tmp_path):
    _trainer(tmp_path, 2, method="gan", eval_every=0).run()
    state = ckpt.load(tmp_path / "checkpoint.pt")
    state["config"].update(ae_steps=5, cycle=7)  # an older version recorded settings a plain GAN never reads
    ckpt.save_atomic(state, tmp_path / "checkpoint.pt")
    t = _trainer(tmp_path, 3, method="gan", eval_every=0)
    t.run()
    assert t.step == 3
    state = ckpt.load(tmp_path / "checkpoint.pt")
    state["config"]["n_dis"] = 4  # one it reads still blocks
    ckpt.save_atomic(state, tmp_path / "checkpoint.pt")
    with pytest.raises(ConfigMismatchError, match="n_dis"):
        _trainer(tmp_path, 4, method="gan", eval_every=0).run()


def test_resume_rewrites_the_config_and_says_when_there_is_nothing_to_train(tmp_path, capsys):
    _trainer(tmp_path, 3, method="gan", eval_every=0).run()
    (tmp_path / "config.json").write_text('{"method": "ga')  # damaged
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"event": "train", "ste')  # torn by a kill
    capsys.readouterr()
    t = _trainer(tmp_path, 2, method="gan", eval_every=0)
    t.run()
    err = capsys.readouterr().err
    assert t.step == 3 and "at step 3, past the 2 asked for: nothing to train" in err
    assert "dropped 1 unreadable record" in err
    assert json.load(open(tmp_path / "config.json"))["method"] == "gan"
    assert all(json.loads(line) for line in open(tmp_path / "metrics.jsonl"))

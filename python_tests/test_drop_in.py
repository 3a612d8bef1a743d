"""The drop-in path: the package's pieces in a training loop that is not ours (own G, D, optimizers), a loaded
classifier's contract, and the CB regularizer's warm-up and recipe."""
import pytest
import torch
from torch import nn

import cbgan_ext
from cbgan_ext import pipeline
from cbgan_ext.models import load_classifier
from cbgan_ext.nn import CBRegularizer, convert_spectral_norm
from cbgan_ext.train.classifier import train_classifier


@pytest.fixture(scope="module")
def classifier_path(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("clf") / "clf.pt")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_classifier(path, progress=False, log=lambda s: None, dataset="digits", image_size=32, depth=8,
                         width=0.25, epochs=1, augment="none", batch_size=64, eval_every=0)
    finally:
        torch.set_num_threads(n)
    return path


def test_foreign_training_loop(classifier_path, one_thread):
    """A DCGAN-style loop as a user writes it, with SN (torch's parametrization, converted), DiffAugment in the
    reference's spelling, and the CB regularizer against a loaded classifier."""
    torch.manual_seed(0)
    P = nn.utils.parametrizations.spectral_norm
    G = nn.Sequential(nn.Linear(16, 64 * 4 * 4), nn.ReLU(), nn.Unflatten(1, (64, 4, 4)),
                      nn.ConvTranspose2d(64, 16, 4, 4), nn.ReLU(), nn.ConvTranspose2d(16, 1, 2, 2), nn.Tanh())
    D = nn.Sequential(P(nn.Conv2d(1, 16, 4, 2, 1)), nn.LeakyReLU(0.2), P(nn.Conv2d(16, 32, 4, 2, 1)),
                      nn.LeakyReLU(0.2), nn.Flatten(), P(nn.Linear(32 * 8 * 8, 1)))
    D = convert_spectral_norm(D)
    assert isinstance(D[0], cbgan_ext.nn.SNConv2d)
    clf = load_classifier(classifier_path)
    opt_g = torch.optim.Adam(G.parameters(), 2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), 2e-4, betas=(0.5, 0.999))
    reg = CBRegularizer.recipe(10, start=3, update_every=2)
    real = torch.rand(8, 1, 32, 32) * 2 - 1
    terms, before = [], reg.effective_count.clone()
    for step in range(7):
        fake = G(torch.randn(8, 16))
        loss_d = (nn.functional.softplus(-D(cbgan_ext.diff_augment(real, "color,translation,cutout"))).mean()
                  + nn.functional.softplus(D(cbgan_ext.diff_augment(fake.detach(), "color,translation,cutout"))).mean())
        opt_d.zero_grad(), loss_d.backward(), opt_d.step()
        loss_g = nn.functional.softplus(-D(cbgan_ext.diff_augment(fake, "color,translation,cutout"))).mean()
        loss_g = loss_g + reg(clf(fake))
        terms.append((reg.active, reg.last_loss.item()))
        opt_g.zero_grad(), loss_g.backward(), opt_g.step()
        reg.step()
        assert torch.isfinite(loss_d) and torch.isfinite(loss_g)
    assert [a for a, _ in terms] == [False] * 3 + [True] * 4
    assert all(v == 0 for _, v in terms[:3]) and all(v != 0 for _, v in terms[3:])
    assert not torch.equal(reg.effective_count, before)  # two statistics updates after the warm-up
    assert all(p.grad is None for p in clf.parameters()), "the frozen classifier collects no gradients"
    assert all(p.grad is not None for p in G.parameters())


def test_loaded_classifier_states_its_input_contract(classifier_path):
    clf = load_classifier(classifier_path)
    assert not any(p.requires_grad for p in clf.parameters()) and not clf.training
    assert clf(torch.zeros(2, 1, 32, 32)).shape == (2, 10)
    for bad, got in ((torch.zeros(2, 3, 32, 32), r"\[2, 3, 32, 32\]"), (torch.zeros(2, 1, 28, 28), r"\[2, 1, 28, 28\]"),
                     (torch.zeros(1, 32, 32), r"\[1, 32, 32\]")):
        with pytest.raises(ValueError, match=rf"^classifier .*clf.pt: expects images \[B, 1, 32, 32\] in \[-1, 1\], "
                                             rf"as it was trained, got {got}$"):
            clf(bad)
    assert all(p.requires_grad for p in load_classifier(classifier_path, freeze=False).parameters())


def test_regularizer_warm_up_is_a_late_start():
    """start=S, stepped from the beginning, equals a start=0 module used from step S on: same terms, same
    statistics updates."""
    torch.manual_seed(1)
    logits = [torch.randn(16, 5) * 3 for _ in range(12)]
    late, early = CBRegularizer(5, 2.0, update_every=3, start=4), CBRegularizer(5, 2.0, update_every=3)
    for i, x in enumerate(logits):
        a = late(x)
        if i >= 4:
            torch.testing.assert_close(a, early(x), rtol=0, atol=0)
            early.step()
        else:
            assert a.item() == 0 and not late.active
        late.step()
    torch.testing.assert_close(late.effective_count, early.effective_count, rtol=0, atol=0)
    assert int(late.num_steps) == 12 and int(early.num_steps) == 8


def test_recipe_is_the_recorded_setting_and_start_is_part_of_the_state():
    reg = CBRegularizer.recipe(10)
    g = pipeline.PRESETS["default"]["gan"]
    assert (reg.lam, reg.update_every, reg.weighting, reg.start) == (g["lam"], g["cycle"], g["weighting"],
                                                                     g["cb_start"])
    assert CBRegularizer.recipe(10, lam=1.0).lam == 1.0
    other = CBRegularizer.recipe(10, start=0)
    with pytest.raises(ValueError, match="start: 500 there, 0 here"):
        other.load_state_dict(reg.state_dict())
    with pytest.raises(ValueError, match="start must be an integer >= 0"):
        CBRegularizer(10, 1.0, start=-1)


def test_public_api_has_docstrings_and_type_hints():
    import inspect
    from cbgan_ext.data import get_dataset
    from cbgan_ext.models import build_gan
    from cbgan_ext.train.gan import GANTrainer
    for obj in (cbgan_ext.CBRegularizer, cbgan_ext.DiffAugment, cbgan_ext.ProjectionHead, cbgan_ext.nn.SNConv2d,
                GANTrainer, get_dataset, build_gan, load_classifier, cbgan_ext.diff_augment, CBRegularizer.recipe):
        assert (obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__), obj
        if obj is cbgan_ext.nn.SNConv2d:  # nn.Conv2d's own signature
            continue
        sig = inspect.signature(obj.__init__ if inspect.isclass(obj) else obj)
        hinted = [p for p in sig.parameters.values() if p.annotation is not inspect.Parameter.empty]
        assert hinted, f"{obj.__qualname__} has no type hints"

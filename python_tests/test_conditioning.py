"""Conditional methods must learn their classes: a short training on an easy set, judged by a rule that
knows the classes exactly, must draw the requested class far more often than chance, for every kind of
conditioning the package has (projection D with a conditional-BN G, K + 1-class D with BAGAN's class
Gaussians, ACGAN's auxiliary classifier). A broken label path (labels ignored, shuffled or cut off from
the loss) leaves these at chance (1 / K = 0.25)."""
import pytest
import torch

from cbgan_ext.train.gan import GANTrainer

K, SIZE, PER_CLASS = 4, 32, 200
CHANCE = 1.0 / K


LEVELS = torch.tensor([-0.75, -0.25, 0.25, 0.75])


class Levels:
    """Class k: an image whose pixels sit around grey level LEVELS[k] (a smooth random ramp and noise on it), so any
    generator can draw every class within a few hundred steps and only the label says which."""

    def __init__(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        n = K * PER_CLASS
        self.labels = torch.arange(n) % K
        ramp = torch.linspace(-1, 1, SIZE)
        slope = 0.08 * torch.randn(n, 2, 1, 1, generator=g)
        self.images = (LEVELS[self.labels].view(n, 1, 1, 1) + slope[:, :1] * ramp.view(1, 1, SIZE, 1)
                       + slope[:, 1:] * ramp.view(1, 1, 1, SIZE) + 0.05 * torch.randn(n, 1, SIZE, SIZE, generator=g))
        self.class_counts = [PER_CLASS] * K

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])


def judge(images):
    """The level nearest the image's mean: the class an image shows."""
    return (images.mean(dim=(1, 2, 3))[:, None] - LEVELS[None]).abs().argmin(1)


def class_consistency(trainer, n=400):
    x = trainer.generate(n, generator=torch.Generator().manual_seed(1), use_ema=False)
    y = torch.arange(n) % K  # generate() asks for the classes in this order
    return float((judge(x) == y).double().mean())


def test_judge_reads_the_real_images():
    data = Levels()
    assert float((judge(data.images) == data.labels).double().mean()) == 1.0


# (method, settings): each kind of conditioning at a length that learns the levels in under a minute (a high
# learning rate: the set is easy and the test must be short).
FAST = dict(width=0.125, lr=1e-3, beta1=0.0, beta2=0.9)
CASES = {
    "projection D, conditional-BN G (BigGAN, DiffAugment)": ("diffaug-gan", dict(FAST, steps=250, n_dis=1,
                                                                                policy="translation")),
    "K + 1-class D, BAGAN's class Gaussians": ("bagan", dict(FAST, steps=200, ae_steps=200, ae_lr=1e-3, ae_beta1=0.9)),
    "auxiliary classifier (ACGAN)": ("acgan", dict(FAST, steps=400)),
    "auxiliary classifier, one-hot G input (the main job's ACGAN)": ("acgan", dict(FAST, steps=400, acgan_g="concat")),
}


def train(data, tmp_path, case):
    method, settings = CASES[case]
    return GANTrainer(data, str(tmp_path), method=method, seed=0, progress=False, batch_size=32, log_every=50,
                      ckpt_every=10 ** 6, sample_every=0, eval_every=0, **settings)


@pytest.mark.parametrize("case", list(CASES))
def test_conditional_method_learns_its_classes(case, tmp_path, one_thread):
    trainer = train(Levels(), tmp_path, case)
    assert class_consistency(trainer) < 0.5  # untrained: near chance
    trainer.run()
    assert class_consistency(trainer) >= 0.7, case


def test_labels_that_say_nothing_give_chance(tmp_path, one_thread):
    """The check above can fail: the same training with the labels shuffled (so they say nothing of the images)
    leaves the generator without class control."""
    data = Levels()
    data.labels = data.labels[torch.randperm(len(data.labels), generator=torch.Generator().manual_seed(0))]
    trainer = train(data, tmp_path, "K + 1-class D, BAGAN's class Gaussians")
    trainer.run()
    assert abs(class_consistency(trainer) - CHANCE) < 0.15

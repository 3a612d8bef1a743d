"""Softlabel-GAN (Katsumata, Vo, Nakayama, WACV 2024) and the baselines of its paper, on BigGAN with a
projection discriminator, hinge loss and DiffAugment. The three differ only in the label vector D is given
for each real image; fakes always get one-hot labels of uniformly drawn classes.

* ``softlabel-gan``: the softmax (T = 1) of a pretrained classifier for that very image ("label
  augmentation"), looked up by the image's dataset index in ``GANTrainer(soft_labels=[N, K])``;
* ``diffaug-gan``: one-hot (the paper's main baseline, BigGAN + DiffAugment);
* ``smooth-gan``: label smoothing y(1 − α) + α/K with α = 0.1, the paper's formula. (The released code gives
  the true class 1 − α and the others α/K, so its vectors sum to 1 − α/K; we follow the paper.)

``--policy ""`` gives the ablations without DiffAugment: Softlabel-GAN⁻, BigGAN (cGAN), Smooth-GAN⁻.
Defaults follow the released CIFAR scripts (BigGAN-32, Adam 2e-4 with betas (0, 0.999), 4 D steps per G step,
EMA of G from step 1000, DiffAugment ``translation,cutout``) except the batch (64, theirs 50), the init
(orthogonal, theirs N(0, 0.02)) and their horizontal flip of the reals; any setting can be given.
"""
import torch.nn.functional as F

from .base import Method, register

SMOOTHING = 0.1
_DEFAULTS = dict(arch="biggan", lr=2e-4, beta1=0.0, beta2=0.999, n_dis=4, policy="translation,cutout",
                 ema_start=1000, ema_decay=0.9999)


@register
class DiffAugGAN(Method):
    name = "diffaug-gan"
    title = "BigGAN, projection D with one-hot labels, hinge loss, DiffAugment (Softlabel-GAN's baseline)"
    paper = "Zhao et al. 2020 (DiffAugment) on BigGAN; Softlabel-GAN Table 2"
    conditional = True
    d_head = "projection"
    loss = "hinge"
    defaults = _DEFAULTS


@register
class SmoothGAN(DiffAugGAN):
    name = "smooth-gan"
    title = "DiffAug-GAN with smoothed labels y(1 - 0.1) + 0.1/K for reals (Softlabel-GAN's baseline)"
    paper = "Softlabel-GAN Table 2 (label smoothing baseline)"

    def real_labels(self, labels, index):
        return F.one_hot(labels, self.num_classes).float() * (1.0 - SMOOTHING) + SMOOTHING / self.num_classes


@register
class SoftlabelGAN(DiffAugGAN):
    name = "softlabel-gan"
    title = "DiffAug-GAN whose D sees a pretrained classifier's softmax for each real image (Softlabel-GAN)"
    paper = "Katsumata et al. 2024 (Softlabel-GAN)"
    needs_soft_labels = True
    soft_table = None  # [N, K] float, set by the trainer

    def real_labels(self, labels, index):
        return self.soft_table[index.to(self.soft_table.device)].to(labels.device)

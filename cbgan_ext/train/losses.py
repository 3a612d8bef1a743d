"""GAN losses as plain functions of discriminator outputs (logits), shared by every method.

* relativistic (CBGAN Eqs. 2-3, the released code's "RaSGAN"-style pairing of real and fake logits);
* hinge (Miyato et al.; cGAN with projection, BigGAN, Softlabel-GAN);
* non-saturating (Goodfellow et al.);
* (n+1)-class cross-entropy (BAGAN: class k for real images of class k, class n for fakes);
* ACGAN's auxiliary classification loss.
"""
import torch
import torch.nn.functional as F


def relativistic_d_loss(d_real, d_fake):
    """Eq. 2: −E[log σ(D(x) − D(G(z)))]."""
    return F.softplus(-(d_real - d_fake)).mean()


def relativistic_g_loss(d_fake, d_real):
    """Eq. 3: −E[log σ(D(G(z)) − D(x))]."""
    return F.softplus(-(d_fake - d_real)).mean()


def hinge_d_loss(d_real, d_fake):
    """E[max(0, 1 − D(x))] + E[max(0, 1 + D(G(z)))]."""
    return F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean()


def hinge_g_loss(d_fake, d_real=None):
    """−E[D(G(z))]."""
    return -d_fake.mean()


def nonsaturating_d_loss(d_real, d_fake):
    """−E[log σ(D(x))] − E[log(1 − σ(D(G(z))))]."""
    return F.softplus(-d_real).mean() + F.softplus(d_fake).mean()


def nonsaturating_g_loss(d_fake, d_real=None):
    """−E[log σ(D(G(z)))]."""
    return F.softplus(-d_fake).mean()


def classes_plus_one_d_loss(logits_real, labels_real, logits_fake):
    """BAGAN's discriminator: cross-entropy over K+1 classes, real images their class, fakes class K."""
    fake_class = torch.full((logits_fake.shape[0],), logits_fake.shape[1] - 1, dtype=torch.int64,
                            device=logits_fake.device)
    return F.cross_entropy(logits_real, labels_real) + F.cross_entropy(logits_fake, fake_class)


def classes_plus_one_g_loss(logits_fake, labels_fake):
    """BAGAN's generator: the fakes should be taken for real images of the class they were drawn for."""
    return F.cross_entropy(logits_fake, labels_fake)


def aux_classifier_loss(class_logits, labels):
    """ACGAN's auxiliary term: cross-entropy of the discriminator's class logits."""
    return F.cross_entropy(class_logits, labels)


ADVERSARIAL = {
    "relativistic": (relativistic_d_loss, relativistic_g_loss),
    "hinge": (hinge_d_loss, hinge_g_loss),
    "nonsaturating": (nonsaturating_d_loss, nonsaturating_g_loss),
}

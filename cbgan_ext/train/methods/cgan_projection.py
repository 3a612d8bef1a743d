"""cGAN with a projection discriminator (Miyato & Koyama 2018), a baseline of the CBGAN paper: conditional
BatchNorm in G, ψ(h) + hᵀ V onehot(y) in D (the ProjectionHead's hard-label path), hinge loss. Fake labels
are drawn uniformly (StudioGAN's default), so the generator is asked for every class equally often."""
from .base import Method, register


@register
class CGANProjection(Method):
    name = "cgan-pd"
    title = "conditional GAN, conditional BatchNorm G, projection D, hinge loss (CBGAN's cGAN baseline)"
    paper = "Miyato & Koyama 2018"
    conditional = True
    d_head = "projection"
    loss = "hinge"

"""``build_gan``: a (generator, discriminator) pair for any architecture and head."""
from typing import Optional, Tuple

from torch import nn

from .bagan import BAGANDiscriminator, BAGANGenerator
from .biggan import BigGANDiscriminator, BigGANGenerator
from .gan import (ARCHITECTURES, DCGANDiscriminator, DCGANGenerator, ResNetDiscriminator, ResNetGenerator,
                  init_orthogonal_)
from .heads import D_HEADS


def build_gan(arch: str, *, channels: int = 3, image_size: int = 32, width: float = 1.0, z_dim: int = 128,
              g_spectral_norm: bool = False, init: str = "ortho", num_classes: int = 0,
              conditional_g: Optional[bool] = None, d_head: str = "scalar", d_spectral_norm: Optional[bool] = None,
              g_gaussians: bool = False, g_class_input: str = "multiply") -> Tuple[nn.Module, nn.Module]:
    """(generator, discriminator) for ``arch`` in ARCHITECTURES; init "ortho" (StudioGAN's) or "default"
    ("bagan" always has its own, Keras', init).

    ``d_head`` picks the discriminator's head (D_HEADS) for ``num_classes`` K. The generator is conditional
    (conditional BatchNorm, ``G(z, y)``) when ``conditional_g``; by default when the head reads labels
    ("projection", "aux-classifier"). BAGAN's "classes+1" D pairs with a generator conditioned through class
    Gaussians on its latent (``g_gaussians``, arch "bagan" only); arch "bagan"'s ACGAN generator takes its class
    as ``g_class_input`` ("multiply" or "concat", see ``models/bagan.py``). ``d_spectral_norm``: None for the
    architecture's own (on, except "bagan")."""
    if d_head not in D_HEADS:
        raise ValueError(f"build_gan: d_head must be one of {D_HEADS}, got {d_head!r}")
    if conditional_g is None:
        conditional_g = d_head in ("projection", "aux-classifier")
    g_classes = int(num_classes) if conditional_g or g_gaussians else 0
    if g_class_input != "multiply" and arch != "bagan":
        raise ValueError(f"build_gan: g_class_input is BAGAN's ACGAN generator's (arch 'bagan'), got arch {arch!r}")
    if g_gaussians and arch != "bagan":
        raise ValueError(f"build_gan: class Gaussians on the latent (g_gaussians) are BAGAN's: arch 'bagan', "
                         f"got {arch!r}")
    if d_spectral_norm is not None and arch != "bagan" and not d_spectral_norm:
        raise ValueError(f"build_gan: {arch} is defined with a spectrally normalised D")
    if conditional_g and g_classes < 1:
        raise ValueError(f"build_gan: a conditional generator needs num_classes >= 1, got {num_classes}")
    if arch == "sndcgan":
        if image_size != 32:
            raise ValueError(f"build_gan: sndcgan is defined at 32×32, got image_size={image_size}")
        G = DCGANGenerator(z_dim, channels, width, g_spectral_norm, g_classes)
        D = DCGANDiscriminator(channels, width, d_head=d_head, num_classes=num_classes)
    elif arch == "snresgan":
        G = ResNetGenerator(z_dim, channels, image_size, width, g_spectral_norm, g_classes)
        D = ResNetDiscriminator(channels, image_size, width, d_head=d_head, num_classes=num_classes)
    elif arch == "biggan":
        if d_head != "projection" or not conditional_g:
            raise ValueError("build_gan: biggan is the conditional G / projection D pair (d_head='projection')")
        G = BigGANGenerator(z_dim, channels, image_size, width, g_classes)
        D = BigGANDiscriminator(channels, image_size, width, num_classes)
    elif arch == "bagan":
        G = BAGANGenerator(z_dim, channels, image_size, width, g_classes, gaussians=g_gaussians,
                           class_input=g_class_input)
        D = BAGANDiscriminator(channels, image_size, width, bool(d_spectral_norm), d_head, num_classes)
        return G, D
    else:
        raise ValueError(f"build_gan: unknown architecture {arch!r}; expected one of {ARCHITECTURES}")
    if init == "ortho":
        init_orthogonal_(G)
        init_orthogonal_(D)
    return G, D

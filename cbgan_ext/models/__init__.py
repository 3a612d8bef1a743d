"""Networks: GAN generators/discriminators (gan.py) and classifiers (classifier.py)."""
from .gan import (ARCHITECTURES, DCGANDiscriminator, DCGANGenerator, ResNetDiscriminator, ResNetGenerator,
                  build_gan)

__all__ = ["ARCHITECTURES", "DCGANGenerator", "DCGANDiscriminator", "ResNetGenerator", "ResNetDiscriminator",
           "build_gan"]

"""Networks: GAN generators/discriminators (gan.py) and classifiers (classifier.py)."""
from .classifier import CifarResNet, NormedLinear, build_classifier, load_classifier, resnet32
from .gan import (ARCHITECTURES, DCGANDiscriminator, DCGANGenerator, ResNetDiscriminator, ResNetGenerator,
                  build_gan)

__all__ = ["ARCHITECTURES", "DCGANGenerator", "DCGANDiscriminator", "ResNetGenerator", "ResNetDiscriminator",
           "build_gan", "CifarResNet", "NormedLinear", "resnet32", "build_classifier", "load_classifier"]

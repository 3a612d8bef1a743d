"""Networks: GAN generators/discriminators (gan.py) and classifiers (classifier.py)."""
from .classifier import CifarResNet, NormedLinear, build_classifier, load_classifier, resnet32
from .gan import (ARCHITECTURES, D_HEADS, ConditionalBatchNorm2d, DCGANDiscriminator, DCGANGenerator,
                  ResNetDiscriminator, ResNetGenerator, build_gan)

__all__ = ["ARCHITECTURES", "D_HEADS", "ConditionalBatchNorm2d", "DCGANGenerator", "DCGANDiscriminator",
           "ResNetGenerator", "ResNetDiscriminator",
           "build_gan", "CifarResNet", "NormedLinear", "resnet32", "build_classifier", "load_classifier"]

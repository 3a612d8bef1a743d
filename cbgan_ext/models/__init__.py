"""Networks: GAN generators/discriminators (gan.py) and classifiers (classifier.py)."""
from .classifier import CifarResNet, NormedLinear, build_classifier, load_classifier, resnet32
from .factory import build_gan
from .gan import (ARCHITECTURES, ConditionalBatchNorm2d, DCGANDiscriminator, DCGANGenerator, ResNetDiscriminator,
                  ResNetGenerator)
from .heads import D_HEADS

__all__ = ["ARCHITECTURES", "D_HEADS", "ConditionalBatchNorm2d", "DCGANGenerator", "DCGANDiscriminator",
           "ResNetGenerator", "ResNetDiscriminator",
           "build_gan", "CifarResNet", "NormedLinear", "resnet32", "build_classifier", "load_classifier"]

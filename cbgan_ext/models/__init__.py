"""Models: generators, discriminators, classifiers."""
from .classifier import CifarResNet, NormedLinear, build_classifier, load_classifier, resnet32

__all__ = ["CifarResNet", "NormedLinear", "resnet32", "build_classifier", "load_classifier"]

"""Evaluation: class histograms and KL to uniform (CBGAN), Fréchet distances, classifier metrics."""
from .balance import class_histogram, kl_to_uniform
from .frechet import FeatureStats, frechet_distance, inception_available, InceptionFeatures, ClassifierFeatures

__all__ = ["class_histogram", "kl_to_uniform", "frechet_distance", "FeatureStats", "inception_available",
           "InceptionFeatures", "ClassifierFeatures"]

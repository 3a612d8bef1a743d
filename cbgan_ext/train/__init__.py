"""Trainers: the classifier in the loop (and, later, one trainer per GAN method on a shared loop)."""
from .classifier import atomic_save, evaluate, soft_labels, train_classifier

__all__ = ["train_classifier", "evaluate", "soft_labels", "atomic_save"]

"""Trainers: the classifier in the loop (classifier.py) and one trainer per GAN method on a shared loop
(loop.py: checkpoints, EMA, logging)."""
from .classifier import evaluate, soft_labels, train_classifier
from .loop import EMA, TrainLoop

__all__ = ["train_classifier", "evaluate", "soft_labels", "EMA", "TrainLoop"]

"""Trainers: the classifier in the loop (classifier.py) and every GAN method on one loop (gan.py, with the
methods of methods/, the losses of losses.py and the evaluator of evaluate.py)."""
from .classifier import evaluate, soft_labels, train_classifier
from .evaluate import Evaluator
from .gan import GANTrainer, evaluate_run, load_generator, load_run
from .loop import EMA, ConfigMismatchError, TrainLoop
from .methods import Method, get_method, method_names, register

__all__ = ["train_classifier", "evaluate", "soft_labels", "EMA", "TrainLoop", "ConfigMismatchError", "GANTrainer",
           "Evaluator", "evaluate_run", "load_generator", "load_run", "Method", "get_method", "method_names",
           "register"]

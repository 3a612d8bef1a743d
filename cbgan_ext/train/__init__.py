"""Trainers: every GAN method on one loop (gan.py, with the methods of methods/, the losses of losses.py and
the evaluator of evaluate.py) and the classifier in the loop (classifier.py), both on loop.TrainLoop."""
from .evaluate import Evaluator
from .gan import GANTrainer, evaluate_run, load_generator, load_run
from .loop import EMA, ConfigMismatchError, TrainLoop
from .methods import Method, get_method, method_names, register
# Last: the name `evaluate` is the classifier's evaluate function, not the submodule evaluate.py.
from .classifier import ClassifierTrainer, evaluate, soft_labels, train_classifier  # noqa: E402

__all__ = ["train_classifier", "ClassifierTrainer", "evaluate", "soft_labels", "EMA", "TrainLoop",
           "ConfigMismatchError", "GANTrainer", "Evaluator", "evaluate_run", "load_generator", "load_run", "Method",
           "get_method", "method_names", "register"]

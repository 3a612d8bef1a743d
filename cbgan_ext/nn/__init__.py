"""Drop-in modules built on the fused ops."""
from .regularizer import CBRegularizer
from .augment import DiffAugment

__all__ = ["CBRegularizer"]
__all__ += ["DiffAugment"]

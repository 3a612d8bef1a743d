"""Drop-in modules built on the fused ops."""
from .regularizer import CBRegularizer

__all__ = ["CBRegularizer"]

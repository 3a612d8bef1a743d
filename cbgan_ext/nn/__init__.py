"""Drop-in modules built on the fused ops."""
from .regularizer import CBRegularizer
from .projection import ProjectionHead

__all__ = ["CBRegularizer"]
__all__ += ["ProjectionHead"]

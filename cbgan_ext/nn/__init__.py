"""Drop-in modules built on the fused ops."""
from .regularizer import CBRegularizer
from .long_tail_losses import LOSSES, LongTailLoss, effective_number_weights, ldam_margins

__all__ = ["CBRegularizer"]
__all__ += ["LOSSES", "LongTailLoss", "effective_number_weights", "ldam_margins"]

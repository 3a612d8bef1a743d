"""Fused ops: thin wrappers over torch.ops.cbgan_ext, with fake kernels and autograd registered."""
from .class_balancing import class_balancing_loss, class_balancing_loss_with_counts
from .projection import soft_label_projection

__all__ = ["class_balancing_loss", "class_balancing_loss_with_counts"]
__all__ += ["soft_label_projection"]

"""Fused ops: thin wrappers over torch.ops.cbgan_ext, with fake kernels and autograd registered."""
from .class_balancing import class_balancing_loss, class_balancing_loss_with_counts
from .diff_augment import DiffAugmentParams, diff_augment, sample_diff_augment_params

__all__ = ["class_balancing_loss", "class_balancing_loss_with_counts"]
__all__ += ["diff_augment", "sample_diff_augment_params", "DiffAugmentParams"]

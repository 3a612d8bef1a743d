"""Fused ops: thin wrappers over torch.ops.cbgan_ext, with fake kernels and autograd registered."""
from .class_balancing import class_balancing_loss, class_balancing_loss_with_counts
from .diff_augment import DiffAugmentParams, diff_augment, sample_diff_augment_params
from .projection import soft_label_projection
from .spectral_norm import spectral_norm_power_iteration, spectral_norm_weight, spectral_norm_weight_multi

__all__ = ["class_balancing_loss", "class_balancing_loss_with_counts", "diff_augment", "sample_diff_augment_params",
           "DiffAugmentParams", "soft_label_projection", "spectral_norm_power_iteration", "spectral_norm_weight",
           "spectral_norm_weight_multi"]

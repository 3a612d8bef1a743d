"""Drop-in modules built on the fused ops."""
from .augment import DiffAugment, diff_augment
from .gan_regularizers import GroupSpectralRegularizer, LeCamRegularizer
from .long_tail_losses import LOSSES, LongTailLoss, effective_number_weights, ldam_margins
from .projection import ProjectionHead
from .regularizer import CBRegularizer
from .spectral_norm import (SNConv2d, SNConvTranspose2d, SNEmbedding, SNLinear, convert_spectral_norm,
                            spectral_norm_update_)
from .upsample_conv import UpsampleConv2d, upsample_conv2d

__all__ = ["CBRegularizer", "GroupSpectralRegularizer", "LeCamRegularizer",
           "DiffAugment", "diff_augment", "ProjectionHead", "SNConv2d", "SNConvTranspose2d",
           "SNLinear", "SNEmbedding", "convert_spectral_norm", "spectral_norm_update_", "LOSSES", "LongTailLoss",
           "effective_number_weights", "ldam_margins", "UpsampleConv2d", "upsample_conv2d"]

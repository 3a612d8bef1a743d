"""Drop-in modules built on the fused ops."""
from .regularizer import CBRegularizer
from .spectral_norm import (SNConv2d, SNConvTranspose2d, SNEmbedding, SNLinear, convert_spectral_norm,
                            spectral_norm_update_)

__all__ = ["CBRegularizer"]
__all__ += ["SNConv2d", "SNConvTranspose2d", "SNLinear", "SNEmbedding", "convert_spectral_norm",
            "spectral_norm_update_"]

"""The CBGAN paper's unconditional methods: the SNDCGAN / SNResGAN baseline and CBGAN."""
from .base import Method, register


@register
class Baseline(Method):
    name = "gan"
    title = "unconditional SNDCGAN/SNResGAN, relativistic loss (CBGAN's baseline)"
    paper = "CBGAN (Rangwani et al. 2021) Eqs. 2-3"
    in_main_job = True


@register
class CBGAN(Baseline):
    name = "cbgan"
    title = "the baseline + the class-balancing regularizer on a frozen classifier (CBGAN)"
    paper = "CBGAN (Rangwani et al. 2021) Eq. 8"
    cb_regularizer = True

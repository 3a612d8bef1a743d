"""DiffAugment as a module, and as the reference's function:

    augment = DiffAugment("color,translation,cutout")          # the module: built with the policy, then called
    d_real = D(augment(real)); d_fake = D(augment(fake))
    d_real = D(diff_augment(real, "color,translation,cutout"))  # DiffAugment_pytorch.py's DiffAugment(x, policy)

Each call draws fresh parameters (from ``generator`` or torch's global generator, as the reference draws
them); ``forward(x, params)`` replays given ones. It has no state and applies in train and eval mode alike.
"""
from typing import Optional, Sequence, Union

import torch
from torch import nn

from ..ops.diff_augment import diff_augment as _fused, parse_policy, sample_diff_augment_params


class DiffAugment(nn.Module):
    """DiffAugment (Zhao et al. 2020) of D's inputs on the fused op: ``DiffAugment(policy)(x)`` augments x
    [B, C, H, W] (or [B, H, W, C] with ``channels_first=False``) with fresh parameters on every call;
    ``forward(x, params)`` replays ``sample_params(x)``. Differentiable w.r.t. x; no state."""

    def __init__(self, policy: Union[str, Sequence[str]] = "color,translation,cutout", *misuse,
                 translation_ratio: float = 0.125, cutout_ratio: float = 0.5, channels_first: bool = True,
                 generator: Optional[torch.Generator] = None):
        super().__init__()
        if isinstance(policy, torch.Tensor) or misuse:
            raise TypeError("DiffAugment is a module: DiffAugment(policy)(x); the reference's function "
                            "DiffAugment(x, policy) is cbgan_ext.diff_augment(x, policy)")
        self.groups = parse_policy(policy)
        self.policy = ",".join(self.groups)
        self.translation_ratio = float(translation_ratio)
        self.cutout_ratio = float(cutout_ratio)
        self.channels_first = bool(channels_first)
        self.generator = generator

    def extra_repr(self):
        return (f"policy={self.policy!r}, translation_ratio={self.translation_ratio}, "
                f"cutout_ratio={self.cutout_ratio}, channels_first={self.channels_first}")

    def sample_params(self, x):
        """Parameters for x [B, C, H, W] (NCHW view, whatever channels_first says)."""
        return sample_diff_augment_params(x, self.groups, self.generator, self.translation_ratio, self.cutout_ratio)

    def forward(self, x: torch.Tensor, params=None) -> torch.Tensor:
        if not self.groups:
            return x
        if not self.channels_first:  # [B, H, W, C] as the reference's channels_first=False
            x = x.permute(0, 3, 1, 2)
        y = _fused(x, self.groups, params, self.generator, self.translation_ratio, self.cutout_ratio)
        return y.permute(0, 2, 3, 1) if not self.channels_first else y


def diff_augment(x: torch.Tensor, policy: Union[str, Sequence[str]] = "", channels_first: bool = True) -> torch.Tensor:
    """DiffAugment_pytorch.py's ``DiffAugment(x, policy='', channels_first=True)`` on the fused op: fresh
    parameters from torch's global generator on every call, as the reference draws them."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"diff_augment: x must be a tensor [B, C, H, W], got {type(x).__name__}")
    return DiffAugment(policy, channels_first=channels_first)(x)

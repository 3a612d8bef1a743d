"""DiffAugment as a module, a drop-in for the reference's ``DiffAugment(x, policy)``:

    augment = DiffAugment("color,translation,cutout")
    d_real = D(augment(real)); d_fake = D(augment(fake))

Each call draws fresh parameters (from ``generator`` or torch's global generator, as the reference draws
them); ``forward(x, params)`` replays given ones. It has no state and applies in train and eval mode alike.
"""
from torch import nn

from ..ops.diff_augment import diff_augment, parse_policy, sample_diff_augment_params


class DiffAugment(nn.Module):
    def __init__(self, policy="color,translation,cutout", *, translation_ratio=0.125, cutout_ratio=0.5,
                 channels_first=True, generator=None):
        super().__init__()
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

    def forward(self, x, params=None):
        if not self.groups:
            return x
        if not self.channels_first:  # [B, H, W, C] as the reference's channels_first=False
            x = x.permute(0, 3, 1, 2)
        y = diff_augment(x, self.groups, params, self.generator, self.translation_ratio, self.cutout_ratio)
        return y.permute(0, 2, 3, 1) if not self.channels_first else y

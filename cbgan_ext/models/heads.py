"""The discriminator heads every architecture shares (``d_head``): a scalar, the projection, K + 1 classes, or
a real/fake logit with an auxiliary classifier."""
from torch import nn

from ..nn import ProjectionHead, SNLinear

D_HEADS = ("scalar", "projection", "classes+1", "aux-classifier")


def linear(sn, *args, **kw):
    return SNLinear(*args, **kw) if sn else nn.Linear(*args, **kw)


class HeadedDiscriminator(nn.Module):
    """The head part shared by the discriminators: subclasses define ``features(x)`` and call ``_make_head``."""

    def _make_head(self, sn, feature_dim, d_head, num_classes):
        if d_head not in D_HEADS:
            raise ValueError(f"build_gan: d_head must be one of {D_HEADS}, got {d_head!r}")
        if d_head != "scalar" and num_classes < 1:
            raise ValueError(f"build_gan: d_head={d_head!r} needs num_classes >= 1, got {num_classes}")
        self.feature_dim, self.d_head, self.num_classes = feature_dim, d_head, int(num_classes)
        if d_head == "projection":
            self.head = ProjectionHead(feature_dim, num_classes, spectral_norm=sn)
        elif d_head == "classes+1":
            self.linear = linear(sn, feature_dim, num_classes + 1)
        else:
            self.linear = linear(sn, feature_dim, 1)
            if d_head == "aux-classifier":
                self.aux = linear(sn, feature_dim, num_classes)

    def forward(self, x, y=None):
        h = self.features(x)
        if self.d_head == "scalar":
            return self.linear(h).squeeze(1)
        if self.d_head == "projection":
            if y is None:
                raise ValueError("discriminator: the projection head needs labels y (hard [B] or soft [B, K])")
            return self.head(h, y)
        if self.d_head == "classes+1":
            return self.linear(h)
        return self.linear(h).squeeze(1), self.aux(h)


__all__ = ["D_HEADS", "HeadedDiscriminator", "linear"]

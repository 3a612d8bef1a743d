"""Nearest-neighbour ×2 upsampling followed by a 'same' convolution, computed on the input's grid.

Each output pixel (2i + a, 2j + b) of ``conv2d(upsample(x), w)`` reads only rows i + ⌊(a − p + t)/2⌋ of x (p = k // 2,
t = 0 … k − 1) and the matching columns: for each of the four phases (a, b) the convolution is a smaller one on x
whose taps are sums of w's. One convolution with the four phases' kernels as 4·C_out output channels, then an
interleave, gives the same result with 9 instead of 25 multiply-adds a pixel for 5×5 (BAGAN's G) and 4 instead of
9 for 3×3 (BigGAN's G), and never builds the upsampled tensor. Autograd (first and second order) goes through the
kernel folding, so the weights learn as with the plain pair.
"""
import functools

import torch
from torch import nn
import torch.nn.functional as F


@functools.lru_cache(maxsize=None)
def _plan(k):
    """For a k×k kernel: per phase a ∈ {0, 1}, the first x row it reads (relative to i) and which window tap each
    kernel tap lands on; the window size w; the padding of x."""
    p = k // 2
    rows = [[(a - p + t) // 2 for t in range(k)] for a in (0, 1)]
    first = [r[0] for r in rows]
    w = max(r[-1] - r[0] + 1 for r in rows)
    lo = min(first)
    fold = torch.zeros(2, w, k, dtype=torch.float64)  # fold[a, u, t] = 1: tap t of phase a adds to window tap u
    for a in (0, 1):
        for t, r in enumerate(rows[a]):
            fold[a, r - first[a], t] = 1.0
    starts = tuple(f - lo for f in first)  # where phase a's window starts on the padded x
    pad_lo = -lo
    pad_hi = max(starts) + w - 1 - pad_lo
    return fold, w, starts, pad_lo, pad_hi


def upsample_conv2d(x: torch.Tensor, weight: torch.Tensor, bias=None) -> torch.Tensor:
    """``F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=k // 2)`` for x [B, C, H, W]
    and an odd square kernel weight [C_out, C, k, k] (stride 1, no groups or dilation), without the upsampled
    tensor. Equal in exact arithmetic; in floating point it sums in another order (and an inf in x may come out
    ±inf where the pair, adding w₁·inf + w₂·inf of mixed signs, gives NaN)."""
    if x.dim() != 4:
        raise ValueError(f"upsample_conv2d: x must be [B, C, H, W], got {tuple(x.shape)}")
    if weight.dim() != 4 or weight.shape[-1] != weight.shape[-2] or weight.shape[-1] % 2 == 0:
        raise ValueError(f"upsample_conv2d: weight must be [C_out, C, k, k] with k odd, got {tuple(weight.shape)}")
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"upsample_conv2d: x has {x.shape[1]} channels, weight expects {weight.shape[1]}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"upsample_conv2d: bias must be [{weight.shape[0]}], got {tuple(bias.shape)}")
    k = weight.shape[-1]
    if k == 1:  # a 1×1 convolution commutes with the upsampling: 4× fewer multiply-adds
        return F.interpolate(F.conv2d(x, weight, bias), scale_factor=2, mode="nearest")
    fold, w, starts, pad_lo, pad_hi = _plan(k)
    fold = fold.to(device=weight.device, dtype=weight.dtype)
    cout, cin = weight.shape[:2]
    # kernels[o, a, b, c, u, v] = Σ_{t, s} fold[a, u, t] · weight[o, c, t, s] · fold[b, v, s]
    kernels = torch.einsum("aut,octs,bvs->oabcuv", fold, weight, fold).reshape(cout * 4, cin, w, w)
    y = F.conv2d(F.pad(x, (pad_lo, pad_hi, pad_lo, pad_hi)), kernels,
                 None if bias is None else bias.repeat_interleave(4))
    B, H, W = x.shape[0], x.shape[2], x.shape[3]
    y = y.view(B, cout, 2, 2, y.shape[-2], y.shape[-1])
    if starts[0] == starts[1]:
        s = starts[0]
        y = y[..., s:s + H, s:s + W]
        return y.permute(0, 1, 4, 2, 5, 3).reshape(B, cout, 2 * H, 2 * W)
    phase = [[y[:, :, a, b, starts[a]:starts[a] + H, starts[b]:starts[b] + W] for b in (0, 1)] for a in (0, 1)]
    y = torch.stack([torch.stack(row, dim=-1) for row in phase], dim=3)  # [B, C_out, H, 2 (a), W, 2 (b)]
    return y.reshape(B, cout, 2 * H, 2 * W)


class UpsampleConv2d(nn.Conv2d):
    """``nn.Upsample(scale_factor=2)`` then this ``nn.Conv2d`` ('same' padding, odd square kernel, stride 1), as
    one module with nn.Conv2d's parameters: ``upsample_conv2d``."""

    def __init__(self, in_channels, out_channels, kernel_size, bias=True, **kw):
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias, **kw)
        if kernel_size % 2 == 0 or self.stride != (1, 1) or self.groups != 1 or self.dilation != (1, 1) \
                or self.padding_mode != "zeros":
            raise ValueError("UpsampleConv2d: an odd kernel, stride 1, one group, no dilation, zero padding")

    def forward(self, x):
        return upsample_conv2d(x, self.weight, self.bias)

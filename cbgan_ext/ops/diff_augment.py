"""diff_augment: DiffAugment (Zhao et al. 2020) color / translation / cutout, fused forward and backward.

Random parameters are drawn here, in Python, with exactly the torch calls of the reference
DiffAugment_pytorch.py in the same order (so a seed gives the reference's batch); the kernels only apply them.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from ._checks import same_device

_OP = "diff_augment"
GROUPS = ("color", "translation", "cutout")
_CODE = {g: i for i, g in enumerate(GROUPS)}


@dataclass
class DiffAugmentParams:
    """Per-sample parameters of one augmentation, on x's device.

    policy: the groups in order. color: [n_color, B, 3] in float32 (float64 for float64 x): brightness offset
    r_b − 0.5, saturation factor 2·r_s, contrast factor r_c + 0.5 (computed in x's dtype, as the reference
    does). translation: [n_translation, B, 2] int64 (t_h, t_w). cutout: [n_cutout, B, 2] int64 centres
    (o_h, o_w). cutout_size: (S_h, S_w). One row per occurrence of a group in the policy.
    """
    policy: Tuple[str, ...]
    color: torch.Tensor
    translation: torch.Tensor
    cutout: torch.Tensor
    cutout_size: Tuple[int, int]

    @property
    def batch_size(self):
        return self.color.shape[1]

    def to(self, device):
        return DiffAugmentParams(self.policy, self.color.to(device), self.translation.to(device),
                                 self.cutout.to(device), self.cutout_size)


def parse_policy(policy):
    """'color,translation' -> ('color', 'translation'); '' -> (); a list or tuple of words is accepted too."""
    if policy is None:
        return ()
    if isinstance(policy, str):
        words = [w.strip() for w in policy.split(",")] if policy.strip() else []
    elif isinstance(policy, (list, tuple)):
        words = [str(w).strip() for w in policy]
    else:
        raise TypeError(f"{_OP}: policy must be a string such as 'color,translation,cutout' or a list of words, "
                        f"got {type(policy).__name__}")
    for w in words:
        if w not in _CODE:
            raise ValueError(f"{_OP}: unknown policy word {w!r} in {policy!r}; expected a comma-separated list of "
                             f"{', '.join(GROUPS)}")
    return tuple(words)


def _acc_dtype(dtype):
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _check_x(x):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{_OP}: x must be a tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{_OP}: x must be 4-D [B, C, H, W], got shape {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{_OP}: x must be float16, bfloat16, float32 or float64, got {x.dtype}")


def cutout_size(H, W, cutout_ratio=0.5):
    return int(H * cutout_ratio + 0.5), int(W * cutout_ratio + 0.5)


_AFFINE = {}


def _color_affine(dtype, device):
    key = (dtype, device)
    if key not in _AFFINE:  # small per-(dtype, device) constants: one op per colour group instead of four
        _AFFINE[key] = (torch.tensor([1.0, 2.0, 1.0], dtype=dtype, device=device),
                        torch.tensor([-0.5, 0.0, 0.5], dtype=dtype, device=device))
    return _AFFINE[key]


def sample_diff_augment_params(x, policy="color,translation,cutout", generator=None, translation_ratio=0.125,
                               cutout_ratio=0.5) -> DiffAugmentParams:
    """Draw the parameters of one DiffAugment of x, consuming the generator as the reference does.

    Per group, in policy order: color draws torch.rand(B, 1, 1, 1, dtype=x.dtype) three times (brightness,
    saturation, contrast); translation draws torch.randint(-s, s + 1, [B, 1, 1]) for rows then columns with
    s = int(H·ratio + 0.5); cutout draws torch.randint(0, H + (1 − S_h mod 2), [B, 1, 1]) then the same for
    columns with S = int(H·ratio + 0.5). generator=None uses torch's global generator of x's device.
    """
    _check_x(x)
    groups = parse_policy(policy)
    B, _, H, W = x.shape
    dev = x.device
    acc = _acc_dtype(x.dtype)
    S_h, S_w = cutout_size(H, W, cutout_ratio)
    color, trans, cut = [], [], []
    for g in groups:
        if g == "color":
            r = torch.cat([torch.rand(B, 1, 1, 1, dtype=x.dtype, device=dev, generator=generator) for _ in range(3)],
                          dim=1).view(B, 3)
            # one rounding in x's dtype, as the reference's r_b − 0.5, r_s·2, r_c + 0.5
            scale, shift = _color_affine(x.dtype, dev)
            color.append(torch.addcmul(shift, r, scale).to(acc))
        elif g == "translation":
            s_h, s_w = int(H * translation_ratio + 0.5), int(W * translation_ratio + 0.5)
            t_h = torch.randint(-s_h, s_h + 1, size=[B, 1, 1], device=dev, generator=generator)
            t_w = torch.randint(-s_w, s_w + 1, size=[B, 1, 1], device=dev, generator=generator)
            trans.append(torch.cat([t_h, t_w], dim=1).view(B, 2))
        else:
            o_h = torch.randint(0, H + (1 - S_h % 2), size=[B, 1, 1], device=dev, generator=generator)
            o_w = torch.randint(0, W + (1 - S_w % 2), size=[B, 1, 1], device=dev, generator=generator)
            cut.append(torch.cat([o_h, o_w], dim=1).view(B, 2))

    def stack(rows, width, dtype):
        if len(rows) == 1:
            return rows[0].unsqueeze(0)
        return torch.stack(rows) if rows else torch.empty(0, B, width, dtype=dtype, device=dev)

    return DiffAugmentParams(groups, stack(color, 3, acc), stack(trans, 2, torch.int64), stack(cut, 2, torch.int64),
                             (S_h, S_w))


# ---- dispatcher op: fake kernels and autograd ------------------------------------------------------------


def _memory_format(x):
    return torch._prims_common.suggest_memory_format(x)


@torch.library.register_fake("cbgan_ext::diff_augment")
def _fake(x, program, color, translation, cutout, cutout_size):
    same_device(_OP, x=x, color=color, translation=translation, cutout=cutout)
    torch._check(x.dim() == 4, lambda: f"{_OP}: x must be 4-D [B, C, H, W], got shape {tuple(x.shape)}")
    torch._check(x.dtype.is_floating_point, lambda: f"{_OP}: x must be floating point, got {x.dtype}")
    torch._check(color.dim() == 3 and color.shape[1] == x.shape[0],
                 lambda: f"{_OP}: color params must be [n_color, B, 3], got {tuple(color.shape)}")
    return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=_memory_format(x))


@torch.library.register_fake("cbgan_ext::_diff_augment_backward")
def _fake_backward(grad, program, color, translation, cutout, cutout_size):
    same_device("_diff_augment_backward", grad=grad, color=color, translation=translation, cutout=cutout)
    return torch.empty(grad.shape, dtype=grad.dtype, device=grad.device, memory_format=_memory_format(grad))


def _setup_context(ctx, inputs, output):
    _, program, color, translation, cutout, size = inputs
    ctx.program, ctx.cutout_size = program, size
    ctx.save_for_backward(color, translation, cutout)


# The autograd of diff_augment itself is C++ (csrc/autograd.cpp): it runs every training step.


def _backward_backward(ctx, gg):
    # The backward is linear in grad; its adjoint is the forward map without the brightness offset.
    color, translation, cutout = ctx.saved_tensors
    ggrad = None
    if ctx.needs_input_grad[0]:
        linear = color.clone()
        linear[..., 0] = 0
        ggrad = torch.ops.cbgan_ext.diff_augment(gg, ctx.program, linear, translation, cutout, ctx.cutout_size)
    return ggrad, None, None, None, None, None


torch.library.register_autograd("cbgan_ext::_diff_augment_backward", _backward_backward, setup_context=_setup_context)


def diff_augment(x: torch.Tensor, policy="color,translation,cutout", params: Optional[DiffAugmentParams] = None,
                 generator: Optional[torch.Generator] = None, translation_ratio=0.125,
                 cutout_ratio=0.5) -> torch.Tensor:
    """DiffAugment of x [B, C, H, W] (float16/bfloat16/float32/float64, NCHW or channels_last).

    Groups apply in policy order ("" is the identity). Without params, the parameters are drawn from
    generator (default: torch's global one) exactly as DiffAugment_pytorch.py draws them, so a seed gives the
    reference's batch. With params (from sample_diff_augment_params), the same augmentation is replayed;
    their policy must equal `policy`. The output keeps x's memory format and is differentiable w.r.t. x.
    """
    _check_x(x)
    groups = parse_policy(policy)
    if params is None:
        params = sample_diff_augment_params(x, groups, generator, translation_ratio, cutout_ratio)
    else:
        if not isinstance(params, DiffAugmentParams):
            raise TypeError(f"{_OP}: params must be DiffAugmentParams (from sample_diff_augment_params), "
                            f"got {type(params).__name__}")
        if tuple(params.policy) != groups:
            raise ValueError(f"{_OP}: params were drawn for policy {','.join(params.policy)!r}, "
                             f"not {','.join(groups)!r}")
        if params.batch_size != x.shape[0]:
            raise ValueError(f"{_OP}: params were drawn for a batch of {params.batch_size}, x has {x.shape[0]}")
    if not groups:
        return x  # as the reference: the identity returns its input
    program = [_CODE[g] for g in groups]
    return torch.ops.cbgan_ext.diff_augment(x, program, params.color, params.translation, params.cutout,
                                            list(params.cutout_size))

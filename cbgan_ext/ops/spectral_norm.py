"""Spectral normalization with torch.nn.utils.spectral_norm semantics, fused.

One power iteration: v = normalize(Wᵀu, eps), u = normalize(W v, eps), σ = uᵀ W v; W_sn = W / σ. Gradients
reach W through σ with u and v held constant, exactly as in torch. The weight is viewed as the matrix
torch builds (``dim`` permuted to the front, the rest flattened) without copying it.
"""
import os

import torch

from .. import reference
from ._checks import same_device

_PI = "spectral_norm_power_iteration"
_W = "spectral_norm_weight"
_MULTI = "spectral_norm_weight_multi"


def _check_tensor(op, **tensors):
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a tensor, got {type(t).__name__}")


def _check_int(op, name, x):
    if isinstance(x, bool) or not isinstance(x, int):
        raise TypeError(f"{op}: {name} must be an int, got {type(x).__name__}")


def _wrap_dim(op, weight, dim):
    torch._check(-weight.dim() <= dim < weight.dim(),
                 lambda: f"{op}: dim must be in [{-weight.dim()}, {weight.dim()}), got {dim}")
    return dim % weight.dim()


def _fake_layer_checks(op, weight, u, v, dim):
    same_device(op, weight=weight, u=u, v=v)
    torch._check(weight.dim() >= 1, lambda: f"{op}: weight must have at least 1 dimension")
    torch._check(weight.dtype.is_floating_point, lambda: f"{op}: weight must be floating point, got {weight.dtype}")
    dim = _wrap_dim(op, weight, dim)
    h = weight.shape[dim]
    torch._check(u.dim() == 1 and u.shape[0] == h, lambda: f"{op}: u must be 1-D of size {h}, got {tuple(u.shape)}")
    torch._check(v.dim() == 1 and v.shape[0] * h == weight.numel(),
                 lambda: f"{op}: v must be 1-D of size numel / size(dim), got {tuple(v.shape)}")
    torch._check(u.dtype == weight.dtype and v.dtype == weight.dtype,
                 lambda: f"{op}: u and v must have the weight's dtype {weight.dtype}")


# ---- fake (meta) kernels ----------------------------------------------------------------------------------


@torch.library.register_fake("cbgan_ext::spectral_norm_power_iteration")
def _fake_power_iteration(weight_mat, u, v, n_power_iterations, eps):
    torch._check(weight_mat.dim() == 2, lambda: f"{_PI}: weight_mat must be 2-D [out, in]")
    _fake_layer_checks(_PI, weight_mat, u, v, 0)
    return torch.empty_like(u), torch.empty_like(v), weight_mat.new_empty(())


@torch.library.register_fake("cbgan_ext::spectral_norm_weight")
def _fake_weight(weight, u, v, dim, n_power_iterations, eps):
    _fake_layer_checks(_W, weight, u, v, dim)
    return (weight.new_empty(weight.shape), torch.empty_like(u), torch.empty_like(v), weight.new_empty(()))


@torch.library.register_fake("cbgan_ext::_spectral_norm_weight_backward")
def _fake_weight_backward(grad_weight_sn, weight, u, v, sigma, dim):
    _check_weight_backward(grad_weight_sn, weight, u, v, sigma, dim)
    return weight.new_empty(weight.shape)


def _check_weight_backward(grad_weight_sn, weight, u, v, sigma, dim):
    op = "_spectral_norm_weight_backward"
    same_device(op, weight=weight, grad=grad_weight_sn, sigma=sigma)
    _fake_layer_checks(op, weight, u, v, dim)
    torch._check(grad_weight_sn.shape == weight.shape,
                 lambda: f"{op}: grad must have the weight's shape {tuple(weight.shape)}, got "
                         f"{tuple(grad_weight_sn.shape)}")
    torch._check(sigma.numel() == 1, lambda: f"{op}: sigma must have one element, got shape {tuple(sigma.shape)}")


def _check_multi(weights, us, vs, dims):
    same_device(_MULTI, weights=weights, us=us, vs=vs)
    torch._check(len(weights) > 0, lambda: f"{_MULTI}: expected at least one weight")
    for w, u, v, d in zip(weights, us, vs, dims):
        _fake_layer_checks(_MULTI, w, u, v, d)


@torch.library.register_fake("cbgan_ext::spectral_norm_weight_multi")
def _fake_multi(weights, us, vs, dims, n_power_iterations, eps):
    _check_multi(weights, us, vs, dims)
    return ([w.new_empty(w.shape) for w in weights], [torch.empty_like(u) for u in us],
            [torch.empty_like(v) for v in vs], weights[0].new_empty((len(weights),)))


@torch.library.register_fake("cbgan_ext::_spectral_norm_weight_multi_backward")
def _fake_multi_backward(grads, weights, us, vs, sigmas, dims):
    _check_multi_backward(grads, weights, us, vs, sigmas, dims)
    return [w.new_empty(w.shape) for w in weights]


def _check_multi_backward(grads, weights, us, vs, sigmas, dims):
    op = "_spectral_norm_weight_multi_backward"
    same_device(op, weights=weights, grads=grads, us=us, vs=vs, sigmas=sigmas)
    torch._check(len(grads) == len(weights) and sigmas.numel() == len(weights),
                 lambda: f"{op}: expected {len(weights)} grads and sigmas [{len(weights)}], got {len(grads)} and "
                         f"{tuple(sigmas.shape)}")
    for g, w, u, v, d in zip(grads, weights, us, vs, dims):
        _fake_layer_checks(op, w, u, v, d)
        torch._check(g is None or g.shape == w.shape,
                     lambda: f"{op}: grad must have the weight's shape {tuple(w.shape)}, got {tuple(g.shape)}")


# ---- autograd -----------------------------------------------------------------------------------------------
# In C++ (csrc/autograd.cpp, the Autograd dispatch key), for Python, torch.compile and libtorch users alike:
# u, v and σ are not differentiable, W_sn is, through σ with u and v held constant (dσ/dW = u vᵀ, as torch).


# ---- public wrappers -----------------------------------------------------------------------------------------


def _check_iter(op, n_power_iterations, eps):
    _check_int(op, "n_power_iterations", n_power_iterations)
    if n_power_iterations < 0:
        raise ValueError(f"{op}: n_power_iterations must be >= 0, got {n_power_iterations}")
    if not isinstance(eps, (int, float)) or isinstance(eps, bool):
        raise TypeError(f"{op}: eps must be a float, got {type(eps).__name__}")


def spectral_norm_power_iteration(weight_mat, u, v, n_power_iterations=1, eps=1e-12):
    """n power iterations of torch.nn.utils.spectral_norm on the matrix ``weight_mat`` [out, in].

    Returns new tensors ``(u, v, sigma)`` (the inputs are not modified): each iteration computes
    v = normalize(Wᵀu, eps), then u = normalize(W v, eps); sigma = uᵀ W v with the final u, v (0-dim, in
    weight_mat's dtype). n_power_iterations = 0 returns copies of u, v and sigma = uᵀ W v. sigma is
    differentiable with respect to weight_mat, with u and v held constant (dσ/dW = u vᵀ), as in torch.
    """
    _check_tensor(_PI, weight_mat=weight_mat, u=u, v=v)
    _check_iter(_PI, n_power_iterations, eps)
    return torch.ops.cbgan_ext.spectral_norm_power_iteration(weight_mat, u, v, n_power_iterations, float(eps))


def spectral_norm_weight(weight, u, v, dim=0, n_power_iterations=1, eps=1e-12):
    """Fused W / σ(W): the power iteration and the division in one launch, with a fused backward.

    weight: any shape, viewed as torch's matrix [weight.size(dim), -1]; u [size(dim)], v [numel/size(dim)] in
    the weight's dtype. Returns ``(weight_sn, u, v, sigma)``: weight_sn (contiguous, differentiable w.r.t.
    weight) and the new u, v, sigma (not differentiable). Use n_power_iterations=0 for eval mode.
    """
    _check_tensor(_W, weight=weight, u=u, v=v)
    _check_int(_W, "dim", dim)
    _check_iter(_W, n_power_iterations, eps)
    return torch.ops.cbgan_ext.spectral_norm_weight(weight, u, v, dim, n_power_iterations, float(eps))


def spectral_norm_weight_multi(weights, us, vs, dims, n_power_iterations=1, eps=1e-12):
    """spectral_norm_weight for a list of layers in one launch (all of one dtype and device).

    Returns ``(weights_sn, us, vs, sigmas)``: lists, and sigmas [L]. The backward is one launch too.
    """
    for name, lst in (("weights", weights), ("us", us), ("vs", vs)):
        if not isinstance(lst, (list, tuple)) or not all(isinstance(t, torch.Tensor) for t in lst):
            raise TypeError(f"{_MULTI}: {name} must be a list of tensors")
    if len(weights) == 0:
        raise ValueError(f"{_MULTI}: expected at least one weight, got an empty list")
    if not isinstance(dims, (list, tuple)):
        raise TypeError(f"{_MULTI}: dims must be a list of ints")
    for d in dims:
        _check_int(_MULTI, "dims", d)
    _check_iter(_MULTI, n_power_iterations, eps)
    return torch.ops.cbgan_ext.spectral_norm_weight_multi(list(weights), list(us), list(vs), list(dims),
                                                          n_power_iterations, float(eps))


# ---- the modules' calls ----------------------------------------------------------------------------------------
# The layers call these once per forward with arguments already valid: straight to the op (its C++ autograd
# kernel), skipping the wrappers' Python checks.


def spectral_norm_weight_module(weight, u, v, dim, n, eps):
    """spectral_norm_weight for the modules (arguments already valid)."""
    return torch.ops.cbgan_ext.spectral_norm_weight.default(weight, u, v, dim, n, eps)


def spectral_norm_weight_multi_module(weights, us, vs, dims, n, eps):
    """spectral_norm_weight_multi for spectral_norm_update_ (arguments already valid)."""
    return torch.ops.cbgan_ext.spectral_norm_weight_multi.default(list(weights), list(us), list(vs), list(dims), n,
                                                                  eps)


# ---- ATen implementation on CUDA --------------------------------------------------------------------------
# reference.py's math (ATen ops: correct, device-generic, unfused) as the CUDA kernels: it serves the CUDA key
# when the build has no CUDA kernels, or when CBGAN_EXT_SN_CUDA=aten asks for it (an escape hatch: the fused
# CUDA kernels of csrc/cuda/spectral_norm.cu had one bug fixed without a GPU to rerun them on, see README).
# Autograd is the same C++ kernel as for the fused ops (it dispatches below itself to whichever CUDA kernel);
# only the backward ops' formula is written here, as reference.py has none (it differentiates W / σ).

_sn_mat = reference._sn_matrix


def _sn_unmat(mat, like, dim):
    if dim == 0:
        return mat.reshape(like.shape)
    perm = [dim] + [d for d in range(like.dim()) if d != dim]
    shape = [like.shape[p] for p in perm]
    inv = [perm.index(d) for d in range(like.dim())]
    return mat.reshape(shape).permute(inv).contiguous()


def _pi_cuda(weight_mat, u, v, n_power_iterations, eps):
    torch._check(weight_mat.dim() == 2, lambda: f"{_PI}: weight_mat must be 2-D [out, in]")
    _fake_layer_checks(_PI, weight_mat, u, v, 0)
    with torch.no_grad():
        return reference.spectral_norm_power_iteration(weight_mat, u, v, n_power_iterations, eps)


def _weight_cuda(weight, u, v, dim, n_power_iterations, eps, op=_W):
    _fake_layer_checks(op, weight, u, v, dim)
    with torch.no_grad():
        dim = dim % weight.dim()
        u, v, sigma = reference.spectral_norm_power_iteration(_sn_mat(weight, dim), u, v, n_power_iterations, eps)
        return (weight * (1.0 / sigma)).contiguous(), u, v, sigma


def _weight_backward_aten(grad, weight, u, v, sigma, dim):
    # grad_W = (G - <G, W_sn> u vᵀ) / sigma, in the [size(dim), -1] matrix view
    dim = dim % weight.dim()
    g = _sn_mat(grad, dim)
    w_sn = _sn_mat(weight, dim) / sigma
    return _sn_unmat((g - (g * w_sn).sum() * torch.outer(u, v)) / sigma, weight, dim)


def _weight_backward_cuda(grad_weight_sn, weight, u, v, sigma, dim):
    _check_weight_backward(grad_weight_sn, weight, u, v, sigma, dim)
    with torch.no_grad():
        return _weight_backward_aten(grad_weight_sn, weight, u, v, sigma, dim)


def _multi_cuda(weights, us, vs, dims, n_power_iterations, eps):
    _check_multi(weights, us, vs, dims)
    outs = [_weight_cuda(w, u, v, d, n_power_iterations, eps, _MULTI) for w, u, v, d in zip(weights, us, vs, dims)]
    return [o[0] for o in outs], [o[1] for o in outs], [o[2] for o in outs], torch.stack([o[3] for o in outs])


def _multi_backward_cuda(grad_weights_sn, weights, us, vs, sigmas, dims):
    _check_multi_backward(grad_weights_sn, weights, us, vs, sigmas, dims)
    with torch.no_grad():
        return [torch.zeros_like(w) if g is None else _weight_backward_aten(g, w, u, v, s, d)
                for g, w, u, v, s, d in zip(grad_weights_sn, weights, us, vs, sigmas.unbind(0), dims)]


def _use_aten_on_cuda():
    from .. import _C
    choice = os.environ.get("CBGAN_EXT_SN_CUDA", "fused")
    if choice not in ("fused", "aten"):
        raise ValueError(f"cbgan_ext: CBGAN_EXT_SN_CUDA must be 'fused' or 'aten', got {choice!r}")
    return choice == "aten" or not _C.build_info()["cuda"]


if _use_aten_on_cuda():
    torch.library.register_kernel("cbgan_ext::spectral_norm_power_iteration", "cuda", _pi_cuda)
    torch.library.register_kernel("cbgan_ext::spectral_norm_weight", "cuda", _weight_cuda)
    torch.library.register_kernel("cbgan_ext::_spectral_norm_weight_backward", "cuda", _weight_backward_cuda)
    torch.library.register_kernel("cbgan_ext::spectral_norm_weight_multi", "cuda", _multi_cuda)
    torch.library.register_kernel("cbgan_ext::_spectral_norm_weight_multi_backward", "cuda", _multi_backward_cuda)

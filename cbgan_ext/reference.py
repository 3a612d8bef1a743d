"""Pure-PyTorch versions of every fused op: the test oracle and the benchmark baseline.

Written the way the papers' released code writes them (eager, unfused), not tuned.
"""
import torch

# ---- class balancing regularizer -----------------------------------------------------------------


def class_balancing_loss(logits, class_weights):
    """CBGAN Eq. 7 as the official code computes it: sum(w * mean(softmax) * log(mean(softmax)))."""
    p = torch.softmax(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits, dim=1)
    mean_p = p.mean(dim=0)
    return torch.sum(class_weights.to(mean_p.dtype) * mean_p * torch.log(mean_p))


def argmax_counts(logits):
    return torch.bincount(logits.argmax(dim=1), minlength=logits.shape[1])

# ---- diff augment ----------------------------------------------------------------------------------

# ---- spectral norm ---------------------------------------------------------------------------------


def _sn_matrix(weight, dim):
    """torch.nn.utils.spectral_norm's reshape_weight_to_matrix: dim to the front, the rest flattened."""
    if dim != 0:
        weight = weight.permute(dim, *[d for d in range(weight.dim()) if d != dim])
    return weight.reshape(weight.size(0), -1)


def spectral_norm_power_iteration(weight_mat, u, v, n_power_iterations=1, eps=1e-12):
    """torch.nn.utils.spectral_norm's compute_weight on a matrix: v first, then u; sigma = uᵀ W v, with u and v
    constants for autograd. Returns new (u, v, sigma); the inputs are not modified."""
    u, v = u.clone(), v.clone()
    with torch.no_grad():
        for _ in range(n_power_iterations):
            v = torch.nn.functional.normalize(torch.mv(weight_mat.t(), u), dim=0, eps=eps, out=v)
            u = torch.nn.functional.normalize(torch.mv(weight_mat, v), dim=0, eps=eps, out=u)
    sigma = torch.dot(u, torch.mv(weight_mat, v))
    return u, v, sigma


def spectral_norm_weight(weight, u, v, dim=0, n_power_iterations=1, eps=1e-12):
    """(weight / sigma, u, v, sigma), as torch's spectral-norm forward pre-hook computes it."""
    dim = dim % weight.dim()
    u, v, sigma = spectral_norm_power_iteration(_sn_matrix(weight, dim), u, v, n_power_iterations, eps)
    return weight / sigma, u, v, sigma.detach()


def spectral_norm_weight_multi(weights, us, vs, dims, n_power_iterations=1, eps=1e-12):
    """spectral_norm_weight layer by layer: (weights_sn, us, vs, sigmas [L])."""
    outs = [spectral_norm_weight(w, u, v, d, n_power_iterations, eps) for w, u, v, d in zip(weights, us, vs, dims)]
    return ([o[0] for o in outs], [o[1] for o in outs], [o[2] for o in outs], torch.stack([o[3] for o in outs]))


# ---- soft-label projection -------------------------------------------------------------------------

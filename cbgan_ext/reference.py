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

import torch.nn.functional as F  # noqa: E402


def diff_augment(x, policy="color,translation,cutout", params=None, generator=None, translation_ratio=0.125,
                 cutout_ratio=0.5):
    """DiffAugment as DiffAugment_pytorch.py computes it: one eager op per step, index tensors for the
    translation and the cutout. Without params each step draws its own numbers with the reference's torch
    calls, in the reference's order; with params (anything with .color [n, B, 3], .translation [n, B, 2],
    .cutout [n, B, 2], .cutout_size, one row per occurrence of a group) those are used instead."""
    words = [w.strip() for w in policy.split(",")] if isinstance(policy, str) else list(policy)
    words = [w for w in words if w]
    used = {"color": 0, "translation": 0, "cutout": 0}
    B, _, H, W = x.shape

    def take(group):
        k = used[group]
        used[group] += 1
        return k

    def draw(f):
        return torch.rand(B, 1, 1, 1, dtype=x.dtype, device=x.device, generator=generator) if f is None else f

    for w in words:
        if w == "color":
            f = [None] * 3
            if params is not None:
                c = params.color[take(w)].to(x.dtype)
                f = [c[:, k].view(B, 1, 1, 1) for k in range(3)]
            x = x + (draw(None) - 0.5 if f[0] is None else f[0])
            ch_mean = x.mean(dim=1, keepdim=True)
            x = (x - ch_mean) * (draw(None) * 2 if f[1] is None else f[1]) + ch_mean
            mean = x.mean(dim=[1, 2, 3], keepdim=True)
            x = (x - mean) * (draw(None) + 0.5 if f[2] is None else f[2]) + mean
        elif w == "translation":
            if params is None:
                s_h, s_w = int(H * translation_ratio + 0.5), int(W * translation_ratio + 0.5)
                t_h = torch.randint(-s_h, s_h + 1, size=[B, 1, 1], device=x.device, generator=generator)
                t_w = torch.randint(-s_w, s_w + 1, size=[B, 1, 1], device=x.device, generator=generator)
            else:
                t = params.translation[take(w)]
                t_h, t_w = t[:, 0].view(B, 1, 1), t[:, 1].view(B, 1, 1)
            gb, gi, gj = torch.meshgrid(torch.arange(B, device=x.device), torch.arange(H, device=x.device),
                                        torch.arange(W, device=x.device), indexing="ij")
            # one ring of zero padding; every out-of-range read lands on it
            gi = torch.clamp(gi + t_h + 1, 0, H + 1)
            gj = torch.clamp(gj + t_w + 1, 0, W + 1)
            padded = F.pad(x, [1, 1, 1, 1])
            x = padded.permute(0, 2, 3, 1).contiguous()[gb, gi, gj].permute(0, 3, 1, 2)
        elif w == "cutout":
            if params is None:
                S_h, S_w = int(H * cutout_ratio + 0.5), int(W * cutout_ratio + 0.5)
                o_h = torch.randint(0, H + (1 - S_h % 2), size=[B, 1, 1], device=x.device, generator=generator)
                o_w = torch.randint(0, W + (1 - S_w % 2), size=[B, 1, 1], device=x.device, generator=generator)
            else:
                S_h, S_w = params.cutout_size
                o = params.cutout[take(w)]
                o_h, o_w = o[:, 0].view(B, 1, 1), o[:, 1].view(B, 1, 1)
            gb, gi, gj = torch.meshgrid(torch.arange(B, device=x.device), torch.arange(S_h, device=x.device),
                                        torch.arange(S_w, device=x.device), indexing="ij")
            gi = torch.clamp(gi + o_h - S_h // 2, min=0, max=H - 1)
            gj = torch.clamp(gj + o_w - S_w // 2, min=0, max=W - 1)
            mask = torch.ones(B, H, W, dtype=x.dtype, device=x.device)
            mask[gb, gi, gj] = 0
            x = x * mask.unsqueeze(1)
        else:
            raise ValueError(f"diff_augment: unknown policy word {w!r}")
    return x


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


def soft_label_projection(h, class_embedding, y):
    """out_b = Σ_k y_bk ⟨h_b, E_k⟩ as projection discriminators write it: ((y @ E) * h).sum(1) for soft
    labels [B, K] (Softlabel-GAN's bias-free linear map of y), and the embedding gather
    (E[y] * h).sum(1) for hard labels [B] int64 (the cGAN projection)."""
    if not y.is_floating_point():
        return (class_embedding[y] * h).sum(1)
    return ((y @ class_embedding) * h).sum(1)

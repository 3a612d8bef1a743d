"""soft_label_projection: the projection discriminator's ⟨h_b, E y_b⟩ for soft or hard labels, fused."""
import torch

from ._checks import same_device

_OP = "soft_label_projection"
_BACKWARD = "_soft_label_projection_backward"


@torch.library.register_fake("cbgan_ext::soft_label_projection_forward")
def _fake_forward(h, class_embedding, y):
    same_device(_OP, h=h, class_embedding=class_embedding, y=y)
    torch._check(h.dim() == 2, lambda: f"{_OP}: h must be 2-D [B, L], got shape {tuple(h.shape)}")
    torch._check(h.dtype.is_floating_point, lambda: f"{_OP}: h must be floating point, got {h.dtype}")
    torch._check(class_embedding.dim() == 2 and class_embedding.shape[1] == h.shape[1],
                 lambda: f"{_OP}: class_embedding must be [K, L] with L = {h.shape[1]}, got "
                         f"{tuple(class_embedding.shape)}")
    torch._check(class_embedding.dtype == h.dtype,
                 lambda: f"{_OP}: class_embedding must have h's dtype {h.dtype}, got {class_embedding.dtype}")
    B, L = h.shape
    if y.dtype.is_floating_point:
        torch._check(y.dim() == 2 and y.shape[0] == B and y.shape[1] == class_embedding.shape[0],
                     lambda: f"{_OP}: soft labels y must be [B, K], got {tuple(y.shape)}")
        torch._check(y.dtype == h.dtype, lambda: f"{_OP}: soft labels y must have h's dtype {h.dtype}, got {y.dtype}")
        proj = h.new_empty((B, L))
    else:
        torch._check(y.dtype == torch.int64 and y.dim() == 1 and y.shape[0] == B,
                     lambda: f"{_OP}: hard labels y must be [B] int64, got {tuple(y.shape)} {y.dtype}")
        proj = h.new_empty((0,))
    return h.new_empty((B,)), proj


@torch.library.register_fake("cbgan_ext::_soft_label_projection_backward")
def _fake_backward(grad_out, h, class_embedding, y, proj, output_mask):
    same_device(_BACKWARD, h=h, grad_out=grad_out, class_embedding=class_embedding, y=y, proj=proj)
    torch._check(grad_out.dim() == 1 and grad_out.shape[0] == h.shape[0],
                 lambda: f"{_BACKWARD}: grad_out must be [B] = [{h.shape[0]}], got shape {tuple(grad_out.shape)}")
    def out(needed, shape):
        return h.new_empty(shape if needed else (0,))
    return (out(output_mask[0], h.shape), out(output_mask[1], class_embedding.shape),
            out(output_mask[2] and y.dtype.is_floating_point, y.shape))


# Autograd is registered in C++ (csrc/autograd.cpp): no Python on the training hot path.


def soft_label_projection(h: torch.Tensor, class_embedding: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """out_b = Σ_k y_bk ⟨h_b, E_k⟩: the projection term of a projection discriminator.

    h: [B, L] features; class_embedding E: [K, L], one row per class (any strides: ``linear.weight.t()``
    of a bias-free ``Linear(K, L)`` is read without a copy where it matters); y: soft labels [B, K] of h's
    dtype (Softlabel-GAN) or hard labels [B] int64 (cGAN projection ⟨h_b, E_{y_b}⟩, checked to lie in
    [0, K)). Returns [B] in h's dtype, accumulated in float32 for half/bfloat16 (float64 for float64).
    Differentiable with respect to h, class_embedding and soft y.

    On CUDA the hard-label range check reads the labels' min/max back to the host (one synchronisation
    per forward; skipped during CUDA graph capture, where an out-of-range label yields NaN instead).
    """
    if not all(isinstance(t, torch.Tensor) for t in (h, class_embedding, y)):
        raise TypeError(f"{_OP}: h, class_embedding and y must be tensors, got "
                        f"{type(h).__name__}, {type(class_embedding).__name__} and {type(y).__name__}")
    return torch.ops.cbgan_ext.soft_label_projection_forward(h, class_embedding, y)[0]

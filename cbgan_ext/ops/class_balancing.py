"""class_balancing_loss: CBGAN's regularizer Σ_k w_k p̂_k log p̂_k (Eq. 7), fused forward and backward."""
import torch

from ._checks import same_device

_OP = "class_balancing_loss"


def _acc_dtype(dtype):
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


@torch.library.register_fake("cbgan_ext::class_balancing_loss_forward")
def _fake_forward(logits, class_weights):
    same_device(_OP, logits=logits, class_weights=class_weights)
    torch._check(logits.dim() == 2, lambda: f"{_OP}: logits must be 2-D [B, K], got shape {tuple(logits.shape)}")
    torch._check(logits.dtype.is_floating_point, lambda: f"{_OP}: logits must be floating point, got {logits.dtype}")
    torch._check(class_weights.dim() == 1 and class_weights.shape[0] == logits.shape[1],
                 lambda: f"{_OP}: class_weights must be [K] = [{logits.shape[1]}], got {tuple(class_weights.shape)}")
    acc = _acc_dtype(logits.dtype)
    K = logits.shape[1]
    return (logits.new_empty((), dtype=acc), logits.new_empty((K,), dtype=torch.int64),
            torch.empty_like(logits, memory_format=torch.contiguous_format), logits.new_empty((K,), dtype=acc))


@torch.library.register_fake("cbgan_ext::_class_balancing_loss_backward")
def _fake_backward(grad_loss, probs, class_weights, mean_probs):
    op = "_class_balancing_loss_backward"
    same_device(op, probs=probs, grad_loss=grad_loss, class_weights=class_weights, mean_probs=mean_probs)
    torch._check(probs.dim() == 2, lambda: f"{op}: probs must be [B, K], got shape {tuple(probs.shape)}")
    K = probs.shape[1]
    torch._check(class_weights.dim() == 1 and class_weights.shape[0] == K,
                 lambda: f"{op}: class_weights must be [K] = [{K}], got shape {tuple(class_weights.shape)}")
    torch._check(mean_probs.dim() == 1 and mean_probs.shape[0] == K and mean_probs.dtype == _acc_dtype(probs.dtype),
                 lambda: f"{op}: mean_probs must be the forward's [K] = [{K}] {_acc_dtype(probs.dtype)} tensor, got "
                         f"shape {tuple(mean_probs.shape)} and dtype {mean_probs.dtype}")
    torch._check(grad_loss.numel() == 1, lambda: f"{op}: grad_loss must have one element")
    return torch.empty_like(probs)


# Autograd is registered in C++ (csrc/autograd.cpp): no Python on the training hot path.
# C++ composites of the forward that return the loss alone, or the loss and counts.
_loss_only = torch.ops.cbgan_ext.class_balancing_loss.default
_loss_and_counts = torch.ops.cbgan_ext.class_balancing_loss_with_counts.default


def _check(logits, class_weights):
    if not isinstance(logits, torch.Tensor) or not isinstance(class_weights, torch.Tensor):
        raise TypeError(f"{_OP}: logits and class_weights must be tensors, got "
                        f"{type(logits).__name__} and {type(class_weights).__name__}")


def class_balancing_loss(logits: torch.Tensor, class_weights: torch.Tensor) -> torch.Tensor:
    """Σ_k w_k p̂_k log p̂_k with p̂ = batch mean of softmax(logits, dim=1) (CBGAN Eq. 7).

    logits: [B, K] float16/bfloat16/float32/float64; class_weights: [K], treated as constants.
    Returns a 0-dim tensor (float32 for half inputs, which accumulate in float32), differentiable
    with respect to logits. 0·log 0 is taken as 0, so the loss and its gradient stay finite.
    """
    _check(logits, class_weights)
    return _loss_only(logits, class_weights)


def class_balancing_loss_with_counts(logits: torch.Tensor, class_weights: torch.Tensor):
    """(loss, counts): the loss above and, from the same pass, the per-class argmax counts [K] int64."""
    _check(logits, class_weights)
    return _loss_and_counts(logits, class_weights)

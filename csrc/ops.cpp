// Every op schema of the cbgan_ext library: the single source of truth. Backends register kernels with
// TORCH_LIBRARY_IMPL(cbgan_ext, CPU|CUDA, m) in csrc/cpu/<family>.cpp and csrc/cuda/<family>.cu; Python
// adds fake (meta) kernels and autograd in cbgan_ext/ops/. Backward kernels are ops of their own.
#include <torch/library.h>

TORCH_LIBRARY(cbgan_ext, m) {
  // ---- class balancing regularizer (CBGAN Eq. 7) -------------------------------------------------
  // Returns (loss [], counts [K] int64, probs [B, K] softmax saved for backward, mean_probs [K]).
  // loss and mean_probs are float32 for half/bfloat16 logits, else the logits' dtype.
  m.def("class_balancing_loss_forward(Tensor logits, Tensor class_weights) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("_class_balancing_loss_backward(Tensor grad_loss, Tensor probs, Tensor class_weights, Tensor mean_probs) -> Tensor");

  // ---- diff augment ------------------------------------------------------------------------------

  // ---- spectral norm -----------------------------------------------------------------------------

  // ---- soft-label projection ---------------------------------------------------------------------
  // out_b = Σ_k y_bk ⟨h_b, E_k⟩; h [B, L], class_embedding E [K, L], y soft [B, K] (h's dtype) or hard [B]
  // int64. Returns (out [B] in h's dtype, proj): proj = y E [B, L] saved for backward (soft y), or an empty
  // [0] tensor for hard y (E_{y_b} is a row read then, nothing to save).
  m.def("soft_label_projection_forward(Tensor h, Tensor class_embedding, Tensor y) -> (Tensor, Tensor)");
  // Returns (dh [B, L], dE [K, L], dy [B, K]), each contiguous; an entry whose output_mask is false (dy for
  // hard y always) is an empty [0] tensor.
  m.def("_soft_label_projection_backward(Tensor grad_out, Tensor h, Tensor class_embedding, Tensor y, Tensor proj, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
}

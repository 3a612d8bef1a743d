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
  // program: policy groups in order, 0 = color, 1 = translation, 2 = cutout. Per-sample parameters, one row
  // per occurrence of a group: color [n_color, B, 3] (brightness offset, saturation factor, contrast factor),
  // translation [n_trans, B, 2] int64 (t_h, t_w), cutout [n_cut, B, 2] int64 centres (o_h, o_w);
  // cutout_size = [S_h, S_w]. The output has x's memory format. The backward is the adjoint map applied to grad.
  m.def("diff_augment(Tensor x, int[] program, Tensor color, Tensor translation, Tensor cutout, int[] cutout_size) -> Tensor");
  m.def("_diff_augment_backward(Tensor grad, int[] program, Tensor color, Tensor translation, Tensor cutout, int[] cutout_size) -> Tensor");

  // ---- spectral norm -----------------------------------------------------------------------------

  // ---- soft-label projection ---------------------------------------------------------------------
}

// Every op schema of the cbgan_ext library: the single source of truth. Backends register kernels with
// TORCH_LIBRARY_IMPL(cbgan_ext, CPU|CUDA, m) in csrc/cpu/<family>.cpp and csrc/cuda/<family>.cu, autograd in
// csrc/autograd.cpp; Python adds fake (meta) kernels in cbgan_ext/ops/ (and _diff_augment_backward's double
// backward). Backward kernels are ops of their own.
#include <torch/library.h>

TORCH_LIBRARY(cbgan_ext, m) {
  // ---- class balancing regularizer (CBGAN Eq. 7) -------------------------------------------------
  // Returns (loss [], counts [K] int64, probs [B, K] softmax saved for backward, mean_probs [K]).
  // loss and mean_probs are float32 for half/bfloat16 logits, else the logits' dtype.
  m.def("class_balancing_loss_forward(Tensor logits, Tensor class_weights) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("_class_balancing_loss_backward(Tensor grad_loss, Tensor probs, Tensor class_weights, Tensor mean_probs) -> Tensor");
  // The loss alone, and (loss, counts): composites over class_balancing_loss_forward that hand Python one or two
  // tensors instead of four.
  m.def("class_balancing_loss(Tensor logits, Tensor class_weights) -> Tensor");
  m.def("class_balancing_loss_with_counts(Tensor logits, Tensor class_weights) -> (Tensor, Tensor)");

  // ---- diff augment ------------------------------------------------------------------------------
  // program: policy groups in order, 0 = color, 1 = translation, 2 = cutout. Per-sample parameters, one row
  // per occurrence of a group: color [n_color, B, 3] (brightness offset, saturation factor, contrast factor),
  // translation [n_trans, B, 2] int64 (t_h, t_w), cutout [n_cut, B, 2] int64 centres (o_h, o_w);
  // cutout_size = [S_h, S_w]. The output has x's memory format. The backward is the adjoint map applied to grad.
  m.def("diff_augment(Tensor x, int[] program, Tensor color, Tensor translation, Tensor cutout, int[] cutout_size) -> Tensor");
  m.def("_diff_augment_backward(Tensor grad, int[] program, Tensor color, Tensor translation, Tensor cutout, int[] cutout_size) -> Tensor");

  // ---- spectral norm -----------------------------------------------------------------------------
  // torch.nn.utils.spectral_norm semantics (v = normalize(W^T u), then u = normalize(W v), sigma = u^T W v).
  // weight is viewed as the matrix W [size(dim), numel / size(dim)] torch builds by permuting dim to the
  // front; u [size(dim)] and v [numel / size(dim)] have the weight's dtype. Outputs are new tensors (u, v are
  // never written in place: the modules copy them into their buffers). sigma is 0-dim, weight's dtype.
  m.def("spectral_norm_power_iteration(Tensor weight_mat, Tensor u, Tensor v, int n_power_iterations, float eps) -> (Tensor, Tensor, Tensor)");
  // Power iteration and W / sigma in one launch: (weight_sn (contiguous), u, v, sigma).
  // n_power_iterations = 0 is eval mode: sigma = u^T W v with the given u, v.
  m.def("spectral_norm_weight(Tensor weight, Tensor u, Tensor v, int dim, int n_power_iterations, float eps) -> (Tensor, Tensor, Tensor, Tensor)");
  // grad_weight = grad_weight_sn / sigma - (<grad_weight_sn, weight> / sigma^2) u v^T  (u, v constants).
  m.def("_spectral_norm_weight_backward(Tensor grad_weight_sn, Tensor weight, Tensor u, Tensor v, Tensor sigma, int dim) -> Tensor");
  // All layers of a model in one launch (multi-tensor): same dtype and device for every tensor; returns
  // (weight_sn list, u list, v list, sigmas [L]). Backward: Tensor?[] grads, None for layers unused.
  m.def("spectral_norm_weight_multi(Tensor[] weights, Tensor[] us, Tensor[] vs, int[] dims, int n_power_iterations, float eps) -> (Tensor[], Tensor[], Tensor[], Tensor)");
  m.def("_spectral_norm_weight_multi_backward(Tensor?[] grad_weights_sn, Tensor[] weights, Tensor[] us, Tensor[] vs, Tensor sigmas, int[] dims) -> Tensor[]");

  // ---- soft-label projection ---------------------------------------------------------------------
  // out_b = Σ_k y_bk ⟨h_b, E_k⟩; h [B, L], class_embedding E [K, L], y soft [B, K] (h's dtype) or hard [B]
  // int64. Returns (out [B] in h's dtype, proj): proj = y E [B, L] saved for backward (soft y), or an empty
  // [0] tensor for hard y (E_{y_b} is a row read then, nothing to save).
  m.def("soft_label_projection_forward(Tensor h, Tensor class_embedding, Tensor y) -> (Tensor, Tensor)");
  // Returns (dh [B, L], dE [K, L], dy [B, K]), each contiguous; an entry whose output_mask is false (dy for
  // hard y always) is an empty [0] tensor.
  m.def("_soft_label_projection_backward(Tensor grad_out, Tensor h, Tensor class_embedding, Tensor y, Tensor proj, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
}

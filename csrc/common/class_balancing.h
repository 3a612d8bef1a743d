// Class-balancing regularizer (CBGAN, Rangwani et al. 2021, Eq. 7), math shared by CPU and CUDA.
//
//   p_b   = softmax(z_b)                 z: logits [B, K], row-major contiguous
//   p̂_k   = (1/B) Σ_b p_bk               mean_probs [K], accumulated in opmath (float for half inputs)
//   L     = Σ_k w_k p̂_k log p̂_k          w: class_weights [K], constants
//   c_k   = #{b : argmax_j z_bj = k}     counts [K] int64 (Eq. 5's c^t), first maximum wins as torch.argmax
//
// Backward: with g_k = dL/dp̂_k = w_k (log p̂_k + 1),
//   dL/dz_bj = (1/B) p_bj (g_j − Σ_k p_bk g_k).
// When p̂_k underflows to 0 every p_bk is 0 too, so g_k is set to 0 there: 0·log 0 = 0 and the gradient
// stays finite (the limit of p log p). Only an exact 0 takes that branch: a NaN p̂ (a NaN or ±Inf logit makes
// its row's softmax NaN, as torch.softmax does) gives a NaN loss and NaN gradients, as the reference does,
// instead of silently switching the regularizer off.
#pragma once

#include "macros.h"

#include <ATen/OpMathType.h>

#include <cmath>

namespace cbgan_ext {

// The CPU backward written into the saved probs (csrc/cpu/class_balancing.cpp), for the autograd node when the
// graph is being released: cb_cpu_probs_in_place says whether probs is a contiguous CPU buffer held by nothing
// but the other_refs handles the caller knows of (and the kernel's own reuse slot).
bool cb_cpu_probs_in_place(const at::Tensor& probs, int64_t other_refs);
bool cb_cpu_is_reused(const at::Tensor& probs);  // the kernel's reuse slot on this thread
at::Tensor cb_cpu_backward_in_place(const at::Tensor& grad_loss, at::Tensor probs, const at::Tensor& w,
                                    const at::Tensor& mean_probs);

// Rows per partial sum. Partial column sums are reduced in a fixed order on both backends, so the result
// does not depend on the thread count (deterministic, and CPU/CUDA agree to rounding).
constexpr int64_t kCBRowsPerChunk = 32;

template <typename acc_t>
HOST_DEVICE acc_t xlogx(acc_t p) {
  return p == acc_t(0) ? acc_t(0) : p * log(p);
}

template <typename acc_t>
HOST_DEVICE acc_t cb_grad_coeff(acc_t grad, acc_t w, acc_t mean_p) {
  return mean_p == acc_t(0) ? acc_t(0) : grad * w * (log(mean_p) + acc_t(1));
}

// Host-side argument checks, shared by both backends.
inline void check_cb_inputs(const at::Tensor& logits, const at::Tensor& w) {
  constexpr const char* op = "class_balancing_loss";
  check_same_device(op, logits, "logits", w, "class_weights");
  TORCH_CHECK(logits.dim() == 2, op, ": logits must be 2-D [B, K], got shape ", logits.sizes());
  check_floating(op, logits, "logits");
  check_floating(op, w, "class_weights");
  TORCH_CHECK(logits.size(0) > 0, op, ": empty batch (B = 0); the batch mean of softmax is undefined");
  TORCH_CHECK(logits.size(1) > 0, op, ": logits must have at least one class, got shape ", logits.sizes());
  TORCH_CHECK(w.dim() == 1 && w.size(0) == logits.size(1), op, ": class_weights must be [K] = [",
              logits.size(1), "] to match logits ", logits.sizes(), ", got shape ", w.sizes());
}

// The backward op is public through torch.ops: it reads mean_probs[k] and class_weights[k] for every column
// of probs, so their sizes are checked as strictly as the forward's.
inline void check_cb_backward_inputs(const at::Tensor& grad_loss, const at::Tensor& probs, const at::Tensor& w,
                                     const at::Tensor& mean_probs) {
  constexpr const char* op = "_class_balancing_loss_backward";
  check_same_device(op, probs, "probs", grad_loss, "grad_loss");
  check_same_device(op, probs, "probs", w, "class_weights");
  check_same_device(op, probs, "probs", mean_probs, "mean_probs");
  TORCH_CHECK(probs.dim() == 2 && probs.size(0) > 0 && probs.size(1) > 0, op,
              ": probs must be the forward's softmax [B, K] with B, K > 0, got shape ", probs.sizes());
  check_floating(op, probs, "probs");
  check_floating(op, grad_loss, "grad_loss");
  check_floating(op, w, "class_weights");
  TORCH_CHECK(grad_loss.numel() == 1, op, ": grad_loss must have one element, got shape ", grad_loss.sizes());
  const int64_t K = probs.size(1);
  TORCH_CHECK(w.dim() == 1 && w.size(0) == K, op, ": class_weights must be [K] = [", K, "], got shape ", w.sizes());
  const auto acc = at::toOpMathType(probs.scalar_type());
  TORCH_CHECK(mean_probs.dim() == 1 && mean_probs.size(0) == K && mean_probs.scalar_type() == acc, op,
              ": mean_probs must be the forward's [K] = [", K, "] ", acc, " tensor, got shape ", mean_probs.sizes(),
              " and dtype ", mean_probs.scalar_type());
}

}  // namespace cbgan_ext

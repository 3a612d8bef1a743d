// Soft-label projection (projection discriminator, Miyato & Koyama 2018; Softlabel-GAN, Katsumata et al.
// 2024, Fig. 3: D(x, y) = φ(x)ᵀ V y + ψ(φ(x)), here with E = Vᵀ).
//
//   out_b = Σ_k y_bk ⟨h_b, E_k⟩ = ⟨h_b, P_b⟩,   P = y E
//
//   h [B, L] features, E [K, L] class embedding (any strides: Vᵀ of a Linear weight is a view),
//   y soft labels [B, K] (h's dtype) or hard labels [B] int64 (then P_b = E_{y_b}, the cGAN projection).
//   out [B] in h's dtype, accumulated in opmath (float for half/bfloat16).
//
// Backward, g = dL/dout [B]:
//   dh = g ⊙ P            (P saved by the forward for soft labels: the same [B, L] the eager graph keeps)
//   dE = (y ⊙ g)ᵀ h       (hard labels: dE_k = Σ_{b: y_b = k} g_b h_b)
//   dy = g ⊙ (h Eᵀ)       (soft labels only)
// Products: the forward's y E plus, in the backward, h Eᵀ only when dy is needed and (y ⊙ g)ᵀ h only when
// dE is: the same count as eager autograd, so for large K the same BLAS calls bound both.
#pragma once

#include "macros.h"

#include <cmath>
#include <limits>

namespace cbgan_ext {

// CPU, float: up to this many classes a direct fused loop beats the BLAS calls (their per-call set-up,
// packing and the extra passes over [B, L] dominate when K is small); above it the products go to at::mm.
constexpr int64_t kProjFusedMaxK = 32;

// The CPU backward with dh written into the saved proj (csrc/cpu/projection.cpp), for the autograd node when the
// graph is being released: proj_cpu_in_place says whether proj is a contiguous CPU [B, L] buffer held by nothing
// but the other_refs handles the caller knows of (and the kernel's own reuse slot).
bool proj_cpu_in_place(const at::Tensor& proj, const at::Tensor& h, int64_t other_refs);
bool proj_cpu_is_reused(const at::Tensor& proj);  // the kernel's reuse slot on this thread
std::tuple<at::Tensor, at::Tensor, at::Tensor> proj_cpu_backward_in_place(const at::Tensor& grad_out,
                                                                          const at::Tensor& h, const at::Tensor& E,
                                                                          const at::Tensor& y, at::Tensor proj,
                                                                          std::array<bool, 3> mask);

inline bool proj_is_hard(const at::Tensor& y) {
  return !at::isFloatingType(y.scalar_type());
}

// A label outside [0, K) yields NaN (and no gradient) instead of an out-of-bounds read: the host checks
// before launching make this unreachable except where they are skipped (CUDA graph capture).
HOST_DEVICE bool proj_label_ok(int64_t label, int64_t K) {
  return label >= 0 && label < K;
}

// Host-side argument checks, shared by both backends; `op` is the name the messages use (the public
// soft_label_projection for the forward, the registered _soft_label_projection_backward for the backward).
inline void check_proj_inputs(const at::Tensor& h, const at::Tensor& E, const at::Tensor& y,
                              const char* op = "soft_label_projection") {
  check_same_device(op, h, "h", E, "class_embedding");
  check_same_device(op, h, "h", y, "y");
  TORCH_CHECK(h.dim() == 2, op, ": h must be 2-D [B, L], got shape ", h.sizes());
  check_floating(op, h, "h");
  TORCH_CHECK(E.dim() == 2, op, ": class_embedding must be 2-D [K, L], got shape ", E.sizes());
  TORCH_CHECK(E.size(1) == h.size(1), op, ": class_embedding must be [K, L] with L = ", h.size(1),
              " (h's feature size), got shape ", E.sizes());
  TORCH_CHECK(E.size(0) > 0, op, ": class_embedding must have at least one class row, got shape ", E.sizes());
  TORCH_CHECK(E.scalar_type() == h.scalar_type(), op, ": class_embedding must have h's dtype ", h.scalar_type(),
              ", got ", E.scalar_type());
  const int64_t B = h.size(0), K = E.size(0);
  if (proj_is_hard(y)) {
    TORCH_CHECK(y.scalar_type() == at::kLong, op, ": y must be soft labels [B, K] (h's dtype) or hard labels [B] ",
                "int64, got dtype ", y.scalar_type());
    TORCH_CHECK(y.dim() == 1 && y.size(0) == B, op, ": hard labels y must be [B] = [", B, "], got shape ", y.sizes());
  } else {
    TORCH_CHECK(y.dim() == 2 && y.size(0) == B && y.size(1) == K, op, ": soft labels y must be [B, K] = [", B, ", ",
                K, "], got shape ", y.sizes());
    TORCH_CHECK(y.scalar_type() == h.scalar_type(), op, ": soft labels y must have h's dtype ", h.scalar_type(),
                ", got ", y.scalar_type());
  }
}

constexpr const char* kProjBackwardOp = "_soft_label_projection_backward";

inline void check_proj_backward_inputs(const at::Tensor& grad_out, const at::Tensor& h, const at::Tensor& E,
                                       const at::Tensor& y, const at::Tensor& proj) {
  constexpr const char* op = kProjBackwardOp;
  check_same_device(op, h, "h", grad_out, "grad_out");
  check_same_device(op, h, "h", proj, "proj");
  check_proj_inputs(h, E, y, op);
  TORCH_CHECK(grad_out.dim() == 1 && grad_out.size(0) == h.size(0), op, ": grad_out must be [B] = [", h.size(0),
              "], got shape ", grad_out.sizes());
  check_floating(op, grad_out, "grad_out");
  if (!proj_is_hard(y)) {
    TORCH_CHECK(proj.sizes() == h.sizes() && proj.scalar_type() == h.scalar_type(), op,
                ": proj must be the forward's y E, [B, L] = ", h.sizes(), " of h's dtype, got shape ", proj.sizes(),
                " and dtype ", proj.scalar_type());
  }
}

inline void check_label_range(int64_t lo, int64_t hi, int64_t K, const char* op = "soft_label_projection") {
  TORCH_CHECK(lo >= 0 && hi < K, op, ": hard label index out of range [0, ", K, "): labels span [", lo, ", ", hi,
              "]");
}

}  // namespace cbgan_ext

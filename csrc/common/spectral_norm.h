// Spectral normalization (Miyato et al. 2018) with the semantics of torch.nn.utils.spectral_norm, math and
// argument checks shared by the CPU and CUDA backends.
//
// Matrix view. torch permutes `dim` to the front and flattens: W [H, N] with H = size(dim). We never copy:
// a contiguous weight is read as P blocks [H, Q] with P = prod(sizes before dim), Q = prod(sizes after dim),
// N = P·Q, so that
//     W[h, j] = weight[p, h, q]   with j = p·Q + q,   at offset (p·H + h)·Q + q.
// (dim = 0: P = 1, the usual row-major [out, in·kh·kw]; ConvTranspose dim = 1: P = in_channels.)
//
// One power iteration (torch order, v first):
//     s = Wᵀu,  v = s / max(‖s‖, eps),  t = W v,  u = t / max(‖t‖, eps),  σ = uᵀ t  (= uᵀ W v).
// σ reuses t, so an iteration reads W twice; W_sn = W / σ is one more read and one write.
// n_power_iterations = 0 (eval): t = W v with the stored v, σ = uᵀ t.
// u and v are rounded to the weight's dtype after each normalisation, as torch stores them; all sums are in
// at::opmath_type (float for half/bfloat16) and in a fixed order, so results do not depend on the thread
// count and CPU/CUDA agree to rounding.
//
// Backward (u, v constants, as in torch): with G = dL/dW_sn,
//     dL/dW = G / σ − (⟨G, W⟩ / σ²) u vᵀ.
#pragma once

#include "macros.h"

#include <cmath>
#include <vector>

namespace cbgan_ext {

// Divisor of F.normalize: x / max(‖x‖₂, eps).
template <typename acc_t>
HOST_DEVICE acc_t sn_norm_denom(acc_t sumsq, acc_t eps) {
  const acc_t n = sqrt(sumsq);
  return n > eps ? n : eps;
}

struct SNShape {
  int64_t P, H, Q;
  int64_t N() const { return P * Q; }
};

inline SNShape sn_shape(const at::Tensor& weight, int64_t dim) {
  SNShape s{1, weight.size(dim), 1};
  for (int64_t d = 0; d < dim; ++d) s.P *= weight.size(d);
  for (int64_t d = dim + 1; d < weight.dim(); ++d) s.Q *= weight.size(d);
  return s;
}

// Host-side checks shared by both backends. Returns dim wrapped to [0, weight.dim()).
inline int64_t check_sn_layer(const char* op, const at::Tensor& weight, const at::Tensor& u, const at::Tensor& v,
                              int64_t dim) {
  TORCH_CHECK(weight.dim() >= 1, op, ": weight must have at least 1 dimension, got a 0-dim tensor");
  check_floating(op, weight, "weight");
  TORCH_CHECK(dim >= -weight.dim() && dim < weight.dim(), op, ": dim must be in [", -weight.dim(), ", ",
              weight.dim(), ") for a weight of shape ", weight.sizes(), ", got ", dim);
  if (dim < 0) dim += weight.dim();
  TORCH_CHECK(weight.numel() > 0, op, ": weight is empty (shape ", weight.sizes(),
              "); its spectral norm is undefined");
  const SNShape s = sn_shape(weight, dim);
  TORCH_CHECK(u.dim() == 1 && u.size(0) == s.H, op, ": u must be 1-D of size ", s.H, " (weight.size(", dim,
              ")), got shape ", u.sizes());
  TORCH_CHECK(v.dim() == 1 && v.size(0) == s.N(), op, ": v must be 1-D of size ", s.N(),
              " (weight.numel() / weight.size(", dim, ")), got shape ", v.sizes());
  TORCH_CHECK(u.scalar_type() == weight.scalar_type() && v.scalar_type() == weight.scalar_type(), op,
              ": u and v must have the weight's dtype ", weight.scalar_type(), ", got ", u.scalar_type(), " and ",
              v.scalar_type());
  check_same_device(op, weight, "weight", u, "u");
  check_same_device(op, weight, "weight", v, "v");
  return dim;
}

inline void check_sn_iter(const char* op, int64_t n_power_iterations, double eps) {
  TORCH_CHECK(n_power_iterations >= 0, op, ": n_power_iterations must be >= 0, got ", n_power_iterations);
  TORCH_CHECK(eps >= 0 && std::isfinite(eps), op, ": eps must be finite and >= 0, got ", eps);
}

inline std::vector<int64_t> check_sn_multi(const char* op, at::TensorList weights, at::TensorList us,
                                           at::TensorList vs, at::IntArrayRef dims) {
  const size_t L = weights.size();
  TORCH_CHECK(L > 0, op, ": expected at least one weight, got an empty list");
  TORCH_CHECK(us.size() == L && vs.size() == L && dims.size() == L, op,
              ": weights, us, vs and dims must have the same length, got ", L, ", ", us.size(), ", ", vs.size(),
              " and ", dims.size());
  std::vector<int64_t> out(L);
  for (size_t l = 0; l < L; ++l) {
    out[l] = check_sn_layer(op, weights[l], us[l], vs[l], dims[l]);
    TORCH_CHECK(weights[l].scalar_type() == weights[0].scalar_type(), op,
                ": all weights must have one dtype, got ", weights[0].scalar_type(), " and ",
                weights[l].scalar_type(), " (layer ", l, ")");
    check_same_device(op, weights[0], "weights[0]", weights[l], "another weight");
  }
  return out;
}

inline void check_sn_grad(const char* op, const at::Tensor& grad, const at::Tensor& weight) {
  check_same_device(op, weight, "weight", grad, "grad");
  TORCH_CHECK(grad.sizes() == weight.sizes(), op, ": grad must have the weight's shape ", weight.sizes(), ", got ",
              grad.sizes());
  TORCH_CHECK(grad.scalar_type() == weight.scalar_type(), op, ": grad must have the weight's dtype ",
              weight.scalar_type(), ", got ", grad.scalar_type());
}

constexpr const char* kSNBackwardOp = "_spectral_norm_weight_backward";
constexpr const char* kSNMultiBackwardOp = "_spectral_norm_weight_multi_backward";

// The backward ops' checks (both backends): the forward's layer checks, the gradient's shape, dtype and
// device, and σ's. Returns dim wrapped.
inline int64_t check_sn_backward(const at::Tensor& grad, const at::Tensor& weight, const at::Tensor& u,
                                 const at::Tensor& v, const at::Tensor& sigma, int64_t dim) {
  constexpr const char* op = kSNBackwardOp;
  check_same_device(op, weight, "weight", sigma, "sigma");
  dim = check_sn_layer(op, weight, u, v, dim);
  check_sn_grad(op, grad, weight);
  TORCH_CHECK(sigma.numel() == 1, op, ": sigma must have one element, got shape ", sigma.sizes());
  check_floating(op, sigma, "sigma");
  return dim;
}

// Returns the wrapped dims; grads gets the defined gradients (an undefined tensor for a layer without one).
inline std::vector<int64_t> check_sn_multi_backward(const c10::List<std::optional<at::Tensor>>& grads_in,
                                                    at::TensorList weights, at::TensorList us, at::TensorList vs,
                                                    const at::Tensor& sigmas, at::IntArrayRef dims_in,
                                                    std::vector<at::Tensor>* grads) {
  constexpr const char* op = kSNMultiBackwardOp;
  const std::vector<int64_t> dims = check_sn_multi(op, weights, us, vs, dims_in);
  const size_t L = weights.size();
  check_same_device(op, weights[0], "weights", sigmas, "sigmas");
  TORCH_CHECK(grads_in.size() == L, op, ": expected ", L, " grads (one per weight, None where unused), got ",
              grads_in.size());
  TORCH_CHECK(sigmas.dim() == 1 && sigmas.size(0) == static_cast<int64_t>(L), op, ": sigmas must be [", L,
              "], got shape ", sigmas.sizes());
  check_floating(op, sigmas, "sigmas");
  grads->assign(L, at::Tensor());
  for (size_t l = 0; l < L; ++l) {
    const std::optional<at::Tensor> g = grads_in.get(l);
    if (!g.has_value() || !g->defined()) continue;
    check_sn_grad(op, *g, weights[l]);
    (*grads)[l] = *g;
  }
  return dims;
}

}  // namespace cbgan_ext

// CPU kernels of the soft-label projection; formula and layouts in common/projection.h.
//
// Soft labels, float, K <= kProjFusedMaxK (AVX2 + FMA at run time): direct loops. Forward: one pass over
//   the rows; each 32-column strip of P_b = Σ_k y_bk E_k stays in registers across the k loop, is stored
//   once and dotted with h_b at once. Backward: one pass over the rows (dh = g P, dy_bk = g_b ⟨h_b, E_k⟩)
//   and one over 16-column strips (dE[:, strip] = Σ_b (y_b g_b) ⊗ h_b[strip], in registers over b).
// Soft labels otherwise: the products go to at::mm (the BLAS the eager graph uses: the same count of
//   products, see projection.h); the elementwise rest (⟨P_b, h_b⟩; g P, g S, y g) is one fused pass per
//   direction instead of the eager graph's separate mul/sum/expand kernels and their [B, L] temporaries.
// Hard labels: no products. out_b = ⟨h_b, E_{y_b}⟩, dh_b = g_b E_{y_b}, dE rows accumulated per column
//   block in the fixed order of b. E may be a transposed view (Vᵀ of a Linear weight): its rows are then
//   read in column blocks, so the strided gathers hit cache instead of copying all of E.
// The sums of these loops have a fixed order that does not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "../common/projection.h"

namespace cbgan_ext {
namespace {

constexpr int kStrip = 16;         // independent partial sums of a dot product
constexpr int64_t kGrain = 32768;  // multiply-adds below which a loop stays on one thread

inline int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, kGrain / std::max<int64_t>(1, work_per_item));
}

// Dot product with kStrip independent partial sums: the compiler vectorises it without -ffast-math, and
// the summation order is fixed (deterministic).
template <typename acc_t, typename a_t, typename b_t>
inline acc_t dot(const a_t* __restrict__ a, const b_t* __restrict__ b, int64_t n) {
  acc_t s[kStrip] = {};
  int64_t i = 0;
  for (; i + kStrip <= n; i += kStrip)
    for (int j = 0; j < kStrip; ++j) s[j] += static_cast<acc_t>(a[i + j]) * static_cast<acc_t>(b[i + j]);
  acc_t t = 0;
  for (; i < n; ++i) t += static_cast<acc_t>(a[i]) * static_cast<acc_t>(b[i]);
  for (int j = 0; j < kStrip; ++j) t += s[j];
  return t;
}

// ---- soft labels, small K, float: fused loops (AVX2 + FMA, chosen at run time) -----------------------------
// The build targets baseline x86-64 (SSE2), where these loops run several times slower than MKL's run-time
// dispatched GEMM; compiled for AVX2 + FMA they beat it at small K (no packing, no extra passes). Machines
// without AVX2, other compilers and other dtypes take the BLAS path below, which is always correct.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define CBGAN_PROJ_AVX2 1
#endif

#ifdef CBGAN_PROJ_AVX2
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {

typedef float v8 __attribute__((vector_size(32)));

inline v8 ld(const float* p) {
  v8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void st(float* p, v8 v) { std::memcpy(p, &v, sizeof v); }
inline float hsum(v8 v) {
  float t = 0;
  for (int j = 0; j < 8; ++j) t += v[j];
  return t;
}

// Rows [b0, b1): P_b = Σ_k y_bk E_k, out_b = ⟨P_b, h_b⟩. A 32-column strip of P_b stays in registers
// across the k loop, so E is the only stream. E contiguous [K, L].
void forward_rows(const float* h, const float* E, const float* y, float* out, float* P, int64_t b0, int64_t b1,
                  int64_t K, int64_t L) {
  for (int64_t b = b0; b < b1; ++b) {
    const float* yb = y + b * K;
    const float* hb = h + b * L;
    float* pb = P + b * L;
    v8 t0 = {}, t1 = {};
    int64_t l = 0;
    for (; l + 32 <= L; l += 32) {
      v8 p0 = {}, p1 = {}, p2 = {}, p3 = {};
      const float* e = E + l;
      for (int64_t k = 0; k < K; ++k, e += L) {
        const float c = yb[k];
        p0 += c * ld(e);
        p1 += c * ld(e + 8);
        p2 += c * ld(e + 16);
        p3 += c * ld(e + 24);
      }
      st(pb + l, p0);
      st(pb + l + 8, p1);
      st(pb + l + 16, p2);
      st(pb + l + 24, p3);
      t0 += p0 * ld(hb + l) + p2 * ld(hb + l + 16);
      t1 += p1 * ld(hb + l + 8) + p3 * ld(hb + l + 24);
    }
    for (; l + 8 <= L; l += 8) {
      v8 p0 = {};
      for (int64_t k = 0; k < K; ++k) p0 += yb[k] * ld(E + k * L + l);
      st(pb + l, p0);
      t0 += p0 * ld(hb + l);
    }
    float ts = 0;
    for (; l < L; ++l) {
      float p = 0;
      for (int64_t k = 0; k < K; ++k) p += yb[k] * E[k * L + l];
      pb[l] = p;
      ts += p * hb[l];
    }
    out[b] = hsum(t0 + t1) + ts;
  }
}

inline float dot(const float* a, const float* b, int64_t L) {
  v8 s = {};
  int64_t l = 0;
  for (; l + 8 <= L; l += 8) s += ld(a + l) * ld(b + l);
  float t = 0;
  for (; l < L; ++l) t += a[l] * b[l];
  return hsum(s) + t;
}

// Rows [b0, b1): dh_b = g_b P_b; dy_bk = g_b ⟨h_b, E_k⟩, four classes per sweep of h_b.
void backward_rows(const float* g, const float* h, const float* E, const float* P, float* dh, float* dy, int64_t b0,
                   int64_t b1, int64_t K, int64_t L) {
  for (int64_t b = b0; b < b1; ++b) {
    const float gb = g[b];
    if (dh) {
      const float* pb = P + b * L;
      float* o = dh + b * L;
      int64_t l = 0;
      for (; l + 8 <= L; l += 8) st(o + l, gb * ld(pb + l));
      for (; l < L; ++l) o[l] = gb * pb[l];
    }
    if (dy) {
      const float* hb = h + b * L;
      int64_t k = 0;
      for (; k + 4 <= K; k += 4) {
        const float* e = E + k * L;
        v8 s0 = {}, s1 = {}, s2 = {}, s3 = {};
        int64_t l = 0;
        for (; l + 8 <= L; l += 8) {
          const v8 hv = ld(hb + l);
          s0 += hv * ld(e + l);
          s1 += hv * ld(e + L + l);
          s2 += hv * ld(e + 2 * L + l);
          s3 += hv * ld(e + 3 * L + l);
        }
        float r0 = 0, r1 = 0, r2 = 0, r3 = 0;
        for (; l < L; ++l) {
          r0 += hb[l] * e[l];
          r1 += hb[l] * e[L + l];
          r2 += hb[l] * e[2 * L + l];
          r3 += hb[l] * e[3 * L + l];
        }
        dy[b * K + k] = gb * (hsum(s0) + r0);
        dy[b * K + k + 1] = gb * (hsum(s1) + r1);
        dy[b * K + k + 2] = gb * (hsum(s2) + r2);
        dy[b * K + k + 3] = gb * (hsum(s3) + r3);
      }
      for (; k < K; ++k) dy[b * K + k] = gb * dot(hb, E + k * L, L);
    }
  }
}

// 16-column strips [s0, s1): dE[k, strip] = Σ_b cT[k, b] h_b[strip], two classes per sweep of the strip of h.
void grad_embedding_strips(const float* cT, const float* h, float* dE, int64_t s0, int64_t s1, int64_t B, int64_t K,
                           int64_t L) {
  for (int64_t s = s0; s < s1; ++s) {
    const int64_t l0 = s * 16;
    if (l0 + 16 > L) {  // the last, partial strip
      for (int64_t k = 0; k < K; ++k)
        for (int64_t l = l0; l < L; ++l) {
          float a = 0;
          for (int64_t b = 0; b < B; ++b) a += cT[k * B + b] * h[b * L + l];
          dE[k * L + l] = a;
        }
      continue;
    }
    int64_t k = 0;
    for (; k + 2 <= K; k += 2) {
      const float* c0 = cT + k * B;
      const float* c1 = c0 + B;
      v8 a0 = {}, a1 = {}, b0 = {}, b1 = {};
      for (int64_t b = 0; b < B; ++b) {
        const v8 h0 = ld(h + b * L + l0), h1 = ld(h + b * L + l0 + 8);
        a0 += c0[b] * h0;
        a1 += c0[b] * h1;
        b0 += c1[b] * h0;
        b1 += c1[b] * h1;
      }
      st(dE + k * L + l0, a0);
      st(dE + k * L + l0 + 8, a1);
      st(dE + (k + 1) * L + l0, b0);
      st(dE + (k + 1) * L + l0 + 8, b1);
    }
    for (; k < K; ++k) {
      const float* c0 = cT + k * B;
      v8 a0 = {}, a1 = {};
      for (int64_t b = 0; b < B; ++b) {
        a0 += c0[b] * ld(h + b * L + l0);
        a1 += c0[b] * ld(h + b * L + l0 + 8);
      }
      st(dE + k * L + l0, a0);
      st(dE + k * L + l0 + 8, a1);
    }
  }
}

}  // namespace avx2
#pragma GCC pop_options
#endif  // CBGAN_PROJ_AVX2

bool fused_loops_available() {
#ifdef CBGAN_PROJ_AVX2
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

void soft_forward_fused(const float* h, const float* E, const float* y, float* out, float* P, int64_t B, int64_t K,
                        int64_t L) {
#ifdef CBGAN_PROJ_AVX2
  at::parallel_for(0, B, grain_for(K * L), [&](int64_t b0, int64_t b1) {
    avx2::forward_rows(h, E, y, out, P, b0, b1, K, L);
  });
#endif
}

void soft_backward_fused(const float* g, const float* h, const float* E, const float* y, const float* P, float* dh,
                         float* dE, float* dy, int64_t B, int64_t K, int64_t L) {
#ifdef CBGAN_PROJ_AVX2
  if (dh || dy) {
    at::parallel_for(0, B, grain_for((dy ? K : 0) * L + L), [&](int64_t b0, int64_t b1) {
      avx2::backward_rows(g, h, E, P, dh, dy, b0, b1, K, L);
    });
  }
  if (dE) {
    // (y ⊙ g)ᵀ laid out [K, B] so the strip loop reads it contiguously. Each dE entry is owned by one strip:
    // no cross-thread reduction, and the result does not depend on the thread count.
    std::vector<float> cT(K * B);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t k = 0; k < K; ++k) cT[k * B + b] = y[b * K + k] * g[b];
    const int64_t nstrips = (L + 15) / 16;
    at::parallel_for(0, nstrips, grain_for(K * B * 16), [&](int64_t s0, int64_t s1) {
      avx2::grad_embedding_strips(cT.data(), h, dE, s0, s1, B, K, L);
    });
  }
#endif
}

// ---- soft labels, large K: BLAS products + fused elementwise passes ---------------------------------------

template <typename scalar_t, typename acc_t>
void rowdot(const scalar_t* P, const scalar_t* h, scalar_t* out, int64_t B, int64_t L) {
  at::parallel_for(0, B, grain_for(L), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) out[b] = static_cast<scalar_t>(dot<acc_t>(P + b * L, h + b * L, L));
  });
}

// dh = g P, dy = g S (in place), yg = y g: one pass over the rows.
template <typename scalar_t, typename acc_t>
void scale_rows(const acc_t* g, const scalar_t* P, scalar_t* dh, scalar_t* S, const scalar_t* y, scalar_t* yg,
                int64_t B, int64_t K, int64_t L) {
  at::parallel_for(0, B, grain_for(L + 2 * K), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const acc_t gb = g[b];
      if (dh)
        for (int64_t l = 0; l < L; ++l) dh[b * L + l] = static_cast<scalar_t>(gb * static_cast<acc_t>(P[b * L + l]));
      if (S)
        for (int64_t k = 0; k < K; ++k) S[b * K + k] = static_cast<scalar_t>(gb * static_cast<acc_t>(S[b * K + k]));
      if (yg)
        for (int64_t k = 0; k < K; ++k) yg[b * K + k] = static_cast<scalar_t>(gb * static_cast<acc_t>(y[b * K + k]));
    }
  });
}

// ---- hard labels ------------------------------------------------------------------------------------------

void check_labels_cpu(const at::Tensor& y, int64_t K) {
  const int64_t* lab = y.data_ptr<int64_t>();
  const int64_t B = y.numel();
  if (B == 0) return;
  int64_t lo = lab[0], hi = lab[0];
  for (int64_t b = 1; b < B; ++b) {
    lo = std::min(lo, lab[b]);
    hi = std::max(hi, lab[b]);
  }
  check_label_range(lo, hi, K);
}

constexpr int64_t kColBlock = 64;  // columns of a strided E read per block: the touched rows of Vᵀ stay cached

// out_b = <h_b, E_{y_b}> (h_out == nullptr), or dh_b = g_b E_{y_b} (out == nullptr).
template <typename scalar_t, typename acc_t>
void hard_gather(const scalar_t* h, const scalar_t* E, int64_t sE0, int64_t sE1, const int64_t* lab, const acc_t* g,
                 scalar_t* out, scalar_t* dh, int64_t B, int64_t L) {
  at::parallel_for(0, B, grain_for(L), [&](int64_t b0, int64_t b1) {
    if (sE1 == 1) {
      for (int64_t b = b0; b < b1; ++b) {
        const scalar_t* e = E + lab[b] * sE0;
        if (out) {
          out[b] = static_cast<scalar_t>(dot<acc_t>(h + b * L, e, L));
        } else {
          const acc_t gb = g[b];
          for (int64_t l = 0; l < L; ++l) dh[b * L + l] = static_cast<scalar_t>(gb * static_cast<acc_t>(e[l]));
        }
      }
      return;
    }
    std::vector<acc_t> acc(out ? b1 - b0 : 0, acc_t(0));
    for (int64_t c0 = 0; c0 < L; c0 += kColBlock) {
      const int64_t c1 = std::min(L, c0 + kColBlock);
      for (int64_t b = b0; b < b1; ++b) {
        const scalar_t* e = E + lab[b] * sE0;
        if (out) {
          acc_t s = 0;
          for (int64_t l = c0; l < c1; ++l) s += static_cast<acc_t>(h[b * L + l]) * static_cast<acc_t>(e[l * sE1]);
          acc[b - b0] += s;
        } else {
          const acc_t gb = g[b];
          for (int64_t l = c0; l < c1; ++l) dh[b * L + l] = static_cast<scalar_t>(gb * static_cast<acc_t>(e[l * sE1]));
        }
      }
    }
    if (out)
      for (int64_t b = b0; b < b1; ++b) out[b] = static_cast<scalar_t>(acc[b - b0]);
  });
}

// dE_k = Σ_{b: y_b = k} g_b h_b, in the order of b; acc [K, L] starts at zero.
template <typename scalar_t, typename acc_t>
void hard_scatter(const acc_t* g, const scalar_t* h, const int64_t* lab, acc_t* acc, int64_t B, int64_t L) {
  const int64_t nblocks = (L + kColBlock - 1) / kColBlock;
  at::parallel_for(0, nblocks, grain_for(B * kColBlock), [&](int64_t c0, int64_t c1) {
    const int64_t l0 = c0 * kColBlock, l1 = std::min(L, c1 * kColBlock);
    for (int64_t b = 0; b < B; ++b) {
      const acc_t gb = g[b];
      acc_t* row = acc + lab[b] * L;
      const scalar_t* hb = h + b * L;
      for (int64_t l = l0; l < l1; ++l) row[l] += gb * static_cast<acc_t>(hb[l]);
    }
  });
}

// ---- entry points -----------------------------------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor> proj_forward_cpu(const at::Tensor& h_in, const at::Tensor& E_in,
                                                   const at::Tensor& y_in) {
  check_proj_inputs(h_in, E_in, y_in);
  const at::Tensor h = h_in.contiguous();
  const int64_t B = h.size(0), L = h.size(1), K = E_in.size(0);
  at::Tensor out = at::empty({B}, h.options());
  if (proj_is_hard(y_in)) {
    const at::Tensor y = y_in.contiguous();
    check_labels_cpu(y, K);
    // A row of E must be readable with one stride: any 2-D view qualifies.
    const at::Tensor& E = E_in;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "soft_label_projection", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      hard_gather<scalar_t, acc_t>(h.data_ptr<scalar_t>(), E.data_ptr<scalar_t>(), E.stride(0), E.stride(1),
                                   y.data_ptr<int64_t>(), nullptr, out.data_ptr<scalar_t>(), nullptr, B, L);
    });
    return {out, at::empty({0}, h.options())};
  }
  const at::Tensor y = y_in.contiguous();
  if (K <= kProjFusedMaxK && h.scalar_type() == at::kFloat && fused_loops_available()) {
    const at::Tensor E = E_in.contiguous();  // at most kProjFusedMaxK rows: copying a transposed view is cheap
    at::Tensor P = at::empty({B, L}, h.options());
    soft_forward_fused(h.data_ptr<float>(), E.data_ptr<float>(), y.data_ptr<float>(), out.data_ptr<float>(),
                       P.data_ptr<float>(), B, K, L);
    return {out, P};
  }
  at::Tensor P = at::mm(y, E_in);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "soft_label_projection", [&] {
    rowdot<scalar_t, at::opmath_type<scalar_t>>(P.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(),
                                                out.data_ptr<scalar_t>(), B, L);
  });
  return {out, P};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> proj_backward_cpu(const at::Tensor& grad_out, const at::Tensor& h_in,
                                                                  const at::Tensor& E_in, const at::Tensor& y_in,
                                                                  const at::Tensor& proj, std::array<bool, 3> mask) {
  check_proj_backward_inputs(grad_out, h_in, E_in, y_in, proj);
  const at::Tensor h = h_in.contiguous();
  const int64_t B = h.size(0), L = h.size(1), K = E_in.size(0);
  const bool hard = proj_is_hard(y_in);
  const bool need_dh = mask[0], need_dE = mask[1], need_dy = mask[2] && !hard;
  const auto acc_type = at::toOpMathType(h.scalar_type());
  // grad_out of a .sum() arrives expanded (stride 0): materialise it once, in opmath.
  const at::Tensor g = grad_out.to(acc_type).contiguous();
  const at::Tensor y = y_in.contiguous();
  const at::Tensor none = at::empty({0}, h.options());
  at::Tensor dh = need_dh ? at::empty({B, L}, h.options()) : none;
  at::Tensor dE, dy = none;

  if (hard) {
    check_labels_cpu(y, K);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "soft_label_projection_backward", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const int64_t* lab = y.data_ptr<int64_t>();
      if (need_dh)
        hard_gather<scalar_t, acc_t>(nullptr, E_in.data_ptr<scalar_t>(), E_in.stride(0), E_in.stride(1), lab,
                                     g.data_ptr<acc_t>(), nullptr, dh.data_ptr<scalar_t>(), B, L);
      if (need_dE) {
        at::Tensor acc = at::zeros({K, L}, h.options().dtype(acc_type));
        hard_scatter<scalar_t, acc_t>(g.data_ptr<acc_t>(), h.data_ptr<scalar_t>(), lab, acc.data_ptr<acc_t>(), B, L);
        dE = acc.scalar_type() == h.scalar_type() ? acc : acc.to(h.scalar_type());
      }
    });
    return {dh, need_dE ? dE : none, none};
  }

  const at::Tensor P = proj.contiguous();
  if (K <= kProjFusedMaxK && h.scalar_type() == at::kFloat && fused_loops_available()) {
    const at::Tensor E = E_in.contiguous();
    if (need_dE) dE = at::empty({K, L}, h.options());
    if (need_dy) dy = at::empty({B, K}, h.options());
    soft_backward_fused(g.data_ptr<float>(), h.data_ptr<float>(), E.data_ptr<float>(), y.data_ptr<float>(),
                        P.data_ptr<float>(), need_dh ? dh.data_ptr<float>() : nullptr,
                        need_dE ? dE.data_ptr<float>() : nullptr, need_dy ? dy.data_ptr<float>() : nullptr, B, K, L);
    return {dh, need_dE ? dE : none, dy};
  }
  at::Tensor S = need_dy ? at::mm(h, E_in.t()) : at::Tensor();
  at::Tensor yg = need_dE ? at::empty({B, K}, h.options()) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "soft_label_projection_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    scale_rows<scalar_t, acc_t>(g.data_ptr<acc_t>(), P.data_ptr<scalar_t>(), need_dh ? dh.data_ptr<scalar_t>() : nullptr,
                                need_dy ? S.data_ptr<scalar_t>() : nullptr, y.data_ptr<scalar_t>(),
                                need_dE ? yg.data_ptr<scalar_t>() : nullptr, B, K, L);
  });
  return {dh, need_dE ? at::mm(yg.t(), h) : none, need_dy ? S : none};
}

}  // namespace

TORCH_LIBRARY_IMPL(cbgan_ext, CPU, m) {
  m.impl("soft_label_projection_forward", &proj_forward_cpu);
  m.impl("_soft_label_projection_backward", &proj_backward_cpu);
}

}  // namespace cbgan_ext

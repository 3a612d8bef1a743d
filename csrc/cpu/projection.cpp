// CPU kernels of the soft-label projection; formula and layouts in common/projection.h.
//
// Soft labels, float, K <= kProjFusedMaxK: direct SIMD loops. Forward: one pass over the rows; each
//   strip of P_b = Σ_k y_bk E_k stays in registers across the k loop, is stored once and dotted with h_b at
//   once. Backward: one pass over the rows (dh = g P, dy_bk = g_b ⟨h_b, E_k⟩) and one over column strips
//   (dE[:, strip] = Σ_b (y_b g_b) ⊗ h_b[strip], in registers over b).
// Soft labels otherwise (larger K, or float64/half/bfloat16): the products go to at::mm (the BLAS the
//   eager graph uses: the same count of products, see projection.h); the elementwise rest (⟨P_b, h_b⟩;
//   g P, g S, y g) is one fused pass per direction instead of the eager graph's separate mul/sum/expand
//   kernels and their [B, L] temporaries.
// Hard labels: no products. out_b = ⟨h_b, E_{y_b}⟩, dh_b = g_b E_{y_b}, dE rows accumulated per column
//   block in the fixed order of b. E may be a transposed view (Vᵀ of a Linear weight): its rows are then
//   read in column blocks, so the strided gathers hit cache instead of copying all of E.
// The sums of these loops have a fixed order that does not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../common/fast_math.h"
#include "../common/projection.h"
#include "reuse.h"

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

// ---- soft labels, small K, float: fused SIMD loops ------------------------------------------------------
// Written once over W float lanes (common/fast_math.h) and compiled for AVX-512, AVX2+FMA and the baseline
// ISA, picked at run time. Register blocks keep 8 (16 with AVX-512's 32 registers) independent FMA chains
// in flight, more than FMA latency × throughput, while each loaded vector feeds 2 to 4 of them.

template <int W>
using FV = typename simd::Vec<W>::f;

template <int W>
constexpr int kBlock = W >= 16 ? 4 : 2;  // rows (classes) per register block: what the register file holds

// Rows b0, b0 + 1 (R = 2) or b0 alone (R = 1): P_b = Σ_k y_bk E_k, out_b = ⟨P_b, h_b⟩. A 4W-column strip
// of P stays in registers across the k loop; E is the only stream.
template <int W, int R>
CBGAN_ALWAYS_INLINE void fwd_block(const float* h, const float* E, const float* y, float* out, float* P, int64_t b0,
                                   int64_t K, int64_t L) {
  FV<W> tot[R] = {};
  float ts[R] = {};
  int64_t l = 0;
  for (; l + 4 * W <= L; l += 4 * W) {
    FV<W> p[R][4] = {};
    const float* e = E + l;
    for (int64_t k = 0; k < K; ++k, e += L) {
      const FV<W> e0 = simd::load<W>(e), e1 = simd::load<W>(e + W), e2 = simd::load<W>(e + 2 * W),
                  e3 = simd::load<W>(e + 3 * W);
      for (int r = 0; r < R; ++r) {
        const float c = y[(b0 + r) * K + k];
        p[r][0] += c * e0;
        p[r][1] += c * e1;
        p[r][2] += c * e2;
        p[r][3] += c * e3;
      }
    }
    for (int r = 0; r < R; ++r) {
      float* pb = P + (b0 + r) * L + l;
      const float* hb = h + (b0 + r) * L + l;
      for (int v = 0; v < 4; ++v) {
        simd::store<W>(pb + v * W, p[r][v]);
        tot[r] += p[r][v] * simd::load<W>(hb + v * W);
      }
    }
  }
  for (; l + W <= L; l += W) {
    FV<W> p[R] = {};
    for (int64_t k = 0; k < K; ++k) {
      const FV<W> e0 = simd::load<W>(E + k * L + l);
      for (int r = 0; r < R; ++r) p[r] += y[(b0 + r) * K + k] * e0;
    }
    for (int r = 0; r < R; ++r) {
      simd::store<W>(P + (b0 + r) * L + l, p[r]);
      tot[r] += p[r] * simd::load<W>(h + (b0 + r) * L + l);
    }
  }
  for (; l < L; ++l)
    for (int r = 0; r < R; ++r) {
      float p = 0;
      for (int64_t k = 0; k < K; ++k) p += y[(b0 + r) * K + k] * E[k * L + l];
      P[(b0 + r) * L + l] = p;
      ts[r] += p * h[(b0 + r) * L + l];
    }
  for (int r = 0; r < R; ++r) out[b0 + r] = simd::hsum<W>(tot[r]) + ts[r];
}

template <int W>
CBGAN_ALWAYS_INLINE void fwd_rows(const float* h, const float* E, const float* y, float* out, float* P, int64_t b0,
                                  int64_t b1, int64_t K, int64_t L) {
  constexpr int R = kBlock<W>;
  int64_t b = b0;
  for (; b + R <= b1; b += R) fwd_block<W, R>(h, E, y, out, P, b, K, L);
  for (; b < b1; ++b) fwd_block<W, 1>(h, E, y, out, P, b, K, L);
}

// dy[b, k] = g_b ⟨h_b, E_k⟩ for rows b0 .. b0 + R and classes k0 .. k0 + C.
template <int W, int R, int C>
CBGAN_ALWAYS_INLINE void dy_block(const float* g, const float* h, const float* E, float* dy, int64_t b0, int64_t k0,
                                  int64_t K, int64_t L) {
  FV<W> s[R][C] = {};
  float t[R][C] = {};
  int64_t l = 0;
  for (; l + W <= L; l += W) {
    FV<W> hv[R], ev[C];
    for (int r = 0; r < R; ++r) hv[r] = simd::load<W>(h + (b0 + r) * L + l);
    for (int c = 0; c < C; ++c) ev[c] = simd::load<W>(E + (k0 + c) * L + l);
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) s[r][c] += hv[r] * ev[c];
  }
  for (; l < L; ++l)
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) t[r][c] += h[(b0 + r) * L + l] * E[(k0 + c) * L + l];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) dy[(b0 + r) * K + k0 + c] = g[b0 + r] * (simd::hsum<W>(s[r][c]) + t[r][c]);
}

template <int W, int R>
CBGAN_ALWAYS_INLINE void dy_rows(const float* g, const float* h, const float* E, float* dy, int64_t b0, int64_t K,
                                 int64_t L) {
  int64_t k = 0;
  for (; k + 4 <= K; k += 4) dy_block<W, R, 4>(g, h, E, dy, b0, k, K, L);
  for (; k + 2 <= K; k += 2) dy_block<W, R, 2>(g, h, E, dy, b0, k, K, L);
  for (; k < K; ++k) dy_block<W, R, 1>(g, h, E, dy, b0, k, K, L);
}

// Rows [b0, b1): dh_b = g_b P_b and dy_b.
template <int W>
CBGAN_ALWAYS_INLINE void bwd_rows(const float* g, const float* h, const float* E, const float* P, float* dh, float* dy,
                                  int64_t b0, int64_t b1, int64_t K, int64_t L) {
  if (dh)
    for (int64_t b = b0; b < b1; ++b) {
      const float gb = g[b];
      int64_t l = 0;
      for (; l + W <= L; l += W) simd::store<W>(dh + b * L + l, gb * simd::load<W>(P + b * L + l));
      for (; l < L; ++l) dh[b * L + l] = gb * P[b * L + l];
    }
  if (dy) {
    int64_t b = b0;
    constexpr int R = kBlock<W>;
    for (; b + R <= b1; b += R) dy_rows<W, R>(g, h, E, dy, b, K, L);
    for (; b < b1; ++b) dy_rows<W, 1>(g, h, E, dy, b, K, L);
  }
}

// dE[k, strip] = Σ_b cT[k, b] h_b[strip] for classes k0 .. k0 + C, strip = 2W columns from l0.
template <int W, int C>
CBGAN_ALWAYS_INLINE void de_block(const float* cT, const float* h, float* dE, int64_t k0, int64_t l0, int64_t B,
                                  int64_t L) {
  FV<W> a[C][2] = {};
  for (int64_t b = 0; b < B; ++b) {
    const FV<W> h0 = simd::load<W>(h + b * L + l0), h1 = simd::load<W>(h + b * L + l0 + W);
    for (int c = 0; c < C; ++c) {
      const float x = cT[(k0 + c) * B + b];
      a[c][0] += x * h0;
      a[c][1] += x * h1;
    }
  }
  for (int c = 0; c < C; ++c) {
    simd::store<W>(dE + (k0 + c) * L + l0, a[c][0]);
    simd::store<W>(dE + (k0 + c) * L + l0 + W, a[c][1]);
  }
}

// Strips [s0, s1) of 2W columns; the last may be partial (scalar).
template <int W>
CBGAN_ALWAYS_INLINE void de_strips(const float* cT, const float* h, float* dE, int64_t s0, int64_t s1, int64_t B,
                                   int64_t K, int64_t L) {
  for (int64_t s = s0; s < s1; ++s) {
    const int64_t l0 = s * 2 * W;
    if (l0 + 2 * W > L) {
      for (int64_t k = 0; k < K; ++k)
        for (int64_t l = l0; l < L; ++l) {
          float a = 0;
          for (int64_t b = 0; b < B; ++b) a += cT[k * B + b] * h[b * L + l];
          dE[k * L + l] = a;
        }
      continue;
    }
    int64_t k = 0;
    constexpr int C = 2 * kBlock<W>;
    for (; k + C <= K; k += C) de_block<W, C>(cT, h, dE, k, l0, B, L);
    for (; k + 2 <= K; k += 2) de_block<W, 2>(cT, h, dE, k, l0, B, L);
    for (; k < K; ++k) de_block<W, 1>(cT, h, dE, k, l0, B, L);
  }
}

#ifdef CBGAN_HAS_X86_DISPATCH
CBGAN_TARGET_AVX512 void fwd_rows_avx512(const float* h, const float* E, const float* y, float* out, float* P,
                                         int64_t b0, int64_t b1, int64_t K, int64_t L) {
  fwd_rows<16>(h, E, y, out, P, b0, b1, K, L);
}
CBGAN_TARGET_AVX2 void fwd_rows_avx2(const float* h, const float* E, const float* y, float* out, float* P, int64_t b0,
                                     int64_t b1, int64_t K, int64_t L) {
  fwd_rows<8>(h, E, y, out, P, b0, b1, K, L);
}
CBGAN_TARGET_AVX512 void bwd_rows_avx512(const float* g, const float* h, const float* E, const float* P, float* dh,
                                         float* dy, int64_t b0, int64_t b1, int64_t K, int64_t L) {
  bwd_rows<16>(g, h, E, P, dh, dy, b0, b1, K, L);
}
CBGAN_TARGET_AVX2 void bwd_rows_avx2(const float* g, const float* h, const float* E, const float* P, float* dh,
                                     float* dy, int64_t b0, int64_t b1, int64_t K, int64_t L) {
  bwd_rows<8>(g, h, E, P, dh, dy, b0, b1, K, L);
}
CBGAN_TARGET_AVX512 void de_strips_avx512(const float* cT, const float* h, float* dE, int64_t s0, int64_t s1, int64_t B,
                                          int64_t K, int64_t L) {
  de_strips<16>(cT, h, dE, s0, s1, B, K, L);
}
CBGAN_TARGET_AVX2 void de_strips_avx2(const float* cT, const float* h, float* dE, int64_t s0, int64_t s1, int64_t B,
                                      int64_t K, int64_t L) {
  de_strips<8>(cT, h, dE, s0, s1, B, K, L);
}
#endif

void soft_forward_fused(const float* h, const float* E, const float* y, float* out, float* P, int64_t B, int64_t K,
                        int64_t L) {
  const int W = cpu_simd_width();
  at::parallel_for(0, B, grain_for(K * L), [&](int64_t b0, int64_t b1) {
#ifdef CBGAN_HAS_X86_DISPATCH
    if (W == 16) return fwd_rows_avx512(h, E, y, out, P, b0, b1, K, L);
    if (W == 8) return fwd_rows_avx2(h, E, y, out, P, b0, b1, K, L);
#endif
    fwd_rows<4>(h, E, y, out, P, b0, b1, K, L);
  });
}

void soft_backward_fused(const float* g, const float* h, const float* E, const float* y, const float* P, float* dh,
                         float* dE, float* dy, int64_t B, int64_t K, int64_t L) {
  const int W = cpu_simd_width();
  if (dh || dy) {
    at::parallel_for(0, B, grain_for((dy ? K : 0) * L + L), [&](int64_t b0, int64_t b1) {
#ifdef CBGAN_HAS_X86_DISPATCH
      if (W == 16) return bwd_rows_avx512(g, h, E, P, dh, dy, b0, b1, K, L);
      if (W == 8) return bwd_rows_avx2(g, h, E, P, dh, dy, b0, b1, K, L);
#endif
      bwd_rows<4>(g, h, E, P, dh, dy, b0, b1, K, L);
    });
  }
  if (dE) {
    // (y ⊙ g)ᵀ laid out [K, B] so the strip loop reads it contiguously. Each dE entry is owned by one strip:
    // no cross-thread reduction, and the result does not depend on the thread count.
    std::vector<float> cT(K * B);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t k = 0; k < K; ++k) cT[k * B + b] = y[b * K + k] * g[b];
    const int64_t strip = 2 * W, nstrips = (L + strip - 1) / strip;
    at::parallel_for(0, nstrips, grain_for(K * B * strip), [&](int64_t s0, int64_t s1) {
#ifdef CBGAN_HAS_X86_DISPATCH
      if (W == 16) return de_strips_avx512(cT.data(), h, dE, s0, s1, B, K, L);
      if (W == 8) return de_strips_avx2(cT.data(), h, dE, s0, s1, B, K, L);
#endif
      de_strips<4>(cT.data(), h, dE, s0, s1, B, K, L);
    });
  }
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

void check_labels_cpu(const at::Tensor& y, int64_t K, const char* op) {
  const int64_t* lab = y.data_ptr<int64_t>();
  const int64_t B = y.numel();
  if (B == 0) return;
  int64_t lo = lab[0], hi = lab[0];
  for (int64_t b = 1; b < B; ++b) {
    lo = std::min(lo, lab[b]);
    hi = std::max(hi, lab[b]);
  }
  check_label_range(lo, hi, K, op);
}

constexpr int64_t kColBlock = 64;  // columns of a strided E read per block: the touched rows of Vᵀ stay cached

// out_b = ⟨h_b, E_{y_b}⟩ (dh == nullptr), or dh_b = g_b E_{y_b} (out == nullptr). Labels already checked.
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

thread_local at::Tensor tl_proj;  // the proj buffer of this thread's last call (reuse.h)

std::tuple<at::Tensor, at::Tensor> proj_forward_cpu(const at::Tensor& h_in, const at::Tensor& E_in,
                                                   const at::Tensor& y_in) {
  check_proj_inputs(h_in, E_in, y_in);
  const at::Tensor h = h_in.contiguous();
  const int64_t B = h.size(0), L = h.size(1), K = E_in.size(0);
  at::Tensor out = at::empty({B}, h.options());
  if (proj_is_hard(y_in)) {
    const at::Tensor y = y_in.contiguous();
    check_labels_cpu(y, K, "soft_label_projection");
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
  if (K <= kProjFusedMaxK && h.scalar_type() == at::kFloat) {
    const at::Tensor E = E_in.contiguous();  // at most kProjFusedMaxK rows: copying a transposed view is cheap
    at::Tensor P = reuse_or_empty(tl_proj, {B, L}, h.options());
    soft_forward_fused(h.data_ptr<float>(), E.data_ptr<float>(), y.data_ptr<float>(), out.data_ptr<float>(),
                       P.data_ptr<float>(), B, K, L);
    return {out, P};
  }
  at::Tensor P = reuse_or_empty(tl_proj, {B, L}, h.options());
  at::mm_out(P, y, E_in);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "soft_label_projection", [&] {
    rowdot<scalar_t, at::opmath_type<scalar_t>>(P.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(),
                                                out.data_ptr<scalar_t>(), B, L);
  });
  return {out, P};
}

// dh_out: where dh goes (proj itself for the autograd node's in-place backward: each element of dh is written
// from the same element of P, which nothing else reads), or undefined for a new tensor.
std::tuple<at::Tensor, at::Tensor, at::Tensor> proj_backward_impl(const at::Tensor& grad_out, const at::Tensor& h_in,
                                                                   const at::Tensor& E_in, const at::Tensor& y_in,
                                                                   const at::Tensor& proj, std::array<bool, 3> mask,
                                                                   const at::Tensor& dh_out) {
  const at::Tensor h = h_in.contiguous();
  const int64_t B = h.size(0), L = h.size(1), K = E_in.size(0);
  const bool hard = proj_is_hard(y_in);
  const bool need_dh = mask[0], need_dE = mask[1], need_dy = mask[2] && !hard;
  const auto acc_type = at::toOpMathType(h.scalar_type());
  // grad_out of a .sum() arrives expanded (stride 0): materialise it once, in opmath.
  const at::Tensor g = grad_out.to(acc_type).contiguous();
  const at::Tensor y = y_in.contiguous();
  // Outputs must not alias one another (schema): each skipped gradient is its own empty tensor.
  auto none = [&] { return at::empty({0}, h.options()); };
  at::Tensor dh = !need_dh ? none() : dh_out.defined() ? dh_out : at::empty({B, L}, h.options());
  at::Tensor dE, dy = none();

  if (hard) {
    check_labels_cpu(y, K, kProjBackwardOp);
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
    return {dh, need_dE ? dE : none(), none()};
  }

  const at::Tensor P = proj.contiguous();
  if (K <= kProjFusedMaxK && h.scalar_type() == at::kFloat) {
    const at::Tensor E = E_in.contiguous();
    if (need_dE) dE = at::empty({K, L}, h.options());
    if (need_dy) dy = at::empty({B, K}, h.options());
    soft_backward_fused(g.data_ptr<float>(), h.data_ptr<float>(), E.data_ptr<float>(), y.data_ptr<float>(),
                        P.data_ptr<float>(), need_dh ? dh.data_ptr<float>() : nullptr,
                        need_dE ? dE.data_ptr<float>() : nullptr, need_dy ? dy.data_ptr<float>() : nullptr, B, K, L);
    return {dh, need_dE ? dE : none(), dy};
  }
  at::Tensor S = need_dy ? at::mm(h, E_in.t()) : at::Tensor();
  at::Tensor yg = need_dE ? at::empty({B, K}, h.options()) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "soft_label_projection_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    scale_rows<scalar_t, acc_t>(g.data_ptr<acc_t>(), P.data_ptr<scalar_t>(), need_dh ? dh.data_ptr<scalar_t>() : nullptr,
                                need_dy ? S.data_ptr<scalar_t>() : nullptr, y.data_ptr<scalar_t>(),
                                need_dE ? yg.data_ptr<scalar_t>() : nullptr, B, K, L);
  });
  return {dh, need_dE ? at::mm(yg.t(), h) : none(), need_dy ? S : none()};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> proj_backward_cpu(const at::Tensor& grad_out, const at::Tensor& h,
                                                                  const at::Tensor& E, const at::Tensor& y,
                                                                  const at::Tensor& proj, std::array<bool, 3> mask) {
  check_proj_backward_inputs(grad_out, h, E, y, proj);
  return proj_backward_impl(grad_out, h, E, y, proj, mask, at::Tensor());
}

}  // namespace

bool proj_cpu_is_reused(const at::Tensor& proj) { return in_slot(proj, tl_proj); }

bool proj_cpu_in_place(const at::Tensor& proj, const at::Tensor& h, int64_t other_refs) {
  return proj.dim() == 2 && proj.sizes() == h.sizes() && proj.scalar_type() == h.scalar_type() &&
         writable(proj, tl_proj, other_refs);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> proj_cpu_backward_in_place(const at::Tensor& grad_out,
                                                                          const at::Tensor& h, const at::Tensor& E,
                                                                          const at::Tensor& y, at::Tensor proj,
                                                                          std::array<bool, 3> mask) {
  check_proj_backward_inputs(grad_out, h, E, y, proj);
  return proj_backward_impl(grad_out, h, E, y, proj, mask, proj);
}

TORCH_LIBRARY_IMPL(cbgan_ext, CPU, m) {
  m.impl("soft_label_projection_forward", &proj_forward_cpu);
  m.impl("_soft_label_projection_backward", &proj_backward_cpu);
}

}  // namespace cbgan_ext

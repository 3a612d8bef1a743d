// CPU kernels of the class-balancing regularizer; formula and layouts in common/class_balancing.h.
// Forward: rows in chunks of kCBRowsPerChunk, one chunk per task. Each row is read once into a padded
// float buffer and then stays in L1 for max/argmax, exp + sum, and normalise + write probs + add into the
// chunk's partial column sums; up to kCBLanesMaxK classes, W rows go through the same steps side by side,
// one per lane, with the same results bit for bit. Partials are reduced in a fixed order (thread-count
// independent).
// Backward: one pass over the saved probs: dz = p (g - <p, g>) / B.
// float/half/bfloat16 run W-lane SIMD (common/fast_math.h) picked at run time; float64 runs scalar libm.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#include "../common/class_balancing.h"
#include "../common/fast_math.h"
#include "reuse.h"

namespace cbgan_ext {
namespace {

// Up to this many classes a vector holds one row per lane (cb_chunk_lanes): a row of 10 is too short for the
// row-wise loop's lane reductions and padded tail (1.8x faster at K = 10, even at 16, the row-wise loop wins
// at 32).
constexpr int64_t kCBLanesMaxK = 16;
// From this many classes the row loop takes the table exp (half the time on AVX2). Below it, results stay
// bit for bit those of the lane path and of the recorded runs (CBGAN's main job has 10 classes).
constexpr int64_t kCBFastExpMinK = 64;
// Float rows of more than kCBLanesMaxK classes go through cb_rows_float this many at a time.
constexpr int kCBRowsSideBySide = 4;

// w.to(dtype).contiguous() costs two dispatcher calls even when w already fits; at K = 10 the whole op is a
// few microseconds, so skip them then.
at::Tensor as_contiguous(const at::Tensor& t, at::ScalarType dtype) {
  return t.scalar_type() == dtype && t.is_contiguous() ? t : t.to(dtype).contiguous();
}

// torch.argmax of a row: the first maximum, or the first NaN when there is one (the vector loops' slow path).
template <typename scalar_t>
int64_t argmax_first_nan(const scalar_t* zr, int64_t K) {
  int64_t am = 0;
  for (int64_t k = 0; k < K; ++k) {
    const float v = static_cast<float>(zr[k]);
    if (v != v) return k;
    if (v > static_cast<float>(zr[am])) am = k;
  }
  return am;
}

// ---- small K: W rows at once, one row per lane ------------------------------------------------------
// Bit-identical to cb_rows_float<W>: the same exp, the row sum in its order (lane j of its vector sum holds
// the columns k ≡ j mod W; then lanes 0..W-1) and the column sums row by row. t: K·W floats, the W-row block
// transposed (column k at t + k·W).
template <int W, typename scalar_t>
CBGAN_ALWAYS_INLINE void cb_chunk_lanes(const scalar_t* z, scalar_t* p, float* acc, int64_t* am, int64_t rows,
                                        int64_t K, float* t) {
  typedef typename simd::Vec<W>::f F;
  typedef typename simd::Vec<W>::i I;
  for (int64_t b0 = 0; b0 < rows; b0 += W) {
    const int n = static_cast<int>(std::min<int64_t>(W, rows - b0));
    const scalar_t* zb = z + b0 * K;
    for (int j = 0; j < n; ++j)
      for (int64_t k = 0; k < K; ++k) t[k * W + j] = static_cast<float>(zb[j * K + k]);
    for (int j = n; j < W; ++j)
      for (int64_t k = 0; k < K; ++k) t[k * W + j] = 0.0f;
    // max and first argmax per lane (strict >, k ascending: the first maximum wins, as torch)
    F m = simd::load<W>(t);
    I idx = I{};
    for (int64_t k = 1; k < K; ++k) {
      const F v = simd::load<W>(t + k * W);
      const I gt = v > m;
      m = simd::select<W>(gt, v, m);
      idx = ((I{} + static_cast<int32_t>(k)) & gt) | (idx & ~gt);
    }
    for (int64_t k = 0; k < K; ++k)
      simd::store<W>(t + k * W, simd::exp_nonpositive<W>(simd::load<W>(t + k * W) - m));
    F s = F{};
    for (int64_t j = 0; j < W && j < K; ++j) {
      F part = F{};
      for (int64_t k = j; k < K; k += W) part += simd::load<W>(t + k * W);
      s += part;
    }
    const F inv = 1.0f / s;
    for (int64_t k = 0; k < K; ++k) simd::store<W>(t + k * W, simd::load<W>(t + k * W) * inv);
    scalar_t* pb = p + b0 * K;
    for (int j = 0; j < n; ++j) {
      for (int64_t k = 0; k < K; ++k) {
        const float v = t[k * W + j];
        acc[k] += v;
        pb[j * K + k] = static_cast<scalar_t>(v);
      }
      // a NaN or +Inf in the row makes its sum NaN; torch's argmax is then the first NaN
      am[b0 + j] = s[j] == s[j] ? idx[j] : argmax_first_nan(zb + j * K, K);
    }
  }
}

// ---- float rows, R at a time -------------------------------------------------------------------------
// One row's passes form a chain (max and argmax, then exp and sum, then normalise), each ending in a cross-lane
// reduction the next pass waits for; at K = 100 those waits took half the row's time. R independent rows side
// by side fill them. Per row the operations of a one-row loop, in its order (the max and first argmax are exact
// whatever the chains), and the column sums take the rows in order: any R gives the same bits.
// Each pass runs its whole vectors first and the padded last one after, so the loops carry no per-vector choice.
template <int W>
CBGAN_ALWAYS_INLINE void max_step(const float* src, typename simd::Vec<W>::f& m, typename simd::Vec<W>::i& idx,
                                  typename simd::Vec<W>::i kv) {
  typedef typename simd::Vec<W>::i I;
  const auto v = simd::load<W>(src);
  const I gt = v > m;
  m = simd::select<W>(gt, v, m);
  idx = (kv & gt) | (idx & ~gt);
}

template <int W, bool kFastExp>
CBGAN_ALWAYS_INLINE typename simd::Vec<W>::f exp_step(const float* src, float* dst, float best) {
  const auto x = simd::load<W>(src) - best;
  const auto v = kFastExp ? simd::exp_nonpositive_table<W>(x) : simd::exp_nonpositive<W>(x);
  simd::store<W>(dst, v);
  return v;
}

// tails: R·W floats, each row's last partial vector padded with -inf (exp(-inf) = 0).
template <int W, int R, bool kFastExp>
CBGAN_ALWAYS_INLINE void cb_rows_float(const float* z, float* p, float* acc, int64_t* am_out, int64_t K,
                                       float* tails) {
  typedef typename simd::Vec<W>::f F;
  typedef typename simd::Vec<W>::i I;
  const int64_t Kv = K / W * W;
  const bool tail = Kv < K;
  if (tail)
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < W; ++j) tails[r * W + j] = Kv + j < K ? z[r * K + Kv + j] : -INFINITY;
  F m[R];
  I idx[R];
  I kv;
  for (int j = 0; j < W; ++j) kv[j] = j;
  for (int r = 0; r < R; ++r) {
    m[r] = F{} - INFINITY;
    idx[r] = I{} + static_cast<int32_t>(K);
  }
  for (int64_t k = 0; k < Kv; k += W) {
    for (int r = 0; r < R; ++r) max_step<W>(z + r * K + k, m[r], idx[r], kv);
    kv += W;
  }
  if (tail)
    for (int r = 0; r < R; ++r) max_step<W>(tails + r * W, m[r], idx[r], kv);
  float best[R];
  int64_t am[R];
  for (int r = 0; r < R; ++r) {  // across lanes: the larger value, or the smaller index among equal ones
    best[r] = m[r][0];
    am[r] = idx[r][0];
    for (int j = 1; j < W; ++j) {
      const bool take = m[r][j] > best[r] || (m[r][j] == best[r] && idx[r][j] < am[r]);
      best[r] = take ? m[r][j] : best[r];
      am[r] = take ? idx[r][j] : am[r];
    }
  }
  // row by row: the exp's constants fill the registers, and the rows' sums need no other row's
  F s[R];
  for (int r = 0; r < R; ++r) {
    F acc_r = F{};
    for (int64_t k = 0; k < Kv; k += W) acc_r += exp_step<W, kFastExp>(z + r * K + k, p + r * K + k, best[r]);
    if (tail) acc_r += exp_step<W, kFastExp>(tails + r * W, tails + r * W, best[r]);
    s[r] = acc_r;
  }
  float inv[R];
  for (int r = 0; r < R; ++r) {
    const float sum = simd::hsum<W>(s[r]);
    // a NaN in the row: the first NaN, as torch
    if (!(sum == sum) || am[r] >= K) am[r] = argmax_first_nan(z + r * K, K);
    am_out[r] = am[r];
    inv[r] = 1.0f / sum;
  }
  for (int64_t k = 0; k < Kv; k += W) {
    F a = simd::load<W>(acc + k);
    for (int r = 0; r < R; ++r) {
      const F v = simd::load<W>(p + r * K + k) * inv[r];
      simd::store<W>(p + r * K + k, v);
      a += v;
    }
    simd::store<W>(acc + k, a);
  }
  if (tail) {
    F a = simd::load<W>(acc + Kv);
    for (int r = 0; r < R; ++r) {
      const F v = simd::load<W>(tails + r * W) * inv[r];
      a += v;
      for (int64_t k = Kv; k < K; ++k) p[r * K + k] = v[k - Kv];
    }
    simd::store<W>(acc + Kv, a);
  }
}

template <int W, bool kFastExp>
CBGAN_ALWAYS_INLINE void cb_chunk_float(const float* z, float* p, float* acc, int64_t* am, int64_t rows, int64_t K,
                                        float* tails) {
  int64_t b = 0;
  for (; b + kCBRowsSideBySide <= rows; b += kCBRowsSideBySide)
    cb_rows_float<W, kCBRowsSideBySide, kFastExp>(z + b * K, p + b * K, acc, am + b, K, tails);
  for (; b < rows; ++b) cb_rows_float<W, 1, kFastExp>(z + b * K, p + b * K, acc, am + b, K, tails);
}

// ---- one chunk of rows, float accumulation, W lanes ------------------------------------------------
// e: scratch of at least 2·Kw + W floats (Kw: K rounded up to W); acc: the chunk's partial sums; am: each row's
// argmax.
template <int W, typename scalar_t>
CBGAN_ALWAYS_INLINE void cb_chunk_simd(const scalar_t* z, scalar_t* p, float* acc, int64_t* am, int64_t rows,
                                       int64_t K, float* e) {
  if (K <= kCBLanesMaxK) return cb_chunk_lanes<W>(z, p, acc, am, rows, K, e);
  const bool fast = K >= kCBFastExpMinK;
  if constexpr (std::is_same<scalar_t, float>::value) {
    if (fast) return cb_chunk_float<W, true>(z, p, acc, am, rows, K, e);
    return cb_chunk_float<W, false>(z, p, acc, am, rows, K, e);
  }
  // half and bfloat16: each row through float copies, in e, then the float rows' code (so the same results as
  // the float path on the converted logits)
  const int64_t Kw = (K + W - 1) / W * W;
  float* in = e;
  float* out = e + Kw;
  float* tails = e + 2 * Kw;
  for (int64_t b = 0; b < rows; ++b) {
    const scalar_t* zr = z + b * K;
    for (int64_t k = 0; k < K; ++k) in[k] = static_cast<float>(zr[k]);
    if (fast) {
      cb_rows_float<W, 1, true>(in, out, acc, am + b, K, tails);
    } else {
      cb_rows_float<W, 1, false>(in, out, acc, am + b, K, tails);
    }
    scalar_t* pr = p + b * K;
    for (int64_t k = 0; k < K; ++k) pr[k] = static_cast<scalar_t>(out[k]);
  }
}

#ifdef CBGAN_HAS_X86_DISPATCH
template <typename scalar_t>
CBGAN_TARGET_AVX512 void cb_chunk_avx512(const scalar_t* z, scalar_t* p, float* acc, int64_t* am, int64_t rows,
                                         int64_t K, float* e) {
  cb_chunk_simd<16>(z, p, acc, am, rows, K, e);
}
template <typename scalar_t>
CBGAN_TARGET_AVX2 void cb_chunk_avx2(const scalar_t* z, scalar_t* p, float* acc, int64_t* am, int64_t rows,
                                     int64_t K, float* e) {
  cb_chunk_simd<8>(z, p, acc, am, rows, K, e);
}
#endif

template <typename scalar_t>
void cb_chunk(int W, const scalar_t* z, scalar_t* p, float* acc, int64_t* am, int64_t rows, int64_t K, float* e) {
#ifdef CBGAN_HAS_X86_DISPATCH
  if (W == 16) return cb_chunk_avx512(z, p, acc, am, rows, K, e);
  if (W == 8) return cb_chunk_avx2(z, p, acc, am, rows, K, e);
#endif
  cb_chunk_simd<4>(z, p, acc, am, rows, K, e);
}

// float64: scalar, libm exp.
void cb_chunk(int, const double* z, double* p, double* acc, int64_t* am_out, int64_t rows, int64_t K, double*) {
  for (int64_t b = 0; b < rows; ++b) {
    const double* zr = z + b * K;
    double m = zr[0];
    int64_t am = 0;
    for (int64_t k = 1; k < K; ++k) {
      if (m != m) break;
      if (zr[k] > m || zr[k] != zr[k]) { m = zr[k]; am = k; }
    }
    am_out[b] = am;
    double* pr = p + b * K;
    double s = 0;
    for (int64_t k = 0; k < K; ++k) {
      pr[k] = std::exp(zr[k] - m);
      s += pr[k];
    }
    const double inv = 1.0 / s;
    for (int64_t k = 0; k < K; ++k) {
      pr[k] *= inv;
      acc[k] += pr[k];
    }
  }
}

// ---- log over the K classes: the loss's p log p and the backward's coefficients -----------------------
// From kCBFastExpMinK classes, in place of libm's scalar log: about 20 ns a class, 20-30 us at K = 1010, as long
// as the rows of a small batch. 0 gives -inf, NaN and +Inf themselves, a negative NaN (as std::log).
template <int W>
CBGAN_ALWAYS_INLINE void log_simd(const float* x, float* out, int64_t n) {
  typedef typename simd::Vec<W>::f F;
  for (int64_t k = 0; k < n; k += W) {
    float pad[W];
    const bool whole = k + W <= n;
    if (!whole)
      for (int j = 0; j < W; ++j) pad[j] = k + j < n ? x[k + j] : 1.0f;
    const F v = simd::load<W>(whole ? x + k : pad);
    F l = simd::log_positive<W>(v);
    l = simd::select<W>(v == 0.0f, F{} - INFINITY, l);
    l = simd::select<W>(!(v < INFINITY), v, l);  // NaN, +Inf
    l = simd::select<W>(v < 0.0f, F{} + NAN, l);
    if (whole) {
      simd::store<W>(out + k, l);
    } else {
      for (int j = 0; k + j < n; ++j) out[k + j] = l[j];
    }
  }
}

#ifdef CBGAN_HAS_X86_DISPATCH
CBGAN_TARGET_AVX512 void log_avx512(const float* x, float* out, int64_t n) { log_simd<16>(x, out, n); }
CBGAN_TARGET_AVX2 void log_avx2(const float* x, float* out, int64_t n) { log_simd<8>(x, out, n); }
#endif

void log_vec(int W, const float* x, float* out, int64_t n) {
#ifdef CBGAN_HAS_X86_DISPATCH
  if (W == 16) return log_avx512(x, out, n);
  if (W == 8) return log_avx2(x, out, n);
#endif
  log_simd<4>(x, out, n);
}

// out = log(x) through log_vec for float accumulation from kCBFastExpMinK classes, and then true; else false
// and the caller keeps libm's log (the recorded runs, K = 10, and float64).
bool fast_class_log(int W, const float* x, float* out, int64_t K) {
  if (K < kCBFastExpMinK) return false;
  log_vec(W, x, out, K);
  return true;
}
bool fast_class_log(int, const double*, double*, int64_t) { return false; }

// mean[k] = Σ_c partial[c·Kp + k] / B, the chunks in order for each column (any thread count, the same bits),
// eight columns at a time: one column at a time, each column's chain of adds was exposed.
template <typename acc_t>
void mean_of_chunks(const acc_t* partial, int64_t nchunks, int64_t Kp, int64_t K, int64_t B, acc_t* mean) {
  constexpr int64_t J = 8;
  const acc_t n = static_cast<acc_t>(B);
  int64_t k0 = 0;
  for (; k0 + J <= K; k0 += J) {
    acc_t s[J] = {};
    for (int64_t c = 0; c < nchunks; ++c)
      for (int64_t j = 0; j < J; ++j) s[j] += partial[c * Kp + k0 + j];
    for (int64_t j = 0; j < J; ++j) mean[k0 + j] = s[j] / n;
  }
  for (; k0 < K; ++k0) {
    acc_t s = 0;
    for (int64_t c = 0; c < nchunks; ++c) s += partial[c * Kp + k0];
    mean[k0] = s / n;
  }
}

// Σ_k w_k·xlogx(p_k) in class order (below kCBFastExpMinK classes: the recorded runs' bits).
template <typename acc_t>
acc_t weighted_xlogx_sum(const acc_t* w, const acc_t* p, int64_t K) {
  acc_t total = 0;
  for (int64_t k = 0; k < K; ++k) total += w[k] * xlogx(p[k]);
  return total;
}

// The same with lg = log(p) given, in eight interleaved sums: one sum's chain of adds took 4 us at K = 1010.
template <typename acc_t>
acc_t weighted_xlogx_sum(const acc_t* w, const acc_t* p, const acc_t* lg, int64_t K) {
  constexpr int64_t J = 8;
  acc_t s[J] = {};
  int64_t k = 0;
  for (; k + J <= K; k += J)
    for (int64_t j = 0; j < J; ++j) s[j] += w[k + j] * (p[k + j] == acc_t(0) ? acc_t(0) : p[k + j] * lg[k + j]);
  for (; k < K; ++k) s[0] += w[k] * (p[k] == acc_t(0) ? acc_t(0) : p[k] * lg[k]);
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

thread_local at::Tensor tl_probs;  // the probs buffer of this thread's last call (reuse.h)

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> cb_forward_cpu(const at::Tensor& logits_in,
                                                                          const at::Tensor& w_in) {
  check_cb_inputs(logits_in, w_in);
  const at::Tensor logits = logits_in.contiguous();
  const int64_t B = logits.size(0), K = logits.size(1);
  const auto acc_type = at::toOpMathType(logits.scalar_type());
  const at::Tensor w = as_contiguous(w_in, acc_type);
  at::Tensor probs = reuse_or_empty(tl_probs, logits.sizes(), logits.options());
  at::Tensor counts = at::empty({K}, logits.options().dtype(at::kLong));  // every entry is written below
  at::Tensor mean_probs = at::empty({K}, logits.options().dtype(acc_type));
  at::Tensor loss = at::empty({}, logits.options().dtype(acc_type));
  const int64_t nchunks = (B + kCBRowsPerChunk - 1) / kCBRowsPerChunk;
  const int W = cpu_simd_width();
  const int64_t Kp = (K + 15) / 16 * 16;  // room for any lane count
  const int64_t scratch = std::max<int64_t>({2 * Kp + 16, kCBLanesMaxK * 16, kCBRowsSideBySide * 16});  // any path's

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "class_balancing_loss", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* z = logits.data_ptr<scalar_t>();
    scalar_t* p = probs.data_ptr<scalar_t>();
    std::vector<acc_t> partial(nchunks * Kp, acc_t(0));
    // Each row's argmax, counted after the parallel region: per-chunk count arrays that this thread zeroed
    // and another thread incremented cost that thread a cache line from this core per few rows (the second
    // thread's chunks were the slower ones; 4% of the op at K = 1010 with 2 threads).
    std::unique_ptr<int64_t[]> row_argmax(new int64_t[B]);
    // Below about 8k elements a parallel region costs more than the work (K = 10 stays on one thread); at
    // B = 256, K = 100 a second thread already pays, as it does for torch.softmax.
    const int64_t grain = std::max<int64_t>(1, 8192 / (kCBRowsPerChunk * K));
    at::parallel_for(0, nchunks, grain, [&](int64_t c0, int64_t c1) {
      std::vector<acc_t> e(scratch);
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t b0 = c * kCBRowsPerChunk, rows = std::min(B - b0, kCBRowsPerChunk);
        cb_chunk(W, z + b0 * K, p + b0 * K, partial.data() + c * Kp, row_argmax.get() + b0, rows, K, e.data());
      }
    });
    acc_t* mp = mean_probs.data_ptr<acc_t>();
    int64_t* ct = counts.data_ptr<int64_t>();
    const acc_t* wp = w.data_ptr<acc_t>();
    mean_of_chunks(partial.data(), nchunks, Kp, K, B, mp);
    std::fill(ct, ct + K, int64_t(0));
    for (int64_t b = 0; b < B; ++b) ct[row_argmax[b]] += 1;
    acc_t* lg = partial.data();  // read above; K <= its size
    *loss.data_ptr<acc_t>() =
        fast_class_log(W, mp, lg, K) ? weighted_xlogx_sum(wp, mp, lg, K) : weighted_xlogx_sum(wp, mp, K);
  });
  return {loss, counts, probs, mean_probs};
}

// ---- backward rows: dz = p (g - <p, g>) / B ------------------------------------------------------
// g is padded with zeros to a multiple of 16 so whole vectors never read past it.
template <int W>
CBGAN_ALWAYS_INLINE void cb_backward_rows_simd(const float* p, const float* g, float* out, int64_t rows, int64_t K,
                                               float invB) {
  typedef typename simd::Vec<W>::f F;
  const int64_t Kv = K / W * W;
  for (int64_t b = 0; b < rows; ++b) {
    const float* pr = p + b * K;
    float* o = out + b * K;
    // four accumulators: one FMA chain's latency bounded the dot. Below 4W columns only the first is used,
    // so the sum (and the recorded runs, K = 10) is bit for bit the single-chain one.
    F a0 = F{}, a1 = F{}, a2 = F{}, a3 = F{};
    int64_t k = 0;
    for (; k + 4 * W <= Kv; k += 4 * W) {
      a0 += simd::load<W>(pr + k) * simd::load<W>(g + k);
      a1 += simd::load<W>(pr + k + W) * simd::load<W>(g + k + W);
      a2 += simd::load<W>(pr + k + 2 * W) * simd::load<W>(g + k + 2 * W);
      a3 += simd::load<W>(pr + k + 3 * W) * simd::load<W>(g + k + 3 * W);
    }
    for (; k < Kv; k += W) a0 += simd::load<W>(pr + k) * simd::load<W>(g + k);
    float dot = simd::hsum<W>((a0 + a1) + (a2 + a3));
    for (int64_t k = Kv; k < K; ++k) dot += pr[k] * g[k];
    for (int64_t k = 0; k < Kv; k += W)
      simd::store<W>(o + k, simd::load<W>(pr + k) * (simd::load<W>(g + k) - dot) * invB);
    for (int64_t k = Kv; k < K; ++k) o[k] = pr[k] * (g[k] - dot) * invB;
  }
}

#ifdef CBGAN_HAS_X86_DISPATCH
CBGAN_TARGET_AVX512 void cb_backward_rows_avx512(const float* p, const float* g, float* out, int64_t rows, int64_t K,
                                                 float invB) {
  cb_backward_rows_simd<16>(p, g, out, rows, K, invB);
}
CBGAN_TARGET_AVX2 void cb_backward_rows_avx2(const float* p, const float* g, float* out, int64_t rows, int64_t K,
                                             float invB) {
  cb_backward_rows_simd<8>(p, g, out, rows, K, invB);
}
#endif

void cb_backward_rows(int W, const float* p, const float* g, float* out, int64_t rows, int64_t K, float invB) {
#ifdef CBGAN_HAS_X86_DISPATCH
  if (W == 16) return cb_backward_rows_avx512(p, g, out, rows, K, invB);
  if (W == 8) return cb_backward_rows_avx2(p, g, out, rows, K, invB);
#endif
  cb_backward_rows_simd<4>(p, g, out, rows, K, invB);
}

// Other dtypes: plain loops (half/bfloat16 convert per element; float64 is the gradcheck path).
template <typename scalar_t, typename acc_t>
void cb_backward_rows(int, const scalar_t* p, const acc_t* g, scalar_t* out, int64_t rows, int64_t K, acc_t invB) {
  for (int64_t b = 0; b < rows; ++b) {
    const scalar_t* pr = p + b * K;
    acc_t dot = 0;
    for (int64_t k = 0; k < K; ++k) dot += static_cast<acc_t>(pr[k]) * g[k];
    scalar_t* o = out + b * K;
    for (int64_t k = 0; k < K; ++k) o[k] = static_cast<scalar_t>(static_cast<acc_t>(pr[k]) * (g[k] - dot) * invB);
  }
}

// grad may be probs itself: each row's dot is taken before the row is written, element k from p[k] only.
void cb_backward_into(const at::Tensor& grad_loss, const at::Tensor& probs, const at::Tensor& w_in,
                      const at::Tensor& mean_probs, at::Tensor& grad) {
  const int64_t B = probs.size(0), K = probs.size(1);
  const auto acc_type = mean_probs.scalar_type();
  const at::Tensor w = as_contiguous(w_in, acc_type);
  const at::Tensor mp = mean_probs.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, probs.scalar_type(), "class_balancing_loss_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    // the engine's grad_loss is a CPU scalar of the loss's dtype: read it without a dispatched item()
    const acc_t gl = grad_loss.scalar_type() == acc_type ? *grad_loss.const_data_ptr<acc_t>()
                                                          : grad_loss.item().to<acc_t>();
    std::vector<acc_t> g((K + 15) / 16 * 16, acc_t(0));
    const acc_t* wp = w.data_ptr<acc_t>();
    const acc_t* mpp = mp.data_ptr<acc_t>();
    const int W = cpu_simd_width();
    if (fast_class_log(W, mpp, g.data(), K)) {
      for (int64_t k = 0; k < K; ++k) g[k] = mpp[k] == acc_t(0) ? acc_t(0) : gl * wp[k] * (g[k] + acc_t(1));
    } else {
      for (int64_t k = 0; k < K; ++k) g[k] = cb_grad_coeff(gl, wp[k], mpp[k]);
    }
    const scalar_t* p = probs.data_ptr<scalar_t>();
    scalar_t* out = grad.data_ptr<scalar_t>();
    const acc_t invB = acc_t(1) / static_cast<acc_t>(B);
    const int64_t grain = std::max<int64_t>(1, 8192 / K);
    at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) {
      cb_backward_rows(W, p + b0 * K, g.data(), out + b0 * K, b1 - b0, K, invB);
    });
  });
}

at::Tensor cb_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& probs_in, const at::Tensor& w_in,
                           const at::Tensor& mean_probs) {
  check_cb_backward_inputs(grad_loss, probs_in, w_in, mean_probs);
  const at::Tensor probs = probs_in.contiguous();
  at::Tensor grad = at::empty_like(probs);
  cb_backward_into(grad_loss, probs, w_in, mean_probs, grad);
  return grad;
}

}  // namespace

bool cb_cpu_is_reused(const at::Tensor& probs) { return in_slot(probs, tl_probs); }

bool cb_cpu_probs_in_place(const at::Tensor& probs, int64_t other_refs) {
  return writable(probs, tl_probs, other_refs);
}

at::Tensor cb_cpu_backward_in_place(const at::Tensor& grad_loss, at::Tensor probs, const at::Tensor& w,
                                    const at::Tensor& mean_probs) {
  check_cb_backward_inputs(grad_loss, probs, w, mean_probs);
  cb_backward_into(grad_loss, probs, w, mean_probs, probs);
  return probs;
}

TORCH_LIBRARY_IMPL(cbgan_ext, CPU, m) {
  m.impl("class_balancing_loss_forward", &cb_forward_cpu);
  m.impl("_class_balancing_loss_backward", &cb_backward_cpu);
}

}  // namespace cbgan_ext

// Portable SIMD for the CPU kernels: GCC/Clang vector extensions of W float lanes. Each kernel is
// written once as an always_inline template over W and instantiated inside functions compiled for
// AVX-512 (W=16), AVX2+FMA (W=8) and the baseline ISA (W=4: SSE2 on x86-64, NEON on Arm), picked at run
// time (cpu_simd_width). Plain loops do not get there: std::exp stays a scalar libm call, and GCC will
// not if-convert a clamped polynomial exp.
#pragma once

#include <cstdint>

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"  // vectors only cross always_inline calls: no ABI involved
#endif

#define CBGAN_ALWAYS_INLINE __attribute__((always_inline)) inline

#if defined(__x86_64__) || defined(__i386__)
#define CBGAN_TARGET_AVX512 __attribute__((target("avx512f,avx512dq")))
#define CBGAN_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define CBGAN_HAS_X86_DISPATCH 1
#endif

namespace cbgan_ext {
namespace simd {

template <int W>
struct Vec {
  typedef float f __attribute__((vector_size(4 * W)));
  typedef int32_t i __attribute__((vector_size(4 * W)));
  typedef uint32_t u __attribute__((vector_size(4 * W)));
};

template <int W>
CBGAN_ALWAYS_INLINE typename Vec<W>::f load(const float* p) {
  typename Vec<W>::f v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}

template <int W>
CBGAN_ALWAYS_INLINE void store(float* p, typename Vec<W>::f v) {
  __builtin_memcpy(p, &v, sizeof(v));
}

template <int W>
CBGAN_ALWAYS_INLINE typename Vec<W>::f select(typename Vec<W>::i mask, typename Vec<W>::f a, typename Vec<W>::f b) {
  typedef typename Vec<W>::i I;
  typedef typename Vec<W>::f F;
  return (F)(((I)a & mask) | ((I)b & ~mask));
}

// Cephes expf's P: exp(r) ≈ 1 + r + r² P(r) for |r| <= ln 2 / 2.
template <int W>
CBGAN_ALWAYS_INLINE typename Vec<W>::f cephes_exp_p(typename Vec<W>::f r) {
  typename Vec<W>::f y = r * 1.9875691500e-4f + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  return y * r + 5.0000001201e-1f;
}

// exp(x) for x <= 0. Cephes expf polynomial: relative error below 1e-7 for x >= -87; 0 below 2^-126
// (libm would give a denormal).
template <int W>
CBGAN_ALWAYS_INLINE typename Vec<W>::f exp_nonpositive(typename Vec<W>::f x) {
  typedef typename Vec<W>::i I;
  typedef typename Vec<W>::f F;
  x = select<W>(x < -100.0f, F{} - 100.0f, x);
  // n = round(x / ln 2); x <= 0, so rounding is truncation of (0.5 - x·log2 e), negated.
  const F t = 0.5f - x * 1.44269504088896341f;
  const I n = -__builtin_convertvector(t, I);
  const I keep = n > -127;
  const I big = n > -126;
  const I nc = (n & big) | ((I{} - 126) & ~big);
  const F fn = __builtin_convertvector(nc, F);
  const F r = (x - fn * 0.693359375f) + fn * 2.12194440e-4f;
  const F y = cephes_exp_p<W>(r) * r * r + r + 1.0f;
  const I bits = ((nc + 127) << 23) & keep;
  return y * (F)bits;
}

// 2^(j/8), j = 0..7, twice (a 16-lane table is indexed by the low 4 bits).
alignas(64) inline constexpr float kExp2Eighths[16] = {
    1.0f, 1.0905077457427979f, 1.1892070770263672f, 1.2968395948410034f,
    1.4142135381698608f, 1.5422108173370361f, 1.6817928552627563f, 1.8340080976486206f,
    1.0f, 1.0905077457427979f, 1.1892070770263672f, 1.2968395948410034f,
    1.4142135381698608f, 1.5422108173370361f, 1.6817928552627563f, 1.8340080976486206f};

// kExp2Eighths[idx mod 8] per lane: GCC's generic shuffle is one in-register permute (vpermps) on AVX2 and
// AVX-512; x86 intrinsics cannot be inlined into these target-neutral templates.
template <int W>
CBGAN_ALWAYS_INLINE typename Vec<W>::f exp2_eighths(typename Vec<W>::i idx) {
#if defined(__GNUC__) && !defined(__clang__)
  if constexpr (W >= 8) {
    return __builtin_shuffle(load<W>(kExp2Eighths), idx);
  } else {
    return __builtin_shuffle(load<W>(kExp2Eighths), load<W>(kExp2Eighths + W), idx);
  }
#else
  typename Vec<W>::f out;
  for (int j = 0; j < W; ++j) out[j] = kExp2Eighths[idx[j] & 7];
  return out;
#endif
}

// exp(x) for x <= 0 as (2^n · 2^(j/8)) · e^r with |r| <= ln 2 / 16 and e^r a cubic (relative error 2.6e-8): 14
// vector operations, 7 of them multiplies, against exp_nonpositive's 24. n goes into the table entry's exponent
// bits, so no multiply by 2^n follows the polynomial. Relative error below 1.2e-7 for x >= -86 and 1.5e-7 down to
// -86.6 (the table entry times r underflows there); 0 below, and for -inf; NaN gives NaN (through r). Its results
// differ from exp_nonpositive's in the last bits, so kernels whose outputs recorded runs depend on keep
// exp_nonpositive.
template <int W>
CBGAN_ALWAYS_INLINE typename Vec<W>::f exp_nonpositive_table(typename Vec<W>::f x) {
  typedef typename Vec<W>::i I;
  typedef typename Vec<W>::u U;
  typedef typename Vec<W>::f F;
  // m = round(8 x log2 e) in t's low bits (adding 1.5·2^23 rounds); n = floor(m / 8), j = m mod 8
  const F t = x * 11.5415603271117f + 12582912.0f;
  const F fm = t - 12582912.0f;
  const F r = (x - fm * 0.086669921875f) + fm * 2.6524305e-5f;  // ln 2 / 8 in two parts; fm times the first is exact
  // 2^(j/8) · 2^n: t's bits are 0x4B400000 + m, and the shifts keep n in the exponent field's place (n >= -125
  // above the cut-off, so the entry stays normal)
  const F tb = (F)((U)exp2_eighths<W>((I)t) + ((U)((I)t >> 3) << 23));
  const F q = (r * 0.1666685789823532f + 0.500064492225647f) * r + 1.0f;
  const F y = (tb * r) * q + tb;
  return (F)((U)y & ~(U)(x < -86.6f));
}

// log(x) for finite x > 0, denormals included: Cephes logf's polynomial, relative error below 2e-7 away from
// x = 1 and absolute below 1e-7 near it. Callers handle 0, NaN and Inf.
template <int W>
CBGAN_ALWAYS_INLINE typename Vec<W>::f log_positive(typename Vec<W>::f x) {
  typedef typename Vec<W>::i I;
  typedef typename Vec<W>::f F;
  const I tiny = x < 1.17549435e-38f;  // a denormal: scale into the normal range first
  x = select<W>(tiny, x * 8388608.0f, x);
  const I bits = (I)x;
  I e = ((bits >> 23) & 0xff) - 126 - (tiny & 23);  // x = m 2^e, m in [0.5, 1)
  F m = (F)((bits & 0x007fffff) | 0x3f000000);
  const I low = m < 0.707106781186547524f;  // then take m in [sqrt(1/2), sqrt(2)) about 1
  e += low;                                  // masks are -1 where true
  m = select<W>(low, m + m, m) - 1.0f;
  const F z = m * m;
  F y = m * 7.0376836292e-2f - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  const F fe = __builtin_convertvector(e, F);
  y = y * m * z + fe * -2.12194440e-4f - 0.5f * z;
  return (m + y) + fe * 0.693359375f;
}

template <int W>
CBGAN_ALWAYS_INLINE float hsum(typename Vec<W>::f v) {
  float s = 0.0f;
  for (int j = 0; j < W; ++j) s += v[j];
  return s;
}

}  // namespace simd

// Widest lane count this CPU runs: 16, 8 or 4.
inline int cpu_simd_width() {
#ifdef CBGAN_HAS_X86_DISPATCH
  static const int w = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") ? 16
                       : (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))   ? 8
                                                                                            : 4;
  return w;
#else
  return 4;
#endif
}

}  // namespace cbgan_ext

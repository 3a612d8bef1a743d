// DiffAugment (Zhao et al. 2020), math shared by CPU and CUDA.
//
// x: [B, C, H, W], NCHW-contiguous or channels_last (a sample is one contiguous block of C·H·W either way).
// A policy is a program of stages applied in order; each stage reads its own per-sample parameters:
//   color        c_b = (β, s, k) = (r_b − ½, 2 r_s, r_c + ½)       color       [n_color, B, 3] opmath
//                y = k·s·v_c + k(1−s)·v̄(p) + (1−k)·m + β       v̄(p): channel mean at pixel p, m: sample mean of v
//                (brightness, then saturation, then contrast, folded: both saturation and contrast keep
//                the mean they centre on, so one mean of the stage's input serves both).
//   translation  out(i, j) = v(i + t_h, j + t_w), 0 outside        translation [n_trans, B, 2] int64
//   cutout       out = 0 on rows [o_h − S_h/2, o_h − S_h/2 + S_h) × the same for columns, clipped
//                                                                  cutout      [n_cut, B, 2] int64 (o_h, o_w)
//
// Every stage is affine in v and equal on all channels, so after any prefix of the program an output pixel
// is either a constant (some spatial stage wrote a zero there, and the colour stages after it made it a
// per-sample constant), or an affine form of one input pixel:  out_c = a·x_c(src) + α·x̄(src) + γ,
// whose channel mean is va·x̄(src) + vg. da_trace finds src (or the stage that zeroed the pixel) and
// da_coef the coefficients; a colour stage needs m, the sample mean of its input, which is one reduction
// pass over x per colour stage (a plain sum when no spatial stage precedes it).
//
// Non-finite values, as the reference. A program without colour stages (`pure`: translations and cutouts only)
// only moves and zeroes pixels, channel by channel: a translation reads the zero padding (a NaN or Inf moved
// out of the frame is gone), a cutout multiplies by a zero mask (x·0: NaN and Inf give NaN). So for pure
// programs a cutout does not end the trace: the pixel stays live with factor 0 (da_trace's `masked`).
// With colour stages: a colour stage whose input holds any non-finite value gives NaN everywhere (its
// means are non-finite, and (v − m)·k + m is NaN for m = ±Inf even where the fused form would give ±Inf);
// later translations bring in zeros, cutouts keep the NaN (NaN·0), and the next colour stage is NaN again if
// any of its input comes from that NaN. Only the first colour stage can see a non-finite x: any later one
// reads x through it. da_poison finds, per sample, the colour stages whose input holds a non-finite value
// (the first from its mean, which then also sums x·0 over cut pixels; the others from the one before), and
// da_poisoned says whether an output pixel reads from one of them; those pixels are written as NaN.
//
// Backward: the map is affine with a symmetric linear part per colour stage (the channel-mean and sample-mean
// projections are symmetric), so the adjoint is the same program reversed, with β = 0 and t negated
// (a translation's adjoint gathers the gradient shifted back); cutout is self-adjoint.
#pragma once

#include "macros.h"

#include <cmath>
#include <vector>

namespace cbgan_ext {

enum DAStageType : int { kDAColor = 0, kDATranslation = 1, kDACutout = 2 };
constexpr int kDAMaxStages = 16;

// Passed by value to CUDA kernels, so fixed-size arrays.
struct DAProgram {
  int n = 0;
  int type[kDAMaxStages] = {};
  int pidx[kDAMaxStages] = {};  // row of the stage's parameter tensor (occurrence index of its type)
  int64_t sign = 1;             // translation direction: −1 in the adjoint
  int brightness = 1;           // 0 in the adjoint: β drops out of a linear map's adjoint
  int pure = 1;                 // no colour stage: outputs are x_c(src)·{0, 1} or 0, never channel mixes
  int64_t cut_h = 0, cut_w = 0;
};

template <typename acc_t>
struct DACoef {
  acc_t a, alpha, gamma, va, vg;
};

HOST_DEVICE int da_clip(int64_t a, int64_t lo, int64_t hi) { return static_cast<int>(a < lo ? lo : (a > hi ? hi : a)); }

// Spatial parameters of stage s for sample b, clamped into int32 without changing which pixels they move out
// of range or cover (positions lie in [0, H) before each stage): translation v = (sign·t_h, sign·t_w, -, -);
// cutout v = [r0, r1) × [c0, c1).
HOST_DEVICE void da_stage_params(const DAProgram& p, int s, const int64_t* trans, const int64_t* cut, int64_t b,
                                 int64_t B, int64_t H, int64_t W, int* v) {
  if (p.type[s] == kDATranslation) {
    const int64_t* t = trans + (p.pidx[s] * B + b) * 2;
    v[0] = da_clip(p.sign * t[0], -(H + 1), H + 1);
    v[1] = da_clip(p.sign * t[1], -(W + 1), W + 1);
    v[2] = v[3] = 0;
  } else if (p.type[s] == kDACutout) {
    const int64_t* o = cut + (p.pidx[s] * B + b) * 2;
    const int64_t r0 = o[0] - p.cut_h / 2, c0 = o[1] - p.cut_w / 2;
    v[0] = da_clip(r0, -1, H + 1);
    v[1] = da_clip(r0 + p.cut_h, -1, H + 1);
    v[2] = da_clip(c0, -1, W + 1);
    v[3] = da_clip(c0 + p.cut_w, -1, W + 1);
  } else {
    v[0] = v[1] = v[2] = v[3] = 0;
  }
}

// Traces output pixel (i, j) of stages [0, end) back to the input, with v[4 s ..] from da_stage_params.
// Returns 0 and the source pixel when the pixel reads x, else s + 1 where stage s wrote a zero that the later
// stages carry. cut_masks (pure programs, and the poison scan): a cutout sets *masked (the source is multiplied
// by 0) instead of returning.
HOST_DEVICE int da_trace(const DAProgram& p, int end, const int* v, int H, int W, int i, int j, int* si, int* sj,
                         bool* masked, bool cut_masks) {
  for (int s = end - 1; s >= 0; --s) {
    const int* u = v + 4 * s;
    if (p.type[s] == kDATranslation) {
      i += u[0];
      j += u[1];
      if (i < 0 || i >= H || j < 0 || j >= W) return s + 1;
    } else if (p.type[s] == kDACutout) {
      if (i >= u[0] && i < u[1] && j >= u[2] && j < u[3]) {
        if (!cut_masks) return s + 1;
        *masked = true;
      }
    }
  }
  *si = i;
  *sj = j;
  return 0;
}

// Coefficients of a pixel after stages [start, end), entering stage `start` as x (start = 0) or as 0.
// means[pidx * B + b]: the sample mean of each colour stage's input.
template <typename acc_t>
HOST_DEVICE DACoef<acc_t> da_coef(const DAProgram& p, int start, int end, const acc_t* color, const acc_t* means,
                                  int64_t b, int64_t B) {
  const acc_t one = start == 0 ? acc_t(1) : acc_t(0);
  DACoef<acc_t> c{one, acc_t(0), acc_t(0), one, acc_t(0)};
  for (int s = start; s < end; ++s) {
    if (p.type[s] != kDAColor) continue;
    const acc_t* f = color + (p.pidx[s] * B + b) * 3;
    const acc_t beta = p.brightness ? f[0] : acc_t(0);
    const acc_t ks = f[2] * f[1], kr = f[2] * (acc_t(1) - f[1]);
    const acc_t off = (acc_t(1) - f[2]) * means[p.pidx[s] * B + b] + beta;
    c.alpha = ks * c.alpha + kr * c.va;
    c.gamma = ks * c.gamma + kr * c.vg + off;
    c.a = ks * c.a;
    c.va = f[2] * c.va;
    c.vg = f[2] * c.vg + off;
  }
  return c;
}

template <typename acc_t>
HOST_DEVICE bool da_finite(acc_t v) {
#ifdef __CUDA_ARCH__
  return isfinite(v);
#else
  return std::isfinite(v);
#endif
}

HOST_DEVICE int da_first_color(const DAProgram& p) {
  for (int s = 0; s < p.n; ++s)
    if (p.type[s] == kDAColor) return s;
  return p.n;
}

HOST_DEVICE bool da_cut_before(const DAProgram& p, int end) {
  for (int s = 0; s < end; ++s)
    if (p.type[s] == kDACutout) return true;
  return false;
}

// The rows [r[0], r[1]) and columns [r[2], r[3]) of stage lo's output that stage hi's input reads (lo < hi; lo = -1:
// of x): the frame moved by each translation in between; empty only when they move everything out of it.
HOST_DEVICE void da_visible_rect(const DAProgram& p, const int* v, int lo, int hi, int H, int W, int* r) {
  r[0] = 0, r[1] = H, r[2] = 0, r[3] = W;
  for (int s = hi - 1; s > lo; --s) {
    if (p.type[s] != kDATranslation) continue;
    const int* u = v + 4 * s;
    r[0] = r[0] + u[0] > 0 ? r[0] + u[0] : 0;
    r[1] = r[1] + u[0] < H ? r[1] + u[0] : H;
    r[2] = r[2] + u[1] > 0 ? r[2] + u[1] : 0;
    r[3] = r[3] + u[1] < W ? r[3] + u[1] : W;
  }
}

// Bit s set: colour stage s of sample b reads a non-finite value (see the top of this file). v from
// da_stage_params for every stage, means as for da_coef.
template <typename acc_t>
HOST_DEVICE uint32_t da_poison(const DAProgram& p, const int* v, const acc_t* means, int64_t b, int64_t B, int H,
                               int W) {
  uint32_t bits = 0;
  int prev = -1;
  for (int q = 0; q < p.n; ++q) {
    if (p.type[q] != kDAColor) continue;
    bool bad = !da_finite(means[p.pidx[q] * B + b]);
    if (prev >= 0 && ((bits >> prev) & 1u)) {
      int r[4];
      da_visible_rect(p, v, prev, q, H, W, r);
      bad = bad || (r[0] < r[1] && r[2] < r[3]);
    }
    if (bad) bits |= 1u << q;
    prev = q;
  }
  return bits;
}

// Whether output pixel (i, j) reads from a colour stage in `bits` (cutouts keep the NaN, the padding does not).
HOST_DEVICE bool da_poisoned(const DAProgram& p, const int* v, uint32_t bits, int H, int W, int i, int j) {
  for (int s = p.n - 1; s >= 0; --s) {
    const int* u = v + 4 * s;
    if (p.type[s] == kDAColor) {
      if ((bits >> s) & 1u) return true;
    } else if (p.type[s] == kDATranslation) {
      i += u[0];
      j += u[1];
      if (i < 0 || i >= H || j < 0 || j >= W) return false;
    }
  }
  return false;
}

inline bool da_has_spatial(const DAProgram& p, int end) {
  for (int s = 0; s < end; ++s)
    if (p.type[s] != kDAColor) return true;
  return false;
}

// Host-side checks shared by both backends; builds the program (reversed for the adjoint).
inline DAProgram da_make_program(const char* op, const at::Tensor& x, at::IntArrayRef program,
                                 const at::Tensor& color, const at::Tensor& trans, const at::Tensor& cut,
                                 at::IntArrayRef cutout_size, bool adjoint) {
  check_same_device(op, x, "x", color, "color params");
  check_same_device(op, x, "x", trans, "translation params");
  check_same_device(op, x, "x", cut, "cutout params");
  TORCH_CHECK(x.dim() == 4, op, ": x must be 4-D [B, C, H, W], got shape ", x.sizes());
  check_floating(op, x, "x");
  TORCH_CHECK(static_cast<int64_t>(program.size()) <= kDAMaxStages, op, ": at most ", kDAMaxStages,
              " policy groups are supported, got ", program.size());
  TORCH_CHECK(cutout_size.size() == 2 && cutout_size[0] >= 0 && cutout_size[1] >= 0, op,
              ": cutout_size must be two non-negative ints, got ", cutout_size);
  const int64_t B = x.size(0);
  int counts[3] = {0, 0, 0};
  DAProgram p;
  p.n = static_cast<int>(program.size());
  for (int s = 0; s < p.n; ++s) {
    const int64_t t = program[s];
    TORCH_CHECK(t >= 0 && t <= 2, op, ": program entries must be 0 (color), 1 (translation) or 2 (cutout), got ",
                program);
    const int k = adjoint ? p.n - 1 - s : s;
    p.type[k] = static_cast<int>(t);
    p.pidx[k] = counts[t]++;
    if (t == kDAColor) p.pure = 0;
  }
  p.sign = adjoint ? -1 : 1;
  p.brightness = adjoint ? 0 : 1;
  p.cut_h = cutout_size[0];
  p.cut_w = cutout_size[1];
  check_floating(op, color, "color params");
  TORCH_CHECK(color.dim() == 3 && color.size(0) == counts[0] && color.size(1) == B && color.size(2) == 3, op,
              ": color params must be [", counts[0], ", ", B, ", 3] (one row per color group, one per sample), got ",
              color.sizes());
  TORCH_CHECK(trans.scalar_type() == at::kLong && trans.dim() == 3 && trans.size(0) == counts[1] &&
                  trans.size(1) == B && trans.size(2) == 2,
              op, ": translation params must be int64 [", counts[1], ", ", B, ", 2], got ", trans.scalar_type(), " ",
              trans.sizes());
  TORCH_CHECK(cut.scalar_type() == at::kLong && cut.dim() == 3 && cut.size(0) == counts[2] && cut.size(1) == B &&
                  cut.size(2) == 2,
              op, ": cutout params must be int64 [", counts[2], ", ", B, ", 2], got ", cut.scalar_type(), " ",
              cut.sizes());
  return p;
}

}  // namespace cbgan_ext

// CPU kernels of DiffAugment; formula, layouts and the adjoint in common/diff_augment.h.
// Passes: one reduction per colour stage (for the default order only a plain per-sample sum of x forward, and
// one traced sum of the gradient backward), then one elementwise pass. Both walk output rows: along a row
// every translation moves the source by a constant, so a row is traced once into runs of columns that read
// x (an affine map of a contiguous source segment) or hold a constant; the inner loops are plain
// restrict-qualified loops over a run, which vectorise.
// Sums are per sample, in a fixed order on one thread each: results do not depend on the thread count.
// Batches of many samples run one parallel region per call: sample by sample, reduce then write.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "../common/diff_augment.h"

namespace cbgan_ext {
namespace {

// A run of columns [j0, j1) of an output row with the same start stage (0: reads x; s > 0: a constant).
// masked (pure programs only): the run reads x and a cutout multiplies it by 0.
struct Run {
  int64_t j0, j1;
  int start;
  bool masked;
};

// Splits output row i of stages [0, end) into runs and returns the source row and column offset of the
// columns that read x (translations move a whole row by a constant). Each stage zeroes at most two column
// intervals of the row, so the runs come from the sorted interval ends: O(stages²) per row, not O(W).
// Row i's path through stages [0, end): the source row, and a signature of which stages zero the whole row
// or a band of it (a translation moving it out of range, a cutout containing it). Rows of one sample with the
// same signature have the same runs, so trace_row only runs when the signature changes.
inline uint64_t row_signature(const DAProgram& p, int end, const int64_t* trans, const int64_t* cut, int64_t b,
                              int64_t B, int64_t H, int64_t i, int64_t* src_row) {
  uint64_t sig = 0;
  int64_t r = i;
  for (int s = end - 1; s >= 0; --s) {
    if (p.type[s] == kDATranslation) {
      r += p.sign * trans[(p.pidx[s] * B + b) * 2];
      if (r < 0 || r >= H) {
        sig |= uint64_t(1) << (2 * s);
        break;
      }
    } else if (p.type[s] == kDACutout) {
      const int64_t r0 = cut[(p.pidx[s] * B + b) * 2] - p.cut_h / 2;
      if (r >= r0 && r < r0 + p.cut_h) sig |= uint64_t(2) << (2 * s);
    }
  }
  *src_row = r;
  return sig;
}

void trace_row(const DAProgram& p, int end, const int64_t* trans, const int64_t* cut, int64_t b, int64_t B,
               int64_t H, int64_t W, int64_t i, std::vector<Run>& runs, int64_t* src_row, int64_t* col_off) {
  struct Iv {
    int64_t j0, j1;
    int v;
    bool cut;
  };
  Iv iv[2 * kDAMaxStages + 1];
  int64_t pts[4 * kDAMaxStages + 4];
  int nv = 0, np = 0;
  auto add = [&](int64_t j0, int64_t j1, int v, bool is_cut = false) {
    j0 = std::max<int64_t>(j0, 0);
    j1 = std::min<int64_t>(j1, W);
    if (j0 >= j1) return;
    iv[nv++] = {j0, j1, v, is_cut};
    pts[np++] = j0;
    pts[np++] = j1;
  };
  int64_t r = i, off = 0;
  for (int s = end - 1; s >= 0; --s) {
    if (p.type[s] == kDATranslation) {
      const int64_t* t = trans + (p.pidx[s] * B + b) * 2;
      r += p.sign * t[0];
      off += p.sign * t[1];
      if (r < 0 || r >= H) {
        add(0, W, s + 1);  // earlier stages cannot show through
        break;
      }
      add(0, -off, s + 1);
      add(W - off, W, s + 1);
    } else if (p.type[s] == kDACutout) {
      const int64_t* o = cut + (p.pidx[s] * B + b) * 2;
      const int64_t r0 = o[0] - p.cut_h / 2, c0 = o[1] - p.cut_w / 2;
      if (r >= r0 && r < r0 + p.cut_h) add(c0 - off, c0 + p.cut_w - off, s + 1, true);
    }
  }
  pts[np++] = 0;
  pts[np++] = W;
  std::sort(pts, pts + np);
  np = static_cast<int>(std::unique(pts, pts + np) - pts);
  runs.clear();
  for (int k = 0; k + 1 < np; ++k) {
    int v = 0;  // the latest stage that zeroed this elementary segment, which lies wholly inside or outside each
    bool masked = false;
    for (int q = 0; q < nv; ++q)
      if (iv[q].j0 <= pts[k] && pts[k + 1] <= iv[q].j1) {
        if (p.pure && iv[q].cut)
          masked = true;  // pure programs: a cutout multiplies by 0, it does not replace the value
        else
          v = std::max(v, iv[q].v);
      }
    masked = masked && v == 0;
    if (!runs.empty() && runs.back().start == v && runs.back().masked == masked)
      runs.back().j1 = pts[k + 1];
    else
      runs.push_back({pts[k], pts[k + 1], v, masked});
  }
  *src_row = r;
  *col_off = off;
}

// 16 independent partial sums: vectorises without reassociation flags, and sums in a fixed order.
template <typename acc_t>
struct LaneSum {
  static constexpr int L = 16;
  acc_t part[L] = {};
  template <typename scalar_t>
  void add(const scalar_t* __restrict__ x, int64_t n) {
    acc_t p[L];
    for (int l = 0; l < L; ++l) p[l] = part[l];
    int64_t k = 0;
    for (; k + L <= n; k += L)
      for (int l = 0; l < L; ++l) p[l] += static_cast<acc_t>(x[k + l]);
    for (int l = 0; k < n; ++k, ++l) p[l] += static_cast<acc_t>(x[k]);
    for (int l = 0; l < L; ++l) part[l] = p[l];
  }
  acc_t total() const {
    acc_t s = 0;
    for (int l = 0; l < L; ++l) s += part[l];
    return s;
  }
};

// out_c[j] = A·x_c[j] + (alC·Σ_c x_c[j] + g0) over n columns of NCHW rows (channel stride xs / os).
// CC > 0: the channel count known at compile time (1 and 3 cover images), one fused loop; else generic.
template <int CC, typename scalar_t, typename acc_t>
void live_run_nchw(const scalar_t* __restrict__ x, int64_t xs, scalar_t* __restrict__ o, int64_t os, int64_t C,
                   int64_t n, acc_t A, acc_t alC, acc_t g0, acc_t* __restrict__ tmp) {
  if constexpr (CC > 0) {
    for (int64_t j = 0; j < n; ++j) {
      acc_t v[CC];
      acc_t s = 0;
      for (int c = 0; c < CC; ++c) {
        v[c] = static_cast<acc_t>(x[c * xs + j]);
        s += v[c];
      }
      const acc_t base = alC * s + g0;
      for (int c = 0; c < CC; ++c) o[c * os + j] = static_cast<scalar_t>(A * v[c] + base);
    }
  } else {
    for (int64_t j = 0; j < n; ++j) tmp[j] = static_cast<acc_t>(x[j]);
    for (int64_t c = 1; c < C; ++c) {
      const scalar_t* __restrict__ xc = x + c * xs;
      for (int64_t j = 0; j < n; ++j) tmp[j] += static_cast<acc_t>(xc[j]);
    }
    for (int64_t j = 0; j < n; ++j) tmp[j] = alC * tmp[j] + g0;
    for (int64_t c = 0; c < C; ++c) {
      const scalar_t* __restrict__ xc = x + c * xs;
      scalar_t* __restrict__ oc = o + c * os;
      for (int64_t j = 0; j < n; ++j) oc[j] = static_cast<scalar_t>(A * static_cast<acc_t>(xc[j]) + tmp[j]);
    }
  }
}

template <typename scalar_t, typename acc_t>
void live_run_nhwc(const scalar_t* __restrict__ x, scalar_t* __restrict__ o, int64_t C, int64_t n, acc_t A,
                   acc_t alC, acc_t g0) {
  for (int64_t j = 0; j < n; ++j) {
    const scalar_t* __restrict__ px = x + j * C;
    acc_t s = 0;
    for (int64_t c = 0; c < C; ++c) s += static_cast<acc_t>(px[c]);
    const acc_t base = alC * s + g0;
    for (int64_t c = 0; c < C; ++c) o[j * C + c] = static_cast<scalar_t>(A * static_cast<acc_t>(px[c]) + base);
  }
}

template <typename scalar_t>
void fill_run(scalar_t* __restrict__ o, int64_t n, scalar_t z) {
  for (int64_t j = 0; j < n; ++j) o[j] = z;
}

// Pure programs: a copy, or x·0 under a cutout (NaN and Inf give NaN, finite values ±0, as the reference's mask).
template <typename scalar_t, typename acc_t>
void move_run(const scalar_t* __restrict__ x, scalar_t* __restrict__ o, int64_t n, bool masked) {
  if (!masked) {
    std::copy(x, x + n, o);
    return;
  }
  for (int64_t j = 0; j < n; ++j) o[j] = static_cast<scalar_t>(static_cast<acc_t>(x[j]) * acc_t(0));
}

// Elements per parallel chunk (~50 µs of work). Under heavy load a parallel region can cost a scheduler
// quantum (seen: 12 ms at load 5-8 on 2 cores); on a quiet machine 1 << 20 left B=256 3x32x32 on one thread.
constexpr int64_t kDAGrain = int64_t(1) << 16;

template <typename scalar_t, typename acc_t>
struct Runner {
  const DAProgram& p;
  const scalar_t* x;
  int64_t B, C, H, W;
  bool nhwc;
  const acc_t* color;
  const int64_t* trans;
  const int64_t* cut;
  std::vector<acc_t> means;  // [n_color, B]

  // Σ over output pixels of sample b of the channel mean after stages [0, end): Σ_p va·x̄(src) + vg.
  acc_t traced_sum(int end, int64_t b) const {
    std::vector<DACoef<acc_t>> coef(end + 1);
    for (int s = 0; s <= end; ++s) coef[s] = da_coef<acc_t>(p, s, end, color, means.data(), b, B);
    std::vector<Run> runs;
    const int64_t HW = H * W;
    // va is per sample, so the x part is one sum over all live pixels: per-column partial sums down the rows
    // (elementwise adds, which vectorise), then one fixed-order sum of the columns.
    std::vector<acc_t> colsum(nhwc ? W * C : W, acc_t(0));
    acc_t* __restrict__ cs = colsum.data();
    acc_t consts = 0;
    uint64_t prev_sig = ~uint64_t(0);
    int64_t off = 0;
    for (int64_t i = 0; i < H; ++i) {
      int64_t r = 0;
      const uint64_t sig = row_signature(p, end, trans, cut, b, B, H, i, &r);
      if (sig != prev_sig) trace_row(p, end, trans, cut, b, B, H, W, i, runs, &r, &off);
      prev_sig = sig;
      acc_t row = 0;
      for (const Run& u : runs) {
        const int64_t n = u.j1 - u.j0;
        row += static_cast<acc_t>(n) * coef[u.start].vg;
        if (u.start != 0) continue;
        if (!nhwc) {
          const scalar_t* __restrict__ xr = x + (b * C * H + r) * W + off + u.j0;
          acc_t* __restrict__ cr = cs + u.j0;
          for (int64_t c = 0; c < C; ++c)
            for (int64_t j = 0; j < n; ++j) cr[j] += static_cast<acc_t>(xr[c * HW + j]);
        } else {
          const scalar_t* __restrict__ xr = x + ((b * H + r) * W + off + u.j0) * C;
          acc_t* __restrict__ cr = cs + u.j0 * C;
          for (int64_t k = 0; k < n * C; ++k) cr[k] += static_cast<acc_t>(xr[k]);
        }
      }
      consts += row;
    }
    LaneSum<acc_t> xs;
    xs.add(cs, static_cast<int64_t>(colsum.size()));
    return consts + coef[0].va * xs.total() / static_cast<acc_t>(C) + cut_poison(end, b);
  }

  // 0, or NaN when x holds a non-finite value where the first colour stage `end` reads it (x·0 under a cutout
  // in the reference: the stage's mean is NaN; the traced sum above skips cut pixels).
  acc_t cut_poison(int end, int64_t b) const {
    if (end != da_first_color(p) || !da_cut_before(p, end)) return acc_t(0);
    int v[4 * kDAMaxStages], r[4];
    for (int s = 0; s < end; ++s) da_stage_params(p, s, trans, cut, b, B, H, W, v + 4 * s);
    da_visible_rect(p, v, -1, end, static_cast<int>(H), static_cast<int>(W), r);
    LaneSum<acc_t> s;  // non-finite exactly when some summand is (or the sum overflows, as the reference's mean)
    for (int64_t i = r[0]; i < r[1] && r[2] < r[3]; ++i) {
      if (nhwc)
        s.add(x + ((b * H + i) * W + r[2]) * C, (r[3] - r[2]) * C);
      else
        for (int64_t c = 0; c < C; ++c) s.add(x + ((b * C + c) * H + i) * W + r[2], r[3] - r[2]);
    }
    return acc_t(0) * s.total();
  }

  // Pixels of rows [i0, i1) of sample b that read from a colour stage with a non-finite input are NaN, as in the
  // reference (the fused form can give ±Inf there, or a finite value under a cutout).
  void poison_rows(scalar_t* out, int64_t b, int64_t i0, int64_t i1) const {
    if (p.pure) return;
    bool finite = true;  // every mean finite: no stage reads a non-finite value (da_poison needs one)
    for (int64_t k = 0; k < static_cast<int64_t>(means.size()) / B; ++k) finite = finite && da_finite(means[k * B + b]);
    if (finite) return;
    int v[4 * kDAMaxStages];
    for (int s = 0; s < p.n; ++s) da_stage_params(p, s, trans, cut, b, B, H, W, v + 4 * s);
    const uint32_t bits = da_poison<acc_t>(p, v, means.data(), b, B, static_cast<int>(H), static_cast<int>(W));
    if (bits == 0) return;
    const scalar_t nan = static_cast<scalar_t>(std::numeric_limits<acc_t>::quiet_NaN());
    for (int64_t i = i0; i < i1; ++i)
      for (int64_t j = 0; j < W; ++j) {
        if (!da_poisoned(p, v, bits, static_cast<int>(H), static_cast<int>(W), static_cast<int>(i),
                         static_cast<int>(j)))
          continue;
        for (int64_t c = 0; c < C; ++c)
          out[nhwc ? ((b * H + i) * W + j) * C + c : ((b * C + c) * H + i) * W + j] = nan;
      }
  }

  // Means of every colour stage of sample b, in program order (each stage's coefficients need the earlier
  // means). Only entries of sample b are written, so samples can run on different threads.
  void sample_means(int64_t b) {
    const int64_t CHW = C * H * W;
    acc_t xmean = 0;
    bool have_xmean = false;
    for (int q = 0; q < p.n; ++q) {
      if (p.type[q] != kDAColor) continue;
      acc_t& m = means[p.pidx[q] * B + b];
      if (!da_has_spatial(p, q)) {
        // Every pixel reads x with the same coefficients: the mean is va·mean(x) + vg.
        if (!have_xmean) {
          LaneSum<acc_t> ls;
          ls.add(x + b * CHW, CHW);
          xmean = ls.total() / static_cast<acc_t>(CHW);
          have_xmean = true;
        }
        const DACoef<acc_t> c = da_coef<acc_t>(p, 0, q, color, means.data(), b, B);
        m = c.va * xmean + c.vg;
      } else {
        m = traced_sum(q, b) / static_cast<acc_t>(H * W);
      }
    }
  }

  // Output rows [i0, i1) of sample b, once the means of sample b are known.
  void apply_rows(scalar_t* out, int64_t b, int64_t i0, int64_t i1, std::vector<acc_t>& tmp,
                  std::vector<Run>& runs) const {
    const int n = p.n;
    DACoef<acc_t> cb[kDAMaxStages + 1];
    for (int s = 0; s <= n; ++s) cb[s] = da_coef<acc_t>(p, s, n, color, means.data(), b, B);
    const int64_t C_ = C, H_ = H, W_ = W, HW = H * W;
    const acc_t invC = acc_t(1) / static_cast<acc_t>(C_);
    const acc_t A = cb[0].a, alC = cb[0].alpha * invC, g0 = cb[0].gamma;
    int64_t off = 0;
    uint64_t prev_sig = ~uint64_t(0);
    for (int64_t i = i0; i < i1; ++i) {
      int64_t r = 0;
      const uint64_t sig = row_signature(p, n, trans, cut, b, B, H_, i, &r);
      if (sig != prev_sig) trace_row(p, n, trans, cut, b, B, H_, W_, i, runs, &r, &off);
      prev_sig = sig;
      for (const Run& u : runs) {
        const int64_t len = u.j1 - u.j0;
        if (p.pure && u.start == 0) {  // channel by channel: no channel sum that would spread a NaN
          if (!nhwc) {
            for (int64_t c = 0; c < C_; ++c)
              move_run<scalar_t, acc_t>(x + ((b * C_ + c) * H_ + r) * W_ + off + u.j0,
                                        out + ((b * C_ + c) * H_ + i) * W_ + u.j0, len, u.masked);
          } else {
            move_run<scalar_t, acc_t>(x + ((b * H_ + r) * W_ + off + u.j0) * C_, out + ((b * H_ + i) * W_ + u.j0) * C_,
                                      len * C_, u.masked);
          }
          continue;
        }
        if (!nhwc) {
          scalar_t* o = out + (b * C_ * H_ + i) * W_ + u.j0;
          if (u.start == 0) {
            const scalar_t* xr = x + (b * C_ * H_ + r) * W_ + off + u.j0;
            if (C_ == 3)
              live_run_nchw<3>(xr, HW, o, HW, C_, len, A, alC, g0, tmp.data());
            else if (C_ == 1)
              live_run_nchw<1>(xr, HW, o, HW, C_, len, A, alC, g0, tmp.data());
            else
              live_run_nchw<0>(xr, HW, o, HW, C_, len, A, alC, g0, tmp.data());
          } else {
            const scalar_t z = static_cast<scalar_t>(cb[u.start].gamma);
            for (int64_t c = 0; c < C_; ++c) fill_run(o + c * HW, len, z);
          }
        } else {
          scalar_t* o = out + ((b * H_ + i) * W_ + u.j0) * C_;
          if (u.start == 0) {
            live_run_nhwc<scalar_t, acc_t>(x + ((b * H_ + r) * W_ + off + u.j0) * C_, o, C_, len, A, alC, g0);
          } else {
            fill_run(o, len * C_, static_cast<scalar_t>(cb[u.start].gamma));
          }
        }
      }
    }
    poison_rows(out, b, i0, i1);
  }

  void run(scalar_t* out) {
    const int64_t CHW = C * H * W;
    if (B >= 2 * at::get_num_threads()) {
      // One parallel region over samples: a sample's means need only that sample, so each is reduced and then
      // written while it is still in cache. Chunks of at least kDAGrain elements: a parallel region costs a
      // scheduler quantum whenever a core is taken by another process, so small batches stay on one thread.
      at::parallel_for(0, B, std::max<int64_t>(1, kDAGrain / CHW), [&](int64_t b0, int64_t b1) {
        std::vector<acc_t> tmp(W);
        std::vector<Run> runs;
        for (int64_t b = b0; b < b1; ++b) {
          sample_means(b);
          apply_rows(out, b, 0, H, tmp, runs);
        }
      });
      return;
    }
    // Few, large samples: the reductions by sample, then the rows of all samples in parallel.
    at::parallel_for(0, B, std::max<int64_t>(1, kDAGrain / CHW), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) sample_means(b);
    });
    at::parallel_for(0, B * H, std::max<int64_t>(1, kDAGrain / (C * W)), [&](int64_t r0, int64_t r1) {
      std::vector<acc_t> tmp(W);
      std::vector<Run> runs;
      for (int64_t row = r0; row < r1;) {
        const int64_t b = row / H, i0 = row % H, i1 = std::min(H, i0 + (r1 - row));
        apply_rows(out, b, i0, i1, tmp, runs);
        row += i1 - i0;
      }
    });
  }
};

at::Tensor da_run_cpu(const char* op, const at::Tensor& x_in, at::IntArrayRef program, const at::Tensor& color_in,
                      const at::Tensor& trans_in, const at::Tensor& cut_in, at::IntArrayRef cutout_size,
                      bool adjoint) {
  const DAProgram p = da_make_program(op, x_in, program, color_in, trans_in, cut_in, cutout_size, adjoint);
  const auto fmt = x_in.suggest_memory_format();
  const at::Tensor x = x_in.contiguous(fmt);
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(fmt));
  if (out.numel() == 0) return out;
  const auto acc_type = at::toOpMathType(x.scalar_type());
  const at::Tensor color = color_in.to(acc_type).contiguous();
  const at::Tensor trans = trans_in.contiguous(), cut = cut_in.contiguous();
  // channels_last with C == 1 is the NCHW arrangement too; NHWC indexing is right for it either way.
  const bool nhwc = fmt == at::MemoryFormat::ChannelsLast && x.size(1) > 1;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "diff_augment", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    Runner<scalar_t, acc_t> run{p, x.data_ptr<scalar_t>(), x.size(0), x.size(1), x.size(2), x.size(3), nhwc,
                                color.data_ptr<acc_t>(), trans.data_ptr<int64_t>(), cut.data_ptr<int64_t>(),
                                std::vector<acc_t>(color.size(0) * x.size(0), acc_t(0))};
    run.run(out.data_ptr<scalar_t>());
  });
  return out;
}

at::Tensor diff_augment_cpu(const at::Tensor& x, at::IntArrayRef program, const at::Tensor& color,
                            const at::Tensor& trans, const at::Tensor& cut, at::IntArrayRef cutout_size) {
  return da_run_cpu("diff_augment", x, program, color, trans, cut, cutout_size, false);
}

at::Tensor diff_augment_backward_cpu(const at::Tensor& grad, at::IntArrayRef program, const at::Tensor& color,
                                     const at::Tensor& trans, const at::Tensor& cut, at::IntArrayRef cutout_size) {
  return da_run_cpu("_diff_augment_backward", grad, program, color, trans, cut, cutout_size, true);
}

}  // namespace

TORCH_LIBRARY_IMPL(cbgan_ext, CPU, m) {
  m.impl("diff_augment", &diff_augment_cpu);
  m.impl("_diff_augment_backward", &diff_augment_backward_cpu);
}

}  // namespace cbgan_ext

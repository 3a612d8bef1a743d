// CPU kernels of DiffAugment; formula, layouts and the adjoint in common/diff_augment.h.
// Passes: one reduction per colour stage (for the default order only a plain per-sample sum of x forward, and
// one traced sum of the gradient backward), then one elementwise pass. Both walk output rows: along a row
// every translation moves the source by a constant, so a row is traced once (start stage per column, set on
// intervals) and the inner loops over columns are contiguous in NCHW and vectorise.
// Sums are per sample, in a fixed order on one thread each: results do not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../common/diff_augment.h"

namespace cbgan_ext {
namespace {

// Fills st[0, W) with the start stage of each column of output row i (see da_trace) and returns the source
// row and column offset of the columns that read x; false when no column of the row reads x.
bool trace_row(const DAProgram& p, int end, const int64_t* trans, const int64_t* cut, int64_t b, int64_t B,
               int64_t H, int64_t W, int64_t i, int* st, int64_t* src_row, int64_t* col_off) {
  std::fill(st, st + W, 0);
  int64_t r = i, off = 0;
  auto mark = [&](int64_t j0, int64_t j1, int v) {
    j0 = std::max<int64_t>(j0, 0);
    j1 = std::min<int64_t>(j1, W);
    for (int64_t j = j0; j < j1; ++j) st[j] = st[j] ? st[j] : v;  // the latest zeroing stage wins
  };
  for (int s = end - 1; s >= 0; --s) {
    if (p.type[s] == kDATranslation) {
      const int64_t* t = trans + (p.pidx[s] * B + b) * 2;
      r += p.sign * t[0];
      off += p.sign * t[1];
      if (r < 0 || r >= H) {
        mark(0, W, s + 1);
        return false;
      }
      mark(0, -off, s + 1);
      mark(W - off, W, s + 1);
    } else if (p.type[s] == kDACutout) {
      const int64_t* o = cut + (p.pidx[s] * B + b) * 2;
      const int64_t r0 = o[0] - p.cut_h / 2, c0 = o[1] - p.cut_w / 2;
      if (r >= r0 && r < r0 + p.cut_h) mark(c0 - off, c0 + p.cut_w - off, s + 1);
    }
  }
  *src_row = r;
  *col_off = off;
  return -off < W && W - off > 0;
}

template <typename scalar_t, typename acc_t>
acc_t sample_sum(const scalar_t* x, int64_t n) {
  // 16 independent partial sums: vectorises without reassociation flags, and a fixed order.
  constexpr int L = 16;
  acc_t part[L] = {};
  int64_t k = 0;
  for (; k + L <= n; k += L)
    for (int l = 0; l < L; ++l) part[l] += static_cast<acc_t>(x[k + l]);
  acc_t s = 0;
  for (; k < n; ++k) s += static_cast<acc_t>(x[k]);
  for (int l = 0; l < L; ++l) s += part[l];
  return s;
}

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

  // Sum over output pixels of sample b of the channel mean after stages [0, end): Σ_p va·x̄(src) + vg.
  acc_t traced_sum(int end, int64_t b) const {
    std::vector<DACoef<acc_t>> coef(end + 1);
    for (int s = 0; s <= end; ++s) coef[s] = da_coef<acc_t>(p, s, end, color, means.data(), b, B);
    std::vector<int> st(W);
    std::vector<acc_t> chsum(W);
    const acc_t invC = acc_t(1) / static_cast<acc_t>(C);
    acc_t total = 0;
    for (int64_t i = 0; i < H; ++i) {
      int64_t r = 0, off = 0;
      const bool any = trace_row(p, end, trans, cut, b, B, H, W, i, st.data(), &r, &off);
      acc_t row = 0;
      for (int64_t j = 0; j < W; ++j) row += coef[st[j]].vg;
      if (any) {
        const int64_t lo = std::max<int64_t>(0, -off), hi = std::min<int64_t>(W, W - off);
        std::fill(chsum.begin(), chsum.end(), acc_t(0));
        if (!nhwc) {
          for (int64_t c = 0; c < C; ++c) {
            const scalar_t* xr = x + ((b * C + c) * H + r) * W + off;
            for (int64_t j = lo; j < hi; ++j) chsum[j] += static_cast<acc_t>(xr[j]);
          }
        } else {
          const scalar_t* xr = x + ((b * H + r) * W + off) * C;
          for (int64_t j = lo; j < hi; ++j)
            for (int64_t c = 0; c < C; ++c) chsum[j] += static_cast<acc_t>(xr[j * C + c]);
        }
        acc_t live = 0;
        for (int64_t j = lo; j < hi; ++j) live += st[j] == 0 ? chsum[j] : acc_t(0);
        row += coef[0].va * live * invC;
      }
      total += row;
    }
    return total;
  }

  void compute_means() {
    const int64_t CHW = C * H * W;
    std::vector<acc_t> xmean;
    for (int q = 0; q < p.n; ++q) {
      if (p.type[q] != kDAColor) continue;
      acc_t* m = means.data() + p.pidx[q] * B;
      if (!da_has_spatial(p, q)) {
        // Every pixel reads x with the same coefficients: the mean is va·mean(x) + vg.
        if (xmean.empty()) {
          xmean.resize(B);
          at::parallel_for(0, B, std::max<int64_t>(1, 65536 / CHW), [&](int64_t b0, int64_t b1) {
            for (int64_t b = b0; b < b1; ++b)
              xmean[b] = sample_sum<scalar_t, acc_t>(x + b * CHW, CHW) / static_cast<acc_t>(CHW);
          });
        }
        for (int64_t b = 0; b < B; ++b) {
          const DACoef<acc_t> c = da_coef<acc_t>(p, 0, q, color, means.data(), b, B);
          m[b] = c.va * xmean[b] + c.vg;
        }
      } else {
        at::parallel_for(0, B, std::max<int64_t>(1, 65536 / CHW), [&](int64_t b0, int64_t b1) {
          for (int64_t b = b0; b < b1; ++b) m[b] = traced_sum(q, b) / static_cast<acc_t>(H * W);
        });
      }
    }
  }

  void apply(scalar_t* out) const {
    const int n = p.n;
    std::vector<DACoef<acc_t>> coef(B * (n + 1));
    for (int64_t b = 0; b < B; ++b)
      for (int s = 0; s <= n; ++s) coef[b * (n + 1) + s] = da_coef<acc_t>(p, s, n, color, means.data(), b, B);
    const acc_t invC = acc_t(1) / static_cast<acc_t>(C);
    const int64_t grain = std::max<int64_t>(1, 32768 / (C * W));
    at::parallel_for(0, B * H, grain, [&](int64_t r0, int64_t r1) {
      std::vector<int> st(W);
      std::vector<acc_t> zval(W), xbar(W);
      for (int64_t row = r0; row < r1; ++row) {
        const int64_t b = row / H, i = row % H;
        const DACoef<acc_t>* cb = coef.data() + b * (n + 1);
        int64_t r = 0, off = 0;
        const bool any = trace_row(p, n, trans, cut, b, B, H, W, i, st.data(), &r, &off);
        for (int64_t j = 0; j < W; ++j) zval[j] = cb[st[j]].gamma;
        const int64_t lo = any ? std::max<int64_t>(0, -off) : W, hi = any ? std::min<int64_t>(W, W - off) : W;
        const acc_t A = cb[0].a, al = cb[0].alpha;
        if (!nhwc) {
          const int64_t HW = H * W;
          const scalar_t* xr = x + (b * C * H + r) * W + off;  // channel c at + c·HW; valid on [lo, hi)
          if (lo < hi) {
            std::fill(xbar.begin() + lo, xbar.begin() + hi, acc_t(0));
            for (int64_t c = 0; c < C; ++c)
              for (int64_t j = lo; j < hi; ++j) xbar[j] += static_cast<acc_t>(xr[c * HW + j]);
            for (int64_t j = lo; j < hi; ++j) xbar[j] = st[j] == 0 ? al * xbar[j] * invC : acc_t(0);
          }
          for (int64_t c = 0; c < C; ++c) {
            scalar_t* o = out + ((b * C + c) * H + i) * W;
            const scalar_t* xc = xr + c * HW;
            for (int64_t j = 0; j < lo; ++j) o[j] = static_cast<scalar_t>(zval[j]);
            for (int64_t j = lo; j < hi; ++j) {
              const acc_t v = A * static_cast<acc_t>(xc[j]) + xbar[j];
              o[j] = static_cast<scalar_t>(st[j] == 0 ? v + zval[j] : zval[j]);
            }
            for (int64_t j = hi; j < W; ++j) o[j] = static_cast<scalar_t>(zval[j]);
          }
        } else {
          const scalar_t* xr = x + ((b * H + r) * W + off) * C;
          scalar_t* o = out + (b * H + i) * W * C;
          for (int64_t j = 0; j < W; ++j) {
            if (j >= lo && j < hi && st[j] == 0) {
              const scalar_t* px = xr + j * C;
              acc_t s = 0;
              for (int64_t c = 0; c < C; ++c) s += static_cast<acc_t>(px[c]);
              const acc_t base = al * s * invC + zval[j];
              for (int64_t c = 0; c < C; ++c) o[j * C + c] = static_cast<scalar_t>(A * static_cast<acc_t>(px[c]) + base);
            } else {
              const scalar_t z = static_cast<scalar_t>(zval[j]);
              for (int64_t c = 0; c < C; ++c) o[j * C + c] = z;
            }
          }
        }
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
    run.compute_means();
    run.apply(out.data_ptr<scalar_t>());
  });
  return out;
}

at::Tensor diff_augment_cpu(const at::Tensor& x, at::IntArrayRef program, const at::Tensor& color,
                            const at::Tensor& trans, const at::Tensor& cut, at::IntArrayRef cutout_size) {
  return da_run_cpu("diff_augment", x, program, color, trans, cut, cutout_size, false);
}

at::Tensor diff_augment_backward_cpu(const at::Tensor& grad, at::IntArrayRef program, const at::Tensor& color,
                                     const at::Tensor& trans, const at::Tensor& cut, at::IntArrayRef cutout_size) {
  return da_run_cpu("diff_augment_backward", grad, program, color, trans, cut, cutout_size, true);
}

}  // namespace

TORCH_LIBRARY_IMPL(cbgan_ext, CPU, m) {
  m.impl("diff_augment", &diff_augment_cpu);
  m.impl("_diff_augment_backward", &diff_augment_backward_cpu);
}

}  // namespace cbgan_ext

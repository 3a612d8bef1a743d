// CUDA kernels of DiffAugment; formula, layouts and the adjoint in common/diff_augment.h.
// Per colour stage: a reduction kernel over a grid (chunks, B) writes per-block partial sums (a plain sum of
// the sample's C·H·W elements, 16-byte loads, when no spatial stage precedes the colour stage, else the traced
// sum of the pixels' channel means), and a small finalize kernel sums the partials of each sample in a fixed
// order into the stage's mean (deterministic, no float atomics). Then one elementwise kernel: one thread per
// output pixel, all C channels, grid (tiles, B) so a block shares one sample's coefficient table and int32
// spatial parameters in shared memory. For the default order forward that is sum + finalize + apply; the
// second read of x mostly hits L2 at the benchmark's sizes.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../common/diff_augment.h"
#include "cuda_utils.cuh"

namespace cbgan_ext {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kMaxGridY = 65535;

// Per-block copy of one sample's program: the coefficient table of every start stage after stages [0, end)
// and the spatial parameters in int32 (all index math of the pixel loops is 32-bit).
template <typename acc_t>
struct SampleSmem {
  DACoef<acc_t> tab[kDAMaxStages + 1];
  int v[4 * kDAMaxStages];
};

template <typename acc_t>
__device__ void load_sample(SampleSmem<acc_t>& sm, const DAProgram& p, int end, const acc_t* color,
                            const int64_t* trans, const int64_t* cut, const acc_t* means, int64_t b, int64_t B,
                            int64_t H, int64_t W) {
  const int t = threadIdx.x;
  if (t <= end) sm.tab[t] = da_coef<acc_t>(p, t, end, color, means, b, B);
  if (t < end) da_stage_params(p, t, trans, cut, b, B, H, W, sm.v + 4 * t);
}

template <typename acc_t>
__device__ acc_t block_sum(acc_t v, acc_t* smem) {
  v = warp_sum(v);
  if ((threadIdx.x & 31) == 0) smem[threadIdx.x >> 5] = v;
  __syncthreads();
  acc_t t = 0;
  if (threadIdx.x == 0)
    for (int w = 0; w < kWarps; ++w) t += smem[w];  // fixed order
  return t;
}

// Channel sum of source pixel (si, sj) of sample base xs.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t channel_sum(const scalar_t* __restrict__ xs, int si, int sj, int C, int W, int HW,
                                             bool nhwc) {
  acc_t s = 0;
  if (nhwc) {
    const scalar_t* px = xs + (static_cast<int64_t>(si) * W + sj) * C;
    for (int c = 0; c < C; ++c) s += static_cast<acc_t>(px[c]);
  } else {
    const scalar_t* px = xs + si * W + sj;
    for (int c = 0; c < C; ++c) s += static_cast<acc_t>(px[static_cast<int64_t>(c) * HW]);
  }
  return s;
}

// Plain per-sample sums: a sample is C·H·W contiguous elements; 16-byte loads where aligned.
template <typename scalar_t, typename acc_t>
__global__ void da_sum_kernel(const scalar_t* __restrict__ x, acc_t* __restrict__ partial, int64_t B, int64_t CHW) {
  __shared__ acc_t red[kWarps];
  constexpr int V = 16 / sizeof(scalar_t);
  const int64_t P = gridDim.x;
  const int64_t chunk = ((CHW + P - 1) / P + V - 1) / V * V;  // a multiple of V keeps chunk starts aligned
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    const scalar_t* xs = x + b * CHW;
    const int64_t e0 = min(CHW, blockIdx.x * chunk), e1 = min(CHW, e0 + chunk);
    acc_t v = 0;
    if ((reinterpret_cast<uintptr_t>(xs + e0) % 16) == 0) {
      const int64_t nv = (e1 - e0) / V;
      const uint4* xv = reinterpret_cast<const uint4*>(xs + e0);
      for (int64_t k = threadIdx.x; k < nv; k += blockDim.x) {
        uint4 raw = __ldg(xv + k);
        const scalar_t* el = reinterpret_cast<const scalar_t*>(&raw);
#pragma unroll
        for (int l = 0; l < V; ++l) v += static_cast<acc_t>(el[l]);
      }
      for (int64_t e = e0 + nv * V + threadIdx.x; e < e1; e += blockDim.x) v += static_cast<acc_t>(xs[e]);
    } else {
      for (int64_t e = e0 + threadIdx.x; e < e1; e += blockDim.x) v += static_cast<acc_t>(xs[e]);
    }
    const acc_t t = block_sum(v, red);
    if (threadIdx.x == 0) partial[b * P + blockIdx.x] = t;
    __syncthreads();  // red is reused by the next sample
  }
}

// Traced per-sample sums of the channel mean after stages [0, end): Σ_p va·x̄(src) + vg.
template <typename scalar_t, typename acc_t>
__global__ void da_traced_sum_kernel(const scalar_t* __restrict__ x, DAProgram p, int end,
                                     const acc_t* __restrict__ color, const int64_t* __restrict__ trans,
                                     const int64_t* __restrict__ cut, const acc_t* __restrict__ means,
                                     acc_t* __restrict__ partial, int64_t B, int C, int H, int W, bool nhwc,
                                     bool cut_scan) {
  __shared__ SampleSmem<acc_t> sm;
  __shared__ acc_t red[kWarps];
  const int P = gridDim.x, HW = H * W;
  const acc_t invC = acc_t(1) / static_cast<acc_t>(C);
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    load_sample(sm, p, end, color, trans, cut, means, b, B, H, W);
    __syncthreads();
    const scalar_t* xs = x + b * static_cast<int64_t>(C) * HW;
    const int chunk = (HW + P - 1) / P, q0 = min(HW, static_cast<int>(blockIdx.x) * chunk), q1 = min(HW, q0 + chunk);
    acc_t v = 0;
    for (int q = q0 + threadIdx.x; q < q1; q += blockDim.x) {
      const int i = q / W, j = q - i * W;
      int si = 0, sj = 0;
      bool masked = false;  // colour programs only here: never set
      const int st = da_trace(p, end, sm.v, H, W, i, j, &si, &sj, &masked, false);
      v += st == 0 ? sm.tab[0].va * channel_sum<scalar_t, acc_t>(xs, si, sj, C, W, HW, nhwc) * invC + sm.tab[0].vg
                   : sm.tab[st].vg;
      // the first colour stage's mean is NaN in the reference when a cutout covers a non-finite x (x·0)
      if (cut_scan && st != 0 && da_trace(p, end, sm.v, H, W, i, j, &si, &sj, &masked, true) == 0)
        v += acc_t(0) * channel_sum<scalar_t, acc_t>(xs, si, sj, C, W, HW, nhwc);
    }
    const acc_t t = block_sum(v, red);
    if (threadIdx.x == 0) partial[b * P + blockIdx.x] = t;
    __syncthreads();  // red and sm are reused by the next sample
  }
}

template <typename acc_t>
__global__ void da_finalize_kernel(const acc_t* __restrict__ partial, int64_t P, DAProgram p, int q, bool plain,
                                   const acc_t* __restrict__ color, acc_t* __restrict__ means, int64_t B,
                                   int64_t CHW, int64_t HW) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= B) return;
  acc_t s = 0;
  for (int64_t k = 0; k < P; ++k) s += partial[b * P + k];
  acc_t m;
  if (plain) {
    const DACoef<acc_t> c = da_coef<acc_t>(p, 0, q, color, means, b, B);
    m = c.va * (s / static_cast<acc_t>(CHW)) + c.vg;
  } else {
    m = s / static_cast<acc_t>(HW);
  }
  means[p.pidx[q] * B + b] = m;
}

// One thread per output pixel, all C channels; grid (tiles, B).
template <typename scalar_t, typename acc_t>
__global__ void da_apply_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ out, DAProgram p,
                                const acc_t* __restrict__ color, const int64_t* __restrict__ trans,
                                const int64_t* __restrict__ cut, const acc_t* __restrict__ means, int64_t B, int C,
                                int H, int W, bool nhwc) {
  __shared__ SampleSmem<acc_t> sm;
  const int HW = H * W;
  const int64_t CHW = static_cast<int64_t>(C) * HW;
  const acc_t invC = acc_t(1) / static_cast<acc_t>(C);
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    load_sample(sm, p, p.n, color, trans, cut, means, b, B, H, W);
    __syncthreads();
    const DACoef<acc_t> c0 = sm.tab[0];
    const scalar_t* xs = x + b * CHW;
    scalar_t* os = out + b * CHW;
    // colour stages of this sample that read a non-finite value (see diff_augment.h); none when every mean is finite
    uint32_t bits = 0;
    if (!p.pure) {
      bool finite = true;
      for (int s = 0; s < p.n; ++s)
        if (p.type[s] == kDAColor) finite = finite && da_finite(means[p.pidx[s] * B + b]);
      if (!finite) bits = da_poison<acc_t>(p, sm.v, means, b, B, H, W);
    }
    for (int q = blockIdx.x * blockDim.x + threadIdx.x; q < HW; q += gridDim.x * blockDim.x) {
      const int i = q / W, j = q - i * W;
      if (bits != 0 && da_poisoned(p, sm.v, bits, H, W, i, j)) {
        const scalar_t nan = static_cast<scalar_t>(NAN);
        const int64_t cs = nhwc ? 1 : HW;
        scalar_t* o = os + (nhwc ? static_cast<int64_t>(q) * C : q);
        for (int c = 0; c < C; ++c) o[c * cs] = nan;
        continue;
      }
      int si = 0, sj = 0;
      bool masked = false;
      const int st = da_trace(p, p.n, sm.v, H, W, i, j, &si, &sj, &masked, p.pure);
      if (p.pure && st == 0) {  // channel by channel: a copy, or x·0 under a cutout (see diff_augment.h)
        const acc_t f = masked ? acc_t(0) : acc_t(1);
        const int64_t cs = nhwc ? 1 : HW;
        const scalar_t* px = xs + (nhwc ? (static_cast<int64_t>(si) * W + sj) * C : static_cast<int64_t>(si) * W + sj);
        scalar_t* o = os + (nhwc ? static_cast<int64_t>(q) * C : q);
        for (int c = 0; c < C; ++c) o[c * cs] = static_cast<scalar_t>(f * static_cast<acc_t>(px[c * cs]));
        continue;
      }
      if (nhwc) {
        scalar_t* o = os + static_cast<int64_t>(q) * C;
        if (st == 0) {
          const scalar_t* px = xs + (static_cast<int64_t>(si) * W + sj) * C;
          acc_t s = 0;
          for (int c = 0; c < C; ++c) s += static_cast<acc_t>(px[c]);
          const acc_t base = c0.alpha * s * invC + c0.gamma;
          for (int c = 0; c < C; ++c) o[c] = static_cast<scalar_t>(c0.a * static_cast<acc_t>(px[c]) + base);
        } else {
          const scalar_t z = static_cast<scalar_t>(sm.tab[st].gamma);
          for (int c = 0; c < C; ++c) o[c] = z;
        }
      } else {
        scalar_t* o = os + q;
        if (st == 0) {
          const scalar_t* px = xs + si * W + sj;
          if (C == 3) {  // the common case: three independent loads in flight
            const acc_t v0 = static_cast<acc_t>(px[0]), v1 = static_cast<acc_t>(px[HW]),
                        v2 = static_cast<acc_t>(px[2 * HW]);
            const acc_t base = c0.alpha * (v0 + v1 + v2) * invC + c0.gamma;
            o[0] = static_cast<scalar_t>(c0.a * v0 + base);
            o[HW] = static_cast<scalar_t>(c0.a * v1 + base);
            o[2 * HW] = static_cast<scalar_t>(c0.a * v2 + base);
          } else {
            acc_t s = 0;
            for (int c = 0; c < C; ++c) s += static_cast<acc_t>(px[static_cast<int64_t>(c) * HW]);
            const acc_t base = c0.alpha * s * invC + c0.gamma;
            for (int c = 0; c < C; ++c)
              o[static_cast<int64_t>(c) * HW] =
                  static_cast<scalar_t>(c0.a * static_cast<acc_t>(px[static_cast<int64_t>(c) * HW]) + base);
          }
        } else {
          const scalar_t z = static_cast<scalar_t>(sm.tab[st].gamma);
          for (int c = 0; c < C; ++c) o[static_cast<int64_t>(c) * HW] = z;
        }
      }
    }
    __syncthreads();  // sm is reloaded for the next sample
  }
}

at::Tensor da_run_cuda(const char* op, const at::Tensor& x_in, at::IntArrayRef program, const at::Tensor& color_in,
                       const at::Tensor& trans_in, const at::Tensor& cut_in, at::IntArrayRef cutout_size,
                       bool adjoint) {
  const DAProgram p = da_make_program(op, x_in, program, color_in, trans_in, cut_in, cutout_size, adjoint);
  c10::cuda::CUDAGuard guard(x_in.device());
  const auto fmt = x_in.suggest_memory_format();
  const at::Tensor x = x_in.contiguous(fmt);
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(fmt));
  if (out.numel() == 0) return out;
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), HW = H * W, CHW = C * HW;
  TORCH_CHECK(CHW < (int64_t(1) << 31) && H < (int64_t(1) << 29) && W < (int64_t(1) << 29), op,
              ": a sample must have fewer than 2^31 elements on CUDA, got shape ", x.sizes());
  const auto acc_type = at::toOpMathType(x.scalar_type());
  const at::Tensor color = color_in.to(acc_type).contiguous();
  const at::Tensor trans = trans_in.contiguous(), cut = cut_in.contiguous();
  const bool nhwc = fmt == at::MemoryFormat::ChannelsLast && C > 1;
  at::Tensor means = at::zeros({std::max<int64_t>(color.size(0), 1), B}, x.options().dtype(acc_type));
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, x.device().index()));
  auto stream = c10::cuda::getCurrentCUDAStream();
  const unsigned grid_y = static_cast<unsigned>(std::min(B, kMaxGridY));
  // Reductions: enough blocks to cover the SMs several times, each thread at least `per` items (16 elements
  // of the plain sum are four 16-byte loads; a traced pixel is C loads and a trace).
  auto chunks = [&](int64_t work, int64_t per, int64_t blocks_per_sm) {
    return std::max<int64_t>(1, std::min<int64_t>((work + per * kThreads - 1) / (per * kThreads),
                                                  (blocks_per_sm * sms + B - 1) / B));
  };
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "diff_augment", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* cp = color.data_ptr<acc_t>();
    const int64_t* tp = trans.data_ptr<int64_t>();
    const int64_t* kp = cut.data_ptr<int64_t>();
    acc_t* mp = means.data_ptr<acc_t>();
    at::Tensor plain_partial;  // the plain sum of x serves every colour stage with no spatial stage before it
    for (int q = 0; q < p.n; ++q) {
      if (p.type[q] != kDAColor) continue;
      const bool plain = !da_has_spatial(p, q);
      at::Tensor partial;
      if (plain) {
        if (!plain_partial.defined()) {
          const int64_t P = chunks(CHW, 16, 4);
          plain_partial = at::empty({B, P}, x.options().dtype(acc_type));
          da_sum_kernel<scalar_t, acc_t><<<dim3(static_cast<unsigned>(P), grid_y), kThreads, 0, stream>>>(
              x.data_ptr<scalar_t>(), plain_partial.data_ptr<acc_t>(), B, CHW);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
        partial = plain_partial;
      } else {
        const int64_t P = chunks(HW, 4, 8);
        partial = at::empty({B, P}, x.options().dtype(acc_type));
        da_traced_sum_kernel<scalar_t, acc_t><<<dim3(static_cast<unsigned>(P), grid_y), kThreads, 0, stream>>>(
            x.data_ptr<scalar_t>(), p, q, cp, tp, kp, mp, partial.data_ptr<acc_t>(), B, static_cast<int>(C),
            static_cast<int>(H), static_cast<int>(W), nhwc, q == da_first_color(p) && da_cut_before(p, q));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      da_finalize_kernel<acc_t><<<static_cast<unsigned>((B + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
          partial.data_ptr<acc_t>(), partial.size(1), p, q, plain, cp, mp, B, CHW, HW);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    // About 16 blocks per SM in all (two pixels per thread at 64x3x128x128 measured faster on an H100 than one).
    const int64_t tiles = std::max<int64_t>(1, std::min<int64_t>((HW + kThreads - 1) / kThreads,
                                                                 (16 * sms + B - 1) / B));
    da_apply_kernel<scalar_t, acc_t><<<dim3(static_cast<unsigned>(tiles), grid_y), kThreads, 0, stream>>>(
        x.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), p, cp, tp, kp, mp, B, static_cast<int>(C),
        static_cast<int>(H), static_cast<int>(W), nhwc);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor diff_augment_cuda(const at::Tensor& x, at::IntArrayRef program, const at::Tensor& color,
                             const at::Tensor& trans, const at::Tensor& cut, at::IntArrayRef cutout_size) {
  return da_run_cuda("diff_augment", x, program, color, trans, cut, cutout_size, false);
}

at::Tensor diff_augment_backward_cuda(const at::Tensor& grad, at::IntArrayRef program, const at::Tensor& color,
                                      const at::Tensor& trans, const at::Tensor& cut, at::IntArrayRef cutout_size) {
  return da_run_cuda("_diff_augment_backward", grad, program, color, trans, cut, cutout_size, true);
}

}  // namespace

TORCH_LIBRARY_IMPL(cbgan_ext, CUDA, m) {
  m.impl("diff_augment", &diff_augment_cuda);
  m.impl("_diff_augment_backward", &diff_augment_backward_cuda);
}

}  // namespace cbgan_ext

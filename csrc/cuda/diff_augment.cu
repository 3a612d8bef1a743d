// CUDA kernels of DiffAugment; formula, layouts and the adjoint in common/diff_augment.h.
// Per colour stage: a reduction kernel over a grid (chunks, B) writes per-block partial sums (a plain sum of
// the sample's C·H·W elements when no spatial stage precedes the colour stage, else the traced sum of the
// pixels' channel means), and a small finalize kernel sums the partials of each sample in a fixed order into
// the stage's mean (deterministic, no float atomics). Then one elementwise kernel: one thread per output
// pixel, all C channels, grid (tiles, B) so a block shares one sample's coefficient table in shared memory.
// For the default order forward that is sum + finalize + apply; the second read of x mostly hits L2.
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

// Coefficients for every start stage of sample b after stages [0, end), into shared memory.
template <typename acc_t>
__device__ void load_coef_table(DACoef<acc_t>* tab, const DAProgram& p, int end, const acc_t* color,
                                const acc_t* means, int64_t b, int64_t B) {
  for (int s = threadIdx.x; s <= end; s += blockDim.x) tab[s] = da_coef<acc_t>(p, s, end, color, means, b, B);
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

template <typename scalar_t, typename acc_t>
__global__ void da_reduce_kernel(const scalar_t* __restrict__ x, DAProgram p, int end, bool plain,
                                 const acc_t* __restrict__ color, const int64_t* __restrict__ trans,
                                 const int64_t* __restrict__ cut, const acc_t* __restrict__ means,
                                 acc_t* __restrict__ partial, int64_t B, int64_t C, int64_t H, int64_t W, bool nhwc) {
  __shared__ DACoef<acc_t> tab[kDAMaxStages + 1];
  __shared__ acc_t red[kWarps];
  const int64_t P = gridDim.x, HW = H * W, CHW = C * HW;
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    acc_t v = 0;
    if (plain) {
      const int64_t chunk = (CHW + P - 1) / P, e0 = blockIdx.x * chunk, e1 = min(CHW, e0 + chunk);
      const scalar_t* xs = x + b * CHW;
      for (int64_t e = e0 + threadIdx.x; e < e1; e += blockDim.x) v += static_cast<acc_t>(xs[e]);
    } else {
      load_coef_table(tab, p, end, color, means, b, B);
      __syncthreads();
      const acc_t invC = acc_t(1) / static_cast<acc_t>(C);
      const int64_t chunk = (HW + P - 1) / P, q0 = blockIdx.x * chunk, q1 = min(HW, q0 + chunk);
      for (int64_t q = q0 + threadIdx.x; q < q1; q += blockDim.x) {
        int64_t si = 0, sj = 0;
        const int st = da_trace(p, end, trans, cut, b, B, H, W, q / W, q % W, &si, &sj);
        if (st == 0) {
          acc_t s = 0;
          if (nhwc) {
            const scalar_t* px = x + ((b * H + si) * W + sj) * C;
            for (int64_t c = 0; c < C; ++c) s += static_cast<acc_t>(px[c]);
          } else {
            const scalar_t* px = x + (b * C * H + si) * W + sj;
            for (int64_t c = 0; c < C; ++c) s += static_cast<acc_t>(px[c * HW]);
          }
          v += tab[0].va * s * invC + tab[0].vg;
        } else {
          v += tab[st].vg;
        }
      }
    }
    const acc_t t = block_sum(v, red);
    if (threadIdx.x == 0) partial[b * P + blockIdx.x] = t;
    __syncthreads();  // red and tab are reused by the next sample
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

template <typename scalar_t, typename acc_t>
__global__ void da_apply_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ out, DAProgram p,
                                const acc_t* __restrict__ color, const int64_t* __restrict__ trans,
                                const int64_t* __restrict__ cut, const acc_t* __restrict__ means, int64_t B,
                                int64_t C, int64_t H, int64_t W, bool nhwc) {
  __shared__ DACoef<acc_t> tab[kDAMaxStages + 1];
  const int64_t HW = H * W;
  const acc_t invC = acc_t(1) / static_cast<acc_t>(C);
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    load_coef_table(tab, p, p.n, color, means, b, B);
    __syncthreads();
    const DACoef<acc_t> c0 = tab[0];
    for (int64_t q = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; q < HW;
         q += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const int64_t i = q / W, j = q % W;
      int64_t si = 0, sj = 0;
      const int st = da_trace(p, p.n, trans, cut, b, B, H, W, i, j, &si, &sj);
      if (nhwc) {
        scalar_t* o = out + ((b * H + i) * W + j) * C;
        if (st == 0) {
          const scalar_t* px = x + ((b * H + si) * W + sj) * C;
          acc_t s = 0;
          for (int64_t c = 0; c < C; ++c) s += static_cast<acc_t>(px[c]);
          const acc_t base = c0.alpha * s * invC + c0.gamma;
          for (int64_t c = 0; c < C; ++c) o[c] = static_cast<scalar_t>(c0.a * static_cast<acc_t>(px[c]) + base);
        } else {
          const scalar_t z = static_cast<scalar_t>(tab[st].gamma);
          for (int64_t c = 0; c < C; ++c) o[c] = z;
        }
      } else {
        scalar_t* o = out + b * C * HW + q;
        if (st == 0) {
          const scalar_t* px = x + (b * C * H + si) * W + sj;
          acc_t s = 0;
          for (int64_t c = 0; c < C; ++c) s += static_cast<acc_t>(px[c * HW]);
          const acc_t base = c0.alpha * s * invC + c0.gamma;
          for (int64_t c = 0; c < C; ++c) o[c * HW] = static_cast<scalar_t>(c0.a * static_cast<acc_t>(px[c * HW]) + base);
        } else {
          const scalar_t z = static_cast<scalar_t>(tab[st].gamma);
          for (int64_t c = 0; c < C; ++c) o[c * HW] = z;
        }
      }
    }
    __syncthreads();  // tab is reloaded for the next sample
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
  const auto acc_type = at::toOpMathType(x.scalar_type());
  const at::Tensor color = color_in.to(acc_type).contiguous();
  const at::Tensor trans = trans_in.contiguous(), cut = cut_in.contiguous();
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), HW = H * W, CHW = C * HW;
  const bool nhwc = fmt == at::MemoryFormat::ChannelsLast && C > 1;
  at::Tensor means = at::zeros({std::max<int64_t>(color.size(0), 1), B}, x.options().dtype(acc_type));
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, x.device().index()));
  auto stream = c10::cuda::getCurrentCUDAStream();
  const unsigned grid_y = static_cast<unsigned>(std::min(B, kMaxGridY));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "diff_augment", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* cp = color.data_ptr<acc_t>();
    const int64_t* tp = trans.data_ptr<int64_t>();
    const int64_t* kp = cut.data_ptr<int64_t>();
    acc_t* mp = means.data_ptr<acc_t>();
    at::Tensor plain_partial;  // the plain sum of x serves every colour stage with no spatial stage before it
    int64_t plain_P = 0;
    for (int q = 0; q < p.n; ++q) {
      if (p.type[q] != kDAColor) continue;
      const bool plain = !da_has_spatial(p, q);
      const int64_t work = plain ? CHW : HW;
      // Enough blocks to fill the GPU about twice, none with less than a few elements per thread.
      const int64_t P = std::max<int64_t>(1, std::min<int64_t>((work + 4 * kThreads - 1) / (4 * kThreads),
                                                               (2 * sms * 8 + B - 1) / B));
      at::Tensor partial;
      if (plain && plain_partial.defined()) {
        partial = plain_partial;
      } else {
        partial = at::empty({B, P}, x.options().dtype(acc_type));
        da_reduce_kernel<scalar_t, acc_t><<<dim3(static_cast<unsigned>(P), grid_y), kThreads, 0, stream>>>(
            x.data_ptr<scalar_t>(), p, q, plain, cp, tp, kp, mp, partial.data_ptr<acc_t>(), B, C, H, W, nhwc);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        if (plain) {
          plain_partial = partial;
          plain_P = P;
        }
      }
      const int64_t Pq = plain ? plain_P : P;
      da_finalize_kernel<acc_t><<<static_cast<unsigned>((B + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
          partial.data_ptr<acc_t>(), Pq, p, q, plain, cp, mp, B, CHW, HW);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    const int64_t tiles = std::max<int64_t>(1, std::min<int64_t>((HW + kThreads - 1) / kThreads,
                                                                 (8 * sms * 8 + B - 1) / B));
    da_apply_kernel<scalar_t, acc_t><<<dim3(static_cast<unsigned>(tiles), grid_y), kThreads, 0, stream>>>(
        x.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), p, cp, tp, kp, mp, B, C, H, W, nhwc);
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
  return da_run_cuda("diff_augment_backward", grad, program, color, trans, cut, cutout_size, true);
}

}  // namespace

TORCH_LIBRARY_IMPL(cbgan_ext, CUDA, m) {
  m.impl("diff_augment", &diff_augment_cuda);
  m.impl("_diff_augment_backward", &diff_augment_backward_cuda);
}

}  // namespace cbgan_ext

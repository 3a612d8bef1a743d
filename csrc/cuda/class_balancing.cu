// CUDA kernels of the class-balancing regularizer; formula and layouts in common/class_balancing.h.
// Forward: a block takes chunks of kCBRowsPerChunk rows. Each warp finds max/argmax/sum-exp of its rows
// (argmax counts by integer atomics: exact and order-free), then the block's threads walk the columns
// writing probs (coalesced) and adding into the block's own partial row. A one-block finalize kernel
// reduces the partials in a fixed order: deterministic, no float atomics.
// Backward: one warp per row, two sweeps over the (cached) row of saved probs.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../common/class_balancing.h"
#include "cuda_utils.cuh"

namespace cbgan_ext {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

template <typename scalar_t, typename acc_t>
__global__ void cb_forward_kernel(const scalar_t* __restrict__ z, scalar_t* __restrict__ p,
                                  acc_t* __restrict__ partial, unsigned long long* __restrict__ counts,
                                  int64_t B, int64_t K) {
  __shared__ acc_t row_max[kCBRowsPerChunk];
  __shared__ acc_t row_inv[kCBRowsPerChunk];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  acc_t* acc = partial + blockIdx.x * K;
  for (int64_t k = threadIdx.x; k < K; k += kThreads) acc[k] = acc_t(0);
  const int64_t nchunks = (B + kCBRowsPerChunk - 1) / kCBRowsPerChunk;
  for (int64_t c = blockIdx.x; c < nchunks; c += gridDim.x) {
    const int64_t b0 = c * kCBRowsPerChunk;
    const int rows = static_cast<int>(B - b0 < kCBRowsPerChunk ? B - b0 : kCBRowsPerChunk);
    for (int r = warp; r < rows; r += kWarps) {
      const scalar_t* zr = z + (b0 + r) * K;
      acc_t m = -INFINITY;
      int64_t am = K;  // K = none yet; ties resolve to the smallest index
      for (int64_t k = lane; k < K; k += 32) {
        const acc_t v = static_cast<acc_t>(zr[k]);
        if (v > m || (v != v && m == m)) { m = v; am = k; }
      }
      for (int o = 16; o > 0; o >>= 1) {
        const acc_t om = __shfl_xor_sync(0xffffffffu, m, o);
        const int64_t oa = __shfl_xor_sync(0xffffffffu, am, o);
        const bool take = (om > m) || (om != om && m == m) || ((om == m || (om != om && m != m)) && oa < am);
        if (take) { m = om; am = oa; }
      }
      acc_t s = 0;
      for (int64_t k = lane; k < K; k += 32) s += exp(static_cast<acc_t>(zr[k]) - m);
      s = warp_sum(s);
      if (lane == 0) {
        row_max[r] = m;
        row_inv[r] = acc_t(1) / s;
        atomicAdd(counts + (am < K ? am : 0), 1ull);
      }
    }
    __syncthreads();
    for (int64_t k = threadIdx.x; k < K; k += kThreads) {
      acc_t a = acc[k];
      for (int r = 0; r < rows; ++r) {
        const acc_t pk = exp(static_cast<acc_t>(z[(b0 + r) * K + k]) - row_max[r]) * row_inv[r];
        p[(b0 + r) * K + k] = static_cast<scalar_t>(pk);
        a += pk;
      }
      acc[k] = a;
    }
    __syncthreads();
  }
}

template <typename acc_t, typename out_t>
__global__ void cb_finalize_kernel(const acc_t* __restrict__ partial, int64_t nparts, const acc_t* __restrict__ w,
                                   acc_t* __restrict__ mean_probs, out_t* __restrict__ loss, int64_t B, int64_t K) {
  __shared__ acc_t warp_tot[kWarps];
  acc_t t = 0;
  for (int64_t k = threadIdx.x; k < K; k += kThreads) {
    acc_t s = 0;
    for (int64_t c = 0; c < nparts; ++c) s += partial[c * K + k];
    const acc_t mp = s / static_cast<acc_t>(B);
    mean_probs[k] = mp;
    t += w[k] * xlogx(mp);
  }
  t = warp_sum(t);
  if ((threadIdx.x & 31) == 0) warp_tot[threadIdx.x >> 5] = t;
  __syncthreads();
  if (threadIdx.x == 0) {
    acc_t tot = 0;
    for (int i = 0; i < kWarps; ++i) tot += warp_tot[i];
    *loss = static_cast<out_t>(tot);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void cb_backward_kernel(const acc_t* __restrict__ grad_loss, const scalar_t* __restrict__ p,
                                   const acc_t* __restrict__ w, const acc_t* __restrict__ mean_probs,
                                   scalar_t* __restrict__ out, int64_t B, int64_t K) {
  const int lane = threadIdx.x & 31;
  const int64_t b = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (b >= B) return;
  const acc_t gl = *grad_loss;
  const acc_t invB = acc_t(1) / static_cast<acc_t>(B);
  const scalar_t* pr = p + b * K;
  acc_t dot = 0;
  for (int64_t k = lane; k < K; k += 32) dot += static_cast<acc_t>(pr[k]) * cb_grad_coeff(gl, w[k], mean_probs[k]);
  dot = warp_sum(dot);
  for (int64_t k = lane; k < K; k += 32) {
    const acc_t g = cb_grad_coeff(gl, w[k], mean_probs[k]);
    out[b * K + k] = static_cast<scalar_t>(static_cast<acc_t>(pr[k]) * (g - dot) * invB);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> cb_forward_cuda(const at::Tensor& logits_in,
                                                                           const at::Tensor& w_in) {
  check_cb_inputs(logits_in, w_in);
  c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous();
  const int64_t B = logits.size(0), K = logits.size(1);
  const auto acc_type = at::toOpMathType(logits.scalar_type());
  const at::Tensor w = w_in.to(acc_type).contiguous();
  at::Tensor probs = at::empty_like(logits);
  at::Tensor counts = at::zeros({K}, logits.options().dtype(at::kLong));
  at::Tensor mean_probs = at::empty({K}, logits.options().dtype(acc_type));
  at::Tensor loss = at::empty({}, logits.options().dtype(acc_type));
  const int64_t nchunks = (B + kCBRowsPerChunk - 1) / kCBRowsPerChunk;
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, logits.device().index()));
  const int64_t nblocks = std::min<int64_t>(nchunks, 4 * sms);
  at::Tensor partial = at::empty({nblocks, K}, logits.options().dtype(acc_type));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "class_balancing_loss", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    cb_forward_kernel<scalar_t, acc_t><<<nblocks, kThreads, 0, stream>>>(
        logits.data_ptr<scalar_t>(), probs.data_ptr<scalar_t>(), partial.data_ptr<acc_t>(),
        reinterpret_cast<unsigned long long*>(counts.data_ptr<int64_t>()), B, K);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    cb_finalize_kernel<acc_t, acc_t><<<1, kThreads, 0, stream>>>(partial.data_ptr<acc_t>(), nblocks, w.data_ptr<acc_t>(),
                                                                 mean_probs.data_ptr<acc_t>(), loss.data_ptr<acc_t>(), B, K);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {loss, counts, probs, mean_probs};
}

at::Tensor cb_backward_cuda(const at::Tensor& grad_loss, const at::Tensor& probs_in, const at::Tensor& w_in,
                            const at::Tensor& mean_probs_in) {
  check_cb_backward_inputs(grad_loss, probs_in, w_in, mean_probs_in);
  c10::cuda::CUDAGuard guard(probs_in.device());
  const at::Tensor probs = probs_in.contiguous();
  const int64_t B = probs.size(0), K = probs.size(1);
  const auto acc_type = mean_probs_in.scalar_type();
  const at::Tensor w = w_in.to(acc_type).contiguous();
  const at::Tensor mp = mean_probs_in.contiguous();
  const at::Tensor gl = grad_loss.to(acc_type).contiguous();
  at::Tensor grad = at::empty_like(probs);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, probs.scalar_type(), "class_balancing_loss_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t blocks = (B + kWarps - 1) / kWarps;
    cb_backward_kernel<scalar_t, acc_t><<<blocks, kThreads, 0, stream>>>(
        gl.data_ptr<acc_t>(), probs.data_ptr<scalar_t>(), w.data_ptr<acc_t>(), mp.data_ptr<acc_t>(),
        grad.data_ptr<scalar_t>(), B, K);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(cbgan_ext, CUDA, m) {
  m.impl("class_balancing_loss_forward", &cb_forward_cuda);
  m.impl("_class_balancing_loss_backward", &cb_backward_cuda);
}

}  // namespace cbgan_ext

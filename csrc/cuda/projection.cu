// CUDA kernels of the soft-label projection; formula and layouts in common/projection.h.
//
// Soft labels: the products go to cuBLAS through at::mm (any strides of E, e.g. Vᵀ of a Linear weight,
//   cost nothing), fused around them: forward P = y E (cuBLAS), then one warp per row out_b = ⟨P_b, h_b⟩;
//   backward S = h Eᵀ (only when dy is needed), one elementwise kernel for dh = g P, dy = g S (in place)
//   and yg = y g, then dE = ygᵀ h (only when dE is needed).
// Hard labels: no products. Forward and dh: one warp per row reads E_{y_b} with E's strides. dE: block
//   (column tile, class chunk) walks the labels in order and adds g_b h_b into register accumulators of
//   its classes: deterministic (no float atomics), and each dE entry is written once, zeros included.
// Accumulation in opmath (float for half/bfloat16). Label range: checked on the host before launching
//   (one aminmax + one 16-byte copy to the host, which synchronises; skipped during CUDA graph capture).
//   A device-side assert would poison the CUDA context for the rest of the process; instead kernels treat
//   an out-of-range label as "no row" (out = NaN, dh row = NaN, no dE contribution) and never read out of
//   bounds, so a label that escapes the host check (graph capture) gives NaN, not a crash.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../common/projection.h"
#include "cuda_utils.cuh"

namespace cbgan_ext {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kClassChunk = 16;   // dE (hard labels): classes per block, accumulated in registers
constexpr int kLabelStage = 1024;  // labels and g staged in shared memory per pass

int64_t row_blocks(int64_t B) {
  return (B + kWarps - 1) / kWarps;
}

// out_b = <P_b, h_b>, one warp per row; P, h contiguous [B, L].
template <typename scalar_t, typename acc_t>
__global__ void rowdot_kernel(const scalar_t* __restrict__ P, const scalar_t* __restrict__ h,
                              scalar_t* __restrict__ out, int64_t B, int64_t L) {
  const int lane = threadIdx.x & 31;
  const int64_t b = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (b >= B) return;
  acc_t s = 0;
  for (int64_t l = lane; l < L; l += 32) s += static_cast<acc_t>(P[b * L + l]) * static_cast<acc_t>(h[b * L + l]);
  s = warp_sum(s);
  if (lane == 0) out[b] = static_cast<scalar_t>(s);
}

// Hard labels, one warp per row: out_b = <h_b, E_{y_b}> (out != nullptr) or dh_b = g_b E_{y_b}.
template <typename scalar_t, typename acc_t>
__global__ void hard_rows_kernel(const scalar_t* __restrict__ h, const scalar_t* __restrict__ E, int64_t sE0,
                                 int64_t sE1, const int64_t* __restrict__ labels, const acc_t* __restrict__ g,
                                 scalar_t* __restrict__ out, scalar_t* __restrict__ dh, int64_t B, int64_t K,
                                 int64_t L) {
  const int lane = threadIdx.x & 31;
  const int64_t b = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (b >= B) return;
  const int64_t lab = labels[b];
  const bool ok = proj_label_ok(lab, K);
  const scalar_t* e = E + (ok ? lab : 0) * sE0;
  if (out) {
    acc_t s = 0;
    if (ok)
      for (int64_t l = lane; l < L; l += 32) s += static_cast<acc_t>(h[b * L + l]) * static_cast<acc_t>(e[l * sE1]);
    s = warp_sum(s);
    if (lane == 0) out[b] = static_cast<scalar_t>(ok ? s : static_cast<acc_t>(NAN));
  } else {
    const acc_t gb = g[b];
    for (int64_t l = lane; l < L; l += 32)
      dh[b * L + l] = static_cast<scalar_t>(ok ? gb * static_cast<acc_t>(e[l * sE1]) : static_cast<acc_t>(NAN));
  }
}

// Hard labels: dE[k, l] = Σ_{b: y_b = k} g_b h[b, l] for the classes [k0, k0 + kClassChunk) of blockIdx.y and
// one column per thread. The label test is uniform across the block, so skipped rows cost a shared-memory
// read; each row of h is loaded only by the block that owns its class.
template <typename scalar_t, typename acc_t>
__global__ void hard_grad_embedding_kernel(const scalar_t* __restrict__ h, const int64_t* __restrict__ labels,
                                           const acc_t* __restrict__ g, scalar_t* __restrict__ dE, int64_t B,
                                           int64_t K, int64_t L) {
  __shared__ int64_t s_lab[kLabelStage];
  __shared__ acc_t s_g[kLabelStage];
  const int64_t l = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t k0 = static_cast<int64_t>(blockIdx.y) * kClassChunk;
  acc_t acc[kClassChunk];
#pragma unroll
  for (int j = 0; j < kClassChunk; ++j) acc[j] = 0;
  for (int64_t base = 0; base < B; base += kLabelStage) {
    const int n = static_cast<int>(B - base < kLabelStage ? B - base : kLabelStage);
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
      s_lab[i] = labels[base + i];
      s_g[i] = g[base + i];
    }
    __syncthreads();
    if (l < L) {
      for (int i = 0; i < n; ++i) {
        const int64_t j = s_lab[i] - k0;
        if (j < 0 || j >= kClassChunk) continue;
        const acc_t v = s_g[i] * static_cast<acc_t>(h[(base + i) * L + l]);
#pragma unroll
        for (int jj = 0; jj < kClassChunk; ++jj)
          if (jj == j) acc[jj] += v;  // static register index
      }
    }
  }
  if (l >= L) return;
#pragma unroll
  for (int j = 0; j < kClassChunk; ++j)
    if (k0 + j < K) dE[(k0 + j) * L + l] = static_cast<scalar_t>(acc[j]);
}

// Soft labels, backward elementwise: dh = g P over [B, L], then dy = g S (in place) and yg = y g over [B, K].
template <typename scalar_t, typename acc_t>
__global__ void soft_scale_kernel(const acc_t* __restrict__ g, const scalar_t* __restrict__ P, scalar_t* __restrict__ dh,
                                  scalar_t* __restrict__ S, const scalar_t* __restrict__ y, scalar_t* __restrict__ yg,
                                  int64_t B, int64_t K, int64_t L) {
  const int64_t nh = dh ? B * L : 0, nk = (S || yg) ? B * K : 0;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < nh + nk;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if (i < nh) {
      dh[i] = static_cast<scalar_t>(g[i / L] * static_cast<acc_t>(P[i]));
    } else {
      const int64_t j = i - nh;
      const acc_t gb = g[j / K];
      if (S) S[j] = static_cast<scalar_t>(gb * static_cast<acc_t>(S[j]));
      if (yg) yg[j] = static_cast<scalar_t>(gb * static_cast<acc_t>(y[j]));
    }
  }
}

void check_labels_cuda(const at::Tensor& y, int64_t K, cudaStream_t stream) {
  if (y.numel() == 0) return;
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &status));
  if (status != cudaStreamCaptureStatusNone) return;  // no host sync while capturing: kernels guard instead
  const auto mm = at::aminmax(y);
  const at::Tensor lohi = at::stack({std::get<0>(mm), std::get<1>(mm)}).cpu();
  const int64_t* v = lohi.data_ptr<int64_t>();
  check_label_range(v[0], v[1], K);
}

int elementwise_blocks(int64_t n, int device) {
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  const int64_t want = (n + kThreads - 1) / kThreads;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(want, 8 * sms)));
}

std::tuple<at::Tensor, at::Tensor> proj_forward_cuda(const at::Tensor& h_in, const at::Tensor& E, const at::Tensor& y_in) {
  check_proj_inputs(h_in, E, y_in);
  c10::cuda::CUDAGuard guard(h_in.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor h = h_in.contiguous();
  const at::Tensor y = y_in.contiguous();
  const int64_t B = h.size(0), L = h.size(1), K = E.size(0);
  at::Tensor out = at::empty({B}, h.options());
  if (proj_is_hard(y)) {
    check_labels_cuda(y, K, stream);
    if (B > 0) {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "soft_label_projection", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        hard_rows_kernel<scalar_t, acc_t><<<row_blocks(B), kThreads, 0, stream>>>(
            h.data_ptr<scalar_t>(), E.data_ptr<scalar_t>(), E.stride(0), E.stride(1), y.data_ptr<int64_t>(), nullptr,
            out.data_ptr<scalar_t>(), nullptr, B, K, L);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
    return {out, at::empty({0}, h.options())};
  }
  at::Tensor P = at::mm(y, E);
  if (B > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "soft_label_projection", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      rowdot_kernel<scalar_t, acc_t><<<row_blocks(B), kThreads, 0, stream>>>(
          P.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), B, L);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {out, P};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> proj_backward_cuda(const at::Tensor& grad_out, const at::Tensor& h_in,
                                                                   const at::Tensor& E, const at::Tensor& y_in,
                                                                   const at::Tensor& proj, std::array<bool, 3> mask) {
  check_proj_backward_inputs(grad_out, h_in, E, y_in, proj);
  c10::cuda::CUDAGuard guard(h_in.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor h = h_in.contiguous();
  const at::Tensor y = y_in.contiguous();
  const int64_t B = h.size(0), L = h.size(1), K = E.size(0);
  const bool hard = proj_is_hard(y);
  const bool need_dh = mask[0], need_dE = mask[1], need_dy = mask[2] && !hard;
  const auto acc_type = at::toOpMathType(h.scalar_type());
  const at::Tensor g = grad_out.to(acc_type).contiguous();  // an expanded (stride 0) grad of .sum(), materialised
  // Outputs must not alias one another (schema): each skipped gradient is its own empty tensor.
  auto none = [&] { return at::empty({0}, h.options()); };
  at::Tensor dh = need_dh ? at::empty({B, L}, h.options()) : none();

  if (hard) {
    at::Tensor dE = need_dE ? at::empty({K, L}, h.options()) : none();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "soft_label_projection_backward", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      if (need_dh && B > 0) {
        hard_rows_kernel<scalar_t, acc_t><<<row_blocks(B), kThreads, 0, stream>>>(
            nullptr, E.data_ptr<scalar_t>(), E.stride(0), E.stride(1), y.data_ptr<int64_t>(), g.data_ptr<acc_t>(),
            nullptr, dh.data_ptr<scalar_t>(), B, K, L);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      if (need_dE && L > 0) {
        constexpr int threads = 128;
        const dim3 grid(static_cast<unsigned>((L + threads - 1) / threads),
                        static_cast<unsigned>((K + kClassChunk - 1) / kClassChunk));
        hard_grad_embedding_kernel<scalar_t, acc_t><<<grid, threads, 0, stream>>>(
            h.data_ptr<scalar_t>(), y.data_ptr<int64_t>(), g.data_ptr<acc_t>(), dE.data_ptr<scalar_t>(), B, K, L);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
    return {dh, dE, none()};
  }

  const at::Tensor P = proj.contiguous();
  at::Tensor S = need_dy ? at::mm(h, E.t()) : at::Tensor();
  at::Tensor yg = need_dE ? at::empty({B, K}, h.options()) : at::Tensor();
  const int64_t n = (need_dh ? B * L : 0) + ((need_dy || need_dE) ? B * K : 0);
  if (n > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "soft_label_projection_backward", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      soft_scale_kernel<scalar_t, acc_t><<<elementwise_blocks(n, h.device().index()), kThreads, 0, stream>>>(
          g.data_ptr<acc_t>(), P.data_ptr<scalar_t>(), need_dh ? dh.data_ptr<scalar_t>() : nullptr,
          need_dy ? S.data_ptr<scalar_t>() : nullptr, y.data_ptr<scalar_t>(),
          need_dE ? yg.data_ptr<scalar_t>() : nullptr, B, K, L);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {dh, need_dE ? at::mm(yg.t(), h) : none(), need_dy ? S : none()};
}

}  // namespace

TORCH_LIBRARY_IMPL(cbgan_ext, CUDA, m) {
  m.impl("soft_label_projection_forward", &proj_forward_cuda);
  m.impl("_soft_label_projection_backward", &proj_backward_cuda);
}

}  // namespace cbgan_ext

// CUDA kernels of spectral normalization; formula and the [P, H, Q] view of the weight in
// common/spectral_norm.h.
//
// One cooperative launch does everything for up to kMaxLayers layers (a whole discriminator), its phases
// separated by grid-wide barriers; each phase is a list of block-sized work items spanning all layers:
//   A  colsum   partial[rc][j] = Σ_{h in row chunk rc} u_h W[h, j]   item = (layer, 256 columns, kRowsA rows)
//   B  reduce   s_j = Σ_rc partial[rc][j] (fixed order); Σ s_j² per column tile
//   C  rowdot   t_h = W_h · v, v_j = s_j / max(‖s‖, eps)             item = (layer, 8 rows), a warp per row
//   D  finish   u = t / max(‖t‖, eps), σ = uᵀ t (each block recomputes these from t, H values), W_sn = W / σ
// A-C repeat per power iteration (A recomputes u from the previous t); n_power_iterations = 0 runs C on
// the stored v and D with the stored u. Passes over W: 2 per iteration + 1 read and 1 write in D.
// No float atomics: every sum has a fixed order, so results are deterministic. u, v and σ are rounded to
// the weight's dtype where torch stores them. The layer table travels as a kernel argument (no copy).
// Backward: one cooperative launch, E: ⟨G, W⟩ per chunk | F: dW = G/σ − (⟨G, W⟩/σ²) u_h v_j.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cooperative_groups.h>

#include <map>
#include <mutex>
#include <utility>

#include "../common/spectral_norm.h"
#include "cuda_utils.cuh"

namespace cbgan_ext {
namespace {

namespace cg = cooperative_groups;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxLayers = 24;   // per launch: the layer table must fit the 4 KB of kernel arguments
constexpr int kRowsA = 32;       // rows per colsum item
constexpr int64_t kElems = 8192; // elements per W / σ (and backward) item

struct LayerArgs {
  const void* w;
  void* w_sn;  // null: power iteration only
  const void* u_in;
  const void* v_in;
  void* u_out;
  void* v_out;
  int64_t P, H, Q, N, numel;
  int64_t ws_partial, ws_s, ws_norm, ws_t;  // workspace offsets (acc_t elements)
  int rowchunks, tiles;                      // colsum row chunks, 256-column tiles
};

struct ForwardArgs {
  LayerArgs layer[kMaxLayers];
  int first_a[kMaxLayers + 1], first_b[kMaxLayers + 1], first_c[kMaxLayers + 1], first_d[kMaxLayers + 1];
  int L;
  int n_iter;
  double eps;
  void* sigma_out;  // [L] in the weight's dtype
  void* ws;
};

// Sum over the block, returned to every thread. Called by all threads of the block (uniform control flow).
template <typename acc_t>
__device__ acc_t block_sum(acc_t v, acc_t* red) {
  v = warp_sum(v);
  __syncthreads();  // red may still be read from a previous call
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  acc_t t = 0;
  for (int i = 0; i < kWarps; ++i) t += red[i];
  return t;
}

// ‖t‖² over the H values of t, the same value in every block.
template <typename acc_t>
__device__ acc_t block_sumsq(const acc_t* t, int64_t H, acc_t* red) {
  acc_t s = 0;
  for (int64_t h = threadIdx.x; h < H; h += kThreads) s += t[h] * t[h];
  return block_sum(s, red);
}

__device__ __forceinline__ int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

__device__ __forceinline__ int find_layer(const int* first, int L, int i, int l) {
  while (l < L && i >= first[l + 1]) ++l;
  return l;
}

// t_h = W_h · v for the kWarps rows of an item, a warp per row. v_j = round(s_j / denom) when s is given (a
// power iteration), else the stored v.
template <typename scalar_t, typename acc_t>
__device__ void rowdot_item(const LayerArgs& ly, int64_t h0, const acc_t* s, acc_t denom, acc_t* t) {
  const int lane = threadIdx.x & 31;
  const int64_t h = h0 + (threadIdx.x >> 5);
  if (h >= ly.H) return;
  const scalar_t* w = static_cast<const scalar_t*>(ly.w);
  const scalar_t* v_in = static_cast<const scalar_t*>(ly.v_in);
  acc_t acc = 0;
  if (ly.P == 1) {
    const scalar_t* wr = w + h * ly.Q;
    for (int64_t j = lane; j < ly.N; j += 32) {
      const acc_t vj = s ? static_cast<acc_t>(static_cast<scalar_t>(s[j] / denom)) : static_cast<acc_t>(v_in[j]);
      acc += static_cast<acc_t>(wr[j]) * vj;
    }
  } else {
    int64_t p = lane / ly.Q, q = lane % ly.Q;
    for (int64_t j = lane; j < ly.N; j += 32) {
      const acc_t vj = s ? static_cast<acc_t>(static_cast<scalar_t>(s[j] / denom)) : static_cast<acc_t>(v_in[j]);
      acc += static_cast<acc_t>(w[(p * ly.H + h) * ly.Q + q]) * vj;
      q += 32;
      while (q >= ly.Q) { q -= ly.Q; ++p; }
    }
  }
  acc = warp_sum(acc);
  if (lane == 0) t[h] = acc;
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) sn_forward_kernel(const __grid_constant__ ForwardArgs a) {
  using acc_t = at::opmath_type<scalar_t>;
  cg::grid_group grid = cg::this_grid();
  __shared__ acc_t red[kWarps];
  __shared__ acc_t sh_u[kRowsA];
  acc_t* ws = static_cast<acc_t*>(a.ws);
  const acc_t eps = static_cast<acc_t>(a.eps);

  for (int it = 0; it < a.n_iter; ++it) {
    // A: partial sums of Wᵀu over row chunks.
    for (int i = blockIdx.x, l = 0; i < a.first_a[a.L]; i += gridDim.x) {
      l = find_layer(a.first_a, a.L, i, l);
      const LayerArgs& ly = a.layer[l];
      const int k = i - a.first_a[l];
      const int tile = k % ly.tiles, rc = k / ly.tiles;
      const int64_t h0 = static_cast<int64_t>(rc) * kRowsA;
      const int rows = static_cast<int>(imin(kRowsA, ly.H - h0));
      const acc_t* t = ws + ly.ws_t;
      const acc_t denom = it > 0 ? sn_norm_denom(block_sumsq(t, ly.H, red), eps) : acc_t(1);
      if (threadIdx.x < rows) {
        const int64_t h = h0 + threadIdx.x;
        sh_u[threadIdx.x] = it > 0 ? static_cast<acc_t>(static_cast<scalar_t>(t[h] / denom))
                                   : static_cast<acc_t>(static_cast<const scalar_t*>(ly.u_in)[h]);
      }
      __syncthreads();
      const int64_t j = static_cast<int64_t>(tile) * kThreads + threadIdx.x;
      if (j < ly.N) {
        const int64_t p = j / ly.Q, q = j - p * ly.Q;
        const scalar_t* w = static_cast<const scalar_t*>(ly.w) + (p * ly.H + h0) * ly.Q + q;
        acc_t acc = 0;
        for (int r = 0; r < rows; ++r, w += ly.Q) acc += sh_u[r] * static_cast<acc_t>(*w);
        ws[ly.ws_partial + rc * ly.N + j] = acc;
      }
      __syncthreads();  // sh_u is reused by the block's next item
    }
    grid.sync();
    // B: s = Wᵀu, and Σ s² per tile.
    for (int i = blockIdx.x, l = 0; i < a.first_b[a.L]; i += gridDim.x) {
      l = find_layer(a.first_b, a.L, i, l);
      const LayerArgs& ly = a.layer[l];
      const int tile = i - a.first_b[l];
      const int64_t j = static_cast<int64_t>(tile) * kThreads + threadIdx.x;
      acc_t s = 0;
      if (j < ly.N) {
        for (int rc = 0; rc < ly.rowchunks; ++rc) s += ws[ly.ws_partial + rc * ly.N + j];
        ws[ly.ws_s + j] = s;
      }
      const acc_t ss = block_sum(s * s, red);
      if (threadIdx.x == 0) ws[ly.ws_norm + tile] = ss;
    }
    grid.sync();
    // C: v = s / max(‖s‖, eps), t = W v.
    for (int i = blockIdx.x, l = 0; i < a.first_c[a.L]; i += gridDim.x) {
      l = find_layer(a.first_c, a.L, i, l);
      const LayerArgs& ly = a.layer[l];
      const int k = i - a.first_c[l];
      acc_t ss = 0;
      for (int tile = 0; tile < ly.tiles; ++tile) ss += ws[ly.ws_norm + tile];
      const acc_t denom = sn_norm_denom(ss, eps);
      const acc_t* s = ws + ly.ws_s;
      if (k == 0 && it == a.n_iter - 1) {
        scalar_t* v_out = static_cast<scalar_t*>(ly.v_out);
        for (int64_t j = threadIdx.x; j < ly.N; j += kThreads) v_out[j] = static_cast<scalar_t>(s[j] / denom);
      }
      rowdot_item<scalar_t, acc_t>(ly, static_cast<int64_t>(k) * kWarps, s, denom, ws + ly.ws_t);
    }
    grid.sync();
  }
  if (a.n_iter == 0) {
    // Eval: t = W v with the stored v.
    for (int i = blockIdx.x, l = 0; i < a.first_c[a.L]; i += gridDim.x) {
      l = find_layer(a.first_c, a.L, i, l);
      const LayerArgs& ly = a.layer[l];
      const int k = i - a.first_c[l];
      if (k == 0) {
        const scalar_t* v_in = static_cast<const scalar_t*>(ly.v_in);
        scalar_t* v_out = static_cast<scalar_t*>(ly.v_out);
        for (int64_t j = threadIdx.x; j < ly.N; j += kThreads) v_out[j] = v_in[j];
      }
      rowdot_item<scalar_t, acc_t>(ly, static_cast<int64_t>(k) * kWarps, nullptr, acc_t(1), ws + ly.ws_t);
    }
    grid.sync();
  }
  // D: u, σ (recomputed per block from t), W / σ.
  for (int i = blockIdx.x, l = 0; i < a.first_d[a.L]; i += gridDim.x) {
    l = find_layer(a.first_d, a.L, i, l);
    const LayerArgs& ly = a.layer[l];
    const int k = i - a.first_d[l];
    const acc_t* t = ws + ly.ws_t;
    const scalar_t* u_in = static_cast<const scalar_t*>(ly.u_in);
    const acc_t denom = a.n_iter > 0 ? sn_norm_denom(block_sumsq(t, ly.H, red), eps) : acc_t(1);
    acc_t part = 0;
    for (int64_t h = threadIdx.x; h < ly.H; h += kThreads) {
      const acc_t uh = a.n_iter > 0 ? static_cast<acc_t>(static_cast<scalar_t>(t[h] / denom))
                                    : static_cast<acc_t>(u_in[h]);
      part += uh * t[h];
      if (k == 0) static_cast<scalar_t*>(ly.u_out)[h] = static_cast<scalar_t>(uh);
    }
    const scalar_t sigma_s = static_cast<scalar_t>(block_sum(part, red));
    if (k == 0 && threadIdx.x == 0) static_cast<scalar_t*>(a.sigma_out)[l] = sigma_s;
    if (ly.w_sn) {
      // W · (1/σ), as the CPU kernel: within an ulp of W / σ
      const acc_t inv = static_cast<acc_t>(1.0 / static_cast<double>(static_cast<acc_t>(sigma_s)));
      const scalar_t* w = static_cast<const scalar_t*>(ly.w);
      scalar_t* out = static_cast<scalar_t*>(ly.w_sn);
      const int64_t e1 = imin(ly.numel, (k + 1) * kElems);
      for (int64_t e = k * kElems + threadIdx.x; e < e1; e += kThreads)
        out[e] = static_cast<scalar_t>(static_cast<acc_t>(w[e]) * inv);
    }
  }
}

struct BackwardLayerArgs {
  const void* g;
  const void* w;
  const void* u;
  const void* v;
  void* out;
  int64_t P, H, Q, numel;
  int64_t ws_partial;
  int sigma_index;
};

struct BackwardArgs {
  BackwardLayerArgs layer[kMaxLayers];
  int first[kMaxLayers + 1];
  int L;
  const void* sigma;
  void* ws;
};

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) sn_backward_kernel(const __grid_constant__ BackwardArgs a) {
  using acc_t = at::opmath_type<scalar_t>;
  cg::grid_group grid = cg::this_grid();
  __shared__ acc_t red[kWarps];
  acc_t* ws = static_cast<acc_t*>(a.ws);
  // E: ⟨G, W⟩ per chunk.
  for (int i = blockIdx.x, l = 0; i < a.first[a.L]; i += gridDim.x) {
    l = find_layer(a.first, a.L, i, l);
    const BackwardLayerArgs& ly = a.layer[l];
    const int k = i - a.first[l];
    const scalar_t* g = static_cast<const scalar_t*>(ly.g);
    const scalar_t* w = static_cast<const scalar_t*>(ly.w);
    const int64_t e1 = imin(ly.numel, (k + 1) * kElems);
    acc_t d = 0;
    for (int64_t e = k * kElems + threadIdx.x; e < e1; e += kThreads)
      d += static_cast<acc_t>(g[e]) * static_cast<acc_t>(w[e]);
    d = block_sum(d, red);
    if (threadIdx.x == 0) ws[ly.ws_partial + k] = d;
  }
  grid.sync();
  // F: dW = G/σ − (⟨G, W⟩/σ²) u_h v_j with element (p, h, q) at (p·H + h)·Q + q and j = p·Q + q.
  for (int i = blockIdx.x, l = 0; i < a.first[a.L]; i += gridDim.x) {
    l = find_layer(a.first, a.L, i, l);
    const BackwardLayerArgs& ly = a.layer[l];
    const int k = i - a.first[l];
    const int nchunks = a.first[l + 1] - a.first[l];
    acc_t d = 0;
    for (int c = 0; c < nchunks; ++c) d += ws[ly.ws_partial + c];
    const acc_t sigma = static_cast<acc_t>(static_cast<const scalar_t*>(a.sigma)[ly.sigma_index]);
    const acc_t coef = d / (sigma * sigma);
    const acc_t inv = static_cast<acc_t>(1.0 / static_cast<double>(sigma));
    const scalar_t* g = static_cast<const scalar_t*>(ly.g);
    const scalar_t* u = static_cast<const scalar_t*>(ly.u);
    const scalar_t* v = static_cast<const scalar_t*>(ly.v);
    scalar_t* out = static_cast<scalar_t*>(ly.out);
    const int64_t e0 = k * kElems, e1 = imin(ly.numel, e0 + kElems);
    // Index arithmetic in 32 bits (the host checks numel < 2^31): two divisions per element at most.
    const uint32_t Q = static_cast<uint32_t>(ly.Q), H = static_cast<uint32_t>(ly.H);
    for (int64_t e = e0 + threadIdx.x; e < e1; e += kThreads) {
      const uint32_t ee = static_cast<uint32_t>(e);
      const uint32_t r = ee / Q, q = ee - r * Q;
      uint32_t h = r, p = 0;
      if (ly.P > 1) { p = r / H; h = r - p * H; }
      const acc_t uv = static_cast<acc_t>(u[h]) * static_cast<acc_t>(v[p * Q + q]);
      out[e] = static_cast<scalar_t>(static_cast<acc_t>(g[e]) * inv - coef * uv);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Host side.

// Most blocks that can be co-resident (what a cooperative launch may use), queried once per device and kernel.
template <typename Kernel>
int64_t max_cooperative_blocks(Kernel kernel, int dev) {
  // Keyed by the kernel too: the instantiations for each dtype share one function-pointer type but not
  // their register use, hence not their occupancy.
  static std::mutex mu;
  static std::map<std::pair<const void*, int>, int64_t> cache;
  const std::pair<const void*, int> key{reinterpret_cast<const void*>(kernel), dev};
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  int sms = 0, per_sm = 0, coop = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev));
  TORCH_CHECK(coop, "spectral_norm: this GPU does not support cooperative launches");
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, 0));
  TORCH_CHECK(per_sm > 0, "spectral_norm: the kernel cannot be resident on this GPU");
  return cache[key] = static_cast<int64_t>(per_sm) * sms;
}

template <typename Kernel, typename Args>
void launch_cooperative(Kernel kernel, Args& args, int64_t max_items, const at::Tensor& like) {
  const int64_t most = max_cooperative_blocks(kernel, like.device().index());
  const int64_t grid = std::max<int64_t>(1, std::min<int64_t>(max_items, most));
  void* params[] = {&args};
  C10_CUDA_CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<void*>(kernel), dim3(grid), dim3(kThreads), params, 0,
                                             c10::cuda::getCurrentCUDAStream()));
}

struct ForwardLayer {
  at::Tensor w, u, v, w_sn, u_out, v_out;
  SNShape s;
};

// Launches (one per kMaxLayers layers) writing w_sn (when defined), u_out, v_out and sigmas[l].
void sn_forward_cuda_layers(std::vector<ForwardLayer>& layers, int64_t n_iter, double eps, at::Tensor& sigmas) {
  const auto acc_type = at::toOpMathType(layers[0].w.scalar_type());
  for (size_t l0 = 0; l0 < layers.size(); l0 += kMaxLayers) {
    const int L = static_cast<int>(std::min<size_t>(kMaxLayers, layers.size() - l0));
    ForwardArgs a{};
    a.L = L;
    a.n_iter = static_cast<int>(n_iter);
    a.eps = eps;
    int64_t ws_size = 0, max_items = 1;
    for (int l = 0; l < L; ++l) {
      ForwardLayer& fl = layers[l0 + l];
      LayerArgs& ly = a.layer[l];
      ly.P = fl.s.P;
      ly.H = fl.s.H;
      ly.Q = fl.s.Q;
      ly.N = fl.s.N();
      ly.numel = fl.w.numel();
      ly.rowchunks = static_cast<int>((ly.H + kRowsA - 1) / kRowsA);
      ly.tiles = static_cast<int>((ly.N + kThreads - 1) / kThreads);
      ly.ws_partial = ws_size;
      ws_size += (n_iter > 0 ? ly.rowchunks * ly.N : 0);
      ly.ws_s = ws_size;
      ws_size += (n_iter > 0 ? ly.N : 0);
      ly.ws_norm = ws_size;
      ws_size += ly.tiles;
      ly.ws_t = ws_size;
      ws_size += ly.H;
      const int64_t items_c = (ly.H + kWarps - 1) / kWarps;
      const int64_t items_d = fl.w_sn.defined() ? (ly.numel + kElems - 1) / kElems : 1;
      TORCH_CHECK(static_cast<int64_t>(ly.rowchunks) * ly.tiles < (1LL << 30) && items_d < (1LL << 30),
                  "spectral_norm: weight too large (", ly.numel, " elements)");
      a.first_a[l + 1] = a.first_a[l] + ly.rowchunks * ly.tiles;
      a.first_b[l + 1] = a.first_b[l] + ly.tiles;
      a.first_c[l + 1] = a.first_c[l] + static_cast<int>(items_c);
      a.first_d[l + 1] = a.first_d[l] + static_cast<int>(items_d);
      ly.w = fl.w.data_ptr();
      ly.w_sn = fl.w_sn.defined() ? fl.w_sn.data_ptr() : nullptr;
      ly.u_in = fl.u.data_ptr();
      ly.v_in = fl.v.data_ptr();
      ly.u_out = fl.u_out.data_ptr();
      ly.v_out = fl.v_out.data_ptr();
    }
    for (const int* f : {a.first_a, a.first_b, a.first_c, a.first_d}) max_items = std::max<int64_t>(max_items, f[L]);
    TORCH_CHECK(max_items < (1LL << 31), "spectral_norm: too much work for one launch");
    at::Tensor ws = at::empty({std::max<int64_t>(ws_size, 1)}, layers[0].w.options().dtype(acc_type));
    a.ws = ws.data_ptr();
    a.sigma_out = static_cast<char*>(sigmas.data_ptr()) + l0 * sigmas.element_size();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, layers[0].w.scalar_type(), "spectral_norm_cuda", [&] {
      launch_cooperative(sn_forward_kernel<scalar_t>, a, max_items, layers[0].w);
    });
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sn_run_cuda(const char* op, const at::Tensor& weight,
                                                                       const at::Tensor& u, const at::Tensor& v,
                                                                       int64_t dim, int64_t n_iter, double eps,
                                                                       bool write_wsn) {
  dim = check_sn_layer(op, weight, u, v, dim);
  check_sn_iter(op, n_iter, eps);
  c10::cuda::CUDAGuard guard(weight.device());
  std::vector<ForwardLayer> layers(1);
  ForwardLayer& fl = layers[0];
  fl.w = weight.contiguous();
  fl.u = u.contiguous();
  fl.v = v.contiguous();
  fl.s = sn_shape(fl.w, dim);
  fl.u_out = at::empty_like(fl.u);
  fl.v_out = at::empty_like(fl.v);
  if (write_wsn) fl.w_sn = at::empty(fl.w.sizes(), fl.w.options());
  // 0-dim from the start, as the CPU kernel. (The H100 failure: `sigmas.view({})` binds `{}` to
  // view(ScalarType) and reinterpreted σ as 4 uint8.)
  at::Tensor sigma = at::empty({}, fl.w.options());
  sn_forward_cuda_layers(layers, n_iter, eps, sigma);
  return {fl.w_sn, fl.u_out, fl.v_out, sigma};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sn_power_iteration_cuda(const at::Tensor& weight_mat,
                                                                       const at::Tensor& u, const at::Tensor& v,
                                                                       int64_t n_iter, double eps) {
  constexpr const char* op = "spectral_norm_power_iteration";
  TORCH_CHECK(weight_mat.dim() == 2, op, ": weight_mat must be 2-D [out, in], got shape ", weight_mat.sizes());
  auto r = sn_run_cuda(op, weight_mat, u, v, 0, n_iter, eps, false);
  return {std::get<1>(r), std::get<2>(r), std::get<3>(r)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sn_weight_cuda(const at::Tensor& weight, const at::Tensor& u,
                                                                          const at::Tensor& v, int64_t dim,
                                                                          int64_t n_iter, double eps) {
  return sn_run_cuda("spectral_norm_weight", weight, u, v, dim, n_iter, eps, true);
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor> sn_weight_multi_cuda(
    at::TensorList weights, at::TensorList us, at::TensorList vs, at::IntArrayRef dims_in, int64_t n_iter, double eps) {
  constexpr const char* op = "spectral_norm_weight_multi";
  const std::vector<int64_t> dims = check_sn_multi(op, weights, us, vs, dims_in);
  check_sn_iter(op, n_iter, eps);
  c10::cuda::CUDAGuard guard(weights[0].device());
  const size_t L = weights.size();
  std::vector<ForwardLayer> layers(L);
  std::vector<at::Tensor> w_sn(L), u_out(L), v_out(L);
  for (size_t l = 0; l < L; ++l) {
    ForwardLayer& fl = layers[l];
    fl.w = weights[l].contiguous();
    fl.u = us[l].contiguous();
    fl.v = vs[l].contiguous();
    fl.s = sn_shape(fl.w, dims[l]);
    fl.u_out = u_out[l] = at::empty_like(fl.u);
    fl.v_out = v_out[l] = at::empty_like(fl.v);
    fl.w_sn = w_sn[l] = at::empty(fl.w.sizes(), fl.w.options());
  }
  at::Tensor sigmas = at::empty({static_cast<int64_t>(L)}, weights[0].options());
  sn_forward_cuda_layers(layers, n_iter, eps, sigmas);
  return {w_sn, u_out, v_out, sigmas};
}

// Backward launches for the layers with a gradient; the others get zeros.
std::vector<at::Tensor> sn_backward_cuda_layers(const char* op, const std::vector<at::Tensor>& grads,
                                                at::TensorList weights_in, at::TensorList us_in, at::TensorList vs_in,
                                                const at::Tensor& sigmas_in, const std::vector<int64_t>& dims) {
  const size_t L = weights_in.size();
  const at::Tensor sigmas = sigmas_in.to(weights_in[0].scalar_type()).contiguous();
  const auto acc_type = at::toOpMathType(weights_in[0].scalar_type());
  std::vector<at::Tensor> out(L), keep;
  std::vector<size_t> active;
  for (size_t l = 0; l < L; ++l) {
    if (grads[l].defined()) {
      TORCH_CHECK(weights_in[l].numel() < (1LL << 31), op, ": weights of 2^31 or more elements are not supported");
      out[l] = at::empty(weights_in[l].sizes(), weights_in[l].options());
      active.push_back(l);
    } else {
      out[l] = at::zeros(weights_in[l].sizes(), weights_in[l].options());
    }
  }
  for (size_t a0 = 0; a0 < active.size(); a0 += kMaxLayers) {
    const int n = static_cast<int>(std::min<size_t>(kMaxLayers, active.size() - a0));
    BackwardArgs a{};
    a.L = n;
    int64_t ws_size = 0;
    for (int i = 0; i < n; ++i) {
      const size_t l = active[a0 + i];
      BackwardLayerArgs& ly = a.layer[i];
      const at::Tensor g = grads[l].contiguous(), w = weights_in[l].contiguous();
      const at::Tensor u = us_in[l].contiguous(), v = vs_in[l].contiguous();
      keep.insert(keep.end(), {g, w, u, v});
      const SNShape s = sn_shape(w, dims[l]);
      ly.g = g.data_ptr();
      ly.w = w.data_ptr();
      ly.u = u.data_ptr();
      ly.v = v.data_ptr();
      ly.out = out[l].data_ptr();
      ly.P = s.P;
      ly.H = s.H;
      ly.Q = s.Q;
      ly.numel = w.numel();
      ly.sigma_index = static_cast<int>(l);
      ly.ws_partial = ws_size;
      const int64_t chunks = (ly.numel + kElems - 1) / kElems;
      ws_size += chunks;
      a.first[i + 1] = a.first[i] + static_cast<int>(chunks);
    }
    at::Tensor ws = at::empty({std::max<int64_t>(ws_size, 1)}, weights_in[0].options().dtype(acc_type));
    a.ws = ws.data_ptr();
    a.sigma = sigmas.data_ptr();
    const at::Tensor& like = out[active[a0]];
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, like.scalar_type(), "spectral_norm_backward_cuda",
                                    [&] { launch_cooperative(sn_backward_kernel<scalar_t>, a, a.first[n], like); });
  }
  return out;
}

at::Tensor sn_weight_backward_cuda(const at::Tensor& grad, const at::Tensor& weight, const at::Tensor& u,
                                   const at::Tensor& v, const at::Tensor& sigma, int64_t dim) {
  dim = check_sn_backward(grad, weight, u, v, sigma, dim);
  c10::cuda::CUDAGuard guard(weight.device());
  return sn_backward_cuda_layers(kSNBackwardOp, {grad}, {weight}, {u}, {v}, sigma.reshape({1}), {dim})[0];
}

std::vector<at::Tensor> sn_weight_multi_backward_cuda(const c10::List<std::optional<at::Tensor>>& grads_in,
                                                      at::TensorList weights, at::TensorList us, at::TensorList vs,
                                                      const at::Tensor& sigmas, at::IntArrayRef dims_in) {
  std::vector<at::Tensor> grads;
  const std::vector<int64_t> dims = check_sn_multi_backward(grads_in, weights, us, vs, sigmas, dims_in, &grads);
  c10::cuda::CUDAGuard guard(weights[0].device());
  return sn_backward_cuda_layers(kSNMultiBackwardOp, grads, weights, us, vs, sigmas, dims);
}

}  // namespace

TORCH_LIBRARY_IMPL(cbgan_ext, CUDA, m) {
  m.impl("spectral_norm_power_iteration", &sn_power_iteration_cuda);
  m.impl("spectral_norm_weight", &sn_weight_cuda);
  m.impl("_spectral_norm_weight_backward", &sn_weight_backward_cuda);
  m.impl("spectral_norm_weight_multi", &sn_weight_multi_cuda);
  m.impl("_spectral_norm_weight_multi_backward", &sn_weight_multi_backward_cuda);
}

}  // namespace cbgan_ext

// CPU kernels of spectral normalization; formula and the [P, H, Q] view of the weight in common/spectral_norm.h.
//
// Every op, single layer or a whole model, cuts each layer into row chunks (at most kMaxChunks, a fixed
// function of the shape) and runs, per batch of layers, three passes over the same chunk list, each one
// at::parallel_for with the chunks split between threads by cost:
//   colsum  s = Wᵀu    per chunk a partial s (64-column strips summed in registers), then summed in chunk order
//   rowdot  t = W v    each row's dot product within one chunk
//   scale   W · (1/σ)  elementwise.
// The per-layer norms between passes are serial (N + H values per layer). Sums have a fixed association
// (32 interleaved lanes, then a fixed tree; chunks in order), so results are the same for every thread count.
// Passes over W: 2 per power iteration (σ reuses t = W v) + 1 read and 1 write for W / σ; within a batch the
// later passes find W in cache (each thread gets the same chunks every pass).
// Backward: one pass computing ⟨G, W⟩ per layer (fixed chunks, partials summed in order), one writing dW.
//
// float and double inner loops are compiled for AVX-512, AVX2+FMA and the baseline ISA (GCC target_clones,
// picked at load time); half and bfloat16 take the generic loops converting to float.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../common/spectral_norm.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define CBGAN_SN_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CBGAN_SN_CLONES
#endif

namespace cbgan_ext {
namespace {

constexpr int64_t kColBlock = 64;      // columns per colsum item: 64 accumulators fit the vector registers
constexpr int64_t kLanes = 32;         // interleaved partial sums of a dot product
constexpr int64_t kItemWork = 16384;    // elements per row chunk (at least) and per backward item
constexpr int64_t kMaxChunks = 16;      // row chunks per layer at most: bounds the colsum partials to 16·N
constexpr int64_t kBatchWork = 262144;  // elements per batch of layers (1 MB of float): fits the cores' L2
constexpr int64_t kSerialWork = 32768;  // below this many elements a phase stays on the calling thread

// ---------------------------------------------------------------------------------------------------------
// Inner loops. acc_t sums; T is the stored type.

template <typename acc_t>
inline acc_t lanes_sum(const acc_t* lanes) {
  acc_t a[kLanes / 2];
  for (int64_t i = 0; i < kLanes / 2; ++i) a[i] = lanes[i] + lanes[i + kLanes / 2];
  for (int64_t w = kLanes / 4; w >= 1; w /= 2)
    for (int64_t i = 0; i < w; ++i) a[i] += a[i + w];
  return a[0];
}

// lanes[j % kLanes] += w[j] * v[j], j < n.
template <typename T, typename V, typename acc_t>
inline __attribute__((always_inline)) void dot_lanes(const T* __restrict__ w, const V* __restrict__ v, int64_t n,
                                                     acc_t* __restrict__ lanes) {
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int64_t k = 0; k < kLanes; ++k) lanes[k] += static_cast<acc_t>(w[j + k]) * static_cast<acc_t>(v[j + k]);
  for (int64_t k = 0; j + k < n; ++k) lanes[k] += static_cast<acc_t>(w[j + k]) * static_cast<acc_t>(v[j + k]);
}

// out[c] = Σ_h u[h] · w[h·ld + c], c < kColBlock, accumulating in registers.
template <typename T, typename acc_t>
inline __attribute__((always_inline)) void colsum_full(const T* __restrict__ w, int64_t ld, int64_t rows,
                                                       const acc_t* __restrict__ u, acc_t* __restrict__ out) {
  acc_t acc[kColBlock];
  for (int64_t c = 0; c < kColBlock; ++c) acc[c] = acc_t(0);
  for (int64_t h = 0; h < rows; ++h) {
    const acc_t uh = u[h];
    const T* wr = w + h * ld;
    for (int64_t c = 0; c < kColBlock; ++c) acc[c] += uh * static_cast<acc_t>(wr[c]);
  }
  for (int64_t c = 0; c < kColBlock; ++c) out[c] = acc[c];
}

template <typename T, typename acc_t>
inline __attribute__((always_inline)) void colsum_tail(const T* __restrict__ w, int64_t ld, int64_t rows, int64_t ncols,
                                                       const acc_t* __restrict__ u, acc_t* __restrict__ out) {
  acc_t acc[kColBlock];
  for (int64_t c = 0; c < kColBlock; ++c) acc[c] = acc_t(0);
  for (int64_t h = 0; h < rows; ++h) {
    const acc_t uh = u[h];
    const T* wr = w + h * ld;
    for (int64_t c = 0; c < ncols; ++c) acc[c] += uh * static_cast<acc_t>(wr[c]);
  }
  for (int64_t c = 0; c < ncols; ++c) out[c] = acc[c];
}

template <typename T, typename acc_t>
inline __attribute__((always_inline)) void div_rows(const T* __restrict__ w, int64_t n, acc_t inv_sigma,
                                                    T* __restrict__ out) {
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<T>(static_cast<acc_t>(w[i]) * inv_sigma);
}

// out[q] = g[q] / σ − a · v[q]  (a = ⟨G, W⟩ u_h / σ²)
template <typename T, typename acc_t>
inline __attribute__((always_inline)) void grad_row(const T* __restrict__ g, const acc_t* __restrict__ v, int64_t n,
                                                    acc_t inv_sigma, acc_t a, T* __restrict__ out) {
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<T>(static_cast<acc_t>(g[i]) * inv_sigma - a * v[i]);
}

// W / σ as W · (1/σ): a vector division costs several times a multiplication and would make the pass
// compute-bound; the product differs from the quotient by at most an ulp.
template <typename acc_t>
inline acc_t inv_sigma(acc_t sigma) {
  return static_cast<acc_t>(1.0 / static_cast<double>(sigma));
}

// Generic entry points (half, bfloat16), and ISA-cloned ones for float and double.
template <typename T, typename acc_t>
struct Loops {
  static void dot(const T* w, const acc_t* v, int64_t n, acc_t* lanes) { dot_lanes(w, v, n, lanes); }
  static void dot2(const T* a, const T* b, int64_t n, acc_t* lanes) { dot_lanes(a, b, n, lanes); }
  static void colsum(const T* w, int64_t ld, int64_t rows, int64_t ncols, const acc_t* u, acc_t* out) {
    if (ncols == kColBlock) colsum_full(w, ld, rows, u, out);
    else colsum_tail(w, ld, rows, ncols, u, out);
  }
  static void div(const T* w, int64_t n, acc_t s, T* out) { div_rows(w, n, s, out); }
  static void grad(const T* g, const acc_t* v, int64_t n, acc_t s, acc_t a, T* out) { grad_row(g, v, n, s, a, out); }
};

#define CBGAN_SN_LOOPS(T)                                                                                          \
  CBGAN_SN_CLONES void dot_##T(const T* w, const T* v, int64_t n, T* lanes) { dot_lanes(w, v, n, lanes); }         \
  CBGAN_SN_CLONES void colsum_##T(const T* w, int64_t ld, int64_t rows, int64_t ncols, const T* u, T* out) {       \
    if (ncols == kColBlock) colsum_full(w, ld, rows, u, out);                                                     \
    else colsum_tail(w, ld, rows, ncols, u, out);                                                                  \
  }                                                                                                                \
  CBGAN_SN_CLONES void div_##T(const T* w, int64_t n, T s, T* out) { div_rows(w, n, s, out); }                     \
  CBGAN_SN_CLONES void grad_##T(const T* g, const T* v, int64_t n, T s, T a, T* out) { grad_row(g, v, n, s, a, out); } \
  template <>                                                                                                      \
  struct Loops<T, T> {                                                                                             \
    static void dot(const T* w, const T* v, int64_t n, T* lanes) { dot_##T(w, v, n, lanes); }                      \
    static void dot2(const T* a, const T* b, int64_t n, T* lanes) { dot_##T(a, b, n, lanes); }                     \
    static void colsum(const T* w, int64_t ld, int64_t rows, int64_t ncols, const T* u, T* out) {                  \
      colsum_##T(w, ld, rows, ncols, u, out);                                                                      \
    }                                                                                                              \
    static void div(const T* w, int64_t n, T s, T* out) { div_##T(w, n, s, out); }                                 \
    static void grad(const T* g, const T* v, int64_t n, T s, T a, T* out) { grad_##T(g, v, n, s, a, out); }        \
  };

CBGAN_SN_LOOPS(float)
CBGAN_SN_LOOPS(double)
#undef CBGAN_SN_LOOPS

// ---------------------------------------------------------------------------------------------------------
// Work distribution: items of known cost, split into contiguous ranges of about equal cost, one per thread.
// The split depends only on the item list and the thread count, so every phase over the same list gives each
// thread the same rows: its share of W stays in its own cache from one pass to the next. Alternate passes
// walk their range backwards, so that they start on the rows the previous pass touched last.

struct Item {
  int32_t layer;
  int64_t a, b, c;  // rows [a, b) of the layer, chunk index c
  int64_t cost;
};

template <typename F>
void run_items(const std::vector<Item>& items, bool reverse, const F& fn) {
  int64_t total = 0;
  for (const Item& it : items) total += it.cost;
  const int64_t nthreads = at::get_num_threads();
  const int64_t n = static_cast<int64_t>(items.size());
  auto run_range = [&](int64_t i0, int64_t i1) {
    if (reverse)
      for (int64_t i = i1 - 1; i >= i0; --i) fn(items[i]);
    else
      for (int64_t i = i0; i < i1; ++i) fn(items[i]);
  };
  if (total < kSerialWork || nthreads <= 1 || n <= 1 || at::in_parallel_region()) {
    run_range(0, n);
    return;
  }
  const int64_t nparts = std::min<int64_t>(nthreads, n);
  std::vector<int64_t> bounds(nparts + 1, n);
  bounds[0] = 0;
  int64_t acc = 0;
  int64_t part = 1;
  for (int64_t i = 0; i < n && part < nparts; ++i) {
    acc += items[i].cost;
    while (part < nparts && acc * nparts >= part * total) bounds[part++] = i + 1;
  }
  at::parallel_for(0, nparts, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) run_range(bounds[p], bounds[p + 1]);
  });
}

// Layers are processed in batches of about kBatchWork elements (a single larger layer is a batch of its own),
// all passes of a batch before the next: W is then read from memory once and re-read from cache, as when
// torch handles one layer at a time, instead of streaming the whole model through the cache once per pass.
template <typename GetNumel>
std::vector<std::pair<int32_t, int32_t>> layer_batches(int32_t nl, const GetNumel& numel) {
  std::vector<std::pair<int32_t, int32_t>> batches;
  int32_t l0 = 0;
  int64_t work = 0;
  for (int32_t l = 0; l < nl; ++l) {
    const int64_t n = numel(l);
    if (l > l0 && work + n > kBatchWork) {
      batches.push_back({l0, l});
      l0 = l;
      work = 0;
    }
    work += n;
  }
  if (nl > l0) batches.push_back({l0, nl});
  return batches;
}

template <typename scalar_t>
struct Layer {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* w;
  const scalar_t* u_in;
  const scalar_t* v_in;
  scalar_t* u_out;
  scalar_t* v_out;
  scalar_t* w_sn;  // null: no W / σ
  SNShape s;
  int64_t nchunks = 1;
  std::vector<acc_t> u, v, vec;  // current u, v (rounded to scalar_t), and s or t
  std::vector<acc_t> part;       // colsum partials [nchunks, N]
  acc_t sigma;
};

// The power iteration (and W / σ when w_sn is set) for every layer; sigma_out[l] gets σ_l.
template <typename scalar_t>
void sn_forward_layers(std::vector<Layer<scalar_t>>& layers, int64_t n_iter, double eps_d, scalar_t* sigma_out) {
  using acc_t = at::opmath_type<scalar_t>;
  using L = Loops<scalar_t, acc_t>;
  const acc_t eps = static_cast<acc_t>(eps_d);
  const int32_t nl = static_cast<int32_t>(layers.size());

  // s = Wᵀu over the rows of one chunk, into that chunk's partial row: a chunk is a contiguous [rows, Q]
  // block per p, read by 64-column strips with the sums in registers.
  auto colsum = [&](const Item& c) {
    Layer<scalar_t>& ly = layers[c.layer];
    const SNShape& s = ly.s;
    acc_t* out = ly.part.data() + c.c * s.N();
    for (int64_t p = 0; p < s.P; ++p)
      for (int64_t q = 0; q < s.Q; q += kColBlock)
        L::colsum(ly.w + (p * s.H + c.a) * s.Q + q, s.Q, c.b - c.a, std::min(kColBlock, s.Q - q), ly.u.data() + c.a,
                  out + p * s.Q + q);
  };
  auto rowdot = [&](const Item& c) {
    Layer<scalar_t>& ly = layers[c.layer];
    const SNShape& s = ly.s;
    for (int64_t h = c.a; h < c.b; ++h) {
      acc_t lanes[kLanes] = {};
      for (int64_t p = 0; p < s.P; ++p) L::dot(ly.w + (p * s.H + h) * s.Q, ly.v.data() + p * s.Q, s.Q, lanes);
      ly.vec[h] = lanes_sum(lanes);
    }
  };
  auto scale = [&](const Item& c) {
    const Layer<scalar_t>& ly = layers[c.layer];
    const SNShape& s = ly.s;
    const acc_t inv = inv_sigma(ly.sigma);
    for (int64_t p = 0; p < s.P; ++p) {
      const int64_t off = (p * s.H + c.a) * s.Q;
      L::div(ly.w + off, (c.b - c.a) * s.Q, inv, ly.w_sn + off);
    }
  };
  auto finish_v = [&](Layer<scalar_t>& ly) {
    // s = Σ_c partial_c in chunk order, v = s / max(‖s‖, eps)
    const int64_t N = ly.s.N();
    ly.vec.assign(ly.part.begin(), ly.part.begin() + N);
    for (int64_t c = 1; c < ly.nchunks; ++c) {
      const acc_t* pc = ly.part.data() + c * N;
      for (int64_t j = 0; j < N; ++j) ly.vec[j] += pc[j];
    }
    acc_t ss = 0;
    for (acc_t x : ly.vec) ss += x * x;
    const acc_t d = sn_norm_denom(ss, eps);
    for (int64_t j = 0; j < N; ++j) ly.v[j] = static_cast<acc_t>(static_cast<scalar_t>(ly.vec[j] / d));
    ly.vec.assign(ly.s.H, acc_t(0));
  };
  auto finish_u = [&](Layer<scalar_t>& ly, bool normalize) {
    // t is in ly.vec; u = t / max(‖t‖, eps) (training) and σ = uᵀ t.
    const int64_t H = ly.s.H;
    if (normalize) {
      acc_t ss = 0;
      for (int64_t h = 0; h < H; ++h) ss += ly.vec[h] * ly.vec[h];
      const acc_t d = sn_norm_denom(ss, eps);
      for (int64_t h = 0; h < H; ++h) ly.u[h] = static_cast<acc_t>(static_cast<scalar_t>(ly.vec[h] / d));
    }
    acc_t sg = 0;
    for (int64_t h = 0; h < H; ++h) sg += ly.u[h] * ly.vec[h];
    ly.sigma = static_cast<acc_t>(static_cast<scalar_t>(sg));
  };

  const auto batches = layer_batches(nl, [&](int32_t l) { return layers[l].s.P * layers[l].s.H * layers[l].s.Q; });
  for (const auto& batch : batches) {
    std::vector<Item> items;  // row chunks of every layer of the batch, used by all passes
    for (int32_t l = batch.first; l < batch.second; ++l) {
      Layer<scalar_t>& ly = layers[l];
      const SNShape& s = ly.s;
      ly.u.resize(s.H);
      ly.v.resize(s.N());
      ly.vec.assign(s.H, acc_t(0));
      for (int64_t h = 0; h < s.H; ++h) ly.u[h] = static_cast<acc_t>(ly.u_in[h]);
      for (int64_t j = 0; j < s.N(); ++j) ly.v[j] = static_cast<acc_t>(ly.v_in[j]);
      // Chunks depend on the shape only (never on the thread count), so the sums have a fixed order.
      const int64_t numel = s.H * s.N();
      const int64_t want = std::min<int64_t>({std::max<int64_t>(1, numel / kItemWork), kMaxChunks, s.H});
      const int64_t rows = (s.H + want - 1) / want;
      ly.nchunks = (s.H + rows - 1) / rows;
      if (n_iter > 0) ly.part.resize(ly.nchunks * s.N());
      for (int64_t c = 0; c < ly.nchunks; ++c) {
        const int64_t h0 = c * rows, h1 = std::min(s.H, h0 + rows);
        items.push_back({l, h0, h1, c, (h1 - h0) * s.N()});
      }
    }
    for (int64_t it = 0; it < n_iter; ++it) {
      run_items(items, false, colsum);
      for (int32_t l = batch.first; l < batch.second; ++l) finish_v(layers[l]);
      run_items(items, true, rowdot);
      for (int32_t l = batch.first; l < batch.second; ++l) finish_u(layers[l], true);
    }
    if (n_iter == 0) {
      run_items(items, true, rowdot);
      for (int32_t l = batch.first; l < batch.second; ++l) finish_u(layers[l], false);
    }
    if (layers[batch.first].w_sn) run_items(items, false, scale);
    for (int32_t l = batch.first; l < batch.second; ++l) {
      Layer<scalar_t>& ly = layers[l];
      for (int64_t h = 0; h < ly.s.H; ++h) ly.u_out[h] = static_cast<scalar_t>(ly.u[h]);
      for (int64_t j = 0; j < ly.s.N(); ++j) ly.v_out[j] = static_cast<scalar_t>(ly.v[j]);
      sigma_out[l] = static_cast<scalar_t>(ly.sigma);
      std::vector<acc_t>().swap(ly.part);
    }
  }
}

// Items of (layer, row range) over the P·H rows of length Q, about kItemWork elements each.
inline void row_items(std::vector<Item>& items, int32_t l, int64_t nrows, int64_t rowlen) {
  const int64_t step = std::max<int64_t>(1, kItemWork / std::max<int64_t>(rowlen, 1));
  for (int64_t r = 0; r < nrows; r += step) {
    const int64_t r1 = std::min(nrows, r + step);
    items.push_back({l, r, r1, 0, (r1 - r) * rowlen});
  }
}

// Backward for every layer: dW = G / σ − (⟨G, W⟩ / σ²) u vᵀ, in the same batches as the forward.
template <typename scalar_t>
void sn_backward_layers(const std::vector<const scalar_t*>& g, const std::vector<const scalar_t*>& w,
                        const std::vector<const scalar_t*>& u, const std::vector<const scalar_t*>& v,
                        const scalar_t* sigma, const std::vector<SNShape>& shapes, const std::vector<scalar_t*>& out) {
  using acc_t = at::opmath_type<scalar_t>;
  using L = Loops<scalar_t, acc_t>;
  const int32_t nl = static_cast<int32_t>(shapes.size());
  const auto batches =
      layer_batches(nl, [&](int32_t l) { return g[l] ? shapes[l].P * shapes[l].H * shapes[l].Q : int64_t(0); });
  for (const auto& batch : batches) {
    std::vector<Item> items;
    std::vector<size_t> first(nl + 1, 0);
    for (int32_t l = batch.first; l < batch.second; ++l) {
      first[l] = items.size();
      if (g[l]) row_items(items, l, shapes[l].P * shapes[l].H, shapes[l].Q);
      first[l + 1] = items.size();
    }
    if (items.empty()) continue;
    std::vector<acc_t> partial(items.size());
    const Item* base = items.data();
    run_items(items, false, [&](const Item& c) {
      const int64_t off = c.a * shapes[c.layer].Q, n = (c.b - c.a) * shapes[c.layer].Q;
      acc_t lanes[kLanes] = {};
      L::dot2(g[c.layer] + off, w[c.layer] + off, n, lanes);
      partial[&c - base] = lanes_sum(lanes);
    });
    std::vector<acc_t> coef(nl, acc_t(0)), inv(nl, acc_t(1));
    std::vector<std::vector<acc_t>> vacc(nl);
    for (int32_t l = batch.first; l < batch.second; ++l) {
      if (!g[l]) continue;
      acc_t d = 0;
      for (size_t i = first[l]; i < first[l + 1]; ++i) d += partial[i];
      const acc_t sg = static_cast<acc_t>(sigma[l]);
      coef[l] = d / (sg * sg);
      inv[l] = inv_sigma(sg);
      vacc[l].resize(shapes[l].N());
      for (int64_t j = 0; j < shapes[l].N(); ++j) vacc[l][j] = static_cast<acc_t>(v[l][j]);
    }
    run_items(items, true, [&](const Item& c) {
      const SNShape& s = shapes[c.layer];
      for (int64_t r = c.a; r < c.b; ++r) {
        const int64_t p = r / s.H, h = r % s.H;
        const acc_t a = coef[c.layer] * static_cast<acc_t>(u[c.layer][h]);
        L::grad(g[c.layer] + r * s.Q, vacc[c.layer].data() + p * s.Q, s.Q, inv[c.layer], a, out[c.layer] + r * s.Q);
      }
    });
  }
}

// ---------------------------------------------------------------------------------------------------------
// Op entry points.

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sn_run(const char* op, const at::Tensor& weight_in,
                                                                  const at::Tensor& u_in, const at::Tensor& v_in,
                                                                  int64_t dim, int64_t n_iter, double eps,
                                                                  bool write_wsn) {
  dim = check_sn_layer(op, weight_in, u_in, v_in, dim);
  check_sn_iter(op, n_iter, eps);
  const at::Tensor weight = weight_in.contiguous();
  const at::Tensor u = u_in.contiguous(), v = v_in.contiguous();
  at::Tensor u_out = at::empty_like(u), v_out = at::empty_like(v);
  at::Tensor sigma = at::empty({}, weight.options());
  at::Tensor w_sn = write_wsn ? at::empty(weight.sizes(), weight.options()) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "spectral_norm", [&] {
    std::vector<Layer<scalar_t>> layers(1);
    Layer<scalar_t>& ly = layers[0];
    ly.w = weight.data_ptr<scalar_t>();
    ly.u_in = u.data_ptr<scalar_t>();
    ly.v_in = v.data_ptr<scalar_t>();
    ly.u_out = u_out.data_ptr<scalar_t>();
    ly.v_out = v_out.data_ptr<scalar_t>();
    ly.w_sn = write_wsn ? w_sn.data_ptr<scalar_t>() : nullptr;
    ly.s = sn_shape(weight, dim);
    sn_forward_layers<scalar_t>(layers, n_iter, eps, sigma.data_ptr<scalar_t>());
  });
  return {w_sn, u_out, v_out, sigma};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sn_power_iteration_cpu(const at::Tensor& weight_mat, const at::Tensor& u,
                                                                      const at::Tensor& v, int64_t n_iter, double eps) {
  constexpr const char* op = "spectral_norm_power_iteration";
  TORCH_CHECK(weight_mat.dim() == 2, op, ": weight_mat must be 2-D [out, in], got shape ", weight_mat.sizes());
  auto r = sn_run(op, weight_mat, u, v, 0, n_iter, eps, false);
  return {std::get<1>(r), std::get<2>(r), std::get<3>(r)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sn_weight_cpu(const at::Tensor& weight, const at::Tensor& u,
                                                                         const at::Tensor& v, int64_t dim,
                                                                         int64_t n_iter, double eps) {
  return sn_run("spectral_norm_weight", weight, u, v, dim, n_iter, eps, true);
}

at::Tensor sn_weight_backward_cpu(const at::Tensor& grad_in, const at::Tensor& weight_in, const at::Tensor& u_in,
                                  const at::Tensor& v_in, const at::Tensor& sigma, int64_t dim) {
  dim = check_sn_backward(grad_in, weight_in, u_in, v_in, sigma, dim);
  const at::Tensor grad = grad_in.contiguous(), weight = weight_in.contiguous();
  const at::Tensor u = u_in.contiguous(), v = v_in.contiguous();
  const at::Tensor sg = sigma.to(weight.scalar_type()).contiguous();
  at::Tensor out = at::empty(weight.sizes(), weight.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "spectral_norm", [&] {
    sn_backward_layers<scalar_t>({grad.data_ptr<scalar_t>()}, {weight.data_ptr<scalar_t>()}, {u.data_ptr<scalar_t>()},
                                 {v.data_ptr<scalar_t>()}, sg.data_ptr<scalar_t>(), {sn_shape(weight, dim)},
                                 {out.data_ptr<scalar_t>()});
  });
  return out;
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor> sn_weight_multi_cpu(
    at::TensorList weights_in, at::TensorList us_in, at::TensorList vs_in, at::IntArrayRef dims_in, int64_t n_iter,
    double eps) {
  constexpr const char* op = "spectral_norm_weight_multi";
  const std::vector<int64_t> dims = check_sn_multi(op, weights_in, us_in, vs_in, dims_in);
  check_sn_iter(op, n_iter, eps);
  const size_t L = weights_in.size();
  std::vector<at::Tensor> weights(L), us(L), vs(L), w_sn(L), u_out(L), v_out(L);
  for (size_t l = 0; l < L; ++l) {
    weights[l] = weights_in[l].contiguous();
    us[l] = us_in[l].contiguous();
    vs[l] = vs_in[l].contiguous();
    w_sn[l] = at::empty(weights[l].sizes(), weights[l].options());
    u_out[l] = at::empty_like(us[l]);
    v_out[l] = at::empty_like(vs[l]);
  }
  at::Tensor sigmas = at::empty({static_cast<int64_t>(L)}, weights[0].options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weights[0].scalar_type(), "spectral_norm_multi", [&] {
    std::vector<Layer<scalar_t>> layers(L);
    for (size_t l = 0; l < L; ++l) {
      Layer<scalar_t>& ly = layers[l];
      ly.w = weights[l].data_ptr<scalar_t>();
      ly.u_in = us[l].data_ptr<scalar_t>();
      ly.v_in = vs[l].data_ptr<scalar_t>();
      ly.u_out = u_out[l].data_ptr<scalar_t>();
      ly.v_out = v_out[l].data_ptr<scalar_t>();
      ly.w_sn = w_sn[l].data_ptr<scalar_t>();
      ly.s = sn_shape(weights[l], dims[l]);
    }
    sn_forward_layers<scalar_t>(layers, n_iter, eps, sigmas.data_ptr<scalar_t>());
  });
  return {w_sn, u_out, v_out, sigmas};
}

std::vector<at::Tensor> sn_weight_multi_backward_cpu(const c10::List<std::optional<at::Tensor>>& grads_in,
                                                     at::TensorList weights_in, at::TensorList us_in,
                                                     at::TensorList vs_in, const at::Tensor& sigmas_in,
                                                     at::IntArrayRef dims_in) {
  std::vector<at::Tensor> grads_def;
  const std::vector<int64_t> dims =
      check_sn_multi_backward(grads_in, weights_in, us_in, vs_in, sigmas_in, dims_in, &grads_def);
  const size_t L = weights_in.size();
  const at::Tensor sigmas = sigmas_in.to(weights_in[0].scalar_type()).contiguous();
  std::vector<at::Tensor> grads(L), weights(L), us(L), vs(L), out(L);
  for (size_t l = 0; l < L; ++l) {
    weights[l] = weights_in[l].contiguous();
    us[l] = us_in[l].contiguous();
    vs[l] = vs_in[l].contiguous();
    if (grads_def[l].defined()) {
      grads[l] = grads_def[l].contiguous();
      out[l] = at::empty(weights[l].sizes(), weights[l].options());
    } else {
      out[l] = at::zeros(weights[l].sizes(), weights[l].options());
    }
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weights[0].scalar_type(), "spectral_norm_multi", [&] {
    std::vector<const scalar_t*> g(L), w(L), u(L), v(L);
    std::vector<scalar_t*> o(L);
    std::vector<SNShape> shapes(L);
    for (size_t l = 0; l < L; ++l) {
      g[l] = grads[l].defined() ? grads[l].data_ptr<scalar_t>() : nullptr;
      w[l] = weights[l].data_ptr<scalar_t>();
      u[l] = us[l].data_ptr<scalar_t>();
      v[l] = vs[l].data_ptr<scalar_t>();
      o[l] = out[l].data_ptr<scalar_t>();
      shapes[l] = sn_shape(weights[l], dims[l]);
    }
    sn_backward_layers<scalar_t>(g, w, u, v, sigmas.data_ptr<scalar_t>(), shapes, o);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(cbgan_ext, CPU, m) {
  m.impl("spectral_norm_power_iteration", &sn_power_iteration_cpu);
  m.impl("spectral_norm_weight", &sn_weight_cpu);
  m.impl("_spectral_norm_weight_backward", &sn_weight_backward_cpu);
  m.impl("spectral_norm_weight_multi", &sn_weight_multi_cpu);
  m.impl("_spectral_norm_weight_multi_backward", &sn_weight_multi_backward_cpu);
}

}  // namespace cbgan_ext

// CPU kernels of the class-balancing regularizer; formula and layouts in common/class_balancing.h.
// Forward: one pass over each row (max/argmax, exp into the saved probs, normalise while summing
// columns into a per-chunk partial), then a fixed-order reduction of the partials.
// Backward: one pass over the saved probs.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <limits>
#include <vector>

#include "../common/class_balancing.h"
#include "../common/fast_math.h"

namespace cbgan_ext {
namespace {

template <typename acc_t>
inline acc_t exp_shifted(acc_t x) {
  return std::exp(x);
}
template <>
inline float exp_shifted<float>(float x) {
  return exp_nonpositive(x);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> cb_forward_cpu(const at::Tensor& logits_in,
                                                                          const at::Tensor& w_in) {
  check_cb_inputs(logits_in, w_in);
  const at::Tensor logits = logits_in.contiguous();
  const int64_t B = logits.size(0), K = logits.size(1);
  const auto acc_type = at::toOpMathType(logits.scalar_type());
  const at::Tensor w = w_in.to(acc_type).contiguous();
  at::Tensor probs = at::empty_like(logits);
  at::Tensor counts = at::zeros({K}, logits.options().dtype(at::kLong));
  at::Tensor mean_probs = at::empty({K}, logits.options().dtype(acc_type));
  at::Tensor loss = at::empty({}, logits.options().dtype(acc_type));
  const int64_t nchunks = (B + kCBRowsPerChunk - 1) / kCBRowsPerChunk;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "class_balancing_loss", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* z = logits.data_ptr<scalar_t>();
    scalar_t* p = probs.data_ptr<scalar_t>();
    std::vector<acc_t> partial(nchunks * K, acc_t(0));
    std::vector<int64_t> part_counts(nchunks * K, 0);
    // Small problems stay on one thread: a parallel region costs more than the work.
    const int64_t grain = std::max<int64_t>(1, 16384 / (kCBRowsPerChunk * K));
    at::parallel_for(0, nchunks, grain, [&](int64_t c0, int64_t c1) {
      std::vector<acc_t> e(K);
      for (int64_t c = c0; c < c1; ++c) {
        acc_t* acc = partial.data() + c * K;
        int64_t* cnt = part_counts.data() + c * K;
        const int64_t b1 = std::min(B, (c + 1) * kCBRowsPerChunk);
        for (int64_t b = c * kCBRowsPerChunk; b < b1; ++b) {
          const scalar_t* zr = z + b * K;
          acc_t m = static_cast<acc_t>(zr[0]);
          int64_t am = 0;
          for (int64_t k = 1; k < K; ++k) {
            const acc_t v = static_cast<acc_t>(zr[k]);
            if (v > m || v != v) {  // NaN propagates and wins argmax, as in torch
              if (m != m) break;
              m = v;
              am = k;
            }
          }
          cnt[am] += 1;
          acc_t s = 0;
          for (int64_t k = 0; k < K; ++k) {
            e[k] = exp_shifted<acc_t>(static_cast<acc_t>(zr[k]) - m);
            s += e[k];
          }
          const acc_t inv = acc_t(1) / s;
          scalar_t* pr = p + b * K;
          for (int64_t k = 0; k < K; ++k) {
            const acc_t pk = e[k] * inv;
            pr[k] = static_cast<scalar_t>(pk);
            acc[k] += pk;
          }
        }
      }
    });
    acc_t* mp = mean_probs.data_ptr<acc_t>();
    int64_t* ct = counts.data_ptr<int64_t>();
    const acc_t* wp = w.data_ptr<acc_t>();
    acc_t total = 0;
    for (int64_t k = 0; k < K; ++k) {
      acc_t s = 0;
      int64_t n = 0;
      for (int64_t c = 0; c < nchunks; ++c) {
        s += partial[c * K + k];
        n += part_counts[c * K + k];
      }
      mp[k] = s / static_cast<acc_t>(B);
      ct[k] = n;
      total += wp[k] * xlogx(mp[k]);
    }
    loss.fill_(total);
  });
  return {loss, counts, probs, mean_probs};
}

at::Tensor cb_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& probs_in, const at::Tensor& w_in,
                           const at::Tensor& mean_probs) {
  const at::Tensor probs = probs_in.contiguous();
  const int64_t B = probs.size(0), K = probs.size(1);
  const auto acc_type = mean_probs.scalar_type();
  const at::Tensor w = w_in.to(acc_type).contiguous();
  const at::Tensor mp = mean_probs.contiguous();
  at::Tensor grad = at::empty_like(probs);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, probs.scalar_type(), "class_balancing_loss_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t gl = grad_loss.item().to<acc_t>();
    std::vector<acc_t> g(K);
    for (int64_t k = 0; k < K; ++k) g[k] = cb_grad_coeff(gl, w.data_ptr<acc_t>()[k], mp.data_ptr<acc_t>()[k]);
    const scalar_t* p = probs.data_ptr<scalar_t>();
    scalar_t* out = grad.data_ptr<scalar_t>();
    const acc_t invB = acc_t(1) / static_cast<acc_t>(B);
    const int64_t grain = std::max<int64_t>(1, 16384 / K);
    at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const scalar_t* pr = p + b * K;
        acc_t dot = 0;
        for (int64_t k = 0; k < K; ++k) dot += static_cast<acc_t>(pr[k]) * g[k];
        scalar_t* o = out + b * K;
        for (int64_t k = 0; k < K; ++k) o[k] = static_cast<scalar_t>(static_cast<acc_t>(pr[k]) * (g[k] - dot) * invB);
      }
    });
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(cbgan_ext, CPU, m) {
  m.impl("class_balancing_loss_forward", &cb_forward_cpu);
  m.impl("_class_balancing_loss_backward", &cb_backward_cpu);
}

}  // namespace cbgan_ext

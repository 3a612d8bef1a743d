// Autocast kernels (torch.autocast on CPU and CUDA), as torchvision's csrc/ops/autocast/: each runs with its
// autocast key excluded, casts the inputs by the op's policy, and calls the op again (autograd records the
// casts, so gradients reach the inputs in their own dtypes).
//
//   soft_label_projection_forward: the widest floating input type (promote, like ATen's binary ops): an
//     all-bfloat16 call stays bfloat16, a mixed one (float32 E from a Linear weight, bfloat16 h from an
//     autocast layer) runs in float32 instead of failing the one-dtype check.
//   class_balancing_loss_forward: float32 for half/bfloat16 logits (a softmax, a log and a batch mean: the
//     kind of op autocast runs in float32). The kernel accumulates in float32 anyway; this also keeps the saved
//     probabilities, and so the gradient, in float32.
// Not registered (autocast falls through to the op as called): diff_augment (elementwise and data movement;
// any float dtype of x, parameters in float32), and spectral norm (weights, u and v are one module's
// parameters and buffers, of one dtype; the power iteration accumulates in float32 already).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include "common/op_handles.h"

namespace cbgan_ext {
namespace {

bool is_reduced_float(const at::Tensor& t) {
  return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16;
}

template <c10::DispatchKey key>
std::tuple<at::Tensor, at::Tensor> soft_label_projection_autocast(const at::Tensor& h, const at::Tensor& E,
                                                                  const at::Tensor& y) {
  const auto& op = soft_label_projection_forward_op();
  c10::impl::ExcludeDispatchKeyGuard no_autocast(key);
  // Only floating inputs take part (hard labels are int64); anything else is left to the op's own checks.
  std::optional<at::ScalarType> to;
  for (const at::Tensor* t : {&h, &E, &y})
    if (t->defined() && t->is_floating_point()) to = to ? at::promoteTypes(*to, t->scalar_type()) : t->scalar_type();
  auto cast = [&](const at::Tensor& t) {
    return to && t.defined() && t.is_floating_point() && t.scalar_type() != *to ? t.to(*to) : t;
  };
  return op.call(cast(h), cast(E), cast(y));
}

template <c10::DispatchKey key>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> class_balancing_loss_autocast(const at::Tensor& logits,
                                                                                         const at::Tensor& w) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(key);
  return class_balancing_loss_forward_op().call(is_reduced_float(logits) ? logits.to(at::kFloat) : logits, w);
}

}  // namespace

TORCH_LIBRARY_IMPL(cbgan_ext, AutocastCPU, m) {
  m.impl("soft_label_projection_forward", &soft_label_projection_autocast<c10::DispatchKey::AutocastCPU>);
  m.impl("class_balancing_loss_forward", &class_balancing_loss_autocast<c10::DispatchKey::AutocastCPU>);
}

TORCH_LIBRARY_IMPL(cbgan_ext, AutocastCUDA, m) {
  m.impl("soft_label_projection_forward", &soft_label_projection_autocast<c10::DispatchKey::AutocastCUDA>);
  m.impl("class_balancing_loss_forward", &class_balancing_loss_autocast<c10::DispatchKey::AutocastCUDA>);
}

}  // namespace cbgan_ext

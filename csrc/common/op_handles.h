// Typed dispatcher handles of ops that other kernels (autograd, autocast, composites) call again.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <tuple>

namespace cbgan_ext {

using ClassBalancingForwardFn = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&,
                                                                                           const at::Tensor&);

inline const c10::TypedOperatorHandle<ClassBalancingForwardFn>& class_balancing_loss_forward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("cbgan_ext::class_balancing_loss_forward", "")
                             .typed<ClassBalancingForwardFn>();
  return op;
}

}  // namespace cbgan_ext

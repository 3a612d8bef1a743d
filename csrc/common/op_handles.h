// Typed dispatcher handles of the ops that more than one kernel (autograd nodes and kernels, autocast,
// composites) calls again, each looked up once.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <array>
#include <optional>
#include <tuple>
#include <vector>

namespace cbgan_ext {

template <typename Fn>
c10::TypedOperatorHandle<Fn> typed_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Fn>();
}

using ClassBalancingForwardFn = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&,
                                                                                           const at::Tensor&);
using ClassBalancingBackwardFn = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                            const at::Tensor&);
using SoftLabelProjectionForwardFn = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                        const at::Tensor&);
using SoftLabelProjectionBackwardFn = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    std::array<bool, 3>);
using SpectralNormWeightBackwardFn = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                const at::Tensor&, const at::Tensor&, int64_t);
using SpectralNormWeightMultiBackwardFn = std::vector<at::Tensor>(const c10::List<std::optional<at::Tensor>>&,
                                                                  at::TensorList, at::TensorList, at::TensorList,
                                                                  const at::Tensor&, at::IntArrayRef);

inline const c10::TypedOperatorHandle<ClassBalancingForwardFn>& class_balancing_loss_forward_op() {
  static const auto op = typed_op<ClassBalancingForwardFn>("cbgan_ext::class_balancing_loss_forward");
  return op;
}

inline const c10::TypedOperatorHandle<ClassBalancingBackwardFn>& class_balancing_loss_backward_op() {
  static const auto op = typed_op<ClassBalancingBackwardFn>("cbgan_ext::_class_balancing_loss_backward");
  return op;
}

inline const c10::TypedOperatorHandle<SoftLabelProjectionForwardFn>& soft_label_projection_forward_op() {
  static const auto op = typed_op<SoftLabelProjectionForwardFn>("cbgan_ext::soft_label_projection_forward");
  return op;
}

inline const c10::TypedOperatorHandle<SoftLabelProjectionBackwardFn>& soft_label_projection_backward_op() {
  static const auto op = typed_op<SoftLabelProjectionBackwardFn>("cbgan_ext::_soft_label_projection_backward");
  return op;
}

inline const c10::TypedOperatorHandle<SpectralNormWeightBackwardFn>& spectral_norm_weight_backward_op() {
  static const auto op = typed_op<SpectralNormWeightBackwardFn>("cbgan_ext::_spectral_norm_weight_backward");
  return op;
}

inline const c10::TypedOperatorHandle<SpectralNormWeightMultiBackwardFn>& spectral_norm_weight_multi_backward_op() {
  static const auto op =
      typed_op<SpectralNormWeightMultiBackwardFn>("cbgan_ext::_spectral_norm_weight_multi_backward");
  return op;
}

}  // namespace cbgan_ext

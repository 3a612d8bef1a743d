// Autograd kernels of the fused ops, in C++ (as torchvision does): a Python autograd.Function costs tens
// of microseconds per call plus garbage-collector work, more than the whole fused op at the papers'
// small shapes. Fake (meta) kernels stay in Python (cbgan_ext/ops/). Backward kernels are ops of their
// own, so the backward is one dispatcher call to CPU or CUDA.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

namespace cbgan_ext {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// ---- class balancing regularizer -------------------------------------------------------------------
class ClassBalancingLossFunction : public torch::autograd::Function<ClassBalancingLossFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& class_weights) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("cbgan_ext::class_balancing_loss_forward", "")
                         .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&,
                                                                                             const at::Tensor&)>();
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [loss, counts, probs, mean_probs] = op.call(logits, class_weights);
    ctx->save_for_backward({probs, class_weights, mean_probs});
    ctx->mark_non_differentiable({counts, probs, mean_probs});
    ctx->set_materialize_grads(false);  // else a [B, K] zero gradient for probs every step
    return {loss, counts, probs, mean_probs};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("cbgan_ext::_class_balancing_loss_backward", "")
                         .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&)>();
    if (!grads[0].defined()) return {at::Tensor(), at::Tensor()};
    const auto saved = ctx->get_saved_variables();
    return {op.call(grads[0], saved[0], saved[1], saved[2]), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> class_balancing_loss_autograd(const at::Tensor& logits,
                                                                                        const at::Tensor& w) {
  auto out = ClassBalancingLossFunction::apply(logits, w);
  return {out[0], out[1], out[2], out[3]};
}

// ---- soft-label projection -------------------------------------------------------------------------
// Saves proj = y E (soft labels) for dh; the backward op computes only the gradients asked for, so a frozen
// y (a classifier's detached softmax, the paper's case) costs no h Eᵀ product.
class SoftLabelProjectionFunction : public torch::autograd::Function<SoftLabelProjectionFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& h, const at::Tensor& class_embedding,
                               const at::Tensor& y) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("cbgan_ext::soft_label_projection_forward", "")
                         .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&)>();
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, proj] = op.call(h, class_embedding, y);
    ctx->save_for_backward({h, class_embedding, y, proj});
    ctx->mark_non_differentiable({proj});
    ctx->set_materialize_grads(false);
    return {out, proj};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("cbgan_ext::_soft_label_projection_backward", "")
                         .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                             const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                             const at::Tensor&, std::array<bool, 3>)>();
    const auto saved = ctx->get_saved_variables();
    const std::array<bool, 3> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                      saved[2].is_floating_point() && ctx->needs_input_grad(2)};
    if (!grads[0].defined() || !(mask[0] || mask[1] || mask[2])) return {at::Tensor(), at::Tensor(), at::Tensor()};
    auto [dh, dE, dy] = op.call(grads[0], saved[0], saved[1], saved[2], saved[3], mask);
    return {mask[0] ? dh : at::Tensor(), mask[1] ? dE : at::Tensor(), mask[2] ? dy : at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> soft_label_projection_autograd(const at::Tensor& h, const at::Tensor& E,
                                                                  const at::Tensor& y) {
  auto out = SoftLabelProjectionFunction::apply(h, E, y);
  return {out[0], out[1]};
}

// ---- DiffAugment ---------------------------------------------------------------------------------------
// The backward op's own autograd (for double backward) stays in Python: only higher-order uses reach it.
class DiffAugmentFunction : public torch::autograd::Function<DiffAugmentFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, c10::IntArrayRef program,
                            const at::Tensor& color, const at::Tensor& translation, const at::Tensor& cutout,
                            c10::IntArrayRef cutout_size) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("cbgan_ext::diff_augment", "")
                         .typed<at::Tensor(const at::Tensor&, c10::IntArrayRef, const at::Tensor&, const at::Tensor&,
                                           const at::Tensor&, c10::IntArrayRef)>();
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor y = op.call(x, program, color, translation, cutout, cutout_size);
    ctx->save_for_backward({color, translation, cutout});
    ctx->saved_data["program"] = program.vec();
    ctx->saved_data["cutout_size"] = cutout_size.vec();
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("cbgan_ext::_diff_augment_backward", "")
                         .typed<at::Tensor(const at::Tensor&, c10::IntArrayRef, const at::Tensor&, const at::Tensor&,
                                           const at::Tensor&, c10::IntArrayRef)>();
    variable_list out(6);  // one per forward argument; only x is differentiable
    if (!grads[0].defined() || !ctx->needs_input_grad(0)) return out;
    const auto saved = ctx->get_saved_variables();
    const std::vector<int64_t> program = ctx->saved_data["program"].toIntVector();
    const std::vector<int64_t> size = ctx->saved_data["cutout_size"].toIntVector();
    out[0] = op.call(grads[0], program, saved[0], saved[1], saved[2], size);
    return out;
  }
};

at::Tensor diff_augment_autograd(const at::Tensor& x, c10::IntArrayRef program, const at::Tensor& color,
                                 const at::Tensor& translation, const at::Tensor& cutout,
                                 c10::IntArrayRef cutout_size) {
  return DiffAugmentFunction::apply(x, program, color, translation, cutout, cutout_size);
}

}  // namespace

TORCH_LIBRARY_IMPL(cbgan_ext, Autograd, m) {
  m.impl("diff_augment", &diff_augment_autograd);
  m.impl("class_balancing_loss_forward", &class_balancing_loss_autograd);
  m.impl("soft_label_projection_forward", &soft_label_projection_autograd);
}

}  // namespace cbgan_ext

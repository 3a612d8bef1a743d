// Autograd kernels of the fused ops, in C++ (as torchvision does): a Python autograd.Function costs tens
// of microseconds per call plus garbage-collector work, more than the whole fused op at the papers'
// small shapes, and C++ (libtorch) users get gradients only from kernels registered here. Fake (meta)
// kernels stay in Python (cbgan_ext/ops/). Backward kernels are ops of their own, so the backward is one
// dispatcher call to CPU or CUDA.
//
// Differentiating a gradient (a gradient penalty, R1: autograd.grad(..., create_graph=True)) is never silently
// zero. _soft_label_projection_backward has a real double backward (ATen ops, so every higher order works
// too); class_balancing_loss computes its gradient with ATen ops under create_graph (the fused backward op
// reads non-differentiable saved outputs); _diff_augment_backward's double backward is registered in Python
// (cbgan_ext/ops/diff_augment.py). _class_balancing_loss_backward called directly and the spectral-norm
// backward ops attach an error node naming the op, which raises only if a second backward actually runs
// through it. Outside grad mode (every ordinary backward) the backward ops go straight to the kernel.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/TensorSubclassLikeUtils.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/functions/basic_ops.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/library.h>

#include "common/class_balancing.h"
#include "common/op_handles.h"
#include "common/projection.h"

#include <memory>
#include <string>
#include <type_traits>

namespace cbgan_ext {
namespace {

// Autograd nodes are held by c10::intrusive_ptr in recent torch and by std::shared_ptr before; Edge names
// which, so one source builds against both.
using NodePtr = decltype(torch::autograd::Edge::function);
constexpr bool kSharedNodes = std::is_same_v<NodePtr, std::shared_ptr<torch::autograd::Node>>;

template <class T, class... Args>
auto make_node(Args&&... args) {
  if constexpr (kSharedNodes) {
    return std::make_shared<T>(std::forward<Args>(args)...);
  } else {
    return c10::make_intrusive<T>(std::forward<Args>(args)...);
  }
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// ---- class balancing regularizer -------------------------------------------------------------------
// A hand-written Node, as ATen's generated ones, instead of torch::autograd::Function: at K = 10 the whole op
// costs a few microseconds and a custom Function's bookkeeping (input/output info, forward-AD and view checks
// for four outputs) cost about as much again. Only the loss gets a history; counts, probs and mean_probs are
// constants. class_weights are constants too: an edge so the loss requires grad when only they do, as a
// custom Function's node would, but never a gradient.
// Under create_graph (a penalty on this gradient) the backward is written in ATen ops from the saved logits
// instead: the same dz = p (g − ⟨p, g⟩) / B with g = w (log p̂ + 1) (0 where p̂ = 0), whose own autograd gives
// the double backward. The saved probs and mean_probs are not differentiable, so the fused backward op would
// cut the gradient's dependence on the logits.
// When the engine will release the graph after this node, the CPU gradient is written into the saved probs
// (nothing else may hold them): no fresh [B, K] buffer, whose page faults cost as much as the kernel at large K.
struct ClassBalancingLossBackward : public torch::autograd::Node {
  torch::autograd::SavedVariable probs_, weights_, mean_probs_, logits_;
  bool releasing_ = false;

  std::string name() const override { return "ClassBalancingLossBackward"; }

  void will_release_variables() override { releasing_ = true; }

  void release_variables() override {
    probs_.reset_data();
    weights_.reset_data();
    mean_probs_.reset_data();
    logits_.reset_data();
  }

  variable_list apply(variable_list&& grads) override {
    const auto& op = class_balancing_loss_backward_op();
    variable_list out(2);
    if (!grads[0].defined() || !should_compute_output(0)) return out;
    if (at::GradMode::is_enabled()) {
      out[0] = differentiable_backward(grads[0], logits_.unpack(), weights_.unpack());
      return out;
    }
    at::AutoDispatchBelowADInplaceOrView guard;  // grad mode is off: straight to the kernel
    at::Tensor probs = probs_.unpack();
    if (releasing_ && grads[0].is_cpu() && !at::isTensorSubclassLike(grads[0]) &&
        cb_cpu_probs_in_place(probs, /*other_refs=*/2)) {  // saved + local
      out[0] = cb_cpu_backward_in_place(grads[0], std::move(probs), weights_.unpack(), mean_probs_.unpack());
      return out;
    }
    out[0] = op.call(grads[0], probs, weights_.unpack(), mean_probs_.unpack());
    return out;
  }

  static at::Tensor differentiable_backward(const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& w) {
    const auto acc = at::toOpMathType(logits.scalar_type());
    const at::Tensor p = at::softmax(logits.to(acc), 1);
    const at::Tensor mp = p.mean(0);
    const at::Tensor zero = mp.eq(0);
    // log of 1, not of 0, where p̂ = 0: the masked branch must not put 0/0 into the gradient
    const at::Tensor g =
        at::where(zero, at::zeros_like(mp), w.to(acc) * (at::log(at::where(zero, at::ones_like(mp), mp)) + 1)) *
        grad.to(acc);
    return (p * (g - (p * g).sum(1, true)) / static_cast<double>(logits.size(0))).to(logits.scalar_type());
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> class_balancing_loss_autograd(const at::Tensor& logits,
                                                                                        const at::Tensor& w) {
  const auto& op = class_balancing_loss_forward_op();
  TORCH_CHECK(!torch::autograd::isFwGradDefined(logits) && !torch::autograd::isFwGradDefined(w),
              "class_balancing_loss: forward-mode AD is not supported; use cbgan_ext.reference.class_balancing_loss");
  at::Tensor loss, counts, probs, mean_probs, probs_out;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    std::tie(loss, counts, probs, mean_probs) = op.call(logits, w);
    // The caller gets a view of a reused buffer, never the buffer's own tensor: once a tensor has been seen by
    // Python its wrapper holds a reference for as long as C++ does, and the buffer could not be reused.
    probs_out = cb_cpu_is_reused(probs) ? probs.alias() : probs;
  }
  if (torch::autograd::compute_requires_grad(logits, w)) {
    auto node = make_node<ClassBalancingLossBackward>();
    node->set_next_edges(torch::autograd::collect_next_edges(logits, w));
    node->probs_ = torch::autograd::SavedVariable(probs, false);
    node->weights_ = torch::autograd::SavedVariable(w, false);
    node->mean_probs_ = torch::autograd::SavedVariable(mean_probs, false);
    node->logits_ = torch::autograd::SavedVariable(logits, false);
    torch::autograd::set_history(loss, node);
  }
  return {loss, counts, probs_out, mean_probs};
}

// The loss alone, or with the counts, for Python: each tensor handed back costs a wrapper made and freed, about
// a microsecond a tensor, and at K = 10 the whole op is a few.
at::Tensor class_balancing_loss_only(const at::Tensor& logits, const at::Tensor& w) {
  return std::get<0>(class_balancing_loss_forward_op().call(logits, w));
}

std::tuple<at::Tensor, at::Tensor> class_balancing_loss_with_counts(const at::Tensor& logits, const at::Tensor& w) {
  auto out = class_balancing_loss_forward_op().call(logits, w);
  return {std::move(std::get<0>(out)), std::move(std::get<1>(out))};
}

// ---- soft-label projection -------------------------------------------------------------------------
// Saves proj = y E (soft labels) for dh; the backward op computes only the gradients asked for, so a frozen
// y (a classifier's detached softmax, the paper's case) costs no h Eᵀ product. A hand-written Node (as class
// balancing's) so that, when the engine will release the graph, the CPU dh = g ⊙ proj is written into the saved
// proj: no fresh [B, L] buffer a step. Under create_graph the backward op's own autograd (below) builds the
// double backward.
struct SoftLabelProjectionBackward : public torch::autograd::Node {
  torch::autograd::SavedVariable h_, E_, y_, proj_;
  bool soft_ = false, releasing_ = false;

  std::string name() const override { return "SoftLabelProjectionBackward"; }

  void will_release_variables() override { releasing_ = true; }

  void release_variables() override {
    h_.reset_data();
    E_.reset_data();
    y_.reset_data();
    proj_.reset_data();
  }

  variable_list apply(variable_list&& grads) override {
    const auto& op = soft_label_projection_backward_op();
    variable_list out(3);
    const std::array<bool, 3> mask = {should_compute_output(0), should_compute_output(1),
                                      soft_ && should_compute_output(2)};
    if (!grads[0].defined() || !(mask[0] || mask[1] || mask[2])) return out;
    at::Tensor h = h_.unpack(), E = E_.unpack(), y = y_.unpack(), proj = proj_.unpack();
    at::Tensor dh, dE, dy;
    if (releasing_ && mask[0] && !at::GradMode::is_enabled() && grads[0].is_cpu() &&
        !at::isTensorSubclassLike(grads[0]) && proj_cpu_in_place(proj, h, /*other_refs=*/2)) {  // saved + local
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(dh, dE, dy) = proj_cpu_backward_in_place(grads[0], h, E, y, std::move(proj), mask);
    } else {
      std::tie(dh, dE, dy) = op.call(grads[0], h, E, y, proj, mask);  // in grad mode: the double backward's node
    }
    if (mask[0]) out[0] = dh;
    if (mask[1]) out[1] = dE;
    if (mask[2]) out[2] = dy;
    return out;
  }
};

std::tuple<at::Tensor, at::Tensor> soft_label_projection_autograd(const at::Tensor& h, const at::Tensor& E,
                                                                  const at::Tensor& y) {
  const auto& op = soft_label_projection_forward_op();
  TORCH_CHECK(!torch::autograd::isFwGradDefined(h) && !torch::autograd::isFwGradDefined(E) &&
                  !torch::autograd::isFwGradDefined(y),
              "soft_label_projection: forward-mode AD is not supported; use cbgan_ext.reference.soft_label_projection");
  at::Tensor out, proj, proj_out;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    std::tie(out, proj) = op.call(h, E, y);
    proj_out = proj_cpu_is_reused(proj) ? proj.alias() : proj;  // as class balancing's probs
  }
  if (torch::autograd::compute_requires_grad(h, E, y)) {
    auto node = make_node<SoftLabelProjectionBackward>();
    node->set_next_edges(torch::autograd::collect_next_edges(h, E, y));
    node->h_ = torch::autograd::SavedVariable(h, false);
    node->E_ = torch::autograd::SavedVariable(E, false);
    node->y_ = torch::autograd::SavedVariable(y, false);
    node->proj_ = torch::autograd::SavedVariable(proj, false);
    node->soft_ = y.is_floating_point();
    torch::autograd::set_history(out, node);
  }
  return {out, proj_out};
}

// The backward op's own autograd: the double backward of the projection (gradient penalties, R1 through a
// projection discriminator). With g = grad_out, P = y E (hard: P_b = E_{y_b}) and the backward's outputs
//   dh = g ⊙ P,   dE = (y ⊙ g)ᵀ h,   dy = g ⊙ (h Eᵀ),
// and A, C, D the gradients arriving for dh, dE, dy, the scalar Σ A·dh + Σ C·dE + Σ D·dy has
//   ∂/∂g_b = ⟨A_b, P_b⟩ + ⟨h_b, M_b⟩,  M = y C + D E   (hard: M_b = C_{y_b})
//   ∂/∂h   = g ⊙ M
//   ∂/∂E   = (y ⊙ g)ᵀ A + (D ⊙ g)ᵀ h  (hard: row k gets Σ_{b: y_b = k} g_b A_b)
//   ∂/∂y   = g ⊙ (A Eᵀ + h Cᵀ)
// proj is the forward's y E: its dependence on y and E is taken through P here, so it gets no gradient.
// Written in ATen ops, so their own autograd gives the third and higher orders.
class SoftLabelProjectionBackwardFunction : public torch::autograd::Function<SoftLabelProjectionBackwardFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& grad_out, const at::Tensor& h,
                               const at::Tensor& class_embedding, const at::Tensor& y, const at::Tensor& proj,
                               std::array<bool, 3> mask) {
    at::Tensor dh, dE, dy;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(dh, dE, dy) = call(grad_out, h, class_embedding, y, proj, mask);
    }
    ctx->save_for_backward({grad_out, h, class_embedding, y});
    ctx->saved_data["mask"] = c10::List<bool>({mask[0], mask[1], mask[2] && y.is_floating_point()});
    ctx->set_materialize_grads(false);
    return {dh, dE, dy};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &g = saved[0], &h = saved[1], &E = saved[2], &y = saved[3];
    const c10::List<bool> mask = ctx->saved_data["mask"].toBoolList();
    const bool hard = !y.is_floating_point();
    // An output the forward skipped (an empty [0] tensor) carries no gradient.
    auto arriving = [&](size_t i) { return mask[i] && grads[i].defined() ? grads[i] : at::Tensor(); };
    const at::Tensor A = arriving(0), C = arriving(1), D = arriving(2);
    const at::Tensor gc = g.unsqueeze(1);
    at::Tensor M;  // [B, L]: what h meets through dE and dy
    if (C.defined()) M = hard ? C.index_select(0, y) : at::mm(y, C);
    if (D.defined()) M = M.defined() ? M + at::mm(D, E) : at::mm(D, E);
    at::Tensor gg, gh, gE, gy;
    if (ctx->needs_input_grad(0)) {
      if (A.defined()) gg = (A * (hard ? E.index_select(0, y) : at::mm(y, E))).sum(1);
      if (M.defined()) gg = gg.defined() ? gg + (h * M).sum(1) : (h * M).sum(1);
    }
    if (ctx->needs_input_grad(1) && M.defined()) gh = gc * M;
    if (ctx->needs_input_grad(2)) {
      if (A.defined()) gE = hard ? at::zeros_like(E).index_add(0, y, gc * A) : at::mm((y * gc).t(), A);
      if (D.defined()) gE = gE.defined() ? gE + at::mm((D * gc).t(), h) : at::mm((D * gc).t(), h);
    }
    if (!hard && ctx->needs_input_grad(3)) {
      if (A.defined()) gy = gc * at::mm(A, E.t());
      if (C.defined()) gy = gy.defined() ? gy + gc * at::mm(h, C.t()) : gc * at::mm(h, C.t());
    }
    return {gg, gh, gE, gy, at::Tensor(), at::Tensor()};
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor> call(const at::Tensor& grad_out, const at::Tensor& h,
                                                             const at::Tensor& E, const at::Tensor& y,
                                                             const at::Tensor& proj, std::array<bool, 3> mask) {
    const auto& op = soft_label_projection_backward_op();
    return op.call(grad_out, h, E, y, proj, mask);
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> soft_label_projection_backward_autograd(
    const at::Tensor& grad_out, const at::Tensor& h, const at::Tensor& E, const at::Tensor& y, const at::Tensor& proj,
    std::array<bool, 3> mask) {
  if (!at::GradMode::is_enabled()) {  // every first-order backward: no node to build
    at::AutoDispatchBelowADInplaceOrView guard;
    return SoftLabelProjectionBackwardFunction::call(grad_out, h, E, y, proj, mask);
  }
  auto out = SoftLabelProjectionBackwardFunction::apply(grad_out, h, E, y, proj, mask);
  return {out[0], out[1], out[2]};
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

// ---- spectral norm ---------------------------------------------------------------------------------------
// torch.nn.utils.spectral_norm's gradient: u and v are constants (outputs of the power iteration, not
// differentiable), so dσ/dW = u vᵀ and dL/dW = G / σ − (⟨G, W⟩ / σ²) u vᵀ, computed by the backward ops.
// The backward ops are called through the dispatcher, so under create_graph their own autograd kernels
// (below) attach the error node that names them. One path for Python (eager and torch.compile), the modules
// and C++ users; a CUDA build without CUDA kernels reaches the ATen kernels registered in Python the same way.

// (u, v, σ) of n power iterations; only σ is differentiable, with dσ/dW = u vᵀ (ATen ops: any order).
class SNPowerIterationFunction : public torch::autograd::Function<SNPowerIterationFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& weight_mat, const at::Tensor& u,
                               const at::Tensor& v, int64_t n_power_iterations, double eps) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("cbgan_ext::spectral_norm_power_iteration", "")
                         .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                               const at::Tensor&, int64_t, double)>();
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [u2, v2, sigma] = op.call(weight_mat, u, v, n_power_iterations, eps);
    ctx->mark_non_differentiable({u2, v2});
    ctx->save_for_backward({u2, v2});
    ctx->set_materialize_grads(false);
    return {u2, v2, sigma};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list out(5);  // one per forward argument; only weight_mat is differentiable
    if (!grads[2].defined() || !ctx->needs_input_grad(0)) return out;
    const auto saved = ctx->get_saved_variables();
    out[0] = grads[2] * at::outer(saved[0], saved[1]);
    return out;
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> spectral_norm_power_iteration_autograd(const at::Tensor& weight_mat,
                                                                                      const at::Tensor& u,
                                                                                      const at::Tensor& v,
                                                                                      int64_t n_power_iterations,
                                                                                      double eps) {
  auto out = SNPowerIterationFunction::apply(weight_mat, u, v, n_power_iterations, eps);
  return {out[0], out[1], out[2]};
}

// A sparse gradient (SNEmbedding(sparse=True)) is made dense: the σ term touches every row anyway.
at::Tensor sn_dense(const at::Tensor& g) { return g.layout() == at::kStrided ? g : g.to_dense(); }

// W / σ: saves W and the new u, v, σ (the backward op's inputs); the u, v, σ outputs are not differentiable.
class SNWeightFunction : public torch::autograd::Function<SNWeightFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& weight, const at::Tensor& u,
                               const at::Tensor& v, int64_t dim, int64_t n_power_iterations, double eps) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("cbgan_ext::spectral_norm_weight", "")
                         .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
                             const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t, double)>();
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [w_sn, u2, v2, sigma] = op.call(weight, u, v, dim, n_power_iterations, eps);
    ctx->mark_non_differentiable({u2, v2, sigma});
    ctx->save_for_backward({weight, u2, v2, sigma});
    ctx->saved_data["dim"] = dim;
    ctx->set_materialize_grads(false);  // else zero gradients for u, v, σ every step
    return {w_sn, u2, v2, sigma};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto& op = spectral_norm_weight_backward_op();
    variable_list out(6);
    if (!grads[0].defined() || !ctx->needs_input_grad(0)) return out;
    const auto saved = ctx->get_saved_variables();
    out[0] = op.call(sn_dense(grads[0]), saved[0], saved[1], saved[2], saved[3], ctx->saved_data["dim"].toInt());
    return out;
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> spectral_norm_weight_autograd(
    const at::Tensor& weight, const at::Tensor& u, const at::Tensor& v, int64_t dim, int64_t n_power_iterations,
    double eps) {
  auto out = SNWeightFunction::apply(weight, u, v, dim, n_power_iterations, eps);
  return {out[0], out[1], out[2], out[3]};
}

// All layers at once. Function::apply takes the lists as TensorList arguments, one autograd input per tensor:
// the backward returns a flat list, L weight gradients, then 2L for us and vs, then dims, n, eps.
class SNWeightMultiFunction : public torch::autograd::Function<SNWeightMultiFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, at::TensorList weights, at::TensorList us, at::TensorList vs,
                               at::IntArrayRef dims, int64_t n_power_iterations, double eps) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("cbgan_ext::spectral_norm_weight_multi", "")
                         .typed<std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>,
                                           at::Tensor>(at::TensorList, at::TensorList, at::TensorList,
                                                       at::IntArrayRef, int64_t, double)>();
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [w_sn, u2, v2, sigmas] = op.call(weights, us, vs, dims, n_power_iterations, eps);
    variable_list out(w_sn.begin(), w_sn.end());
    out.insert(out.end(), u2.begin(), u2.end());
    out.insert(out.end(), v2.begin(), v2.end());
    out.push_back(sigmas);
    variable_list constants(u2.begin(), u2.end());
    constants.insert(constants.end(), v2.begin(), v2.end());
    constants.push_back(sigmas);
    ctx->mark_non_differentiable(constants);
    variable_list to_save(weights.begin(), weights.end());
    to_save.insert(to_save.end(), constants.begin(), constants.end());
    ctx->save_for_backward(to_save);
    ctx->saved_data["dims"] = dims.vec();
    ctx->set_materialize_grads(false);  // the gradient of an unused layer's W_sn stays undefined, not zeros
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto& op = spectral_norm_weight_multi_backward_op();
    const std::vector<int64_t> dims = ctx->saved_data["dims"].toIntVector();
    const size_t L = dims.size();
    variable_list out(3 * L + 3);
    bool any = false;
    for (size_t l = 0; l < L; ++l) any = any || ctx->needs_input_grad(l);
    if (!any) return out;
    const auto saved = ctx->get_saved_variables();
    c10::List<std::optional<at::Tensor>> g;
    g.reserve(L);
    for (size_t l = 0; l < L; ++l)
      g.push_back(grads[l].defined() ? std::optional<at::Tensor>(sn_dense(grads[l])) : std::nullopt);
    const at::TensorList s(saved);
    // A layer without a gradient gets the op's zeros, as the Python path before it did.
    std::vector<at::Tensor> dw = op.call(g, s.slice(0, L), s.slice(L, L), s.slice(2 * L, L), saved[3 * L], dims);
    for (size_t l = 0; l < L; ++l)
      if (ctx->needs_input_grad(l)) out[l] = std::move(dw[l]);
    return out;
  }
};

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor>
spectral_norm_weight_multi_autograd(at::TensorList weights, at::TensorList us, at::TensorList vs, at::IntArrayRef dims,
                                    int64_t n_power_iterations, double eps) {
  const variable_list out = SNWeightMultiFunction::apply(weights, us, vs, dims, n_power_iterations, eps);
  const size_t L = weights.size();
  auto part = [&](size_t k) { return std::vector<at::Tensor>(out.begin() + k * L, out.begin() + (k + 1) * L); };
  return {part(0), part(1), part(2), out[3 * L]};
}

// ---- backward ops without a double backward: a loud error, never a silent zero ----------------------------
// Outputs computed below autograd; when grad mode is on and an input requires grad, the outputs get an Error
// node whose next edges are those inputs, so a second backward through them raises, naming the op.
void attach_double_backward_error(const char* op, const std::vector<at::Tensor>& inputs,
                                  std::vector<at::Tensor> outputs) {
  bool requires_grad = false;
  for (const at::Tensor& t : inputs) requires_grad = requires_grad || (t.defined() && t.requires_grad());
  if (!requires_grad) return;
  NodePtr node = make_node<torch::autograd::Error>(
      std::string(op) + ": double backward is not supported (a gradient computed through this op was "
                        "differentiated again); use the pure-PyTorch version in cbgan_ext.reference for "
                        "higher-order gradients",
      torch::autograd::collect_next_edges(at::TensorList(inputs)));
  torch::autograd::set_history(outputs, node);
}

at::Tensor class_balancing_loss_backward_autograd(const at::Tensor& grad_loss, const at::Tensor& probs,
                                                  const at::Tensor& w, const at::Tensor& mean_probs) {
  const auto& op = class_balancing_loss_backward_op();
  at::Tensor out;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    out = op.call(grad_loss, probs, w, mean_probs);
  }
  if (at::GradMode::is_enabled())
    attach_double_backward_error("_class_balancing_loss_backward", {grad_loss, probs, w, mean_probs}, {out});
  return out;
}

at::Tensor spectral_norm_weight_backward_autograd(const at::Tensor& grad, const at::Tensor& weight,
                                                  const at::Tensor& u, const at::Tensor& v, const at::Tensor& sigma,
                                                  int64_t dim) {
  const auto& op = spectral_norm_weight_backward_op();
  at::Tensor out;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    out = op.call(grad, weight, u, v, sigma, dim);
  }
  if (at::GradMode::is_enabled())
    attach_double_backward_error("_spectral_norm_weight_backward", {grad, weight, u, v, sigma}, {out});
  return out;
}

std::vector<at::Tensor> spectral_norm_weight_multi_backward_autograd(const c10::List<std::optional<at::Tensor>>& grads,
                                                                     at::TensorList weights, at::TensorList us,
                                                                     at::TensorList vs, const at::Tensor& sigmas,
                                                                     at::IntArrayRef dims) {
  const auto& op = spectral_norm_weight_multi_backward_op();
  std::vector<at::Tensor> out;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    out = op.call(grads, weights, us, vs, sigmas, dims);
  }
  if (at::GradMode::is_enabled()) {
    std::vector<at::Tensor> inputs(weights.begin(), weights.end());
    for (size_t l = 0; l < grads.size(); ++l) {
      const std::optional<at::Tensor> g = grads.get(l);
      if (g.has_value() && g->defined()) inputs.push_back(*g);
    }
    inputs.insert(inputs.end(), us.begin(), us.end());
    inputs.insert(inputs.end(), vs.begin(), vs.end());
    inputs.push_back(sigmas);
    attach_double_backward_error("_spectral_norm_weight_multi_backward", inputs, out);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(cbgan_ext, CompositeImplicitAutograd, m) {
  m.impl("class_balancing_loss", &class_balancing_loss_only);
  m.impl("class_balancing_loss_with_counts", &class_balancing_loss_with_counts);
}

TORCH_LIBRARY_IMPL(cbgan_ext, Autograd, m) {
  m.impl("diff_augment", &diff_augment_autograd);
  m.impl("class_balancing_loss_forward", &class_balancing_loss_autograd);
  m.impl("soft_label_projection_forward", &soft_label_projection_autograd);
  m.impl("_soft_label_projection_backward", &soft_label_projection_backward_autograd);
  m.impl("spectral_norm_power_iteration", &spectral_norm_power_iteration_autograd);
  m.impl("spectral_norm_weight", &spectral_norm_weight_autograd);
  m.impl("spectral_norm_weight_multi", &spectral_norm_weight_multi_autograd);
  m.impl("_class_balancing_loss_backward", &class_balancing_loss_backward_autograd);
  m.impl("_spectral_norm_weight_backward", &spectral_norm_weight_backward_autograd);
  m.impl("_spectral_norm_weight_multi_backward", &spectral_norm_weight_multi_backward_autograd);
}

}  // namespace cbgan_ext
